"""Make the LDAP directory match the database now: everyone, or one person.

What beat's hourly `ldap-reconcile` does, for an operator who has just turned publication
on, or for the embedded default, which has no beat (run it from cron there).
"""

from __future__ import annotations

from typing import Any

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
            result = ldap_publish.reconcile()
        except ldap_publish.DirectoryError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"{result.people} people checked, {result.changed} entries changed "
            f"({result.added} certificates added, {result.removed} removed), "
            f"{len(result.not_found)} without an entry, {result.failed} failed."
        )
        if result.not_found:
            self.stdout.write(f"Without an entry: {', '.join(result.not_found)}")
        if result.failed:
            raise CommandError(result.error)
