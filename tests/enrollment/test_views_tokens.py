"""/account/tokens/: a signed-in person lists, creates and revokes their own API tokens.

The way to a token for people who sign in without a portal password (single sign-on, a
directory); shown once, stored as knox's digest only, audited, capped, and nobody else's.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
import time_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from knox.models import AuthToken

from django.contrib.messages.storage.cookie import CookieStorage
from django.core import mail
from django.db import OperationalError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient, APIRequestFactory

from accounts.models import AccountSession as Session
from enrollment import recent_sign_in, services
from enrollment.api import authentication
from enrollment.api.authentication import TokenAuthentication
from enrollment.models import ApiToken, AuditEvent
from tests.conftest import client_for
from tests.enrollment.api_tools import CERTIFICATES
from tests.second_factor import verified_login

pytestmark = pytest.mark.django_db

TOKENS = "/account/tokens/"
SIGN_IN_PASSWORD = "correct horse battery staple"  # tests/factories.py
CREATE = "/account/tokens/new/"
REVOKE_ALL = "/account/tokens/revoke-all/"
NOON = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def revoke_url(named: ApiToken) -> str:
    return f"/account/tokens/{named.pk}/revoke/"


def create(client: Client, label: str = "backup script", days: object = 30):
    return client.post(CREATE, {"label": label, "lifetime_days": str(days)})


def made(client: Client, label: str = "backup script", days: int = 30) -> tuple[ApiToken, str]:
    """A token made through the page: its row and the token as the page shows it. The
    sign-in counts as recent at whatever moment the test has travelled to (the tests of
    the recent sign-in itself use create())."""
    with mock.patch.object(recent_sign_in, "signed_in_recently", return_value=True):
        response = create(client, label, days)
    assert response.status_code == 200, response.content.decode()
    return response.context["api_token"], response.context["token"]


def api_with(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def token_events() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action__startswith="api_token.").order_by("id"))


def stored() -> dict[str, int]:
    return {
        "tokens": AuthToken.objects.count(),
        "rows": ApiToken.objects.count(),
        "events": AuditEvent.objects.count(),
    }


# --- who may and who may not ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", TOKENS),
        ("post", CREATE),
        ("post", "/account/tokens/1/revoke/"),
        ("post", REVOKE_ALL),
    ],
)
def test_anonymous_is_sent_to_sign_in_and_nothing_happens(anonymous_client, method, path):
    response = getattr(anonymous_client, method)(path, {"label": "x", "lifetime_days": "30"})

    assert response.status_code == 302
    assert response["Location"].startswith(f"/accounts/login/?next={path}")
    assert stored() == {"tokens": 0, "rows": 0, "events": 0}


def test_a_deactivated_account_loses_the_page_and_its_tokens_stop_working(employee):
    client = client_for(employee)
    _named, token = made(client)
    assert api_with(token).get(CERTIFICATES).status_code == 200

    employee.is_active = False
    employee.save()

    assert api_with(token).get(CERTIFICATES).status_code == 401
    assert client.get(TOKENS).status_code == 302  # the session no longer signs them in
    assert create(client).status_code == 302
    assert AuthToken.objects.filter(user=employee).count() == 1


def test_i_see_my_tokens_and_not_my_colleagues(employee, colleague):
    made(client_for(employee), "mine on build-01")
    theirs, _ = made(client_for(colleague), "bobs laptop")

    page = client_for(employee).get(TOKENS).content.decode()

    assert "mine on build-01" in page
    assert "bobs laptop" not in page
    assert theirs.auth_token.token_key not in page
    assert revoke_url(theirs) not in page


@pytest.mark.parametrize("who", ["colleague", "officer", "admin_user"])
def test_nobody_revokes_another_persons_token_here(request, employee, who):
    named, token = made(client_for(employee))
    other = client_for(request.getfixturevalue(who))

    response = other.post(revoke_url(named), {"confirm": "on"})

    assert response.status_code == 404
    assert api_with(token).get(CERTIFICATES).status_code == 200
    assert [e.action for e in token_events()] == ["api_token.create"]


def test_revoke_all_takes_only_mine(employee, colleague):
    mine = [made(client_for(employee), f"mine {n}")[1] for n in range(2)]
    _, theirs = made(client_for(colleague), "theirs")

    response = client_for(employee).post(REVOKE_ALL, {"confirm": "on"})

    assert response.status_code == 302
    assert all(api_with(token).get(CERTIFICATES).status_code == 401 for token in mine)
    assert api_with(theirs).get(CERTIFICATES).status_code == 200


@pytest.mark.parametrize("path", [CREATE, "revoke", REVOKE_ALL])
def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(employee, path):
    named, token = made(client_for(employee))
    client = Client(enforce_csrf_checks=True)
    verified_login(client, employee)
    before = stored()

    url = revoke_url(named) if path == "revoke" else path
    response = client.post(url, {"label": "sneaky", "lifetime_days": "30", "confirm": "on"})

    assert response.status_code == 403
    assert stored() == before
    assert api_with(token).get(CERTIFICATES).status_code == 200


@pytest.mark.parametrize("path", [CREATE, "/account/tokens/1/revoke/", REVOKE_ALL])
def test_the_actions_answer_only_post(employee_client, path):
    assert employee_client.get(path).status_code == 405


def test_an_unknown_token_id_is_404(employee_client):
    assert (
        employee_client.post("/account/tokens/999999/revoke/", {"confirm": "on"}).status_code == 404
    )


# --- the token works, once shown, until revoked ----------------------------------------


def test_a_created_token_authenticates_the_api_until_i_revoke_it(employee, employee_client):
    named, token = made(employee_client, "nightly export")

    assert api_with(token).get(CERTIFICATES).status_code == 200

    response = employee_client.post(revoke_url(named), {"confirm": "on"})

    assert response.status_code == 302
    assert response["Location"] == TOKENS
    assert api_with(token).get(CERTIFICATES).status_code == 401
    assert not ApiToken.objects.filter(pk=named.pk).exists()
    page = employee_client.get(TOKENS).content.decode()
    assert "“nightly export”" in page
    assert "is revoked" in page


def test_revoking_needs_the_tick_and_without_it_nothing_is_revoked(employee_client):
    named, token = made(employee_client)

    refused = employee_client.post(revoke_url(named), {})
    refused_all = employee_client.post(REVOKE_ALL, {})

    assert refused.status_code == 400
    assert refused_all.status_code == 400
    assert "Tick the box to confirm." in refused.content.decode()
    assert api_with(token).get(CERTIFICATES).status_code == 200


def test_a_revocation_without_the_tick_focuses_that_tokens_tick_box(employee_client):
    """The token's row is far down the page on a phone: its box is autofocused, so the
    browser scrolls to it and its error, and no other box is."""
    named, _token = made(employee_client, "backup script")
    made(employee_client, "ci runner")

    page = employee_client.post(revoke_url(named), {}).content.decode()

    focused = re.findall(r"<input[^>]*autofocus[^>]*>", page)
    assert len(focused) == 1
    assert f'id="revoke-{named.pk}-confirm"' in focused[0]
    assert employee_client.get(TOKENS).content.decode().count("autofocus") == 0


def test_the_token_is_shown_once_uncached_and_never_again(employee_client):
    response = create(employee_client, "ci runner")
    token = response.context["token"]

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    assert "private" in response["Cache-Control"]
    assert not response.has_header("Location")
    page = response.content.decode()
    assert re.search(
        rf'<input type="text" id="new-token" class="token" value="{token}" readonly', page
    )
    assert "shown only this once" in page
    assert token not in employee_client.get(TOKENS).content.decode()
    assert "no-store" in employee_client.get(TOKENS)["Cache-Control"]


def test_the_list_names_each_token_by_label_and_prefix_with_its_dates(employee_client):
    with time_machine.travel(NOON, tick=False):
        named, token = made(employee_client, "backup on nas-02", days=7)

    page = employee_client.get(TOKENS).content.decode()

    assert "backup on nas-02" in page
    assert f"<code>{token[:15]}…</code>" in page
    assert "2026-11-02 12:00" in page  # created
    assert "2026-11-09 12:00" in page  # expires
    assert named.auth_token.digest not in page


# --- what the token lives and how many -------------------------------------------------


def test_the_lifetime_is_the_one_chosen(employee_client):
    with time_machine.travel(NOON, tick=False):
        named, _ = made(employee_client, days=7)

    assert named.auth_token.expiry == NOON + timedelta(days=7)


@pytest.mark.parametrize(
    ("days", "problem"),
    [
        ("91", "Choose one of the lifetimes offered."),  # API_TOKEN_TTL_DAYS is 90
        ("365", "Choose one of the lifetimes offered."),
        ("0", "Choose one of the lifetimes offered."),
        ("-1", "Choose one of the lifetimes offered."),
        ("90.5", "Choose one of the lifetimes offered."),
        ("forever", "Choose one of the lifetimes offered."),
        ("", "Choose how long the token lives."),
    ],
)
def test_a_lifetime_beyond_api_token_ttl_days_or_not_offered_is_refused(
    employee_client, days, problem
):
    before = stored()

    response = create(employee_client, "too long", days)

    assert response.status_code == 400
    assert problem in response.content.decode()
    assert stored() == before


def test_the_lifetimes_offered_stop_at_api_token_ttl_days(employee_client, settings):
    settings.API_TOKEN_TTL_DAYS = 10

    page = employee_client.get(TOKENS).content.decode()
    refused = create(employee_client, "a month", 30)
    with time_machine.travel(NOON, tick=False):
        named, _ = made(employee_client, "ten days", 10)

    assert re.findall(r'<option value="(\d+)"', page) == ["1", "7", "10"]
    assert "10 days (the longest allowed)" in page
    assert refused.status_code == 400
    assert named.auth_token.expiry == NOON + timedelta(days=10)


def test_the_default_lifetime_is_30_days(employee_client):
    page = employee_client.get(TOKENS).content.decode()

    assert '<option value="30" selected>30 days</option>' in page


def test_the_service_never_mints_beyond_api_token_ttl_days(employee, settings):
    settings.API_TOKEN_TTL_DAYS = 5

    with pytest.raises(services.PolicyViolation) as refused:
        services.api_token_create(owner=employee, label="x", lifetime_days=6, via="web")

    assert refused.value.field == "lifetime_days"
    assert not AuthToken.objects.exists()


def test_a_person_holds_at_most_the_cap_of_live_tokens(employee_client, employee, settings):
    settings.PKIPORTAL_MAX_API_TOKENS = 2
    made(employee_client, "one")
    named, _ = made(employee_client, "two")
    before = stored()

    refused = create(employee_client, "three")

    assert refused.status_code == 400
    page = refused.content.decode()
    assert "You already have 2 API tokens, the most one person may hold (2)" in page
    assert stored() == before
    assert "the most allowed" in employee_client.get(TOKENS).content.decode()

    # An expired token no longer counts; a revoked one is gone.
    AuthToken.objects.filter(pk=named.auth_token.pk).update(expiry=NOON - timedelta(days=1))
    made(employee_client, "three")


def test_the_cap_is_per_person(employee_client, colleague, settings):
    settings.PKIPORTAL_MAX_API_TOKENS = 1
    made(client_for(colleague), "theirs")

    made(employee_client, "mine")


def test_two_of_my_tokens_may_not_share_a_name(employee_client):
    made(employee_client, "Laptop")
    before = stored()

    refused = create(employee_client, "  laptop ")

    assert refused.status_code == 400
    assert "You already have a token with that name" in refused.content.decode()
    assert stored() == before


@pytest.mark.parametrize(
    ("label", "problem"),
    [
        ("", "Name the token"),
        ("   ", "Name the token"),
        ("x" * 101, "at most 100 characters"),
        ("tab\there", "no control or invisible characters"),
        ("bidi \u202egnp.exe", "no control or invisible characters"),
        ("zero\u200bwidth", "no control or invisible characters"),
        ("nul\x00", "Null characters are not allowed."),
    ],
)
def test_a_bad_name_is_refused_saying_why(employee_client, label, problem):
    before = stored()

    response = create(employee_client, label)

    assert response.status_code == 400
    assert problem in response.content.decode()
    assert stored() == before


FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(
    label=st.one_of(
        st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=150),
        st.sampled_from(["backup", " ci ", "é" * 100, "😀 token", "<script>", "\x00", "a\u202eb"]),
    ),
    days=st.one_of(
        st.sampled_from(["1", "7", "30", "90", "91", "0", "-7", "1e3", " 30", "٣٠"]),
        st.integers(min_value=-(10**20), max_value=10**20).map(str),
        st.text(max_size=20),
    ),
)
def test_fuzzed_form_input_never_fails_and_a_refusal_stores_nothing(employee, label, days):
    AuthToken.objects.filter(user=employee).delete()  # earlier examples' tokens: not the cap
    client = client_for(employee)
    before = stored()

    response = client.post(CREATE, {"label": label, "lifetime_days": days})

    assert response.status_code in (200, 400)
    if response.status_code == 400:
        assert stored() == before
    else:
        named = response.context["api_token"]
        assert named.label == label.strip()
        assert int(days) <= 90
        assert stored() == {k: v + 1 for k, v in before.items()}
        assert response.context["token"] in response.content.decode()


# --- secrecy and the audit trail --------------------------------------------------------


def _everything_stored() -> str:
    """Every value of every table, and every session decoded, as text."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            for row in cursor.fetchall():
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        chunks.append(bytes(value).decode("latin-1"))
                    else:
                        chunks.append(str(value))
    chunks += [str(session.get_decoded()) for session in Session.objects.all()]
    return "\n".join(chunks)


