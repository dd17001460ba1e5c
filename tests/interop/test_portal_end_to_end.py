"""The portal as relying parties see it: certificates of every seeded template, issued
through the services, checked by openssl and pkilint against what /pki/ serves."""

from __future__ import annotations

from datetime import timedelta

import pytest

from django.test import Client

from enrollment import keystore, services
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import ROOT_PASSPHRASE
from tests.interop.pkilint_runner import lint_crl_file, lint_smime, serious

pytestmark = [pytest.mark.interop, pytest.mark.django_db]

TEMPLATES = ["smime-signing", "smime-encryption", "smime-dual-use"]
KEYS = [KeyAlgorithm.RSA_2048, KeyAlgorithm.EC_P256]
SIGNS = {"smime-signing", "smime-dual-use"}
PASSWORD = "a long pkcs12 password"
ENCRYPTS = {"smime-encryption", "smime-dual-use"}


@pytest.fixture
def published(hierarchy, openssl):
    """Fetch the root, the issuing CA and both CRLs from /pki/ into openssl's folder."""

    def fetch() -> None:
        client = Client()
        services.crl_publish(
            ca=hierarchy.root,
            offline_key=keystore.OfflineKey(hierarchy.root_key_path, ROOT_PASSPHRASE),
            validity=timedelta(days=365),
        )
        for name, path in [
            ("root.der", "/pki/root.crt"),
            ("issuing.der", "/pki/issuing.crt"),
            ("root.crl.der", "/pki/root.crl"),
            ("issuing.crl.der", "/pki/issuing.crl"),
        ]:
            response = client.get(path)
            assert response.status_code == 200, path
            openssl.write(name, response.content)
        openssl.run("x509", "-inform", "DER", "-in", "root.der", "-out", "root.pem")
        openssl.run("x509", "-inform", "DER", "-in", "issuing.der", "-out", "issuing.pem")
        for crl in ("root", "issuing"):
            openssl.run("crl", "-inform", "DER", "-in", f"{crl}.crl.der", "-out", f"{crl}.crl.pem")

    return fetch


def issue(template, owner, slug: str, algorithm: KeyAlgorithm, *, with_pkcs12: bool = False):
    certificate, bundle = services.certificate_issue_with_server_key(
        template=template(slug),
        owner=owner,
        key_algorithm=algorithm,
        pkcs12_password=PASSWORD,
    )
    return (certificate, bundle) if with_pkcs12 else certificate


def verify(openssl, leaf: str, purpose: str, *, crls: bool = False):
    args = ["verify", "-x509_strict", "-purpose", purpose, "-CAfile", "root.pem"]
    args += ["-untrusted", "issuing.pem"]
    if crls:
        args += ["-crl_check_all", "-CRLfile", "root.crl.pem", "-CRLfile", "issuing.crl.pem"]
    return openssl.run(*args, leaf, check=False)


