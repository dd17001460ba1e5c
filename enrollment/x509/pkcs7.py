"""Certificates as PEM, DER and degenerate PKCS#7 (.p7b) bundles, plus fingerprints."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from .errors import X509Error

_FINGERPRINT_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def certificates_to_p7b(certificates: Sequence[x509.Certificate], *, pem: bool = False) -> bytes:
    """Certs-only SignedData (RFC 5652 5.1 with no signers), as served at /pki/<ca>-chain.p7b."""
    if not certificates:
        raise X509Error("A PKCS#7 bundle needs at least one certificate.")
    encoding = serialization.Encoding.PEM if pem else serialization.Encoding.DER
    return pkcs7.serialize_certificates(list(certificates), encoding)


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def certificate_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def certificates_pem(certs: Sequence[x509.Certificate]) -> bytes:
    """Concatenated PEM, in the order given (leaf first for a chain file)."""
    return b"".join(certificate_pem(cert) for cert in certs)


def fingerprint(cert: x509.Certificate, algorithm: str = "sha256") -> str:
    """Lower-case hex digest of the DER certificate, no separators."""
    try:
        hash_type = _FINGERPRINT_HASHES[algorithm.lower()]
    except KeyError:
        raise ValueError(f"Unsupported fingerprint algorithm {algorithm!r}") from None
    return cert.fingerprint(hash_type()).hex()


def format_fingerprint(hexstr: str) -> str:
    """Upper-case pairs joined by colons, the way openssl and Windows show them."""
    digits = hexstr.replace(":", "").upper()
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))
