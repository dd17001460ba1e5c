"""`manage.py check --deploy` warns of a base URL that other organisations cannot reach,
plain LDAP, and an HSM PIN in the environment or SoftHSM in production."""

from __future__ import annotations

from io import StringIO

import pytest

from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from enrollment.checks import (
    base_url_is_public,
    hsm_is_not_softhsm,
    hsm_pin_is_in_a_file,
    internal_host_problem,
    ldap_publish_is_encrypted,
)


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


# --- the HSM (PKCS#11) key store -------------------------------------------------------


def test_an_hsm_pin_in_the_environment_is_named_and_a_pin_file_is_not(
    load_settings, tmp_path, monkeypatch
):
    pin_file = tmp_path / "pin"
    pin_file.write_text("1234-secret\n")
    hsm = {
        "PKIPORTAL_KEY_BACKEND": "pkcs11",
        "PKIPORTAL_PKCS11_MODULE": "/usr/lib/vendor/libcryptoki.so",
        "PKIPORTAL_PKCS11_TOKEN_LABEL": "ca",
    }

    from_file = load_settings(**hsm, PKIPORTAL_PKCS11_PIN_FILE=str(pin_file))
    # The file wins, and the variable is in every child's environment all the same.
    both = load_settings(PKIPORTAL_PKCS11_PIN="1234-secret")
    monkeypatch.delenv("PKIPORTAL_PKCS11_PIN_FILE")
    inline = load_settings()

    assert from_file["PKIPORTAL_PKCS11_PIN_IN_ENVIRONMENT"] is False
    assert from_file["PKIPORTAL_PKCS11_PIN"] == "1234-secret"
    assert both["PKIPORTAL_PKCS11_PIN_IN_ENVIRONMENT"] is True
    assert inline["PKIPORTAL_PKCS11_PIN_IN_ENVIRONMENT"] is True


def test_the_pin_check_warns_only_for_a_pin_in_the_environment(settings):
    settings.PKIPORTAL_PKCS11_PIN_IN_ENVIRONMENT = True
    (warning,) = hsm_pin_is_in_a_file()
    assert warning.id == "pkiportal.W004"
    assert "PKIPORTAL_PKCS11_PIN_FILE" in warning.hint

    settings.PKIPORTAL_PKCS11_PIN_IN_ENVIRONMENT = False
    assert hsm_pin_is_in_a_file() == []


def test_softhsm_as_the_production_hsm_is_named(settings):
    settings.PKIPORTAL_KEY_BACKEND = "pkcs11"
    settings.PKIPORTAL_PKCS11_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
    (warning,) = hsm_is_not_softhsm()
    assert warning.id == "pkiportal.W005"

    settings.PKIPORTAL_PKCS11_MODULE = "/opt/safenet/lunaclient/lib/libCryptoki2_64.so"
    assert hsm_is_not_softhsm() == []
    settings.PKIPORTAL_KEY_BACKEND = "file"
    settings.PKIPORTAL_PKCS11_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
    assert hsm_is_not_softhsm() == []


@pytest.mark.parametrize(
    "missing", ["PKIPORTAL_PKCS11_MODULE", "PKIPORTAL_PKCS11_TOKEN_LABEL", "PKIPORTAL_PKCS11_PIN"]
)
def test_the_pkcs11_backend_refuses_to_start_half_configured(load_settings, missing):
    hsm = {
        "PKIPORTAL_KEY_BACKEND": "pkcs11",
        "PKIPORTAL_PKCS11_MODULE": "/usr/lib/vendor/libcryptoki.so",
        "PKIPORTAL_PKCS11_TOKEN_LABEL": "ca",
        "PKIPORTAL_PKCS11_PIN": "1234-secret",
    }
    del hsm[missing]

    with pytest.raises(ImproperlyConfigured, match="PKIPORTAL_KEY_BACKEND=pkcs11 needs") as raised:
        load_settings(**hsm)

    assert "1234-secret" not in str(raised.value)


def test_an_unknown_key_backend_is_refused(load_settings):
    with pytest.raises(ImproperlyConfigured, match="file or pkcs11"):
        load_settings(PKIPORTAL_KEY_BACKEND="vault")
