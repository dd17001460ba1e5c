"""/directory/<fingerprint>/: the certificate in human terms and its downloads.

The .cer, .pem and .p7b are checked with the openssl CLI, the vCard is parsed back with
vobject and the certificate inside it checked with openssl too. None holds a private key.
"""

from __future__ import annotations

import re

import pytest
import vobject

from cryptography.hazmat.primitives.serialization import Encoding

from enrollment import services
from enrollment.x509.pkcs7 import format_fingerprint

pytestmark = pytest.mark.django_db


@pytest.fixture
def cert(person, issue):
    user = person("José", "García", "Finance", email="jose.garcia@example.com")
    return issue(user, "smime-dual-use")


def pem_blocks(text: str) -> list[str]:
    return re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", text, re.S)


def test_the_page_shows_the_certificate_in_human_terms(employee_client, cert):
    page = employee_client.get(f"/directory/{cert.fingerprint_sha256}/").content.decode()

    for expected in [
        "José García",
        "Test Issuing CA",  # issuer
        "EC P-256",
        "digitalSignature, keyAgreement",
        "emailProtection",
        "jose.garcia@example.com",
        format_fingerprint(cert.fingerprint_sha256),
        format_fingerprint(cert.fingerprint_sha1),
        "Signing and encryption",
        "Valid",
    ]:
        assert expected in page, expected
    assert cert.serial.upper()[-6:] in page.replace(":", "")


def test_a_revoked_certificate_says_so_with_its_reason(employee_client, cert):
    services.certificate_revoke(certificate=cert, reason="keyCompromise")

    page = employee_client.get(f"/directory/{cert.fingerprint_sha256}/").content.decode()

    assert "Revoked" in page
    assert "key compromise" in page
    assert "Do not rely on this certificate" in page
    assert "signatures made after that date" in page


def test_a_key_exposed_earlier_than_the_revocation_dates_the_warning_from_then(
    employee_client, cert
):
    since = cert.not_before.replace(microsecond=0)
    services.certificate_revoke(certificate=cert, reason="keyCompromise", invalidity_date=since)

    page = employee_client.get(f"/directory/{cert.fingerprint_sha256}/").content.decode()

    assert f"signatures made after {since:%Y-%m-%d %H:%M} UTC" in page
    assert "in other hands" in page


def test_fingerprints_are_found_in_any_case(employee_client, cert):
    response = employee_client.get(f"/directory/{cert.fingerprint_sha256.upper()}/")

    assert response.status_code == 200


@pytest.mark.parametrize("suffix", ["/", ".cer", ".p7b", ".vcf"])
def test_an_unknown_fingerprint_is_a_404(employee_client, cert, suffix):
    assert employee_client.get(f"/directory/{'0' * 64}{suffix}").status_code == 404


@pytest.mark.parametrize("suffix", [".key", ".p12", ".pfx", "/key"])
def test_there_is_no_private_key_download(employee_client, cert, suffix):
    assert employee_client.get(f"/directory/{cert.fingerprint_sha256}{suffix}").status_code == 404


def test_the_cer_is_the_der_certificate(employee_client, cert, openssl):
    response = employee_client.get(f"/directory/{cert.fingerprint_sha256}.cer")

    assert response["Content-Type"] == "application/pkix-cert"
    assert response["Content-Disposition"].startswith('attachment; filename="jose-garcia-')
    path = openssl.write("jose.cer", response.content)
    out = openssl.run("x509", "-inform", "DER", "-in", path, "-noout", "-fingerprint", "-sha256")
    assert format_fingerprint(cert.fingerprint_sha256) in out.stdout.decode()


def test_the_pem_is_the_certificate(employee_client, cert, openssl):
    response = employee_client.get(f"/directory/{cert.fingerprint_sha256}.pem")

    assert response["Content-Type"] == "application/x-pem-file"
    assert len(pem_blocks(response.content.decode())) == 1
    path = openssl.write("jose.pem", response.content)
    out = openssl.run("x509", "-in", path, "-noout", "-fingerprint", "-sha1")
    assert format_fingerprint(cert.fingerprint_sha1) in out.stdout.decode()


