"""Certificate profiles: root, issuing CA and sponsor-validated S/MIME subscribers."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    CertificatePoliciesOID,
    ExtendedKeyUsageOID,
    NameOID,
    SignatureAlgorithmOID,
)

from enrollment.x509.builder import (
    Subject,
    _subject_alternative_name,
    build_end_entity,
    build_issuing_ca,
    build_root_ca,
    check_organization_identifier,
    normalise_email,
    random_serial,
)
from enrollment.x509.errors import PolicyError, X509Error
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.policy import CertificatePolicy, Generation, Purpose
from enrollment.x509.smime_capabilities import SMIME_CAPABILITIES_OID, smime_capabilities_der
from tests.pki import (
    ACCEPTED_ORGANIZATION_IDENTIFIERS,
    ALICE,
    CA,
    COUNTRY,
    ORGANIZATION,
    ORGANIZATION_IDENTIFIER,
    CertifiedKey,
    KeyPool,
    MakeEndEntity,
    subject_for,
)
from tests.x509.helpers import asserted_bits, ext

CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH


def reserved_policy_oids(certificate: x509.Certificate) -> list[str]:
    policies = ext(certificate, x509.CertificatePolicies).value
    return [
        p.policy_identifier.dotted_string
        for p in policies
        if p.policy_identifier.dotted_string.startswith("2.23.140.1.5.")
    ]


def issue(
    issuing_ca: CA, public_key: object, policy: CertificatePolicy, **overrides: object
) -> x509.Certificate:
    arguments: dict[str, object] = {
        "public_key": public_key,
        "subject": ALICE,
        "issuer_certificate": issuing_ca.certificate,
        "issuer_key": issuing_ca.key,
        "policy": policy,
        "crl_url": issuing_ca.crl_url,
        "ca_issuers_url": issuing_ca.certificate_url,
    }
    arguments.update(overrides)
    return build_end_entity(**arguments)  # type: ignore[arg-type]


# --- serial numbers ----------------------------------------------------------------------


def test_random_serials_are_positive_159_bit_numbers_that_never_repeat() -> None:
    serials = [random_serial() for _ in range(2000)]
    assert all(s.bit_length() == 159 for s in serials)
    assert len(set(serials)) == len(serials)


def test_a_random_serial_encodes_in_exactly_20_octets(make_end_entity: MakeEndEntity) -> None:
    certificate = make_end_entity().certificate
    der = certificate.tbs_certificate_bytes
    serial = certificate.serial_number.to_bytes(20, "big")
    # The tag 0x02 and length 20 precede the serial; a 21-octet encoding would need 0x00.
    assert bytes([0x02, 20]) + serial in der
    assert serial[0] & 0x80 == 0


@settings(max_examples=25, deadline=None)
@given(serial=st.integers(min_value=1, max_value=2**159 - 1))
def test_an_explicit_serial_is_used_as_given(make_end_entity: MakeEndEntity, serial: int) -> None:
    assert make_end_entity(serial=serial).certificate.serial_number == serial


@pytest.mark.parametrize("serial", [0, -5, 2**159])
def test_it_rejects_serials_outside_rfc_5280(make_end_entity: MakeEndEntity, serial: int) -> None:
    with pytest.raises(PolicyError, match="serial number"):
        make_end_entity(serial=serial)


# --- root CA --------------------------------------------------------------------------


def test_the_root_is_self_signed_with_ca_constraints_and_no_path_length(root_ca: CA) -> None:
    certificate = root_ca.certificate
    assert certificate.issuer == certificate.subject
    certificate.verify_directly_issued_by(certificate)
    constraints = ext(certificate, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length is None


def test_the_root_may_only_sign_certificates_and_crls(root_ca: CA) -> None:
    key_usage = ext(root_ca.certificate, x509.KeyUsage)
    assert key_usage.critical
    assert asserted_bits(key_usage.value) == {"key_cert_sign", "crl_sign"}


def test_a_root_that_signs_ocsp_gets_digital_signature(
    ec_p256_key: ec.EllipticCurvePrivateKey,
) -> None:
    root = build_root_ca(
        key=ec_p256_key,
        common_name="OCSP Root",
        organization_name=ORGANIZATION,
        country_name=COUNTRY,
        sign_ocsp=True,
    )
    assert asserted_bits(ext(root, x509.KeyUsage).value) == {
        "digital_signature",
        "key_cert_sign",
        "crl_sign",
    }


def test_the_root_has_no_eku_and_no_policies(root_ca: CA) -> None:
    oids = {e.oid for e in root_ca.certificate.extensions}
    assert x509.ExtendedKeyUsage.oid not in oids
    assert x509.CertificatePolicies.oid not in oids


def test_the_root_identifies_its_key_in_ski_and_aki(root_ca: CA) -> None:
    ski = ext(root_ca.certificate, x509.SubjectKeyIdentifier).value
    aki = ext(root_ca.certificate, x509.AuthorityKeyIdentifier).value
    assert ski.digest == aki.key_identifier
    assert aki.authority_cert_issuer is None


def test_the_root_names_cn_o_and_c(root_ca: CA) -> None:
    assert root_ca.certificate.subject.rfc4514_string() == (
        "CN=pkiportal Test Root CA,O=Example Org,C=GB"
    )


def test_a_p384_root_signs_with_sha384(root_ca: CA) -> None:
    assert root_ca.certificate.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA384


def test_it_rejects_a_root_key_weaker_than_rsa_2048() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(PolicyError, match="at least 2048 bits"):
        build_root_ca(
            key=weak, common_name="Weak Root", organization_name=ORGANIZATION, country_name=COUNTRY
        )


def test_it_rejects_a_country_that_is_not_two_letters(
    ec_p256_key: ec.EllipticCurvePrivateKey,
) -> None:
    with pytest.raises(PolicyError, match="ISO 3166-1"):
        build_root_ca(
            key=ec_p256_key, common_name="Root", organization_name=ORGANIZATION, country_name="GBR"
        )


@pytest.mark.parametrize(
    ("organization_name", "country_name", "message"),
    [
        (ORGANIZATION, "", "must name its country, a two-letter ISO 3166-1 code"),
        (ORGANIZATION, "  ", "must name its country, a two-letter ISO 3166-1 code"),
        ("", COUNTRY, "must name its organisation"),
        (" - ", COUNTRY, "must name its organisation"),
    ],
)
def test_a_ca_without_organisation_or_country_is_refused(
    ec_p256_key: ec.EllipticCurvePrivateKey,
    root_ca: CA,
    organization_name: str,
    country_name: str,
    message: str,
) -> None:
    """S/MIME BR 7.1.4.3.1: root and subordinate CA certificates carry O and C."""
    names = {"organization_name": organization_name, "country_name": country_name}
    with pytest.raises(PolicyError, match=rf"{message} \(S/MIME BR 7\.1\.4\.3\.1\)"):
        build_root_ca(key=ec_p256_key, common_name="Root", **names)
    with pytest.raises(PolicyError, match=message):
        build_issuing_ca(
            public_key=ec_p256_key.public_key(),
            issuer_certificate=root_ca.certificate,
            issuer_key=root_ca.key,
            common_name="Issuing",
            crl_url=root_ca.crl_url,
            ca_issuers_url=root_ca.certificate_url,
            **names,
        )


# --- issuing CA -----------------------------------------------------------------------


def test_the_issuing_ca_is_chained_to_the_root_with_path_length_0(
    root_ca: CA, issuing_ca: CA
) -> None:
    certificate = issuing_ca.certificate
    certificate.verify_directly_issued_by(root_ca.certificate)
    constraints = ext(certificate, x509.BasicConstraints)
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)


def test_an_issuing_ca_that_signs_ocsp_gets_digital_signature(issuing_ca: CA) -> None:
    """S/MIME BR 7.1.2.2 (e): the bit is set when the CA key signs OCSP responses, as the
    portal's issuing CAs do (tests/pki.py builds them as create_pki does)."""
    key_usage = ext(issuing_ca.certificate, x509.KeyUsage)
    assert key_usage.critical
    assert asserted_bits(key_usage.value) == {"digital_signature", "key_cert_sign", "crl_sign"}


