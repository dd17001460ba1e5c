"""Collecting a shared mailbox's certificate at the same moment as its delegates change.

mailboxes.mailbox_update locks the mailbox's row before it changes the delegates, and
request_collect locks the same row before it reads them: whichever comes second sees
the first's outcome. Never a key handed to someone removed a moment before.
"""

from __future__ import annotations

import pytest

from django.db import connection

from enrollment import mailboxes, services
from enrollment.exceptions import NotPermitted
from enrollment.models import Certificate, CertificateRequest
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.test_request_concurrency import collect, race, state_of

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="row locks need PostgreSQL (DATABASE_URL)"
    ),
]


@pytest.fixture
def approved(hierarchy, quick_kra, template, approval, officer, employee, colleague):
    """Alice's approved request for finance@'s certificate, waiting for her download."""
    mailbox = mailboxes.mailbox_create(
        email="finance@example.com",
        display_name="Finance",
        delegates=[employee, colleague],
        actor=officer,
    )
    request = services.request_submit(
        requester=employee,
        template=approval("smime-encryption"),
        key_algorithm=KeyAlgorithm.EC_P256,
        mailbox=mailbox,
    )
    services.request_approve(request=request, officer=officer)
    return mailbox, request


def remove_alice(mailbox, officer, colleague):
    return lambda: mailboxes.mailbox_update(
        mailbox=mailbox, display_name="Finance", delegates=[colleague], actor=officer
    )


def test_a_download_waiting_on_the_delegates_removal_is_refused(
    approved, employee, colleague, officer
):
    mailbox, request = approved

    _changed, collecting = race(
        remove_alice(mailbox, officer, colleague), collect(request, employee)
    )

    assert isinstance(collecting.get("error"), NotPermitted), collecting
    assert "no longer a delegate" in collecting["error"].message
    assert not Certificate.objects.filter(mailbox=mailbox).exists()
    assert state_of(request) == CertificateRequest.State.FAILED


def test_a_removal_waiting_on_a_download_comes_after_it(approved, employee, colleague, officer):
    mailbox, request = approved

    collected, changing = race(
        collect(request, employee), remove_alice(mailbox, officer, colleague)
    )

    assert "error" not in changing, changing
    certificate, _bundle = collected["value"]
    assert certificate.mailbox_id == mailbox.pk
    assert state_of(request) == CertificateRequest.State.ISSUED
    assert list(mailbox.delegates.all()) == [colleague]
