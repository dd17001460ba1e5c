"""People who have left: their certificates are revoked a grace period after deactivation.

The hourly task revokes (affiliationChanged, through the revocation service: CRL, audit
as "system", the holder's mail) what accounts deactivated long enough ago still hold; an
account reactivated in time keeps everything; more accounts due than the cap means none
are revoked, and /health/ and the RA console say so. Runs on SQLite and, with
DATABASE_URL, on PostgreSQL; the race with a reactivation needs PostgreSQL's row locks.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from io import StringIO

import pytest
import time_machine

from cryptography import x509

from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.utils import timezone

from enrollment import keystore, leavers, services
from enrollment.models import (
    AuditEvent,
    Certificate,
    CrlEntry,
    LeaverRevocationRun,
    RevocationList,
)
from enrollment.tasks import leavers_revoke_task
from tests.conftest import client_for
from tests.enrollment.tools import issue, new_key
from tests.factories import UserFactory
from tests.markers import needs_row_locks

pytestmark = pytest.mark.django_db

GRACE = timedelta(hours=72)


@pytest.fixture(autouse=True)
def _grace_and_cap(settings):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 72
    settings.PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN = 2


@pytest.fixture
def make_certificate(hierarchy, template):
    """A signing certificate of the owner's (each its own key)."""
    return lambda owner, slug="smime-signing": issue(owner, template(slug), new_key())


def deactivate(user, at=None):
    with time_machine.travel(at or timezone.now(), tick=False):
        user.is_active = False
        user.save()
    return user


def reactivate(user):
    user.is_active = True
    user.save()
    return user


@pytest.fixture
def run(task_at):
    """The beat task at a moment, with what it queues on commit (CRL, mail) carried out."""
    return lambda moment: task_at(leavers_revoke_task, moment)


def statuses(*certificates: Certificate) -> list[str]:
    return [Certificate.objects.get(pk=c.pk).status for c in certificates]


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def test_the_beat_schedule_names_a_task_the_worker_knows(settings):
    from pkiportal.celery import app

    entry = settings.CELERY_BEAT_SCHEDULE["leavers-revoke"]

    assert entry["task"] in app.tasks
    assert entry["schedule"] == timedelta(hours=1)


# --- the grace period -------------------------------------------------------------------


def test_nothing_is_revoked_before_the_grace_period_ends(make_certificate, employee, run):
    certificate = make_certificate(employee)
    gone = timezone.now()
    deactivate(employee, gone)

    outcome = run(gone + GRACE - timedelta(minutes=1))

    assert outcome["revoked_certificates"] == 0
    assert statuses(certificate) == ["valid"]
    assert events("certificate.revoke") == []
    assert mail.outbox == []


def test_after_the_grace_period_every_held_certificate_is_revoked_as_affiliation_changed(
    make_certificate, employee, run, hierarchy
):
    signing = make_certificate(employee)
    encryption = make_certificate(employee, "smime-dual-use")
    gone = timezone.now()
    deactivate(employee, gone)

    outcome = run(gone + GRACE)

    assert outcome == {
        "due": 1,
        "held_back": 0,
        "revoked_accounts": 1,
        "revoked_certificates": 2,
        "failed_accounts": 0,
        "revoked_mailboxes": 0,
        "failed_mailboxes": 0,
    }
    for certificate in (signing, encryption):
        revoked = Certificate.objects.get(pk=certificate.pk)
        assert revoked.status == "revoked"
        assert revoked.revocation_reason == "affiliationChanged"
        assert revoked.revoked_at == gone + GRACE
        assert CrlEntry.objects.get(certificate=revoked).first_crl_number is not None
    # The next CRL lists both, with the reason.
    crl = RevocationList.objects.filter(ca=hierarchy.issuing).newest_first().first()
    parsed = x509.load_der_x509_crl(bytes(crl.der))
    for certificate in (signing, encryption):
        entry = parsed.get_revoked_certificate_by_serial_number(int(certificate.serial, 16))
        assert entry is not None
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        assert reason == x509.ReasonFlags.affiliation_changed
    # Audited as the system's, like any revocation, with one event saying why.
    revocations = events("certificate.revoke")
    assert [(e.actor_name, e.detail["reason"]) for e in revocations] == [
        ("system", "affiliationChanged"),
        ("system", "affiliationChanged"),
    ]
    (why,) = events("leaver.revoke")
    assert (why.actor_name, why.object_repr) == ("system", "alice")
    assert why.detail["serials"] == [signing.serial, encryption.serial]
    assert why.detail["source"] == "schedule"
    # The holder is told, as for any revocation.
    assert [m.subject for m in mail.outbox] == ["Your certificate was revoked"] * 2


