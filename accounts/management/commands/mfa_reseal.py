"""Seal every TOTP seed under the current key, after PKIPORTAL_MFA_KEY or SECRET_KEY changed."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from accounts.mfa import reseal_all


class Command(BaseCommand):
    help = (
        "Re-seal second-factor seeds under the first PKIPORTAL_MFA_KEY (or SECRET_KEY): run "
        "it after a rotation, before dropping the old key."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        done, failed = reseal_all()
        if failed:
            raise CommandError(
                f"Resealed {done}; {failed} could not be opened with any configured key "
                "(their owners need a reset of their second factor)."
            )
        self.stdout.write(self.style.SUCCESS(f"Resealed {done} second-factor seeds."))
