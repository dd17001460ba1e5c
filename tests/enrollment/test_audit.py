"""The audit trail: append-only in the app, tamper-evident in the database."""

from __future__ import annotations

import contextlib
from io import StringIO

import pytest

from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

from enrollment import audit, services
from enrollment.audit import audit_chain_breaks, audit_record
from enrollment.models import AuditEvent, CertificateRequest
from enrollment.x509.keys import KeyAlgorithm

pytestmark = pytest.mark.django_db


@pytest.fixture
def events(hierarchy, template, employee):
    """A real trail: CA creation, a CRL, an issuance and a revocation."""
    certificate, _ = services.certificate_issue_with_server_key(
        template=template("smime-signing"),
        owner=employee,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password="a long pkcs12 password",
    )
    services.certificate_revoke(certificate=certificate, reason="keyCompromise", actor=employee)
    return list(AuditEvent.objects.order_by("id"))


def verify() -> str:
    out = StringIO()
    call_command("verify_audit_chain", stdout=out)
    return out.getvalue()


def test_each_event_links_to_the_one_before(events):
    assert len(events) >= 5
    assert events[0].previous_hash == ""
    for before, after in zip(events, events[1:], strict=False):
        assert after.previous_hash == before.hash
    assert f"intact: {len(events)} events" in verify()


def test_the_verify_command_names_a_row_altered_in_the_database(events):
    victim = events[2]
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE enrollment_auditevent SET actor_name = %s WHERE id = %s", ["mallory", victim.pk]
        )

    with pytest.raises(
        CommandError, match=f"broken at event {victim.pk} .*does not match its hash"
    ):
        verify()


def test_the_verify_command_names_the_row_after_a_removed_one(events):
    removed, follower = events[1], events[2]
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM enrollment_auditevent WHERE id = %s", [removed.pk])

    with pytest.raises(CommandError, match=f"broken at event {follower.pk} .*does not link"):
        verify()


def test_removing_the_newest_events_is_noticed(events):
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM enrollment_auditevent WHERE id = %s", [events[-1].pk])

    assert [b.problem for b in audit_chain_breaks()] == ["the newest events were removed"]


def test_the_app_cannot_update_or_delete_events(events):
    event = AuditEvent.objects.get(pk=events[0].pk)
    event.action = "nothing.happened"

    with pytest.raises(PermissionDenied):
        event.save()
    with pytest.raises(PermissionDenied):
        event.delete()
    with pytest.raises(PermissionDenied):
        AuditEvent.objects.filter(pk=event.pk).update(action="x")
    with pytest.raises(PermissionDenied):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get(pk=event.pk).action == events[0].action


def test_details_hash_the_same_after_a_database_round_trip(db):
    event = audit_record(action="test.detail", detail={"b": [1, "two"], "a": {"x": None}})

    assert list(audit_chain_breaks()) == []
    assert AuditEvent.objects.get(pk=event.pk).hash == event.hash


# --- deferred appends: one lock of the chain head per block ---------------------------


def _chained_in_order(events: list[AuditEvent]) -> bool:
    stored = list(AuditEvent.objects.filter(pk__in=[e.pk for e in events]).order_by("id"))
    return [e.action for e in stored] == [e.action for e in events] and all(
        after.previous_hash == before.hash
        for before, after in zip(stored, stored[1:], strict=False)
    )


def test_a_deferred_block_chains_its_events_in_order_when_it_ends(db):
    audit_record(action="test.before")
    with audit.deferred():
        first = audit_record(action="test.first")
        second = audit_record(action="test.second")
        assert first.pk is None
        assert second.pk is None
        assert not AuditEvent.objects.filter(action__startswith="test.f").exists()

    assert first.pk is not None
    assert second.pk > first.pk
    assert _chained_in_order([first, second])
    assert list(audit_chain_breaks()) == []


def test_a_deferred_block_takes_the_chain_head_once(db, django_assert_num_queries):
    audit_record(action="test.before")  # the head row exists
    # Lock the head; insert the events and move the head (one statement on PostgreSQL).
    with django_assert_num_queries(2 if connection.vendor == "postgresql" else 3), audit.deferred():
        for n in range(4):
            audit_record(action=f"test.{n}")


def test_a_failing_deferred_block_leaves_neither_its_change_nor_its_events(db, employee):
    def change_then_fail() -> None:
        with transaction.atomic(), audit.deferred():
            employee.first_name = "Changed"
            employee.save()
            audit_record(action="test.changed", target=employee)
            raise RuntimeError("late failure")

    with pytest.raises(RuntimeError):
        change_then_fail()

    employee.refresh_from_db()
    assert employee.first_name != "Changed"
    assert not AuditEvent.objects.filter(action="test.changed").exists()
    assert list(audit_chain_breaks()) == []


def test_an_event_in_a_savepoint_rolled_back_inside_a_deferred_block_goes_with_it(db):
    with audit.deferred():
        kept = audit_record(action="test.kept")
        with contextlib.suppress(RuntimeError), transaction.atomic():
            audit_record(action="test.undone")  # inside a savepoint: written at once
            raise RuntimeError("undo this part only")
        also_kept = audit_record(action="test.also_kept")

    actions = list(AuditEvent.objects.order_by("id").values_list("action", flat=True))
    assert "test.undone" not in actions
    assert {"test.kept", "test.also_kept"} <= set(actions)
    assert kept.pk is not None
    assert also_kept.pk is not None
    assert list(audit_chain_breaks()) == []


def test_an_event_in_a_savepoint_that_commits_is_kept_with_the_others(db):
    with audit.deferred():
        audit_record(action="test.outer")
        with transaction.atomic():
            audit_record(action="test.inner")

    assert set(AuditEvent.objects.values_list("action", flat=True)) >= {"test.outer", "test.inner"}
    assert list(audit_chain_breaks()) == []


def test_nested_deferred_blocks_append_once_at_the_outer_end(db):
    with audit.deferred():
        outer = audit_record(action="test.outer")
        with audit.deferred():
            inner = audit_record(action="test.inner")
        assert inner.pk is None  # the outer block appends
    assert _chained_in_order([outer, inner])


def test_a_deferred_event_names_a_target_saved_later_in_the_block(employee, template):
    request = CertificateRequest(
        requester=employee,
        template=template("smime-signing"),
        key_source="server",
        key_algorithm="ec-p256",
    )
    with audit.deferred():
        event = audit_record(action="test.submit", target=request)
        request.save()

    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.object_id == str(request.pk)
    assert stored.object_repr == str(request)
    assert list(audit_chain_breaks()) == []


def test_an_event_for_a_target_never_saved_fails_the_block(employee, template):
    request = CertificateRequest(requester=employee, template=template("smime-signing"))

    with pytest.raises(ValueError, match="never saved"), audit.deferred():
        audit_record(action="test.submit", target=request)
