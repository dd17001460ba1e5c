"""API tokens under the attestation policy (PKIPORTAL_WEBAUTHN_ATTESTATION_*): a token
records what confirmed the second factor it was minted with, and gives its owner's role
no power when that was a security key of no approved model (or is not known), as their
session would reach only /account/; an app, a backup code or an approved key count.
The relying party, the vendor and ``policy`` come from tests/attestation/conftest.py."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounts import mfa
from accounts.models import SecondFactorKind
from enrollment.models import ApiToken, AuditEvent
from tests.attestation.test_passkey_attestation import (
    OTHER_MODEL,
    approved_key,
    register_through_service,
)
from tests.enrollment.api_tools import CERTIFICATES, PENDING, TOKEN, token_client
from tests.factories import UserFactory
from tests.second_factor import authenticator, code, verified_login
from tests.test_passkeys import browser, password_only, sign_in_with_key
from tests.webauthn_authenticator import MODEL_AAGUID, SoftKey, aaguid_text

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"  # tests/factories.py
TOKENS_PAGE = "/account/tokens/"


def with_token(clear: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {clear}")
    return client


def minted_in_session(client: Any, label: str = "ci") -> tuple[APIClient, ApiToken]:
    """POST /api/v1/auth/token/ with the browser's session; the token as a script uses it."""
    answer = client.post(TOKEN, {"label": label}, content_type="application/json")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    return with_token(body["token"]), ApiToken.objects.get(auth_token__token_key=body["prefix"])


def minted_with_basic(user: Any, otp: str) -> tuple[APIClient, ApiToken]:
    credentials = base64.b64encode(f"{user.username}:{PASSWORD}".encode()).decode()
    answer = APIClient().post(TOKEN, HTTP_AUTHORIZATION=f"Basic {credentials}", HTTP_X_OTP_CODE=otp)
    assert answer.status_code == 200, answer.content
    body = answer.json()
    return with_token(body["token"]), ApiToken.objects.get(auth_token__token_key=body["prefix"])


def signed_in_with(user: Any, key: SoftKey) -> Any:
    client = password_only(user)
    assert sign_in_with_key(client, key).status_code == 200
    return client


def old_key_token(user: Any) -> tuple[APIClient, ApiToken]:
    """A key added while the policy was off (so it proved no model), a session signed in
    with it, and a token minted there: all before the policy is switched on."""
    key = SoftKey()
    register_through_service(user, key)
    return minted_in_session(signed_in_with(user, key))


def refused_for_its_key(answer: Any) -> None:
    assert answer.status_code == 403
    body = answer.json()
    assert body["missing"] == "approved_security_key_token"
    assert "approved model" in body["detail"]
    assert "/account/tokens/" in body["detail"]
    assert body["url"] == TOKENS_PAGE


# --- what a token records ------------------------------------------------------------------


def test_a_token_records_the_key_it_was_minted_with_and_the_event_says_so(officer):
    _client, named = old_key_token(officer)

    assert named.second_factor
    assert (named.second_factor_kind, named.second_factor_key_model) == ("security_key", "")
    detail = AuditEvent.objects.filter(action="api_token.create").last().detail
    assert detail["second_factor_kind"] == "security_key"


def test_a_token_records_an_approved_key_with_its_model(officer, vendor, policy):
    policy()
    key = approved_key(vendor)
    register_through_service(officer, key)

    _client, named = minted_in_session(signed_in_with(officer, key))

    assert named.second_factor_kind == SecondFactorKind.ATTESTED_KEY
    assert named.second_factor_key_model == aaguid_text(MODEL_AAGUID)
    detail = AuditEvent.objects.filter(action="api_token.create").last().detail
    assert detail["aaguid"] == aaguid_text(MODEL_AAGUID)


def test_tokens_from_the_page_record_it_as_well(officer):
    key = SoftKey()
    register_through_service(officer, key)
    client = signed_in_with(officer, key)

    page = client.post("/account/tokens/new/", {"label": "laptop", "lifetime_days": 7})

    assert page.status_code == 200
    assert ApiToken.objects.get().second_factor_kind == SecondFactorKind.SECURITY_KEY


