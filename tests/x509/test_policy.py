"""CertificatePolicy: validity bounds, EKU rules, policy OIDs and the key usage table."""

from __future__ import annotations

import pytest

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from enrollment.x509.errors import PolicyError
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.policy import (
    SPONSOR_VALIDATED_LEGACY,
    SPONSOR_VALIDATED_MULTIPURPOSE,
    SPONSOR_VALIDATED_STRICT,
    CertificatePolicy,
    Generation,
    Purpose,
)
from tests.pki import KeyPool
from tests.x509.helpers import asserted_bits

CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH


def test_the_reserved_sponsor_validated_oids_are_the_cabf_ones() -> None:
    assert SPONSOR_VALIDATED_LEGACY.dotted_string == "2.23.140.1.5.3.1"
    assert SPONSOR_VALIDATED_MULTIPURPOSE.dotted_string == "2.23.140.1.5.3.2"
    assert SPONSOR_VALIDATED_STRICT.dotted_string == "2.23.140.1.5.3.3"


def test_a_policy_defaults_to_strict_for_a_year() -> None:
    policy = CertificatePolicy(purpose=Purpose.SIGNING)
    assert policy.generation is Generation.STRICT
    assert policy.validity_days == 365
    assert policy.allowed_key_algorithms == frozenset(KeyAlgorithm)


@pytest.mark.parametrize("days", [1, 365, 825])
def test_it_accepts_validity_up_to_825_days(days: int) -> None:
    assert CertificatePolicy(purpose=Purpose.SIGNING, validity_days=days).validity_days == days


@pytest.mark.parametrize("days", [0, -1, 826, 3650])
def test_it_rejects_validity_outside_1_to_825_days(days: int) -> None:
    with pytest.raises(PolicyError, match="between 1 and 825 days"):
        CertificatePolicy(purpose=Purpose.SIGNING, validity_days=days)


def test_it_rejects_an_empty_set_of_key_algorithms() -> None:
    with pytest.raises(PolicyError, match="at least one key algorithm"):
        CertificatePolicy(purpose=Purpose.SIGNING, allowed_key_algorithms=frozenset())


@pytest.mark.parametrize(
    ("generation", "oid"),
    [
        (Generation.STRICT, SPONSOR_VALIDATED_STRICT),
        (Generation.MULTIPURPOSE, SPONSOR_VALIDATED_MULTIPURPOSE),
    ],
)
def test_the_policy_oid_follows_the_generation(
    generation: Generation, oid: x509.ObjectIdentifier
) -> None:
    policy = CertificatePolicy(purpose=Purpose.DUAL_USE, generation=generation)
    assert policy.policy_oid == oid
    assert policy.policy_oids == (oid,)


def test_the_organisation_policy_oid_follows_the_reserved_one() -> None:
    policy = CertificatePolicy(purpose=Purpose.SIGNING, organization_policy_oid="1.3.6.1.4.1.99.1")
    assert policy.policy_oids == (
        SPONSOR_VALIDATED_STRICT,
        x509.ObjectIdentifier("1.3.6.1.4.1.99.1"),
    )


@pytest.mark.parametrize("oid", ["2.23.140.1.5.1.3", "2.5.29.32.0", "not-an-oid", "1..2"])
def test_it_rejects_reserved_or_malformed_organisation_policy_oids(oid: str) -> None:
    with pytest.raises(PolicyError, match="policy OID|reserved"):
        CertificatePolicy(purpose=Purpose.SIGNING, organization_policy_oid=oid)


def test_strict_certificates_carry_only_email_protection() -> None:
    policy = CertificatePolicy(purpose=Purpose.DUAL_USE)
    assert policy.extended_key_usages == (ExtendedKeyUsageOID.EMAIL_PROTECTION,)


def test_it_rejects_client_auth_under_strict() -> None:
    with pytest.raises(PolicyError, match="multipurpose"):
        CertificatePolicy(purpose=Purpose.DUAL_USE, extra_ekus=frozenset({CLIENT_AUTH}))


def test_multipurpose_certificates_may_add_client_auth() -> None:
    policy = CertificatePolicy(
        purpose=Purpose.DUAL_USE,
        generation=Generation.MULTIPURPOSE,
        extra_ekus=frozenset({CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION}),
    )
    assert policy.extended_key_usages == (ExtendedKeyUsageOID.EMAIL_PROTECTION, CLIENT_AUTH)


@pytest.mark.parametrize(
    ("eku", "name"),
    [
        (ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
        (ExtendedKeyUsageOID.CODE_SIGNING, "codeSigning"),
        (ExtendedKeyUsageOID.TIME_STAMPING, "timeStamping"),
        (ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE, "anyExtendedKeyUsage"),
        (ExtendedKeyUsageOID.OCSP_SIGNING, "OCSPSigning"),
    ],
)
def test_it_rejects_ekus_the_smime_br_forbid_even_under_multipurpose(
    eku: x509.ObjectIdentifier, name: str
) -> None:
    with pytest.raises(PolicyError, match=name):
        CertificatePolicy(
            purpose=Purpose.SIGNING,
            generation=Generation.MULTIPURPOSE,
            extra_ekus=frozenset({eku}),
        )


@pytest.mark.parametrize(
    ("purpose", "algorithm", "bits"),
    [
        (Purpose.SIGNING, KeyAlgorithm.RSA_2048, {"digital_signature"}),
        (Purpose.ENCRYPTION, KeyAlgorithm.RSA_2048, {"key_encipherment"}),
        (Purpose.DUAL_USE, KeyAlgorithm.RSA_2048, {"digital_signature", "key_encipherment"}),
        (Purpose.SIGNING, KeyAlgorithm.EC_P256, {"digital_signature"}),
        (Purpose.ENCRYPTION, KeyAlgorithm.EC_P256, {"key_agreement"}),
        (Purpose.DUAL_USE, KeyAlgorithm.EC_P256, {"digital_signature", "key_agreement"}),
    ],
)
@pytest.mark.parametrize("generation", list(Generation))
def test_key_usage_follows_purpose_and_key_type(
    key_pool: KeyPool,
    purpose: Purpose,
    algorithm: KeyAlgorithm,
    bits: set[str],
    generation: Generation,
) -> None:
    policy = CertificatePolicy(purpose=purpose, generation=generation)
    assert asserted_bits(policy.key_usage_for(key_pool.get(algorithm).public_key())) == bits


@pytest.mark.parametrize(
    ("purpose", "signs", "encrypts"),
    [
        (Purpose.SIGNING, True, False),
        (Purpose.ENCRYPTION, False, True),
        (Purpose.DUAL_USE, True, True),
    ],
)
def test_purpose_says_whether_it_signs_and_encrypts(
    purpose: Purpose, signs: bool, encrypts: bool
) -> None:
    policy = CertificatePolicy(purpose=purpose)
    assert (policy.allows_signing, policy.allows_encryption) == (signs, encrypts)


def test_it_allows_only_the_listed_key_algorithms(key_pool: KeyPool) -> None:
    policy = CertificatePolicy(
        purpose=Purpose.SIGNING, allowed_key_algorithms=frozenset({KeyAlgorithm.EC_P256})
    )
    assert policy.allows_key(key_pool.get(KeyAlgorithm.EC_P256).public_key())
    assert not policy.allows_key(key_pool.get(KeyAlgorithm.RSA_2048).public_key())