def test_the_p7b_carries_the_chain_that_verifies_the_certificate(
    employee_client, cert, hierarchy, openssl
):
    response = employee_client.get(f"/directory/{cert.fingerprint_sha256}.p7b")

    assert response["Content-Type"] == "application/pkcs7-mime"
    p7b = openssl.write("jose.p7b", response.content)
    bundle = openssl.run("pkcs7", "-inform", "DER", "-in", p7b, "-print_certs").stdout.decode()
    blocks = pem_blocks(bundle)
    assert len(blocks) == 3  # the certificate, the issuing CA, the root
    leaf = openssl.write("leaf.pem", _pem(cert))
    untrusted = openssl.write("bundle.pem", "".join(blocks).encode())
    anchor = openssl.write("root.pem", _pem(hierarchy.root))
    # Only the root comes from elsewhere: the .p7b alone completes the chain. (OpenSSL's
    # smimeencrypt purpose wants keyEncipherment, which EC keys never carry.)
    verified = openssl.run(
        "verify", "-CAfile", anchor, "-untrusted", untrusted, "-purpose", "smimesign", leaf
    )
    assert verified.stdout.decode().strip().endswith("OK")
    assert _pem(cert).decode() in blocks


def _pem(row) -> bytes:
    return row.certificate.public_bytes(Encoding.PEM)


def test_the_vcard_parses_back_with_the_certificate_inside(employee_client, cert, openssl):
    response = employee_client.get(f"/directory/{cert.fingerprint_sha256}.vcf")

    assert response["Content-Type"] == "text/vcard; charset=utf-8"
    text = response.content.decode()
    assert text.startswith("BEGIN:VCARD\r\nVERSION:3.0\r\n")
    assert all(len(line.encode()) <= 75 for line in text.split("\r\n"))
    card = vobject.readOne(text)
    assert card.fn.value == "José García"
    assert card.n.value.family == "García"
    assert card.n.value.given == "José"
    assert card.email.value == "jose.garcia@example.com"
    assert card.org.value == ["Example Org", "Finance"]
    assert card.key.params["TYPE"] == ["X509"]
    der = card.key.value
    assert der == bytes(cert.der)
    path = openssl.write("from-vcard.cer", der)
    out = openssl.run("x509", "-inform", "DER", "-in", path, "-noout", "-fingerprint", "-sha256")
    assert format_fingerprint(cert.fingerprint_sha256) in out.stdout.decode()


@pytest.mark.parametrize("fmt", ["cer", "pem", "p7b", "vcf"])
def test_no_download_carries_a_private_key(employee_client, cert, fmt):
    body = employee_client.get(f"/directory/{cert.fingerprint_sha256}.{fmt}").content

    assert b"PRIVATE KEY" not in body
    assert b"ENCRYPTED" not in body


def test_times_are_labelled_with_the_zone_they_are_shown_in(employee_client, cert, settings):
    """Pages show times in TIME_ZONE and say which zone: a page once labelled New York
    times "UTC", five hours off for the revocation time relying parties judge by."""
    from zoneinfo import ZoneInfo

    services.certificate_revoke(certificate=cert, reason="keyCompromise")
    cert.refresh_from_db()
    settings.TIME_ZONE = "America/New_York"
    new_york = ZoneInfo("America/New_York")

    page = employee_client.get(f"/directory/{cert.fingerprint_sha256}/").content.decode()

    revoked = cert.revoked_at.astimezone(new_york)
    assert f"{revoked:%Y-%m-%d %H:%M} {revoked.tzname()}" in page
    not_before = cert.not_before.astimezone(new_york)
    assert f"{not_before:%Y-%m-%d %H:%M} {not_before.tzname()}" in page
    assert " UTC" not in page
