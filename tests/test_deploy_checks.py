"""`manage.py check --deploy` warns of a base URL that other organisations cannot reach."""

from __future__ import annotations

from io import StringIO

import pytest

from django.core.management import call_command

from enrollment.checks import base_url_is_public, internal_host_problem, ldap_publish_is_encrypted


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000",  # the embedded default
        "http://10.1.2.3",
        "http://[::1]:8000",
        "http://localhost:8000",
        "http://pki",
        "http://pki.corp",
        "http://pki.example.internal",
        "http://ca.home.arpa",
    ],
)
def test_internal_hosts_are_named(url, settings):
    settings.PKIPORTAL_BASE_URL = url

    (warning,) = base_url_is_public()

    assert warning.id == "pkiportal.W001"
    assert url in warning.msg
    assert internal_host_problem(url) in warning.msg


@pytest.mark.parametrize("url", ["http://pki.example.com", "http://crl.acme.co.uk:8080"])
def test_public_names_pass(url, settings):
    settings.PKIPORTAL_BASE_URL = url

    assert base_url_is_public() == []


def test_check_deploy_reports_it(settings):
    settings.PKIPORTAL_BASE_URL = "http://127.0.0.1:8000"
    out = StringIO()

    call_command("check", "--deploy", stdout=out, stderr=out)

    assert "pkiportal.W001" in out.getvalue()


@pytest.mark.django_db
def test_create_pki_warns_but_creates(tmp_path, settings):
    out = StringIO()

    call_command(
        "create_pki",
        "--country", "GB",
        "--base-url", "http://10.0.0.5",
        "--root-key-out", str(tmp_path / "root.pem"),
        "--root-passphrase-file", str(tmp_path / "passphrase"),
        "--root-key-algorithm", "ec-p384",
        "--issuing-key-algorithm", "ec-p256",
        stdout=out,
    )  # fmt: skip

    assert "Created" in out.getvalue()
    assert "10.0.0.5 is an IP address (not a public one)" in out.getvalue()


@pytest.mark.parametrize(
    ("uri", "start_tls", "warned"),
    [
        ("ldap://dc1.example.com", False, True),
        ("ldap://dc1.example.com", True, False),
        ("ldaps://dc1.example.com", False, False),
        ("", False, False),  # publication off
    ],
)
def test_plain_ldap_publication_is_named(uri, start_tls, warned, settings):
    settings.PKIPORTAL_LDAP_PUBLISH_URI = uri
    settings.PKIPORTAL_LDAP_PUBLISH_START_TLS = start_tls

    warnings = ldap_publish_is_encrypted()

    assert [w.id for w in warnings] == (["pkiportal.W003"] if warned else [])
