"""Issue 5: revocations reach the CRL once, fast, and never get lost.

Entries are encoded when the revocation commits; a burst of queued tasks publishes one CRL;
the watchdog catches stale CRLs and lost messages and records what it could not fix.
"""

from __future__ import annotations

import importlib
from datetime import timedelta

import pytest

from cryptography import x509

from django.apps import apps
from django.core import mail
from django.utils import timezone

from enrollment import health, keystore, services, tasks
from enrollment.exceptions import NotPermitted, PolicyViolation
from enrollment.models import (
    AuditEvent,
    Certificate,
    CertificateAuthority,
    CrlEntry,
    RevocationList,
)
from enrollment.x509 import crl_fast
from enrollment.x509.crl import RevocationReason, RevokedEntry, build_crl
from tests.enrollment.tools import error_report, issue, new_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def make_certificate(hierarchy, template, employee):
    # Each certificate its own key: one revoked for keyCompromise takes its key's others.
    return lambda owner=employee: issue(owner, template("smime-signing"), new_key())


def listed(crl: RevocationList, certificate: Certificate) -> x509.RevokedCertificate | None:
    parsed = x509.load_der_x509_crl(bytes(RevocationList.objects.get(pk=crl.pk).der))
    return parsed.get_revoked_certificate_by_serial_number(int(certificate.serial, 16))


def revoke_queued(
    certificate: Certificate, django_capture_on_commit_callbacks, reason=None, **options
):
    """Revoke as with a broker: the CRL task is queued on commit, not run."""
    with django_capture_on_commit_callbacks(execute=False):
        return services.certificate_revoke(certificate=certificate, reason=reason, **options)


# --- the entry, encoded once -----------------------------------------------------------


def test_a_revocation_stores_its_crl_entry_unpublished(
    make_certificate, django_capture_on_commit_callbacks
):
    certificate = make_certificate()
    compromised = timezone.now() - timedelta(days=2)

    revoked = revoke_queued(
        certificate,
        django_capture_on_commit_callbacks,
        reason="keyCompromise",
        invalidity_date=compromised,
    )

    entry = CrlEntry.objects.get(certificate=certificate)
    assert entry.first_crl_number is None
    assert entry.not_after == certificate.not_after
    assert bytes(entry.der) == crl_fast.encode_entry(
        RevokedEntry(
            int(certificate.serial, 16),
            revoked.revoked_at,
            RevocationReason.KEY_COMPROMISE,
            compromised,
        )
    )


def test_the_published_crl_is_the_one_cryptography_would_build_from_the_rows(
    make_certificate, django_capture_on_commit_callbacks
):
    reasons = [None, "keyCompromise", "affiliationChanged", "superseded", "privilegeWithdrawn"]
    for reason in reasons:
        revoke_queued(make_certificate(), django_capture_on_commit_callbacks, reason=reason)
    ca = CertificateAuthority.objects.get(slug="issuing")

    published = services.crl_publish(ca=ca)

    rows = Certificate.objects.filter(ca=ca).revoked().order_by("pk")
    reference = build_crl(
        issuer_certificate=ca.certificate,
        issuer_key=keystore._ca_key(ca),
        entries=[
            RevokedEntry(
                int(row.serial, 16),
                row.revoked_at,
                RevocationReason(row.revocation_reason) if row.revocation_reason else None,
            )
            for row in rows
        ],
        crl_number=published.number,
        this_update=published.this_update,
        next_update=published.next_update,
    )
    assert published.crl.tbs_certlist_bytes == reference.tbs_certlist_bytes
    assert published.crl.is_signature_valid(ca.certificate.public_key())
    assert published.entries == len(reasons)
    assert set(CrlEntry.objects.values_list("first_crl_number", flat=True)) == {published.number}


# --- coalescing -------------------------------------------------------------------------


def test_a_burst_of_queued_tasks_publishes_one_crl_listing_every_revocation(
    make_certificate, django_capture_on_commit_callbacks
):
    certificates = [make_certificate() for _ in range(30)]
    ca = certificates[0].ca
    before = ca.latest_crl().number
    with django_capture_on_commit_callbacks(execute=False) as queued:
        for certificate in certificates:
            services.certificate_revoke(certificate=certificate, reason="superseded")

    # Each revocation queued its task; the worker runs them one after the other.
    numbers = [tasks.crl_publish_task(ca.pk) for _ in certificates]

    assert len(queued) == 2 * len(certificates)  # a CRL task and an e-mail each
    assert numbers == [before + 1] + [None] * (len(certificates) - 1)
    newest = ca.latest_crl()
    assert newest.entries == len(certificates)
    assert all(listed(newest, certificate) for certificate in certificates)


