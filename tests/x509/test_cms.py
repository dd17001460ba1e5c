"""Key archival to key recovery agents and recovery by one of them."""

from __future__ import annotations

import pytest

from cryptography.hazmat.primitives import serialization

from enrollment.x509.cms import archive_private_key, recover_private_key
from enrollment.x509.errors import RecoveryError, X509Error
from enrollment.x509.keys import KeyAlgorithm, PrivateKey
from enrollment.x509.policy import Purpose
from tests.pki import CertifiedKey, KeyPool, MakeEndEntity, subject_for


def clear_der(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def second_kra(make_end_entity: MakeEndEntity, key_pool: KeyPool) -> CertifiedKey:
    return make_end_entity(
        Purpose.ENCRYPTION,
        key=key_pool.get(KeyAlgorithm.RSA_2048, slot=201),
        subject=subject_for("Lee", "Recovery", "kra2@example.com"),
    )


@pytest.mark.parametrize("algorithm", [KeyAlgorithm.RSA_2048, KeyAlgorithm.EC_P256])
def test_an_archived_key_comes_back_unchanged(
    recovery_agent: CertifiedKey, key_pool: KeyPool, algorithm: KeyAlgorithm
) -> None:
    key = key_pool.get(algorithm)
    envelope = archive_private_key(key, [recovery_agent.certificate])
    recovered = recover_private_key(
        envelope, recipient_certificate=recovery_agent.certificate, recipient_key=recovery_agent.key
    )
    assert clear_der(recovered) == clear_der(key)


def test_the_archive_does_not_contain_the_clear_key(
    recovery_agent: CertifiedKey, ec_p256_key: PrivateKey
) -> None:
    envelope = archive_private_key(ec_p256_key, [recovery_agent.certificate])
    assert clear_der(ec_p256_key) not in envelope
    assert envelope[:1] == b"\x30"


def test_each_of_several_agents_can_recover(
    recovery_agent: CertifiedKey, second_kra: CertifiedKey, ec_p256_key: PrivateKey
) -> None:
    envelope = archive_private_key(
        ec_p256_key, [recovery_agent.certificate, second_kra.certificate]
    )
    for agent in (recovery_agent, second_kra):
        recovered = recover_private_key(
            envelope, recipient_certificate=agent.certificate, recipient_key=agent.key
        )
        assert clear_der(recovered) == clear_der(ec_p256_key)


def test_an_agent_who_is_not_a_recipient_cannot_recover(
    recovery_agent: CertifiedKey, second_kra: CertifiedKey, ec_p256_key: PrivateKey
) -> None:
    envelope = archive_private_key(ec_p256_key, [recovery_agent.certificate])
    with pytest.raises(RecoveryError, match="not a recipient"):
        recover_private_key(
            envelope, recipient_certificate=second_kra.certificate, recipient_key=second_kra.key
        )


def test_a_key_that_does_not_belong_to_the_agent_certificate_is_refused(
    recovery_agent: CertifiedKey, second_kra: CertifiedKey, ec_p256_key: PrivateKey
) -> None:
    envelope = archive_private_key(ec_p256_key, [recovery_agent.certificate])
    with pytest.raises(RecoveryError, match="does not belong"):
        recover_private_key(
            envelope, recipient_certificate=recovery_agent.certificate, recipient_key=second_kra.key
        )


def test_an_ec_agent_key_is_refused(recovery_agent: CertifiedKey, ec_p256_key: PrivateKey) -> None:
    envelope = archive_private_key(ec_p256_key, [recovery_agent.certificate])
    with pytest.raises(RecoveryError, match="RSA"):
        recover_private_key(
            envelope, recipient_certificate=recovery_agent.certificate, recipient_key=ec_p256_key
        )


def test_a_damaged_archive_is_reported(recovery_agent: CertifiedKey) -> None:
    with pytest.raises(RecoveryError, match="could not be decrypted"):
        recover_private_key(
            b"\x30\x03\x02\x01\x00",
            recipient_certificate=recovery_agent.certificate,
            recipient_key=recovery_agent.key,
        )


def test_archival_needs_an_agent(ec_p256_key: PrivateKey) -> None:
    with pytest.raises(X509Error, match="at least one key recovery agent"):
        archive_private_key(ec_p256_key, [])


def test_archival_refuses_an_ec_agent_certificate(
    make_end_entity: MakeEndEntity, ec_p256_key: PrivateKey
) -> None:
    ec_agent = make_end_entity(Purpose.ENCRYPTION, KeyAlgorithm.EC_P256)
    with pytest.raises(X509Error, match="non-RSA key"):
        archive_private_key(ec_p256_key, [ec_agent.certificate])


def test_archival_refuses_a_signing_only_agent_certificate(
    make_end_entity: MakeEndEntity, ec_p256_key: PrivateKey
) -> None:
    signer = make_end_entity(Purpose.SIGNING, KeyAlgorithm.RSA_2048)
    with pytest.raises(X509Error, match="does not allow key encipherment"):
        archive_private_key(ec_p256_key, [signer.certificate])