def test_an_issuing_ca_that_signs_no_ocsp_may_only_sign_certificates_and_crls(
    root_ca: CA, ec_p256_key: ec.EllipticCurvePrivateKey
) -> None:
    certificate = build_issuing_ca(
        public_key=ec_p256_key.public_key(),
        issuer_certificate=root_ca.certificate,
        issuer_key=root_ca.key,
        common_name="No OCSP Issuing CA",
        organization_name=ORGANIZATION,
        country_name=COUNTRY,
        crl_url=root_ca.crl_url,
        ca_issuers_url=root_ca.certificate_url,
        not_before=root_ca.certificate.not_valid_before_utc,
    )
    assert asserted_bits(ext(certificate, x509.KeyUsage).value) == {"key_cert_sign", "crl_sign"}


def test_the_issuing_ca_is_limited_to_email_protection(issuing_ca: CA) -> None:
    eku = ext(issuing_ca.certificate, x509.ExtendedKeyUsage)
    assert not eku.critical
    assert list(eku.value) == [ExtendedKeyUsageOID.EMAIL_PROTECTION]


def test_the_issuing_ca_asserts_any_policy(issuing_ca: CA) -> None:
    policies = ext(issuing_ca.certificate, x509.CertificatePolicies).value
    assert [p.policy_identifier for p in policies] == [CertificatePoliciesOID.ANY_POLICY]


def test_the_issuing_ca_points_at_the_roots_crl_and_certificate(
    root_ca: CA, issuing_ca: CA
) -> None:
    cdp = ext(issuing_ca.certificate, x509.CRLDistributionPoints).value
    assert [n.value for n in cdp[0].full_name or []] == [root_ca.crl_url]
    aia = ext(issuing_ca.certificate, x509.AuthorityInformationAccess).value
    assert [(d.access_method, d.access_location.value) for d in aia] == [
        (AuthorityInformationAccessOID.CA_ISSUERS, root_ca.certificate_url)
    ]


