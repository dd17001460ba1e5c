"""Issuance services: names from the account, archival only where it belongs, audited."""

from __future__ import annotations

import secrets

import pytest

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from django.db import IntegrityError, transaction

from enrollment import services
from enrollment.exceptions import ConfigurationError, PolicyViolation
from enrollment.models import (
    ArchivedKey,
    AuditEvent,
    Certificate,
    CertificateAuthority,
    CertificateTemplate,
)
from enrollment.x509 import pkcs12
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.pkcs12 import Pkcs12Format
from tests.enrollment.tools import error_report, issue, row_counts
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse pkcs12 staple"


def server_key_issue(template, owner, fmt: Pkcs12Format = Pkcs12Format.MODERN, **options):
    return services.certificate_issue_with_server_key(
        template=template,
        owner=owner,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password=PASSWORD,
        pkcs12_format=fmt,
        **options,
    )


def attribute(certificate: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [a.value for a in certificate.subject.get_attributes_for_oid(oid)]


def rfc822_names(certificate: x509.Certificate) -> list[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.RFC822Name)


def issuance_events(certificate: Certificate | None = None):
    events = AuditEvent.objects.filter(action="certificate.issue")
    if certificate is not None:
        events = events.filter(object_id=str(certificate.pk))
    return events


# --- the subject ----------------------------------------------------------------------


def test_the_subject_comes_from_the_account(hierarchy, template, employee, ec_p256_key, settings):
    certificate = issue(employee, template("smime-signing"), ec_p256_key).certificate

    assert attribute(certificate, NameOID.COMMON_NAME) == ["Alice Andersson"]
    assert attribute(certificate, NameOID.GIVEN_NAME) == ["Alice"]
    assert attribute(certificate, NameOID.SURNAME) == ["Andersson"]
    assert attribute(certificate, NameOID.ORGANIZATION_NAME) == ["Example Org"]
    assert attribute(certificate, NameOID.ORGANIZATION_IDENTIFIER) == [
        settings.PKIPORTAL_ORGANIZATION_IDENTIFIER
    ]
    assert rfc822_names(certificate) == ["alice@example.com"]


def test_the_stored_row_repeats_what_the_certificate_says(
    hierarchy, template, employee, ec_p256_key
):
    row = issue(employee, template("smime-signing"), ec_p256_key)

    assert row.owner == employee
    assert row.ca == hierarchy.issuing
    assert row.common_name == "Alice Andersson"
    assert row.email == "alice@example.com"
    assert row.emails == ["alice@example.com"]
    assert row.serial == format(row.certificate.serial_number, "x")
    assert row.subject == row.certificate.subject.rfc4514_string()
    assert row.key_algorithm == "EC P-256"
    assert row.purpose == "signing"


def test_an_upper_case_account_address_is_issued_in_lower_case(hierarchy, template, ec_p256_key):
    owner = UserFactory(first_name="Chris", last_name="Case", email="Chris.Case@Example.COM")

    row = issue(owner, template("smime-signing"), ec_p256_key)

    assert rfc822_names(row.certificate) == ["chris.case@example.com"]
    assert row.email == "chris.case@example.com"


@pytest.mark.parametrize(
    ("account", "message"),
    [
        ({"email": ""}, "no e-mail address"),
        ({"first_name": "", "last_name": ""}, "given name or a surname"),
    ],
    ids=["without e-mail", "without names"],
)
def test_an_incomplete_account_is_refused_and_nothing_is_stored(
    account, message, hierarchy, template, ec_p256_key
):
    owner = UserFactory(**account)
    before = row_counts()

    with pytest.raises(PolicyViolation, match=message):
        issue(owner, template("smime-signing"), ec_p256_key)

    assert row_counts() == before


# --- archival -------------------------------------------------------------------------


def test_an_archiving_template_without_a_recovery_agent_issues_nothing(
    hierarchy, template, employee
):
    before = row_counts()

    with pytest.raises(ConfigurationError, match="No valid key recovery agent"):
        server_key_issue(template("smime-encryption"), employee)

    assert row_counts() == before
    assert not Certificate.objects.exists()
    assert not issuance_events().exists()


def test_an_archived_key_opens_with_the_recovery_agents_key(kra, template, employee, openssl):
    row, bundle = server_key_issue(template("smime-encryption"), employee)

    archived = ArchivedKey.objects.get(certificate=row)
    assert list(archived.recipients.all()) == [kra.agent]
    # Recover with the real openssl CLI, as an agent would on their own machine.
    openssl.write("envelope.der", bytes(archived.envelope))
    openssl.write_pem("kra.pem", kra.agent.certificate)
    openssl.write_key("kra-key.pem", kra.key)
    openssl.write_pem("issued.pem", row.certificate)
    openssl.run(
        "cms", "-decrypt", "-inform", "DER", "-in", "envelope.der",
        "-recip", "kra.pem", "-inkey", "kra-key.pem", "-out", "recovered.der",
    )  # fmt: skip
    recovered_public = openssl.run(
        "pkey", "-inform", "DER", "-in", "recovered.der", "-pubout"
    ).stdout
    certified_public = openssl.run("x509", "-in", "issued.pem", "-noout", "-pubkey").stdout
    assert recovered_public.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert recovered_public == certified_public
    # And it is the very key the owner received in the PKCS#12.
    key, _certificate, _chain = pkcs12.load_pkcs12(bundle, PASSWORD)
    assert recovered_public == key.public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
    )
    assert AuditEvent.objects.filter(action="key.archive", object_id=str(archived.pk)).exists()


