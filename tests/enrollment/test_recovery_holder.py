"""A key's holder asks for their own archived key back: dual control stays whole.

The holder's ask opens nothing: an RA officer other than the holder accepts it (and so
opens it), PKIPORTAL_RECOVERY_APPROVALS other officers approve, an agent who is none of
them performs, and the holder downloads once.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import time_machine

from django.contrib.auth.models import Group
from django.core import mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from enrollment import recovery, services
from enrollment.exceptions import InvalidState, NotPermitted, PolicyViolation, RateLimited
from enrollment.models import AuditEvent, KeyRecoveryRequest
from enrollment.ra_notifications import STEP_SUBJECTS
from enrollment.x509 import pkcs12
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.ra_fixtures import ACCEPT_NOTE, HOLDER_REASON, REASON, snapshot
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_pkcs12")]
State = KeyRecoveryRequest.State


@pytest.fixture
def kra(quick_kra):
    return quick_kra


def perform(found, agent_user, kra):
    return recovery.recovery_perform(
        recovery=found, agent_user=agent_user, agent_pkcs12=kra.pkcs12, agent_password=kra.password
    )


def make_officer_and_agent(person, officer, agent_user) -> None:
    """Give someone both roles: the rules, not the roles, must keep them out."""
    roles = Group.objects.filter(name__in=["RA officers", "Key recovery agents"])
    assert roles.count() == 2
    person.groups.add(*roles)


# --- asking ---------------------------------------------------------------------------


def test_the_holders_ask_opens_nothing_until_an_officer_accepts_it(
    asked, employee, second_officer, kra, agent_user
):
    assert (asked.state, asked.asked_by, asked.requested_by) == (State.REQUESTED, employee, None)
    assert asked.deliver_to == KeyRecoveryRequest.Recipient.OWNER
    assert asked.recipient_id == employee.pk
    before = snapshot(asked)

    with pytest.raises(InvalidState, match="must accept it before it can be approved"):
        recovery.recovery_approve(recovery=asked, officer=second_officer)
    with pytest.raises(InvalidState, match="no RA officer has accepted it"):
        perform(asked, agent_user, kra)

    assert snapshot(asked) == before


def test_accepting_opens_it_like_an_officers_own_recovery_for_the_owner(asked, officer):
    accepted = recovery.recovery_accept(recovery=asked, officer=officer, note=ACCEPT_NOTE)

    assert (accepted.state, accepted.requested_by, accepted.acceptance_note) == (
        State.PENDING,
        officer,
        ACCEPT_NOTE,
    )
    assert accepted.accepted_at is not None
    asked.refresh_from_db()
    assert asked.state == State.PENDING  # the caller's copy follows


def test_an_expired_or_revoked_certificates_key_can_be_asked_for(archived, employee):
    """Old mail is what recovery is for: the certificate's status does not matter."""
    services.certificate_revoke(certificate=archived.certificate, reason="keyCompromise")
    later = archived.certificate.not_after + timedelta(days=30)

    with time_machine.travel(later, tick=False):
        found = recovery.recovery_ask(
            certificate=archived.certificate, holder=employee, reason=HOLDER_REASON
        )

    assert found.state == State.REQUESTED


def test_only_the_holder_asks_for_a_key(archived, colleague, officer):
    for someone in (colleague, officer):
        with pytest.raises(NotPermitted, match="Only the certificate's holder"):
            recovery.recovery_ask(
                certificate=archived.certificate, holder=someone, reason=HOLDER_REASON
            )

    assert not KeyRecoveryRequest.objects.exists()
    refused = AuditEvent.objects.filter(action="recovery.ask")
    assert {e.outcome for e in refused} == {AuditEvent.Outcome.FAILURE}
    assert refused.count() == 2


def test_a_deactivated_account_cannot_ask(archived, employee):
    employee.is_active = False
    employee.save()

    with pytest.raises(NotPermitted, match="deactivated"):
        recovery.recovery_ask(
            certificate=archived.certificate, holder=employee, reason=HOLDER_REASON
        )

    assert not KeyRecoveryRequest.objects.exists()


