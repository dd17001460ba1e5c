"""Shared bits of the thin management commands."""

from __future__ import annotations

import getpass
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from enrollment import keystore
from enrollment.exceptions import KeyStoreError
from enrollment.models import CertificateAuthority
from enrollment.services import IssuingCaSwitch
from enrollment.x509.errors import PolicyError
from enrollment.x509.mail_domains import parse_mail_domains
from pkiportal.secret_files import create_private_file


def read_passphrase(path: str | None, *, prompt: str) -> bytes:
    """A passphrase from a file, or typed at the terminal; never from the command line."""
    if path:
        try:
            return Path(path).read_text().strip().encode()
        except OSError as exc:
            raise CommandError(f"Cannot read passphrase file {path}: {exc.strerror}") from exc
    try:
        return getpass.getpass(prompt).encode()
    except (EOFError, OSError) as exc:
        raise CommandError("No passphrase: give --passphrase-file or run interactively.") from exc


def new_passphrase_file(path: str) -> bytes:
    """Create a random passphrase in a new 0600 file and return it."""
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_urlsafe(24)
    create_private_file(target, value.encode())  # 0600 from its creation
    return value.encode()


def get_ca(slug: str | None, *, root: bool = False) -> CertificateAuthority:
    """The CA named by ``slug``, or the only one of its kind; ``root`` insists on a root.

    A root-only command (sign_root_crl, import_crl) must never act on an online issuing
    CA: its CRLs have other limits (S/MIME BR 4.9.7) and its key is not offline.
    """
    if slug:
        try:
            ca = CertificateAuthority.objects.get(slug=slug)
        except CertificateAuthority.DoesNotExist:
            raise CommandError(f"No CA with slug {slug!r}.") from None
        if ca.is_imported:
            raise CommandError(
                f"{ca.name} ({slug!r}) is another CA whose certificates were imported: "
                "the portal signs nothing for it."
            )
        if root and ca.parent_id is not None:
            raise CommandError(
                f"{ca.name} ({slug!r}) is not a root CA; this command is for the offline root."
            )
        return ca
    queryset = CertificateAuthority.objects.ours().filter(parent__isnull=root)
    if queryset.count() != 1:
        kind = "root" if root else "issuing"
        raise CommandError(f"Say which {kind} CA with --ca (there is not exactly one).")
    return queryset.get()


def switched(switch: IssuingCaSwitch) -> str:
    """One line saying what an issuing CA switch moved (create_issuing_ca, switch_issuing_ca)."""
    moved = ", ".join(switch.templates) or "no template yet"
    default = " It is the default issuing CA now." if switch.made_default else ""
    source = f" from {switch.previous.name}" if switch.previous is not None else ""
    return f"Templates moved{source} to {switch.current.name}: {moved}.{default}"


def add_name_constraint_arguments(parser: CommandParser) -> None:
    """--mail-domains / --no-name-constraints, shared by create_pki and create_issuing_ca."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--mail-domains",
        help="Comma-separated mail domains the issuing CA is name-constrained to "
        "(example.com: that host; .example.com: its subdomains). Default: "
        "PKIPORTAL_MAIL_DOMAINS; no constraint when that is empty.",
    )
    group.add_argument(
        "--no-name-constraints",
        action="store_true",
        help="Leave the issuing CA unconstrained even when PKIPORTAL_MAIL_DOMAINS is set.",
    )


def constraint_domains(options: dict[str, Any]) -> tuple[str, ...]:
    """The domains the options ask the new issuing CA to be constrained to, canonical."""
    if options["no_name_constraints"]:
        return ()
    given = options["mail_domains"]
    if given is None:
        return tuple(settings.PKIPORTAL_MAIL_DOMAINS)
    try:
        domains = parse_mail_domains(given.split(","))
    except PolicyError as exc:
        raise CommandError(f"--mail-domains: {exc.message}") from exc
    if not domains:
        raise CommandError("--mail-domains names no domain; use --no-name-constraints instead.")
    return domains


def describe_constraints(domains: tuple[str, ...]) -> str:
    """One line saying what a new issuing CA is constrained to, and how that compares with
    what the portal refuses at enrolment (PKIPORTAL_MAIL_DOMAINS)."""
    configured = tuple(settings.PKIPORTAL_MAIL_DOMAINS)
    if not domains:
        line = "The issuing CA is not name-constrained: it can certify any mail domain."
    else:
        line = f"The issuing CA is name-constrained to {', '.join(domains)}."
    if domains != configured:
        line += (
            " PKIPORTAL_MAIL_DOMAINS is "
            + (", ".join(configured) if configured else "empty")
            + ": enrolment refuses by it, relying parties by the CA's constraint."
        )
    return line


def add_hsm_key_arguments(parser: CommandParser) -> None:
    """--hsm-key-label / --hsm-key-id: the issuing CA uses a key already in the HSM."""
    parser.add_argument(
        "--hsm-key-label",
        default="",
        help="With PKIPORTAL_KEY_BACKEND=pkcs11: use the key with this CKA_LABEL that you "
        "made in the token (e.g. pkcs11-tool --keypairgen) instead of generating one.",
    )
    parser.add_argument(
        "--hsm-key-id",
        default="",
        help="The same key's CKA_ID in hex (as pkcs11-tool --id shows it); with or "
        "without --hsm-key-label.",
    )
    parser.add_argument(
        "--allow-extractable-key",
        action="store_true",
        help="Accept an HSM key that can leave the token, or may have (CKA_EXTRACTABLE "
        "true or unknown, CKA_ALWAYS_SENSITIVE or CKA_NEVER_EXTRACTABLE not true): only if "
        "your HSM's backup works by wrapping keys out. Refused otherwise.",
    )


def hsm_key(options: dict[str, Any]) -> keystore.TokenKeySelector | None:
    """The existing HSM key the options name, or None to generate a new one."""
    if not options["hsm_key_label"] and not options["hsm_key_id"]:
        if options["allow_extractable_key"]:
            raise CommandError(
                "--allow-extractable-key is for a key you name with --hsm-key-label or "
                "--hsm-key-id; a key the portal generates never leaves the token."
            )
        return None
    if settings.PKIPORTAL_KEY_BACKEND != "pkcs11":
        raise CommandError("--hsm-key-label/--hsm-key-id need PKIPORTAL_KEY_BACKEND=pkcs11.")
    try:
        return keystore.selector_for(label=options["hsm_key_label"], key_id=options["hsm_key_id"])
    except KeyStoreError as exc:
        raise CommandError(exc.message) from exc


def describe_key(ca: CertificateAuthority) -> tuple[str, str]:
    """Where the new CA's key is, its file or what the HSM says of it; and a warning
    (or "") for an HSM key that can leave the token (--allow-extractable-key)."""
    if ca.key_backend != "pkcs11":
        return f"Its key is the encrypted file {ca.key_reference} in PKIPORTAL_KEY_DIR.", ""
    try:
        facts = keystore.ca_key_facts(ca)
    except KeyStoreError as exc:
        return (
            f"Its key is in the HSM ({ca.key_reference}); reading its attributes: {exc.message}",
            "",
        )
    assert facts is not None
    line = f"Its key is in the HSM: {facts.summary()} ({ca.key_reference})."
    risks = facts.export_risks()
    if not risks:
        return line, ""
    return line, (
        f"WARNING: this CA key may exist outside the HSM: {'; '.join(risks)}. It was "
        "accepted because of --allow-extractable-key: whoever has the user PIN may be able "
        "to wrap it out, and anyone holding a copy can issue certificates in this CA's "
        "name. Revoke and replace this CA if you cannot vouch for every copy."
    )
