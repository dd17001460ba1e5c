"""The portal in German, as each role sees it: every page answers in German, and no text
that has a German translation is shown in English. That catches a text left unmarked,
a message made in English once at import time (gettext where gettext_lazy was needed),
and one turned into English before it reached the page."""

from __future__ import annotations

import html
import re

import pytest

from django.urls import reverse
from django.utils import translation
from django.utils.translation import trans_real

from enrollment import services
from enrollment.models import CertificateTemplate, KeyAlgorithm
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

GERMAN = {"HTTP_ACCEPT_LANGUAGE": "de-DE,de;q=0.9,en;q=0.5"}


def english_with_a_german_translation() -> list[str]:
    """Sentences of the German catalogue (ours and Django's) long enough not to occur by
    chance, whose German differs: seen on a German page, they are English left over."""
    catalogue = trans_real.translation("de")._catalog  # type: ignore[attr-defined]
    return sorted(
        msgid
        for msgid, german in catalogue.items()
        if isinstance(msgid, str)
        and msgid != german
        and len(msgid) >= 16
        and " " in msgid
        and not re.search(r"[%{}<>]", msgid)
    )


def shown_text(page: str) -> str:
    page = re.sub(r"<(script|style|pre|code)\b.*?</\1>", " ", page, flags=re.S | re.I)
    page = re.sub(r"<[^>]+>", " ", page)
    return " ".join(html.unescape(page).split())


def english_left(client, url: str) -> list[str]:
    response = client.get(url, **GERMAN)
    assert response.status_code == 200, (url, response.status_code)
    assert response["Content-Language"] == "de", url
    text = shown_text(response.content.decode())
    return [msgid for msgid in english_with_a_german_translation() if msgid in text]


@pytest.fixture
def issued(hierarchy, template, employee):
    certificate, _bundle = services.certificate_issue_with_server_key(
        template=template("smime-signing"),
        owner=employee,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password="correct horse battery staple",
    )
    return certificate


def test_the_catalogue_is_there_and_german():
    with translation.override("de"):
        assert translation.gettext("Sign in") == "Anmelden"
    assert len(english_with_a_german_translation()) > 200


@pytest.mark.parametrize("url", ["/", "/accounts/login/", "/pki/"])
def test_anonymous_pages_are_german(anonymous_client, hierarchy, url):
    assert english_left(anonymous_client, url) == []


def test_the_employees_pages_are_german(employee, issued):
    client = client_for(employee)
    urls = [
        "/",
        reverse("enrollment:enroll-index"),
        reverse("enrollment:enroll", args=["smime-signing"]),
        reverse("enrollment:enroll", args=["smime-dual-use"]),
        reverse("enrollment:certificate-list"),
        reverse("enrollment:certificate-detail", args=[issued.pk]),
        reverse("enrollment:token-list"),
        reverse("enrollment:help-mail-clients"),
        reverse("accounts:mfa-overview"),
        reverse("directory:search") + "?q=Alice",
        reverse("directory:certificate", args=[issued.fingerprint_sha256]),
    ]
    assert {url: english_left(client, url) for url in urls} == dict.fromkeys(urls, [])


def test_the_officers_pages_are_german(officer, issued):
    client = client_for(officer)
    urls = [
        reverse("ra:console"),
        reverse("enrollment:ra-requests"),
        reverse("ra:certificates") + "?q=alice",
        reverse("ra:audit"),
        reverse("ra:request-history"),
        reverse("ra:recovery-list"),
        reverse("ra:agents"),
        reverse("ra:rollouts"),
        reverse("ra:rollout-new"),
        reverse("ra:mailboxes"),
        reverse("ra:leavers"),
    ]
    assert {url: english_left(client, url) for url in urls} == dict.fromkeys(urls, [])


def test_a_page_not_found_is_german(employee):
    response = client_for(employee).get("/certificates/999999/", **GERMAN)
    assert response.status_code == 404
    assert response["Content-Language"] == "de"
    assert 'lang="de"' in response.content.decode()


def test_a_reason_mid_sentence_is_small_in_english_and_a_capitalised_noun_in_german(
    employee, issued
):
    services.certificate_revoke(certificate=issued, reason="keyCompromise", actor=employee)
    client = client_for(employee)
    url = reverse("enrollment:certificate-detail", args=[issued.pk])

    assert "(key compromise)" in client.get(url).content.decode()
    german = client.get(url, **GERMAN).content.decode()
    assert "(Schlüssel kompromittiert)" in german
    assert "(schlüssel kompromittiert)" not in german


def test_a_state_mid_sentence_starts_small_in_both(hierarchy, employee, approval):
    services.request_submit(
        requester=employee,
        template=approval("smime-signing"),
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    client = client_for(employee)
    assert ": waiting for approval." in client.get("/").content.decode()
    assert ": wartet auf Genehmigung." in client.get("/", **GERMAN).content.decode()


def test_a_seeded_description_is_ours_until_edited(employee, template):
    client = client_for(employee)
    url = reverse("enrollment:enroll", args=["smime-signing"])
    assert "Der Schlüssel wird nie archiviert" in client.get(url, **GERMAN).content.decode()

    CertificateTemplate.objects.filter(slug="smime-signing").update(
        description="Für E-Mails an Behörden."
    )
    page = client.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Für E-Mails an Behörden." in page  # the organisation's words, as written