def test_a_signing_key_was_never_archived_and_cannot_be_asked_for(
    hierarchy, template, employee, kra
):
    signing, _bundle = services.certificate_issue_with_server_key(
        template=template("smime-signing"),
        owner=employee,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password="Signing-Key-Lantern-90",
    )

    with pytest.raises(PolicyViolation, match="was not archived") as refused:
        recovery.recovery_ask(certificate=signing, holder=employee, reason=HOLDER_REASON)

    assert refused.value.field == "certificate"
    assert not KeyRecoveryRequest.objects.exists()


@pytest.mark.parametrize(
    ("reason", "problem"),
    [
        ("   \n ", "Say why"),
        ("x" * 1001, "keep it to 1000"),
        ("lost\x00it", "U+0000"),
        ("lost\x1bit", "U+001B"),
        ("approved by \u202eboss", "U+202E"),
        ("lone \ud800 surrogate", "U+D800"),
        (["not", "text"], "must be text"),
    ],
)
def test_a_reason_that_is_not_plain_text_is_refused_and_nothing_stored(
    archived, employee, reason, problem
):
    with pytest.raises(PolicyViolation, match=re.escape(problem)) as refused:
        recovery.recovery_ask(certificate=archived.certificate, holder=employee, reason=reason)

    assert refused.value.field == "reason"
    assert not KeyRecoveryRequest.objects.exists()


def test_line_breaks_and_tabs_are_text(archived, employee):
    found = recovery.recovery_ask(
        certificate=archived.certificate, holder=employee, reason="  Lost laptop.\n\tPlease.  "
    )

    assert found.reason == "Lost laptop.\n\tPlease."


def test_an_unknown_file_format_is_refused(archived, employee):
    with pytest.raises(PolicyViolation, match="Unknown file format") as refused:
        recovery.recovery_ask(
            certificate=archived.certificate, holder=employee, reason=HOLDER_REASON,
            pkcs12_format="pkcs7",
        )  # fmt: skip

    assert refused.value.field == "pkcs12_format"


# --- one at a time, and not too often -------------------------------------------------


def test_a_second_ask_for_the_same_key_names_the_one_in_progress(asked, archived, employee):
    with pytest.raises(recovery.RecoveryAlreadyOpen, match=f"#{asked.pk} of this key") as refused:
        recovery.recovery_ask(certificate=archived.certificate, holder=employee, reason="again")

    assert refused.value.recovery == asked
    assert KeyRecoveryRequest.objects.count() == 1


def test_an_officer_cannot_open_a_second_recovery_beside_the_holders_ask(
    asked, archived, second_officer
):
    with pytest.raises(InvalidState, match="Accept that one instead"):
        recovery.recovery_open(
            certificate=archived.certificate, officer=second_officer, reason=REASON
        )


def test_an_officer_may_close_the_holders_ask_to_open_a_recovery_of_their_own(
    asked, archived, employee, second_officer, django_capture_on_commit_callbacks
):
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        opened = recovery.recovery_open(
            certificate=archived.certificate,
            officer=second_officer,
            reason=REASON,
            deliver_to=KeyRecoveryRequest.Recipient.REQUESTER,  # a legal hold
            close_holder_ask=asked.pk,
        )

    asked.refresh_from_db()
    assert (asked.state, asked.decided_by) == (State.REJECTED, second_officer)
    assert asked.decision_reason == recovery.CLOSED_FOR_OFFICER
    assert (opened.state, opened.requested_by, opened.recipient_id) == (
        State.PENDING,
        second_officer,
        second_officer.pk,
    )
    closed = AuditEvent.objects.get(action="recovery.reject")
    assert closed.object_id == str(asked.pk)
    assert closed.detail["closed_for"] == "officer_recovery"
    assert AuditEvent.objects.get(action="recovery.open").detail["closed_ask"] == asked.pk
    to_holder = {m.subject: m.body for m in mail.outbox if m.to == [employee.email]}
    closed_mail = to_holder[STEP_SUBJECTS["rejected"]]  # their ask closed, and why
    assert f"#{asked.pk}" in closed_mail
    assert "opened a recovery of this key instead" in closed_mail
    assert f"#{opened.pk}" in to_holder[STEP_SUBJECTS["opened"]]  # and the new one opened


def test_closing_the_holders_ask_closes_nothing_else(opened, archived, second_officer):
    """Only a holder's waiting ask gives way; an officer's recovery in progress does not."""
    with pytest.raises(recovery.RecoveryAlreadyOpen, match="already open"):
        recovery.recovery_open(
            certificate=archived.certificate,
            officer=second_officer,
            reason=REASON,
            close_holder_ask=opened.pk,
        )
    opened.refresh_from_db()
    assert opened.state == State.PENDING
    assert KeyRecoveryRequest.objects.count() == 1


