"""Shared bits of the thin management commands."""

from __future__ import annotations

import getpass
import secrets
from pathlib import Path

from django.core.management.base import CommandError

from enrollment.models import CertificateAuthority
from enrollment.services import IssuingCaSwitch


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
    with target.open("x") as fh:
        fh.write(value)
    target.chmod(0o600)
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
        if root and ca.parent_id is not None:
            raise CommandError(
                f"{ca.name} ({slug!r}) is not a root CA; this command is for the offline root."
            )
        return ca
    queryset = CertificateAuthority.objects.filter(parent__isnull=root)
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
