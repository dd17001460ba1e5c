"""Certificates as PEM, DER and degenerate PKCS#7 (.p7b) bundles, plus fingerprints."""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from .errors import X509Error

_FINGERPRINT_HASHES: dict[str, Callable[[bytes], Any]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}

# The certificate encoded last, with its DER. cryptography writes the DER afresh on each
# public_bytes() or fingerprint() (~100,000 instructions), and an issuance asks for the
# new certificate's twice or more (its SHA-1 and SHA-256 columns). Held by identity,
# and a certificate object never changes, so it cannot answer for another certificate;
# one tuple, replaced whole, so threads at worst encode again.
_last_encoded: tuple[x509.Certificate, bytes] | None = None


def certificates_to_p7b(certificates: Sequence[x509.Certificate], *, pem: bool = False) -> bytes:
    """Certs-only SignedData (RFC 5652 5.1 with no signers), as served at /pki/<ca>-chain.p7b."""
    if not certificates:
        raise X509Error("A PKCS#7 bundle needs at least one certificate.")
    encoding = serialization.Encoding.PEM if pem else serialization.Encoding.DER
    return pkcs7.serialize_certificates(list(certificates), encoding)


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def der_to_pem(der: bytes, label: str = "CERTIFICATE") -> bytes:
    """PEM of DER already at hand, as public_bytes(PEM) writes it (RFC 7468: 64-character
    lines). public_bytes encodes the certificate again first: ~100,000 instructions."""
    lines = b"".join(binascii.b2a_base64(der[i : i + 48]) for i in range(0, len(der), 48))
    return b"-----BEGIN %s-----\n%s-----END %s-----\n" % (label.encode(), lines, label.encode())


def certificate_der(cert: x509.Certificate) -> bytes:
    global _last_encoded
    last = _last_encoded
    if last is not None and last[0] is cert:
        return last[1]
    der = cert.public_bytes(serialization.Encoding.DER)
    _last_encoded = (cert, der)
    return der


def certificates_pem(certs: Sequence[x509.Certificate]) -> bytes:
    """Concatenated PEM, in the order given (leaf first for a chain file)."""
    return b"".join(certificate_pem(cert) for cert in certs)


def fingerprint(cert: x509.Certificate, algorithm: str = "sha256") -> str:
    """Lower-case hex digest of the DER certificate, no separators."""
    try:
        digest = _FINGERPRINT_HASHES[algorithm.lower()]
    except KeyError:
        raise ValueError(f"Unsupported fingerprint algorithm {algorithm!r}") from None
    return str(digest(certificate_der(cert)).hexdigest())


def format_fingerprint(hexstr: str) -> str:
    """Upper-case pairs joined by colons, the way openssl and Windows show them."""
    digits = hexstr.replace(":", "").upper()
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))
