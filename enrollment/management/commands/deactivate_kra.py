"""Deactivate a key recovery agent: new archives are no longer encrypted to it."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from enrollment import services
from enrollment.exceptions import EnrollmentError
from enrollment.models import KeyRecoveryAgent
from enrollment.ra_selectors import HEX


class Command(BaseCommand):
    help = (
        "Deactivate a key recovery agent (its holder left, or its key is in doubt). Keys "
        "archived before stay encrypted to it; permanent."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "agent", help="The agent's SHA-256 fingerprint (hex, colons allowed) or its name."
        )
        parser.add_argument("--reason", required=True, help="Why; kept in the audit trail.")

    def handle(self, *args: Any, **options: Any) -> None:
        agent = _find(options["agent"])
        try:
            outcome = services.kra_deactivate(agent=agent, reason=options["reason"])
        except EnrollmentError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(self.style.SUCCESS(f"Deactivated key recovery agent {agent.name}."))
        if outcome.archives_only_it_opens:
            self.stdout.write(
                f"{outcome.archives_only_it_opens} archived key(s) can be recovered only with "
                "this agent's private key: keep it, offline, for as long as they may be needed."
            )
        if not outcome.usable_agents_left:
            self.stdout.write(self.style.WARNING(services.NO_USABLE_AGENT_LEFT))


def _find(given: str) -> KeyRecoveryAgent:
    fingerprint = given.replace(":", "").lower()
    if len(fingerprint) == 64 and HEX.fullmatch(fingerprint):
        agent = KeyRecoveryAgent.objects.filter(fingerprint_sha256=fingerprint).first()
        if agent is not None:
            return agent
    named = list(KeyRecoveryAgent.objects.filter(name=given)[:2])
    if len(named) == 1:
        return named[0]
    if named:
        raise CommandError(f"Several agents are named {given!r}: give the fingerprint.")
    raise CommandError(f"No key recovery agent {given!r}.")
