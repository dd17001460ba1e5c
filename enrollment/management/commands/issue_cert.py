"""Issue a certificate from a CSR file for an account (subject taken from the account)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from enrollment import services
from enrollment.exceptions import EnrollmentError
from enrollment.models import CertificateTemplate
from enrollment.x509.csr import parse_csr
from enrollment.x509.errors import X509Error


class Command(BaseCommand):
    help = "Issue a certificate from a CSR (PEM or DER) for a user and a template."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("csr", help="CSR file (PEM or DER).")
        parser.add_argument("--user", required=True, help="User name of the owner.")
        parser.add_argument("--template", required=True, help="Template slug.")
        parser.add_argument("--out", help="Write the certificate (PEM) here; default stdout.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            template = CertificateTemplate.objects.get(slug=options["template"])
        except CertificateTemplate.DoesNotExist:
            slugs = ", ".join(CertificateTemplate.objects.values_list("slug", flat=True))
            raise CommandError(f"No template {options['template']!r}; have: {slugs}.") from None
        try:
            owner = get_user_model().objects.get(username=options["user"])
        except get_user_model().DoesNotExist:
            raise CommandError(f"No user {options['user']!r}.") from None
        try:
            data = Path(options["csr"]).read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {options['csr']}: {exc.strerror}") from exc
        try:
            parsed = parse_csr(data, allowed_key_algorithms=template.key_algorithms)
            certificate = services.certificate_issue(
                template=template, owner=owner, public_key=parsed.public_key
            )
        except X509Error as exc:
            raise CommandError(exc.message) from exc
        except EnrollmentError as exc:
            raise CommandError(exc.message) from exc
        pem = certificate.certificate.public_bytes(Encoding.PEM)
        if options["out"]:
            Path(options["out"]).write_bytes(pem)
            self.stderr.write(f"Issued serial {certificate.serial} to {options['out']}.")
        else:
            self.stdout.write(pem.decode(), ending="")