def test_only_the_ask_the_officer_saw_is_closed(asked, archived, employee, second_officer):
    """Withdrawn and asked again between the form and the click: the new ask stays."""
    recovery.recovery_withdraw(recovery=asked, holder=employee)
    again = recovery.recovery_ask(certificate=archived.certificate, holder=employee, reason="x")

    with pytest.raises(recovery.RecoveryAlreadyOpen, match=f"#{again.pk}"):
        recovery.recovery_open(
            certificate=archived.certificate,
            officer=second_officer,
            reason=REASON,
            close_holder_ask=asked.pk,
        )
    again.refresh_from_db()
    assert again.state == State.REQUESTED


def test_the_holder_cannot_ask_while_an_officer_recovers_the_key(opened, archived, employee):
    with pytest.raises(recovery.RecoveryAlreadyOpen, match="already in progress"):
        recovery.recovery_ask(
            certificate=archived.certificate, holder=employee, reason=HOLDER_REASON
        )


def test_the_database_keeps_one_open_recovery_per_key(asked, archived):
    with pytest.raises(IntegrityError), transaction.atomic():
        KeyRecoveryRequest.objects.create(
            certificate=archived.certificate, asked_by=asked.asked_by, reason="twice",
            deliver_to="owner", state=State.REQUESTED,
        )  # fmt: skip


def test_once_closed_the_holder_may_ask_again(asked, archived, employee, second_officer):
    recovery.recovery_withdraw(recovery=asked, holder=employee)
    again = recovery.recovery_ask(certificate=archived.certificate, holder=employee, reason="x")
    recovery.recovery_reject(recovery=again, officer=second_officer, reason="Call us first.")

    third = recovery.recovery_ask(certificate=archived.certificate, holder=employee, reason="y")

    assert third.state == State.REQUESTED


def test_a_holder_asks_only_so_often(archived, employee, settings):
    settings.PKIPORTAL_RECOVERY_ASKS_PER_DAY = 2
    start = timezone.now()
    for _ in range(2):
        found = recovery.recovery_ask(
            certificate=archived.certificate, holder=employee, reason=HOLDER_REASON
        )
        recovery.recovery_withdraw(recovery=found, holder=employee)

    with pytest.raises(RateLimited, match="2 key recoveries in the last 24 hours") as refused:
        recovery.recovery_ask(
            certificate=archived.certificate, holder=employee, reason=HOLDER_REASON
        )

    assert 23 * 3600 < refused.value.retry_after <= 24 * 3600
    assert KeyRecoveryRequest.objects.count() == 2
    with time_machine.travel(start + timedelta(hours=24, minutes=1), tick=False):
        assert recovery.recovery_ask(
            certificate=archived.certificate, holder=employee, reason=HOLDER_REASON
        )


# --- dual control ---------------------------------------------------------------------


def test_the_holder_can_never_accept_approve_or_perform_their_own_recovery(
    archived, employee, officer, second_officer, kra, agent_user
):
    """Alice is an RA officer and a key recovery agent herself: still refused at each step."""
    make_officer_and_agent(employee, officer, agent_user)
    asked = recovery.recovery_ask(
        certificate=archived.certificate, holder=employee, reason=HOLDER_REASON
    )

    with pytest.raises(NotPermitted, match="another RA officer must accept it"):
        recovery.recovery_accept(recovery=asked, officer=employee, note=ACCEPT_NOTE)
    recovery.recovery_accept(recovery=asked, officer=officer, note=ACCEPT_NOTE)
    with pytest.raises(NotPermitted, match="your own key"):
        recovery.recovery_approve(recovery=asked, officer=employee)
    recovery.recovery_approve(recovery=asked, officer=second_officer)
    with pytest.raises(NotPermitted, match="your own key"):
        perform(asked, employee, kra)

    asked.refresh_from_db()
    assert asked.state == State.APPROVED
    assert list(asked.approvals.values_list("officer", flat=True)) == [second_officer.pk]
    refusals = AuditEvent.objects.filter(outcome=AuditEvent.Outcome.FAILURE, actor=employee)
    assert sorted((e.action, e.detail["attempted"], e.detail["reason"]) for e in refusals) == [
        ("access.refused", "recovery.accept", "own_key"),
        ("access.refused", "recovery.approve", "own_key"),
        ("access.refused", "recovery.perform", "own_key"),
    ]


