"""Security keys (WebAuthn) as a second factor: who may add, use and remove one; the
sign-in's second step with one; hostile answers (replays, other origins and relying
parties, copies of a key, malformed JSON) refused with a 4xx and audited; the API for
people with only a key; the deploy check."""

from __future__ import annotations

import json
from datetime import timedelta
from importlib import import_module
from typing import Any

import pytest
import time_machine

from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from django.utils import timezone

from accounts import mfa, passkeys
from accounts.models import BackupCodeDevice, WebAuthnDevice
from enrollment.models import AuditEvent
from tests.factories import UserFactory
from tests.markers import needs_row_locks
from tests.second_factor import authenticator, code, verified_login
from tests.webauthn_authenticator import ORIGIN, RP_ID, SoftKey, b64url

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"  # tests/factories.py
REGISTER_OPTIONS = "/account/two-factor/security-keys/register/options/"
REGISTER = "/account/two-factor/security-keys/register/"
AUTH_OPTIONS = "/account/two-factor/security-keys/authenticate/options/"
AUTHENTICATE = "/account/two-factor/security-keys/authenticate/"


def browser(**options: Any) -> Client:
    """A browser at the relying party's own origin (ORIGIN): elsewhere the pages point
    there instead of offering keys (accounts.passkeys.origin_elsewhere)."""
    return Client(HTTP_HOST="localhost:8000", **options)


@pytest.fixture(autouse=True)
def _relying_party(settings):
    settings.PKIPORTAL_WEBAUTHN_RP_ID = RP_ID
    settings.PKIPORTAL_WEBAUTHN_ORIGINS = [ORIGIN]


def post_json(client: Client, url: str, body: Any) -> Any:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(url, data=data, content_type="application/json")


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def add_key(client: Client, key: SoftKey, *, current_code: str = "", name: str = "Blue key"):
    """The page's script: options (name, proof), then the key's answer."""
    options = post_json(client, REGISTER_OPTIONS, {"name": name, "current_code": current_code})
    assert options.status_code == 200, options.content
    return post_json(client, REGISTER, {"credential": key.create(options.json())})


def key_for(user) -> SoftKey:
    """A key registered for the person through the service (the views are tested apart)."""
    key = SoftKey()
    session = import_module(django_settings.SESSION_ENGINE).SessionStore()
    options = passkeys.registration_options(session=session, user=user, name="Key")
    passkeys.register(
        session=session, user=user, credential=key.create(json.loads(options)), source_address=None
    )
    mfa.forget_state(user)
    return key


def without_backup_codes(user) -> None:
    """As someone who registered their keys before keys came with backup codes."""
    BackupCodeDevice.objects.filter(user=user).delete()
    mfa.forget_state(user)


def password_only(user) -> Client:
    client = browser()
    client.force_login(user)
    mfa.forget_state(user)
    return client


def sign_in_with_key(client: Client, key: SoftKey, **kwargs: Any):
    options = post_json(client, AUTH_OPTIONS, {})
    assert options.status_code == 200, options.content
    return post_json(
        client,
        AUTHENTICATE,
        {"credential": key.get(options.json(), **kwargs), "next": "/ra/requests/"},
    )


# --- adding a key -------------------------------------------------------------------------


def test_an_officer_adds_a_key_with_a_current_code_and_is_mailed(
    officer, mailoutbox, django_capture_on_commit_callbacks
):
    _device, seed = authenticator(officer)
    mfa._replace_backup_codes(officer)  # the app's set-up made them
    digests = mfa.backup_codes(officer).digests
    client = verified_login(browser(), officer)
    key = SoftKey()

    with django_capture_on_commit_callbacks(execute=True):
        added = add_key(client, key, current_code=code(seed))

    assert added.status_code == 200
    assert added.json()["redirect"]
    # Backup codes were there already: none made, the old ones kept.
    assert "backup_codes" not in added.json()
    assert mfa.backup_codes(officer).digests == digests
    assert events("mfa.device_add")[-1].detail["backup_codes"] == 0
    device = WebAuthnDevice.objects.get(user=officer)
    assert device.name == "Blue key"
    assert device.transports == ["usb"]  # the unknown transport dropped
    assert device.credential_id == b64url(key.credential_id)
    assert [e.detail["kind"] for e in events("mfa.device_add")] == ["webauthn"]
    assert "security key was added" in mailoutbox[-1].subject


def test_adding_a_key_takes_a_current_code_when_there_is_a_second_factor(officer):
    _device, seed = authenticator(officer)
    client = verified_login(browser(), officer)

    missing = post_json(client, REGISTER_OPTIONS, {"name": "Key"})
    wrong = post_json(client, REGISTER_OPTIONS, {"name": "Key", "current_code": "000000"})

    assert missing.status_code == 400
    assert wrong.status_code == 400
    assert wrong.json()["field"] == "current_code"
    assert not WebAuthnDevice.objects.exists()
    assert events("mfa.verify")[-1].outcome == "failure"


def test_adding_a_key_takes_a_recent_sign_in(officer):
    _device, seed = authenticator(officer)
    client = verified_login(browser(), officer)
    later = timezone.now() + timedelta(hours=2)
    with time_machine.travel(later, tick=False):
        answer = post_json(client, REGISTER_OPTIONS, {"name": "Key", "current_code": code(seed)})
    assert answer.status_code == 403
    assert "/accounts/login/" in answer.json()["url"]


def test_a_session_that_has_not_done_its_second_step_adds_no_key(officer):
    authenticator(officer)
    client = password_only(officer)
    answer = post_json(client, REGISTER_OPTIONS, {"name": "Key", "current_code": "123456"})
    # The middleware sends it to the second step: adding a key is not a view of it.
    assert answer.status_code == 302
    assert answer["Location"].startswith("/account/two-factor/verify/")
    assert not WebAuthnDevice.objects.exists()


