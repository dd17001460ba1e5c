"""PKCS#12 export for server-generated keys and import for key recovery agents."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import pkcs12 as asn1_pkcs12  # python-pkcs11's, pinned in requirements

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from .errors import X509Error, gettext_noop
from .keys import PrivateKey

# PBKDF2 iterations for the modern format. Exports happen once per certificate, so we can
# afford well above OpenSSL's default of 2048.
MODERN_KDF_ROUNDS = 100_000
# Old Windows/Outlook importers are slow with SHA-1 key derivation; keep it moderate.
COMPATIBLE_KDF_ROUNDS = 10_000


class Pkcs12Format(enum.StrEnum):
    """How a PKCS#12 file is protected."""

    MODERN = "modern"  # PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC), HMAC-SHA256 MAC
    COMPATIBLE = "compatible"  # pbeWithSHAAnd3-KeyTripleDES-CBC, HMAC-SHA1 MAC


def _encryption(fmt: Pkcs12Format, password: bytes) -> serialization.KeySerializationEncryption:
    builder = serialization.PrivateFormat.PKCS12.encryption_builder()
    if fmt is Pkcs12Format.MODERN:
        builder = (
            builder.kdf_rounds(MODERN_KDF_ROUNDS)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
        )
    else:
        builder = (
            builder.kdf_rounds(COMPATIBLE_KDF_ROUNDS)
            .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
            .hmac_hash(hashes.SHA1())
        )
    return builder.build(password)


def export_pkcs12(
    *,
    key: PrivateKey,
    certificate: x509.Certificate,
    chain: Sequence[x509.Certificate],
    password: str,
    friendly_name: str | None = None,
    fmt: Pkcs12Format = Pkcs12Format.MODERN,
) -> bytes:
    """DER PKCS#12 holding the key, its certificate and the CA chain (issuer first)."""
    if not password:
        raise X509Error(gettext_noop("A PKCS#12 file needs a password."))
    if key.public_key() != certificate.public_key():
        raise X509Error(gettext_noop("The private key does not belong to the certificate."))
    name = friendly_name.encode("utf-8") if friendly_name else None
    return pkcs12.serialize_key_and_certificates(
        name, key, certificate, list(chain), _encryption(Pkcs12Format(fmt), password.encode())
    )


def load_pkcs12(
    data: bytes, password: str
) -> tuple[PrivateKey, x509.Certificate, list[x509.Certificate]]:
    """Key, certificate and extra certificates from a PKCS#12 file, or a clear X509Error."""
    try:
        key, certificate, additional = pkcs12.load_key_and_certificates(
            data, password.encode() if password else None
        )
    except (ValueError, TypeError) as exc:
        raise X509Error(
            gettext_noop(
                "The PKCS#12 file could not be opened: the password is wrong or the file is "
                "damaged."
            )
        ) from exc
    if key is None:
        raise X509Error(gettext_noop("The PKCS#12 file holds no private key."))
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise X509Error(gettext_noop("The PKCS#12 file holds a key type other than RSA or EC."))
    if certificate is None:
        raise X509Error(gettext_noop("The PKCS#12 file holds no certificate for its private key."))
    if key.public_key() != certificate.public_key():
        raise X509Error(
            gettext_noop("The PKCS#12 file's private key does not match its certificate.")
        )
    return key, certificate, list(additional)


@dataclass(frozen=True)
class Pkcs12Bags:
    """What a PKCS#12 file holds, counted without its password: key and certificate bags
    in its unencrypted parts, and how many parts are encrypted as a whole (openssl and
    Windows put the certificates there; their bags cannot be counted unopened)."""

    keys: int
    certificates: int
    encrypted_parts: int


def pkcs12_bags(data: bytes) -> Pkcs12Bags | None:
    """Count the bags of a PKCS#12 file (load_pkcs12 returns one key of however many);
    None if its structure does not parse."""
    keys = certificates = encrypted = 0
    try:
        pfx = asn1_pkcs12.Pfx.load(data)
        for part in pfx.authenticated_safe:
            if part["content_type"].native != "data":
                encrypted += 1
                continue
            for bag in asn1_pkcs12.SafeContents.load(part["content"].native):
                kind = bag["bag_id"].native
                if kind in ("key_bag", "pkcs8_shrouded_key_bag"):
                    keys += 1
                elif kind == "cert_bag":
                    certificates += 1
    except (ValueError, TypeError, KeyError):
        return None
    return Pkcs12Bags(keys, certificates, encrypted)
