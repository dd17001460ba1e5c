"""Make the LDAP directory match the database now: one reconciliation run, or one person.

What beat's hourly `ldap-reconcile` does (the database diff, then a slice of the full
sweep), for an operator who has just turned publication on, or for the embedded default,
which has no beat (run it from cron there). --all sweeps everyone in one go.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from enrollment import ldap_publish


class Command(BaseCommand):
    help = (
        "Publish valid certificates to the LDAP directory and remove the portal's revoked "
        "or expired ones (PKIPORTAL_LDAP_PUBLISH_*), for everyone or --user NAME."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", help="Only this account (its user name).")
        parser.add_argument(
            "--all",
            action="store_true",
            help="Sweep everyone now, not PKIPORTAL_LDAP_SWEEP_BATCH people, without a "
            "time budget (after turning publication on, or to measure the sweep).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not ldap_publish.enabled():
            raise CommandError("Publication is off: set PKIPORTAL_LDAP_PUBLISH_URI.")
        try:
            if options["user"]:
                user = get_user_model().objects.filter(username=options["user"]).first()
                if user is None:
                    raise CommandError(f"No account is named {options['user']!r}.")
                person = ldap_publish.person_publish(user_id=user.pk)
                assert person is not None
                if not person.dn:
                    raise CommandError(f"{user.get_username()} has no entry in the directory.")
                self.stdout.write(
                    f"{person.dn}: added {', '.join(person.added) or 'nothing'}, removed "
                    f"{', '.join(person.removed) or 'nothing'}."
                )
                return
            if options["all"]:
                result = ldap_publish.reconcile()
            else:
                result = ldap_publish.reconcile(
                    sweep=settings.PKIPORTAL_LDAP_SWEEP_BATCH, seconds=ldap_publish.RUN_SECONDS
                )
        except ldap_publish.RunInProgress as exc:
            raise CommandError(f"Not now: {exc}.") from exc
        except ldap_publish.DirectoryError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"{result.people} people checked ({result.differing} found by the database "
            f"diff, {result.swept} by the sweep"
            f"{', which reached the end' if result.sweep_finished else ''}), "
            f"{result.changed} entries changed "
            f"({result.added} certificates added, {result.removed} removed), "
            f"{len(result.not_found)} without an entry, {result.failed} failed."
        )
        if result.not_found:
            self.stdout.write(f"Without an entry: {', '.join(result.not_found)}")
        if result.failed:
            raise CommandError(result.error)
