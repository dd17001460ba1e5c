"""A certificate in human terms, for its directory page: plain cryptography, no Django."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import NameOID

from enrollment.x509.keys import describe_public_key
from enrollment.x509.pkcs7 import fingerprint, format_fingerprint
from enrollment.x509.policy import eku_name

# Short names openssl prints for attributes RFC 4514 leaves as dotted OIDs.
_NAMES = {
    NameOID.GIVEN_NAME: "GN",
    NameOID.SURNAME: "SN",
    NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier",
}

# RFC 5280 4.2.1.3 names, in the order the extension lists the bits.
_KEY_USAGE_BITS = [
    ("digital_signature", "digitalSignature"),
    ("content_commitment", "nonRepudiation"),
    ("key_encipherment", "keyEncipherment"),
    ("data_encipherment", "dataEncipherment"),
    ("key_agreement", "keyAgreement"),
    ("key_cert_sign", "keyCertSign"),
    ("crl_sign", "cRLSign"),
]


@dataclass(frozen=True)
class CertificateFacts:
    subject: str
    issuer: str
    serial: str
    not_before: datetime
    not_after: datetime
    key: str
    key_usage: list[str]
    extended_key_usage: list[str]
    emails: list[str]
    sha256: str
    sha1: str


def _key_usage(certificate: x509.Certificate) -> list[str]:
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return []
    names = [name for attr, name in _KEY_USAGE_BITS if getattr(usage, attr)]
    if usage.key_agreement:  # encipherOnly/decipherOnly are only defined with keyAgreement
        names += [
            n
            for a, n in [("encipher_only", "encipherOnly"), ("decipher_only", "decipherOnly")]
            if getattr(usage, a)
        ]
    return names


def _extended_key_usage(certificate: x509.Certificate) -> list[str]:
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return []
    return [eku_name(oid) for oid in usages]


def _emails(certificate: x509.Certificate) -> list[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return names.get_values_for_type(x509.RFC822Name)


def certificate_facts(certificate: x509.Certificate) -> CertificateFacts:
    """What a person checks before trusting a certificate, formatted as tools show it."""
    serial = format(certificate.serial_number, "x")
    serial = serial.zfill(len(serial) + len(serial) % 2)
    return CertificateFacts(
        subject=certificate.subject.rfc4514_string(_NAMES),
        issuer=certificate.issuer.rfc4514_string(_NAMES),
        serial=format_fingerprint(serial),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        key=describe_public_key(certificate.public_key()),
        key_usage=_key_usage(certificate),
        extended_key_usage=_extended_key_usage(certificate),
        emails=_emails(certificate),
        sha256=format_fingerprint(fingerprint(certificate, "sha256")),
        sha1=format_fingerprint(fingerprint(certificate, "sha1")),
    )