def test_anonymous_reaches_none_of_the_key_endpoints():
    client = browser()
    for url in (REGISTER_OPTIONS, REGISTER, AUTH_OPTIONS, AUTHENTICATE):
        answer = post_json(client, url, {})
        assert answer.status_code == 302
        assert answer["Location"].startswith("/accounts/login/")


def test_the_add_page_is_for_a_recent_verified_sign_in_only(officer):
    url = "/account/two-factor/security-keys/add/"
    assert browser().get(url)["Location"].startswith("/accounts/login/")
    authenticator(officer)
    assert password_only(officer).get(url)["Location"].startswith("/account/two-factor/verify/")
    client = verified_login(browser(), officer)
    assert b'name="current_code"' in client.get(url).content
    later = timezone.now() + timedelta(hours=2)
    with time_machine.travel(later, tick=False):
        assert client.get(url)["Location"].startswith("/accounts/login/")


def test_the_endpoints_take_only_post(employee):
    client = verified_login(browser(), employee)
    for url in (REGISTER_OPTIONS, REGISTER, AUTH_OPTIONS, AUTHENTICATE):
        assert client.get(url).status_code == 405


def test_csrf_is_checked(employee):
    client = browser(enforce_csrf_checks=True)
    verified_login(client, employee)
    for url in (REGISTER_OPTIONS, REGISTER, AUTH_OPTIONS, AUTHENTICATE):
        assert post_json(client, url, {"name": "Key"}).status_code == 403


def test_an_employee_without_a_second_factor_adds_a_key_as_their_first(employee):
    client = verified_login(browser(), employee)
    added = add_key(client, SoftKey())
    assert added.status_code == 200
    mfa.forget_state(employee)
    assert mfa.state_for(employee).enrolled
    assert mfa.state_for(employee).passkeys


def test_an_officer_sets_up_a_key_instead_of_an_app_at_the_first_sign_in(officer):
    client = password_only(officer)
    setup = client.get("/account/two-factor/setup/?next=/ra/requests/")
    assert b"/account/two-factor/security-keys/add/?next=" in setup.content
    page = client.get("/account/two-factor/security-keys/add/?next=/ra/requests/")
    assert page.status_code == 200
    assert b'data-passkey="register"' in page.content
    assert b"js/passkey.js" in page.content

    added = add_key(client, SoftKey())

    assert added.status_code == 200
    assert client.get("/ra/requests/").status_code == 200


def test_a_key_registered_already_is_refused(employee):
    client = verified_login(browser(), employee)
    key = SoftKey()
    assert add_key(client, key).status_code == 200
    options = post_json(client, REGISTER_OPTIONS, {"name": "Again"})
    # With only a key, a change needs a key confirmed just now.
    assert options.status_code == 400
    assert sign_in_confirm(client, key).status_code == 200
    again = post_json(client, REGISTER_OPTIONS, {"name": "Again"})
    assert again.status_code == 200
    # The browser would refuse (excludeCredentials); a script sending it anyway gets a 400.
    answer = post_json(client, REGISTER, {"credential": key.create(again.json())})
    assert answer.status_code == 400
    assert WebAuthnDevice.objects.filter(user=employee).count() == 1


def sign_in_confirm(client: Client, key: SoftKey):
    options = post_json(client, AUTH_OPTIONS, {})
    return post_json(client, AUTHENTICATE, {"credential": key.get(options.json())})


@pytest.mark.parametrize("name", ["", "   ", "x" * 65, None, 7])
def test_a_key_needs_a_sensible_name(employee, name):
    client = verified_login(browser(), employee)
    assert post_json(client, REGISTER_OPTIONS, {"name": name}).status_code == 400


def test_a_registration_from_another_origin_or_relying_party_is_refused(employee):
    client = verified_login(browser(), employee)
    for kwargs in ({"origin": "https://phish.example"}, {"rp_id": "phish.example"}):
        options = post_json(client, REGISTER_OPTIONS, {"name": "Key"})
        answer = post_json(
            client, REGISTER, {"credential": SoftKey().create(options.json(), **kwargs)}
        )
        assert answer.status_code == 400
    assert not WebAuthnDevice.objects.exists()
    assert [e.detail["via"] for e in events("mfa.verify")] == ["register", "register"]


def test_a_registration_challenge_is_used_once(employee):
    client = verified_login(browser(), employee)
    options = post_json(client, REGISTER_OPTIONS, {"name": "Key"}).json()
    assert post_json(client, REGISTER, {"credential": SoftKey().create(options)}).status_code == 200
    # Another key's answer to the same challenge: no duplicate to trip over, only the
    # challenge gone.
    again = post_json(client, REGISTER, {"credential": SoftKey().create(options)})
    assert again.status_code == 400
    assert again.json()["detail"] == "No security-key request is waiting: start again."
    assert WebAuthnDevice.objects.filter(user=employee).count() == 1


# --- signing in with a key ---------------------------------------------------------------


def test_an_officer_with_only_a_key_signs_in_with_it(officer):
    key = key_for(officer)
    without_backup_codes(officer)
    client = password_only(officer)

    redirected = client.get("/ra/requests/")
    verify = client.get("/account/two-factor/verify/")
    done = sign_in_with_key(client, key)

    assert redirected.status_code == 302
    assert redirected["Location"].startswith("/account/two-factor/verify/")
    assert b"Use my security key" in verify.content
    assert b'name="code"' not in verify.content  # no app, no backup codes
    assert done.status_code == 200
    assert done.json()["redirect"] == "/ra/requests/"
    assert client.get("/ra/requests/").status_code == 200
    device = WebAuthnDevice.objects.get(user=officer)
    assert device.sign_count == 1
    assert device.last_used_at is not None


