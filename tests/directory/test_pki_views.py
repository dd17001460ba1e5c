"""The public repository: exact content types, no login, caching bounded by nextUpdate."""

from __future__ import annotations

import subprocess
from datetime import timedelta

import pytest

from cryptography import x509

from django.utils import timezone
from django.utils.http import parse_http_date

from enrollment import services
from enrollment.x509.pkcs7 import format_fingerprint

pytestmark = pytest.mark.django_db


def openssl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)


def test_it_serves_the_ca_certificate_as_der_to_anyone(anonymous_client, hierarchy):
    response = anonymous_client.get("/pki/issuing.crt")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/pkix-cert"
    result = openssl("x509", "-inform", "DER", "-noout", "-subject", stdin=response.content)
    assert result.returncode == 0, result.stderr
    assert b"Test Issuing CA" in result.stdout


def test_it_serves_the_newest_crl_as_der(anonymous_client, hierarchy):
    services.crl_publish(ca=hierarchy.issuing)

    response = anonymous_client.get("/pki/issuing.crl")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/pkix-crl"
    result = openssl("crl", "-inform", "DER", "-noout", "-crlnumber", stdin=response.content)
    assert result.returncode == 0, result.stderr
    assert b"crlNumber=0x02" in result.stdout


def test_crl_caching_never_outlives_next_update(anonymous_client, hierarchy, time_machine):
    crl = hierarchy.issuing.latest_crl()
    time_machine.move_to(crl.next_update - timedelta(minutes=10))

    response = anonymous_client.get("/pki/issuing.crl")

    max_age = int(response["Cache-Control"].split("max-age=")[1])
    assert 0 < max_age <= 600
    assert parse_http_date(response["Expires"]) == int(crl.next_update.timestamp())
    assert parse_http_date(response["Last-Modified"]) == int(crl.this_update.timestamp())


def test_crl_answers_304_to_a_matching_etag_and_200_after_a_new_crl(anonymous_client, hierarchy):
    etag = anonymous_client.get("/pki/issuing.crl")["ETag"]

    assert anonymous_client.get("/pki/issuing.crl", HTTP_IF_NONE_MATCH=etag).status_code == 304
    services.crl_publish(ca=hierarchy.issuing)
    fresh = anonymous_client.get("/pki/issuing.crl", HTTP_IF_NONE_MATCH=etag)
    assert fresh.status_code == 200
    assert fresh["ETag"] != etag


def test_the_root_crl_is_served_once_signed(anonymous_client, hierarchy):
    assert anonymous_client.get("/pki/root.crl").status_code == 404

    from enrollment.keystore import OfflineKey

    services.crl_publish(
        ca=hierarchy.root,
        offline_key=OfflineKey(hierarchy.root_key_path, hierarchy.root_passphrase),
        validity=timedelta(days=365),
    )
    response = anonymous_client.get("/pki/root.crl")

    assert response.status_code == 200
    crl = x509.load_der_x509_crl(response.content)
    assert crl.issuer == hierarchy.root.certificate.subject
    assert crl.next_update_utc - crl.last_update_utc == timedelta(days=365)


def test_the_chain_is_a_p7b_up_to_the_root(anonymous_client, hierarchy):
    response = anonymous_client.get("/pki/issuing-chain.p7b")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/pkcs7-mime"
    result = openssl("pkcs7", "-inform", "DER", "-print_certs", "-noout", stdin=response.content)
    assert result.returncode == 0, result.stderr
    subjects = [line for line in result.stdout.decode().splitlines() if line.startswith("subject")]
    assert len(subjects) == 2
    assert any("Test Root CA" in s for s in subjects)
    assert any("Test Issuing CA" in s for s in subjects)


@pytest.mark.parametrize(
    "path", ["/pki/nope.crt", "/pki/nope.crl", "/pki/nope-chain.p7b", "/pki/nope.pem"]
)
def test_an_unknown_ca_is_a_404(anonymous_client, hierarchy, path):
    assert anonymous_client.get(path).status_code == 404


@pytest.mark.parametrize("path", ["/pki/issuing.crt", "/pki/issuing.crl", "/pki/issuing-chain.p7b"])
def test_the_repository_is_read_only(anonymous_client, hierarchy, path):
    assert anonymous_client.post(path).status_code == 405
    assert anonymous_client.head(path).status_code == 200


def test_the_repository_page_lists_each_ca_with_its_crl(anonymous_client, hierarchy):
    response = anonymous_client.get("/pki/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "Test Root CA" in page
    assert "Test Issuing CA" in page
    assert "/pki/issuing.crl" in page
    assert format_fingerprint(hierarchy.issuing.fingerprint_sha256) in page
    assert "not published yet" in page  # the root's CRL is signed later, offline


def test_a_crl_past_next_update_is_never_served(anonymous_client, hierarchy, time_machine):
    """The online CA signs a fresh one on the spot (tests/directory/test_pki_crl.py)."""
    crl = hierarchy.issuing.latest_crl()
    time_machine.move_to(crl.next_update + timedelta(hours=1))

    response = anonymous_client.get("/pki/issuing.crl")

    served = x509.load_der_x509_crl(response.content)
    assert served.next_update_utc > timezone.now()
    assert response["Cache-Control"] == "public, max-age=3600"


@pytest.mark.parametrize("path", ["/pki/issuing.crt", "/pki/issuing-chain.p7b", "/pki/issuing.crl"])
@pytest.mark.parametrize("validator", ["ETag", "Last-Modified"])
def test_a_304_carries_the_caching_headers_of_the_200(anonymous_client, hierarchy, path, validator):
    """RFC 9110 15.4.5: else a cache refreshing its copy would lose Cache-Control."""
    full = anonymous_client.get(path)
    header = {"ETag": "HTTP_IF_NONE_MATCH", "Last-Modified": "HTTP_IF_MODIFIED_SINCE"}[validator]

    again = anonymous_client.get(path, **{header: full[validator]})

    assert again.status_code == 304
    assert again.content == b""
    for name in ("Cache-Control", "ETag", "Expires"):
        assert again.get(name) == full.get(name), name
    assert full["Cache-Control"].startswith("public, max-age=")
