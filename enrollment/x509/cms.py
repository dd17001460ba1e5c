"""Key archival: a private key as CMS EnvelopedData to the key recovery agents' certificates.

The server holds only the envelope; recovery needs an agent's private key (DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

from .errors import RecoveryError, X509Error, gettext_noop
from .keys import PrivateKey


def archive_private_key(key: PrivateKey, recipients: Sequence[x509.Certificate]) -> bytes:
    """DER EnvelopedData (AES-256-CBC content, RSA key transport) around the PKCS#8 DER key."""
    if not recipients:
        raise X509Error("Key archival needs at least one key recovery agent certificate.")
    plaintext = key.private_bytes(
        encoding=serialization.Encoding.DER,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    builder = (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(plaintext)
        .set_content_encryption_algorithm(algorithms.AES256)
    )
    for certificate in recipients:
        _check_recipient(certificate)
        builder = builder.add_recipient(certificate)
    # Binary: the content is DER, so no MIME canonicalisation may touch it.
    return builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])


def recover_private_key(
    envelope: bytes, *, recipient_certificate: x509.Certificate, recipient_key: PrivateKey
) -> PrivateKey:
    """Open an archive with one agent's certificate and key, or raise RecoveryError."""
    if not isinstance(recipient_key, rsa.RSAPrivateKey):
        raise RecoveryError(gettext_noop("Key recovery agent keys are RSA keys; this key is not."))
    if recipient_key.public_key() != recipient_certificate.public_key():
        raise RecoveryError(
            gettext_noop(
                "The key recovery agent's private key does not belong to the certificate given."
            )
        )
    try:
        plaintext = pkcs7.pkcs7_decrypt_der(envelope, recipient_certificate, recipient_key, [])
    except ValueError as exc:
        raise RecoveryError(
            gettext_noop(
                "The archived key could not be decrypted with this key recovery agent's key: "
                "the agent is not a recipient or the archive is damaged."
            )
        ) from exc
    try:
        key = serialization.load_der_private_key(plaintext, password=None)
    except (ValueError, TypeError) as exc:
        raise RecoveryError(
            gettext_noop("The archive decrypted, but its content is not a private key.")
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise RecoveryError(gettext_noop("The archive holds a key type other than RSA or EC."))
    return key


def _check_recipient(certificate: x509.Certificate) -> None:
    """RSA key transport only (cryptography's CMS builder), and the KU must allow it."""
    name = certificate.subject.rfc4514_string()
    if not isinstance(certificate.public_key(), rsa.RSAPublicKey):
        raise X509Error(
            f"Key recovery agent certificate {name} has a non-RSA key; archival needs RSA "
            "key transport."
        )
    try:
        key_usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not key_usage.key_encipherment:
        raise X509Error(f"Key recovery agent certificate {name} does not allow key encipherment.")