def test_a_person_with_app_and_key_is_offered_both(officer):
    authenticator(officer)
    key_for(officer)
    client = password_only(officer)
    page = client.get("/account/two-factor/verify/")
    assert b"Use my security key" in page.content
    assert b'name="code"' in page.content


def test_a_replayed_assertion_is_refused(officer):
    key = key_for(officer)
    client = password_only(officer)
    options = post_json(client, AUTH_OPTIONS, {})
    assertion = key.get(options.json())
    assert post_json(client, AUTHENTICATE, {"credential": assertion}).status_code == 200

    # Another session (a thief with the password) replays it on a new challenge.
    thief = password_only(officer)
    post_json(thief, AUTH_OPTIONS, {})
    assert post_json(thief, AUTHENTICATE, {"credential": assertion}).status_code == 400
    assert thief.get("/ra/requests/").status_code == 302


def test_a_refused_answer_uses_up_its_challenge(officer):
    key = key_for(officer)
    client = password_only(officer)
    options = post_json(client, AUTH_OPTIONS, {}).json()
    refused = post_json(
        client, AUTHENTICATE, {"credential": key.get(options, origin="https://phish.example")}
    )
    assert refused.status_code == 400
    # The right answer to the same challenge comes too late: the challenge is gone.
    late = post_json(client, AUTHENTICATE, {"credential": key.get(options)})
    assert late.status_code == 400
    assert late.json()["detail"] == "No security-key request is waiting: start again."
    assert client.get("/ra/requests/").status_code == 302


@pytest.mark.parametrize(
    "kwargs", [{"origin": "https://phish.example"}, {"rp_id": "phish.example"}]
)
def test_an_assertion_for_another_origin_or_relying_party_is_refused(officer, kwargs):
    key = key_for(officer)
    client = password_only(officer)
    answer = sign_in_with_key(client, key, **kwargs)
    assert answer.status_code == 400
    assert events("mfa.verify")[-1].detail["kind"] == "webauthn"
    assert client.get("/ra/requests/").status_code == 302


def test_a_copied_key_whose_counter_went_back_is_refused_and_audited(
    officer, mailoutbox, django_capture_on_commit_callbacks
):
    key = key_for(officer)
    client = password_only(officer)
    assert sign_in_with_key(client, key, count=5).status_code == 200

    copy = password_only(officer)
    with django_capture_on_commit_callbacks(execute=True):
        answer = sign_in_with_key(copy, key, count=5)

    assert answer.status_code == 400
    assert "counter" in answer.json()["detail"]
    clone = events("mfa.webauthn_clone")
    assert len(clone) == 1
    assert clone[0].detail["stored_count"] == 5
    assert "copy of your security key" in mailoutbox[-1].subject
    assert WebAuthnDevice.objects.get(user=officer).sign_count == 5


def test_an_expired_challenge_is_refused(officer):
    key = key_for(officer)
    client = password_only(officer)
    options = post_json(client, AUTH_OPTIONS, {})
    later = timezone.now() + timedelta(seconds=passkeys.CHALLENGE_SECONDS + 1)
    with time_machine.travel(later, tick=False):
        answer = post_json(client, AUTHENTICATE, {"credential": key.get(options.json())})
    assert answer.status_code == 400
    assert "expired" in answer.json()["detail"]


def test_a_challenge_answers_only_its_own_ceremony(officer):
    authenticator(officer)
    key = key_for(officer)
    client = verified_login(browser(), officer)
    # No challenge asked for: nothing to answer.
    nothing = post_json(client, AUTHENTICATE, {"credential": key.get({"challenge": "AAAA"})})
    # A registration's challenge does not answer a sign-in's.
    session = client.session
    passkeys.registration_options(session=session, user=officer, name="K")
    session.save()
    challenge = session[passkeys.CHALLENGE_SESSION_KEY]["challenge"]
    crossed = post_json(client, AUTHENTICATE, {"credential": key.get({"challenge": challenge})})

    assert nothing.status_code == 400
    assert crossed.status_code == 400
    assert not passkeys.has_confirmed(client.session)


def test_a_body_too_large_is_a_413_in_json(officer):
    key_for(officer)
    client = password_only(officer)
    post_json(client, AUTH_OPTIONS, {})
    huge = json.dumps({"credential": {"id": "A" * 3_000_000}})
    answer = post_json(client, AUTHENTICATE, huge)
    assert answer.status_code == 413
    assert "larger than" in answer.json()["detail"]


def test_someone_with_only_a_key_confirms_it_before_setting_up_an_app(employee):
    key = key_for(employee)
    without_backup_codes(employee)  # with them, a backup code would do (test_backup_codes)
    client = password_only(employee)
    assert sign_in_with_key(client, key).status_code == 200

    refused = client.get("/account/two-factor/setup/")
    assert refused.status_code == 302
    assert refused["Location"] == "/account/"
    assert sign_in_confirm(client, key).status_code == 200
    assert client.get("/account/two-factor/setup/").status_code == 200


def test_someone_elses_key_does_not_sign_me_in(officer, colleague):
    key_for(officer)
    colleague_key = key_for(colleague)
    client = password_only(officer)
    options = post_json(client, AUTH_OPTIONS, {})
    answer = post_json(client, AUTHENTICATE, {"credential": colleague_key.get(options.json())})
    assert answer.status_code == 400
    assert client.get("/ra/requests/").status_code == 302