def test_the_token_is_nowhere_in_the_database_logs_audit_mail_or_cookies(
    employee, employee_client, caplog, django_capture_on_commit_callbacks
):
    caplog.set_level(logging.DEBUG)
    with django_capture_on_commit_callbacks(execute=True):
        response = create(employee_client, "secret keeper")
    assert len(mail.outbox) == 1
    token = response.context["token"]
    named = response.context["api_token"]
    digest = named.auth_token.digest
    assert api_with(token).get(CERTIFICATES).status_code == 200
    employee_client.get(TOKENS)
    employee_client.post(revoke_url(named), {"confirm": "on"})
    employee_client.get(TOKENS)

    assert token not in _everything_stored()
    assert token not in caplog.text
    for event in token_events():
        recorded = str([getattr(event, f.attname) for f in AuditEvent._meta.concrete_fields])
        assert token not in recorded
        assert digest not in recorded
        assert token[15:30] not in recorded  # no more of it than the prefix
    for message in mail.outbox:
        assert token not in message.body
        assert token not in message.subject
    for name, morsel in employee_client.cookies.items():
        assert token not in morsel.value
        if name == "messages":
            decoded = CookieStorage(HttpRequest())._decode(morsel.value) or []
            assert all(token not in str(m) for m in decoded)


def test_creating_and_revoking_are_audited_by_prefix_and_name(employee, employee_client):
    named, token = made(employee_client, "deploy bot")
    second, _ = made(employee_client, "other")
    employee_client.post(revoke_url(named), {"confirm": "on"})
    employee_client.post(REVOKE_ALL, {"confirm": "on"})

    events = token_events()
    assert [(e.action, e.actor_name, e.object_repr) for e in events] == [
        ("api_token.create", "alice", str(employee)),
        ("api_token.create", "alice", str(employee)),
        ("api_token.revoke", "alice", str(employee)),
        ("api_token.revoke_all", "alice", str(employee)),
    ]
    created, _, revoked, revoked_all = (e.detail for e in events)
    assert created["prefix"] == token[:15]
    assert created["label"] == "deploy bot"
    assert created["via"] == "web"
    assert created["expires"]
    assert revoked == {"prefix": token[:15], "label": "deploy bot", "via": "web"}
    assert revoked_all == {
        "count": 1,
        "prefixes": [second.auth_token.token_key],
        "via": "web",
    }
    assert all(e.source_address == "127.0.0.1" for e in events)


