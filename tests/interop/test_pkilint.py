"""pkilint 0.13.3 (S/MIME BR v1.0.11 rules) on our certificates and CRLs.

No ERROR or FATAL finding is allowed. WARNING and NOTICE findings are pinned to an
explicit list, so a new one fails here and gets a decision instead of going unseen.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from enrollment.x509 import builder
from enrollment.x509.builder import random_serial
from enrollment.x509.crl import (
    MAX_CA_CRL_VALIDITY,
    MAX_SUBSCRIBER_CRL_VALIDITY,
    RevocationReason,
    RevokedEntry,
    build_crl,
)
from enrollment.x509.errors import PolicyError
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.policy import Generation, Purpose
from tests.interop.pkilint_runner import (
    lint_chain,
    lint_crl_file,
    lint_pkix,
    lint_smime,
    minor,
    serious,
)
from tests.pki import (
    ACCEPTED_ORGANIZATION_IDENTIFIERS,
    ALICE,
    CA,
    Hierarchy,
    MakeEndEntity,
    OpenSSL,
)

pytestmark = pytest.mark.interop

# WARNING/NOTICE findings we accept, with the reason; empty means none are expected.
ACCEPTED_MINOR_FINDINGS: set[tuple[str, str]] = set()


@pytest.mark.parametrize("generation", list(Generation))
@pytest.mark.parametrize("purpose", list(Purpose))
@pytest.mark.parametrize("algorithm", [KeyAlgorithm.RSA_2048, KeyAlgorithm.EC_P256])
def test_subscriber_certificates_pass_the_smime_linter(
    openssl: OpenSSL,
    make_end_entity: MakeEndEntity,
    generation: Generation,
    purpose: Purpose,
    algorithm: KeyAlgorithm,
) -> None:
    path = openssl.write_pem(
        "leaf.pem", make_end_entity(purpose, algorithm, generation).certificate
    )
    findings = lint_smime(path, "-o")
    assert serious(findings) == []
    assert minor(findings) <= ACCEPTED_MINOR_FINDINGS


def test_a_multipurpose_certificate_with_client_auth_and_an_org_policy_passes(
    openssl: OpenSSL, make_end_entity: MakeEndEntity
) -> None:
    certificate = make_end_entity(
        generation=Generation.MULTIPURPOSE,
        extra_ekus=frozenset({ExtendedKeyUsageOID.CLIENT_AUTH}),
        organization_policy_oid="1.3.6.1.4.1.99999.1.1",
    ).certificate
    findings = lint_smime(openssl.write_pem("leaf.pem", certificate))
    assert serious(findings) == []
    assert minor(findings) <= ACCEPTED_MINOR_FINDINGS


def test_an_email_address_in_the_subject_passes(
    openssl: OpenSSL, make_end_entity: MakeEndEntity
) -> None:
    subject = dataclasses.replace(ALICE, include_email_in_subject=True)
    findings = lint_smime(
        openssl.write_pem("leaf.pem", make_end_entity(subject=subject).certificate)
    )
    assert serious(findings) == []
    assert minor(findings) <= ACCEPTED_MINOR_FINDINGS


@pytest.mark.parametrize("identifier", ACCEPTED_ORGANIZATION_IDENTIFIERS)
def test_every_organisation_identifier_the_builder_accepts_passes(
    openssl: OpenSSL, make_end_entity: MakeEndEntity, identifier: str
) -> None:
    """S/MIME BR 7.1.4.2.2 (d): each scheme, country and subdivision form we let through."""
    country = identifier[3:5] if identifier[3:5] != "XG" else "GB"
    subject = dataclasses.replace(ALICE, organization_identifier=identifier, country_name=country)
    findings = lint_smime(
        openssl.write_pem("leaf.pem", make_end_entity(subject=subject).certificate)
    )
    assert serious(findings) == []
    assert minor(findings) <= ACCEPTED_MINOR_FINDINGS


@pytest.mark.parametrize(
    ("identifier", "code"),
    [
        ("ABCGB-12345678", "cabf.invalid_organization_identifier_registration_scheme"),
        ("LEIGB-5493001KJTIIGC8Y1R12", "cabf.invalid_organization_identifier_country"),
        ("INTGB", "cabf.invalid_organization_identifier_country"),
        ("NTRXG-12345678", "cabf.invalid_organization_identifier_country"),
        (
            "VATGB+ENG-123456789",
            "cabf.invalid_subject_organization_identifier_state_province_for_scheme",
        ),
        (
            "GOVGB-12345",
            "cabf.smime.prohibited_organization_identifier_reference_present_for_scheme",
        ),
        ("LEIXG-5493001KJTIIGC8Y1R13", "iso.lei.invalid_lei_checksum"),
    ],
)
def test_pkilint_flags_each_organisation_identifier_the_builder_refuses(
    openssl: OpenSSL,
    make_end_entity: MakeEndEntity,
    monkeypatch: pytest.MonkeyPatch,
    identifier: str,
    code: str,
) -> None:
    """The refusals are not ours alone: with the check bypassed, pkilint finds an error."""
    subject = dataclasses.replace(ALICE, organization_identifier=identifier)
    with pytest.raises(PolicyError):
        make_end_entity(subject=subject)
    monkeypatch.setattr(builder, "_check_organization_identifier", lambda value, country: None)
    findings = lint_smime(
        openssl.write_pem("leaf.pem", make_end_entity(subject=subject).certificate)
    )
    assert code in {f.code for f in findings if f.severity in {"ERROR", "FATAL"}}, findings


def test_a_certificate_from_the_rsa_issuing_ca_passes(
    openssl: OpenSSL, make_end_entity: MakeEndEntity, rsa_issuing_ca: CA
) -> None:
    certificate = make_end_entity(
        Purpose.DUAL_USE, KeyAlgorithm.RSA_2048, issuer=rsa_issuing_ca
    ).certificate
    findings = lint_smime(openssl.write_pem("leaf.pem", certificate))
    assert serious(findings) == []
    assert minor(findings) <= ACCEPTED_MINOR_FINDINGS


def test_the_longest_allowed_validity_only_draws_the_at_maximum_warning(
    openssl: OpenSSL, make_end_entity: MakeEndEntity
) -> None:
    certificate = make_end_entity(validity_days=825).certificate
    findings = lint_smime(openssl.write_pem("leaf.pem", certificate))
    assert serious(findings) == []
    assert minor(findings) == {("WARNING", "cabf.smime.certificate_validity_period_at_maximum")}


def test_loopback_urls_are_only_flagged_as_internal_names(
    openssl: OpenSSL, loopback_hierarchy: Hierarchy, make_end_entity: MakeEndEntity
) -> None:
    certificate = make_end_entity(issuer=loopback_hierarchy.issuing).certificate
    findings = lint_smime(openssl.write_pem("leaf.pem", certificate))
    errors = [f for f in findings if f.severity in {"ERROR", "FATAL"}]
    assert {f.code for f in errors} == {"cabf.internal_domain_name"}
    assert {f.message for f in errors} == {'Internal domain name: "127.0.0.1"'}
    assert len(errors) == 2  # the CRL distribution point and the caIssuers URL


def test_the_installed_console_script_gives_the_same_verdict(
    openssl: OpenSSL, make_end_entity: MakeEndEntity
) -> None:
    path = openssl.write_pem("leaf.pem", make_end_entity().certificate)
    script = Path(sys.executable).with_name("lint_cabf_smime_cert")
    result = subprocess.run(
        [script, "lint", "-d", "-o", "-s", "NOTICE", path],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""
    assert result.stderr.strip() == "SPONSORED-STRICT"


@pytest.mark.parametrize("ca_name", ["root", "issuing", "rsa_issuing"])
def test_ca_certificates_pass_the_rfc_5280_linter(
    openssl: OpenSSL, root_ca: CA, issuing_ca: CA, rsa_issuing_ca: CA, ca_name: str
) -> None:
    """pkilint 0.13.3 has no S/MIME CA profile, so CAs get its RFC 5280 linter."""
    ca = {"root": root_ca, "issuing": issuing_ca, "rsa_issuing": rsa_issuing_ca}[ca_name]
    findings = lint_pkix(openssl.write_pem("ca.pem", ca.certificate))
    assert serious(findings) == []
    assert minor(findings) <= ACCEPTED_MINOR_FINDINGS


def test_each_link_of_the_chain_passes_the_issuer_subject_linter(
    openssl: OpenSSL, root_ca: CA, issuing_ca: CA, make_end_entity: MakeEndEntity
) -> None:
    root = openssl.write_pem("root.pem", root_ca.certificate)
    issuing = openssl.write_pem("issuing.pem", issuing_ca.certificate)
    leaf = openssl.write_pem("leaf.pem", make_end_entity().certificate)
    for issuer, subject in ((root, root), (root, issuing), (issuing, leaf)):
        findings = lint_chain(issuer, subject)
        assert serious(findings) == [], (issuer.name, subject.name)
        assert minor(findings) <= ACCEPTED_MINOR_FINDINGS


def _issuing_crl(
    issuing_ca: CA, reasons: list[RevocationReason | None]
) -> x509.CertificateRevocationList:
    now = datetime.now(UTC).replace(microsecond=0)
    entries = [
        RevokedEntry(
            random_serial(),
            now - timedelta(hours=index + 1),
            reason,
            invalidity_date=now - timedelta(days=2)
            if reason is RevocationReason.KEY_COMPROMISE
            else None,
        )
        for index, reason in enumerate(reasons)
    ]
    return build_crl(
        issuer_certificate=issuing_ca.certificate,
        issuer_key=issuing_ca.key,
        entries=entries,
        crl_number=17,
        this_update=now,
        next_update=now + timedelta(days=7),
    )


def test_the_issuing_crl_with_every_strict_reason_passes_the_rfc_5280_profile(
    openssl: OpenSSL, issuing_ca: CA
) -> None:
    reasons = [r for r in RevocationReason if r is not RevocationReason.CERTIFICATE_HOLD]
    crl = _issuing_crl(issuing_ca, [*reasons, None])
    findings = lint_crl_file(openssl.write_crl("issuing.crl", crl))
    assert serious(findings) == []
    assert minor(findings) <= ACCEPTED_MINOR_FINDINGS


def test_the_issuing_crl_passes_the_cabf_profile_for_subscriber_reasons(
    openssl: OpenSSL, issuing_ca: CA
) -> None:
    """pkilint's BR profile is the TLS one; the reasons a subscriber picks all pass it."""
    reasons: list[RevocationReason | None] = [
        RevocationReason.KEY_COMPROMISE,
        RevocationReason.AFFILIATION_CHANGED,
        RevocationReason.SUPERSEDED,
        RevocationReason.CESSATION_OF_OPERATION,
        RevocationReason.PRIVILEGE_WITHDRAWN,
        None,
    ]
    crl = _issuing_crl(issuing_ca, reasons)
    findings = lint_crl_file(openssl.write_crl("issuing.crl", crl), profile="BR")
    assert serious(findings) == []
    assert minor(findings) <= ACCEPTED_MINOR_FINDINGS


