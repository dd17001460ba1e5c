"""Enrolments at once on PostgreSQL: the audit chain stays one unbroken line.

Each thread has its own database connection, so the chain head's row lock is real; the
deferred appends of concurrent enrolments must never link to the same predecessor.
"""

from __future__ import annotations

import pytest

from cryptography.hazmat.primitives.serialization import Encoding

from django.db import connection, transaction

from enrollment import services
from enrollment.audit import audit_chain_breaks
from enrollment.models import AuditEvent, Certificate, CertificateRequest
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.test_crl_concurrency import run_threads
from tests.enrollment.tools import cryptography_csr
from tests.factories import UserFactory
from tests.pki import KeyPool

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="row locks need PostgreSQL (DATABASE_URL)"
    ),
]


def test_concurrent_enrolments_keep_one_unbroken_audit_chain(hierarchy, template):
    signing = template("smime-signing")
    csr = cryptography_csr(KeyPool().get(KeyAlgorithm.EC_P256)).public_bytes(Encoding.PEM)
    people = [UserFactory() for _ in range(8)]

    def enrol(person):
        def run() -> None:
            for _ in range(3):  # the shipped cap: three valid certificates a template
                with transaction.atomic():
                    services.request_submit(requester=person, template=signing, csr=csr)

        return run

    errors = run_threads(*(enrol(person) for person in people))

    assert errors == []
    assert Certificate.objects.filter(owner__in=people).count() == 24
    assert CertificateRequest.objects.filter(requester__in=people, state="issued").count() == 24
    events = list(AuditEvent.objects.order_by("id"))
    previous = [event.previous_hash for event in events]
    assert len(set(previous)) == len(previous)  # no two events share a predecessor
    assert list(audit_chain_breaks()) == []
    submitted = [e for e in events if e.action == "request.submit"]
    issued = [e for e in events if e.action == "certificate.issue"]
    assert len(submitted) == len(issued) == 24
    # Each enrolment's two events sit together: submitted, then issued.
    for submit in submitted:
        following = events[events.index(submit) + 1]
        assert following.action == "certificate.issue"
        assert following.actor_id == submit.actor_id
