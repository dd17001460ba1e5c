"""The audit trail: append-only in the app, tamper-evident in the database."""

from __future__ import annotations

import contextlib
import hashlib
import json
from datetime import UTC
from io import StringIO

import pytest
from hypothesis import given
from hypothesis import strategies as st

from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, DataError, connection, transaction
from django.utils import timezone

from enrollment import audit, hotsql, services
from enrollment.audit import audit_chain_breaks, audit_record
from enrollment.models import AuditChainHead, AuditEvent, CertificateRequest
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


def test_fractional_numbers_in_a_detail_are_kept_as_their_text(db):
    """jsonb would give 1e16 back as 10000000000000000 and -0.0 as 0: the stored event
    would no longer match its hash."""
    event = audit_record(
        action="test.numbers", detail={"big": 1e16, "zero": -0.0, "part": 0.1, "n": 2**60 + 1}
    )

    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.detail == {"big": "1e+16", "zero": "-0.0", "part": "0.1", "n": 2**60 + 1}
    assert list(audit_chain_breaks()) == []


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
    # PostgreSQL: lock the head, chain, insert and move it in one statement. SQLite: lock
    # (read) the head; insert the events; move the head.
    with django_assert_num_queries(1 if connection.vendor == "postgresql" else 3), audit.deferred():
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


def test_an_event_written_apart_outside_a_transaction_is_chained_at_once(db):
    before = audit_record(action="test.before")

    apart = audit.audit_record_apart(action="test.refused")

    assert apart.pk is not None
    assert _chained_in_order([before, apart])
    assert list(audit_chain_breaks()) == []


def test_an_event_written_apart_outlives_the_transaction_it_was_made_in(db, employee):
    """That transaction holds the chain's head once it appended an event: the one written
    apart waits for its end, then is chained after whatever it left."""
    audit_record(action="test.before")
    with contextlib.suppress(RuntimeError), transaction.atomic():
        audit_record(action="test.undone", target=employee)
        apart = audit.audit_record_apart(action="test.refused", actor=employee)
        assert apart.pk is None
        audit.write_apart()  # still inside: it waits
        assert apart.pk is None
        raise RuntimeError("the refused action is rolled back")

    audit.write_apart()

    assert list(AuditEvent.objects.order_by("id").values_list("action", flat=True)) == [
        "test.before",
        "test.refused",
    ]
    assert AuditEvent.objects.get(action="test.refused").actor == employee
    assert list(audit_chain_breaks()) == []


def test_events_held_back_go_with_the_next_written_apart(db):
    with transaction.atomic():
        held = audit.audit_record_apart(action="test.held")
    later = audit.audit_record_apart(action="test.later")

    assert _chained_in_order([held, later])
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


# --- the hash: one format, whoever computes it ----------------------------------------


def digest_as_always(event: AuditEvent) -> str:
    """The chain's format as it was first written: sorted, compact UTF-8 JSON, SHA-256."""
    content = {
        "created_at": event.created_at.astimezone(UTC).isoformat(),
        "actor_id": event.actor_id,
        "actor_name": event.actor_name,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "object_repr": event.object_repr,
        "outcome": event.outcome,
        "source_address": event.source_address,
        "detail": event.detail,
        "previous_hash": event.previous_hash,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


TEXT = st.text(max_size=30)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


@given(
    actor_id=st.none() | st.integers(min_value=1),
    texts=st.lists(TEXT, min_size=5, max_size=5),
    source=st.none() | st.sampled_from(["192.0.2.1", "2001:db8::7"]),
    detail=st.dictionaries(TEXT, JSON, max_size=4),
    previous=st.sampled_from(["", "ab" * 32]) | TEXT,
)
def test_the_hash_is_the_format_it_always_was(actor_id, texts, source, detail, previous):
    event = AuditEvent(
        created_at=timezone.now(),
        actor_id=actor_id,
        actor_name=texts[0],
        action=texts[1],
        object_type=texts[2],
        object_id=texts[3],
        object_repr=texts[4],
        source_address=source,
        detail=detail,
        previous_hash=previous,
    )

    assert audit.event_digest(event) == digest_as_always(event)
    before, after = audit.chain_parts(event)
    if previous == json.dumps(previous)[1:-1]:  # what the head holds: hex, or nothing
        assert hashlib.sha256(before + previous.encode() + after).hexdigest() == (
            digest_as_always(event)
        )


HOSTILE = [
    'quote " backslash \\ slash / ',
    "naïve 名前 😀 \u2028",
    "'; DROP TABLE enrollment_auditevent; --",
    "%s %(x)s {}",
]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL chains in SQL")
def test_postgresql_hashes_any_content_as_we_do(db):
    audit_record(action="test.before")  # the head exists
    with audit.deferred():
        made = [
            audit_record(action=f"test.{n}", detail={"text": text, text: [n, None]})
            for n, text in enumerate(HOSTILE)
        ]

    assert [e.pk for e in made] == sorted(e.pk for e in made)
    for event in made:
        stored = AuditEvent.objects.get(pk=event.pk)
        assert stored.hash == event.hash == digest_as_always(stored)
        assert stored.previous_hash == event.previous_hash
    assert list(audit_chain_breaks()) == []


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL chains in SQL")
def test_without_a_chain_head_the_statement_writes_nothing_and_the_first_event_makes_it(db):
    AuditChainHead.objects.all().delete()
    event = AuditEvent(
        created_at=timezone.now(), actor_name="system", action="test.first", detail={}
    )

    assert hotsql.audit_chain_append([event], [audit.chain_parts(event)]) is False
    assert not AuditEvent.objects.exists()

    first = audit_record(action="test.first")
    second = audit_record(action="test.second")  # now chained in SQL

    assert first.previous_hash == ""
    assert second.previous_hash == first.hash
    assert AuditChainHead.objects.get().last_event_id == second.pk
    assert list(audit_chain_breaks()) == []


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL chains in SQL")
def test_a_value_too_long_for_its_column_is_refused_not_cut(db):
    audit_record(action="test.before")
    event = AuditEvent(created_at=timezone.now(), actor_name="system", action="x" * 61)

    with pytest.raises(DataError), transaction.atomic():
        hotsql.audit_chain_append([event], [audit.chain_parts(event)])

    assert not AuditEvent.objects.filter(action__startswith="xx").exists()


def test_a_large_block_is_chained_after_locking_the_head(db, django_assert_num_queries):
    audit_record(action="test.before")
    many = hotsql.CHAINED_IN_SQL + 1
    # Lock (read) the head; insert the events with the head's move (two on SQLite).
    with django_assert_num_queries(2 if connection.vendor == "postgresql" else 3), audit.deferred():
        made = [audit_record(action=f"test.{n}") for n in range(many)]

    assert _chained_in_order(made)
    assert list(audit_chain_breaks()) == []


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL chains in SQL")
def test_events_written_without_the_head_moving_fail_the_transaction(db):
    """The insert runs whatever the head's update finds: should they ever disagree (here a
    trigger swallows the update), the events must not be chained a second time."""
    audit_record(action="test.before")
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_keep_head() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RETURN NULL; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER test_keep_head BEFORE UPDATE ON enrollment_auditchainhead "
            "FOR EACH ROW EXECUTE FUNCTION test_keep_head()"
        )
    events = AuditEvent.objects.count()

    with pytest.raises(DatabaseError, match="head moved 0"), transaction.atomic():
        audit_record(action="test.lost")

    assert AuditEvent.objects.count() == events
