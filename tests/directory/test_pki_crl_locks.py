"""/pki/<ca>.crl on PostgreSQL: a request never queues behind a CRL publisher's lock.

The publisher holds the CA row in another thread and connection, so the lock is real.
SQLite serialises every writer anyway, so these run on PostgreSQL only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from cryptography import x509

from django.db import connection, transaction
from django.utils import timezone

from enrollment import services
from enrollment.models import CertificateAuthority
from tests.markers import needs_row_locks

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    needs_row_locks,
]


@pytest.fixture
def publisher_holds_the_lock(hierarchy) -> Iterator[None]:
    """Another process (the worker, one request of a crowd) building a CRL meanwhile."""
    locked, release = threading.Event(), threading.Event()

    def build_a_huge_crl() -> None:
        try:
            with transaction.atomic():
                services._lock_ca(hierarchy.issuing)
                locked.set()
                release.wait(timeout=20)
        finally:
            connection.close()

    holder = threading.Thread(target=build_a_huge_crl)
    holder.start()
    assert locked.wait(timeout=10)
    try:
        yield
    finally:
        release.set()
        holder.join(timeout=30)


def test_a_request_for_an_expired_crl_does_not_wait_for_a_busy_publisher(
    anonymous_client, hierarchy, time_machine, publisher_holds_the_lock
):
    time_machine.move_to(hierarchy.issuing.latest_crl().next_update + timedelta(minutes=1))

    started = time.monotonic()
    response = anonymous_client.get("/pki/issuing.crl")
    elapsed = time.monotonic() - started

    assert elapsed < 1.0
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert "being signed right now" in response.content.decode()
    assert hierarchy.issuing.revocation_lists.count() == 1
    assert CertificateAuthority.objects.get(pk=hierarchy.issuing.pk).crl_failed_at is None


def test_once_the_publisher_is_done_the_request_signs_the_expired_crl(
    anonymous_client, hierarchy, time_machine
):
    time_machine.move_to(hierarchy.issuing.latest_crl().next_update + timedelta(minutes=1))

    response = anonymous_client.get("/pki/issuing.crl")

    assert response.status_code == 200
    assert x509.load_der_x509_crl(response.content).next_update_utc > timezone.now()


def test_a_current_crl_is_served_while_a_publisher_holds_the_lock(
    anonymous_client, hierarchy, publisher_holds_the_lock
):
    started = time.monotonic()
    response = anonymous_client.get("/pki/issuing.crl")

    assert time.monotonic() - started < 1.0
    assert response.status_code == 200
