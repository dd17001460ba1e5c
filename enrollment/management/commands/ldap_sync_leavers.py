"""List the accounts that came from the sign-in directory and that it no longer has, or has
disabled; with --confirm, deactivate them as the hourly run does (--ignore-cap: even more
than PKIPORTAL_LDAP_SYNC_MAX_PER_RUN, after someone has checked the directory)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from enrollment import ldap_sync


class Command(BaseCommand):
    help = (
        "Compare the accounts that came from the LDAP / Active Directory sign-in with the "
        "directory and list those it no longer has or has disabled. Changes nothing unless "
        "--confirm, which deactivates them (not superusers) as the hourly run does."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--confirm", action="store_true", help="Deactivate the accounts listed."
        )
        parser.add_argument(
            "--ignore-cap",
            action="store_true",
            help="With --confirm: deactivate them even if more than "
            "PKIPORTAL_LDAP_SYNC_MAX_PER_RUN (check the directory first).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        confirm, ignore_cap = options["confirm"], options["ignore_cap"]
        if ignore_cap and not confirm:
            raise CommandError("--ignore-cap goes with --confirm.")
        if confirm and not ldap_sync.enabled():
            raise CommandError(
                "The directory leavers' sync is off: set PKIPORTAL_LDAP_SYNC_LEAVERS=true to "
                "deactivate accounts (without --confirm this command only lists them)."
            )
        try:
            survey = ldap_sync.directory_survey()
        except ldap_sync.SyncRefused as exc:
            raise CommandError(f"Nobody was deactivated: {exc}") from exc
        cap = settings.PKIPORTAL_LDAP_SYNC_MAX_PER_RUN
        self.stdout.write(
            f"Looked up {survey.checked} account(s) that came from the directory "
            f"(active, no password of their own); {survey.found} found there."
        )
        if not survey.gone:
            self.stdout.write("Nobody is gone from the directory or disabled there.")
        else:
            self.stdout.write(
                f"{len(survey.gone)} account(s) gone from the directory or disabled there:"
            )
        for gone in survey.gone:
            self._write(gone)
        if survey.superusers:
            self.stdout.write(
                self.style.WARNING(
                    f"{len(survey.superusers)} superuser(s) gone from the directory or "
                    "disabled there, never deactivated by the sync (deactivate them in the "
                    "admin if they have left):"
                )
            )
        for gone in survey.superusers:
            self._write(gone)
        if not survey.gone:
            return
        over = len(survey.gone) > cap
        if not confirm:
            if over:
                self.stdout.write(
                    self.style.WARNING(
                        f"That is more than the cap ({cap}): the hourly run deactivates none "
                        "of them. Check the directory before `--confirm --ignore-cap`."
                    )
                )
            self.stdout.write("Run again with --confirm to deactivate them.")
            return
        outcome = ldap_sync.leavers_sync(survey=survey, confirmed=True, ignore_cap=ignore_cap)
        if outcome.held_back:
            raise CommandError(ldap_sync.held_back_message(outcome.held_back, cap))
        self.stdout.write(self.style.SUCCESS(f"Deactivated {outcome.deactivated} account(s)."))
        if outcome.failed:
            raise CommandError(
                f"{outcome.failed} account(s) could not be deactivated: {outcome.error}"
            )

    def _write(self, gone: ldap_sync.Gone) -> None:
        where = f"  {gone.dn}" if gone.dn else ""
        self.stdout.write(f"  {gone.username}  {gone.reason_text}{where}")
