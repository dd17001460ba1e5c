"""Key generation, description, hashing choice and PEM (de)serialisation."""

from __future__ import annotations

import pytest

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from enrollment.x509.errors import X509Error
from enrollment.x509.keys import (
    KeyAlgorithm,
    describe_public_key,
    encrypt_private_key_pem,
    generate_private_key,
    key_algorithm_of,
    load_private_key_pem,
    public_key_problem,
    signature_hash_for,
)
from tests.pki import KeyPool


@pytest.fixture(scope="module")
def p521_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP521R1())


@pytest.fixture(scope="module")
def rsa_exponent_3_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=3, key_size=2048)


@pytest.mark.parametrize(
    ("algorithm", "label"),
    [
        (KeyAlgorithm.RSA_2048, "RSA 2048"),
        (KeyAlgorithm.RSA_3072, "RSA 3072"),
        (KeyAlgorithm.RSA_4096, "RSA 4096"),
        (KeyAlgorithm.EC_P256, "EC P-256"),
        (KeyAlgorithm.EC_P384, "EC P-384"),
    ],
)
def test_every_algorithm_has_a_human_label(algorithm: KeyAlgorithm, label: str) -> None:
    assert algorithm.label == label


def test_algorithm_values_are_the_stored_strings() -> None:
    assert [a.value for a in KeyAlgorithm] == [
        "rsa-2048",
        "rsa-3072",
        "rsa-4096",
        "ec-p256",
        "ec-p384",
    ]
    assert KeyAlgorithm("ec-p384") is KeyAlgorithm.EC_P384


def test_it_generates_rsa_2048_with_exponent_65537() -> None:
    key = generate_private_key(KeyAlgorithm.RSA_2048)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048
    assert key.public_key().public_numbers().e == 65537


@pytest.mark.parametrize(
    ("algorithm", "curve"),
    [(KeyAlgorithm.EC_P256, ec.SECP256R1), (KeyAlgorithm.EC_P384, ec.SECP384R1)],
)
def test_it_generates_ec_keys_on_the_named_curve(
    algorithm: KeyAlgorithm, curve: type[ec.EllipticCurve]
) -> None:
    key = generate_private_key(algorithm)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, curve)


@pytest.mark.parametrize("algorithm", [KeyAlgorithm.RSA_2048, KeyAlgorithm.EC_P256])
def test_key_algorithm_of_recognises_generated_keys(
    key_pool: KeyPool, algorithm: KeyAlgorithm
) -> None:
    key = key_pool.get(algorithm)
    assert key_algorithm_of(key.public_key()) is algorithm
    assert key_algorithm_of(key) is algorithm


def test_key_algorithm_of_is_none_for_keys_we_do_not_generate(
    p521_key: ec.EllipticCurvePrivateKey, rsa_exponent_3_key: rsa.RSAPrivateKey
) -> None:
    assert key_algorithm_of(p521_key.public_key()) is None
    assert key_algorithm_of(rsa_exponent_3_key.public_key()) is None
    assert key_algorithm_of(ed25519.Ed25519PrivateKey.generate().public_key()) is None


def test_it_describes_keys_for_people(
    key_pool: KeyPool, p521_key: ec.EllipticCurvePrivateKey
) -> None:
    assert describe_public_key(key_pool.get(KeyAlgorithm.RSA_2048).public_key()) == "RSA 2048"
    assert describe_public_key(key_pool.get(KeyAlgorithm.EC_P384).public_key()) == "EC P-384"
    assert describe_public_key(p521_key.public_key()) == "EC P-521"
    secp256k1 = ec.generate_private_key(ec.SECP256K1()).public_key()
    assert describe_public_key(secp256k1) == "EC secp256k1"
    assert describe_public_key(ed25519.Ed25519PrivateKey.generate().public_key()) == "Ed25519"


def test_it_accepts_p521_but_names_the_problem_with_other_curves(
    p521_key: ec.EllipticCurvePrivateKey,
) -> None:
    assert public_key_problem(p521_key.public_key()) is None
    problem = public_key_problem(ec.generate_private_key(ec.SECP224R1()).public_key())
    assert problem is not None
    assert "secp224r1" in problem


def test_it_names_the_exponent_of_an_rsa_key_with_exponent_3(
    rsa_exponent_3_key: rsa.RSAPrivateKey,
) -> None:
    problem = public_key_problem(rsa_exponent_3_key.public_key())
    assert problem is not None
    assert "65537" in problem
    assert "uses 3" in problem


@pytest.mark.parametrize(
    ("curve", "hash_type"),
    [(ec.SECP256R1, hashes.SHA256), (ec.SECP384R1, hashes.SHA384), (ec.SECP521R1, hashes.SHA512)],
)
def test_ec_keys_sign_with_the_hash_matching_their_curve(
    curve: type[ec.EllipticCurve], hash_type: type[hashes.HashAlgorithm]
) -> None:
    key = ec.generate_private_key(curve())
    assert isinstance(signature_hash_for(key), hash_type)
    assert isinstance(signature_hash_for(key.public_key()), hash_type)


def test_rsa_keys_sign_with_sha256(rsa_2048_key: rsa.RSAPrivateKey) -> None:
    assert isinstance(signature_hash_for(rsa_2048_key), hashes.SHA256)


@pytest.mark.parametrize("algorithm", [KeyAlgorithm.RSA_2048, KeyAlgorithm.EC_P256])
def test_an_encrypted_pem_key_round_trips(key_pool: KeyPool, algorithm: KeyAlgorithm) -> None:
    key = key_pool.get(algorithm)
    pem = encrypt_private_key_pem(key, b"correct horse")
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    loaded = load_private_key_pem(pem, b"correct horse")
    assert loaded.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ) == key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_it_refuses_to_encrypt_with_an_empty_passphrase(
    ec_p256_key: ec.EllipticCurvePrivateKey,
) -> None:
    with pytest.raises(X509Error, match="passphrase is required"):
        encrypt_private_key_pem(ec_p256_key, b"")


def test_it_reports_a_wrong_passphrase(ec_p256_key: ec.EllipticCurvePrivateKey) -> None:
    pem = encrypt_private_key_pem(ec_p256_key, b"right")
    with pytest.raises(X509Error, match="wrong passphrase"):
        load_private_key_pem(pem, b"wrong")


def test_it_asks_for_a_passphrase_for_an_encrypted_key(
    ec_p256_key: ec.EllipticCurvePrivateKey,
) -> None:
    pem = encrypt_private_key_pem(ec_p256_key, b"right")
    with pytest.raises(X509Error, match="passphrase is required"):
        load_private_key_pem(pem, None)


def test_it_says_when_a_passphrase_is_given_for_a_clear_key(
    ec_p256_key: ec.EllipticCurvePrivateKey,
) -> None:
    pem = ec_p256_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(X509Error, match="not encrypted"):
        load_private_key_pem(pem, b"surplus")


def test_it_rejects_garbage_as_a_private_key() -> None:
    with pytest.raises(X509Error, match="not a readable PEM private key"):
        load_private_key_pem(
            b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n", None
        )


def test_it_rejects_an_ed25519_private_key() -> None:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(X509Error, match="Ed25519 private keys are not supported"):
        load_private_key_pem(pem, None)