def test_http_basic_records_an_app_s_code_or_a_backup_code(officer):
    _device, seed = authenticator(officer)
    [backup, *_rest] = mfa._replace_backup_codes(officer)

    _app, by_app = minted_with_basic(officer, code(seed))
    _backup, by_backup = minted_with_basic(officer, backup)

    assert by_app.second_factor_kind == SecondFactorKind.APP
    assert by_backup.second_factor_kind == SecondFactorKind.BACKUP_CODE


def test_a_single_sign_on_the_provider_vouched_for_counts_as_for_its_session(officer, policy):
    register_through_service(officer, SoftKey())  # an old key, not used for this sign-in
    policy()
    client = browser()
    client.force_login(officer)
    session = client.session
    session[mfa.SSO_VERIFIED] = True  # as mfa.note_sign_in leaves a trusted sign-on
    session.save()

    api, named = minted_in_session(client)

    assert named.second_factor_kind == SecondFactorKind.SINGLE_SIGN_ON
    assert api.get(PENDING).status_code == 200


def test_an_employee_s_password_only_token_records_no_second_factor(employee):
    credentials = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert APIClient().post(TOKEN, HTTP_AUTHORIZATION=f"Basic {credentials}").status_code == 200
    named = ApiToken.objects.get()
    assert (named.second_factor, named.second_factor_kind) == (False, "")


# --- role power under the policy ----------------------------------------------------------------


@pytest.mark.parametrize(
    "holder",
    [
        pytest.param(lambda officer: officer, id="ra-officer"),
        pytest.param(lambda officer: UserFactory(is_staff=True, is_superuser=True), id="superuser"),
    ],
)
def test_a_token_minted_with_a_key_of_no_approved_model_has_no_role_power_under_the_policy(
    officer, policy, holder
):
    user = holder(officer)
    api, _named = old_key_token(user)
    assert api.get(PENDING).status_code == 200  # the policy off: as before

    policy()

    refused_for_its_key(api.get(PENDING))
    refused_for_its_key(api.get(CERTIFICATES))  # an officer's view of the list, as without 2FA


def test_switching_the_policy_off_gives_the_power_back(officer, policy):
    api, _named = old_key_token(officer)
    policy()
    refused_for_its_key(api.get(PENDING))

    policy(None)

    assert api.get(PENDING).status_code == 200


def test_a_token_minted_with_an_approved_key_keeps_its_power(officer, vendor, policy):
    policy()
    key = approved_key(vendor)
    register_through_service(officer, key)

    api, _named = minted_in_session(signed_in_with(officer, key))

    assert api.get(PENDING).status_code == 200


def test_a_model_taken_off_the_list_stops_its_tokens_as_its_sessions(officer, vendor, policy):
    policy(aaguids=(MODEL_AAGUID,))
    key = approved_key(vendor)
    register_through_service(officer, key)
    api, _named = minted_in_session(signed_in_with(officer, key))
    assert api.get(PENDING).status_code == 200

    policy(aaguids=(OTHER_MODEL,))

    refused_for_its_key(api.get(PENDING))


def test_an_app_s_code_mints_a_token_with_power_whatever_keys_the_person_has(officer, policy):
    """The policy decides which keys count, not that a key must be used: as
    mfa.session_needs_approved_key for a session signed in with the app."""
    register_through_service(officer, SoftKey())  # an old key of no approved model
    _device, seed = authenticator(officer)
    policy()

    by_basic, _named = minted_with_basic(officer, code(seed))
    in_session, _named = minted_in_session(verified_login(browser(), officer))

    assert by_basic.get(PENDING).status_code == 200
    assert in_session.get(PENDING).status_code == 200


def test_a_backup_code_mints_a_token_with_power(officer, policy):
    authenticator(officer)
    [backup, *_rest] = mfa._replace_backup_codes(officer)
    policy()

    api, _named = minted_with_basic(officer, backup)

    assert api.get(PENDING).status_code == 200