def test_the_issuing_ca_aki_is_the_root_ski(root_ca: CA, issuing_ca: CA) -> None:
    root_ski = ext(root_ca.certificate, x509.SubjectKeyIdentifier).value.digest
    aki = ext(issuing_ca.certificate, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == root_ski
    assert aki.authority_cert_issuer is None
    assert aki.authority_cert_serial_number is None


def test_an_issuing_ca_can_carry_client_auth_for_multipurpose_templates(
    root_ca: CA, key_pool: KeyPool
) -> None:
    certificate = build_issuing_ca(
        public_key=key_pool.get(KeyAlgorithm.EC_P256, slot=1).public_key(),
        issuer_certificate=root_ca.certificate,
        issuer_key=root_ca.key,
        common_name="Multipurpose Issuing CA",
        organization_name=ORGANIZATION,
        country_name=COUNTRY,
        crl_url=root_ca.crl_url,
        ca_issuers_url=root_ca.certificate_url,
        extra_ekus=frozenset({CLIENT_AUTH}),
    )
    eku = ext(certificate, x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.EMAIL_PROTECTION, CLIENT_AUTH]


def test_it_rejects_server_auth_on_an_smime_issuing_ca(root_ca: CA, key_pool: KeyPool) -> None:
    with pytest.raises(PolicyError, match="serverAuth"):
        build_issuing_ca(
            public_key=key_pool.get(KeyAlgorithm.EC_P256, slot=1).public_key(),
            issuer_certificate=root_ca.certificate,
            issuer_key=root_ca.key,
            common_name="Bad Issuing CA",
            organization_name=ORGANIZATION,
            country_name=COUNTRY,
            crl_url=root_ca.crl_url,
            ca_issuers_url=root_ca.certificate_url,
            extra_ekus=frozenset({ExtendedKeyUsageOID.SERVER_AUTH}),
        )


def test_an_issuing_ca_never_outlives_its_root(root_ca: CA, key_pool: KeyPool) -> None:
    certificate = build_issuing_ca(
        public_key=key_pool.get(KeyAlgorithm.EC_P256, slot=1).public_key(),
        issuer_certificate=root_ca.certificate,
        issuer_key=root_ca.key,
        common_name="Long Issuing CA",
        organization_name=ORGANIZATION,
        country_name=COUNTRY,
        crl_url=root_ca.crl_url,
        ca_issuers_url=root_ca.certificate_url,
        validity_days=20 * 365,
    )
    assert certificate.not_valid_after_utc == root_ca.certificate.not_valid_after_utc


def test_no_ca_can_be_issued_below_an_issuing_ca_with_path_length_0(
    issuing_ca: CA, key_pool: KeyPool
) -> None:
    with pytest.raises(PolicyError, match="path length"):
        build_issuing_ca(
            public_key=key_pool.get(KeyAlgorithm.EC_P256, slot=1).public_key(),
            issuer_certificate=issuing_ca.certificate,
            issuer_key=issuing_ca.key,
            common_name="Too Deep",
            organization_name=ORGANIZATION,
            country_name=COUNTRY,
            crl_url=issuing_ca.crl_url,
            ca_issuers_url=issuing_ca.certificate_url,
        )


def test_a_sub_ca_path_length_must_stay_below_its_issuers(key_pool: KeyPool) -> None:
    root_key = key_pool.get(KeyAlgorithm.EC_P256, slot=4)
    root = build_root_ca(
        key=root_key,
        common_name="Constrained Root",
        organization_name=ORGANIZATION,
        country_name=COUNTRY,
        path_length=1,
    )
    with pytest.raises(PolicyError, match=r"below its issuer's \(1\)"):
        build_issuing_ca(
            public_key=key_pool.get(KeyAlgorithm.EC_P256, slot=1).public_key(),
            issuer_certificate=root,
            issuer_key=root_key,
            common_name="Equal Path Length",
            organization_name=ORGANIZATION,
            country_name=COUNTRY,
            crl_url="http://pki.example.com/pki/root.crl",
            ca_issuers_url="http://pki.example.com/pki/root.crt",
            path_length=1,
        )


def test_it_refuses_an_issuer_key_that_does_not_match_the_issuer_certificate(
    root_ca: CA, issuing_ca: CA, key_pool: KeyPool
) -> None:
    with pytest.raises(X509Error, match="does not belong"):
        build_issuing_ca(
            public_key=key_pool.get(KeyAlgorithm.EC_P256, slot=1).public_key(),
            issuer_certificate=root_ca.certificate,
            issuer_key=issuing_ca.key,
            common_name="Mismatched",
            organization_name=ORGANIZATION,
            country_name=COUNTRY,
            crl_url=root_ca.crl_url,
            ca_issuers_url=root_ca.certificate_url,
        )


def test_an_end_entity_cannot_issue_certificates(
    make_end_entity: MakeEndEntity, key_pool: KeyPool
) -> None:
    leaf = make_end_entity()
    fake_issuer = CA(leaf.certificate, leaf.key, "leaf", "http://pki.example.com")
    with pytest.raises(PolicyError, match="not allowed to sign certificates"):
        make_end_entity(issuer=fake_issuer)


# --- subscriber: key usage, EKU, policies --------------------------------------------------


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
def test_a_subscriber_key_usage_is_critical_and_matches_purpose_and_key(
    make_end_entity: MakeEndEntity, purpose: Purpose, algorithm: KeyAlgorithm, bits: set[str]
) -> None:
    key_usage = ext(make_end_entity(purpose, algorithm).certificate, x509.KeyUsage)
    assert key_usage.critical
    assert asserted_bits(key_usage.value) == bits


def test_a_strict_subscriber_has_email_protection_only(make_end_entity: MakeEndEntity) -> None:
    eku = ext(make_end_entity().certificate, x509.ExtendedKeyUsage)
    assert not eku.critical
    assert list(eku.value) == [ExtendedKeyUsageOID.EMAIL_PROTECTION]


def test_a_multipurpose_subscriber_may_add_client_auth(make_end_entity: MakeEndEntity) -> None:
    certified = make_end_entity(
        generation=Generation.MULTIPURPOSE, extra_ekus=frozenset({CLIENT_AUTH})
    )
    eku = ext(certified.certificate, x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.EMAIL_PROTECTION, CLIENT_AUTH]


@pytest.mark.parametrize(
    ("generation", "oid"),
    [(Generation.STRICT, "2.23.140.1.5.3.3"), (Generation.MULTIPURPOSE, "2.23.140.1.5.3.2")],
)
def test_a_subscriber_carries_exactly_one_reserved_policy_oid(
    make_end_entity: MakeEndEntity, generation: Generation, oid: str
) -> None:
    certificate = make_end_entity(generation=generation).certificate
    assert reserved_policy_oids(certificate) == [oid]
    assert not ext(certificate, x509.CertificatePolicies).critical


def test_the_organisation_policy_oid_is_added_after_the_reserved_one(
    make_end_entity: MakeEndEntity,
) -> None:
    certificate = make_end_entity(organization_policy_oid="1.3.6.1.4.1.99999.1.2").certificate
    policies = ext(certificate, x509.CertificatePolicies).value
    assert [p.policy_identifier.dotted_string for p in policies] == [
        "2.23.140.1.5.3.3",
        "1.3.6.1.4.1.99999.1.2",
    ]
    assert all(p.policy_qualifiers is None for p in policies)


def test_a_subscriber_is_not_a_ca(make_end_entity: MakeEndEntity) -> None:
    constraints = ext(make_end_entity().certificate, x509.BasicConstraints)
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (False, None)


def test_a_subscriber_points_at_its_issuers_crl_and_certificate_over_http(
    make_end_entity: MakeEndEntity, issuing_ca: CA
) -> None:
    certificate = make_end_entity().certificate
    cdp = ext(certificate, x509.CRLDistributionPoints)
    assert not cdp.critical
    assert [n.value for n in cdp.value[0].full_name or []] == [issuing_ca.crl_url]
    aia = ext(certificate, x509.AuthorityInformationAccess)
    assert not aia.critical
    assert [(d.access_method, d.access_location.value) for d in aia.value] == [
        (AuthorityInformationAccessOID.CA_ISSUERS, issuing_ca.certificate_url)
    ]
    assert issuing_ca.crl_url.startswith("http://")


def test_a_subscriber_names_the_ocsp_responder_first_when_there_is_one(
    issuing_ca: CA, key_pool: KeyPool
) -> None:
    """S/MIME BR 7.1.2.3 (c): id-ad-ocsp over plain http, beside caIssuers."""
    policy = CertificatePolicy(purpose=Purpose.SIGNING)
    public_key = key_pool.get(KeyAlgorithm.EC_P256).public_key()
    certificate = issue(issuing_ca, public_key, policy, ocsp_url=issuing_ca.ocsp_url)
    aia = ext(certificate, x509.AuthorityInformationAccess)
    assert not aia.critical
    assert [(d.access_method, d.access_location.value) for d in aia.value] == [
        (AuthorityInformationAccessOID.OCSP, issuing_ca.ocsp_url),
        (AuthorityInformationAccessOID.CA_ISSUERS, issuing_ca.certificate_url),
    ]


@pytest.mark.parametrize("url", ["https://pki.example.com/pki/ocsp/", "ldap://x/ocsp", "ocsp"])
def test_it_rejects_ocsp_urls_that_are_not_plain_http(
    issuing_ca: CA, key_pool: KeyPool, url: str
) -> None:
    policy = CertificatePolicy(purpose=Purpose.SIGNING)
    public_key = key_pool.get(KeyAlgorithm.EC_P256).public_key()
    with pytest.raises(PolicyError, match="OCSP responder URL must be a plain http://"):
        issue(issuing_ca, public_key, policy, ocsp_url=url)


@pytest.mark.parametrize(
    "url", ["https://pki.example.com/x.crl", "ldap://pki.example.com/x", "http:///nohost", "x"]
)
def test_it_rejects_crl_urls_that_are_not_plain_http(
    issuing_ca: CA, key_pool: KeyPool, url: str
) -> None:
    policy = CertificatePolicy(purpose=Purpose.SIGNING)
    with pytest.raises(PolicyError, match="http://"):
        issue(issuing_ca, key_pool.get(KeyAlgorithm.EC_P256).public_key(), policy, crl_url=url)


def test_a_subscriber_has_ski_and_the_issuers_key_id_as_aki(
    make_end_entity: MakeEndEntity, issuing_ca: CA
) -> None:
    certified = make_end_entity()
    ski = ext(certified.certificate, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(certified.key.public_key())
    aki = ext(certified.certificate, x509.AuthorityKeyIdentifier).value
    issuer_ski = ext(issuing_ca.certificate, x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == issuer_ski.digest
    assert aki.authority_cert_issuer is None


@pytest.mark.parametrize("purpose", [Purpose.ENCRYPTION, Purpose.DUAL_USE])
def test_encryption_capable_certificates_list_aes_256_and_aes_128(
    make_end_entity: MakeEndEntity, purpose: Purpose
) -> None:
    capabilities = make_end_entity(purpose).certificate.extensions.get_extension_for_oid(
        SMIME_CAPABILITIES_OID
    )
    assert not capabilities.critical
    assert isinstance(capabilities.value, x509.UnrecognizedExtension)
    assert capabilities.value.value == smime_capabilities_der()


def test_smime_capabilities_are_two_parameterless_aes_cbc_entries() -> None:
    # SEQUENCE { SEQUENCE { aes256-CBC }, SEQUENCE { aes128-CBC } }, RFC 4262 and RFC 3565 3.
    expected = "301a" + "300b060960864801650304012a"
    expected += "300b0609608648016503040102"
    assert smime_capabilities_der().hex() == expected


def test_signing_only_certificates_have_no_smime_capabilities(
    make_end_entity: MakeEndEntity,
) -> None:
    certificate = make_end_entity(Purpose.SIGNING).certificate
    assert SMIME_CAPABILITIES_OID not in {e.oid for e in certificate.extensions}


def test_a_p256_issuing_ca_signs_subscribers_with_ecdsa_sha256(
    make_end_entity: MakeEndEntity,
) -> None:
    certificate = make_end_entity().certificate
    assert certificate.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256


def test_an_rsa_issuing_ca_signs_subscribers_with_sha256_rsa(
    make_end_entity: MakeEndEntity, rsa_issuing_ca: CA
) -> None:
    certificate = make_end_entity(issuer=rsa_issuing_ca).certificate
    assert certificate.signature_algorithm_oid == SignatureAlgorithmOID.RSA_WITH_SHA256
    certificate.verify_directly_issued_by(rsa_issuing_ca.certificate)


# --- subscriber: subject and SAN ------------------------------------------------------------


def test_the_subject_carries_the_sponsor_validated_attributes_in_order(
    make_end_entity: MakeEndEntity,
) -> None:
    subject = make_end_entity().certificate.subject
    assert [(a.oid, a.value) for a in subject] == [
        (NameOID.COUNTRY_NAME, "GB"),
        (NameOID.ORGANIZATION_NAME, "Example Org"),
        (NameOID.ORGANIZATION_IDENTIFIER, ORGANIZATION_IDENTIFIER),
        (NameOID.GIVEN_NAME, "Alice"),
        (NameOID.SURNAME, "Example"),
        (NameOID.COMMON_NAME, "Alice Example"),
    ]


def test_every_address_is_an_rfc822_name_in_the_san(make_end_entity: MakeEndEntity) -> None:
    subject = subject_for("Alice", "Example", "alice@example.com", "a.example@Sales.Example.COM")
    san = ext(make_end_entity(subject=subject).certificate, x509.SubjectAlternativeName)
    assert not san.critical
    assert san.value.get_values_for_type(x509.RFC822Name) == [
        "alice@example.com",
        "a.example@sales.example.com",
    ]
    assert list(san.value) == [
        x509.RFC822Name(a) for a in san.value.get_values_for_type(x509.RFC822Name)
    ]


def test_repeated_addresses_appear_once(make_end_entity: MakeEndEntity) -> None:
    subject = subject_for("Alice", "Example", "alice@example.com", " alice@EXAMPLE.com ")
    san = ext(make_end_entity(subject=subject).certificate, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["alice@example.com"]


def test_the_first_address_goes_in_the_subject_only_on_request(
    make_end_entity: MakeEndEntity,
) -> None:
    subject = subject_for(
        "Alice", "Example", "alice@example.com", "al@example.com", include_email_in_subject=True
    )
    name = make_end_entity(subject=subject).certificate.subject
    assert [a.value for a in name.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)] == [
        "alice@example.com"
    ]
    plain = make_end_entity().certificate.subject
    assert plain.get_attributes_for_oid(NameOID.EMAIL_ADDRESS) == []


def test_it_rejects_a_subscriber_without_an_address(make_end_entity: MakeEndEntity) -> None:
    subject = Subject(
        common_name="Alice Example",
        given_name="Alice",
        organization_name="Example Org",
        organization_identifier=ORGANIZATION_IDENTIFIER,
    )
    with pytest.raises(PolicyError, match="at least one e-mail address"):
        make_end_entity(subject=subject)


@pytest.mark.parametrize(
    "address",
    [
        "alice",
        "alice@",
        "@example.com",
        "alice@localhost",
        "a lice@example.com",
        "al..ice@example.com",
        "alice@-example.com",
    ],
)
def test_it_rejects_malformed_addresses(address: str) -> None:
    with pytest.raises(PolicyError, match="not a valid e-mail address"):
        normalise_email(address)


def test_it_rejects_internationalised_addresses() -> None:
    with pytest.raises(PolicyError, match="not an ASCII e-mail address"):
        normalise_email("jürgen@example.com")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"organization_name": ""}, "name the organisation"),
        ({"organization_identifier": ""}, "organisation identifier"),
        ({"given_name": "", "surname": ""}, "given name or a surname"),
        ({"given_name": "-", "surname": " . "}, "given name or a surname"),
        ({"common_name": "A" * 65}, "longer than 64"),
        ({"common_name": "  "}, "common name is empty"),
        ({"organization_identifier": "12345678"}, "not an organisation identifier"),
        ({"organization_identifier": "NTRGB"}, "lacks its registration number"),
        ({"organization_identifier": "NTRDE-HRB1234"}, "names country DE"),
        ({"country_name": "Great Britain"}, "ISO 3166-1"),
    ],
)
def test_it_rejects_subjects_that_break_the_sponsor_validated_profile(
    make_end_entity: MakeEndEntity, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(PolicyError, match=message):
        make_end_entity(subject=dataclasses.replace(ALICE, **changes))


def test_a_global_lei_identifier_fits_any_country(make_end_entity: MakeEndEntity) -> None:
    subject = dataclasses.replace(ALICE, organization_identifier="LEIXG-5493001KJTIIGC8Y1R12")
    name = make_end_entity(subject=subject).certificate.subject
    assert name.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)[0].value == (
        "LEIXG-5493001KJTIIGC8Y1R12"
    )