@pytest.mark.parametrize("deliver_to", list(KeyRecoveryRequest.Recipient))
def test_a_holder_who_is_an_officer_cannot_open_the_recovery_of_their_own_key(
    archived, employee, officer, agent_user, deliver_to
):
    """Opening is where an officer other than the holder vouches for the request: a holder
    who opened it would need one approver and one agent, three people in all."""
    make_officer_and_agent(employee, officer, agent_user)

    with pytest.raises(NotPermitted, match="your own key"):
        recovery.recovery_open(
            certificate=archived.certificate, officer=employee, reason=REASON, deliver_to=deliver_to
        )

    assert not KeyRecoveryRequest.objects.exists()
    refused = AuditEvent.objects.get(outcome=AuditEvent.Outcome.FAILURE, actor=employee)
    assert (refused.action, refused.detail) == (
        "access.refused",
        {"attempted": "recovery.open", "reason": "own_key"},
    )
    assert refused.object_id == str(archived.certificate.pk)


def test_a_holder_who_is_an_officer_cannot_reject_a_recovery_of_their_own_key(
    archived, employee, officer, agent_user
):
    """A legal hold is not its holder's to end, however often it is opened again."""
    hold = recovery.recovery_open(
        certificate=archived.certificate,
        officer=officer,
        reason=REASON,
        deliver_to=KeyRecoveryRequest.Recipient.REQUESTER,
    )
    make_officer_and_agent(employee, officer, agent_user)
    before = snapshot(hold)

    with pytest.raises(NotPermitted, match="your own key"):
        recovery.recovery_reject(recovery=hold, officer=employee, reason="Not needed")

    assert snapshot(hold) == before
    assert not recovery.may_reject(hold, employee.pk)
    assert recovery.may_reject(hold, officer.pk)


def test_a_holder_who_is_an_officer_withdraws_their_own_ask_rather_than_rejecting_it(
    asked, employee, officer, agent_user
):
    make_officer_and_agent(employee, officer, agent_user)

    with pytest.raises(NotPermitted, match="your own key"):
        recovery.recovery_reject(recovery=asked, officer=employee, reason="Found it")
    withdrawn = recovery.recovery_withdraw(recovery=asked, holder=employee)

    assert withdrawn.state == State.WITHDRAWN


@pytest.mark.parametrize("text", ["ok \u202e evil", "bell \x07", "line\x1bescape"])
def test_an_officers_reasons_are_plain_text(archived, officer, second_officer, text):
    """What the holder's mail, the recovery page and the audit trail show must read as it
    is (bidirectional overrides and control characters refused), as the holder's own are."""
    with pytest.raises(PolicyViolation, match="control character"):
        recovery.recovery_open(certificate=archived.certificate, officer=officer, reason=text)
    opened = recovery.recovery_open(
        certificate=archived.certificate, officer=officer, reason=REASON
    )
    with pytest.raises(PolicyViolation, match="control character"):
        recovery.recovery_reject(recovery=opened, officer=second_officer, reason=text)
    opened.refresh_from_db()
    assert opened.state == State.PENDING
    assert opened.reason == REASON


def test_the_database_refuses_a_holder_as_the_opener_of_their_own_request(asked, employee):
    with pytest.raises(IntegrityError), transaction.atomic():
        KeyRecoveryRequest.objects.filter(pk=asked.pk).update(
            requested_by=employee, state=State.PENDING
        )


def test_the_database_refuses_what_a_holder_asked_for_to_go_to_an_officer(asked, officer):
    with pytest.raises(IntegrityError), transaction.atomic():
        KeyRecoveryRequest.objects.filter(pk=asked.pk).update(
            deliver_to=KeyRecoveryRequest.Recipient.REQUESTER, requested_by=officer
        )


def test_the_database_refuses_approval_states_without_an_opener(asked):
    with pytest.raises(IntegrityError), transaction.atomic():
        KeyRecoveryRequest.objects.filter(pk=asked.pk).update(state=State.PENDING)


def test_the_officer_who_accepts_cannot_approve_it_too(accepted, officer):
    with pytest.raises(NotPermitted, match="You opened this recovery"):
        recovery.recovery_approve(recovery=accepted, officer=officer)