def test_the_tls_flavoured_cabf_crl_profile_flags_ca_and_aa_compromise(
    openssl: OpenSSL, issuing_ca: CA
) -> None:
    """Recorded, not endorsed: the S/MIME BR (7.2.2) do not restrict these reasons."""
    crl = _issuing_crl(issuing_ca, [RevocationReason.CA_COMPROMISE, RevocationReason.AA_COMPROMISE])
    findings = lint_crl_file(openssl.write_crl("issuing.crl", crl), profile="BR")
    assert {(f.code, f.message) for f in findings if f.severity == "ERROR"} == {
        ("cabf.crl_prohibited_reason_code", 'Prohibited reason code "cACompromise"'),
        ("cabf.crl_prohibited_reason_code", 'Prohibited reason code "aACompromise"'),
    }


@pytest.mark.parametrize("profile", ["PKIX", "BR"])
def test_the_root_crl_passes_as_an_authority_revocation_list(
    openssl: OpenSSL, root_ca: CA, issuing_ca: CA, profile: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    crl = build_crl(
        issuer_certificate=root_ca.certificate,
        issuer_key=root_ca.key,
        entries=[
            RevokedEntry(
                random_serial(), now - timedelta(days=1), RevocationReason.CESSATION_OF_OPERATION
            )
        ],
        crl_number=3,
        this_update=now,
        next_update=now + timedelta(days=365),
        revokes_ca_certificates=True,
    )
    findings = lint_crl_file(openssl.write_crl("root.crl", crl), kind="ARL", profile=profile)
    assert serious(findings) == []
    assert minor(findings) <= ACCEPTED_MINOR_FINDINGS


@pytest.mark.parametrize(
    ("which", "kind", "limit", "code"),
    [
        ("issuing", "CRL", MAX_SUBSCRIBER_CRL_VALIDITY, "cabf.crl_invalid_validity_period"),
        ("root", "ARL", MAX_CA_CRL_VALIDITY, "cabf.arl_invalid_validity_period"),
    ],
)
def test_the_crl_intervals_the_portal_enforces_are_pkilints(
    openssl: OpenSSL, pki: Hierarchy, which: str, kind: str, limit: timedelta, code: str
) -> None:
    """S/MIME BR 4.9.7: crl_import and crl_publish refuse what pkilint's BR profile flags."""
    ca = getattr(pki, which)
    now = datetime.now(UTC).replace(microsecond=0)

    def lint(validity: timedelta) -> set[str]:
        crl = build_crl(
            issuer_certificate=ca.certificate,
            issuer_key=ca.key,
            entries=[],
            crl_number=5,
            this_update=now,
            next_update=now + validity,
        )
        findings = lint_crl_file(openssl.write_crl(f"{which}.crl", crl), kind=kind, profile="BR")
        return {f.code for f in findings if f.severity in {"ERROR", "FATAL"}}

    assert lint(limit) == set()
    assert lint(limit + timedelta(seconds=1)) == {code}