def test_a_second_run_does_nothing_more(make_certificate, employee, run):
    make_certificate(employee)
    gone = timezone.now()
    deactivate(employee, gone)
    run(gone + GRACE)
    written = AuditEvent.objects.count()

    outcome = run(gone + GRACE + timedelta(hours=1))

    assert outcome["due"] == 0
    assert outcome["revoked_certificates"] == 0
    assert AuditEvent.objects.count() == written


def test_an_account_reactivated_within_the_grace_period_keeps_its_certificates(
    make_certificate, employee, run
):
    certificate = make_certificate(employee)
    gone = timezone.now()
    deactivate(employee, gone)
    reactivate(employee)

    outcome = run(gone + GRACE + timedelta(days=1))

    assert outcome["due"] == 0
    assert statuses(certificate) == ["valid"]


def test_deactivating_again_starts_a_new_grace_period(make_certificate, employee, run):
    certificate = make_certificate(employee)
    first = timezone.now()
    deactivate(employee, first)
    reactivate(employee)
    second = first + timedelta(days=2)
    deactivate(employee, second)

    run(first + GRACE + timedelta(hours=1))
    assert statuses(certificate) == ["valid"]

    run(second + GRACE)
    assert statuses(certificate) == ["revoked"]


def test_only_held_certificates_of_inactive_accounts_are_touched(
    make_certificate, employee, colleague, run
):
    already = make_certificate(employee)
    services.certificate_revoke(certificate=already, reason="superseded")
    expired = make_certificate(employee)
    Certificate.objects.filter(pk=expired.pk).update(
        not_before=timezone.now() - timedelta(days=400), not_after=timezone.now()
    )
    kept = make_certificate(colleague)  # bob is still here
    gone = timezone.now()
    deactivate(employee, gone)

    outcome = run(gone + GRACE)

    assert outcome["due"] == 0
    assert Certificate.objects.get(pk=already.pk).revocation_reason == "superseded"
    assert statuses(expired, kept) == ["valid", "valid"]


def test_an_account_switched_off_without_a_save_starts_its_grace_period_at_the_next_run(
    make_certificate, employee, run
):
    """QuerySet.update() skips User.save(): the hourly run starts the clock instead."""
    certificate = make_certificate(employee)
    get_user_model().objects.filter(pk=employee.pk).update(is_active=False)
    first_run = timezone.now() + timedelta(hours=1)

    run(first_run)
    employee.refresh_from_db()
    assert employee.deactivated_at == first_run
    assert statuses(certificate) == ["valid"]

    run(first_run + GRACE)
    assert statuses(certificate) == ["revoked"]


def test_with_automatic_revocation_off_nothing_is_revoked_or_recorded(
    make_certificate, employee, run, settings
):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = None
    certificate = make_certificate(employee)
    gone = timezone.now()
    deactivate(employee, gone)

    outcome = run(gone + timedelta(days=30))

    assert outcome["due"] == 0
    assert statuses(certificate) == ["valid"]
    assert not LeaverRevocationRun.objects.exists()
    assert leavers.leaver_check() == {"status": "ok", "mode": "off"}


def test_a_grace_period_of_zero_revokes_at_the_next_run(make_certificate, employee, run, settings):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 0
    certificate = make_certificate(employee)
    gone = timezone.now()
    deactivate(employee, gone)

    run(gone)

    assert statuses(certificate) == ["revoked"]


def test_one_account_failing_does_not_stop_the_others_and_is_reported(
    make_certificate, employee, colleague, run, monkeypatch, officer
):
    alices, bobs = make_certificate(employee), make_certificate(colleague)
    gone = timezone.now()
    deactivate(employee, gone)
    deactivate(colleague, gone)
    revoke = services.certificate_revoke

    def fails_for_alice(*, certificate, **options):
        if certificate.owner_id == employee.pk:
            raise RuntimeError("the disk is full")
        return revoke(certificate=certificate, **options)

    monkeypatch.setattr(services, "certificate_revoke", fails_for_alice)

    outcome = run(gone + GRACE)

    assert (outcome["revoked_accounts"], outcome["failed_accounts"]) == (1, 1)
    assert statuses(alices, bobs) == ["valid", "revoked"]
    check = leavers.leaver_check()
    assert check["status"] == "warn"
    assert "could not revoke the certificates of 1" in check["problems"][0]
    assert "the disk is full" in check["problems"][0]

    monkeypatch.setattr(services, "certificate_revoke", revoke)
    run(gone + GRACE + timedelta(hours=1))

    assert statuses(alices) == ["revoked"]
    assert leavers.leaver_check()["status"] == "ok"


