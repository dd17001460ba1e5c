"""The API's error bodies in the caller's language (Accept-Language), codes and fields unchanged.

Needs the compiled German catalogue (locale/de/LC_MESSAGES/django.mo, `make messages`).
"""

from __future__ import annotations

import pytest

from enrollment.models import Certificate
from tests.enrollment.api_tools import certificate_url, token_client
from tests.enrollment.tools import issue

pytestmark = pytest.mark.django_db


@pytest.fixture
def mine(hierarchy, template, employee, ec_p256_key) -> Certificate:
    return issue(employee, template("smime-signing"), ec_p256_key)


def _post(user, url: str, body: dict[str, str], language: str):
    return token_client(user).post(url, body, format="json", HTTP_ACCEPT_LANGUAGE=language)


def test_a_serializer_refusal_is_worded_in_german_with_the_same_field_and_code(employee, mine):
    url = f"{certificate_url(mine.serial)}revoke/"
    body = {"reason": "privilegeWithdrawn"}  # an officer's reason, not a holder's

    english = _post(employee, url, body, "en")
    german = _post(employee, url, body, "de")

    assert english.status_code == german.status_code == 400
    assert set(english.json()) == set(german.json()) == {"reason"}
    assert english.data["reason"][0].code == german.data["reason"][0].code
    assert "is for RA officers" in english.json()["reason"][0]
    said = german.json()["reason"][0]
    assert "ist RA-Officers vorbehalten" in said, said
    assert "privilegeWithdrawn" in said  # the API's value is not translated
    assert german["Content-Language"] == "de"
    mine.refresh_from_db()
    assert mine.status == Certificate.Status.VALID


def test_a_domain_refusal_is_worded_in_german_under_the_same_field(employee, mine):
    # A signing key is never archived: PolicyViolation(field="certificate"), raised with a
    # lazy message and translated by the API's exception handler.
    url = f"{certificate_url(mine.serial)}recover/"
    body = {"reason": "Lost laptop."}

    english = _post(employee, url, body, "en")
    german = _post(employee, url, body, "de")

    assert english.status_code == german.status_code == 400
    assert set(english.json()) == set(german.json()) == {"certificate"}
    assert "was not archived" in english.json()["certificate"][0]
    said = german.json()["certificate"][0]
    assert "nicht archiviert" in said, said