def test_a_signing_template_never_archives(kra, template, employee):
    row, _bundle = server_key_issue(template("smime-signing"), employee)

    assert not ArchivedKey.objects.filter(certificate=row).exists()
    assert not AuditEvent.objects.filter(action="key.archive").exists()


def test_the_database_refuses_a_second_certificate_with_the_same_fingerprint(
    hierarchy, template, employee, ec_p256_key
):
    first = issue(employee, template("smime-signing"), ec_p256_key)
    twin = Certificate.objects.get(pk=first.pk)
    twin.pk, twin.serial = None, "1"

    with pytest.raises(IntegrityError), transaction.atomic():
        twin.save(force_insert=True)

    assert Certificate.objects.filter(fingerprint_sha256=first.fingerprint_sha256).count() == 1


def test_the_database_refuses_a_signing_template_that_archives(db):
    with pytest.raises(IntegrityError), transaction.atomic():
        CertificateTemplate.objects.create(
            name="Archived signing",
            slug="archived-signing",
            purpose="signing",
            archive_key=True,
            allow_csr=False,
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        CertificateTemplate.objects.filter(slug="smime-signing").update(
            archive_key=True, allow_csr=False
        )

    assert not CertificateTemplate.objects.filter(purpose="signing", archive_key=True).exists()


def test_a_csr_cannot_be_used_with_the_archiving_template(kra, template, employee, ec_p256_key):
    before = row_counts()

    with pytest.raises(PolicyViolation, match="does not accept a CSR"):
        issue(employee, template("smime-encryption"), ec_p256_key)

    assert row_counts() == before
    # The database backs the rule: an archiving template cannot be opened to CSRs.
    with pytest.raises(IntegrityError), transaction.atomic():
        CertificateTemplate.objects.filter(slug="smime-encryption").update(allow_csr=True)


# --- PKCS#12 --------------------------------------------------------------------------


def test_the_modern_pkcs12_opens_with_openssl_3_defaults(hierarchy, template, employee, openssl):
    row, bundle = server_key_issue(template("smime-signing"), employee)
    openssl.write("modern.p12", bundle)

    info = openssl.run("pkcs12", "-info", "-noout", "-in", "modern.p12", f"-passin=pass:{PASSWORD}")

    assert b"AES-256-CBC" in info.stderr
    assert b"MAC: sha256" in info.stderr
    key, certificate, chain = pkcs12.load_pkcs12(bundle, PASSWORD)
    assert certificate == row.certificate
    assert chain == [hierarchy.issuing.certificate, hierarchy.root.certificate]


def test_the_compatible_pkcs12_opens_with_openssl_legacy(hierarchy, template, employee, openssl):
    _row, bundle = server_key_issue(template("smime-signing"), employee, Pkcs12Format.COMPATIBLE)
    openssl.write("compatible.p12", bundle)

    info = openssl.run(
        "pkcs12", "-legacy", "-info", "-noout", "-in", "compatible.p12", f"-passin=pass:{PASSWORD}"
    )

    assert b"pbeWithSHA1And3-KeyTripleDES-CBC" in info.stderr
    assert b"MAC: sha1" in info.stderr


def test_a_wrong_password_does_not_open_the_pkcs12(hierarchy, template, employee, openssl):
    _row, bundle = server_key_issue(template("smime-signing"), employee)
    openssl.write("modern.p12", bundle)

    result = openssl.run(
        "pkcs12", "-info", "-noout", "-in", "modern.p12", "-passin=pass:wrong", check=False
    )

    assert result.returncode != 0
    assert b"PRIVATE KEY" not in result.stdout


# --- serials and audit ----------------------------------------------------------------


def test_an_error_while_wrapping_the_key_keeps_the_password_out_of_the_report(
    hierarchy, template, employee, monkeypatch
):
    """The password and the new key are masked from the service down to the x509 code."""
    password = secrets.token_urlsafe()  # not a literal: those show as source lines
    monkeypatch.setattr(pkcs12.pkcs12, "serialize_key_and_certificates", _wrapping_fails)

    with error_report(RuntimeError) as report:
        services.certificate_issue_with_server_key(
            template=template("smime-signing"), owner=employee,
            key_algorithm=KeyAlgorithm.EC_P256, pkcs12_password=password,
        )  # fmt: skip

    assert "certificate_issue_with_server_key" in report.text
    assert password not in report.text


def _wrapping_fails(*args, **kwargs):
    raise RuntimeError("out of memory while wrapping the key")


def test_serials_are_unique_positive_and_at_most_20_octets(
    hierarchy, template, employee, ec_p256_key
):
    serials = [
        issue(employee, template("smime-signing"), ec_p256_key).certificate.serial_number
        for _ in range(8)
    ]

    assert len(set(serials)) == len(serials)
    for serial in serials:
        assert serial > 0
        der_octets = serial.bit_length() // 8 + 1  # two's complement, sign bit clear
        assert 9 <= der_octets <= 20  # more than 64 random bits, RFC 5280 4.1.2.2 bound


def test_every_issuance_writes_an_audit_event(hierarchy, template, employee, ec_p256_key):
    from_csr = services.certificate_issue(
        template=template("smime-dual-use"),
        owner=employee,
        public_key=ec_p256_key.public_key(),
        actor=employee,
        source_address="192.0.2.10",
    )
    from_server_key, _bundle = server_key_issue(
        template("smime-signing"), employee, actor=employee, source_address="192.0.2.11"
    )

    for row, address in ((from_csr, "192.0.2.10"), (from_server_key, "192.0.2.11")):
        event = issuance_events(row).get()
        assert event.actor == employee
        assert event.actor_name == "alice"
        assert event.outcome == AuditEvent.Outcome.SUCCESS
        assert event.source_address == address
        assert event.detail == {"template": row.template.slug, "serial": row.serial}
    assert issuance_events().count() == 2


@pytest.mark.parametrize(
    ("organization_name", "country_name", "message"),
    [("Example Org", "", "must name its country"), ("", "GB", "must name its organisation")],
)
def test_pki_create_refuses_cas_without_organisation_or_country_before_making_keys(
    tmp_path, settings, organization_name, country_name, message
):
    """S/MIME BR 7.1.4.3.1: root and subordinate CA certificates name O and C."""
    key_path = tmp_path / "offline" / "root-key.pem"

    with pytest.raises(PolicyViolation, match=message):
        services.pki_create(
            root=services.CaSpec("Root", "root", KeyAlgorithm.EC_P384, 3650),
            issuing=services.CaSpec("Issuing", "issuing", KeyAlgorithm.EC_P256, 1825),
            base_url="http://pki.example.com",
            root_key_path=key_path,
            root_passphrase=b"root passphrase for tests",
            organization_name=organization_name,
            country_name=country_name,
        )

    assert not key_path.exists()
    assert not list(tmp_path.glob("keys/*"))
    assert not CertificateAuthority.objects.exists()
