"""Import the S/MIME certificates (and archived keys) another CA issued.

README: "Moving from another CA". Only here, never on the web: what it writes is trusted
as the organisation's own record of who holds which certificate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.views.decorators.debug import sensitive_variables

from enrollment import importing
from enrollment.exceptions import EnrollmentError
from enrollment.x509.errors import X509Error

CERTIFICATE_SUFFIXES = {".pem", ".crt", ".cer", ".der", ".p7b", ".p7c", ".p7", ".spc"}
KEY_SUFFIXES = {".p12", ".pfx"}
# A certificate or PKCS#12 file is a few kilobytes; a p7b of thousands a few megabytes.
MAX_FILE_BYTES = 64 * 1024 * 1024


def _read(path: Path) -> bytes:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise OSError(f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    return path.read_bytes()


def _read_named(names: list[str]) -> list[importing.Source]:
    """Files named one by one (--issuer, --crl): one that cannot be read stops the run."""
    read = []
    for name in names:
        try:
            read.append(importing.Source(name, _read(Path(name))))
        except OSError as exc:
            raise CommandError(f"Cannot read {name}: {exc.strerror or exc}") from None
    return read


def _sources(paths: list[str], suffixes: set[str], report: list[str]) -> list[importing.Source]:
    """Files as given, and in a directory (recursively) those with a known suffix."""
    found: list[importing.Source] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
            )
        else:
            files = [path]
        for file in files:
            try:
                found.append(importing.Source(str(file), _read(file)))
            except OSError as exc:
                report.append(f"{file}: cannot be read ({exc.strerror or exc})")
    return found


class Command(BaseCommand):
    help = (
        "Import S/MIME certificates another CA issued (PEM, DER, PKCS#7, or directories of "
        "them), linked to the accounts or shared mailboxes their addresses name, and archive "
        "their keys from PKCS#12 files to the key recovery agents."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "certificates", nargs="*", help="Certificate files or directories of them."
        )
        parser.add_argument(
            "--issuer",
            action="append",
            default=[],
            help="The old issuing CA's certificate (PEM or DER); repeat for several.",
        )
        parser.add_argument(
            "--keys",
            nargs="+",
            default=[],
            help="PKCS#12 files (or directories of .p12/.pfx) holding imported "
            "certificates' private keys, to archive to the key recovery agents.",
        )
        parser.add_argument(
            "--keys-password-file",
            help="File with the PKCS#12 password(s), one per line; each is tried on every file.",
        )
        parser.add_argument(
            "--crl",
            action="append",
            default=[],
            help="The old CA's CRL (PEM or DER), verified with the --issuer that signed it; "
            "certificates it lists come in as revoked. Repeat for several.",
        )
        parser.add_argument(
            "--skip-revoked",
            action="store_true",
            help="Leave out certificates a --crl lists instead of importing them as revoked.",
        )
        parser.add_argument(
            "--include-expired", action="store_true", help="Import expired certificates too."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Report what would happen; write nothing."
        )

    @sensitive_variables("passwords")
    def handle(self, *args: Any, **options: Any) -> None:
        if not options["certificates"] and not options["keys"] and not options["crl"]:
            raise CommandError("Give certificate files or directories (and/or --keys, --crl).")
        if (options["certificates"] or options["crl"]) and not options["issuer"]:
            raise CommandError("Give the old CA's certificate with --issuer.")
        unreadable: list[str] = []
        issuers = _read_named(options["issuer"])
        passwords: list[str] = []
        if options["keys_password_file"]:
            try:
                passwords = importing.passwords_from(
                    Path(options["keys_password_file"]).read_text(encoding="utf-8")
                )
            except (OSError, UnicodeDecodeError):
                raise CommandError(
                    f"Cannot read the password file {options['keys_password_file']}."
                ) from None
        crls = _read_named(options["crl"])
        sources = _sources(options["certificates"], CERTIFICATE_SUFFIXES, unreadable)
        key_sources = _sources(options["keys"], KEY_SUFFIXES, unreadable)
        try:
            report = importing.certificates_import(
                issuers=issuers,
                sources=sources,
                key_sources=key_sources,
                passwords=passwords,
                crls=crls,
                skip_revoked=options["skip_revoked"],
                include_expired=options["include_expired"],
                dry_run=options["dry_run"],
            )
        except X509Error as exc:
            raise CommandError(exc.message) from None
        except EnrollmentError as exc:
            raise CommandError(exc.message) from None
        del passwords
        self._print(report, unreadable)

    def _print(self, report: importing.ImportReport, unreadable: list[str]) -> None:
        out = self.stdout
        if report.dry_run:
            out.write("Dry run: nothing was written.")
        for line in report.issuers:
            out.write(f"Issuer {line}")
        for line in report.crls:
            out.write(f"CRL {line}")
        for line in unreadable:
            out.write(line)
        for line in report.lines:
            out.write(line)
        out.write("Certificates:")
        for category in importing.CATEGORIES:
            out.write(f"  {category}: {report.counts[category]}")
        if report.key_counts:
            out.write("Keys:")
            for category in importing.KEY_CATEGORIES:
                out.write(f"  {category}: {report.key_counts[category]}")
        if unreadable:
            out.write(f"  files that could not be read: {len(unreadable)}")
        if report.crls_refused:
            out.write(f"CRLs refused: {report.crls_refused}")
