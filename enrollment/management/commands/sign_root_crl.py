"""Sign the offline root's CRL with its key file and publish it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from enrollment import keystore, services
from enrollment.exceptions import EnrollmentError
from enrollment.management.commands._helpers import get_ca, read_passphrase
from enrollment.x509.crl import MAX_CA_CRL_VALIDITY

# S/MIME BR 4.9.7: a CRL for CA certificates may be valid for at most twelve months.
MAX_ROOT_CRL_DAYS = MAX_CA_CRL_VALIDITY.days


class Command(BaseCommand):
    help = "Sign the (offline) root CA's CRL with its key file and publish it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--ca", help="Root CA slug (default: the only root).")
        parser.add_argument("--key-file", required=True, help="The root's encrypted key file.")
        parser.add_argument("--passphrase-file", help="Default: asked at the terminal.")
        parser.add_argument(
            "--validity-days", type=int, default=settings.PKIPORTAL_ROOT_CRL_VALIDITY_DAYS
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["validity_days"]
        if not 1 <= days <= MAX_ROOT_CRL_DAYS:
            raise CommandError(f"--validity-days must be 1 to {MAX_ROOT_CRL_DAYS}.")
        ca = get_ca(options["ca"], root=True)
        passphrase = read_passphrase(options["passphrase_file"], prompt="Root key passphrase: ")
        try:
            crl = services.crl_publish(
                ca=ca,
                offline_key=keystore.OfflineKey(Path(options["key_file"]), passphrase),
                validity=timedelta(days=days),
            )
        except EnrollmentError as exc:
            raise CommandError(exc.message) from exc
        warn_from = crl.next_update - timedelta(days=settings.PKIPORTAL_ROOT_CRL_WARNING_DAYS)
        self.stdout.write(
            self.style.SUCCESS(
                f"{ca.name}: CRL #{crl.number}, next update {crl.next_update:%Y-%m-%d}. "
                f"/health/ warns from {warn_from:%Y-%m-%d}: sign the next one before then."
            )
        )
