"""The account page of a session held to it (accounts.mfa.session_restriction): signed in
with a key of no approved model under the attestation policy, or with anything but a key
under security keys only. It offers only what such a session reaches (confirming with a
key, adding or removing one, signing out); everything else says in a line what opens it,
instead of a button that would only bring the person back to /account/."""

from __future__ import annotations

import re

import pytest

from django.urls import resolve

from accounts.middleware import APPROVED_KEY_PAGES
from tests.attestation.test_keys_only import signed_in_with_code, with_app_and_key
from tests.attestation.test_passkey_attestation import (
    an_employee_with_an_old_key_becomes_an_officer,
    approved_key,
)
from tests.second_factor import authenticator, code
from tests.test_passkeys import add_key, password_only, sign_in_confirm, sign_in_with_key

pytestmark = pytest.mark.django_db

HELD_BACK = (
    "Replacing or removing your authenticator app",
    "backup codes",
    "Signing out everywhere else",
    "Your API tokens",
)
# Where the page's buttons, links and scripts lead: href, a form's action, passkey.js's URLs.
TARGETS = re.compile(r'(?:href|action|data-options-url|data-url)="(/[^"#?]*)')


def main_of(page) -> str:
    assert page.status_code == 200
    return page.content.decode().split('<main id="content"', 1)[1].split("</main>", 1)[0]


def leads_back(client, main: str) -> list[str]:
    """What the page offers that the middleware would answer by sending back to /account/."""
    bounced = []
    for path in set(TARGETS.findall(main)):
        if resolve(path).view_name not in APPROVED_KEY_PAGES:
            bounced.append(path)
        elif path != "/account/" and client.get(path).get("Location") == "/account/":
            bounced.append(path)  # a page the reason names as reachable, checked for real
    return sorted(bounced)


def offers_only_what_it_reaches(client, until: str) -> str:
    main = main_of(client.get("/account/"))
    assert leads_back(client, main) == []
    for reason in HELD_BACK:
        assert f"{reason} open" in main, reason
    assert f"Signing out everywhere else opens once {until}." in main
    assert 'data-passkey="register"' in main  # adding a key
    assert "Sign out everywhere else</button>" not in main
    assert "backup codes</button>" not in main
    assert "Replace the app" not in main
    return main


def offers_everything(client) -> None:
    main = main_of(client.get("/account/"))
    assert "data-held-back" not in main
    assert "Sign out everywhere else</button>" in main
    assert "backup codes</button>" in main
    assert "Replace the app (a new phone)" in main
    assert "/account/tokens/" in main


def test_a_key_of_no_approved_model_is_offered_only_what_opens_the_session(
    employee, vendor, policy
):
    old = an_employee_with_an_old_key_becomes_an_officer(employee, policy)
    _device, seed = authenticator(employee)  # an app, and (below) backup codes, to be held back
    client = password_only(employee)
    assert sign_in_with_key(client, old).json()["redirect"] == "/account/"
    assert client.post("/account/two-factor/backup-codes/")["Location"] == "/account/"

    main = offers_only_what_it_reaches(
        client, "you confirm with a security key of an approved model, or add one (below)"
    )

    assert 'data-passkey="authenticate"' in main  # the present key proves adding one
    assert re.search(r'action="/account/two-factor/security-keys/\d+/remove/"', main)
    assert "To add or remove a key without a code, confirm" in main  # no "make backup codes"
    added = add_key(client, approved_key(vendor), current_code=code(seed))
    assert added.status_code == 200, added.content
    offers_everything(client)


def test_a_code_where_only_a_key_will_do_is_offered_only_what_opens_the_session(officer, keys_only):
    keys_only("roles")
    seed, key = with_app_and_key(officer)
    client, _answer = signed_in_with_code(officer, code(seed))

    main = offers_only_what_it_reaches(
        client, "you confirm with one of your security keys, or add one (below)"
    )

    assert 'data-passkey="authenticate"' in main
    assert sign_in_confirm(client, key).status_code == 200
    offers_everything(client)


def test_an_app_alone_where_only_a_key_will_do_is_told_to_add_one(officer, keys_only):
    keys_only("roles")
    _device, seed = authenticator(officer)
    client, _answer = signed_in_with_code(officer, code(seed))

    main = offers_only_what_it_reaches(client, "you add a security key (below)")

    assert 'data-passkey="authenticate"' not in main  # no key to confirm with