def test_a_revocation_committed_after_a_crl_gets_the_next_one(
    make_certificate, django_capture_on_commit_callbacks
):
    first, second = make_certificate(), make_certificate()
    revoke_queued(first, django_capture_on_commit_callbacks)
    assert tasks.crl_publish_task(first.ca_id) is not None

    revoke_queued(second, django_capture_on_commit_callbacks)
    newest = RevocationList.objects.get(number=tasks.crl_publish_task(first.ca_id), ca=first.ca)

    assert listed(newest, first) is not None
    assert listed(newest, second) is not None


def test_the_task_is_queued_with_the_coalescing_delay(
    make_certificate, settings, django_capture_on_commit_callbacks, monkeypatch
):
    settings.PKIPORTAL_CRL_PUBLISH_DELAY_SECONDS = 3
    sent = []
    monkeypatch.setattr(
        tasks.crl_publish_task, "apply_async", lambda args, **options: sent.append((args, options))
    )
    certificate = make_certificate()

    with django_capture_on_commit_callbacks(execute=True):
        services.certificate_revoke(certificate=certificate, reason=None)

    assert sent == [((certificate.ca_id,), {"countdown": 3})]


def test_with_the_broker_down_the_revocation_commits_and_the_watchdog_catches_up(
    make_certificate, django_capture_on_commit_callbacks, monkeypatch, time_machine, caplog
):
    def broker_down(*args, **kwargs):
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(tasks.crl_publish_task, "apply_async", broker_down)
    certificate = make_certificate()
    with django_capture_on_commit_callbacks(execute=True):
        services.certificate_revoke(certificate=certificate, reason="keyCompromise")
    certificate.refresh_from_db()
    assert certificate.status == "revoked"
    assert "next scheduled run" in caplog.text

    assert tasks.crl_watchdog_task() == {"issuing": "current"}  # too recent to call it lost
    time_machine.move_to(timezone.now() + timedelta(minutes=6))
    result = tasks.crl_watchdog_task()

    assert result["issuing"].startswith("published #")
    assert listed(certificate.ca.latest_crl(), certificate) is not None


def test_an_old_revocation_made_keycompromise_waits_for_a_crl_from_then(
    make_certificate, django_capture_on_commit_callbacks, time_machine
):
    """Queued again with its new reason, the entry's wait starts at the upgrade, while its
    revocationDate stays the revocation's own (RFC 5280 5.1.2.6). Counted from revoked_at,
    the watchdog took a three-day-old revocation for a lost message."""
    certificate = make_certificate()
    services.certificate_revoke(certificate=certificate, reason="superseded")  # published
    revoked_at = Certificate.objects.get(pk=certificate.pk).revoked_at
    time_machine.move_to(timezone.now() + timedelta(days=3))
    services.crl_publish(ca=certificate.ca)  # a current CRL, not in its overlap window

    upgraded = revoke_queued(certificate, django_capture_on_commit_callbacks, "keyCompromise")

    stored = Certificate.objects.get(pk=certificate.pk)
    assert stored.revoked_at == upgraded.revoked_at == revoked_at
    assert stored.queued_for_crl_at == upgraded.queued_for_crl_at
    assert stored.queued_for_crl_at - revoked_at >= timedelta(days=3)
    assert tasks.crl_watchdog_task() == {"issuing": "current"}  # queued seconds ago
    time_machine.move_to(timezone.now() + timedelta(minutes=6))
    assert tasks.crl_watchdog_task()["issuing"].startswith("published #")
    entry = listed(certificate.ca.latest_crl(), certificate)
    assert entry.revocation_date_utc == revoked_at.replace(microsecond=0)
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise
    )


def test_entries_encoded_behind_the_services_back_wait_from_their_encoding(make_certificate):
    certificate = make_certificate()
    long_ago = timezone.now() - timedelta(days=30)
    Certificate.objects.filter(pk=certificate.pk).update(
        status="revoked", revoked_at=long_ago, revocation_reason="superseded"
    )

    services.crl_entries_repair(ca=certificate.ca)

    assert Certificate.objects.get(pk=certificate.pk).queued_for_crl_at > long_ago
    assert CrlEntry.objects.get(certificate=certificate).first_crl_number is None


