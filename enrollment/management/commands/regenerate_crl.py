"""Sign and publish a new CRL for one online CA, or for all of them."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from enrollment import services
from enrollment.exceptions import EnrollmentError
from enrollment.models import CertificateAuthority


class Command(BaseCommand):
    help = "Publish a new CRL now for an online CA (default: every online CA)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--ca", help="CA slug.")

    def handle(self, *args: Any, **options: Any) -> None:
        queryset = CertificateAuthority.objects.online()
        if options["ca"]:
            queryset = CertificateAuthority.objects.filter(slug=options["ca"])
            if not queryset.exists():
                raise CommandError(f"No CA with slug {options['ca']!r}.")
        for ca in queryset:
            try:
                crl = services.crl_publish(ca=ca)
            except EnrollmentError as exc:
                raise CommandError(f"{ca.name}: {exc.message}") from exc
            self.stdout.write(f"{ca.name}: CRL #{crl.number}, {crl.entries} entries.")
