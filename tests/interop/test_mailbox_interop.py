"""A shared mailbox's certificate as relying parties see it: pkilint's S/MIME linter finds
it organization-validated (2.23.140.1.5.2.3) with nothing wrong, openssl verifies it for
S/MIME encryption against the root, and mail encrypted to it opens with the key of the
.p12 its delegate collected."""

from __future__ import annotations

import pytest

from django.test import Client

from enrollment import mailboxes, services
from enrollment.x509 import pkcs12
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.policy import CertificateType, Generation, Purpose
from tests.conftest import Agent
from tests.interop.pkilint_runner import lint_smime, minor, serious
from tests.interop.test_pkilint import ACCEPTED_MINOR_FINDINGS
from tests.pki import OpenSSL

pytestmark = [pytest.mark.interop, pytest.mark.django_db]

PASSWORD = "Mailbox-Shared-Lantern-27"


@pytest.fixture
def kra(quick_kra: Agent) -> Agent:
    return quick_kra


def test_a_mailbox_certificate_lints_verifies_and_decrypts(
    hierarchy, kra, template, officer, employee, openssl: OpenSSL
):
    finance = mailboxes.mailbox_create(
        email="finance@example.com", display_name="Finance", delegates=[employee], actor=officer
    )
    made = services.request_submit(
        requester=employee,
        template=template("smime-encryption"),
        key_algorithm=KeyAlgorithm.RSA_2048,  # openssl's smimeencrypt wants keyEncipherment
        mailbox=finance,
        channel="web",
    )
    certificate, bundle = services.request_collect(
        request=made, actor=employee, pkcs12_password=PASSWORD
    )
    client = Client()
    openssl.write("root.der", client.get("/pki/root.crt").content)
    openssl.write("issuing.der", client.get("/pki/issuing.crt").content)
    openssl.run("x509", "-inform", "DER", "-in", "root.der", "-out", "root.pem")
    openssl.run("x509", "-inform", "DER", "-in", "issuing.der", "-out", "issuing.pem")
    leaf = openssl.write_pem("mailbox.pem", certificate.certificate)

    findings = lint_smime(leaf)
    assert serious(findings) == []
    assert minor(findings) <= ACCEPTED_MINOR_FINDINGS
    # -d took the type from the policy OID: the organization-validated strict linter ran.
    text = openssl.run("x509", "-in", "mailbox.pem", "-noout", "-text").stdout.decode()
    assert "2.23.140.1.5.2.3" in text
    assert (
        "CN=finance@example.com"
        in openssl.run(
            "x509", "-in", "mailbox.pem", "-noout", "-subject", "-nameopt", "RFC2253"
        ).stdout.decode()
    )

    verified = openssl.run(
        "verify", "-x509_strict", "-purpose", "smimeencrypt", "-CAfile", "root.pem",
        "-untrusted", "issuing.pem", "mailbox.pem", check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr.decode()

    openssl.write("bundle.p12", bundle)
    openssl.run(
        "pkcs12", "-in", "bundle.p12", "-passin", f"pass:{PASSWORD}", "-nocerts", "-nodes",
        "-out", "key.pem",
    )  # fmt: skip
    openssl.write("invoice.txt", b"Invoice 2026-114 attached.\n")
    openssl.run(
        "cms", "-encrypt", "-aes256", "-in", "invoice.txt", "-out", "sealed.p7m", "mailbox.pem"
    )
    opened = openssl.run(
        "cms", "-decrypt", "-in", "sealed.p7m", "-recip", "mailbox.pem", "-inkey", "key.pem"
    )
    assert opened.stdout.replace(b"\r\n", b"\n") == b"Invoice 2026-114 attached.\n"
    key, _cert, _chain = pkcs12.load_pkcs12(bundle, PASSWORD)
    assert key.public_key() == certificate.certificate.public_key()


@pytest.mark.parametrize("generation", list(Generation))
def test_pkilint_passes_organization_validated_subjects_of_both_generations(
    openssl: OpenSSL, make_end_entity, generation
):
    from enrollment.x509.builder import Subject

    subject = Subject(
        common_name="poststelle@example.com",
        organization_name="Example Org",
        country_name="GB",
        organization_identifier="NTRGB-12345678",
        email_addresses=("poststelle@example.com",),
        certificate_type=CertificateType.ORGANIZATION_VALIDATED,
    )
    leaf = make_end_entity(
        Purpose.ENCRYPTION,
        generation=generation,
        subject=subject,
        certificate_type=CertificateType.ORGANIZATION_VALIDATED,
    ).certificate
    findings = lint_smime(openssl.write_pem("leaf.pem", leaf))
    assert serious(findings) == []
    assert minor(findings) <= ACCEPTED_MINOR_FINDINGS
