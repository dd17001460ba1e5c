"""Import a FIDO Metadata Service (MDS3) BLOB downloaded from https://mds3.fidoalliance.org/:
the security-key models' names and the compromises the FIDO Alliance reports."""

from __future__ import annotations

from typing import Any

from cryptography import x509

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from accounts import fido_metadata
from pkiportal import plurals
from pkiportal.attestation import read_roots
from pkiportal.fido_mds import MetadataError, read_blob

# The real BLOB is a few megabytes; a file far larger is not one.
BLOB_MAX_BYTES = 64 * 1024 * 1024


class Command(BaseCommand):
    help = (
        "Verify a FIDO MDS3 BLOB (its signature, its chain to the FIDO MDS root) and replace "
        "the imported security-key models with its own; an older BLOB than the imported one "
        "is refused."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "blob", help="The BLOB file (the JWT https://mds3.fidoalliance.org/ serves)."
        )
        parser.add_argument(
            "--root",
            help="PEM file of the FIDO MDS root CA (default: PKIPORTAL_FIDO_MDS_ROOT).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        root_path = options["root"] or settings.PKIPORTAL_FIDO_MDS_ROOT
        if not root_path:
            raise CommandError(
                "No FIDO MDS root: give --root ROOT_PEM or set PKIPORTAL_FIDO_MDS_ROOT."
            )
        try:
            roots = [x509.load_pem_x509_certificate(pem) for pem in read_roots(root_path)]
        except ValueError as exc:
            raise CommandError(f"The FIDO MDS root: {exc}") from exc
        try:
            with open(options["blob"], "rb") as file:
                data = file.read(BLOB_MAX_BYTES + 1)
        except OSError as exc:
            raise CommandError(
                f"{options['blob']!r} cannot be read: {exc.strerror or exc}"
            ) from exc
        if len(data) > BLOB_MAX_BYTES:
            raise CommandError(f"{options['blob']!r} is too large to be a FIDO MDS BLOB.")
        try:
            blob = read_blob(data, roots, now=timezone.now())
            done = fido_metadata.metadata_import(blob=blob, source=str(options["blob"]))
        except MetadataError as exc:
            raise CommandError(f"Refused, nothing imported: {exc}") from exc
        replaced = f", replacing no. {done.previous}" if done.previous is not None else ""
        self.stdout.write(
            self.style.SUCCESS(
                f"Imported FIDO metadata no. {blob.number}{replaced}: "
                f"{plurals.count(len(blob.entries), 'key model')}, "
                f"{done.compromised} reported compromised; next update due "
                f"{blob.next_update:%Y-%m-%d}."
            )
        )
        if done.keys_affected:
            self.stdout.write(
                self.style.WARNING(
                    "People's security keys of a model reported compromised, which no longer "
                    f"count as approved under the attestation policy: {done.keys_affected}."
                )
            )
        if blob.next_update < timezone.now().date():
            self.stdout.write(
                self.style.WARNING(
                    f"This BLOB was due to be replaced on {blob.next_update:%Y-%m-%d}: download "
                    "the current one."
                )
            )
