"""Which language a page is in, and how a person chooses it (pkiportal.i18n).

These read the Content-Language Django's LocaleMiddleware answers with and the account's
stored choice, so they hold whatever the catalogue says; the German wording itself is
tested in tests/test_german.py.
"""

from __future__ import annotations

import pytest
from knox.models import AuthToken

from django.conf import settings
from django.test import Client

from tests.conftest import client_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

COOKIE = settings.LANGUAGE_COOKIE_NAME


def choose(client: Client, language: str, next_page: str = "/directory/") -> object:
    return client.post("/language/", {"language": language, "next": next_page})


def test_the_default_is_english_and_a_german_browser_gets_german(anonymous_client):
    assert anonymous_client.get("/accounts/login/")["Content-Language"] == "en"
    german = anonymous_client.get("/accounts/login/", HTTP_ACCEPT_LANGUAGE="de-DE,de;q=0.9")
    assert german["Content-Language"] == "de"
    assert 'lang="de"' in german.content.decode()
    assert "Accept-Language" in german["Vary"]


def test_a_language_we_do_not_have_falls_back_to_the_default(anonymous_client):
    response = anonymous_client.get("/accounts/login/", HTTP_ACCEPT_LANGUAGE="fr-FR,fr;q=0.9")
    assert response["Content-Language"] == "en"


def test_anyone_may_choose_on_the_sign_in_page_and_the_browser_keeps_it(anonymous_client):
    response = choose(anonymous_client, "de", "/accounts/login/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/"
    assert response.cookies[COOKIE].value == "de"
    # An English browser, but the choice made here wins.
    page = anonymous_client.get("/accounts/login/", HTTP_ACCEPT_LANGUAGE="en")
    assert page["Content-Language"] == "de"


def test_a_signed_in_persons_choice_is_kept_on_the_account_for_other_devices(employee):
    choose(client_for(employee), "de")
    employee.refresh_from_db()
    assert employee.language == "de"

    elsewhere = client_for(employee)  # another browser: no cookie, an English one
    assert elsewhere.get("/certificates/", HTTP_ACCEPT_LANGUAGE="en")["Content-Language"] == "de"


def test_choosing_the_browsers_language_again_forgets_the_choice(employee):
    employee.language = "de"
    employee.save()
    client = client_for(employee)
    client.cookies[COOKIE] = "de"

    response = choose(client, "")

    employee.refresh_from_db()
    assert employee.language == ""
    assert response.cookies[COOKIE].value == ""  # deleted
    assert client.get("/certificates/", HTTP_ACCEPT_LANGUAGE="en")["Content-Language"] == "en"


def test_a_session_still_in_its_second_step_chooses_for_the_browser_only(officer):
    client = Client()
    client.force_login(officer)  # an officer needs a second factor, not yet confirmed

    response = choose(client, "de", "/account/two-factor/setup/")

    assert response.status_code == 302
    assert response.cookies[COOKIE].value == "de"
    officer.refresh_from_db()
    assert officer.language == ""


@pytest.mark.parametrize(
    "language", ["fr", "xx", "deutsch", "en\n", "de;q=1", "<script>", "a" * 300]
)
def test_a_language_not_offered_is_refused_and_nothing_kept(employee, language):
    client = client_for(employee)
    response = choose(client, language)

    assert response.status_code == 400
    assert COOKIE not in response.cookies
    employee.refresh_from_db()
    assert employee.language == ""


def test_a_regional_variant_is_taken_as_its_language(employee):
    choose(client_for(employee), "de-AT")
    employee.refresh_from_db()
    assert employee.language == "de"


@pytest.mark.parametrize(
    "next_page", ["https://evil.example/", "//evil.example/", "javascript:alert(1)", ""]
)
def test_it_goes_back_only_to_a_page_of_ours(anonymous_client, next_page):
    response = choose(anonymous_client, "de", next_page)
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_it_needs_a_post_with_the_csrf_token(employee):
    client = client_for(employee)
    assert client.get("/language/", {"language": "de"}).status_code == 405

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(employee)
    assert strict.post("/language/", {"language": "de"}).status_code == 403
    employee.refresh_from_db()
    assert employee.language == ""


def test_the_accounts_choice_comes_before_cookie_and_browser(employee):
    employee.language = "de"
    employee.save()
    client = client_for(employee)
    client.cookies[COOKIE] = "en"
    assert client.get("/", HTTP_ACCEPT_LANGUAGE="en")["Content-Language"] == "de"


def test_a_stored_language_no_longer_offered_is_ignored(employee):
    employee.language = "fr"
    employee.save()
    client = client_for(employee)
    assert client.get("/", HTTP_ACCEPT_LANGUAGE="de")["Content-Language"] == "de"


def test_the_api_by_token_follows_accept_language(employee):
    _, token = AuthToken.objects.create(user=UserFactory(username="script", language="en"))
    response = Client().get(
        "/api/v1/certificates/",
        HTTP_AUTHORIZATION=f"Token {token}",
        HTTP_ACCEPT_LANGUAGE="de",
    )
    assert response.status_code == 200
    assert response["Content-Language"] == "de"


def test_every_page_offers_the_languages_in_their_own_names(anonymous_client, employee):
    page = anonymous_client.get("/accounts/login/").content.decode()
    assert 'action="/language/"' in page
    assert '<option value="" selected>' in page  # nothing chosen: the browser's
    assert '<option value="de" lang="de">Deutsch</option>' in page
    assert '<option value="en" lang="en">English</option>' in page

    employee.language = "de"
    employee.save()
    page = client_for(employee).get("/certificates/").content.decode()
    assert '<option value="de" lang="de" selected>Deutsch</option>' in page
    # Named in English too, for whoever cannot read German.
    assert '<span lang="en">Language</span>' in page


@pytest.mark.parametrize(
    "path", ["/pki/issuing.crl", "/pki/issuing.crt", "/pki/root-chain.p7b", "/health/live/"]
)
def test_answers_for_machines_are_the_same_in_every_language(anonymous_client, hierarchy, path):
    """No Vary: Accept-Language on CRLs and CA certificates: an HTTP cache or CDN keeps
    one copy for every client, whatever language its user reads."""
    response = anonymous_client.get(path, HTTP_ACCEPT_LANGUAGE="de")
    assert response.status_code == 200
    assert "Accept-Language" not in response.get("Vary", "")
    assert "Content-Language" not in response


def test_the_repositorys_page_is_for_people_and_translated(anonymous_client, hierarchy):
    response = anonymous_client.get("/pki/", HTTP_ACCEPT_LANGUAGE="de")
    assert response["Content-Language"] == "de"
    assert "Accept-Language" in response["Vary"]
