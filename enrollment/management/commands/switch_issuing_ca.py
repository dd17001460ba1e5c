"""Move templates from one issuing CA to another: the day a successor takes over."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from enrollment import services
from enrollment.exceptions import EnrollmentError
from enrollment.management.commands._helpers import get_ca, switched


class Command(BaseCommand):
    help = (
        "Issue new certificates from CA: every template of --from (default: the default "
        "issuing CA) moves to it. Certificates already issued keep their CA."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("ca", help="Slug of the issuing CA that takes over.")
        parser.add_argument(
            "--from",
            dest="from_ca",
            help="Slug of the CA whose templates move (default: the default issuing CA).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        to = get_ca(options["ca"])
        from_ca = get_ca(options["from_ca"]) if options["from_ca"] else None
        try:
            switch = services.issuing_ca_switch(to=to, from_ca=from_ca)
        except EnrollmentError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(self.style.SUCCESS(switched(switch)))
        if switch.previous is not None:
            self.stdout.write(
                f"{switch.previous.name} keeps publishing its CRL for the certificates it "
                f"issued, which stay valid until they expire (at the latest "
                f"{switch.previous.not_after:%Y-%m-%d})."
            )
