"""/pki/ for people: CRL times, both fingerprints, and how to trust the root per platform."""

from __future__ import annotations

from datetime import timedelta

import pytest

from enrollment.x509.pkcs7 import fingerprint, format_fingerprint

pytestmark = pytest.mark.django_db


def test_it_shows_crl_times_and_both_fingerprints(anonymous_client, hierarchy):
    crl = hierarchy.issuing.latest_crl()

    page = anonymous_client.get("/pki/").content.decode()

    assert f"this update {crl.this_update:%Y-%m-%d %H:%M} UTC" in page
    assert f"next update {crl.next_update:%Y-%m-%d %H:%M} UTC" in page
    for ca in (hierarchy.root, hierarchy.issuing):
        # as openssl, Firefox and the portal's certificate pages show them
        assert format_fingerprint(ca.fingerprint_sha256) in page
        assert format_fingerprint(fingerprint(ca.certificate, "sha1")) in page


@pytest.mark.parametrize(
    "platform",
    ["Windows", "Outlook", "macOS Keychain", "Thunderbird", "iPhone and iPad", "Android", "gpgsm"],
)
def test_it_explains_trusting_the_root_on_each_platform(anonymous_client, hierarchy, platform):
    page = anonymous_client.get("/pki/").content.decode()

    assert f"<summary>{platform}" in page


def test_the_commands_name_the_real_files_and_the_gpgsm_trustlist_line(anonymous_client, hierarchy):
    page = anonymous_client.get("/pki/").content.decode()

    assert "certutil -addstore -f Root root.crt" in page
    assert "certutil -addstore -f CA issuing.crt" in page
    sha1 = format_fingerprint(fingerprint(hierarchy.root.certificate, "sha1"))
    assert f"{sha1} S" in page
    assert "http://pki.example.com/pki/issuing.crl" in page


def test_an_overdue_crl_is_flagged(anonymous_client, hierarchy, time_machine):
    time_machine.move_to(hierarchy.issuing.latest_crl().next_update + timedelta(minutes=1))

    assert "overdue" in anonymous_client.get("/pki/").content.decode()


def test_it_names_the_ocsp_responder_and_how_to_ask_it(anonymous_client, hierarchy):
    page = anonymous_client.get("/pki/").content.decode()

    assert "<code>http://pki.example.com/pki/ocsp/</code> answers" in page
    assert (
        "openssl ocsp -issuer issuing.pem -cert colleague.pem "
        "-url http://pki.example.com/pki/ocsp/ -CAfile root.pem"
    ) in page


def test_a_ca_without_a_responder_shows_none(anonymous_client, hierarchy):
    hierarchy.issuing.ocsp_url = ""
    hierarchy.issuing.save(update_fields=["ocsp_url"])

    page = anonymous_client.get("/pki/").content.decode()

    assert "/pki/ocsp/" not in page
    assert "Asking the OCSP responder" not in page
