"""Certificates for an address their holder no longer has: the holder is mailed once, and
they are revoked a grace period after the change, through the hourly leavers' run.

Revoked for affiliationChanged through the revocation service (CRL, audit as "system",
the holder's mail); an address changed back in time revokes nothing; holders count against
the leavers' cap. Runs on SQLite and, with DATABASE_URL, on PostgreSQL.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from io import StringIO

import pytest
import time_machine

from cryptography import x509

from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from enrollment import leavers, outdated, services
from enrollment.exceptions import InvalidState
from enrollment.models import (
    AuditEvent,
    Certificate,
    CertificateRequest,
    OutdatedCertificate,
    RevocationList,
)
from enrollment.tasks import leavers_revoke_task
from tests.enrollment.test_request_lifecycle import csr
from tests.enrollment.tools import issue, new_key
from tests.factories import UserFactory
from tests.markers import needs_row_locks

pytestmark = pytest.mark.django_db

GRACE = timedelta(hours=72)
NEW = "alice.smith@example.com"


@pytest.fixture(autouse=True)
def _grace_and_cap(settings):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 72
    settings.PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN = 2


@pytest.fixture
def make_certificate(hierarchy, template):
    return lambda owner, slug="smime-signing": issue(owner, template(slug), new_key())


@pytest.fixture
def run(task_at):
    """The beat task at a moment, with what it queues on commit (CRL, mail) carried out."""
    return lambda moment: task_at(leavers_revoke_task, moment)


def change_address(user, address: str = NEW, at=None):
    with time_machine.travel(at or timezone.now(), tick=False):
        user.email = address
        user.save()
    return user


def statuses(*certificates: Certificate) -> list[str]:
    return [Certificate.objects.get(pk=c.pk).status for c in certificates]


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def outdated_mails() -> list:
    return [m for m in mail.outbox if "old e-mail address" in m.subject]


# --- the holder is told, once --------------------------------------------------------------


def test_the_holder_is_mailed_once_at_the_new_address_with_the_certificates_and_due_time(
    make_certificate, employee, run
):
    signing = make_certificate(employee)
    dual = make_certificate(employee, "smime-dual-use")
    changed = timezone.now()
    change_address(employee, at=changed)

    run(changed + timedelta(minutes=20))
    run(changed + timedelta(hours=1, minutes=20))

    (message,) = outdated_mails()
    assert message.to == [NEW]
    assert message.subject == "Your certificates name your old e-mail address"
    for certificate in (signing, dual):
        assert certificate.serial in message.body
        assert f"/certificates/{certificate.pk}/" in message.body
    assert f"revoked on {changed + GRACE:%Y-%m-%d %H:%M} UTC" in message.body
    assert "alice@example.com" in message.body
    rows = OutdatedCertificate.objects.order_by("certificate_id")
    assert [(r.certificate_id, r.since, r.address) for r in rows] == [
        (signing.pk, changed, NEW),
        (dual.pk, changed, NEW),
    ]
    assert statuses(signing, dual) == ["valid", "valid"]


def test_a_change_of_case_outdates_nothing(make_certificate, employee, run):
    certificate = make_certificate(employee)
    change_address(employee, "Alice@EXAMPLE.com")

    run(timezone.now() + GRACE + timedelta(hours=1))

    assert statuses(certificate) == ["valid"]
    assert outdated_mails() == []
    assert not OutdatedCertificate.objects.exists()


def test_certificates_for_the_current_address_are_left_alone(
    make_certificate, employee, colleague, run
):
    old = make_certificate(employee)
    changed = timezone.now()
    change_address(employee, at=changed)
    current = make_certificate(employee)  # issued for the new address
    bobs = make_certificate(colleague)

    run(changed + GRACE)

    assert current.email == NEW
    assert statuses(old, current, bobs) == ["revoked", "valid", "valid"]


def test_a_certificate_naming_no_address_is_never_outdated(make_certificate, employee, run):
    certificate = make_certificate(employee)
    Certificate.objects.filter(pk=certificate.pk).update(email="", emails=[])
    changed = timezone.now()
    change_address(employee, at=changed)

    run(changed + GRACE)

    assert statuses(certificate) == ["valid"]
    assert outdated_mails() == []


# --- revocation after the grace period -------------------------------------------------------


def test_after_the_grace_period_they_are_revoked_as_affiliation_changed(
    make_certificate, employee, run, hierarchy
):
    certificate = make_certificate(employee)
    changed = timezone.now()
    change_address(employee, at=changed)
    run(changed + timedelta(minutes=30))

    before = run(changed + GRACE - timedelta(minutes=1))
    assert before["due"] == 0
    assert statuses(certificate) == ["valid"]

    outcome = run(changed + GRACE)

    assert outcome == {
        "due": 1,
        "held_back": 0,
        "revoked_accounts": 1,
        "revoked_certificates": 1,
        "failed_accounts": 0,
        "revoked_mailboxes": 0,
        "failed_mailboxes": 0,
    }
    revoked = Certificate.objects.get(pk=certificate.pk)
    assert (revoked.status, revoked.revocation_reason) == ("revoked", "affiliationChanged")
    assert revoked.revoked_at == changed + GRACE
    crl = RevocationList.objects.filter(ca=hierarchy.issuing).newest_first().first()
    entry = x509.load_der_x509_crl(bytes(crl.der)).get_revoked_certificate_by_serial_number(
        int(certificate.serial, 16)
    )
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.affiliation_changed
    ((actor, detail_reason),) = [
        (e.actor_name, e.detail["reason"]) for e in events("certificate.revoke")
    ]
    assert (actor, detail_reason) == ("system", "affiliationChanged")
    (why,) = events("outdated.revoke")
    assert (why.actor_name, why.object_repr) == ("system", "alice")
    assert why.detail["address"] == NEW
    assert why.detail["old_addresses"] == ["alice@example.com"]
    assert why.detail["serials"] == [certificate.serial]
    assert why.detail["source"] == "schedule"
    assert [m.subject for m in mail.outbox if m.subject.startswith("Your certificate was")] == [
        "Your certificate was revoked"
    ]
    # Revoked: the row goes at the next run.
    run(changed + GRACE + timedelta(hours=1))
    assert not OutdatedCertificate.objects.exists()


def test_an_address_changed_back_within_the_grace_period_revokes_nothing(
    make_certificate, employee, run
):
    certificate = make_certificate(employee)
    changed = timezone.now()
    change_address(employee, at=changed)
    run(changed + timedelta(minutes=30))
    change_address(employee, "alice@example.com", at=changed + timedelta(hours=5))

    outcome = run(changed + GRACE + timedelta(days=1))

    assert outcome["due"] == 0
    assert statuses(certificate) == ["valid"]
    assert not OutdatedCertificate.objects.exists()
    assert len(outdated_mails()) == 1  # the first change's


def test_an_address_changed_back_after_the_run_looked_keeps_the_certificate(
    make_certificate, employee, run, monkeypatch
):
    """The run locks the account and reads its address again before revoking."""
    certificate = make_certificate(employee)
    changed = timezone.now()
    change_address(employee, at=changed)
    run(changed + timedelta(minutes=30))
    revoke_account = outdated.revoke_account

    def changed_back_meanwhile(user_pk, **kwargs):
        get_user_model().objects.filter(pk=user_pk).update(email="alice@example.com")
        return revoke_account(user_pk, **kwargs)

    monkeypatch.setattr(outdated, "revoke_account", changed_back_meanwhile)

    outcome = run(changed + GRACE)

    assert outcome["due"] == 1
    assert outcome["revoked_certificates"] == 0
    assert statuses(certificate) == ["valid"]


def test_changing_again_later_starts_a_new_grace_period_and_a_new_mail(
    make_certificate, employee, run
):
    certificate = make_certificate(employee)
    first = timezone.now()
    change_address(employee, at=first)
    run(first + timedelta(minutes=30))
    change_address(employee, "alice@example.com", at=first + timedelta(hours=2))
    run(first + timedelta(hours=2, minutes=30))
    second = first + timedelta(days=10)
    change_address(employee, "a.andersson@example.com", at=second)

    run(second + timedelta(minutes=30))
    assert statuses(certificate) == ["valid"]
    assert len(outdated_mails()) == 2
    assert OutdatedCertificate.objects.get().since == second

    run(second + GRACE)
    assert statuses(certificate) == ["revoked"]


def test_a_second_change_does_not_put_the_revocation_off(make_certificate, employee, run):
    """A → B → C: the certificate for A has named an old address since the first change."""
    certificate = make_certificate(employee)
    first = timezone.now()
    change_address(employee, at=first)
    run(first + timedelta(minutes=30))
    change_address(employee, "a.andersson@example.com", at=first + timedelta(days=1))
    run(first + timedelta(days=1, minutes=30))

    run(first + GRACE)

    assert statuses(certificate) == ["revoked"]
    assert len(outdated_mails()) == 1


def test_an_address_rewritten_by_a_bulk_update_is_found_and_its_clock_starts_at_the_run(
    make_certificate, employee, run
):
    """QuerySet.update() skips User.save() and records no moment: the run compares every
    held certificate's address with its holder's, so it is found all the same."""
    certificate = make_certificate(employee)
    get_user_model().objects.filter(pk=employee.pk).update(email=NEW)
    first_run = timezone.now() + timedelta(hours=1)

    run(first_run)
    assert OutdatedCertificate.objects.get().since == first_run
    (message,) = outdated_mails()
    assert message.to == [NEW]

    run(first_run + GRACE - timedelta(hours=1))
    assert statuses(certificate) == ["valid"]
    run(first_run + GRACE)
    assert statuses(certificate) == ["revoked"]


def test_a_certificate_issued_after_the_recorded_change_gets_a_full_grace_period(
    make_certificate, employee, run
):
    """Changed by save() a week ago, then by update() (no moment) after a new certificate:
    its clock starts when the run first sees it, not at the week-old change."""
    long_ago = timezone.now() - timedelta(days=7)
    change_address(employee, at=long_ago)
    fresh = make_certificate(employee)
    assert fresh.email == NEW
    get_user_model().objects.filter(pk=employee.pk).update(email="alice.a@example.com")
    now = timezone.now() + timedelta(minutes=5)

    run(now)

    assert OutdatedCertificate.objects.get().since == now
    assert statuses(fresh) == ["valid"]


def test_an_account_without_an_address_any_more_is_not_mailed_but_still_revoked(
    make_certificate, employee, run
):
    certificate = make_certificate(employee)
    changed = timezone.now()
    change_address(employee, "", at=changed)

    run(changed + timedelta(minutes=5))
    assert outdated_mails() == []
    run(changed + GRACE)
    assert statuses(certificate) == ["revoked"]


def test_with_automatic_revocation_off_the_holder_is_told_and_nothing_is_revoked(
    make_certificate, employee, run, settings
):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = None
    certificate = make_certificate(employee)
    changed = timezone.now()
    change_address(employee, at=changed)

    run(changed + timedelta(days=30))

    (message,) = outdated_mails()
    assert "revoked by an RA officer" in message.body
    assert statuses(certificate) == ["valid"]


def test_renewing_issues_for_the_new_address_and_supersedes_the_old_certificate(
    make_certificate, employee, template, run
):
    old = make_certificate(employee)
    change_address(employee)
    run(timezone.now() + timedelta(minutes=5))

    request = services.request_submit(
        requester=employee,
        template=template("smime-signing"),
        csr=csr(new_key()),
        renewal_of=old,
        channel="web",
    )

    request.refresh_from_db()
    assert request.state == CertificateRequest.State.ISSUED
    assert request.certificate.emails == [NEW]
    old.refresh_from_db()
    assert (old.status, old.revocation_reason) == ("revoked", "superseded")
    assert outdated.outdated_count(now=timezone.now()) == 0


def test_a_renewal_waiting_for_approval_survives_the_old_certificates_revocation(
    make_certificate, employee, officer, template, approval, run
):
    """The holder did as the mail said; the officer approved after the grace period."""
    approval("smime-signing")
    old = make_certificate(employee)
    change_address(employee)
    request = services.request_submit(
        requester=employee,
        template=template("smime-signing"),
        csr=csr(new_key()),
        renewal_of=old,
        channel="web",
    )
    assert request.state == CertificateRequest.State.PENDING
    run(timezone.now() + GRACE + timedelta(minutes=5))
    old.refresh_from_db()
    assert (old.status, old.revocation_reason) == ("revoked", "affiliationChanged")

    services.request_approve(request=request, officer=officer, reason="Known")

    request.refresh_from_db()
    assert request.state == CertificateRequest.State.ISSUED
    assert request.certificate.emails == [NEW]
    old.refresh_from_db()
    assert old.revocation_reason == "affiliationChanged"  # not superseded over it


def test_a_renewal_of_a_certificate_revoked_for_other_reasons_still_stops(
    make_certificate, employee, officer, template, approval
):
    approval("smime-signing")
    old = make_certificate(employee)
    request = services.request_submit(
        requester=employee,
        template=template("smime-signing"),
        csr=csr(new_key()),
        renewal_of=old,
        channel="web",
    )
    services.certificate_revoke(certificate=old, reason="keyCompromise")

    with pytest.raises(InvalidState, match="no longer valid"):
        services.request_approve(request=request, officer=officer, reason="Known")


def test_a_failure_looking_for_them_does_not_stop_the_leavers_revocation(
    make_certificate, colleague, run, monkeypatch
):
    held = make_certificate(colleague)
    gone = timezone.now()
    colleague.is_active = False
    with time_machine.travel(gone, tick=False):
        colleague.save()

    def broken(**kwargs):
        raise RuntimeError("the database hiccupped")

    monkeypatch.setattr(outdated, "outdated_sync", broken)

    outcome = run(gone + GRACE)

    assert outcome["revoked_certificates"] == 1
    assert statuses(held) == ["revoked"]


# --- the cap counts both kinds ---------------------------------------------------------------


@pytest.fixture
def mass_change(make_certificate):
    """Three addresses rewritten at once, as a directory sync gone wrong would; cap 2."""
    people = [UserFactory(username=f"renamed{n}") for n in range(3)]
    certificates = [make_certificate(person) for person in people]
    changed = timezone.now()
    for person in people:
        change_address(person, f"{person.username}@new.example.com", at=changed)
    return changed, people, certificates


def test_more_holders_due_than_the_cap_revokes_none_and_says_so(mass_change, run):
    changed, _people, certificates = mass_change
    run(changed + timedelta(minutes=10))

    outcome = run(changed + GRACE)

    assert (outcome["due"], outcome["held_back"], outcome["revoked_certificates"]) == (3, 3, 0)
    assert statuses(*certificates) == ["valid"] * 3
    (held,) = events("leaver.held_back")
    assert held.detail["address_changed"] == 3
    assert held.detail["deactivated"] == 0
    with time_machine.travel(changed + GRACE + timedelta(minutes=5), tick=False):
        check = leavers.leaver_check()
    assert check["status"] == "warn"
    assert "3 accounts (0 deactivated, 3 whose e-mail address changed)" in check["problems"][0]
    assert "revoke_deactivated --confirm" in check["problems"][0]


def test_leavers_and_changed_addresses_are_counted_together(make_certificate, employee, run):
    """One leaver and two changed addresses: three accounts due, over a cap of two."""
    leaver = UserFactory(username="leaving")
    kept = make_certificate(leaver)
    renamed = [UserFactory(username=f"renamed{n}") for n in range(2)]
    theirs = [make_certificate(person) for person in renamed]
    changed = timezone.now()
    leaver.is_active = False
    with time_machine.travel(changed, tick=False):
        leaver.save()
    for person in renamed:
        change_address(person, f"{person.username}@new.example.com", at=changed)
    run(changed + timedelta(minutes=10))

    outcome = run(changed + GRACE)

    assert outcome["held_back"] == 3
    assert statuses(kept, *theirs) == ["valid"] * 3


def test_an_account_both_deactivated_and_renamed_counts_once(make_certificate, employee, run):
    certificate = make_certificate(employee)
    changed = timezone.now()
    change_address(employee, at=changed)
    employee.is_active = False
    with time_machine.travel(changed, tick=False):
        employee.save()
    run(changed + timedelta(minutes=10))

    outcome = run(changed + GRACE)

    assert (outcome["due"], outcome["revoked_accounts"]) == (1, 1)
    assert statuses(certificate) == ["revoked"]


def test_the_command_lists_them_and_confirming_revokes_them_whatever_the_cap(
    mass_change, run, django_capture_on_commit_callbacks
):
    changed, people, certificates = mass_change
    run(changed + timedelta(minutes=10))
    run(changed + GRACE)  # held back

    listing = StringIO()
    with time_machine.travel(changed + GRACE + timedelta(minutes=20), tick=False):
        call_command("revoke_deactivated", stdout=listing, stderr=StringIO())
    text = listing.getvalue()
    assert "No deactivated account is due." in text
    assert "3 certificate(s) due because their holder's address changed:" in text
    for person, certificate in zip(people, certificates, strict=True):
        assert f"{person.username}@example.com -> {person.email}" in text
        assert certificate.serial in text
    assert "more than the cap (2)" in text
    assert statuses(*certificates) == ["valid"] * 3

    out = StringIO()
    with (
        time_machine.travel(changed + GRACE + timedelta(minutes=30), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        call_command("revoke_deactivated", "--confirm", stdout=out, stderr=StringIO())

    assert "Revoked 3 certificate(s) of 3 account(s) (affiliationChanged)." in out.getvalue()
    assert statuses(*certificates) == ["revoked"] * 3
    assert {e.detail["source"] for e in events("outdated.revoke")} == {"command"}


# --- a change back racing the run (row locks) -------------------------------------------------


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@needs_row_locks
def test_an_address_changed_back_while_the_run_waits_for_the_account_keeps_the_certificate(
    make_certificate, employee, monkeypatch
):
    certificate = make_certificate(employee)
    changed = timezone.now() - GRACE - timedelta(hours=1)
    change_address(employee, at=changed)
    with time_machine.travel(changed + timedelta(minutes=5), tick=False):
        leavers.leavers_revoke()
    reached = threading.Event()
    revoke_account = outdated.revoke_account

    def announce(*args, **kwargs):
        reached.set()
        return revoke_account(*args, **kwargs)

    monkeypatch.setattr(outdated, "revoke_account", announce)
    result: dict = {}

    def work() -> None:
        try:
            result["value"] = leavers.leavers_revoke()
        except BaseException as exc:
            result["error"] = exc
        finally:
            connection.close()

    with transaction.atomic():
        # The admin puts the address back: the row stays locked until this commits.
        user = get_user_model().objects.select_for_update().get(pk=employee.pk)
        change_address(user, "alice@example.com")
        running = threading.Thread(target=work)
        running.start()
        assert reached.wait(timeout=30)
        running.join(timeout=0.5)
        assert running.is_alive()
    running.join(timeout=30)

    assert "error" not in result
    assert result["value"].revoked_certificates == 0
    assert statuses(certificate) == ["valid"]


# --- when looking for them fails -----------------------------------------------------------


def test_a_holder_that_cannot_be_recorded_is_reported_and_the_others_are(
    make_certificate, employee, colleague, run, monkeypatch
):
    """Failures here used to be logged only: the run said nothing and /health/ stayed ok."""
    mine, theirs = make_certificate(employee), make_certificate(colleague)
    change_address(employee)
    change_address(colleague, "colin.new@example.com")
    record = outdated._record_and_tell

    def fails_for_alice(owner_pk, certificates, **options):
        if owner_pk == employee.pk:
            raise RuntimeError("mail server on fire")
        return record(owner_pk, certificates, **options)

    monkeypatch.setattr(outdated, "_record_and_tell", fails_for_alice)

    moment = timezone.now() + timedelta(minutes=5)
    run(moment)

    assert not OutdatedCertificate.objects.filter(pk=mine.pk).exists()
    assert OutdatedCertificate.objects.filter(pk=theirs.pk).exists()
    check = leavers.leaver_check(now=moment)
    assert check["status"] == "warn"
    assert "mail server on fire" in " ".join(map(str, check["problems"]))


def test_the_time_limit_is_not_swallowed_while_looking(
    make_certificate, employee, colleague, monkeypatch
):
    """Celery's soft limit is an Exception: caught per holder, the run went on to the hard
    limit, which kills the worker with nothing recorded and nothing revoked."""
    from celery.exceptions import SoftTimeLimitExceeded

    make_certificate(employee), make_certificate(colleague)
    change_address(employee)
    change_address(colleague, "colin.new@example.com")
    seen = []

    def limit_reached(owner_pk, certificates, **options):
        seen.append(owner_pk)
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(outdated, "_record_and_tell", limit_reached)

    with pytest.raises(SoftTimeLimitExceeded):
        outdated.outdated_sync(now=timezone.now(), delay=GRACE)
    assert len(seen) == 1  # stopped at the first, not carried on
