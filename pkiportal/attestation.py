"""The WebAuthn attestation settings, read and checked (README "Second factor"): the CA
certificates a security key's attestation must chain to, and the AAGUIDs of the approved
models. Plain cryptography, no Django: the settings module runs it before Django is set up,
and turns a ValueError into ImproperlyConfigured."""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

_AAGUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def read_roots(path: str) -> list[bytes]:
    """The CA certificates in the PEM file at ``path``, one PEM each (py_webauthn reads one
    certificate per entry). Refused: a file that cannot be read, holds no certificate or a
    malformed one, or a certificate that is not a root CA's (basicConstraints cA, issued by
    itself): an attestation chains to its vendor's root, never to a key's own certificate,
    and an intermediate alone is no anchor to OpenSSL's check."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ValueError(f"{path!r} cannot be read: {exc.strerror or exc}") from exc
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ValueError(f"{path!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----).")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"{path!r} holds a certificate that cannot be read: {exc}") from exc
    for certificate in certificates:
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
            is_ca = constraints.value.ca
        except (x509.ExtensionNotFound, ValueError):
            is_ca = False
        subject = certificate.subject.rfc4514_string()
        if not is_ca:
            raise ValueError(
                f"{subject!r} in {path!r} is not a CA certificate (basicConstraints cA): "
                "give the key vendor's attestation root CA."
            )
        if certificate.issuer != certificate.subject:
            # OpenSSL, which py_webauthn's chain check uses, trusts only self-issued roots.
            raise ValueError(
                f"{subject!r} in {path!r} is not a root (its issuer is "
                f"{certificate.issuer.rfc4514_string()!r}): give the root it chains to."
            )
    return [certificate.public_bytes(Encoding.PEM) for certificate in certificates]


def parse_aaguids(values: list[str]) -> list[str]:
    """AAGUIDs as py_webauthn writes them (lower-case, 8-4-4-4-12), each once, in order."""
    aaguids: list[str] = []
    for value in values:
        text = value.strip().lower()
        if not text:
            continue
        if not _AAGUID.fullmatch(text):
            raise ValueError(
                f"{value.strip()!r} is not an AAGUID (8-4-4-4-12 hexadecimal digits, e.g. "
                "cb69481e-8ff7-4039-93ec-0a2729a154a8)."
            )
        if text not in aaguids:
            aaguids.append(text)
    return aaguids
