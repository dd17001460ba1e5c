"""audit_record(): the single way an audit event is written, called by services only."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import models

from enrollment.models import AuditEvent


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
    return AuditEvent.objects.create(
        actor=user,
        actor_name=user.get_username() if user is not None else "system",
        action=action,
        object_type=target._meta.label if target is not None else "",
        object_id=str(target.pk) if target is not None else "",
        object_repr=str(target)[:300] if target is not None else "",
        outcome=outcome,
        source_address=source_address,
        detail=detail or {},
    )
