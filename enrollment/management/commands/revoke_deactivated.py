"""List the deactivated accounts whose certificates are due for revocation; with --confirm,
revoke them now, whatever the cap (after someone has checked the directory)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from enrollment import leavers


class Command(BaseCommand):
    help = (
        "List deactivated accounts whose grace period is over and who still hold "
        "certificates. --confirm revokes them (affiliationChanged) regardless of "
        "PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--confirm",
            action="store_true",
            help="Revoke the certificates of every account listed, even more than the cap.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        delay = leavers.revocation_delay()
        if delay is None:
            message = (
                "Automatic revocation is off (PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS), so "
                "nobody is due. Revoke leavers' certificates on the RA console (/ra/leavers/)."
            )
            if options["confirm"]:
                raise CommandError(message)
            self.stdout.write(message)
            return
        now = timezone.now()
        due = leavers.leavers_due(now=now)
        cap = settings.PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN
        hours = settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS
        self.stdout.write(
            f"Certificates are revoked {hours} hours after an account is deactivated, for at "
            f"most {cap} accounts a run."
        )
        if not due:
            self.stdout.write("No deactivated account is due.")
            return
        self.stdout.write(f"{len(due)} deactivated account(s) due:")
        for leaver in due:
            self.stdout.write(
                f"  {leaver.username}  {leaver.name}  deactivated {_when(leaver.deactivated_at)}"
                f"  due {_when(leaver.due_at)}  {leaver.certificates} certificate(s)"
            )
        if not options["confirm"]:
            if len(due) > cap:
                self.stdout.write(
                    self.style.WARNING(
                        f"That is more than the cap ({cap}): the hourly run revokes none of "
                        "them. Check the directory and reactivate anyone switched off by "
                        "mistake before confirming."
                    )
                )
            self.stdout.write("Run again with --confirm to revoke their certificates now.")
            return
        outcome = leavers.leavers_revoke(now=now, confirmed=True)
        self.stdout.write(
            self.style.SUCCESS(
                f"Revoked {outcome.revoked_certificates} certificate(s) of "
                f"{outcome.revoked_accounts} account(s) (affiliationChanged)."
            )
        )
        if outcome.failed_accounts:
            raise CommandError(
                f"The certificates of {outcome.failed_accounts} account(s) could not be "
                f"revoked: {outcome.error}"
            )


def _when(moment: Any) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC" if moment is not None else "—"
