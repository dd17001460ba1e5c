"""Two shippers at once on PostgreSQL, while events are appended: each event reaches the
SIEM once, and none is passed over (the watermark row's lock; ids in chain order).

Each thread has its own database connection, so the row locks are real.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from django.db import connection, transaction

from enrollment import audit_shipping
from enrollment.audit import audit_record
from enrollment.models import AuditEvent, AuditForwarding
from tests.enrollment.syslog_receivers import Receiver
from tests.enrollment.test_crl_concurrency import run_threads
from tests.markers import needs_row_locks

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    needs_row_locks,
]


def test_two_shippers_and_an_appender_send_each_event_once(settings):
    receiver = Receiver()
    settings.PKIPORTAL_AUDIT_SYSLOG = f"tcp://127.0.0.1:{receiver.port}"
    for n in range(120):
        audit_record(action="test.before", detail={"n": n})

    def shipper() -> None:
        for _ in range(15):
            assert audit_shipping.ship(batch_size=7).error == ""

    def appender() -> None:
        for n in range(60):
            audit_record(action="test.during", detail={"n": n})

    try:
        errors = run_threads(shipper, shipper, appender)
        assert errors == []
        assert audit_shipping.ship().error == ""  # what the appender wrote after the last run
    finally:
        receiver.stop()

    got = [m.event["id"] for m in receiver.received()]
    every = list(AuditEvent.objects.order_by("pk").values_list("pk", flat=True))
    assert len(every) >= 180
    assert [pk for pk, seen in Counter(got).items() if seen > 1] == []
    assert sorted(got) == every
    # Within each connection the events came in the chain's order.
    for data in receiver.connections:
        from tests.enrollment.syslog_receivers import frames, parse

        ids = [parse(frame).event["id"] for frame in frames(data)]
        assert ids == sorted(ids)


def test_a_resend_waits_for_a_shipper_that_holds_the_watermark():
    """resend_from() takes the row's lock as ship() does: a batch in flight is committed
    first, and the watermark moved back is never overwritten by that batch's commit."""
    events = [audit_record(action="test.before", detail={"n": n}) for n in range(3)]
    locked, release, resent = threading.Event(), threading.Event(), threading.Event()

    def holder() -> None:
        try:
            with transaction.atomic():
                AuditForwarding.objects.get_or_create(pk=1)
                mark = AuditForwarding.objects.select_for_update().get(pk=1)
                mark.last_event_id = events[-1].pk  # as a batch just sent would
                mark.save(update_fields=["last_event_id"])
                locked.set()
                assert release.wait(timeout=30)
        finally:
            connection.close()

    def resender() -> None:
        try:
            assert locked.wait(timeout=30)
            audit_shipping.resend_from(events[1].pk)
            resent.set()
        finally:
            connection.close()

    threads = [threading.Thread(target=holder), threading.Thread(target=resender)]
    try:
        for thread in threads:
            thread.start()
        assert locked.wait(timeout=30)
        assert not resent.wait(timeout=1)  # waiting for the row's lock
        release.set()
        for thread in threads:
            thread.join(timeout=60)
        assert resent.is_set()
    finally:
        release.set()

    mark = AuditForwarding.objects.get(pk=1)
    assert mark.last_event_id == events[0].pk
    resend = AuditEvent.objects.get(action="audit.forwarding_resend")
    assert resend.detail == {"from_event": events[1].pk, "previous_watermark": events[-1].pk}
