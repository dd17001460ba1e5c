"""Revoke a certificate by serial number; the CRL follows on commit."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from enrollment import services
from enrollment.exceptions import EnrollmentError
from enrollment.models import Certificate


class Command(BaseCommand):
    help = "Revoke a certificate by serial (hex) with an RFC 5280 reason."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("serial", help="Serial number in hex (colons allowed).")
        parser.add_argument(
            "--reason",
            choices=Certificate.RevocationReasonChoice.values,
            help="Omit for no reason code (never encoded as 'unspecified').",
        )
        parser.add_argument("--ca", help="Issuing CA slug, if serials are ambiguous.")

    def handle(self, *args: Any, **options: Any) -> None:
        serial = options["serial"].replace(":", "").lower().lstrip("0") or "0"
        queryset = Certificate.objects.filter(serial=serial)
        if options["ca"]:
            queryset = queryset.filter(ca__slug=options["ca"])
        matches = list(queryset[:2])
        if not matches:
            raise CommandError(f"No certificate with serial {options['serial']}.")
        if len(matches) > 1:
            raise CommandError("Several CAs issued this serial; give --ca.")
        try:
            certificate = services.certificate_revoke(
                certificate=matches[0], reason=options["reason"]
            )
        except EnrollmentError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(self.style.SUCCESS(f"Revoked {certificate}."))
        if note := services.imported_revocation_note(certificate):
            self.stdout.write(note)
