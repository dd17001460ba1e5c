"""PKCS#12 export/import and the PEM, DER and PKCS#7 forms of certificates."""

from __future__ import annotations

import hashlib
import ssl

import pytest

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from enrollment.x509.errors import X509Error
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.pkcs7 import (
    certificate_der,
    certificate_pem,
    certificates_pem,
    certificates_to_p7b,
    der_to_pem,
    fingerprint,
    format_fingerprint,
)
from enrollment.x509.pkcs12 import Pkcs12Format, export_pkcs12, load_pkcs12
from tests.pki import CA, CertifiedKey, MakeEndEntity


@pytest.fixture(scope="module")
def alice(make_end_entity: MakeEndEntity) -> CertifiedKey:
    return make_end_entity(key_algorithm=KeyAlgorithm.RSA_2048)


def clear_der(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize("fmt", list(Pkcs12Format))
def test_a_pkcs12_round_trips_key_certificate_and_chain(
    alice: CertifiedKey, issuing_ca: CA, root_ca: CA, fmt: Pkcs12Format
) -> None:
    chain = [issuing_ca.certificate, root_ca.certificate]
    data = export_pkcs12(
        key=alice.key, certificate=alice.certificate, chain=chain, password="s3cret ✓", fmt=fmt
    )
    key, certificate, extra = load_pkcs12(data, "s3cret ✓")
    assert clear_der(key) == clear_der(alice.key)
    assert certificate == alice.certificate
    assert extra == chain


def test_the_friendly_name_is_stored_for_the_certificate(alice: CertifiedKey) -> None:
    data = export_pkcs12(
        key=alice.key,
        certificate=alice.certificate,
        chain=[],
        password="pw",
        friendly_name="Alice (S/MIME)",
    )
    loaded = pkcs12.load_pkcs12(data, b"pw")
    assert loaded.cert is not None
    assert loaded.cert.friendly_name == b"Alice (S/MIME)"


def test_the_default_format_is_modern(alice: CertifiedKey) -> None:
    # The modern format's PBES2 OID (1.2.840.113549.1.5.13) is in the DER; 3DES's is not.
    data = export_pkcs12(key=alice.key, certificate=alice.certificate, chain=[], password="pw")
    assert bytes.fromhex("2a864886f70d01050d") in data
    assert bytes.fromhex("2a864886f70d010c0103") not in data


def test_the_compatible_format_uses_sha1_3des(alice: CertifiedKey) -> None:
    data = export_pkcs12(
        key=alice.key,
        certificate=alice.certificate,
        chain=[],
        password="pw",
        fmt=Pkcs12Format.COMPATIBLE,
    )
    assert bytes.fromhex("2a864886f70d010c0103") in data  # pbeWithSHAAnd3-KeyTripleDES-CBC
    assert bytes.fromhex("2a864886f70d01050d") not in data


def test_it_refuses_an_empty_password(alice: CertifiedKey) -> None:
    with pytest.raises(X509Error, match="needs a password"):
        export_pkcs12(key=alice.key, certificate=alice.certificate, chain=[], password="")


def test_it_refuses_a_key_that_is_not_the_certificates(alice: CertifiedKey, issuing_ca: CA) -> None:
    with pytest.raises(X509Error, match="does not belong"):
        export_pkcs12(key=issuing_ca.key, certificate=alice.certificate, chain=[], password="pw")


def test_loading_with_the_wrong_password_says_so(alice: CertifiedKey) -> None:
    data = export_pkcs12(key=alice.key, certificate=alice.certificate, chain=[], password="right")
    with pytest.raises(X509Error, match="password is wrong or the file is damaged"):
        load_pkcs12(data, "wrong")


def test_loading_garbage_says_so() -> None:
    with pytest.raises(X509Error, match="could not be opened"):
        load_pkcs12(b"definitely not PKCS#12", "pw")


def test_loading_a_pkcs12_without_a_key_says_so(alice: CertifiedKey) -> None:
    data = pkcs12.serialize_key_and_certificates(
        None, None, alice.certificate, None, serialization.BestAvailableEncryption(b"pw")
    )
    with pytest.raises(X509Error, match="holds no private key"):
        load_pkcs12(data, "pw")


def test_loading_a_pkcs12_with_only_ca_certificates_says_so(
    alice: CertifiedKey, root_ca: CA
) -> None:
    data = pkcs12.serialize_key_and_certificates(
        None, alice.key, None, [root_ca.certificate], serialization.BestAvailableEncryption(b"pw")
    )
    with pytest.raises(X509Error, match="holds no certificate for its private key"):
        load_pkcs12(data, "pw")


@pytest.mark.parametrize("pem", [False, True])
def test_a_p7b_holds_the_chain(issuing_ca: CA, root_ca: CA, pem: bool) -> None:
    chain = [issuing_ca.certificate, root_ca.certificate]
    data = certificates_to_p7b(chain, pem=pem)
    loaded = (
        pkcs7.load_pem_pkcs7_certificates(data) if pem else pkcs7.load_der_pkcs7_certificates(data)
    )
    # certificates is a DER SET OF (RFC 5652 5.1), so the encoder sorts them.
    assert sorted(c.serial_number for c in loaded) == sorted(c.serial_number for c in chain)
    assert data.startswith(b"-----BEGIN PKCS7-----") if pem else data[:1] == b"\x30"


def test_a_p7b_needs_a_certificate() -> None:
    with pytest.raises(X509Error, match="at least one certificate"):
        certificates_to_p7b([])


def test_pem_from_der_at_hand_is_what_cryptography_writes(
    alice: CertifiedKey, issuing_ca: CA, root_ca: CA
) -> None:
    for certificate in (alice.certificate, issuing_ca.certificate, root_ca.certificate):
        der = certificate.public_bytes(serialization.Encoding.DER)
        assert der_to_pem(der) == certificate.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("length", [1, 47, 48, 49, 95, 96, 97, 1000])
def test_pem_lines_are_64_characters_at_every_length(length: int) -> None:
    # ssl's own PEM writer (textwrap at 64) as the reference, at and around a line's end.
    der = bytes(range(256)) * 4
    assert der_to_pem(der[:length]).decode() == ssl.DER_cert_to_PEM_cert(der[:length])


def test_fingerprints_asked_in_turn_are_each_certificates_own(
    alice: CertifiedKey, issuing_ca: CA, root_ca: CA
) -> None:
    # certificate_der keeps the last certificate's DER: it must never answer for another.
    certificates = [alice.certificate, issuing_ca.certificate, root_ca.certificate]
    for certificate in [*certificates, *reversed(certificates), *certificates]:
        for name, algorithm in (("sha1", hashes.SHA1()), ("sha256", hashes.SHA256())):
            assert fingerprint(certificate, name) == certificate.fingerprint(algorithm).hex()
        assert certificate_der(certificate) == certificate.public_bytes(serialization.Encoding.DER)


def test_pem_and_der_are_the_certificate_encodings(root_ca: CA) -> None:
    certificate = root_ca.certificate
    assert certificate_pem(certificate) == certificate.public_bytes(serialization.Encoding.PEM)
    assert certificate_der(certificate) == certificate.public_bytes(serialization.Encoding.DER)


def test_a_pem_chain_is_the_certificates_concatenated_in_order(issuing_ca: CA, root_ca: CA) -> None:
    chain = certificates_pem([issuing_ca.certificate, root_ca.certificate])
    assert chain == certificate_pem(issuing_ca.certificate) + certificate_pem(root_ca.certificate)
    assert chain.count(b"-----BEGIN CERTIFICATE-----") == 2


@pytest.mark.parametrize(
    ("algorithm", "digest"), [("sha256", hashlib.sha256), ("sha1", hashlib.sha1)]
)
def test_a_fingerprint_is_the_lowercase_hex_digest_of_the_der(
    root_ca: CA, algorithm: str, digest: object
) -> None:
    expected = digest(certificate_der(root_ca.certificate)).hexdigest()  # type: ignore[operator]
    assert fingerprint(root_ca.certificate, algorithm) == expected
    assert fingerprint(root_ca.certificate, algorithm.upper()) == expected


def test_sha256_is_the_default_fingerprint(root_ca: CA) -> None:
    assert len(fingerprint(root_ca.certificate)) == 64


def test_an_unknown_fingerprint_algorithm_is_refused(root_ca: CA) -> None:
    with pytest.raises(ValueError, match="md5"):
        fingerprint(root_ca.certificate, "md5")


def test_a_fingerprint_is_formatted_as_uppercase_pairs() -> None:
    assert format_fingerprint("0a1bff") == "0A:1B:FF"
    assert format_fingerprint("0A:1B:FF") == "0A:1B:FF"