def test_refused_answers_make_the_next_challenge_wait(officer):
    key = key_for(officer)
    client = password_only(officer)
    assert sign_in_with_key(client, key, origin="https://phish.example").status_code == 400

    waiting = post_json(client, AUTH_OPTIONS, {})

    assert waiting.status_code == 429
    assert int(waiting["Retry-After"]) >= 1
    later = timezone.now() + timedelta(seconds=2)
    with time_machine.travel(later, tick=False):
        assert sign_in_with_key(client, key).status_code == 200
    assert WebAuthnDevice.objects.get(user=officer).throttling_failure_count == 0


def test_a_person_without_keys_gets_no_challenge(employee):
    client = verified_login(browser(), employee)
    assert post_json(client, AUTH_OPTIONS, {}).status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"text"',
        {"credential": "text"},
        {"credential": []},
        {"credential": {}},
        {"credential": {"id": "!!", "rawId": "!!", "type": "public-key", "response": {}}},
        {
            "credential": {
                "id": "AAAA",
                "rawId": "AAAA",
                "type": "public-key",
                "response": {
                    "clientDataJSON": "%%%",
                    "authenticatorData": "e30",
                    "signature": "AAAA",
                },
            }
        },
    ],
)
def test_malformed_answers_are_a_400_never_a_500(officer, body):
    key_for(officer)
    client = password_only(officer)
    post_json(client, AUTH_OPTIONS, {})
    assert post_json(client, AUTHENTICATE, body).status_code == 400
    verified = verified_login(browser(), UserFactory())
    post_json(verified, REGISTER_OPTIONS, {"name": "Key"})
    assert post_json(verified, REGISTER, body).status_code == 400


def test_a_key_with_garbled_fields_is_a_400(officer):
    key = key_for(officer)
    client = password_only(officer)
    options = post_json(client, AUTH_OPTIONS, {})
    assertion = key.get(options.json())
    assertion["response"]["authenticatorData"] = "AAAA"
    assert post_json(client, AUTHENTICATE, {"credential": assertion}).status_code == 400


# --- a passkey counts as a second factor everywhere -----------------------------------------


def test_a_sign_in_with_a_key_counts_as_recent_for_api_tokens(officer):
    key = key_for(officer)
    client = password_only(officer)
    assert sign_in_with_key(client, key).status_code == 200
    answer = client.post(
        "/api/v1/auth/token/", {"label": "laptop"}, content_type="application/json"
    )
    assert answer.status_code == 200, answer.content
    from enrollment.models import ApiToken

    assert ApiToken.objects.get(auth_token__user=officer).second_factor