def test_an_officer_approving_from_a_page_shown_before_they_accepted_is_refused(asked, officer):
    """Olivia accepts in one tab, then approves in another that still shows "requested":
    who opened it is read under the row lock, so she does not count twice."""
    stale = KeyRecoveryRequest.objects.get(pk=asked.pk)
    recovery.recovery_accept(recovery=asked, officer=officer, note=ACCEPT_NOTE)

    with pytest.raises(NotPermitted, match="You opened this recovery"):
        recovery.recovery_approve(recovery=stale, officer=officer)

    asked.refresh_from_db()
    assert asked.state == State.PENDING
    assert not asked.approvals.exists()


def test_accepting_twice_is_refused(accepted, second_officer):
    with pytest.raises(InvalidState, match="no longer waiting to be accepted"):
        recovery.recovery_accept(recovery=accepted, officer=second_officer, note=ACCEPT_NOTE)


def test_only_officers_accept_and_they_say_how_they_checked(asked, colleague, agent_user, officer):
    before = snapshot(asked)
    for someone in (colleague, agent_user):
        with pytest.raises(NotPermitted, match="Only RA officers accept"):
            recovery.recovery_accept(recovery=asked, officer=someone, note=ACCEPT_NOTE)
    with pytest.raises(PolicyViolation, match="Say how you confirmed") as refused:
        recovery.recovery_accept(recovery=asked, officer=officer, note=" ")

    assert refused.value.field == "note"
    assert snapshot(asked) == before


def test_a_request_by_someone_who_has_since_left_cannot_be_accepted(asked, employee, officer):
    before = snapshot(asked)
    employee.is_active = False
    employee.save()

    with pytest.raises(PolicyViolation, match="no longer has an active account"):
        recovery.recovery_accept(recovery=asked, officer=officer, note=ACCEPT_NOTE)

    assert snapshot(asked) == before


@pytest.mark.parametrize("approvals", [1, 2])
def test_a_holders_ask_takes_approvals_plus_three_people(
    approvals, archived, employee, officer, kra, agent_user, settings
):
    """The holder, the officer who accepts, the approvers and an agent: all different,
    even when every officer involved is also an agent."""
    settings.PKIPORTAL_RECOVERY_APPROVALS = approvals
    approvers = [UserFactory(username=f"approver{n}") for n in range(approvals)]
    for person in (officer, *approvers):
        make_officer_and_agent(person, officer, agent_user)
    found = recovery.recovery_ask(
        certificate=archived.certificate, holder=employee, reason=HOLDER_REASON
    )
    recovery.recovery_accept(recovery=found, officer=officer, note=ACCEPT_NOTE)
    for approver in approvers:
        recovery.recovery_approve(recovery=found, officer=approver)

    for involved in (officer, *approvers):
        with pytest.raises(NotPermitted, match="another key recovery agent"):
            perform(found, involved, kra)
    done, _password = perform(found, agent_user, kra)

    people = {done.asked_by_id, done.requested_by_id, *(a.pk for a in approvers),
              done.performed_by_id}  # fmt: skip
    assert len(people) == approvals + 3
    assert done.recipient_id == employee.pk


# --- withdrawing and rejecting --------------------------------------------------------


@pytest.mark.parametrize("stage", ["requested", "pending", "approved"])
def test_the_holder_withdraws_while_nothing_is_recovered(
    stage, asked, employee, officer, second_officer, kra, agent_user
):
    if stage in ("pending", "approved"):
        recovery.recovery_accept(recovery=asked, officer=officer, note=ACCEPT_NOTE)
    if stage == "approved":
        recovery.recovery_approve(recovery=asked, officer=second_officer)

    withdrawn = recovery.recovery_withdraw(recovery=asked, holder=employee)

    assert (withdrawn.state, withdrawn.decided_by) == (State.WITHDRAWN, employee)
    event = AuditEvent.objects.get(action="recovery.withdraw")
    assert (event.actor, event.outcome, event.detail) == (employee, "success", {"state": stage})
    with pytest.raises(InvalidState, match="withdrawn"):
        perform(asked, agent_user, kra)


