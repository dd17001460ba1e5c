"""A name-constrained issuing CA (create_pki / create_issuing_ca with mail domains) as real
tools see it: openssl verify enforces the constraint, pkilint finds nothing wrong.

The out-of-domain leaf is signed past both of the portal's refusals (enrolment, and the
builder, which will not sign under a constraint that excludes the address) with the same
CA key, to show that the CA certificate itself makes relying parties reject it.
"""

from __future__ import annotations

import pytest

from cryptography import x509

from enrollment.x509.builder import build_issuing_ca
from enrollment.x509.errors import PolicyError
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.policy import Purpose
from tests.interop.pkilint_runner import lint_chain, lint_pkix, lint_smime, minor, serious
from tests.interop.test_openssl_verify import verify
from tests.interop.test_pkilint import ACCEPTED_MINOR_FINDINGS
from tests.pki import CA, COUNTRY, ORGANIZATION, KeyPool, MakeEndEntity, OpenSSL, subject_for

pytestmark = pytest.mark.interop

MAIL_DOMAINS = ("example.com", ".corp.example.com")


def _issuing(root_ca: CA, key_pool: KeyPool, mail_domains: tuple[str, ...]) -> CA:
    key = key_pool.get(KeyAlgorithm.EC_P256, slot=400)
    certificate = build_issuing_ca(
        public_key=key.public_key(),
        issuer_certificate=root_ca.certificate,
        issuer_key=root_ca.key,
        common_name="pkiportal Test Constrained Issuing CA",
        organization_name=ORGANIZATION,
        country_name=COUNTRY,
        crl_url=root_ca.crl_url,
        ca_issuers_url=root_ca.certificate_url,
        not_before=root_ca.certificate.not_valid_before_utc,
        sign_ocsp=True,
        mail_domains=mail_domains,
    )
    return CA(certificate, key, "test-constrained", root_ca.base_url)


@pytest.fixture(scope="session")
def constrained_ca(root_ca: CA, key_pool: KeyPool) -> CA:
    return _issuing(root_ca, key_pool, MAIL_DOMAINS)


@pytest.fixture(scope="session")
def unconstrained_twin(root_ca: CA, key_pool: KeyPool) -> CA:
    """The same name and key without the constraint. The builder refuses to sign, under
    the constrained certificate, what its constraint excludes; signing under this twin
    gives the leaf a misbehaving CA would make, which chains to the constrained CA alike
    (same issuer name, same key identifier)."""
    return _issuing(root_ca, key_pool, ())


def leaf_for(make_end_entity: MakeEndEntity, issuer: CA, address: str) -> x509.Certificate:
    return make_end_entity(
        Purpose.DUAL_USE, issuer=issuer, subject=subject_for("Alice", "Example", address)
    ).certificate


@pytest.mark.parametrize(
    "address", ["alice@example.com", "alice@EXAMPLE.com", "alice@mail.corp.example.com"]
)
def test_openssl_accepts_a_leaf_within_the_permitted_domains(
    openssl: OpenSSL, make_end_entity: MakeEndEntity, root_ca: CA, constrained_ca: CA, address
) -> None:
    openssl.write_pem("leaf.pem", leaf_for(make_end_entity, constrained_ca, address))

    ok, output = verify(openssl, root_ca, constrained_ca, "leaf.pem", "-purpose", "smimesign")

    assert ok, output


@pytest.mark.parametrize(
    "address",
    [
        "eve@evil.example.org",
        "eve@sub.example.com",  # "example.com" permits that host only
        "eve@corp.example.com",  # ".corp.example.com" permits the hosts below it only
        "eve@example.com.evil.org",
    ],
)
def test_openssl_rejects_a_leaf_outside_them_as_a_subtree_violation(
    openssl: OpenSSL,
    make_end_entity: MakeEndEntity,
    root_ca: CA,
    constrained_ca: CA,
    unconstrained_twin: CA,
    address,
) -> None:
    openssl.write_pem("leaf.pem", leaf_for(make_end_entity, unconstrained_twin, address))

    ok, output = verify(openssl, root_ca, constrained_ca, "leaf.pem", "-purpose", "smimesign")

    assert not ok
    assert "permitted subtree violation" in output


def test_the_same_leaf_verifies_through_the_unconstrained_twin(
    openssl: OpenSSL, make_end_entity: MakeEndEntity, root_ca: CA, unconstrained_twin: CA
) -> None:
    """The refusal above is the constraint's doing, not something else about the leaf."""
    leaf = leaf_for(make_end_entity, unconstrained_twin, "eve@evil.example.org")
    openssl.write_pem("leaf.pem", leaf)

    ok, output = verify(openssl, root_ca, unconstrained_twin, "leaf.pem", "-purpose", "smimesign")

    assert ok, output


def test_the_builder_refuses_to_sign_outside_its_issuers_constraint(
    make_end_entity: MakeEndEntity, constrained_ca: CA
) -> None:
    with pytest.raises(PolicyError, match="name constraints do not permit eve@evil.example.org"):
        leaf_for(make_end_entity, constrained_ca, "eve@evil.example.org")


def test_openssl_shows_the_critical_permitted_subtrees(
    openssl: OpenSSL, constrained_ca: CA
) -> None:
    path = openssl.write_pem("ca.pem", constrained_ca.certificate)

    text = openssl.run("x509", "-in", str(path), "-noout", "-text").stdout.decode()

    assert "X509v3 Name Constraints: critical" in text
    assert "email:example.com" in text
    assert "email:.corp.example.com" in text


def test_pkilint_finds_nothing_wrong_with_the_constrained_ca(
    openssl: OpenSSL, constrained_ca: CA
) -> None:
    findings = lint_pkix(openssl.write_pem("ca.pem", constrained_ca.certificate))

    assert serious(findings) == []
    assert minor(findings) <= ACCEPTED_MINOR_FINDINGS


def test_pkilint_passes_the_chain_and_the_leaf_below_the_constrained_ca(
    openssl: OpenSSL, make_end_entity: MakeEndEntity, root_ca: CA, constrained_ca: CA
) -> None:
    root = openssl.write_pem("root.pem", root_ca.certificate)
    issuing = openssl.write_pem("issuing.pem", constrained_ca.certificate)
    leaf = openssl.write_pem(
        "leaf.pem", leaf_for(make_end_entity, constrained_ca, "alice@example.com")
    )

    for issuer, subject in ((root, issuing), (issuing, leaf)):
        findings = lint_chain(issuer, subject)
        assert serious(findings) == [], (issuer.name, subject.name)
        assert minor(findings) <= ACCEPTED_MINOR_FINDINGS
    smime = lint_smime(leaf, "-o")
    assert serious(smime) == []
    assert minor(smime) <= ACCEPTED_MINOR_FINDINGS
