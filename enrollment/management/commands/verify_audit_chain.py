"""Verify the audit trail's hash chain and name the first broken link."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from enrollment.audit import audit_chain_breaks
from enrollment.models import AuditEvent


class Command(BaseCommand):
    help = "Check that no audit event was altered, removed or reordered."

    def handle(self, *args: Any, **options: Any) -> None:
        first = next(audit_chain_breaks(), None)
        if first is not None:
            event = AuditEvent.objects.filter(pk=first.event_id).first()
            what = f"{event.created_at:%Y-%m-%d %H:%M:%S} {event.action}" if event else "gone"
            raise CommandError(
                f"Audit chain broken at event {first.event_id} ({what}): {first.problem}."
            )
        count = AuditEvent.objects.count()
        self.stdout.write(self.style.SUCCESS(f"Audit chain intact: {count} events."))