def test_a_recovered_key_can_no_longer_be_withdrawn(
    accepted, employee, second_officer, kra, agent_user
):
    recovery.recovery_approve(recovery=accepted, officer=second_officer)
    perform(accepted, agent_user, kra)
    before = snapshot(accepted)

    with pytest.raises(InvalidState, match="can no longer be withdrawn"):
        recovery.recovery_withdraw(recovery=accepted, holder=employee)

    assert snapshot(accepted) == before


def test_only_the_holder_who_asked_withdraws(
    asked, officers_recovery, officer, colleague, employee
):
    """Officers reject instead; an officer's recovery of Alice's key is not hers to stop."""
    for someone in (officer, colleague):
        with pytest.raises(NotPermitted, match="Only the holder who asked"):
            recovery.recovery_withdraw(recovery=asked, holder=someone)
    with pytest.raises(NotPermitted, match="Only the holder who asked"):
        recovery.recovery_withdraw(recovery=officers_recovery, holder=employee)

    assert KeyRecoveryRequest.objects.filter(state=State.WITHDRAWN).count() == 0


@pytest.fixture
def officers_recovery(archived, officer):
    """Another of Alice's keys, recovered by an officer: she did not ask for it."""
    certificate, _bundle = services.certificate_issue_with_server_key(
        template=archived.certificate.template,
        owner=archived.certificate.owner,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password="Second-Key-Lantern-31",
    )
    return recovery.recovery_open(certificate=certificate, officer=officer, reason=REASON)


@pytest.mark.parametrize("stage", ["requested", "pending"])
def test_an_officer_rejects_a_holders_request_with_a_reason(
    stage, asked, officer, second_officer, employee, django_capture_on_commit_callbacks
):
    if stage == "pending":
        recovery.recovery_accept(recovery=asked, officer=officer, note=ACCEPT_NOTE)

    with django_capture_on_commit_callbacks(execute=True):
        rejected = recovery.recovery_reject(
            recovery=asked, officer=second_officer, reason="Nobody could reach you to confirm."
        )

    assert (rejected.state, rejected.decided_by) == (State.REJECTED, second_officer)
    event = AuditEvent.objects.get(action="recovery.reject")
    assert event.detail == {"reason": "Nobody could reach you to confirm."}
    (message,) = [m for m in mail.outbox if m.to == [employee.email]]
    assert message.subject == "The recovery of your encryption key was rejected"
    assert "Nobody could reach you to confirm." in message.body


# --- audited and mailed ---------------------------------------------------------------


def test_every_step_of_a_holders_recovery_is_audited(
    asked, officer, second_officer, kra, agent_user, employee
):
    recovery.recovery_accept(recovery=asked, officer=officer, note=ACCEPT_NOTE)
    recovery.recovery_approve(recovery=asked, officer=second_officer)
    _done, password = perform(asked, agent_user, kra)
    recovery.recovery_download(recovery=asked, user=employee)

    events = list(
        AuditEvent.objects.filter(object_type="enrollment.KeyRecoveryRequest").order_by("id")
    )
    assert [(e.action, e.actor, e.outcome) for e in events] == [
        ("recovery.ask", employee, "success"),
        ("recovery.accept", officer, "success"),
        ("recovery.approve", second_officer, "success"),
        ("recovery.perform", agent_user, "success"),
        ("recovery.download", employee, "success"),
    ]
    assert events[0].detail["reason"] == HOLDER_REASON
    assert events[1].detail["note"] == ACCEPT_NOTE
    text = " ".join(str(e.detail) for e in AuditEvent.objects.all())
    assert password not in text
    assert kra.password not in text


@pytest.mark.parametrize("step", ["ask", "accept", "withdraw"])
def test_the_change_and_its_audit_event_commit_together(step, archived, employee, officer,
                                                         monkeypatch):  # fmt: skip
    """An audit event that cannot be written takes the change with it."""
    found = None
    if step != "ask":
        found = recovery.recovery_ask(
            certificate=archived.certificate, holder=employee, reason=HOLDER_REASON
        )
    before = snapshot(found) if found else None
    real = recovery.audit_record

    def failing(**kwargs):
        if kwargs["action"] == f"recovery.{step}":
            raise RuntimeError("the audit trail is unavailable")
        return real(**kwargs)

    monkeypatch.setattr(recovery, "audit_record", failing)
    steps = {
        "ask": lambda: recovery.recovery_ask(
            certificate=archived.certificate, holder=employee, reason=HOLDER_REASON
        ),
        "accept": lambda: recovery.recovery_accept(
            recovery=found, officer=officer, note=ACCEPT_NOTE
        ),
        "withdraw": lambda: recovery.recovery_withdraw(recovery=found, holder=employee),
    }

    with pytest.raises(RuntimeError, match="audit trail is unavailable"):
        steps[step]()

    if step == "ask":
        assert not KeyRecoveryRequest.objects.exists()
    else:
        assert snapshot(found) == before


