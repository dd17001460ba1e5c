"""audit_record(): the single way an audit event is written, called by services only.

Events form a hash chain: each stores the SHA-256 of its own content and of the previous
event's hash, so altering or removing a row in the database breaks the chain at that row
(verify_audit_chain names it). Appends are serialised by locking the one chain-head row,
so two transactions never link to the same predecessor.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.db import models, transaction
from django.utils import timezone
from django.utils.functional import Promise

from accounts.models import User
from enrollment import hotsql
from enrollment.models import AuditChainHead, AuditEvent
from pkiportal.i18n import english


def chain_parts(event: AuditEvent) -> tuple[bytes, bytes]:
    """An event's canonical content as the bytes before and after its previous hash.

    event_digest() is sha256(before + previous hash + after): cut there, the content can
    be chained by PostgreSQL to whatever hash it finds at the chain's head, in the
    statement that locks the head (hotsql.audit_chain_append), instead of by us after a
    statement that only reads it.
    """
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
    }
    # Keys are sorted: "previous_hash" sits between those before it and those after it.
    before = _canonical({k: v for k, v in content.items() if k < "previous_hash"})
    after = {k: v for k, v in content.items() if k > "previous_hash"}
    tail = "," + _canonical(after)[1:] if after else "}"
    return f'{before[:-1]},"previous_hash":"'.encode(), f'"{tail}'.encode()


def _canonical(content: dict[str, Any]) -> str:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# The audit export's columns (/ra/audit/export.csv, .jsonl), and the fields of the JSON a
# SIEM receives for each event (enrollment.audit_shipping): the same for both, so an
# export and the forwarded messages can be compared line by line.
EXPORT_COLUMNS = [
    "id",
    "created_at",
    "actor_id",
    "actor_name",
    "action",
    "object_type",
    "object_id",
    "object_repr",
    "outcome",
    "source_address",
    "detail",
    "previous_hash",
    "hash",
]


def export_values(event: AuditEvent) -> list[Any]:
    """An event's values in EXPORT_COLUMNS order."""
    return [
        event.pk,
        event.created_at.isoformat(),
        event.actor_id,
        event.actor_name,
        event.action,
        event.object_type,
        event.object_id,
        event.object_repr,
        event.outcome,
        event.source_address,
        event.detail,
        event.previous_hash,
        event.hash,
    ]


def export_json(event: AuditEvent) -> str:
    """An event as one line of the JSON Lines export: an object with EXPORT_COLUMNS as
    keys, in that order, UTF-8 text unescaped. No newline: JSON escapes those in strings."""
    row = dict(zip(EXPORT_COLUMNS, export_values(event), strict=True))
    return json.dumps(row, ensure_ascii=False, sort_keys=False)


def event_digest(event: AuditEvent) -> str:
    """The hash of an event's content chained to its predecessor's hash: the SHA-256 of
    the content with ``previous_hash``, as sorted, compact, UTF-8 JSON."""
    before, after = chain_parts(event)
    previous = json.dumps(event.previous_hash, ensure_ascii=False)[1:-1].encode()
    return hashlib.sha256(before + previous + after).hexdigest()