def test_an_entry_without_a_queued_time_waits_since_its_revocation(
    make_certificate, django_capture_on_commit_callbacks, time_machine
):
    """Revoked by a process from before migration 0034, which leaves the column empty (it
    has no backfill): the watchdog reads revoked_at, so the entry is neither lost nor late."""
    certificate = make_certificate()
    revoke_queued(certificate, django_capture_on_commit_callbacks, "superseded")
    Certificate.objects.filter(pk=certificate.pk).update(queued_for_crl_at=None)

    assert tasks.crl_watchdog_task() == {"issuing": "current"}  # revoked seconds ago
    time_machine.move_to(timezone.now() + timedelta(minutes=6))
    assert tasks.crl_watchdog_task()["issuing"].startswith("published #")
    assert listed(certificate.ca.latest_crl(), certificate) is not None


# --- due or not -------------------------------------------------------------------------


def test_nothing_is_published_while_the_crl_is_current(hierarchy):
    assert services.crl_publish_if_due(ca=hierarchy.issuing) is None
    assert hierarchy.issuing.latest_crl().number == 1


def test_a_crl_in_its_overlap_window_is_replaced(hierarchy, time_machine):
    crl = hierarchy.issuing.latest_crl()
    overlap = timedelta(hours=72)
    time_machine.move_to(crl.next_update - overlap - timedelta(minutes=1))
    assert services.crl_publish_if_due(ca=hierarchy.issuing, overlap=overlap) is None

    time_machine.move_to(crl.next_update - overlap + timedelta(minutes=1))
    fresh = services.crl_publish_if_due(ca=hierarchy.issuing, overlap=overlap)

    assert fresh.number == crl.number + 1


def test_a_ca_without_a_crl_gets_one(hierarchy):
    RevocationList.objects.filter(ca=hierarchy.issuing).delete()

    assert services.crl_publish_if_due(ca=hierarchy.issuing).number == 1


def test_the_clock_never_runs_a_crl_backwards(hierarchy, time_machine):
    crl = hierarchy.issuing.latest_crl()
    time_machine.move_to(crl.this_update - timedelta(minutes=5))

    published = services.crl_publish(ca=hierarchy.issuing)

    assert published.this_update == crl.this_update
    assert published.number == crl.number + 1


# --- the schedule and the watchdog -----------------------------------------------------


def test_the_scheduled_run_publishes_every_online_ca(hierarchy):
    assert tasks.crl_publish_scheduled_task() == [hierarchy.issuing.pk]

    assert hierarchy.issuing.latest_crl().number == 2
    assert not hierarchy.root.revocation_lists.exists()  # offline: signed with sign_root_crl


def test_the_scheduled_run_encodes_entries_revoked_behind_the_services_back(make_certificate):
    certificate = make_certificate()
    Certificate.objects.filter(pk=certificate.pk).update(
        status="revoked", revoked_at=timezone.now(), revocation_reason="superseded"
    )

    tasks.crl_publish_scheduled_task()

    assert CrlEntry.objects.filter(certificate=certificate).exists()
    assert listed(certificate.ca.latest_crl(), certificate) is not None


def test_the_watchdog_replaces_a_crl_that_missed_its_refresh(hierarchy, settings, time_machine):
    crl = hierarchy.issuing.latest_crl()
    time_machine.move_to(crl.next_update - timedelta(hours=settings.PKIPORTAL_CRL_OVERLAP_HOURS))

    assert tasks.crl_watchdog_task() == {"issuing": f"published #{crl.number + 1}"}


