"""audit_record(): the single way an audit event is written, called by services only.

Events form a hash chain: each stores the SHA-256 of its own content and of the previous
event's hash, so altering or removing a row in the database breaks the chain at that row
(verify_audit_chain names it). Appends are serialised by locking the one chain-head row,
so two transactions never link to the same predecessor.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import models, transaction
from django.utils import timezone

from enrollment.models import AuditChainHead, AuditEvent


def event_digest(event: AuditEvent) -> str:
    """The hash of an event's content chained to its predecessor's hash."""
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


def audit_record(
    *,
    action: str,
    actor: AbstractBaseUser | AnonymousUser | None = None,
    target: models.Model | None = None,
    outcome: str = AuditEvent.Outcome.SUCCESS,
    source_address: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Write one event; `actor=None` means the system (a command, a scheduled task)."""
    user = actor if actor is not None and actor.is_authenticated else None
    # Round-trip the detail through JSON so the hash sees what the database will return.
    detail = json.loads(json.dumps(detail or {}, default=str))
    with transaction.atomic():
        head, _ = AuditChainHead.objects.select_for_update().get_or_create(pk=1)
        event = AuditEvent(
            created_at=timezone.now(),
            actor=user,
            actor_name=user.get_username() if user is not None else "system",
            action=action,
            object_type=target._meta.label if target is not None else "",
            object_id=str(target.pk) if target is not None else "",
            object_repr=str(target)[:300] if target is not None else "",
            outcome=outcome,
            source_address=source_address,
            detail=detail,
            previous_hash=head.last_hash,
        )
        event.hash = event_digest(event)
        event.save(force_insert=True)
        head.last_hash, head.last_event_id = event.hash, event.pk
        head.save(update_fields=["last_hash", "last_event_id"])
    return event


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