def test_a_token_from_before_the_record_counts_only_while_the_policy_is_off(officer, policy):
    """Minted with a second factor before the portal recorded which: it may have been a
    key of no approved model, so the policy does not count it."""
    api = token_client(officer)
    ApiToken.objects.update(second_factor=True, second_factor_kind="")
    assert api.get(PENDING).status_code == 200

    policy()

    refused_for_its_key(api.get(PENDING))


def test_a_token_minted_without_a_second_factor_is_still_told_so_under_the_policy(officer, policy):
    api = token_client(officer)
    ApiToken.objects.update(second_factor=False, second_factor_kind="")
    policy()

    refused = api.get(PENDING)

    assert refused.status_code == 403
    assert refused.json()["missing"] == "second_factor_token"


def test_an_employee_s_token_minted_with_such_a_key_keeps_employee_power_under_everyone(
    employee, policy
):
    api, named = old_key_token(employee)
    assert named.second_factor_kind == SecondFactorKind.SECURITY_KEY
    policy("everyone")

    listed = api.get(CERTIFICATES)

    assert listed.status_code == 200
    assert api.get(PENDING).status_code == 403  # no officer: as before, not for the key
    assert "missing" not in api.get(PENDING).json()


def test_the_role_check_reads_the_minting_from_the_token_s_own_query(officer, policy):
    _device, seed = authenticator(officer)
    policy()
    api, _named = minted_with_basic(officer, code(seed))
    api.get(PENDING)  # the hour's last-use write out of the way

    with CaptureQueriesContext(connection) as captured:
        assert api.get(PENDING).status_code == 200

    reads = [q["sql"] for q in captured if "apitoken" in q["sql"] and "SELECT" in q["sql"]]
    assert len(reads) == 1
    assert "token_key" in reads[0]


# --- the tokens page -----------------------------------------------------------------------------


def note(token: ApiToken) -> bytes:
    return f'id="token-{token.pk}-no-role-power"'.encode()


def test_the_tokens_page_says_which_tokens_have_no_role_power_and_how_to_fix_it(
    officer, vendor, policy
):
    _old_api, old = old_key_token(officer)
    policy()
    key = approved_key(vendor)
    register_through_service(officer, key)
    client = signed_in_with(officer, key)
    _new_api, new = minted_in_session(client, "after the new key")

    page = client.get(TOKENS_PAGE)

    assert page.status_code == 200
    assert note(old) in page.content
    assert b"has not proved an approved model" in page.content
    assert b'href="/account/"' in page.content
    assert note(new) not in page.content


def test_the_tokens_page_says_nothing_of_it_with_the_policy_off(officer):
    _api, old = old_key_token(officer)
    client = verified_login(browser(), officer)
    assert note(old) not in client.get(TOKENS_PAGE).content


def test_the_tokens_page_names_a_token_minted_without_a_second_factor(officer):
    token_client(officer)
    named = ApiToken.objects.get()
    ApiToken.objects.update(second_factor=False)

    page = verified_login(browser(), officer).get(TOKENS_PAGE)

    assert note(named) in page.content
    assert b"created without a second factor" in page.content


def test_an_employee_s_tokens_page_has_no_such_note(employee, policy):
    _api, named = old_key_token(employee)
    policy("everyone")
    ApiToken.objects.update(second_factor=False)  # nor for a token without a second factor
    authenticator(employee)  # the key would open only /account/ under everyone

    page = verified_login(browser(), employee).get(TOKENS_PAGE)

    assert page.status_code == 200
    assert note(named) not in page.content


def test_the_admin_shows_what_a_token_was_minted_with(officer, admin_client_):
    _api, named = old_key_token(officer)

    page = admin_client_.get(f"/admin/enrollment/apitoken/{named.pk}/change/")

    assert page.status_code == 200
    assert b"security key, model not proved" in page.content