def test_no_token_is_made_when_its_audit_event_cannot_be_written(employee, monkeypatch):
    """The token, its row and its audit event commit together or not at all."""

    def broken(**kwargs):
        raise RuntimeError("audit trail unavailable")

    monkeypatch.setattr(services, "audit_record", broken)

    with pytest.raises(RuntimeError):
        services.api_token_create(owner=employee, label="unaudited", via="web")

    assert not AuthToken.objects.exists()
    assert not ApiToken.objects.exists()


def test_the_owner_is_mailed_about_a_new_token_without_it(
    employee, employee_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        named, token = made(employee_client, "printer scan-to-mail")

    [message] = mail.outbox
    assert message.to == [employee.email]
    assert "A new API token was created" in message.subject
    assert '"printer scan-to-mail"' in message.body
    assert named.auth_token.token_key in message.body
    assert "127.0.0.1" in message.body
    assert "/account/tokens/" in message.body
    assert token not in message.body


# --- last use, at most once an hour ----------------------------------------------------


def test_the_last_use_is_written_at_most_once_an_hour(employee_client, django_assert_num_queries):
    with time_machine.travel(NOON - timedelta(hours=1), tick=False):
        named, token = made(employee_client)
    assert named.last_used_at is None

    def check() -> None:
        request = APIRequestFactory().get(CERTIFICATES, HTTP_AUTHORIZATION=f"Token {token}")
        TokenAuthentication().authenticate(request)

    with time_machine.travel(NOON, tick=False):
        with django_assert_num_queries(2):  # the token with its row, and the one write
            check()
        with django_assert_num_queries(1):  # read only, for the rest of the hour
            check()
    with (
        time_machine.travel(NOON + timedelta(minutes=59), tick=False),
        django_assert_num_queries(1),
    ):
        check()
    with time_machine.travel(NOON + timedelta(hours=1), tick=False):
        assert api_with(token).get(CERTIFICATES).status_code == 200

    named.refresh_from_db()
    assert named.last_used_at == NOON + timedelta(hours=1)
    assert "2026-11-02 13:00" in employee_client.get(TOKENS).content.decode()


@pytest.fixture
def fresh_use_notes(monkeypatch):
    """This process has noted and written no token use yet."""
    monkeypatch.setattr(authentication, "_uses_noted", {})
    monkeypatch.setattr(authentication, "_uses_pending", {})
    monkeypatch.setattr(authentication, "_written_at", None)


def authenticate(token: str) -> None:
    request = APIRequestFactory().get(CERTIFICATES, HTTP_AUTHORIZATION=f"Token {token}")
    assert TokenAuthentication().authenticate(request) is not None


def test_a_busy_api_writes_the_uses_of_many_tokens_once_a_minute(
    employee, fresh_use_notes, django_assert_num_queries
):
    """Each call may bring a token not seen this hour (a script per person enrolling): one
    write a minute for them all, not one per call on the enrolment path."""
    client = client_for(employee)
    with time_machine.travel(NOON - timedelta(hours=2), tick=False):
        tokens = [made(client, f"script {n}") for n in range(4)]

    with time_machine.travel(NOON, tick=False) as clock:
        # The first call after a quiet minute is written at once.
        with django_assert_num_queries(2):
            authenticate(tokens[0][1])
        for _named, token in tokens[1:]:
            clock.shift(timedelta(seconds=10))
            with django_assert_num_queries(1):  # noted only
                authenticate(token)
        clock.shift(timedelta(seconds=30))
        with django_assert_num_queries(2):  # a minute on: one statement for the three
            authenticate(tokens[1][1])

    used = {named.pk: ApiToken.objects.get(pk=named.pk).last_used_at for named, _ in tokens}
    assert used[tokens[0][0].pk] == NOON
    # Each with the moment it was used, though written together a minute on.
    assert [used[named.pk] for named, _ in tokens[1:]] == [
        NOON + timedelta(seconds=10 * n) for n in (1, 2, 3)
    ]


def test_uses_not_yet_written_are_written_when_the_process_exits(employee, fresh_use_notes):
    client = client_for(employee)
    first, second = made(client, "one"), made(client, "two")
    authenticate(first[1])
    authenticate(second[1])
    assert ApiToken.objects.get(pk=second[0].pk).last_used_at is None

    authentication._write_at_exit()

    assert ApiToken.objects.get(pk=second[0].pk).last_used_at is not None


def test_no_use_is_written_inside_a_callers_transaction(employee, fresh_use_notes):
    """Found by review: a request's rollback (ATOMIC_REQUESTS) took the whole batch of
    other tokens' uses with it. Uses noted inside a transaction wait for a call outside."""
    named, token = made(client_for(employee))
    with time_machine.travel(NOON, tick=False), transaction.atomic():
        authenticate(token)
        assert ApiToken.objects.get(pk=named.pk).last_used_at is None
    with time_machine.travel(NOON + timedelta(minutes=5), tick=False):
        authenticate(token)

    assert ApiToken.objects.get(pk=named.pk).last_used_at == NOON


def test_a_failed_write_keeps_the_uses_for_the_next_one(employee, fresh_use_notes, monkeypatch):
    named, token = made(client_for(employee))
    other, other_token = made(client_for(employee), "other")

    def broken(**kwargs):
        raise OperationalError("lock timeout")

    with time_machine.travel(NOON, tick=False), monkeypatch.context() as patched:
        patched.setattr(services, "api_token_uses_record", broken)
        authenticate(token)
    with time_machine.travel(NOON + timedelta(minutes=2), tick=False):
        authenticate(other_token)  # the next write takes both

    assert ApiToken.objects.get(pk=named.pk).last_used_at == NOON
    assert ApiToken.objects.get(pk=other.pk).last_used_at == NOON + timedelta(minutes=2)


def test_a_failed_write_of_the_last_use_never_fails_the_call(
    employee, fresh_use_notes, monkeypatch, caplog
):
    named, token = made(client_for(employee))

    def broken(**kwargs):
        raise OperationalError("lock timeout")

    monkeypatch.setattr(services, "api_token_uses_record", broken)
    with caplog.at_level(logging.WARNING, logger="enrollment.api.authentication"):
        assert api_with(token).get(CERTIFICATES).status_code == 200

    assert "Could not record the last use of 1 API tokens" in caplog.text
    assert token not in caplog.text
    monkeypatch.undo()
    monkeypatch.setattr(authentication, "_written_at", None)
    assert api_with(token).get(CERTIFICATES).status_code == 200  # noted again, and written
    assert ApiToken.objects.get(pk=named.pk).last_used_at is not None


# --- a recent sign-in --------------------------------------------------------------------


def test_a_token_needs_a_sign_in_within_the_last_minutes(employee, settings):
    """A stolen session cookie must not mint a token that outlives it: the page sends the
    person to sign in again, and after that the token is made."""
    client = Client()
    assert (
        client.post(
            "/accounts/login/", {"username": "alice", "password": SIGN_IN_PASSWORD}
        ).status_code
        == 302
    )
    later = timezone.now() + timedelta(minutes=settings.PKIPORTAL_TOKEN_SIGN_IN_MINUTES)

    with time_machine.travel(later, tick=False):
        page = client.get(TOKENS).content.decode()
        refused = create(client)
        assert "sign in again first" in page
        assert refused.status_code == 302
        assert refused["Location"] == "/accounts/login/?next=%2Faccount%2Ftokens%2F"
        assert not AuthToken.objects.exists()
        assert not token_events()

        signed_in = client.post(
            refused["Location"], {"username": "alice", "password": SIGN_IN_PASSWORD}
        )
        assert signed_in["Location"] == TOKENS
        assert "sign in again first" not in client.get(TOKENS).content.decode()
        assert create(client).status_code == 200

    assert AuthToken.objects.get().user == employee


def test_a_one_minute_window_is_said_in_the_singular(employee, settings):
    settings.PKIPORTAL_TOKEN_SIGN_IN_MINUTES = 1
    client = Client()
    client.post("/accounts/login/", {"username": "alice", "password": SIGN_IN_PASSWORD})

    with time_machine.travel(timezone.now() + timedelta(minutes=2), tick=False):
        page = client.get(TOKENS).content.decode()
        told = client.get(create(client)["Location"]).content.decode()

    assert "it takes a sign-in within the last 1 minute." in " ".join(page.split())
    assert "it must be within 1 minute of signing in." in told
    assert "1 minutes" not in page + told


def test_single_sign_on_counts_as_signing_in(employee, rf):
    """Any path through django.contrib.auth.login notes the moment, OIDC's included."""
    from django.contrib.auth import login

    from accounts.session_store import SessionStore
    from enrollment import recent_sign_in

    request = rf.get("/oidc/callback/")
    request.session = SessionStore()
    login(request, employee, backend="django.contrib.auth.backends.ModelBackend")

    assert recent_sign_in.signed_in_recently(request)


# --- the admin --------------------------------------------------------------------------


def test_the_admin_lists_tokens_by_owner_name_and_prefix_never_the_digest(admin_client_, employee):
    named, _ = made(client_for(employee), "leavers script")

    page = admin_client_.get("/admin/enrollment/apitoken/").content.decode()
    detail = admin_client_.get(f"/admin/enrollment/apitoken/{named.pk}/change/").content.decode()

    assert "leavers script" in page
    assert "alice" in page
    assert named.auth_token.token_key in page
    assert named.auth_token.digest not in page + detail
    assert admin_client_.get("/admin/knox/authtoken/").status_code == 404  # knox's own page
    assert admin_client_.get("/admin/enrollment/apitoken/add/").status_code == 403


def test_an_admin_revokes_a_leavers_token_audited_and_the_owner_is_told(
    admin_client_, employee, django_capture_on_commit_callbacks
):
    named, token = made(client_for(employee), "old laptop")

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client_.post(
            f"/admin/enrollment/apitoken/{named.pk}/delete/", {"post": "yes"}
        )

    assert response.status_code == 302
    assert api_with(token).get(CERTIFICATES).status_code == 401
    event = token_events()[-1]
    assert (event.action, event.actor_name, event.object_id) == (
        "api_token.revoke",
        "root-admin",
        str(employee.pk),
    )
    assert event.detail == {"prefix": token[:15], "label": "old laptop", "via": "admin"}
    [message] = mail.outbox
    assert message.to == [employee.email]
    assert "old laptop" in message.body


def test_staff_without_the_permission_do_not_see_tokens(employee):
    staff = client_for(type(employee).objects.create(username="helpdesk", is_staff=True))
    named, _ = made(client_for(employee))

    assert staff.get("/admin/enrollment/apitoken/").status_code == 403
    assert (
        staff.post(f"/admin/enrollment/apitoken/{named.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert ApiToken.objects.filter(pk=named.pk).exists()


# --- the upgrade ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_migration_gives_tokens_minted_before_it_an_unnamed_row(employee):
    """So the owner's page lists every token they hold and can revoke each one."""
    executor = MigrationExecutor(connection)
    before = [
        ("enrollment", "0017_request_idempotency_key"),
        ("knox", "0009_extend_authtoken_field"),
    ]
    executor.migrate(before)
    old_apps = executor.loader.project_state(before).apps
    OldToken = old_apps.get_model("knox", "AuthToken")
    for n in range(3):
        OldToken.objects.create(digest=f"{n:0128x}", token_key=f"{n:015x}", user_id=employee.pk)

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    rows = ApiToken.objects.filter(auth_token__user=employee)
    assert sorted(rows.values_list("auth_token__token_key", "label")) == [
        (f"{n:015x}", "") for n in range(3)
    ]
    page = client_for(employee).get(TOKENS).content.decode()
    assert page.count("no name") == 3


# --- where people find it ---------------------------------------------------------------


def test_the_header_and_the_api_docs_lead_to_the_page(employee_client):
    assert f'<a href="{TOKENS}">API tokens</a>' in employee_client.get("/").content.decode()
    schema = employee_client.get("/api/v1/schema/?format=json").json()
    assert "/account/tokens/" in schema["info"]["description"]
