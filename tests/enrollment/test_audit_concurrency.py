"""Enrolments at once on PostgreSQL: one unbroken audit chain, and caps that hold.

Each thread has its own database connection, so the chain head's row lock is real; the
deferred appends of concurrent enrolments must never link to the same predecessor.
"""

from __future__ import annotations

import pytest

from cryptography.hazmat.primitives.serialization import Encoding

from django.db import transaction

from enrollment import services
from enrollment.audit import audit_chain_breaks
from enrollment.exceptions import PolicyViolation
from enrollment.models import AuditEvent, Certificate, CertificateRequest
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.test_crl_concurrency import run_threads
from tests.enrollment.tools import cryptography_csr
from tests.factories import UserFactory
from tests.markers import needs_row_locks
from tests.pki import KeyPool

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    needs_row_locks,
]


def test_concurrent_enrolments_keep_one_unbroken_audit_chain(hierarchy, template):
    signing = template("smime-signing")
    csr = cryptography_csr(KeyPool().get(KeyAlgorithm.EC_P256)).public_bytes(Encoding.PEM)
    people = [UserFactory() for _ in range(8)]

    def enrol(person):
        def run() -> None:
            for _ in range(3):  # the shipped cap: three valid certificates a template
                with transaction.atomic():
                    services.request_submit(
                        requester=person, template=signing, csr=csr, channel="web"
                    )

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


@pytest.mark.parametrize("path", ["csr", "csr, no transaction of the caller's", "portal key"])
def test_parallel_requests_of_one_person_cannot_pass_the_caps(
    hierarchy, template, settings, fast_pkcs12, path
):
    """Twelve requests at once from one script: before, each counted the others' rows as
    not yet there and all twelve were issued, past a cap of three."""
    settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE = 3
    signing = template("smime-signing")
    csr = cryptography_csr(KeyPool().get(KeyAlgorithm.EC_P256)).public_bytes(Encoding.PEM)
    person = UserFactory()
    refused: list[str] = []

    def enrol() -> None:
        try:
            if path.startswith("csr, no"):
                services.request_submit(requester=person, template=signing, csr=csr, channel="web")
                return
            with transaction.atomic():
                if path == "csr":
                    services.request_submit(
                        requester=person, template=signing, csr=csr, channel="web"
                    )
                else:
                    submitted = services.request_submit(
                        requester=person,
                        template=signing,
                        key_algorithm=KeyAlgorithm.EC_P256,
                        channel="web",
                    )
                    services.request_collect(
                        request=submitted, actor=person, pkcs12_password="orange kettle sails"
                    )
        except PolicyViolation as exc:
            refused.append(exc.message)

    errors = run_threads(*([enrol] * 12))

    assert errors == []
    assert Certificate.objects.filter(owner=person, template=signing).count() == 3
    assert len(refused) == 9
    assert all("already have 3 valid certificates" in message for message in refused)
