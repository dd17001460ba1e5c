"""`manage.py check --deploy` warns of a base URL that other organisations cannot reach,
plain LDAP (publication, and the directory people sign in with), an HSM PIN in the
environment or SoftHSM in production, and a CA key passphrase kept where it protects
nothing."""

from __future__ import annotations

from io import StringIO

import pytest

from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from enrollment.checks import (
    base_url_is_public,
    ca_key_passphrase_is_kept_apart,
    hsm_is_not_softhsm,
    hsm_pin_is_in_a_file,
    internal_host_problem,
    ldap_publish_is_encrypted,
    monitoring_token_is_behind_https,
    sign_in_directory_is_encrypted,
    site_url_is_https,
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


@pytest.mark.parametrize(
    ("uri", "start_tls", "warned"),
    [
        ("ldap://dc1.example.com", False, True),
        ("ldaps://dc1.example.com ldap://dc2.example.com", False, True),
        ("ldap://dc1.example.com", True, False),
        ("ldaps://dc1.example.com ldaps://dc2.example.com", False, False),
        (None, False, False),  # no directory sign-in
    ],
)
def test_plain_ldap_sign_in_is_named(uri, start_tls, warned, settings):
    """People's passwords, and the service account's the leavers' sync binds with."""
    if uri is None:
        assert not hasattr(settings, "AUTH_LDAP_SERVER_URI")
    else:
        settings.AUTH_LDAP_SERVER_URI = uri
    settings.AUTH_LDAP_START_TLS = start_tls

    warnings = sign_in_directory_is_encrypted()

    assert [w.id for w in warnings] == (["pkiportal.W012"] if warned else [])
    for warning in warnings:  # it names the plain URIs, not the others
        assert [part for part in uri.split() if part in warning.msg] == [
            part for part in uri.split() if part.startswith("ldap://")
        ]


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


# --- the CA key passphrase (file key store) --------------------------------------------


@pytest.fixture
def passphrase_apart(settings, tmp_path):
    """The advised set-up: a 0400 file outside the key directory, no variable, and no
    embedded default's file."""
    secret = tmp_path / "credentials" / "ca-key-passphrase"
    secret.parent.mkdir()
    secret.write_text("online CA passphrase for tests\n")
    secret.chmod(0o400)
    settings.PKIPORTAL_CA_KEY_PASSPHRASE = "online CA passphrase for tests"
    settings.PKIPORTAL_CA_KEY_PASSPHRASE_FILE = str(secret)
    settings.PKIPORTAL_CA_KEY_PASSPHRASE_IN_ENVIRONMENT = False
    assert not settings.PKIPORTAL_EMBEDDED_PASSPHRASE_FILE.exists()
    return secret


def test_a_private_passphrase_file_outside_the_key_directory_is_not_named(passphrase_apart):
    assert ca_key_passphrase_is_kept_apart() == []


def test_a_passphrase_in_the_environment_is_named_even_with_a_file(passphrase_apart, settings):
    settings.PKIPORTAL_CA_KEY_PASSPHRASE_IN_ENVIRONMENT = True

    (warning,) = ca_key_passphrase_is_kept_apart()

    assert warning.id == "pkiportal.W010"
    assert "environment variable" in warning.msg
    assert "unset PKIPORTAL_CA_KEY_PASSPHRASE" in warning.hint
    assert "online CA passphrase" not in warning.msg + warning.hint


def test_a_passphrase_given_in_the_settings_without_a_file_is_named(passphrase_apart, settings):
    settings.PKIPORTAL_CA_KEY_PASSPHRASE_FILE = ""

    (warning,) = ca_key_passphrase_is_kept_apart()

    assert warning.id == "pkiportal.W010"
    assert "in clear" in warning.msg
    assert "PKIPORTAL_CA_KEY_PASSPHRASE_FILE" in warning.hint


def test_a_passphrase_file_in_the_key_directory_is_named(passphrase_apart, settings):
    beside = settings.PKIPORTAL_KEY_DIR / "ca-key-passphrase"
    beside.parent.mkdir(parents=True, exist_ok=True)
    passphrase_apart.rename(beside)
    settings.PKIPORTAL_CA_KEY_PASSPHRASE_FILE = str(beside)

    (warning,) = ca_key_passphrase_is_kept_apart()

    assert warning.id == "pkiportal.W010"
    assert "is in PKIPORTAL_KEY_DIR" in warning.msg
    assert "outside PKIPORTAL_KEY_DIR" in warning.hint


@pytest.mark.parametrize(
    ("mode", "readers"),
    [(0o440, "its group"), (0o604, "other users"), (0o644, "its group and other users")],
)
def test_a_passphrase_file_others_can_read_is_named(passphrase_apart, mode, readers):
    passphrase_apart.chmod(mode)

    (warning,) = ca_key_passphrase_is_kept_apart()

    assert warning.id == "pkiportal.W010"
    assert f"readable by {readers} (mode {mode:04o})" in warning.msg
    assert "0400 or 0600" in warning.hint


def test_the_embedded_defaults_passphrase_beside_the_keys_is_named(settings):
    """What `create_pki --embedded-passphrase` (make run) makes: fine for trying the
    portal, not for production."""
    from enrollment import keystore

    settings.PKIPORTAL_CA_KEY_PASSPHRASE = ""
    settings.PKIPORTAL_CA_KEY_PASSPHRASE_FILE = ""
    settings.PKIPORTAL_CA_KEY_PASSPHRASE_IN_ENVIRONMENT = False
    assert keystore.ensure_embedded_passphrase()

    (warning,) = ca_key_passphrase_is_kept_apart()

    assert warning.id == "pkiportal.W010"
    assert "embedded default's" in warning.msg
    assert f"delete {settings.PKIPORTAL_EMBEDDED_PASSPHRASE_FILE}" in warning.hint


def test_an_embedded_passphrase_left_behind_is_named_too(passphrase_apart, settings):
    """Moved out to a file of its own, the old copy beside the keys still opens them."""
    embedded = settings.PKIPORTAL_EMBEDDED_PASSPHRASE_FILE
    embedded.parent.mkdir(parents=True, exist_ok=True)
    embedded.write_text("online CA passphrase for tests")
    embedded.chmod(0o600)

    (warning,) = ca_key_passphrase_is_kept_apart()

    assert "embedded default's" in warning.msg


def test_the_settings_record_where_the_passphrase_came_from(load_settings, tmp_path, monkeypatch):
    secret = tmp_path / "ca-key-passphrase"
    secret.write_text("from a file, 16+ chars\n")

    from_file = load_settings(PKIPORTAL_CA_KEY_PASSPHRASE_FILE=str(secret))
    # The file wins, and the variable is in every child's environment all the same.
    both = load_settings(PKIPORTAL_CA_KEY_PASSPHRASE="in the environment")
    monkeypatch.delenv("PKIPORTAL_CA_KEY_PASSPHRASE_FILE")
    inline = load_settings()

    assert from_file["PKIPORTAL_CA_KEY_PASSPHRASE"] == "from a file, 16+ chars"
    assert from_file["PKIPORTAL_CA_KEY_PASSPHRASE_FILE"] == str(secret)
    assert from_file["PKIPORTAL_CA_KEY_PASSPHRASE_IN_ENVIRONMENT"] is False
    assert both["PKIPORTAL_CA_KEY_PASSPHRASE"] == "from a file, 16+ chars"
    assert both["PKIPORTAL_CA_KEY_PASSPHRASE_IN_ENVIRONMENT"] is True
    assert inline["PKIPORTAL_CA_KEY_PASSPHRASE_FILE"] == ""
    assert inline["PKIPORTAL_CA_KEY_PASSPHRASE_IN_ENVIRONMENT"] is True


def test_check_deploy_reports_the_passphrase(passphrase_apart, settings):
    settings.PKIPORTAL_CA_KEY_PASSPHRASE_IN_ENVIRONMENT = True
    out = StringIO()

    call_command("check", "--deploy", stdout=out, stderr=out)

    assert "pkiportal.W010" in out.getvalue()


# --- the monitoring token over plain HTTP ---------------------------------------------


def test_the_monitoring_token_allowed_over_plain_http_is_named(settings):
    settings.PKIPORTAL_MONITORING_ALLOW_HTTP = True
    (warning,) = monitoring_token_is_behind_https()
    assert warning.id == "pkiportal.W011"
    assert "PKIPORTAL_HEALTH_TOKEN" in warning.msg

    settings.PKIPORTAL_MONITORING_ALLOW_HTTP = False
    assert monitoring_token_is_behind_https() == []


def test_the_monitoring_token_is_refused_over_plain_http_unless_the_setting_says(load_settings):
    assert load_settings()["PKIPORTAL_MONITORING_ALLOW_HTTP"] is False
    assert (
        load_settings(PKIPORTAL_MONITORING_ALLOW_HTTP="true")["PKIPORTAL_MONITORING_ALLOW_HTTP"]
        is True
    )


# --- the portal's own address for people ----------------------------------------------


def test_a_site_url_that_is_not_https_is_named(settings):
    settings.PKIPORTAL_SITE_URL = "http://portal.example.com"
    (warning,) = site_url_is_https()
    assert warning.id == "pkiportal.W014"
    assert "http://portal.example.com" in warning.msg

    settings.PKIPORTAL_SITE_URL = "https://portal.example.com"
    assert site_url_is_https() == []


def test_check_deploy_names_the_embedded_defaults_http_links(settings, load_settings):
    """Unset, the site URL is the http:// base URL: fine to try the portal, named in
    production."""
    settings.PKIPORTAL_SITE_URL = load_settings()["PKIPORTAL_SITE_URL"]
    assert settings.PKIPORTAL_SITE_URL == "http://127.0.0.1:8000"
    out = StringIO()

    call_command("check", "--deploy", stdout=out, stderr=out)

    assert "pkiportal.W014" in out.getvalue()


def test_the_site_url_falls_back_to_the_base_url_and_is_kept_apart_from_it(load_settings):
    assert (
        load_settings(PKIPORTAL_BASE_URL="http://pki.example.com/")["PKIPORTAL_SITE_URL"]
        == "http://pki.example.com"
    )
    loaded = load_settings(
        PKIPORTAL_BASE_URL="http://pki.example.com",
        PKIPORTAL_SITE_URL="https://portal.example.com/",
    )
    assert loaded["PKIPORTAL_SITE_URL"] == "https://portal.example.com"
    assert loaded["PKIPORTAL_BASE_URL"] == "http://pki.example.com"


@pytest.mark.parametrize(
    "url",
    [
        "portal.example.com",
        "ftp://portal.example.com",
        "https://",
        "https://portal.example.com/pki-portal",
        "https://portal.example.com/?next=/",
        "https://portal.example.com:99999",
    ],
)
def test_a_site_url_that_is_not_an_origin_stops_start_up(url, load_settings):
    with pytest.raises(ImproperlyConfigured, match="PKIPORTAL_SITE_URL"):
        load_settings(PKIPORTAL_SITE_URL=url)
