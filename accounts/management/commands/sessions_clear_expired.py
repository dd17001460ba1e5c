"""Delete expired browser sessions, for deployments without Celery beat."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from accounts.sessions import sessions_clear_expired


class Command(BaseCommand):
    help = (
        "Delete expired browser sessions from the portal's table and from django_session "
        "(what the daily beat task does; Django's clearsessions clears only the configured "
        "engine's table)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        cleared = sessions_clear_expired()
        self.stdout.write(self.style.SUCCESS(f"Deleted {cleared} expired sessions."))