@pytest.mark.parametrize("identifier", ACCEPTED_ORGANIZATION_IDENTIFIERS)
def test_it_accepts_the_registration_schemes_of_the_smime_br(identifier: str) -> None:
    check_organization_identifier(identifier)


@pytest.mark.parametrize(
    ("identifier", "message"),
    [
        ("ABCGB-12345678", "registration scheme ABC; the S/MIME BR allow GOV, INT, LEI"),
        ("EVXGB-12345678", "registration scheme EVX"),
        ("LEIGB-5493001KJTIIGC8Y1R12", "must use country XG with scheme LEI"),
        ("INTGB", "must use country XG with scheme INT"),
        ("NTRXG-12345678", "XG is only for LEI and INT"),
        ("GOVXG", "XG is only for LEI and INT"),
        ("VATGB+ENG-123456789", "only the NTR and GOV schemes"),
        ("PSDGB+ENG-123456", "only the NTR and GOV schemes"),
        ("LEIXG+ENG-5493001KJTIIGC8Y1R12", "only the NTR and GOV schemes"),
        ("INTXG+ENG", "only the NTR and GOV schemes"),
        ("GOVGB-12345", "scheme GOV has none"),
        ("INTXG-12345", "scheme INT has none"),
        ("VATGB", "lacks its registration number"),
        ("LEIXG-5493001KJTIIGC8Y1R13", "not a valid LEI"),
        ("LEIXG-12345", "not a valid LEI"),
        ("ntrgb-12345678", "not an organisation identifier"),
    ],
)
def test_it_refuses_other_organisation_identifiers(identifier: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        check_organization_identifier(identifier)


@pytest.mark.parametrize(
    ("identifier", "country"),
    [("NTRGB-12345678", "GB"), ("LEIXG-5493001KJTIIGC8Y1R12", "DE"), ("INTXG", "CH")],
)
def test_the_identifier_country_matches_the_subject_unless_global(
    identifier: str, country: str
) -> None:
    check_organization_identifier(identifier, country)
    if identifier.startswith("NTR"):
        with pytest.raises(PolicyError, match="names country GB but the certificate names DE"):
            check_organization_identifier(identifier, "DE")


@pytest.mark.parametrize("identifier", ["ABCGB-1", "VATGB+ENG-1", "LEIGB-5493001KJTIIGC8Y1R12"])
def test_the_builder_refuses_a_subject_with_a_disallowed_identifier(
    make_end_entity: MakeEndEntity, identifier: str
) -> None:
    with pytest.raises(PolicyError, match="organisation identifier"):
        make_end_entity(subject=dataclasses.replace(ALICE, organization_identifier=identifier))


def test_a_surname_alone_is_enough(make_end_entity: MakeEndEntity) -> None:
    subject = dataclasses.replace(ALICE, given_name="", common_name="Example")
    name = make_end_entity(subject=subject).certificate.subject
    assert name.get_attributes_for_oid(NameOID.GIVEN_NAME) == []
    assert name.get_attributes_for_oid(NameOID.SURNAME)[0].value == "Example"


# --- subscriber: keys ----------------------------------------------------------------------


def test_it_rejects_an_rsa_1024_key(issuing_ca: CA) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    with pytest.raises(PolicyError, match="at least 2048 bits; this key has 1024"):
        issue(issuing_ca, weak, CertificatePolicy(purpose=Purpose.SIGNING))


def test_it_rejects_an_rsa_key_with_exponent_3(issuing_ca: CA) -> None:
    key = rsa.generate_private_key(public_exponent=3, key_size=2048).public_key()
    with pytest.raises(PolicyError, match="exponent 65537"):
        issue(issuing_ca, key, CertificatePolicy(purpose=Purpose.SIGNING))


def test_it_rejects_a_secp256k1_key(issuing_ca: CA) -> None:
    key = ec.generate_private_key(ec.SECP256K1()).public_key()
    with pytest.raises(PolicyError, match="secp256k1"):
        issue(issuing_ca, key, CertificatePolicy(purpose=Purpose.SIGNING))


def test_it_issues_no_p521_certificates_because_no_template_can_allow_them(issuing_ca: CA) -> None:
    key = ec.generate_private_key(ec.SECP521R1()).public_key()
    with pytest.raises(PolicyError, match="the key is EC P-521"):
        issue(issuing_ca, key, CertificatePolicy(purpose=Purpose.SIGNING))


def test_it_rejects_a_key_type_the_template_does_not_allow(
    issuing_ca: CA, key_pool: KeyPool
) -> None:
    policy = CertificatePolicy(
        purpose=Purpose.SIGNING, allowed_key_algorithms=frozenset({KeyAlgorithm.EC_P256})
    )
    with pytest.raises(PolicyError, match="allows EC P-256 keys; the key is RSA 2048"):
        issue(issuing_ca, key_pool.get(KeyAlgorithm.RSA_2048).public_key(), policy)


# --- subscriber: validity -------------------------------------------------------------------


def test_validity_is_the_policys_days_counting_both_ends(make_end_entity: MakeEndEntity) -> None:
    certificate = make_end_entity(validity_days=30).certificate
    span = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert span + timedelta(seconds=1) == timedelta(days=30)


def test_validity_is_cut_at_the_issuers_not_after(
    root_ca: CA, key_pool: KeyPool, make_end_entity: MakeEndEntity
) -> None:
    short_key = key_pool.get(KeyAlgorithm.EC_P256, slot=2)
    short_ca = build_issuing_ca(
        public_key=short_key.public_key(),
        issuer_certificate=root_ca.certificate,
        issuer_key=root_ca.key,
        common_name="Short-lived Issuing CA",
        organization_name=ORGANIZATION,
        country_name=COUNTRY,
        crl_url=root_ca.crl_url,
        ca_issuers_url=root_ca.certificate_url,
        validity_days=10,
    )
    issuer = CA(short_ca, short_key, "short", root_ca.base_url)
    certificate = make_end_entity(issuer=issuer, validity_days=365).certificate
    assert certificate.not_valid_after_utc == short_ca.not_valid_after_utc


def test_it_refuses_to_start_before_the_issuer(
    issuing_ca: CA, make_end_entity: MakeEndEntity
) -> None:
    early = issuing_ca.certificate.not_valid_before_utc - timedelta(days=1)
    with pytest.raises(PolicyError, match="start before its issuing CA"):
        make_end_entity(not_before=early)


def test_it_refuses_to_issue_after_the_issuer_expired(
    issuing_ca: CA, make_end_entity: MakeEndEntity
) -> None:
    late = issuing_ca.certificate.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(PolicyError, match="has expired"):
        make_end_entity(not_before=late)


def test_a_given_not_before_is_kept_to_the_second(make_end_entity: MakeEndEntity) -> None:
    start = datetime.now(UTC).replace(microsecond=123456) + timedelta(hours=1)
    certificate = make_end_entity(not_before=start).certificate
    assert certificate.not_valid_before_utc == start.replace(microsecond=0)


def test_certified_key_matches_certificate(make_end_entity: MakeEndEntity) -> None:
    certified: CertifiedKey = make_end_entity(Purpose.SIGNING, KeyAlgorithm.RSA_2048)
    assert certified.certificate.public_key() == certified.key.public_key()


# --- fixed extensions built once: the same bytes, never another issuer's -------------------


def typed_reference(
    issued: x509.Certificate,
    *,
    issuer: CA,
    public_key: Any,
    policy: CertificatePolicy,
    emails: list[str],
    crl_url: str,
    ocsp_url: str | None,
) -> bytes:
    """The TBS of ``issued`` as the builder made it from typed extension objects, one by
    one, before it kept them encoded (same name, serial and validity)."""
    descriptions = [
        x509.AccessDescription(
            AuthorityInformationAccessOID.CA_ISSUERS,
            x509.UniformResourceIdentifier(issuer.certificate_url),
        )
    ]
    if ocsp_url:
        descriptions.insert(
            0,
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
            ),
        )
    issuer_ski = ext(issuer.certificate, x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(issued.subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(public_key)
        .serial_number(issued.serial_number)
        .not_valid_before(issued.not_valid_before_utc)
        .not_valid_after(issued.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(policy.key_usage_for(public_key), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(policy.extended_key_usages)), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(e) for e in emails]), critical=False
        )
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(o, None) for o in policy.policy_oids]),
            critical=False,
        )
        .add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        [x509.UniformResourceIdentifier(crl_url)], None, None, None
                    )
                ]
            ),
            critical=False,
        )
        .add_extension(x509.AuthorityInformationAccess(descriptions), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
    )
    if policy.allows_encryption:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(SMIME_CAPABILITIES_OID, smime_capabilities_der()),
            critical=False,
        )
    return builder.sign(issuer.key, hashes.SHA256()).tbs_certificate_bytes


