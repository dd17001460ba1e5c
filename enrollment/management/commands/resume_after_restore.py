"""After restoring the database from a backup: carry on from the newest published CRL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from enrollment.exceptions import EnrollmentError
from enrollment.management.commands._helpers import get_ca
from enrollment.restore import resume_after_restore


class Command(BaseCommand):
    help = (
        "After a restore from a backup: revoke again what the CA's newest published CRL "
        "lists and publish the next CRL above its number (README, 'Backups and restore')."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "crl", help="The newest CRL the CA published before the failure (DER or PEM)."
        )
        parser.add_argument("--ca", help="Online CA slug (default: the only online one).")

    def handle(self, *args: Any, **options: Any) -> None:
        ca = get_ca(options["ca"])
        try:
            data = Path(options["crl"]).read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {options['crl']}: {exc.strerror}") from exc
        try:
            done = resume_after_restore(ca=ca, der=data)
        except EnrollmentError as exc:
            raise CommandError(exc.message) from exc
        here = "none" if done.database_number is None else f"#{done.database_number}"
        self.stdout.write(
            f"{ca.name}: CRL #{done.imported_number} read (this database's newest: {here}); "
            f"revoked again: {len(done.revoked_again)}; already revoked here: "
            f"{done.already_revoked}, of which given the published facts back: "
            f"{len(done.corrected)}."
        )
        for serial in done.revoked_again:
            self.stdout.write(f"  revoked again: {serial}")
        for serial in done.corrected:
            self.stdout.write(f"  published facts back: {serial}")
        if done.unknown:
            self.stderr.write(
                self.style.WARNING(
                    f"{len(done.unknown)} serial(s) on that CRL are not in this database: "
                    "certificates issued after the backup. The new CRL cannot list them."
                )
            )
            for serial in done.unknown:
                self.stderr.write(f"  unknown: {serial}")
        self.stdout.write(
            self.style.SUCCESS(
                f"{ca.name}: published CRL #{done.published.number} "
                f"({done.published.entries} entries)."
            )
        )