def test_a_ca_keeping_a_shorter_crl_validity_is_not_republished_at_every_run(
    hierarchy, settings, time_machine
):
    """A CA keeps the CRL validity it was created with (3 days here); the settings were
    raised since (10 days, an overlap of 108 hours). Every 3-day CRL was born inside that
    overlap: the watchdog published one at every run and /health/ called it stale."""
    settings.PKIPORTAL_CRL_VALIDITY_DAYS = 10
    settings.PKIPORTAL_CRL_OVERLAP_HOURS = 108
    CertificateAuthority.objects.filter(pk=hierarchy.issuing.pk).update(crl_validity_days=3)
    ca = CertificateAuthority.objects.get(pk=hierarchy.issuing.pk)
    crl = services.crl_publish(ca=ca)
    assert crl.next_update - crl.this_update == timedelta(days=3)

    assert tasks.crl_watchdog_task()["issuing"] == "current"
    issuing = next(status for status in health.crl_status() if status.slug == "issuing")
    assert issuing.problems == []

    # Half its own slack ((72 - 24) / 2 hours) before its end, it is replaced.
    time_machine.move_to(crl.next_update - timedelta(hours=23))
    assert tasks.crl_watchdog_task()["issuing"] == f"published #{crl.number + 1}"


def test_a_failure_is_logged_audited_and_visible_until_the_next_success(
    hierarchy, settings, time_machine, caplog
):
    crl = hierarchy.issuing.latest_crl()
    time_machine.move_to(crl.next_update - timedelta(hours=1))
    settings.PKIPORTAL_CA_KEY_PASSPHRASE = "not the passphrase"
    keystore._PROCESS_KEYS.clear()

    assert tasks.crl_watchdog_task() == {"issuing": "failed: KeyStoreError"}

    ca = CertificateAuthority.objects.get(pk=hierarchy.issuing.pk)
    assert ca.crl_failed_at is not None
    assert ca.crl_error_code == "KeyStoreError"
    assert "cannot be opened" in ca.crl_error
    assert "Publishing the CRL of Test Issuing CA failed" in caplog.text
    event = AuditEvent.objects.get(action="crl.publish", outcome="failure")
    assert event.detail["error_code"] == "KeyStoreError"

    settings.PKIPORTAL_CA_KEY_PASSPHRASE = "online CA passphrase for tests"
    assert tasks.crl_watchdog_task()["issuing"].startswith("published")
    ca.refresh_from_db()
    assert (ca.crl_failed_at, ca.crl_error_code, ca.crl_error) == (None, "", "")


def test_an_error_while_opening_the_ca_key_keeps_the_passphrase_out_of_the_report(
    hierarchy, settings, monkeypatch
):
    def opening_fails(*args, **kwargs):
        raise RuntimeError("the key file went away")

    keystore._PROCESS_KEYS.clear()
    monkeypatch.setattr(keystore.keys, "load_private_key_pem", opening_fails)

    with error_report(RuntimeError) as report:
        services.crl_publish(ca=hierarchy.issuing)

    assert "load" in report.text
    assert settings.PKIPORTAL_CA_KEY_PASSPHRASE not in report.text


def test_a_failing_event_task_records_the_failure_and_raises(
    make_certificate, settings, django_capture_on_commit_callbacks
):
    certificate = make_certificate()
    revoke_queued(certificate, django_capture_on_commit_callbacks)
    settings.PKIPORTAL_CA_KEY_PASSPHRASE = "not the passphrase"
    keystore._PROCESS_KEYS.clear()

    with pytest.raises(keystore.KeyStoreError):
        tasks.crl_publish_task(certificate.ca_id)

    assert CertificateAuthority.objects.get(pk=certificate.ca_id).crl_failed_at is not None
    assert CrlEntry.objects.get(certificate=certificate).first_crl_number is None


def test_a_failure_after_another_workers_newer_crl_is_audited_not_shown(hierarchy, monkeypatch):
    """A publisher that failed rolls back, freeing the CA's row, before it records the
    failure: one waiting on the row publishes meanwhile, finding no failure to clear.
    Recorded after that CRL, the failure would fail /health/ with the newest CRL in place
    until the next publication. (Here the other worker's CRL is published inside the
    failing attempt, after it read the newest CRL under the CA's lock, which is all the
    check looks at.)"""
    publish = services.crl_publish

    def another_worker_publishes_then_this_fails(**kwargs):
        publish(**kwargs)
        raise RuntimeError("the HSM session of this worker broke")

    monkeypatch.setattr(services, "crl_publish", another_worker_publishes_then_this_fails)
    before = hierarchy.issuing.latest_crl().number

    with pytest.raises(RuntimeError):
        tasks.crl_publish_task(hierarchy.issuing.pk, force=True)

    ca = CertificateAuthority.objects.get(pk=hierarchy.issuing.pk)
    assert ca.latest_crl().number == before + 1
    assert (ca.crl_failed_at, ca.crl_error_code) == (None, "")
    failed = AuditEvent.objects.get(action="crl.publish", outcome="failure")
    assert failed.detail["error_code"] == "RuntimeError"