@pytest.mark.parametrize("purpose", list(Purpose))
@pytest.mark.parametrize("algorithm", [KeyAlgorithm.EC_P256, KeyAlgorithm.RSA_2048])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"organization_policy_oid": "1.3.6.1.4.1.99999.1.2"},
        {"generation": Generation.MULTIPURPOSE, "extra_ekus": frozenset({CLIENT_AUTH})},
    ],
)
@pytest.mark.parametrize("ocsp", [False, True])
def test_a_subscriber_is_encoded_as_from_typed_extensions(
    issuing_ca: CA,
    key_pool: KeyPool,
    purpose: Purpose,
    algorithm: KeyAlgorithm,
    options: dict[str, Any],
    ocsp: bool,
) -> None:
    policy = CertificatePolicy(purpose=purpose, **options)
    public_key = key_pool.get(algorithm).public_key()
    ocsp_url = issuing_ca.ocsp_url if ocsp else None
    for _ in range(2):  # made, then kept
        issued = issue(issuing_ca, public_key, policy, ocsp_url=ocsp_url)
        assert issued.tbs_certificate_bytes == typed_reference(
            issued,
            issuer=issuing_ca,
            public_key=public_key,
            policy=policy,
            emails=list(ALICE.normalised_emails()),
            crl_url=issuing_ca.crl_url,
            ocsp_url=ocsp_url,
        )


