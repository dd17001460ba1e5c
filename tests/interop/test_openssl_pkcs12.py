"""OpenSSL 3.0 opens our PKCS#12 files, and we open the ones it writes (KRA uploads)."""

from __future__ import annotations

import pytest

from cryptography.hazmat.primitives import serialization

from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.pkcs12 import Pkcs12Format, export_pkcs12, load_pkcs12
from tests.pki import CA, CertifiedKey, MakeEndEntity, OpenSSL

pytestmark = pytest.mark.interop

PASSWORD = "Correct horse 9!"


@pytest.fixture(scope="module")
def alice(make_end_entity: MakeEndEntity) -> CertifiedKey:
    return make_end_entity(key_algorithm=KeyAlgorithm.RSA_2048)


def public_pem(certified: CertifiedKey) -> bytes:
    return certified.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def export(alice: CertifiedKey, issuing_ca: CA, root_ca: CA, fmt: Pkcs12Format) -> bytes:
    return export_pkcs12(
        key=alice.key,
        certificate=alice.certificate,
        chain=[issuing_ca.certificate, root_ca.certificate],
        password=PASSWORD,
        friendly_name="Alice Example",
        fmt=fmt,
    )


def test_openssl_opens_the_modern_format_without_legacy_provider(
    openssl: OpenSSL, alice: CertifiedKey, issuing_ca: CA, root_ca: CA
) -> None:
    openssl.write("alice.p12", export(alice, issuing_ca, root_ca, Pkcs12Format.MODERN))
    info = openssl.run(
        "pkcs12", "-info", "-noout", "-passin", f"pass:{PASSWORD}", "-in", "alice.p12"
    )
    report = info.stderr.decode()
    assert "MAC: sha256" in report
    assert "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC" in report
    assert "PRF hmacWithSHA256" in report
    assert "PKCS7 Encrypted data: PBES2, PBKDF2, AES-256-CBC" in report
    assert "3DES" not in report
    assert "RC2" not in report


@pytest.mark.parametrize("legacy", [False, True])
def test_openssl_opens_the_compatible_format_with_or_without_legacy(
    openssl: OpenSSL, alice: CertifiedKey, issuing_ca: CA, root_ca: CA, legacy: bool
) -> None:
    """3DES sits in OpenSSL 3.0's default provider; only RC2-40 files need -legacy."""
    openssl.write("alice.p12", export(alice, issuing_ca, root_ca, Pkcs12Format.COMPATIBLE))
    options = ["-legacy"] if legacy else []
    info = openssl.run(
        "pkcs12", "-info", "-noout", *options, "-passin", f"pass:{PASSWORD}", "-in", "alice.p12"
    )
    report = info.stderr.decode()
    assert "MAC: sha1" in report
    assert "Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC" in report


@pytest.mark.parametrize("fmt", list(Pkcs12Format))
def test_openssl_extracts_the_same_key_and_certificates(
    openssl: OpenSSL,
    alice: CertifiedKey,
    issuing_ca: CA,
    root_ca: CA,
    fmt: Pkcs12Format,
) -> None:
    openssl.write("alice.p12", export(alice, issuing_ca, root_ca, fmt))
    openssl.run(
        "pkcs12",
        "-in",
        "alice.p12",
        "-passin",
        f"pass:{PASSWORD}",
        "-nocerts",
        "-nodes",
        "-out",
        "key.pem",
    )
    pubkey = openssl.run("pkey", "-in", "key.pem", "-pubout").stdout
    assert pubkey == public_pem(alice)

    certs = openssl.run(
        "pkcs12", "-in", "alice.p12", "-passin", f"pass:{PASSWORD}", "-nokeys", "-out", "certs.pem"
    )
    assert certs.returncode == 0
    pem = openssl.path("certs.pem").read_text()
    assert pem.count("-----BEGIN CERTIFICATE-----") == 3
    assert "friendlyName: Alice Example" in pem
    for certificate in (alice.certificate, issuing_ca.certificate, root_ca.certificate):
        body = certificate.public_bytes(serialization.Encoding.PEM).decode()
        assert body in pem


def test_openssl_rejects_a_wrong_password(
    openssl: OpenSSL, alice: CertifiedKey, issuing_ca: CA, root_ca: CA
) -> None:
    openssl.write("alice.p12", export(alice, issuing_ca, root_ca, Pkcs12Format.MODERN))
    result = openssl.run(
        "pkcs12", "-info", "-noout", "-passin", "pass:wrong", "-in", "alice.p12", check=False
    )
    assert result.returncode != 0
    assert b"Mac verify error" in result.stderr


@pytest.mark.parametrize(
    "options",
    [
        pytest.param([], id="openssl-3-default-aes"),
        pytest.param(["-legacy"], id="legacy-rc2-3des"),
        pytest.param(
            ["-keypbe", "PBE-SHA1-3DES", "-certpbe", "PBE-SHA1-3DES", "-macalg", "sha1"],
            id="windows-style-3des",
        ),
    ],
)
def test_we_open_a_pkcs12_that_openssl_wrote(
    openssl: OpenSSL, alice: CertifiedKey, issuing_ca: CA, options: list[str]
) -> None:
    """A key recovery agent may upload an agent PKCS#12 exported by openssl or Windows."""
    openssl.write_key("key.pem", alice.key)
    openssl.write_pem("cert.pem", alice.certificate)
    openssl.write_pem("chain.pem", issuing_ca.certificate)
    openssl.run(
        "pkcs12", "-export", *options, "-inkey", "key.pem", "-in", "cert.pem",
        "-certfile", "chain.pem", "-passout", f"pass:{PASSWORD}", "-out", "agent.p12",
    )  # fmt: skip
    key, certificate, extra = load_pkcs12(openssl.path("agent.p12").read_bytes(), PASSWORD)
    assert certificate == alice.certificate
    assert key.public_key() == alice.key.public_key()
    assert extra == [issuing_ca.certificate]