def test_the_time_limit_stops_the_run_with_what_it_did_recorded(
    make_certificate, employee, colleague, run, monkeypatch
):
    """Celery's soft limit is an Exception: counted as one more failing account, the run
    would go on until the hard limit killed it with nothing recorded."""
    from celery.exceptions import SoftTimeLimitExceeded

    first, second = make_certificate(employee), make_certificate(colleague)
    gone = timezone.now()
    deactivate(employee, gone)
    deactivate(colleague, gone + timedelta(minutes=1))  # the run takes the older first
    revoke = services.certificate_revoke

    def limit_reached_at_the_second(*, certificate, **options):
        if certificate.owner_id == colleague.pk:
            raise SoftTimeLimitExceeded()
        return revoke(certificate=certificate, **options)

    monkeypatch.setattr(services, "certificate_revoke", limit_reached_at_the_second)

    outcome = run(gone + GRACE + timedelta(minutes=1))

    assert statuses(first, second) == ["revoked", "valid"]
    assert (outcome["revoked_accounts"], outcome["failed_accounts"]) == (1, 0)
    assert "time limit" in LeaverRevocationRun.objects.get().error


def test_health_warns_when_the_hourly_run_stops_finishing(make_certificate, employee, run):
    make_certificate(employee)
    ran = timezone.now()
    run(ran)

    assert leavers.leaver_check(now=ran + timedelta(hours=2))["status"] == "ok"
    stale = leavers.leaver_check(now=ran + timedelta(hours=4))
    assert stale["status"] == "warn"
    assert "last finished at" in stale["problems"][0]


# --- the cap ---------------------------------------------------------------------------


@pytest.fixture
def three_leavers(make_certificate):
    """Three accounts deactivated at once, as a directory-sync glitch would; the cap is 2."""
    gone = timezone.now()
    people = [UserFactory(username=f"leaver{n}") for n in range(3)]
    certificates = [make_certificate(person) for person in people]
    for person in people:
        deactivate(person, gone)
    return gone, people, certificates


def test_more_accounts_due_than_the_cap_revokes_none_and_says_so(three_leavers, run, caplog):
    gone, _people, certificates = three_leavers

    with caplog.at_level(logging.ERROR, logger="enrollment.leavers"):
        outcome = run(gone + GRACE)

    assert outcome["held_back"] == 3
    assert outcome["revoked_certificates"] == 0
    assert statuses(*certificates) == ["valid"] * 3
    assert events("certificate.revoke") == []
    (held,) = events("leaver.held_back")
    assert (held.actor_name, held.outcome) == ("system", "failure")
    assert held.detail == {
        "held_back": 3,
        "cap": 2,
        "after_hours": 72,
        "deactivated": 3,
        "address_changed": 0,
    }
    assert "3 deactivated accounts are due" in caplog.text
    assert "revoke_deactivated --confirm" in caplog.text
    row = LeaverRevocationRun.objects.get()
    assert (row.due, row.held_back, row.cap) == (3, 3, 2)


def test_exactly_as_many_as_the_cap_are_revoked(three_leavers, run):
    gone, people, certificates = three_leavers
    reactivate(people[0])  # the directory put one back

    outcome = run(gone + GRACE)

    assert outcome["revoked_accounts"] == 2
    assert statuses(*certificates) == ["valid", "revoked", "revoked"]


@pytest.fixture
def signed_root(hierarchy):
    """The root's CRL, so that /health/ has nothing else to complain about."""
    return services.crl_publish(
        ca=hierarchy.root,
        offline_key=keystore.OfflineKey(hierarchy.root_key_path, hierarchy.root_passphrase),
    )