@pytest.mark.parametrize("algorithm", KEYS, ids=lambda a: a.value)
@pytest.mark.parametrize("slug", TEMPLATES)
def test_each_template_works_with_openssl_and_passes_pkilint(
    slug, algorithm, hierarchy, template, employee, kra, openssl, published
):
    """Verify the chain and CRLs, then sign/verify or encrypt/decrypt with the PKCS#12's key.

    OpenSSL's smimeencrypt purpose demands keyEncipherment, which EC certificates never
    have (they use keyAgreement, S/MIME BR 7.1.2.3 e), so EC encryption is shown by cms.
    """
    certificate, bundle = issue(template, employee, slug, algorithm, with_pkcs12=True)
    published()
    openssl.write_pem("leaf.pem", certificate.certificate)
    openssl.write("bundle.p12", bundle)
    openssl.run(
        "pkcs12", "-in", "bundle.p12", "-passin", f"pass:{PASSWORD}", "-nocerts", "-nodes",
        "-out", "key.pem",
    )  # fmt: skip
    openssl.write("message.txt", b"Quarterly figures attached.\n")

    if slug in SIGNS:
        result = verify(openssl, "leaf.pem", "smimesign", crls=True)
        assert result.returncode == 0, result.stderr.decode()
        openssl.run(
            "cms", "-sign", "-in", "message.txt", "-signer", "leaf.pem", "-inkey", "key.pem",
            "-certfile", "issuing.pem", "-out", "signed.p7m",
        )  # fmt: skip
        checked = openssl.run(
            "cms", "-verify", "-in", "signed.p7m", "-CAfile", "root.pem", "-purpose", "smimesign"
        )
        # S/MIME canonicalises line endings to CRLF (RFC 8551 3.1.1).
        assert checked.stdout.replace(b"\r\n", b"\n") == b"Quarterly figures attached.\n"
    if slug in ENCRYPTS:
        encrypts = verify(openssl, "leaf.pem", "smimeencrypt", crls=True)
        if algorithm.is_rsa:
            assert encrypts.returncode == 0, encrypts.stderr.decode()
        else:
            assert b"unsuitable certificate purpose" in encrypts.stdout + encrypts.stderr
        openssl.run(
            "cms", "-encrypt", "-aes256", "-in", "message.txt", "-out", "sealed.p7m", "leaf.pem"
        )
        opened = openssl.run(
            "cms", "-decrypt", "-in", "sealed.p7m", "-recip", "leaf.pem", "-inkey", "key.pem"
        )
        assert opened.stdout.replace(b"\r\n", b"\n") == b"Quarterly figures attached.\n"
    assert serious(lint_smime(openssl.path("leaf.pem"))) == []


def test_a_revoked_certificate_fails_openssl_with_the_served_crls(
    hierarchy, template, employee, openssl, published
):
    kept = issue(template, employee, "smime-signing", KeyAlgorithm.EC_P256)
    revoked = issue(template, employee, "smime-signing", KeyAlgorithm.EC_P256)
    services.certificate_revoke(certificate=revoked, reason="keyCompromise")
    services.crl_publish(ca=hierarchy.issuing)  # what the on-commit task does
    published()
    openssl.write_pem("kept.pem", kept.certificate)
    openssl.write_pem("revoked.pem", revoked.certificate)

    failed = verify(openssl, "revoked.pem", "smimesign", crls=True)
    passed = verify(openssl, "kept.pem", "smimesign", crls=True)

    assert failed.returncode != 0
    assert b"certificate revoked" in failed.stdout + failed.stderr
    assert passed.returncode == 0, passed.stderr.decode()


def test_the_served_crls_pass_pkilint(hierarchy, template, employee, openssl, published):
    revoked = issue(template, employee, "smime-dual-use", KeyAlgorithm.EC_P256)
    services.certificate_revoke(certificate=revoked, reason="affiliationChanged")
    services.crl_publish(ca=hierarchy.issuing)
    published()

    assert serious(lint_crl_file(openssl.path("issuing.crl.der"))) == []
    assert serious(lint_crl_file(openssl.path("root.crl.der"), kind="ARL")) == []


def test_with_a_loopback_base_url_only_the_internal_name_finding_appears(
    db, tmp_path, template, employee, openssl
):
    services.pki_create(
        root=services.CaSpec("Loop Root", "root", KeyAlgorithm.EC_P384, 3650),
        issuing=services.CaSpec("Loop Issuing", "issuing", KeyAlgorithm.EC_P256, 1825),
        base_url="http://127.0.0.1:8000",
        root_key_path=tmp_path / "loop-root.pem",
        root_passphrase=ROOT_PASSPHRASE,
        organization_name="Example Org",
        country_name="GB",
    )
    for slug in sorted(SIGNS):  # the encryption template would need an agent first
        certificate = issue(template, employee, slug, KeyAlgorithm.EC_P256)
        openssl.write_pem("leaf.pem", certificate.certificate)

        findings = serious(lint_smime(openssl.path("leaf.pem")))

        assert findings, "a loopback URL should be flagged"
        assert all("cabf.internal_domain_name" in finding for finding in findings), findings
