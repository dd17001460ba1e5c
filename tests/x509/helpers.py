"""Small readers shared by the x509 unit tests."""

from __future__ import annotations

from typing import Any

from cryptography import x509

KEY_USAGE_BITS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)


def asserted_bits(key_usage: x509.KeyUsage) -> set[str]:
    """The names of the bits set; encipher/decipherOnly only exist with keyAgreement."""
    bits = {name for name in KEY_USAGE_BITS if getattr(key_usage, name)}
    if key_usage.key_agreement:
        bits |= {n for n in ("encipher_only", "decipher_only") if getattr(key_usage, n)}
    return bits


def ext(certificate: x509.Certificate, kind: type[Any]) -> x509.Extension[Any]:
    return certificate.extensions.get_extension_for_class(kind)