def test_health_is_degraded_while_accounts_are_held_back(three_leavers, run, officer, signed_root):
    gone, _people, _certificates = three_leavers
    run(gone + GRACE)

    with time_machine.travel(gone + GRACE + timedelta(minutes=5), tick=False):
        response = client_for(officer).get("/health/")
        anonymous = client_for(None).get("/health/")

    assert response.status_code == 200  # warn, not fail: the load balancer keeps the portal
    body = response.json()
    assert body["status"] == "warn"
    check = body["checks"]["leavers"]
    assert check["status"] == "warn"
    assert check["held_back"] == 3
    assert "3 deactivated accounts are due for certificate revocation" in check["problems"][0]
    assert "revoke_deactivated --confirm" in check["problems"][0]
    assert (anonymous.status_code, anonymous.json()) == (200, {"status": "warn"})


def test_reactivating_the_accounts_clears_the_warning_before_the_next_run(three_leavers, run):
    gone, people, _certificates = three_leavers
    run(gone + GRACE)
    reactivate(people[0])
    reactivate(people[1])

    with time_machine.travel(gone + GRACE + timedelta(minutes=5), tick=False):
        assert leavers.leaver_check()["status"] == "ok"


def test_the_warning_stays_until_someone_acts(three_leavers, run):
    gone, _people, _certificates = three_leavers
    run(gone + GRACE)
    run(gone + GRACE + timedelta(hours=1))

    with time_machine.travel(gone + GRACE + timedelta(hours=1, minutes=5), tick=False):
        assert leavers.leaver_check()["status"] == "warn"
    assert len(events("leaver.held_back")) == 2  # one event per run that held back


def test_a_confirmed_run_revokes_them_regardless_of_the_cap(three_leavers):
    gone, _people, certificates = three_leavers

    with time_machine.travel(gone + GRACE, tick=False):
        outcome = leavers.leavers_revoke(confirmed=True)
        check = leavers.leaver_check()

    assert outcome.revoked_accounts == 3
    assert statuses(*certificates) == ["revoked"] * 3
    assert {e.detail["source"] for e in events("leaver.revoke")} == {"command"}
    assert check["status"] == "ok"


# --- a reactivation racing the run (row locks) ------------------------------------------


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@needs_row_locks
def test_an_account_reactivated_while_the_run_waits_for_it_keeps_its_certificates(
    make_certificate, employee, monkeypatch
):
    certificate = make_certificate(employee)
    gone = timezone.now() - GRACE
    deactivate(employee, gone)
    reached = threading.Event()
    revoke_account = leavers._revoke_account

    def announce(*args, **kwargs):
        reached.set()
        return revoke_account(*args, **kwargs)

    monkeypatch.setattr(leavers, "_revoke_account", announce)
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["value"] = leavers.leavers_revoke()
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            connection.close()

    with transaction.atomic():
        # The admin reactivates: the account's row stays locked until this commits.
        get_user_model().objects.select_for_update().get(pk=employee.pk)
        reactivate(employee)
        running = threading.Thread(target=work)
        running.start()
        assert reached.wait(timeout=30)  # the run listed the account as due
        running.join(timeout=0.5)
        assert running.is_alive()  # and waits on its row
    running.join(timeout=30)

    assert "error" not in outcome
    assert outcome["value"].due == 1
    assert outcome["value"].revoked_accounts == 0
    assert statuses(certificate) == ["valid"]


# --- manage.py revoke_deactivated --------------------------------------------------------


