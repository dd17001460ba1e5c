"""Publish a CRL signed elsewhere, e.g. by the root on an air-gapped machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from enrollment import services
from enrollment.exceptions import EnrollmentError
from enrollment.management.commands._helpers import get_ca


class Command(BaseCommand):
    help = "Import a root CA's CRL (DER or PEM) after checking its issuer, signature and number."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("crl", help="CRL file.")
        parser.add_argument("--ca", help="Root CA slug (default: the only root).")

    def handle(self, *args: Any, **options: Any) -> None:
        ca = get_ca(options["ca"], root=True)
        try:
            data = Path(options["crl"]).read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {options['crl']}: {exc.strerror}") from exc
        try:
            crl = services.crl_import(ca=ca, der=data)
        except EnrollmentError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(self.style.SUCCESS(f"{ca.name}: imported CRL #{crl.number}."))
