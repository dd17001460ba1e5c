"""/api/v1/auth/: knox tokens from basic auth or a session, guarded by django-axes."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
import time_machine
from axes.models import AccessAttempt, AccessLog
from knox.models import AuthToken

from django.conf import settings as django_settings
from django.utils import timezone
from rest_framework.test import APIClient, APIRequestFactory

from accounts.models import AccountSession as Session
from enrollment.api.authentication import TokenAuthentication
from enrollment.models import AuditEvent
from enrollment.tasks import api_tokens_purge_task
from tests.enrollment.api_tools import (
    CERTIFICATES,
    LOGOUT,
    LOGOUT_ALL,
    TOKEN,
    session_client,
    token_client,
)
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

SIGN_IN_PASSWORD = "correct horse battery staple"  # tests/factories.py


def basic(username: str, password: str) -> dict[str, str]:
    credentials = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {credentials}"}


def test_basic_auth_mints_a_token_that_authenticates_later_calls(employee):
    response = token_client(None).post(TOKEN, **basic("alice", SIGN_IN_PASSWORD))

    assert response.status_code == 200
    token = response.json()["token"]
    assert response.json()["expiry"]
    later = token_client(None)
    later.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert later.get(CERTIFICATES).status_code == 200


def test_a_token_minted_by_basic_auth_leaves_no_session_behind(employee):
    response = token_client(None).post(TOKEN, **basic("alice", SIGN_IN_PASSWORD))

    assert response.status_code == 200
    assert "sessionid" not in response.cookies
    assert not Session.objects.exists()
    login = AccessLog.objects.get()  # django-axes still records the sign-in
    assert login.username == "alice"
    employee.refresh_from_db()
    assert employee.last_login is not None  # and so does Django


@pytest.mark.parametrize("path", [LOGOUT, LOGOUT_ALL])
def test_revoking_a_token_by_api_leaves_no_session_behind(employee, path):
    client = token_client(employee)

    response = client.post(path)

    assert response.status_code == 204
    assert "sessionid" not in response.cookies
    assert not Session.objects.exists()


def test_only_a_hash_of_the_token_is_stored(employee):
    token = token_client(None).post(TOKEN, **basic("alice", SIGN_IN_PASSWORD)).json()["token"]

    stored = AuthToken.objects.get(user=employee)
    assert token not in stored.digest
    assert len(stored.token_key) < len(token)  # only a lookup prefix


def test_a_wrong_password_is_401_and_counted_by_axes(employee):
    response = token_client(None).post(TOKEN, **basic("alice", "wrong"))

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Basic")
    assert AccessAttempt.objects.get(username="alice").failures_since_start == 1
    assert AuthToken.objects.count() == 0


def test_axes_locks_basic_auth_out_after_too_many_failures(employee, settings):
    client = token_client(None)
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert client.post(TOKEN, **basic("alice", "wrong")).status_code == 401

    locking = client.post(TOKEN, **basic("alice", "wrong"))
    with_right_password = client.post(TOKEN, **basic("alice", SIGN_IN_PASSWORD))

    assert locking.status_code == 429
    assert with_right_password.status_code == 429
    assert "Too many failed sign-ins" in with_right_password.json()["detail"]
    assert AuthToken.objects.count() == 0


def test_a_session_mints_a_token_with_a_csrf_token(employee):
    client = session_client(employee, enforce_csrf=True)

    refused = client.post(TOKEN)
    client.get("/")  # sets the CSRF cookie
    allowed = client.post(TOKEN, HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value)

    assert refused.status_code == 403
    assert allowed.status_code == 200


def test_anonymous_gets_no_token():
    assert token_client(None).post(TOKEN).status_code == 401


def test_a_token_cannot_mint_another_token(employee):
    assert token_client(employee).post(TOKEN).status_code == 401


def test_an_inactive_account_gets_no_token():
    UserFactory(username="gone", is_active=False)

    assert token_client(None).post(TOKEN, **basic("gone", SIGN_IN_PASSWORD)).status_code == 401


def test_an_expired_token_is_refused(employee):
    client = token_client(employee)
    AuthToken.objects.filter(user=employee).update(expiry=timezone.now() - timedelta(seconds=1))

    assert client.get(CERTIFICATES).status_code == 401


def test_logout_revokes_the_token_it_is_called_with(employee):
    client = token_client(employee)
    other = token_client(employee)

    assert client.post(LOGOUT).status_code == 204
    assert client.get(CERTIFICATES).status_code == 401
    assert other.get(CERTIFICATES).status_code == 200


def test_logout_all_revokes_every_token_of_mine_and_none_of_my_colleagues(employee, colleague):
    client, other, theirs = token_client(employee), token_client(employee), token_client(colleague)

    assert client.post(LOGOUT_ALL).status_code == 204
    assert other.get(CERTIFICATES).status_code == 401
    assert theirs.get(CERTIFICATES).status_code == 200


@pytest.mark.parametrize("path", [LOGOUT, LOGOUT_ALL])
def test_logout_needs_a_token(employee, path):
    assert session_client(employee).post(path).status_code == 401
    assert token_client(None).post(path).status_code == 401


def test_minting_and_revoking_tokens_leave_audit_events(employee):
    from enrollment.models import AuditEvent

    client = token_client(None)
    token = client.post(TOKEN, **basic("alice", SIGN_IN_PASSWORD)).json()["token"]
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.post(LOGOUT).status_code == 204
    assert token_client(employee).post(LOGOUT_ALL).status_code == 204

    events = list(
        AuditEvent.objects.filter(action__startswith="api_token.")
        .order_by("id")
        .values_list("action", "actor_name")
    )
    assert events == [
        ("api_token.create", "alice"),
        ("api_token.revoke", "alice"),
        ("api_token.revoke_all", "alice"),
    ]
    assert not AuditEvent.objects.filter(detail__icontains=token[:16]).exists()


def _with_token(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def test_an_expired_token_is_refused_and_deleted_when_presented(employee):
    _, expired = AuthToken.objects.create(user=employee, expiry=timedelta(seconds=-1))

    assert _with_token(expired).get(CERTIFICATES).status_code == 401
    assert not AuthToken.objects.filter(user=employee).exists()


def test_a_token_check_reads_only_the_presented_token(employee, django_assert_num_queries):
    """Other tokens are purged daily, not on every call (knox reads them all each time)."""
    _, valid = AuthToken.objects.create(user=employee)
    AuthToken.objects.create(user=employee, expiry=timedelta(seconds=-1))
    request = APIRequestFactory().get(CERTIFICATES, HTTP_AUTHORIZATION=f"Token {valid}")
    TokenAuthentication().authenticate(request)  # its first use this hour is written once

    with django_assert_num_queries(1):
        user, token = TokenAuthentication().authenticate(request)

    assert user == employee
    assert token.user_id == employee.pk
    assert AuthToken.objects.filter(user=employee).count() == 2  # the expired one is left


def test_a_forged_token_with_a_real_prefix_is_refused(employee):
    _, valid = AuthToken.objects.create(user=employee)
    forged = valid[:-4] + ("0000" if not valid.endswith("0000") else "1111")

    assert _with_token(forged).get(CERTIFICATES).status_code == 401
    assert _with_token(valid).get(CERTIFICATES).status_code == 200


SPACES = "Invalid token header. Token string should not contain spaces."


@pytest.mark.parametrize(
    ("token", "detail"),
    [
        # not UTF-8 once the header's Latin-1 is encoded back to bytes
        ("\xff\xfe", "Invalid token."),
        # PostgreSQL refuses NUL in a query parameter; NUL in a header is a space by the
        # time DRF reads it (pkiportal.middleware), which DRF refuses in a token
        ("abc\x00def", SPACES),
        ("\x00" * 64, "Invalid token header. No credentials provided."),
        ("\x7f" * 64, "Invalid token."),  # ASCII, not printable
    ],
)
def test_a_token_that_is_not_printable_ascii_is_401_as_any_bad_token(employee, token, detail):
    response = _with_token(token).get(CERTIFICATES)

    assert response.status_code == 401
    assert response.json() == {"detail": detail}


@pytest.mark.parametrize(
    "username",
    [
        "alice\x00",  # PostgreSQL refuses NUL in a query parameter and in axes' record
        "a" * 10_000,  # longer than axes' AccessAttempt.username (255)
    ],
)
def test_a_basic_auth_user_name_no_account_can_have_is_401(employee, username):
    response = token_client(None).post(TOKEN, **basic(username, SIGN_IN_PASSWORD))

    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid username/password."}
    assert AuthToken.objects.count() == 0


def test_the_daily_purge_deletes_expired_tokens_only(employee, colleague):
    AuthToken.objects.create(user=employee, expiry=timedelta(seconds=-1))
    AuthToken.objects.create(user=colleague, expiry=timedelta(seconds=-60))
    AuthToken.objects.create(user=colleague)
    AuthToken.objects.create(user=colleague, expiry=None)  # knox: a token that never expires

    assert api_tokens_purge_task.delay().get() == 2
    assert AuthToken.objects.filter(user=colleague).count() == 2
    assert not AuthToken.objects.filter(user=employee).exists()
    schedule = django_settings.CELERY_BEAT_SCHEDULE
    assert schedule["api-tokens-purge"]["task"] == api_tokens_purge_task.name


def test_the_daily_purge_revokes_a_leavers_tokens_after_the_grace_period(
    employee, colleague, settings
):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 72
    AuthToken.objects.create(user=employee)
    AuthToken.objects.create(user=employee)
    AuthToken.objects.create(user=colleague)
    employee.is_active = False
    employee.save()
    off_at = employee.deactivated_at

    assert api_tokens_purge_task.delay().get() == 0  # refused meanwhile, not deleted
    assert AuthToken.objects.filter(user=employee).count() == 2
    with time_machine.travel(off_at + timedelta(hours=72, minutes=1), tick=False):
        assert api_tokens_purge_task.delay().get() == 2

    assert not AuthToken.objects.filter(user=employee).exists()
    assert AuthToken.objects.filter(user=colleague).count() == 1
    event = AuditEvent.objects.get(action="api_token.revoke_all")
    assert event.object_id == str(employee.pk)
    assert event.detail["count"] == 2
    assert event.detail["via"] == "account_deactivated"


def test_the_purge_keeps_tokens_of_accounts_back_on_or_with_leavers_revocation_off(
    employee, colleague, settings
):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 72
    AuthToken.objects.create(user=employee)
    AuthToken.objects.create(user=colleague)
    employee.is_active = False
    employee.save()
    employee.is_active = True  # a sync glitch undone within the grace period
    employee.save()
    colleague.is_active = False
    colleague.save()
    later = timezone.now() + timedelta(days=30)

    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = None
    with time_machine.travel(later, tick=False):
        assert api_tokens_purge_task.delay().get() == 0
    assert AuthToken.objects.filter(user=colleague).count() == 1
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 72
    with time_machine.travel(later, tick=False):
        assert api_tokens_purge_task.delay().get() == 1
    assert AuthToken.objects.filter(user=employee).count() == 1
    assert not AuthToken.objects.filter(user=colleague).exists()


# --- names, lifetimes and the cap, as on /account/tokens/ ---------------------------------


def _stored() -> tuple[int, int]:
    from enrollment.models import AuditEvent

    return AuthToken.objects.count(), AuditEvent.objects.count()


def test_a_token_may_be_named_and_given_a_shorter_life(employee):
    moment = timezone.now().replace(microsecond=0)
    with time_machine.travel(moment, tick=False):
        response = token_client(None).post(
            TOKEN, {"label": "cron on db-01", "lifetime_days": 7}, format="json",
            **basic("alice", SIGN_IN_PASSWORD),
        )  # fmt: skip

    assert response.status_code == 200
    body = response.json()
    assert body["label"] == "cron on db-01"
    assert body["prefix"] == body["token"][:15]
    stored = AuthToken.objects.get(user=employee)
    assert stored.expiry == moment + timedelta(days=7)
    assert stored.api_token.label == "cron on db-01"
    assert response["Cache-Control"] == "no-store"


def test_without_a_body_it_is_unnamed_and_lives_api_token_ttl_days(employee, settings):
    settings.API_TOKEN_TTL_DAYS = 12
    moment = timezone.now().replace(microsecond=0)
    with time_machine.travel(moment, tick=False):
        response = token_client(None).post(TOKEN, **basic("alice", SIGN_IN_PASSWORD))

    assert response.status_code == 200
    assert response.json()["label"] == ""
    assert AuthToken.objects.get(user=employee).expiry == moment + timedelta(days=12)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"lifetime_days": 91}, "lifetime_days"),  # API_TOKEN_TTL_DAYS is 90
        ({"lifetime_days": 0}, "lifetime_days"),
        ({"lifetime_days": "soon"}, "lifetime_days"),
        ({"label": "x" * 101}, "label"),
        ({"label": "line\nbreak"}, "label"),
        ({"label": "nul\x00"}, "label"),
        ({"label": ["a", "list"]}, "label"),
    ],
)
def test_a_bad_name_or_lifetime_is_400_naming_it_and_stores_nothing(employee, body, field):
    before = _stored()

    response = session_client(employee).post(TOKEN, body, format="json")

    assert response.status_code == 400
    assert list(response.json()) == [field]
    assert _stored() == before


def test_the_api_keeps_to_the_same_cap_and_names_as_the_page(employee, settings):
    settings.PKIPORTAL_MAX_API_TOKENS = 2
    client = session_client(employee)
    assert client.post(TOKEN, {"label": "one"}, format="json").status_code == 200
    twin = client.post(TOKEN, {"label": "ONE"}, format="json")
    assert client.post(TOKEN, {}, format="json").status_code == 200
    before = _stored()

    over = client.post(TOKEN, {"label": "three"}, format="json")

    assert twin.status_code == 400
    assert "already have a token with that name" in twin.json()["label"][0]
    assert over.status_code == 400
    assert "the most one person may hold (2)" in over.json()["detail"]
    assert _stored() == before


def test_api_and_web_audit_the_same_facts(employee):
    from enrollment.models import AuditEvent

    client = token_client(None)
    minted = client.post(
        TOKEN, {"label": "ci"}, format="json", **basic("alice", SIGN_IN_PASSWORD)
    ).json()
    client.credentials(HTTP_AUTHORIZATION=f"Token {minted['token']}")
    client.post(LOGOUT)
    other = token_client(employee)
    other.post(LOGOUT_ALL)

    created, revoked, revoked_all = (
        e.detail for e in AuditEvent.objects.filter(action__startswith="api_token.").order_by("id")
    )
    assert created["prefix"] == minted["prefix"]
    assert (created["label"], created["via"]) == ("ci", "api")
    assert revoked == {"prefix": minted["prefix"], "label": "ci", "via": "api"}
    assert revoked_all["via"] == "api"
    assert revoked_all["count"] == 1


def test_someone_without_a_portal_password_gets_a_token_from_the_page(employee):
    """Single sign-on and directory accounts have no password HTTP basic could check."""
    employee.set_unusable_password()
    employee.save()
    assert token_client(None).post(TOKEN, **basic("alice", "")).status_code == 401

    client = session_client(employee)
    page = client.post("/account/tokens/new/", {"label": "sso laptop", "lifetime_days": "30"})

    assert page.status_code == 200
    assert _with_token(page.context["token"]).get(CERTIFICATES).status_code == 200


def test_an_existing_token_of_a_deactivated_account_stops_working_at_once(employee):
    client = token_client(employee)
    assert client.get(CERTIFICATES).status_code == 200

    employee.is_active = False
    employee.save()

    assert client.get(CERTIFICATES).status_code == 401
    employee.is_active = True
    employee.save()
    assert client.get(CERTIFICATES).status_code == 200  # reactivated: it was never deleted


# --- a browser session mints a token only soon after signing in -------------------------


def test_a_session_signed_in_long_ago_mints_no_token_but_basic_auth_still_does(employee):
    """A token outlives the session: a stolen session cookie must not be enough."""
    client = session_client(employee)
    with time_machine.travel(timezone.now() + timedelta(minutes=16), tick=False):
        refused = client.post(TOKEN)
        by_password = token_client(None).post(TOKEN, **basic("alice", SIGN_IN_PASSWORD))

    assert refused.status_code == 403
    assert "Sign in again" in refused.json()["detail"]
    assert by_password.status_code == 200
    assert AuthToken.objects.count() == 1


def test_a_one_minute_window_is_said_in_the_singular(employee, settings):
    settings.PKIPORTAL_TOKEN_SIGN_IN_MINUTES = 1
    client = session_client(employee)
    with time_machine.travel(timezone.now() + timedelta(minutes=2), tick=False):
        refused = client.post(TOKEN)

    assert refused.status_code == 403
    assert "it must be within 1 minute of signing in." in refused.json()["detail"]


def test_a_session_within_the_window_mints_a_token(employee, settings):
    settings.PKIPORTAL_TOKEN_SIGN_IN_MINUTES = 30
    client = session_client(employee)
    with time_machine.travel(timezone.now() + timedelta(minutes=29), tick=False):
        assert client.post(TOKEN).status_code == 200


def test_minting_from_a_session_does_not_stretch_its_sign_in(employee):
    """Found by review: the endpoint's own user_logged_in marked the session freshly signed
    in, so one sign-in could mint a token every 14 minutes for ever."""
    client = session_client(employee)
    start = timezone.now()
    with time_machine.travel(start + timedelta(minutes=14), tick=False):
        assert client.post(TOKEN).status_code == 200
    with time_machine.travel(start + timedelta(minutes=28), tick=False):
        assert client.post(TOKEN).status_code == 403


def test_a_sign_in_time_from_the_future_is_not_recent(employee, rf):
    """A clock stepped back (or skewed web nodes) must not stretch the window by the skew."""
    from accounts.session_store import SessionStore
    from enrollment import recent_sign_in

    request = rf.get("/account/tokens/")
    request.session = SessionStore()
    request.session[recent_sign_in.SIGNED_IN_AT] = (timezone.now() + timedelta(days=3)).isoformat()
    assert not recent_sign_in.signed_in_recently(request)
    request.session[recent_sign_in.SIGNED_IN_AT] = (
        timezone.now() + timedelta(minutes=1)
    ).isoformat()
    assert recent_sign_in.signed_in_recently(request)