def audit_record(
    *,
    action: str,
    actor: User | AnonymousUser | None = None,
    target: models.Model | None = None,
    outcome: str = AuditEvent.Outcome.SUCCESS,
    source_address: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Write one event; `actor=None` means the system (a command, a scheduled task).

    Inside ``deferred()`` the event is chained when that block ends (its ``pk`` is set
    then, and the target is named then, so it may be saved later in the block), unless it
    is recorded inside a savepoint opened in the block: such an event may be rolled back on
    its own, so it is written at once, with the savepoint's work.
    """
    event = _new_event(action, actor, outcome, source_address, detail)
    batch: _Batch | None = getattr(_state, "batch", None)
    if batch is not None and batch.savepoints == tuple(transaction.get_connection().savepoint_ids):
        batch.events.append((event, target))
    else:
        _append([_name_target(event, target)])
    return event


def audit_record_apart(
    *,
    action: str,
    actor: User | AnonymousUser | None = None,
    target: models.Model | None = None,
    outcome: str = AuditEvent.Outcome.SUCCESS,
    source_address: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """audit_record() for an attempt that was refused, in a transaction of its own: the
    rollback of the refused action (or of the whole request, under ATOMIC_REQUESTS) must
    not take the record of the attempt with it.

    With no transaction open, as where the services refuse (before they open theirs, or
    after it was rolled back), it is chained and committed at once. Inside one, it is named
    and timed now and chained once the request has ended (write_apart), on this connection
    as every event: a second connection would wait for the chain head's lock, which this
    connection's open transaction holds once it appended an event, until that transaction
    ends, and it ends only after the wait.
    """
    event = prepared(
        action=action,
        actor=actor,
        target=target,
        outcome=outcome,
        source_address=source_address,
        detail=detail,
    )
    held: list[AuditEvent] = getattr(_state, "apart", None) or []
    _state.apart = [*held, event]
    if not in_a_transaction():
        write_apart()
    return event


def write_apart() -> None:
    """Chain the events audit_record_apart() held back, now that no transaction is open:
    after every request (pkiportal.middleware.audit_apart), and with the next one written
    apart outside a transaction. Inside a transaction it leaves them waiting."""
    held: list[AuditEvent] = getattr(_state, "apart", None) or []
    if not held or in_a_transaction():
        return
    _state.apart = []
    _append(held)


def forget_apart() -> None:
    """Drop the events held back and not written (a test starts without another's)."""
    _state.apart = []


def in_a_transaction() -> bool:
    """Whether a transaction is open on this connection (ATOMIC_REQUESTS, a caller's
    atomic block). Django's test cases wrap each test in blocks marked _from_testcase;
    like Django's own check of durable blocks, those do not count."""
    return any(
        not getattr(block, "_from_testcase", False)
        for block in transaction.get_connection().atomic_blocks
    )


def prepared(
    *,
    action: str,
    actor: User | AnonymousUser | None = None,
    target: models.Model | None = None,
    outcome: str = AuditEvent.Outcome.SUCCESS,
    source_address: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """The event audit_record() would write, named but not written: for a statement that
    chains it with the change it records (hotsql.issue_checked). The target's key must be
    known, as for audit_record() outside deferred()."""
    return _name_target(_new_event(action, actor, outcome, source_address, detail), target)


def _as_text(value: Any) -> str:
    """What JSON cannot hold, as text; a message marked for translation in English, as the
    trail is, whatever language the request that wrote it was in."""
    return english(value) if isinstance(value, Promise) else str(value)


def _new_event(
    action: str,
    actor: User | AnonymousUser | None,
    outcome: str,
    source_address: str | None,
    detail: dict[str, Any] | None,
) -> AuditEvent:
    user = actor if isinstance(actor, User) and actor.is_authenticated else None
    # Round-trip the detail through JSON so the hash sees what the database will return.
    # Numbers with a fraction or exponent are kept as their text: jsonb stores numbers as
    # numeric and gives 1e16 back as 10000000000000000 and -0.0 as 0, which would no
    # longer match the hash.
    detail = json.loads(
        json.dumps(detail or {}, default=_as_text), parse_float=str, parse_constant=str
    )
    return AuditEvent(
        created_at=timezone.now(),
        actor=user,
        actor_name=user.get_username() if user is not None else "system",
        action=action,
        outcome=outcome,
        source_address=source_address,
        detail=detail,
    )


def _name_target(event: AuditEvent, target: models.Model | None) -> AuditEvent:
    if target is not None:
        if target.pk is None:
            raise ValueError(f"audit event {event.action}: its target was never saved")
        event.object_type = target._meta.label
        event.object_id = str(target.pk)
        event.object_repr = str(target)[:300]
    return event


@dataclass
class _Batch:
    savepoints: tuple[str, ...]
    events: list[tuple[AuditEvent, models.Model | None]] = field(default_factory=list)


_state = threading.local()


@contextmanager
def deferred() -> Iterator[None]:
    """An atomic block whose audit events are chained in one append as it ends.

    One lock of the chain head, one insert and one head update for all the block's
    events, instead of each: and the head, which every audited transaction must lock, is
    held from the end of the block to the commit, not through the block's own work. The
    block uses no savepoint of its own: when it fails the enclosing transaction is rolled
    back with it, so a buffered event never outlives, or is outlived by, its change.
    """
    if getattr(_state, "batch", None) is not None:  # nested: the outer block appends
        yield
        return
    with transaction.atomic(savepoint=False):
        batch = _Batch(savepoints=tuple(transaction.get_connection().savepoint_ids))
        _state.batch = batch
        try:
            yield
        finally:
            _state.batch = None
        _append([_name_target(event, target) for event, target in batch.events])


def _append(events: list[AuditEvent]) -> None:
    """Link events to the chain in order, under the head's row lock, in one insert."""
    if not events:
        return
    with transaction.atomic(savepoint=False):
        if hotsql.audit_chain_append(events, [chain_parts(event) for event in events]):
            return  # PostgreSQL: locked, chained, inserted and moved in one statement
        previous = hotsql.audit_head_lock()
        for event in events:
            event.previous_hash = previous
            event.hash = previous = event_digest(event)
        hotsql.audit_append(events, previous)


@dataclass(frozen=True)
class BrokenLink:
    event_id: int
    problem: str


def audit_chain_breaks() -> Iterator[BrokenLink]:
    """Walk the chain oldest first and yield every event whose link does not hold."""
    previous = ""
    for event in AuditEvent.objects.order_by("id").iterator(chunk_size=2000):
        if event.previous_hash != previous:
            yield BrokenLink(event.pk, "does not link to the event before it")
        elif event_digest(event) != event.hash:
            yield BrokenLink(event.pk, "its content does not match its hash")
        previous = event.hash
    head = AuditChainHead.objects.filter(pk=1).first()
    if head is not None and head.last_hash != previous:
        yield BrokenLink(head.last_event_id or 0, "the newest events were removed")
