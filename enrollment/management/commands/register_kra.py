"""Register a key recovery agent's certificate; archived keys are encrypted to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from enrollment import services
from enrollment.exceptions import EnrollmentError


class Command(BaseCommand):
    help = "Register a key recovery agent certificate (PEM or DER; no private key)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("certificate", help="The agent's certificate file.")
        parser.add_argument("--name", required=True)
        parser.add_argument("--user", help="The agent's account (user name), if any.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            data = Path(options["certificate"]).read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {options['certificate']}: {exc.strerror}") from exc
        try:
            certificate = (
                x509.load_pem_x509_certificate(data)
                if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data)
            )
        except ValueError as exc:
            raise CommandError("The file is not a PEM or DER certificate.") from exc
        user = None
        if options["user"]:
            try:
                user = get_user_model().objects.get(username=options["user"])
            except get_user_model().DoesNotExist:
                raise CommandError(f"No user {options['user']!r}.") from None
        try:
            agent = services.kra_register(certificate=certificate, name=options["name"], user=user)
        except EnrollmentError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(self.style.SUCCESS(f"Registered key recovery agent {agent.name}."))
