"""What an imported certificate is good for: its keyUsage read with its key type."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta

import pytest

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from django.apps import apps

from enrollment.models import Certificate
from enrollment.x509.importing import Verdict, classify, key_uses, purpose
from tests.enrollment.tools import issue, new_key

NOW = datetime.now(UTC)
ISSUER_KEY = ec.generate_private_key(ec.SECP256R1())
ISSUER = (
    x509.CertificateBuilder()
    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Old Corp CA")]))
    .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Old Corp CA")]))
    .public_key(ISSUER_KEY.public_key())
    .serial_number(1)
    .not_valid_before(NOW - timedelta(days=1))
    .not_valid_after(NOW + timedelta(days=400))
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .sign(ISSUER_KEY, hashes.SHA256())
)
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
EC_KEY = ec.generate_private_key(ec.SECP256R1()).public_key()
ED_KEY = ed25519.Ed25519PrivateKey.generate().public_key()
X_KEY = x25519.X25519PrivateKey.generate().public_key()


def usage(*names: str) -> x509.KeyUsage:
    flags = dict.fromkeys(
        ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
         "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"),
        False,
    )  # fmt: skip
    flags.update(dict.fromkeys(names, True))
    return x509.KeyUsage(**flags)


def certificate(key, key_usage: x509.KeyUsage | None) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Alice")]))
        .issuer_name(ISSUER.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
        .add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name("alice@example.com")]), critical=False
        )
    )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    return builder.sign(ISSUER_KEY, hashes.SHA256())


@pytest.mark.parametrize(
    ("key", "names", "expected"),
    [
        (RSA_KEY, ("digital_signature", "key_encipherment"), "dual_use"),
        (RSA_KEY, ("key_encipherment",), "encryption"),
        (RSA_KEY, ("digital_signature",), "signing"),
        (RSA_KEY, ("digital_signature", "key_agreement"), "signing"),  # RSA agrees on nothing
        (EC_KEY, ("digital_signature", "key_agreement"), "dual_use"),
        (EC_KEY, ("key_agreement",), "encryption"),
        # The common misissuance: EC cannot be encrypted to by key transport.
        (EC_KEY, ("digital_signature", "key_encipherment"), "signing"),
        (ED_KEY, ("digital_signature", "key_agreement"), "signing"),  # Ed25519 only signs
        (X_KEY, ("key_agreement",), "encryption"),
        (RSA_KEY, None, "dual_use"),  # no keyUsage: whatever the key can do
        (EC_KEY, None, "dual_use"),
        (ED_KEY, None, "signing"),
    ],
)
def test_the_purpose_is_what_the_key_usage_lets_the_key_type_do(key, names, expected):
    assert purpose(certificate(key, None if names is None else usage(*names))) == expected


@pytest.mark.parametrize(
    ("key", "names"),
    [
        (EC_KEY, ("key_encipherment",)),
        (RSA_KEY, ("key_agreement",)),
        (X_KEY, ("digital_signature",)),
    ],
)
def test_a_certificate_good_for_neither_is_not_imported(key, names):
    refused = classify(certificate(key, usage(*names)), [ISSUER], now=NOW)

    assert not any(key_uses(certificate(key, usage(*names))))
    assert refused.verdict == Verdict.NOT_SMIME
    assert refused.reason == "its key usage lets its key neither sign nor be encrypted to"


def test_a_usable_certificate_still_is():
    assert classify(certificate(EC_KEY, usage("key_agreement")), [ISSUER], now=NOW).verdict == (
        Verdict.OK
    )


@pytest.mark.django_db
def test_the_migration_reads_imported_certificates_purpose_again(hierarchy, employee, template):
    """Rows stored by the old importer are corrected; issued ones are never read."""
    migration = importlib.import_module("enrollment.migrations.0037_imported_purpose_by_key_type")
    stored = issue(employee, template("smime-dual-use"), new_key())
    issued_purpose = stored.purpose
    misissued = certificate(EC_KEY, usage("digital_signature", "key_encipherment"))
    imported = Certificate.objects.get(pk=stored.pk)
    imported.pk = None
    imported.template = None
    imported.purpose = "dual_use"  # what keyUsage alone made of it
    imported.der = misissued.public_bytes(Encoding.DER)
    imported.fingerprint_sha256 = "f" * 64
    imported.serial = "abc"
    imported.save()
    good = certificate(RSA_KEY, usage("digital_signature", "key_encipherment"))
    kept = Certificate.objects.get(pk=stored.pk)
    kept.pk, kept.template, kept.purpose = None, None, "dual_use"
    kept.der, kept.fingerprint_sha256, kept.serial = (
        good.public_bytes(Encoding.DER), "e" * 64, "abd",
    )  # fmt: skip
    kept.save()
    unreadable = Certificate.objects.get(pk=stored.pk)
    unreadable.pk, unreadable.template, unreadable.purpose = None, None, "encryption"
    unreadable.der, unreadable.fingerprint_sha256, unreadable.serial = b"\x30\x00", "d" * 64, "abe"
    unreadable.save()

    migration.forwards(apps, None)

    imported.refresh_from_db()
    kept.refresh_from_db()
    unreadable.refresh_from_db()
    stored.refresh_from_db()
    assert imported.purpose == "signing"
    assert kept.purpose == "dual_use"
    assert unreadable.purpose == "encryption"  # left as it was
    assert stored.purpose == issued_purpose  # from its template, never read again