def test_http_basic_tells_a_person_with_only_a_key_to_use_the_browser(officer):
    key_for(officer)
    from base64 import b64encode

    credentials = b64encode(f"{officer.username}:{PASSWORD}".encode()).decode()
    answer = browser().post(
        "/api/v1/auth/token/",
        {"label": "script"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Basic {credentials}",
        HTTP_X_OTP_CODE="123456",
    )
    assert answer.status_code == 403
    assert answer.json()["missing"] == "second_factor_session"


def test_the_api_refuses_a_session_with_a_key_that_has_not_used_it(officer):
    key_for(officer)
    client = password_only(officer)
    assert client.get("/api/v1/certificates/").status_code == 403


# --- removing keys --------------------------------------------------------------------------


def test_an_officer_removes_a_key_with_a_code_and_is_mailed(
    officer, mailoutbox, django_capture_on_commit_callbacks
):
    _device, seed = authenticator(officer)
    key_for(officer)
    client = verified_login(browser(), officer)
    device = WebAuthnDevice.objects.get(user=officer)

    with django_capture_on_commit_callbacks(execute=True):
        removed = client.post(
            f"/account/two-factor/security-keys/{device.pk}/remove/",
            {"current_code": code(seed)},
        )

    assert removed.status_code == 302
    assert not WebAuthnDevice.objects.exists()
    assert events("mfa.device_remove")[-1].detail["kind"] == "webauthn"
    assert "security key was removed" in mailoutbox[-1].subject


def test_an_officers_only_key_stays(officer):
    key = key_for(officer)
    client = password_only(officer)
    assert sign_in_with_key(client, key).status_code == 200
    assert sign_in_confirm(client, key).status_code == 200
    device = WebAuthnDevice.objects.get(user=officer)
    answer = client.post(f"/account/two-factor/security-keys/{device.pk}/remove/")
    assert answer.status_code == 302
    assert WebAuthnDevice.objects.filter(pk=device.pk).exists()
    # The refusal came before the key's confirmation was spent on it.
    assert passkeys.has_confirmed(client.session)


def test_an_employee_removes_their_key_after_confirming_with_it(employee):
    key = key_for(employee)
    client = password_only(employee)
    assert sign_in_with_key(client, key).status_code == 200
    device = WebAuthnDevice.objects.get(user=employee)
    url = f"/account/two-factor/security-keys/{device.pk}/remove/"

    unconfirmed = client.post(url)
    assert WebAuthnDevice.objects.filter(pk=device.pk).exists()
    assert sign_in_confirm(client, key).status_code == 200
    confirmed = client.post(url)

    assert unconfirmed.status_code == 302
    assert confirmed.status_code == 302
    assert not WebAuthnDevice.objects.filter(pk=device.pk).exists()


def test_nobody_removes_someone_elses_key(officer, colleague):
    key_for(officer)
    _device, seed = authenticator(colleague)
    client = verified_login(browser(), colleague)
    device = WebAuthnDevice.objects.get(user=officer)
    client.post(
        f"/account/two-factor/security-keys/{device.pk}/remove/", {"current_code": code(seed)}
    )
    assert WebAuthnDevice.objects.filter(pk=device.pk).exists()


def test_anonymous_and_unverified_sessions_remove_no_key(officer):
    key_for(officer)
    device = WebAuthnDevice.objects.get(user=officer)
    url = f"/account/two-factor/security-keys/{device.pk}/remove/"
    assert browser().post(url)["Location"].startswith("/accounts/login/")
    assert password_only(officer).post(url)["Location"].startswith("/account/two-factor/verify/")
    assert WebAuthnDevice.objects.filter(pk=device.pk).exists()


def test_an_administrator_sees_and_resets_someones_keys(officer, admin_user):
    key_for(officer)
    admin = verified_login(browser(), admin_user)
    change = admin.get(f"/admin/accounts/user/{officer.pk}/change/").content.decode()
    assert "Security key “Key”: added" in change

    done = admin.post(f"/admin/accounts/user/{officer.pk}/two-factor/reset/")

    assert done.status_code == 302
    assert not WebAuthnDevice.objects.exists()
    assert events("mfa.reset")[-1].detail == {"removed": True, "via": "admin", "sessions_ended": 0}


def test_the_overview_lists_keys_and_offers_to_add_one(officer):
    authenticator(officer)
    key_for(officer)
    page = verified_login(browser(), officer).get("/account/")
    assert b"Security keys and passkeys" in page.content
    assert b"Key</strong>" in page.content
    assert b"js/passkey.js" in page.content
    assert b"<script>" not in page.content


# --- settings and the deploy check ----------------------------------------------------------


def test_the_deploy_check_warns_when_the_relying_party_does_not_fit(settings):
    settings.PKIPORTAL_SITE_URL = "https://pki.example.com"
    settings.PKIPORTAL_WEBAUTHN_RP_ID = "other.example"
    settings.PKIPORTAL_WEBAUTHN_ORIGINS = ["https://pki.example.com"]
    from enrollment.checks import security_keys_fit_the_portal

    warnings = security_keys_fit_the_portal()
    assert [w.id for w in warnings] == ["pkiportal.W008"]

    settings.PKIPORTAL_WEBAUTHN_RP_ID = "example.com"
    assert security_keys_fit_the_portal() == []
    settings.PKIPORTAL_WEBAUTHN_ORIGINS = ["http://pki.example.com"]
    assert [w.id for w in security_keys_fit_the_portal()] == ["pkiportal.W008"]


# --- hostile bodies, never a 500 ----------------------------------------------------------


def test_a_deeply_nested_body_is_a_400(officer):
    key_for(officer)
    client = password_only(officer)
    nested = "[" * 100_000 + "]" * 100_000
    for url in (AUTHENTICATE, REGISTER, REGISTER_OPTIONS):
        answer = post_json(client, url, '{"credential": ' + nested + "}")
        assert answer.status_code in (302, 400), url  # 302: the middleware, not the second step
    assert post_json(client, AUTHENTICATE, nested).status_code == 400


def test_transports_that_are_not_strings_are_dropped(employee):
    client = verified_login(browser(), employee)
    options = post_json(client, REGISTER_OPTIONS, {"name": "Key"}).json()
    credential = SoftKey().create(options)
    credential["response"]["transports"] = [{"a": 1}, ["usb"], 7, "usb"]
    answer = post_json(client, REGISTER, {"credential": credential})
    assert answer.status_code == 200
    assert WebAuthnDevice.objects.get(user=employee).transports == ["usb"]


def test_a_credential_id_too_long_for_the_column_is_refused(employee):
    client = verified_login(browser(), employee)
    key = SoftKey()
    key.credential_id = bytes(1100)
    options = post_json(client, REGISTER_OPTIONS, {"name": "Key"}).json()
    answer = post_json(client, REGISTER, {"credential": key.create(options)})
    assert answer.status_code == 400
    assert not WebAuthnDevice.objects.exists()


@pytest.mark.parametrize("name", ["Blue\x00key", "Blue\x07key", "\x1b[31mred"])
def test_a_name_with_control_characters_is_refused(employee, name):
    client = verified_login(browser(), employee)
    assert post_json(client, REGISTER_OPTIONS, {"name": name}).status_code == 400


# --- a person with only keys: codes and lock-out ------------------------------------------


def test_codes_posted_by_someone_with_only_a_key_are_refused_unaudited(officer):
    key_for(officer)
    without_backup_codes(officer)
    client = password_only(officer)
    for _ in range(5):
        answer = client.post("/account/two-factor/verify/", {"code": "123456"})
        assert answer.status_code == 400
    assert events("mfa.verify") == []
    assert client.get("/ra/requests/").status_code == 302


def test_many_refused_key_answers_lock_out_and_mail_once(
    officer, mailoutbox, django_capture_on_commit_callbacks
):
    from accounts.models import LOCKOUT_FAILURES

    key = key_for(officer)
    WebAuthnDevice.objects.filter(user=officer).update(
        throttling_failure_count=LOCKOUT_FAILURES - 1
    )
    client = password_only(officer)
    challenge = b"c" * 32
    for _ in range(2):  # the throttle refuses new challenges now: the session gets one as
        session = client.session  # authentication_options would have left it
        passkeys._store_challenge(session, "authenticate", challenge, user=officer.pk)
        session.save()
        answer = key.get({"challenge": b64url(challenge)}, origin="https://phish.example")
        with django_capture_on_commit_callbacks(execute=True):
            refused = post_json(client, AUTHENTICATE, {"credential": answer})
        assert refused.status_code == 400
    lockouts = events("mfa.lockout")
    assert [(e.detail["kind"], e.detail["failures"]) for e in lockouts] == [
        ("webauthn", LOCKOUT_FAILURES)
    ]
    assert sum("Many wrong" in m.subject for m in mailoutbox) == 1


# --- removing keys and the app -------------------------------------------------------------


def test_removing_the_key_that_verified_the_session_keeps_it_verified(officer):
    first, second = key_for(officer), key_for(officer)
    client = password_only(officer)
    assert sign_in_with_key(client, first).status_code == 200
    assert sign_in_confirm(client, first).status_code == 200
    used = WebAuthnDevice.objects.filter(user=officer).order_by("pk").first()
    assert used is not None

    removed = client.post(f"/account/two-factor/security-keys/{used.pk}/remove/")

    assert removed.status_code == 302
    assert removed["Location"] == "/account/"
    assert not WebAuthnDevice.objects.filter(pk=used.pk).exists()
    assert client.get("/ra/requests/").status_code == 200
    assert sign_in_confirm(client, second).status_code == 200


def test_the_session_verified_with_a_removed_app_stays_verified_with_a_key(
    officer, mailoutbox, django_capture_on_commit_callbacks
):
    _device, seed = authenticator(officer)
    key_for(officer)
    mfa._replace_backup_codes(officer)
    client = verified_login(browser(), officer)  # with the app
    page = client.get("/account/").content.decode()
    assert "Remove my authenticator app" in page
    assert "your security keys and backup codes stay" in page

    with django_capture_on_commit_callbacks(execute=True):
        removed = client.post(
            "/account/two-factor/remove/", {"current_code": code(seed), "confirm": "on"}
        )

    assert removed.status_code == 302
    assert mfa.confirmed_totp(officer) is None
    # The backup codes stay with the key: they are the way in when the key is lost.
    assert len(mfa.backup_codes(officer).digests) == mfa.BACKUP_CODES
    assert WebAuthnDevice.objects.filter(user=officer).count() == 1  # the key stays
    event = events("mfa.device_remove")[-1]
    assert event.detail == {
        "kind": "totp",
        "backup_codes": False,
        "security_keys_kept": 1,
        "via": "self",
        "sessions_ended": 0,
    }
    assert mailoutbox[-1].subject == "Your authenticator app was removed"
    assert "security keys" in mailoutbox[-1].body
    assert client.get("/ra/requests/").status_code == 200


def test_an_officer_with_only_an_app_cannot_remove_it(officer):
    _device, seed = authenticator(officer)
    client = verified_login(browser(), officer)
    client.post("/account/two-factor/remove/", {"current_code": code(seed), "confirm": "on"})
    assert mfa.confirmed_totp(officer) is not None
    assert events("mfa.verify") == []  # refused before the code was checked


def test_a_full_set_of_keys_is_refused_before_the_backup_code_is_spent(employee):
    authenticator(employee)
    codes = mfa._replace_backup_codes(employee)
    for _ in range(WebAuthnDevice.MAX_PER_PERSON):
        key_for(employee)
    client = verified_login(browser(), employee)

    answer = post_json(client, REGISTER_OPTIONS, {"name": "Eleventh", "current_code": codes[0]})

    assert answer.status_code == 400
    assert "remove one first" in answer.json()["detail"]
    assert len(mfa.backup_codes(employee).digests) == mfa.BACKUP_CODES
    assert events("mfa.backup_code_use") == []


def test_a_stale_copy_of_the_session_cannot_take_the_challenge_again(officer):
    """Two requests of one session at once each load the challenge: only one may use it."""
    client = password_only(officer)
    key_for(officer)
    assert post_json(client, AUTH_OPTIONS, {}).status_code == 200
    engine = import_module(django_settings.SESSION_ENGINE)
    session_key = client.session.session_key
    first, second = engine.SessionStore(session_key), engine.SessionStore(session_key)
    assert passkeys.CHALLENGE_SESSION_KEY in first
    assert passkeys.CHALLENGE_SESSION_KEY in second

    passkeys._take_challenge(first, "authenticate")
    with pytest.raises(passkeys.PasskeyError, match="No security-key request is waiting"):
        passkeys._take_challenge(second, "authenticate")


def test_a_stale_copy_of_the_session_cannot_use_the_key_confirmation_again(officer):
    """The same for a key confirmed on /account/: two changes sent at once with one
    confirmation, each request holding its own copy of the session: one goes through."""
    key = key_for(officer)
    client = verified_login(browser(), officer)
    assert sign_in_confirm(client, key).status_code == 200
    engine = import_module(django_settings.SESSION_ENGINE)
    session_key = client.session.session_key
    first, second = engine.SessionStore(session_key), engine.SessionStore(session_key)
    assert passkeys.has_confirmed(first)
    assert passkeys.has_confirmed(second)

    assert passkeys.take_confirmed(first) is True
    assert passkeys.take_confirmed(second) is False


# --- the middleware, by view name ----------------------------------------------------------


def test_the_second_step_reaches_only_the_key_sign_in_views(officer):
    key_for(officer)
    device = WebAuthnDevice.objects.get(user=officer)
    client = password_only(officer)
    for url in (
        "/account/two-factor/security-keys/no-such-page/",
        "/account/two-factor/security-keys/add/",
        f"/account/two-factor/security-keys/{device.pk}/remove/",
    ):
        answer = client.post(url)
        assert answer.status_code == 302, url
        assert answer["Location"].startswith("/account/two-factor/verify/"), url
    assert post_json(client, AUTH_OPTIONS, {}).status_code == 200


# --- the test helper -----------------------------------------------------------------------


def test_verified_login_uses_the_key_of_someone_with_only_a_key(officer):
    from django_otp import DEVICE_ID_SESSION_KEY

    from accounts.models import TotpDevice

    key_for(officer)
    client = verified_login(browser(), officer)
    device = WebAuthnDevice.objects.get(user=officer)
    assert client.session[DEVICE_ID_SESSION_KEY] == device.persistent_id
    assert not TotpDevice.objects.filter(user=officer).exists()
    assert client.get("/ra/requests/").status_code == 200


# --- origins --------------------------------------------------------------------------------


def test_the_default_origin_keeps_the_base_urls_port(load_settings):
    loaded = load_settings(PKIPORTAL_BASE_URL="http://pki.example.com:8443/")
    assert loaded["PKIPORTAL_WEBAUTHN_ORIGINS"] == ["https://pki.example.com:8443"]
    assert load_settings(PKIPORTAL_BASE_URL="http://pki.example.com:80")[
        "PKIPORTAL_WEBAUTHN_ORIGINS"
    ] == ["https://pki.example.com"]


def test_the_defaults_follow_the_site_url_where_people_sign_in(load_settings):
    """The repository's http:// name is not where people sign in when a site URL is set:
    keys bound to it would be refused at the portal's https:// address."""
    loaded = load_settings(
        PKIPORTAL_BASE_URL="http://pki.example.com",
        PKIPORTAL_SITE_URL="https://portal.example.com:8443",
    )
    assert loaded["PKIPORTAL_WEBAUTHN_RP_ID"] == "portal.example.com"
    assert loaded["PKIPORTAL_WEBAUTHN_ORIGINS"] == ["https://portal.example.com:8443"]


def test_the_deploy_check_warns_when_the_site_url_is_not_an_origin(settings):
    from enrollment.checks import security_keys_fit_the_portal

    settings.PKIPORTAL_SITE_URL = "https://pki.example.com:8443"
    settings.PKIPORTAL_WEBAUTHN_RP_ID = "pki.example.com"
    settings.PKIPORTAL_WEBAUTHN_ORIGINS = ["https://pki.example.com"]
    warnings = security_keys_fit_the_portal()
    assert [w.id for w in warnings] == ["pkiportal.W008"]
    assert "https://pki.example.com:8443" in warnings[0].msg
    settings.PKIPORTAL_WEBAUTHN_ORIGINS = ["https://pki.example.com:8443"]
    assert security_keys_fit_the_portal() == []


def test_the_deploy_check_judges_the_site_url_not_the_repositorys(settings):
    """People sign in at the site URL; the http:// base URL only names the repository."""
    from enrollment.checks import security_keys_fit_the_portal

    settings.PKIPORTAL_BASE_URL = "http://pki.example.com"
    settings.PKIPORTAL_SITE_URL = "https://portal.example.org"
    settings.PKIPORTAL_WEBAUTHN_RP_ID = "portal.example.org"
    settings.PKIPORTAL_WEBAUTHN_ORIGINS = ["https://portal.example.org"]
    assert security_keys_fit_the_portal() == []

    settings.PKIPORTAL_SITE_URL = "https://other.example.org"
    (warning,) = security_keys_fit_the_portal()
    assert "PKIPORTAL_SITE_URL (other.example.org)" in warning.msg


@needs_row_locks
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_removals_at_once_leave_an_officer_a_key(officer):
    """PostgreSQL, two connections: while one removal of the officer's keys is under way
    (its transaction holds the person's row and deleted one key), another waits for it and
    then counts the keys left, instead of counting the first key as still there."""
    import threading
    import time

    from django.db import transaction

    from accounts.models import User

    key_for(officer)
    key_for(officer)
    first, second = WebAuthnDevice.objects.filter(user=officer).order_by("pk")
    outcome: dict[str, Any] = {}

    def remove_second() -> None:
        try:
            outcome["name"] = passkeys.remove(
                user=User.objects.get(pk=officer.pk), device_id=second.pk, source_address=None
            )
        except passkeys.PasskeyError as exc:
            outcome["refused"] = exc.message
        finally:
            connection.close()

    with transaction.atomic():
        User.objects.select_for_update().get(pk=officer.pk)  # as remove() of the first does
        WebAuthnDevice.objects.filter(pk=first.pk).delete()
        other = threading.Thread(target=remove_second)
        other.start()
        time.sleep(1.0)  # the other removal reaches its count (or its lock) meanwhile
    other.join(timeout=10)

    assert "refused" in outcome, outcome
    assert list(WebAuthnDevice.objects.filter(user=officer)) == [second]


# --- one key confirmation, one change --------------------------------------------------------

SETUP = "/account/two-factor/setup/"
CODES = "/account/two-factor/backup-codes/"


def confirmed_for_setup(user) -> tuple[Client, Client, bytes]:
    """Someone with only a key (and its backup codes), signed in with it and confirming it
    again to set up an app: their client, a second client of the same session (a second
    tab sending at the same moment), and the seed of the app being set up."""
    from accounts.models import TotpDevice
    from tests.second_factor import seed_of

    key = key_for(user)
    client = password_only(user)
    assert sign_in_with_key(client, key).status_code == 200
    assert sign_in_confirm(client, key).status_code == 200
    assert client.get(SETUP).status_code == 200  # no code asked: the key was confirmed
    seed = seed_of(TotpDevice.objects.get(user=user, confirmed=False))
    tab = browser()
    tab.cookies = client.cookies
    return client, tab, seed


def test_an_apps_set_up_takes_the_key_confirmation_before_a_change_sent_with_it(
    employee, monkeypatch
):
    """The set-up takes the confirmation before it checks the new app's code: new backup
    codes asked for meanwhile with the same confirmation find it taken, and are refused."""
    client, tab, seed = confirmed_for_setup(employee)
    digests = BackupCodeDevice.objects.get(user=employee).digests
    real = mfa.totp_confirm
    meanwhile: dict[str, Any] = {}

    def confirm_while_the_other_tab_asks(**kwargs: Any) -> mfa.Confirmation:
        meanwhile["codes"] = tab.post(CODES)
        return real(**kwargs)

    monkeypatch.setattr(mfa, "totp_confirm", confirm_while_the_other_tab_asks)
    set_up = client.post(SETUP, {"code": code(seed)})

    assert set_up.status_code == 200
    assert mfa.confirmed_totp(employee) is not None
    assert meanwhile["codes"].status_code == 302
    assert meanwhile["codes"]["Location"] == "/account/"
    assert events("mfa.backup_codes_regenerate") == []
    # The codes the set-up made replaced the key's; none were made beside them.
    assert BackupCodeDevice.objects.get(user=employee).digests != digests
    assert len(events("mfa.device_add")) == 2  # the key, the app


def test_a_change_that_took_the_key_confirmation_first_leaves_none_for_an_apps_set_up(
    employee, monkeypatch
):
    """The other order: the set-up's request loaded the session (with the confirmation)
    while another tab's request spent it on removing a key; the set-up is refused."""
    key_for(employee)  # a second key, so that one may be removed
    client, tab, seed = confirmed_for_setup(employee)
    spare = WebAuthnDevice.objects.filter(user=employee).order_by("pk").first()
    assert spare is not None
    real = mfa.pending_totp
    meanwhile: dict[str, Any] = {}

    def pending_after_the_other_tab_removed_a_key(request: Any) -> Any:
        meanwhile["removed"] = tab.post(f"/account/two-factor/security-keys/{spare.pk}/remove/")
        return real(request)

    monkeypatch.setattr(mfa, "pending_totp", pending_after_the_other_tab_removed_a_key)
    set_up = client.post(SETUP, {"code": code(seed)})

    assert meanwhile["removed"].status_code == 302
    assert not WebAuthnDevice.objects.filter(pk=spare.pk).exists()
    assert set_up.status_code == 302
    assert set_up["Location"].startswith(SETUP)
    assert mfa.confirmed_totp(employee) is None
    assert [e.detail["kind"] for e in events("mfa.device_add")] == ["webauthn", "webauthn"]


def test_a_wrong_first_code_of_the_new_app_gives_the_key_confirmation_back(employee):
    """A typo spends nothing: the confirmation is back, with its own time (not renewed),
    and the right code then sets the app up with it."""
    client, _tab, seed = confirmed_for_setup(employee)
    stamp = client.session[passkeys.CONFIRMED_SESSION_KEY]

    wrong = client.post(SETUP, {"code": "000000" if code(seed) != "000000" else "111111"})

    assert wrong.status_code == 400
    assert client.session[passkeys.CONFIRMED_SESSION_KEY] == stamp
    assert mfa.confirmed_totp(employee) is None
    later = timezone.now() + timedelta(seconds=2)  # past the wrong code's wait
    with time_machine.travel(later, tick=False):
        done = client.post(SETUP, {"code": code(seed, at=later.timestamp())})
    assert done.status_code == 200
    assert mfa.confirmed_totp(employee) is not None
    assert not passkeys.has_confirmed(client.session)  # used by the set-up


# --- removing the last key ends the other sessions ---------------------------------------------


def test_removing_ones_last_key_ends_ones_other_sessions(employee, colleague):
    """As removing the app does (mfa.second_factor_remove): a session signed in with the
    key must not carry on with no second factor at all. The remover's own stays."""
    from tests.test_second_factor import sessions_of, signed_out

    key = key_for(employee)
    here = password_only(employee)
    assert sign_in_with_key(here, key).status_code == 200
    elsewhere = verified_login(browser(), employee)
    other_person = verified_login(browser(), colleague)
    assert sign_in_confirm(here, key).status_code == 200
    device = WebAuthnDevice.objects.get(user=employee)

    removed = here.post(f"/account/two-factor/security-keys/{device.pk}/remove/")

    assert removed.status_code == 302
    assert "Your other sessions are signed out." in here.get("/account/").content.decode()
    assert not WebAuthnDevice.objects.filter(user=employee).exists()
    assert signed_out(elsewhere)
    assert not signed_out(here)
    assert not signed_out(other_person)
    assert sessions_of(employee) == 1
    (event,) = events("mfa.device_remove")
    assert event.detail["sessions_ended"] == 1


def test_removing_a_key_while_another_remains_ends_no_session(employee):
    key = key_for(employee)
    key_for(employee)
    here = password_only(employee)
    assert sign_in_with_key(here, key).status_code == 200
    elsewhere = verified_login(browser(), employee)
    assert sign_in_confirm(here, key).status_code == 200
    spare = WebAuthnDevice.objects.filter(user=employee).order_by("pk").last()
    assert spare is not None

    assert here.post(f"/account/two-factor/security-keys/{spare.pk}/remove/").status_code == 302

    assert elsewhere.get("/certificates/").status_code == 200
    assert "sessions_ended" not in events("mfa.device_remove")[-1].detail


@pytest.mark.parametrize("page", ["/account/two-factor/security-keys/add/", "/account/"])
def test_at_another_origin_the_pages_point_to_where_keys_work(employee, page):
    """The demo at http://127.0.0.1:8000 while the relying party is localhost: the browser
    would refuse the key with a bare "invalid domain"."""
    here = verified_login(Client(HTTP_HOST="127.0.0.1:8000"), employee).get(page)
    there = verified_login(browser(), employee).get(page)

    assert here.status_code == there.status_code == 200
    assert f'href="{ORIGIN}{page}"' in here.content.decode()
    assert b'data-passkey="register"' not in here.content
    assert b"data-passkey-elsewhere" not in there.content
    assert b'data-passkey="register"' in there.content


def test_the_second_step_elsewhere_points_to_where_keys_work(officer):
    key_for(officer)
    client = Client(HTTP_HOST="127.0.0.1:8000")
    client.force_login(officer)
    mfa.forget_state(officer)

    page = client.get("/account/two-factor/verify/").content.decode()

    assert f'href="{ORIGIN}/"' in page
    assert 'data-passkey="authenticate"' not in page
