"""openssl verify (OpenSSL 3.0) accepts our chains for the S/MIME purposes it knows.

OpenSSL's smimeencrypt purpose demands keyEncipherment, so it never accepts an EC
certificate, whose encryption key usage is keyAgreement (S/MIME BR 7.1.2.3 (e)); EC
encryption is proven by `openssl cms` in test_openssl_cms.py instead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cryptography.x509.oid import ExtendedKeyUsageOID

from enrollment.x509.builder import build_issuing_ca
from enrollment.x509.crl import RevocationReason, RevokedEntry, build_crl
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.policy import Generation, Purpose
from tests.pki import CA, COUNTRY, ORGANIZATION, KeyPool, MakeEndEntity, OpenSSL

pytestmark = pytest.mark.interop

KEY_TYPES = [
    KeyAlgorithm.RSA_2048,
    KeyAlgorithm.RSA_3072,
    KeyAlgorithm.EC_P256,
    KeyAlgorithm.EC_P384,
]


def verify(
    openssl: OpenSSL, root: CA, issuing: CA, leaf_name: str, *options: str
) -> tuple[bool, str]:
    openssl.write_pem("root.pem", root.certificate)
    openssl.write_pem("issuing.pem", issuing.certificate)
    result = openssl.run(
        "verify",
        "-x509_strict",
        *options,
        "-CAfile",
        "root.pem",
        "-untrusted",
        "issuing.pem",
        leaf_name,
        check=False,
    )
    output = (result.stdout + result.stderr).decode()
    return result.returncode == 0 and f"{leaf_name}: OK" in output, output


@pytest.mark.parametrize("purpose", list(Purpose))
@pytest.mark.parametrize("algorithm", KEY_TYPES)
def test_openssl_verifies_the_chain_and_the_smime_purposes_the_key_usage_allows(
    openssl: OpenSSL,
    make_end_entity: MakeEndEntity,
    root_ca: CA,
    issuing_ca: CA,
    purpose: Purpose,
    algorithm: KeyAlgorithm,
) -> None:
    leaf = make_end_entity(purpose, algorithm)
    openssl.write_pem("leaf.pem", leaf.certificate)

    chain_ok, output = verify(openssl, root_ca, issuing_ca, "leaf.pem")
    assert chain_ok, output

    signs_ok, output = verify(openssl, root_ca, issuing_ca, "leaf.pem", "-purpose", "smimesign")
    assert signs_ok == purpose.signs, output
    if not purpose.signs:
        assert "unsuitable certificate purpose" in output

    encrypts_ok, output = verify(
        openssl, root_ca, issuing_ca, "leaf.pem", "-purpose", "smimeencrypt"
    )
    assert encrypts_ok == (purpose.encrypts and algorithm.is_rsa), output


@pytest.mark.parametrize("generation", list(Generation))
def test_openssl_accepts_both_generations_for_signing(
    openssl: OpenSSL,
    make_end_entity: MakeEndEntity,
    root_ca: CA,
    issuing_ca: CA,
    generation: Generation,
) -> None:
    openssl.write_pem("leaf.pem", make_end_entity(generation=generation).certificate)
    ok, output = verify(openssl, root_ca, issuing_ca, "leaf.pem", "-purpose", "smimesign")
    assert ok, output


def test_an_rsa_issuing_ca_chain_verifies(
    openssl: OpenSSL, make_end_entity: MakeEndEntity, root_ca: CA, rsa_issuing_ca: CA
) -> None:
    leaf = make_end_entity(Purpose.DUAL_USE, KeyAlgorithm.RSA_2048, issuer=rsa_issuing_ca)
    openssl.write_pem("leaf.pem", leaf.certificate)
    for purpose in ("smimesign", "smimeencrypt"):
        ok, output = verify(openssl, root_ca, rsa_issuing_ca, "leaf.pem", "-purpose", purpose)
        assert ok, output


def test_client_auth_needs_the_issuing_ca_to_allow_it_too(
    openssl: OpenSSL,
    make_end_entity: MakeEndEntity,
    root_ca: CA,
    issuing_ca: CA,
    key_pool: KeyPool,
) -> None:
    """OpenSSL (like Windows) applies a CA's EKU to the chain: clientAuth must be in both."""
    client_auth = frozenset({ExtendedKeyUsageOID.CLIENT_AUTH})
    ca_key = key_pool.get(KeyAlgorithm.EC_P256, slot=3)
    multipurpose_ca = CA(
        build_issuing_ca(
            public_key=ca_key.public_key(),
            issuer_certificate=root_ca.certificate,
            issuer_key=root_ca.key,
            common_name="pkiportal Test Multipurpose CA",
            organization_name=ORGANIZATION,
            country_name=COUNTRY,
            crl_url=root_ca.crl_url,
            ca_issuers_url=root_ca.certificate_url,
            extra_ekus=client_auth,
        ),
        ca_key,
        "test-multipurpose",
        root_ca.base_url,
    )
    for issuer, expected in ((multipurpose_ca, True), (issuing_ca, False)):
        leaf = make_end_entity(
            generation=Generation.MULTIPURPOSE, extra_ekus=client_auth, issuer=issuer
        )
        openssl.write_pem("leaf.pem", leaf.certificate)
        ok, output = verify(openssl, root_ca, issuer, "leaf.pem", "-purpose", "sslclient")
        assert ok == expected, output