def test_a_failure_after_a_crl_committed_before_the_attempt_took_the_lock_is_shown(
    hierarchy, settings, monkeypatch
):
    """Another worker's CRL, committed after this task began but before it held the CA's
    lock, is the CRL this attempt worked from, not one that makes up for its failure.
    The newest CRL read before the lock hid that failure until the next publication."""
    repair = services.crl_entries_repair

    def another_worker_publishes_before_the_lock(*, ca):
        found = repair(ca=ca)
        services.crl_publish(ca=ca)  # committed: this task does not hold the lock yet
        settings.PKIPORTAL_CA_KEY_PASSPHRASE = "not the passphrase"  # this worker's key fails
        keystore._PROCESS_KEYS.clear()
        return found

    monkeypatch.setattr(services, "crl_entries_repair", another_worker_publishes_before_the_lock)
    before = hierarchy.issuing.latest_crl().number

    with pytest.raises(keystore.KeyStoreError):
        tasks.crl_publish_task(hierarchy.issuing.pk, force=True)

    ca = CertificateAuthority.objects.get(pk=hierarchy.issuing.pk)
    assert ca.latest_crl().number == before + 1
    assert ca.crl_failed_at is not None
    assert ca.crl_error_code == "KeyStoreError"


# --- who may revoke, and what they are told ---------------------------------------------


def test_a_colleague_cannot_revoke_someone_elses_certificate(make_certificate, colleague):
    certificate = make_certificate()

    with pytest.raises(NotPermitted, match="your own"):
        services.certificate_revoke(certificate=certificate, reason=None, actor=colleague)

    assert Certificate.objects.get(pk=certificate.pk).status == "valid"
    assert not CrlEntry.objects.exists()


def test_an_officer_revokes_any_certificate_and_the_holder_is_told(
    make_certificate, officer, employee, django_capture_on_commit_callbacks
):
    certificate = make_certificate()

    with django_capture_on_commit_callbacks(execute=True):
        services.certificate_revoke(certificate=certificate, reason="keyCompromise", actor=officer)

    assert [message.to for message in mail.outbox] == [[employee.email]]
    assert "by an RA officer" in mail.outbox[0].body
    assert "Key compromise" in mail.outbox[0].body
    assert certificate.serial in mail.outbox[0].body


def test_the_holder_revoking_gets_a_confirmation(
    make_certificate, employee, django_capture_on_commit_callbacks
):
    certificate = make_certificate()

    with django_capture_on_commit_callbacks(execute=True):
        services.certificate_revoke(certificate=certificate, reason=None, actor=employee)

    assert len(mail.outbox) == 1
    assert "RA officer" not in mail.outbox[0].body.split("If you did not")[0]


def test_an_entry_on_the_roots_crl_needs_a_reason(make_certificate, hierarchy):
    certificate = make_certificate()
    Certificate.objects.filter(pk=certificate.pk).update(ca=hierarchy.root)

    with pytest.raises(PolicyViolation, match="needs a reason code"):
        services.certificate_revoke(certificate=certificate, reason=None)

    assert Certificate.objects.get(pk=certificate.pk).status == "valid"


# --- the migration's backfill ------------------------------------------------------------


def test_the_migration_encodes_entries_for_certificates_revoked_before_it(
    make_certificate, django_capture_on_commit_callbacks
):

    migration = importlib.import_module("enrollment.migrations.0004_crl_publishing")
    published, waiting = make_certificate(), make_certificate()
    revoke_queued(published, django_capture_on_commit_callbacks, reason="superseded")
    crl = services.crl_publish(ca=published.ca)
    revoke_queued(waiting, django_capture_on_commit_callbacks, reason=None)
    expected = {entry.pk: bytes(entry.der) for entry in CrlEntry.objects.all()}
    CrlEntry.objects.all().delete()

    migration.encode_existing_entries(apps, None)

    entries = {entry.pk: entry for entry in CrlEntry.objects.all()}
    assert {pk: bytes(entry.der) for pk, entry in entries.items()} == expected
    assert entries[published.pk].first_crl_number == crl.number
    assert entries[waiting.pk].first_crl_number is None
