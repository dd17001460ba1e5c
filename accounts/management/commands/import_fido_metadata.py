"""Import a FIDO Metadata Service (MDS3) BLOB downloaded from https://mds3.fidoalliance.org/:
the security-key models' names and the compromises the FIDO Alliance reports. The CRLs of
its chain come with it (--crl), downloaded by the operator as the BLOB is: the import goes
to no network. Without them the import is refused, naming the CRLs to download, unless the
operator says --no-revocation-check, which is printed and audited."""

from __future__ import annotations

from typing import Any

from cryptography import x509

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from accounts import fido_metadata
from pkiportal import plurals
from pkiportal.attestation import read_roots
from pkiportal.fido_mds import MetadataError, RevocationUnknown, read_blob, read_crls

# The real BLOB is a few megabytes; a file far larger is not one.
BLOB_MAX_BYTES = 64 * 1024 * 1024
# The chain's CRLs (GlobalSign's roots' and the MDS CA's) are small; a busy CA's CRL can
# reach tens of megabytes, but a file larger than this is none of them.
CRL_MAX_BYTES = 64 * 1024 * 1024
NO_CHECK_WARNING = (
    "WARNING: --no-revocation-check: the revocation of the BLOB's signing chain is NOT "
    "checked. A BLOB signed with a revoked (say, stolen) certificate would be imported. "
    "Use it only for a BLOB you trust otherwise, such as a test BLOB; the audit event "
    "records it (revocation_checked: false)."
)
CRL_HINT = (
    "\nDownload each CRL named (on a machine that reaches the internet, e.g. curl -fsSL -o "
    "FILE URL) and give it with --crl FILE (once per file; PEM or DER). Or, only for a BLOB "
    "you trust otherwise (a test BLOB), import it without the check: --no-revocation-check, "
    "which the audit event records."
)


class Command(BaseCommand):
    help = (
        "Verify a FIDO MDS3 BLOB (its signature, its chain to the FIDO MDS root, that chain's "
        "revocation with the CRLs given) and replace the imported security-key models with "
        "its own; an older BLOB than the imported one is refused."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "blob", help="The BLOB file (the JWT https://mds3.fidoalliance.org/ serves)."
        )
        parser.add_argument(
            "--root",
            help="PEM file of the FIDO MDS root CA (default: PKIPORTAL_FIDO_MDS_ROOT).",
        )
        parser.add_argument(
            "--crl",
            action="append",
            default=[],
            metavar="FILE",
            help=(
                "A CRL file (PEM, possibly several CRLs, or DER) of an issuer in the BLOB's "
                "chain; repeat for each. Every certificate below the root needs its issuer's "
                "current CRL: run without to be told which, and where they are published."
            ),
        )
        parser.add_argument(
            "--no-revocation-check",
            action="store_true",
            help=(
                "Import without checking the chain's revocation (a test BLOB): printed as a "
                "warning and recorded in the audit event."
            ),
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
        unchecked = options["no_revocation_check"]
        if unchecked and options["crl"]:
            raise CommandError(
                "Give either --crl (the chain's revocation is checked) or "
                "--no-revocation-check, not both."
            )
        try:
            crls = None if unchecked else self._crls(options["crl"])
            if unchecked:
                self.stderr.write(self.style.ERROR(NO_CHECK_WARNING))
            blob = read_blob(data, roots, now=timezone.now(), crls=crls)
            done = fido_metadata.metadata_import(blob=blob, source=str(options["blob"]))
        except RevocationUnknown as exc:
            raise CommandError(f"Refused, nothing imported: {exc}{CRL_HINT}") from exc
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
        for used in blob.revocation or ():
            number = f" no. {used.number}" if used.number is not None else ""
            self.stdout.write(
                f"Not revoked: {used.certificate}, by the CRL{number} of {used.issuer} "
                f"(thisUpdate {used.this_update:%Y-%m-%d %H:%M} UTC)."
            )
        if blob.revocation is not None and crls:
            issuers = {used.issuer for used in blob.revocation}
            for crl in crls:
                if crl.issuer.rfc4514_string() not in issuers:
                    self.stdout.write(
                        f"Not used: the CRL of {crl.issuer.rfc4514_string()} (no certificate "
                        "of the BLOB's chain is its issuer's)."
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

    def _crls(self, paths: list[str]) -> list[x509.CertificateRevocationList]:
        """The CRLs of the files given, in order; a file that cannot be read is refused."""
        crls = []
        for path in paths:
            try:
                with open(path, "rb") as file:
                    data = file.read(CRL_MAX_BYTES + 1)
            except OSError as exc:
                raise CommandError(f"{path!r} cannot be read: {exc.strerror or exc}") from exc
            if len(data) > CRL_MAX_BYTES:
                raise CommandError(f"{path!r} is too large to be a CRL of the FIDO MDS chain.")
            crls.extend(read_crls(data, repr(path)))
        return crls
