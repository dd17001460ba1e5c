"""Collecting a shared mailbox's certificate, or recovering its key for a delegate, at the
same moment as its delegates change.

mailboxes.mailbox_update locks the mailbox's row before it changes the delegates, and
request_collect and recovery_perform (as recovery_download) lock the same row before they
read them: whichever comes second sees the first's outcome. Never a key handed to, or
recovered for, someone removed a moment before.
"""

from __future__ import annotations

import pytest

from enrollment import mailboxes, recovery, services
from enrollment.exceptions import NotPermitted, PolicyViolation
from enrollment.models import Certificate, CertificateRequest, KeyRecoveryRequest
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.ra_fixtures import ACCEPT_NOTE
from tests.enrollment.test_request_concurrency import collect, race, state_of
from tests.markers import needs_row_locks

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    needs_row_locks,
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
        channel="web",
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


# --- recovering the mailbox's key for a delegate ------------------------------------------


@pytest.fixture
def approved_recovery(approved, employee, colleague, officer, second_officer):
    """Alice collected finance@'s key; Bob, a delegate too, asked for it: approved."""
    mailbox, request = approved
    certificate, _bundle = collect(request, employee)()
    asked = recovery.recovery_ask(certificate=certificate, holder=colleague, reason="Need it.")
    accepted = recovery.recovery_accept(recovery=asked, officer=officer, note=ACCEPT_NOTE)
    return mailbox, recovery.recovery_approve(recovery=accepted, officer=second_officer)


def perform(approved, agent_user, kra):
    return lambda: recovery.recovery_perform(
        recovery=approved,
        agent_user=agent_user,
        agent_pkcs12=kra.pkcs12,
        agent_password=kra.password,
    )


def remove_bob(mailbox, officer, employee):
    return lambda: mailboxes.mailbox_update(
        mailbox=mailbox, display_name="Finance", delegates=[employee], actor=officer
    )


def recovery_state(approved) -> str:
    return KeyRecoveryRequest.objects.get(pk=approved.pk).state


def test_a_recovery_waiting_on_the_delegates_removal_is_refused(
    approved_recovery, employee, officer, agent_user, quick_kra
):
    mailbox, approved = approved_recovery

    _changed, performing = race(
        remove_bob(mailbox, officer, employee), perform(approved, agent_user, quick_kra)
    )

    assert isinstance(performing.get("error"), PolicyViolation), performing
    assert "no longer one of its delegates" in performing["error"].message
    assert recovery_state(approved) == KeyRecoveryRequest.State.APPROVED
    assert not KeyRecoveryRequest.objects.filter(pk=approved.pk, bundle__isnull=False).exists()


def test_a_removal_waiting_on_a_recovery_comes_after_it(
    approved_recovery, employee, colleague, officer, agent_user, quick_kra
):
    mailbox, approved = approved_recovery

    performed, changing = race(
        perform(approved, agent_user, quick_kra), remove_bob(mailbox, officer, employee)
    )

    assert "error" not in changing, changing
    assert recovery_state(approved) == KeyRecoveryRequest.State.READY
    assert list(mailbox.delegates.all()) == [employee]
    # Recovered while Bob was a delegate; removed since, he downloads nothing.
    with pytest.raises(NotPermitted, match="no longer one of its delegates"):
        recovery.recovery_download(recovery=performed["value"][0], user=colleague)
