"""List the deactivated accounts whose certificates are due for revocation, and the
certificates due because they name an address their holder no longer has; with --confirm,
revoke them now, whatever the cap (after someone has checked the directory)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from enrollment import leavers, outdated
from pkiportal import plurals


class Command(BaseCommand):
    help = (
        "List deactivated accounts whose grace period is over and who still hold "
        "certificates, and certificates whose address is no longer their holder's and "
        "whose grace period is over. --confirm revokes them (affiliationChanged) "
        "regardless of PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN."
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
        changed = [
            o
            for o in outdated.outdated_certificates(delay=delay, now=now, limit=None)
            if o.due_at is not None and o.due_at <= now
        ]
        accounts = len({*(d.user.pk for d in due), *(o.holder.pk for o in changed)})
        cap = settings.PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN
        hours = int(delay.total_seconds() // 3600)
        self.stdout.write(
            f"Certificates are revoked {plurals.hours(hours)} after an account is deactivated, "
            f"for at most {cap} accounts a run."
        )
        if not due:
            self.stdout.write("No deactivated account is due.")
        else:
            self.stdout.write(f"{len(due)} deactivated account(s) due:")
        for leaver in due:
            self.stdout.write(
                f"  {leaver.username}  {leaver.name}  deactivated {_when(leaver.deactivated_at)}"
                f"  due {_when(leaver.due_at)}  {leaver.certificates} certificate(s)"
            )
        if changed:
            self.stdout.write(
                f"{len(changed)} certificate(s) due because their holder's address changed:"
            )
        for item in changed:
            holder = item.holder
            self.stdout.write(
                f"  {holder.get_username()}  {holder.get_full_name()}  "
                f"{item.certificate.email} -> {holder.email or '(none)'}  serial "
                f"{item.certificate.serial}  outdated {_when(item.since)}  due {_when(item.due_at)}"
            )
        if not accounts:
            return
        if not options["confirm"]:
            if accounts > cap:
                self.stdout.write(
                    self.style.WARNING(
                        f"That is more than the cap ({cap}): the hourly run revokes none of "
                        "them. Check the directory and reactivate anyone switched off by "
                        "mistake (or whose address a sync rewrote by mistake) before "
                        "confirming."
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
        if outcome.revoked_mailboxes:
            self.stdout.write(
                f"Of those, the certificates of {outcome.revoked_mailboxes} deactivated "
                "shared mailbox(es) were revoked for cessationOfOperation."
            )
        if outcome.failed_accounts or outcome.failed_mailboxes:
            raise CommandError(
                f"The certificates of {outcome.failed_accounts} account(s) and "
                f"{outcome.failed_mailboxes} shared mailbox(es) could not be "
                f"revoked: {outcome.error}"
            )


def _when(moment: Any) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC" if moment is not None else "—"
