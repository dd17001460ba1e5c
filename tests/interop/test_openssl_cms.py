"""S/MIME with our certificates through `openssl cms`, and openssl opening our key archives."""

from __future__ import annotations

import pytest

from cryptography.hazmat.primitives import serialization

from enrollment.x509.cms import archive_private_key
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.policy import Purpose
from tests.pki import CA, CertifiedKey, MakeEndEntity, OpenSSL

pytestmark = pytest.mark.interop

MESSAGE = b"Content-Type: text/plain\r\n\r\nThe quarterly numbers are attached.\r\n"


def public_pem(certified_key: object) -> bytes:
    return certified_key.public_key().public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("purpose", [Purpose.SIGNING, Purpose.DUAL_USE])
@pytest.mark.parametrize("algorithm", [KeyAlgorithm.RSA_2048, KeyAlgorithm.EC_P256])
def test_a_message_signed_with_our_certificate_verifies_against_the_root(
    openssl: OpenSSL,
    make_end_entity: MakeEndEntity,
    root_ca: CA,
    issuing_ca: CA,
    purpose: Purpose,
    algorithm: KeyAlgorithm,
) -> None:
    signer = make_end_entity(purpose, algorithm)
    openssl.write_pem("signer.pem", signer.certificate)
    openssl.write_key("signer.key", signer.key)
    openssl.write_pem("root.pem", root_ca.certificate)
    openssl.write_pem("issuing.pem", issuing_ca.certificate)
    openssl.write("message.txt", MESSAGE)
    openssl.run(
        "cms", "-sign", "-in", "message.txt", "-signer", "signer.pem", "-inkey", "signer.key",
        "-certfile", "issuing.pem", "-out", "signed.eml",
    )  # fmt: skip
    verified = openssl.run(
        "cms", "-verify", "-in", "signed.eml", "-CAfile", "root.pem", "-out", "verified.txt"
    )
    assert b"Verification successful" in verified.stderr
    assert openssl.path("verified.txt").read_bytes().replace(b"\r\n", b"\n") == MESSAGE.replace(
        b"\r\n", b"\n"
    )


def test_openssl_refuses_to_verify_a_signature_made_with_an_encryption_only_key(
    openssl: OpenSSL, make_end_entity: MakeEndEntity, root_ca: CA, issuing_ca: CA
) -> None:
    """The key usage keeps the encryption key out of signing, as intended."""
    wrong = make_end_entity(Purpose.ENCRYPTION, KeyAlgorithm.RSA_2048)
    openssl.write_pem("signer.pem", wrong.certificate)
    openssl.write_key("signer.key", wrong.key)
    openssl.write_pem("root.pem", root_ca.certificate)
    openssl.write_pem("issuing.pem", issuing_ca.certificate)
    openssl.write("message.txt", MESSAGE)
    openssl.run(
        "cms", "-sign", "-in", "message.txt", "-signer", "signer.pem", "-inkey", "signer.key",
        "-certfile", "issuing.pem", "-out", "signed.eml",
    )  # fmt: skip
    result = openssl.run("cms", "-verify", "-in", "signed.eml", "-CAfile", "root.pem", check=False)
    assert result.returncode != 0
    assert b"unsuitable certificate purpose" in result.stderr


@pytest.mark.parametrize("purpose", [Purpose.ENCRYPTION, Purpose.DUAL_USE])
@pytest.mark.parametrize(
    "algorithm", [KeyAlgorithm.RSA_2048, KeyAlgorithm.EC_P256, KeyAlgorithm.EC_P384]
)
def test_a_message_encrypted_to_our_certificate_decrypts_with_its_key(
    openssl: OpenSSL, make_end_entity: MakeEndEntity, purpose: Purpose, algorithm: KeyAlgorithm
) -> None:
    """RSA uses key transport, EC uses ECDH key agreement (RFC 5753)."""
    recipient = make_end_entity(purpose, algorithm)
    openssl.write_pem("recipient.pem", recipient.certificate)
    openssl.write_key("recipient.key", recipient.key)
    openssl.write("message.txt", MESSAGE)
    openssl.run(
        "cms", "-encrypt", "-aes256", "-in", "message.txt", "-out", "encrypted.eml", "recipient.pem"
    )
    printed = openssl.run("cms", "-cmsout", "-print", "-in", "encrypted.eml").stdout
    assert (b"kari" if algorithm.curve else b"ktri") in printed
    openssl.run(
        "cms", "-decrypt", "-in", "encrypted.eml", "-recip", "recipient.pem",
        "-inkey", "recipient.key", "-out", "decrypted.txt",
    )  # fmt: skip
    assert openssl.path("decrypted.txt").read_bytes() == MESSAGE


@pytest.mark.parametrize("algorithm", [KeyAlgorithm.RSA_2048, KeyAlgorithm.EC_P256])
def test_openssl_recovers_an_archived_key_with_the_agents_key(
    openssl: OpenSSL,
    make_end_entity: MakeEndEntity,
    recovery_agent: CertifiedKey,
    algorithm: KeyAlgorithm,
) -> None:
    archived = make_end_entity(Purpose.ENCRYPTION, algorithm)
    openssl.write("archive.der", archive_private_key(archived.key, [recovery_agent.certificate]))
    openssl.write_pem("agent.pem", recovery_agent.certificate)
    openssl.write_key("agent.key", recovery_agent.key)

    printed = openssl.run("cms", "-cmsout", "-print", "-inform", "DER", "-in", "archive.der").stdout
    assert b"contentType: pkcs7-data" in printed
    assert b"aes-256-cbc" in printed
    assert b"ktri" in printed

    openssl.run(
        "cms", "-decrypt", "-inform", "DER", "-in", "archive.der", "-binary",
        "-recip", "agent.pem", "-inkey", "agent.key", "-out", "recovered.der",
    )  # fmt: skip
    recovered_public = openssl.run(
        "pkey", "-inform", "DER", "-in", "recovered.der", "-pubout"
    ).stdout
    assert recovered_public == public_pem(archived.key)


def test_openssl_cannot_open_an_archive_with_someone_elses_key(
    openssl: OpenSSL,
    make_end_entity: MakeEndEntity,
    recovery_agent: CertifiedKey,
) -> None:
    archived = make_end_entity(Purpose.ENCRYPTION, KeyAlgorithm.EC_P256)
    outsider = make_end_entity(Purpose.ENCRYPTION, KeyAlgorithm.RSA_2048)
    openssl.write("archive.der", archive_private_key(archived.key, [recovery_agent.certificate]))
    openssl.write_pem("outsider.pem", outsider.certificate)
    openssl.write_key("outsider.key", outsider.key)
    result = openssl.run(
        "cms", "-decrypt", "-inform", "DER", "-in", "archive.der", "-binary",
        "-recip", "outsider.pem", "-inkey", "outsider.key", "-out", "recovered.der",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert (
        not openssl.path("recovered.der").exists() or not openssl.path("recovered.der").read_bytes()
    )