def test_asking_mails_the_holder_and_the_officers(
    archived, employee, officer, second_officer, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        found = recovery.recovery_ask(
            certificate=archived.certificate, holder=employee, reason=HOLDER_REASON
        )

    (to_alice,) = [m for m in mail.outbox if m.to == [employee.email]]
    assert to_alice.subject == "You asked for your archived encryption key back"
    assert "If you did not ask for this" in to_alice.body
    assert f"https://portal.example.com/ra/recovery/{found.pk}/" in to_alice.body
    to_officers = [m for m in mail.outbox if m.to != [employee.email]]
    assert sorted(m.to[0] for m in to_officers) == sorted([officer.email, second_officer.email])
    for message in to_officers:
        assert message.subject == (
            f"Key recovery #{found.pk}: a key holder asks for their encryption key back"
        )
        assert HOLDER_REASON in message.body
        assert "Alice Andersson" in message.body
        assert f"https://portal.example.com/ra/recovery/{found.pk}/" in message.body


def test_an_officer_who_asks_for_their_own_key_is_not_asked_to_accept_it(
    archived, employee, officer, django_capture_on_commit_callbacks
):
    employee.groups.add(officer.groups.get())

    with django_capture_on_commit_callbacks(execute=True):
        recovery.recovery_ask(
            certificate=archived.certificate, holder=employee, reason=HOLDER_REASON
        )

    assert [m.to for m in mail.outbox if "asks for" in m.subject] == [[officer.email]]


def test_accepting_mails_the_holder_and_the_officers_who_may_approve(
    asked, employee, officer, second_officer, django_capture_on_commit_callbacks
):
    employee.groups.add(officer.groups.get())  # the holder may not approve: not asked to
    mail.outbox.clear()

    with django_capture_on_commit_callbacks(execute=True):
        recovery.recovery_accept(recovery=asked, officer=officer, note=ACCEPT_NOTE)

    assert [(m.to, m.subject) for m in mail.outbox] == [
        ([employee.email], "An RA officer accepted your request to recover your encryption key"),
        ([second_officer.email], f"Key recovery #{asked.pk} waits for your approval"),
    ]
    assert "Olivia Officer, an RA officer, accepted" in mail.outbox[0].body
    assert "other than Olivia Officer, who accepted the key holder's request" in (
        mail.outbox[1].body
    )


def test_the_holder_hears_of_each_decision_and_never_gets_a_password_by_mail(
    archived, officer, second_officer, kra, agent_user, employee,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        asked = recovery.recovery_ask(
            certificate=archived.certificate, holder=employee, reason=HOLDER_REASON
        )
        recovery.recovery_accept(recovery=asked, officer=officer, note=ACCEPT_NOTE)
        recovery.recovery_approve(recovery=asked, officer=second_officer)
        _done, password = perform(asked, agent_user, kra)
        recovery.recovery_download(recovery=asked, user=employee)

    to_alice = [m for m in mail.outbox if m.to == [employee.email]]
    assert [m.subject for m in to_alice] == [
        "You asked for your archived encryption key back",
        "An RA officer accepted your request to recover your encryption key",
        "The recovery of your encryption key is approved",
        "Your encryption key was recovered",
        "Your recovered encryption key was downloaded",
    ]
    assert f"/ra/recovery/{asked.pk}/" in to_alice[3].body
    for message in mail.outbox:
        assert password not in message.body
        assert kra.password not in message.body


def test_the_recovered_file_reaches_the_holder_under_the_one_time_password(
    accepted, second_officer, kra, agent_user, employee, archived
):
    recovery.recovery_approve(recovery=accepted, officer=second_officer)
    _done, password = perform(accepted, agent_user, kra)

    _found, bundle = recovery.recovery_download(recovery=accepted, user=employee)

    key, certificate, _chain = pkcs12.load_pkcs12(bundle, password)
    assert certificate == archived.certificate.certificate
    assert key.public_key() == archived.key.public_key()