def command(*args: str, at) -> str:
    out = StringIO()
    with time_machine.travel(at, tick=False):
        call_command("revoke_deactivated", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_the_command_lists_who_is_due_and_revokes_nothing(three_leavers, make_certificate):
    gone, people, certificates = three_leavers
    later = UserFactory(username="in-grace")
    make_certificate(later)
    deactivate(later, gone + timedelta(hours=1))

    output = command(at=gone + GRACE)

    assert "72 hours after an account is deactivated, for at most 2 accounts a run" in output
    assert "3 deactivated account(s) due:" in output
    for person in people:
        assert f"  {person.username}  Test {person.last_name}  deactivated " in output
    assert f"due {gone + GRACE:%Y-%m-%d %H:%M} UTC  1 certificate(s)" in output
    assert "in-grace" not in output
    assert "more than the cap (2): the hourly run revokes none" in output
    assert "--confirm" in output
    assert statuses(*certificates) == ["valid"] * 3
    assert AuditEvent.objects.filter(action__startswith="leaver.").count() == 0


def test_the_command_says_when_nobody_is_due(employee, make_certificate):
    make_certificate(employee)
    gone = timezone.now()
    deactivate(employee, gone)

    assert "No deactivated account is due." in command(at=gone + GRACE - timedelta(hours=1))


def test_the_command_with_confirm_revokes_them_whatever_the_cap_audited_as_the_system(
    three_leavers, run, django_capture_on_commit_callbacks
):
    gone, _people, certificates = three_leavers
    run(gone + GRACE)  # the hourly run held them back

    with django_capture_on_commit_callbacks(execute=True):
        output = command("--confirm", at=gone + GRACE + timedelta(minutes=30))

    assert "Revoked 3 certificate(s) of 3 account(s) (affiliationChanged)." in output
    assert statuses(*certificates) == ["revoked"] * 3
    revocations = events("certificate.revoke")
    assert {(e.actor_name, e.detail["reason"]) for e in revocations} == {
        ("system", "affiliationChanged")
    }
    assert [(e.actor_name, e.detail["source"]) for e in events("leaver.revoke")] == [
        ("system", "command")
    ] * 3
    assert len(mail.outbox) == 3
    with time_machine.travel(gone + GRACE + timedelta(minutes=31), tick=False):
        assert leavers.leaver_check()["status"] == "ok"


def test_the_command_refuses_to_confirm_while_automatic_revocation_is_off(
    employee, make_certificate, settings
):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = None
    certificate = make_certificate(employee)
    deactivate(employee)

    assert "Automatic revocation is off" in command(at=timezone.now())
    with pytest.raises(CommandError, match="Automatic revocation is off"):
        command("--confirm", at=timezone.now())
    assert statuses(certificate) == ["valid"]


# --- an old deactivation time never shortens a new grace period -----------------------


def test_switched_back_on_by_update_then_off_by_save_gets_a_full_grace_period(
    employee, make_certificate, run
):
    """update() skips User.save(), so the account kept its old time while active again."""
    held = make_certificate(employee)
    first = timezone.now()
    deactivate(employee, at=first)
    get_user_model().objects.filter(pk=employee.pk).update(is_active=True)
    later = first + timedelta(days=10)

    deactivate(get_user_model().objects.get(pk=employee.pk), at=later)

    employee.refresh_from_db()
    assert employee.deactivated_at == later
    run(later + timedelta(hours=1))
    assert statuses(held) == ["valid"]
    run(later + GRACE)
    assert statuses(held) == ["revoked"]


def test_a_stale_instance_saved_inactive_starts_the_clock_now(employee, make_certificate, run):
    held = make_certificate(employee)
    first = timezone.now()
    stale = get_user_model().objects.get(pk=employee.pk)
    deactivate(employee, at=first)
    reactivate(get_user_model().objects.get(pk=employee.pk))
    later = first + timedelta(days=10)
    stale.deactivated_at = first  # what an instance read while the account was off holds

    deactivate(stale, at=later)

    employee.refresh_from_db()
    assert employee.deactivated_at == later
    run(later + timedelta(hours=1))
    assert statuses(held) == ["valid"]


def test_switched_on_and_off_again_by_update_gets_a_full_grace_period(
    employee, make_certificate, run
):
    """The hourly run forgets the time of accounts switched back on behind its back, so a
    later update() that switches them off again starts the clock at the next run."""
    held = make_certificate(employee)
    accounts = get_user_model().objects.filter(pk=employee.pk)
    first = timezone.now()
    deactivate(employee, at=first)
    accounts.update(is_active=True)
    run(first + timedelta(hours=1))  # hourly, while the account is on again
    later = first + timedelta(days=10)
    accounts.update(is_active=False)

    run(later)
    run(later + timedelta(hours=1))

    assert statuses(held) == ["valid"]
    assert accounts.get().deactivated_at == later
    run(later + GRACE)
    assert statuses(held) == ["revoked"]


def test_a_key_store_failure_is_reported_without_the_key_files_path(
    make_certificate, employee, run, monkeypatch
):
    from enrollment.exceptions import KeyStoreError

    make_certificate(employee)
    gone = timezone.now()
    deactivate(employee, gone)

    def key_store_down(**options):
        raise KeyStoreError("The CA key file /srv/keys/issuing.pem cannot be read.")

    monkeypatch.setattr(services, "certificate_revoke", key_store_down)
    run(gone + GRACE)

    problems = " ".join(map(str, leavers.leaver_check(now=gone + GRACE)["problems"]))
    assert "KeyStoreError: The CA cannot sign right now" in problems
    assert "/srv/keys" not in problems
