"""TLS and session settings: the redirect to HTTPS spares the repository and /health/,
HSTS can be completed from the environment, and a sign-in lasts a working day."""

from __future__ import annotations

from io import StringIO

import pytest

from django.core.management import call_command
from django.test import Client

from tests.factories import UserFactory

REPOSITORY = ["/pki/issuing.crl", "/pki/issuing.crt", "/pki/root.crt", "/pki/issuing-chain.p7b"]


@pytest.mark.parametrize("url", REPOSITORY)
def test_the_https_redirect_spares_the_repository(url, settings, hierarchy):
    """Certificates carry http:// CRL and CA URLs for life; many fetchers never follow a
    redirect, and a CRL fetched over TLS may be needed to check that TLS certificate."""
    settings.SECURE_SSL_REDIRECT = True

    response = Client().get(url)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/")


@pytest.mark.django_db
def test_the_https_redirect_spares_health_but_not_the_pages(settings):
    settings.SECURE_SSL_REDIRECT = True
    client = Client()

    assert client.get("/health/").status_code in (200, 503)
    assert client.get("/health/live/").status_code in (200, 503)
    for page in ("/", "/accounts/login/", "/directory/", "/api/v1/certificates/"):
        redirected = client.get(page)
        assert (redirected.status_code, redirected["Location"]) == (
            301,
            f"https://testserver{page}",
        )
    assert client.get("/pki-not-the-repository/").status_code == 301
    assert client.get("/health/live/extra").status_code == 301


def test_hsts_and_session_lifetime_come_from_the_environment(load_settings):
    defaults = load_settings()
    assert defaults["SESSION_COOKIE_AGE"] == 8 * 3600
    assert defaults["SESSION_EXPIRE_AT_BROWSER_CLOSE"] is True
    assert defaults["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is False

    configured = load_settings(
        SECURE_HSTS_INCLUDE_SUBDOMAINS="true",
        SECURE_HSTS_PRELOAD="true",
        SESSION_COOKIE_AGE="3600",
        SESSION_EXPIRE_AT_BROWSER_CLOSE="false",
    )
    assert configured["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert configured["SECURE_HSTS_PRELOAD"] is True
    assert configured["SESSION_COOKIE_AGE"] == 3600
    assert configured["SESSION_EXPIRE_AT_BROWSER_CLOSE"] is False


def test_check_deploy_can_be_clean_of_hsts_warnings(settings):
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = True
    out = StringIO()

    call_command("check", "--deploy", stdout=out, stderr=out)

    assert "security.W005" not in out.getvalue()
    assert "security.W021" not in out.getvalue()


@pytest.mark.django_db
def test_a_sign_in_ends_with_the_browser_and_after_a_working_day(client):
    user = UserFactory(username="olivia")
    user.set_password("a long enough passphrase")
    user.save()

    client.post("/accounts/login/", {"username": "olivia", "password": "a long enough passphrase"})

    cookie = client.cookies["sessionid"]
    assert cookie["expires"] == ""  # a browser-session cookie
    assert client.session.get_expiry_age() == 8 * 3600