def test_crl_checking_rejects_a_revoked_certificate_and_passes_the_others(
    openssl: OpenSSL, make_end_entity: MakeEndEntity, root_ca: CA, issuing_ca: CA
) -> None:
    revoked = make_end_entity(Purpose.SIGNING, KeyAlgorithm.EC_P256)
    kept = make_end_entity(Purpose.SIGNING, KeyAlgorithm.EC_P256)
    now = datetime.now(UTC).replace(microsecond=0)
    issuing_crl = build_crl(
        issuer_certificate=issuing_ca.certificate,
        issuer_key=issuing_ca.key,
        entries=[
            RevokedEntry(revoked.certificate.serial_number, now, RevocationReason.KEY_COMPROMISE)
        ],
        crl_number=2,
        this_update=now,
        next_update=now + timedelta(days=7),
    )
    root_crl = build_crl(
        issuer_certificate=root_ca.certificate,
        issuer_key=root_ca.key,
        entries=[],
        crl_number=1,
        this_update=now,
        next_update=now + timedelta(days=365),
        revokes_ca_certificates=True,
    )
    openssl.write_crl("issuing.crl", issuing_crl)
    openssl.write_crl("root.crl", root_crl)
    openssl.write_pem("revoked.pem", revoked.certificate)
    openssl.write_pem("kept.pem", kept.certificate)
    crl_options = ("-crl_check_all", "-CRLfile", "root.crl", "-CRLfile", "issuing.crl")

    ok, output = verify(openssl, root_ca, issuing_ca, "kept.pem", *crl_options)
    assert ok, output
    ok, output = verify(openssl, root_ca, issuing_ca, "revoked.pem", *crl_options)
    assert not ok
    assert "certificate revoked" in output


def test_crl_checking_fails_without_the_roots_crl(
    openssl: OpenSSL, make_end_entity: MakeEndEntity, root_ca: CA, issuing_ca: CA
) -> None:
    """-crl_check_all also checks the issuing CA against the root's CRL, so both must exist."""
    now = datetime.now(UTC).replace(microsecond=0)
    issuing_crl = build_crl(
        issuer_certificate=issuing_ca.certificate,
        issuer_key=issuing_ca.key,
        entries=[],
        crl_number=3,
        this_update=now,
        next_update=now + timedelta(days=7),
    )
    openssl.write_crl("issuing.crl", issuing_crl)
    openssl.write_pem("leaf.pem", make_end_entity().certificate)
    ok, output = verify(
        openssl, root_ca, issuing_ca, "leaf.pem", "-crl_check_all", "-CRLfile", "issuing.crl"
    )
    assert not ok
    assert "unable to get certificate CRL" in output
