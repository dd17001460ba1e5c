"""Publishers and revokers at once on PostgreSQL: numbers only go up, nothing is lost.

Each thread has its own database connection, so the row locks are real. SQLite
serialises every writer anyway, so these run on PostgreSQL only.
"""

from __future__ import annotations

import threading
import time

import pytest

from cryptography import x509

from django.db import connection, transaction

from enrollment import keystore, services, tasks
from enrollment.models import AuditEvent, CertificateAuthority, CrlEntry, RevocationList
from tests.enrollment.tools import issue, new_key
from tests.markers import needs_row_locks

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    needs_row_locks,
]

REASONS = [None, "keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation"]


def run_threads(*targets) -> list[BaseException]:
    """Start every target at the same moment; each closes its own connection."""
    barrier = threading.Barrier(len(targets))
    errors: list[BaseException] = []

    def wrapped(target) -> None:
        try:
            barrier.wait(timeout=30)
            target()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=wrapped, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


def test_concurrent_revokers_and_publishers_never_share_a_number_or_lose_a_revocation(
    hierarchy, template, employee
):
    ca = hierarchy.issuing
    # Each its own key: one revoked for keyCompromise would take its key's others with it.
    certificates = [issue(employee, template("smime-signing"), new_key()) for _ in range(24)]

    def revoker(chunk):
        def revoke() -> None:
            # Tasks run inline here, so every revocation also publishes right after commit.
            for index, certificate in enumerate(chunk):
                services.certificate_revoke(
                    certificate=certificate, reason=REASONS[index % len(REASONS)]
                )

        return revoke

    def publisher(forced: bool):
        def publish() -> None:
            for _ in range(5):
                if forced:
                    services.crl_publish(ca=ca)
                else:
                    services.crl_publish_if_due(ca=ca)

        return publish

    errors = run_threads(
        *(revoker(certificates[start::3]) for start in range(3)),
        publisher(True),
        publisher(True),
        publisher(False),
    )

    assert errors == []
    # Every publication, in the order it committed: numbers strictly increase, none shared.
    numbers = [
        event.detail["number"]
        for event in AuditEvent.objects.filter(
            action="crl.publish", outcome="success", object_type="enrollment.RevocationList"
        ).order_by("pk")
    ]
    assert numbers == list(range(1, len(numbers) + 1))
    assert len(numbers) > services.CRL_HISTORY  # enough contention to mean something
    published = list(RevocationList.objects.filter(ca=ca).order_by("number"))
    assert [crl.number for crl in published] == numbers[-services.CRL_HISTORY :]
    assert all(
        a.this_update <= b.this_update for a, b in zip(published, published[1:], strict=False)
    )
    newest = x509.load_der_x509_crl(bytes(published[-1].der))
    assert {entry.serial_number for entry in newest} == {
        int(certificate.serial, 16) for certificate in certificates
    }
    assert not CrlEntry.objects.filter(first_crl_number__isnull=True).exists()
    number = newest.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == numbers[-1] == hierarchy.issuing.latest_crl().number


def test_a_revocation_does_not_wait_for_a_crl_being_built(
    hierarchy, template, employee, ec_p256_key, monkeypatch
):
    """The publisher's lock (FOR NO KEY UPDATE) lets the revocation insert its CRL entry."""
    monkeypatch.setattr(tasks, "_send_crl_publish", lambda ca_id: None)  # as with a broker
    certificate = issue(employee, template("smime-signing"), ec_p256_key)
    locked, release = threading.Event(), threading.Event()

    def build_a_huge_crl() -> None:
        with transaction.atomic():
            services._lock_ca(hierarchy.issuing)
            locked.set()
            release.wait(timeout=20)

    holder = threading.Thread(target=lambda: run_threads(build_a_huge_crl))
    holder.start()
    assert locked.wait(timeout=10)
    started = time.monotonic()
    try:
        services.certificate_revoke(certificate=certificate, reason="keyCompromise")
        elapsed = time.monotonic() - started
    finally:
        release.set()
        holder.join(timeout=30)

    assert elapsed < 1.0
    assert CrlEntry.objects.filter(certificate=certificate).exists()


def waiting_for_a_lock() -> bool:
    """Another connection of this database waits for a row lock."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


def test_a_failure_after_a_crl_committed_while_the_attempt_waited_for_the_lock_is_shown(
    hierarchy, settings
):
    """Two workers: one publishes, holding the CA's lock; the other's task begins, waits
    for the lock, then fails. The first's CRL is the one the second worked from: the
    failure is shown. Compared with the newest CRL before the lock, it was hidden."""
    ca = hierarchy.issuing
    before = ca.latest_crl().number
    published, release = threading.Event(), threading.Event()

    def publish_and_hold() -> None:
        with transaction.atomic():
            services.crl_publish(ca=ca)
            published.set()
            release.wait(timeout=30)

    failing: list[BaseException] = []
    holder = threading.Thread(target=lambda: run_threads(publish_and_hold))
    second = threading.Thread(
        target=lambda: failing.extend(run_threads(lambda: tasks.crl_publish_task(ca.pk, True)))
    )
    holder.start()
    try:
        assert published.wait(timeout=30)
        settings.PKIPORTAL_CA_KEY_PASSPHRASE = "not the passphrase"  # the second worker's key
        keystore._PROCESS_KEYS.clear()
        second.start()
        deadline = time.monotonic() + 30
        while not waiting_for_a_lock() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert waiting_for_a_lock()  # the second task began and waits for the CA's row
    finally:
        release.set()
        holder.join(timeout=30)
        if second.is_alive():
            second.join(timeout=30)

    assert [type(error) for error in failing] == [keystore.KeyStoreError]
    stored = CertificateAuthority.objects.get(pk=ca.pk)
    assert stored.latest_crl().number == before + 1
    assert stored.crl_error_code == "KeyStoreError"
    assert stored.crl_failed_at is not None