def test_each_issuer_and_url_gets_its_own_pointers_back(
    issuing_ca: CA, rsa_issuing_ca: CA, key_pool: KeyPool
) -> None:
    """The kept extensions are the issuer certificate's and the URLs given: another
    issuing CA (a successor), or the same CA with moved URLs, never gets the last one's."""
    policy = CertificatePolicy(purpose=Purpose.SIGNING)
    public_key = key_pool.get(KeyAlgorithm.EC_P256).public_key()
    reparsed = CA(
        x509.load_der_x509_certificate(issuing_ca.certificate.public_bytes(Encoding.DER)),
        issuing_ca.key,
        issuing_ca.slug,
        "http://moved.example.net",
    )
    # A CA renewed with a new key keeps its slug, so its URLs.
    renewed = CA(
        rsa_issuing_ca.certificate, rsa_issuing_ca.key, issuing_ca.slug, issuing_ca.base_url
    )
    for issuer in [issuing_ca, renewed, reparsed, rsa_issuing_ca] * 2:
        certificate = issue(
            issuer,
            public_key,
            policy,
            crl_url=issuer.crl_url,
            ca_issuers_url=issuer.certificate_url,
            ocsp_url=issuer.ocsp_url,
        )
        aki = ext(certificate, x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ext(issuer.certificate, x509.SubjectKeyIdentifier).value.digest
        cdp = ext(certificate, x509.CRLDistributionPoints).value
        assert [n.value for n in cdp[0].full_name or []] == [issuer.crl_url]
        aia = ext(certificate, x509.AuthorityInformationAccess).value
        assert [d.access_location.value for d in aia] == [issuer.ocsp_url, issuer.certificate_url]
        assert certificate.issuer == issuer.certificate.subject


_LOCAL = st.text(alphabet="abcXYZ019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=64)
_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)
_ADDRESS = st.builds(
    lambda local, labels: f"{local}@{'.'.join(labels)}",
    _LOCAL,
    st.lists(_LABEL, min_size=2, max_size=4),
).filter(lambda a: len(a) <= 255)


@settings(max_examples=200)
@given(st.lists(_ADDRESS, min_size=1, max_size=6))
def test_the_san_encodes_as_cryptographys_own(addresses: list[str]) -> None:
    """The subjectAltName DER the builder writes itself, short and long lengths alike."""
    ours = _subject_alternative_name(addresses)
    typed = x509.SubjectAlternativeName([x509.RFC822Name(a) for a in addresses])
    assert ours.value.public_bytes() == typed.public_bytes()
    assert (ours.oid, ours.critical) == (typed.oid, False)


@pytest.mark.parametrize("lengths", [[20], [127], [128], [255], [255, 255], [100, 100, 60]])
def test_the_san_encodes_lengths_around_the_long_form(lengths: list[int]) -> None:
    addresses = [f"{'a' * (n - 12)}@example.com" for n in lengths]
    typed = x509.SubjectAlternativeName([x509.RFC822Name(a) for a in addresses])
    assert _subject_alternative_name(addresses).value.public_bytes() == typed.public_bytes()


@pytest.mark.parametrize(
    "address", ["zoë@example.com", "a b@example.com", "no-at-sign", "two@@example.com", "@x.y"]
)
def test_the_san_refuses_what_is_not_a_plain_ascii_mailbox(address: str) -> None:
    """normalise_email lets none of these through; the DER writer refuses them too,
    instead of encoding them (or failing with a UnicodeEncodeError)."""
    with pytest.raises(PolicyError):
        _subject_alternative_name(["ok@example.com", address])


def test_a_key_neither_rsa_nor_ec_is_refused_by_the_builder(issuing_ca: CA) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    with pytest.raises(PolicyError):
        build_end_entity(
            public_key=ed25519.Ed25519PrivateKey.generate().public_key(),  # type: ignore[arg-type]
            subject=Subject(common_name="Alice", email_addresses=("alice@example.com",)),
            issuer_certificate=issuing_ca.certificate,
            issuer_key=issuing_ca.key,
            policy=CertificatePolicy(purpose=Purpose.SIGNING),
            crl_url="http://pki.example.com/pki/issuing.crl",
            ca_issuers_url="http://pki.example.com/pki/issuing.crt",
        )
