"""Browser sessions are stored with the account they are signed in as, so a person's
sessions end with one indexed query; expired ones are cleared daily."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
import time_machine

from django.conf import settings as django_settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, login, update_session_auth_hash
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.sessions.backends.base import UpdateError
from django.contrib.sessions.backends.db import SessionStore as DjangoDatabaseStore
from django.contrib.sessions.exceptions import SessionInterrupted
from django.contrib.sessions.middleware import SessionMiddleware
from django.contrib.sessions.models import Session as DjangoSession
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts import mfa
from accounts.models import AccountSession, TotpDevice
from accounts.session_store import SessionStore, account_of
from accounts.sessions import session_keys_of, sessions_clear_expired, sessions_end
from enrollment.tasks import sessions_clear_expired_task
from tests.conftest import client_for
from tests.factories import UserFactory
from tests.second_factor import authenticator

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"  # tests.factories.UserFactory's


def account_in_row(client: Client) -> int | None:
    return AccountSession.objects.get(session_key=client.cookies["sessionid"].value).account_id


def signed_out(client: Client) -> bool:
    response = client.get("/certificates/")
    return response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def stored_session(user, store=SessionStore) -> str:
    """A session signed in as ``user`` (None: nobody), written as a request would; its key."""
    session = store()
    if user is not None:
        session[SESSION_KEY] = str(user.pk)
    session["seen"] = True
    session.save()
    return session.session_key


# --- the engine ---------------------------------------------------------------------------


def test_the_portal_engine_is_the_default():
    assert django_settings.SESSION_ENGINE == "accounts.session_store"
    assert SessionStore.get_model_class() is AccountSession
    assert AccountSession.get_session_store_class() is SessionStore
    assert AccountSession._meta.get_field("account_id").db_index


def test_a_sign_in_through_the_form_stores_the_account_with_the_new_key(employee):
    client = Client()
    before = client.session  # a session from before the sign-in, of nobody
    before["next_page"] = "/certificates/"
    before.save()
    assert account_in_row(client) is None

    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})

    assert response.status_code == 302
    assert client.cookies["sessionid"].value != before.session_key  # Django cycled the key
    assert not AccountSession.objects.filter(session_key=before.session_key).exists()
    assert account_in_row(client) == employee.pk
    assert session_keys_of(employee) == [client.cookies["sessionid"].value]


def test_signing_in_as_someone_else_in_the_same_browser_moves_the_session(employee, colleague):
    client = Client()
    client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert account_in_row(client) == employee.pk

    client.post("/accounts/login/", {"username": "bob", "password": PASSWORD})

    assert account_in_row(client) == colleague.pk
    assert session_keys_of(employee) == []
    assert sessions_end(employee) == 0
    assert not signed_out(client)


def test_signing_out_leaves_no_session_of_the_person(employee):
    client = client_for(employee)
    assert len(session_keys_of(employee)) == 1

    assert client.post("/accounts/logout/").status_code in (200, 302)

    assert session_keys_of(employee) == []
    assert not AccountSession.objects.filter(account_id=employee.pk).exists()


def test_a_password_change_keeps_the_account_on_the_cycled_key(employee, rf):
    request = rf.get("/")
    request.session, request.user = SessionStore(), employee
    login(request, employee, backend="django.contrib.auth.backends.ModelBackend")
    request.session.save()
    old_key = request.session.session_key

    employee.set_password("a new password for alice")
    employee.save()
    update_session_auth_hash(request, employee)
    request.session.save()

    assert request.session.session_key != old_key
    assert session_keys_of(employee) == [request.session.session_key]
    assert AccountSession.objects.get(session_key=request.session.session_key).account_id == (
        employee.pk
    )


@pytest.mark.parametrize(
    ("data", "account"),
    [
        ({SESSION_KEY: "42"}, 42),
        ({}, None),
        ({SESSION_KEY: ""}, None),
        ({SESSION_KEY: "42 OR 1=1"}, None),
        ({SESSION_KEY: "٤٢"}, None),  # digits, but not ASCII ones
        ({SESSION_KEY: None}, None),
    ],
)
def test_the_account_is_read_from_the_session_data_or_left_empty(data, account):
    assert account_of(data) == account


def test_data_of_djangos_own_engine_reads_unchanged(employee):
    """The same signing salt: sessions copied at the upgrade, or read after a switch back."""
    key = stored_session(employee, store=DjangoDatabaseStore)
    row = DjangoSession.objects.get(session_key=key)

    assert SessionStore().decode(row.session_data) == {SESSION_KEY: str(employee.pk), "seen": True}


# --- ending a person's sessions -----------------------------------------------------------


def test_it_ends_only_that_persons_sessions_but_the_one_kept(employee, colleague):
    here, phone, laptop = client_for(employee), client_for(employee), client_for(employee)
    others = [client_for(colleague), client_for(colleague)]
    anonymous = stored_session(None)
    kept = here.session.session_key

    assert sessions_end(employee, keep=here.session) == 2

    assert session_keys_of(employee) == [kept]
    assert signed_out(phone)
    assert signed_out(laptop)
    assert not signed_out(here)
    assert len(session_keys_of(colleague)) == 2
    assert not any(signed_out(other) for other in others)
    assert AccountSession.objects.filter(session_key=anonymous).exists()

    assert sessions_end(employee) == 1
    assert signed_out(here)
    assert len(session_keys_of(colleague)) == 2


def test_it_takes_the_same_few_queries_however_many_sessions_others_have(employee, colleague):
    stored_session(employee)
    stored_session(employee)

    def queries_to_end() -> list[str]:
        with CaptureQueriesContext(connection) as queries:
            sessions_end(employee)
        sql = [query["sql"] for query in queries.captured_queries]
        return [query for query in sql if "SAVEPOINT" not in query]  # its transaction's

    stored_session(colleague)
    few = queries_to_end()
    stored_session(employee)
    for _ in range(50):
        stored_session(colleague)
        stored_session(None)
    many = queries_to_end()

    # The generation raised and read back, then the live rows (counted), then the rest.
    assert len(few) == len(many) == 4
    raise_generation, read_back, delete_live, delete_rest = many
    assert raise_generation.startswith('UPDATE "accounts_user" SET "session_generation"')
    assert read_back.startswith("SELECT")
    assert '"accounts_user"' in read_back
    assert delete_live.startswith("DELETE")
    assert '"expire_date" >' in delete_live
    assert delete_rest.startswith("DELETE")
    assert "expire_date" not in delete_rest
    assert all('"account_id" =' in sql and "session_data" not in sql for sql in many[2:])
    with CaptureQueriesContext(connection) as queries:
        session_keys_of(colleague)
    (select,) = queries.captured_queries
    assert "session_data" not in select["sql"]


def test_it_deletes_the_persons_expired_rows_too_but_counts_only_live_ones(employee, colleague):
    start = timezone.now()
    with time_machine.travel(start - timedelta(days=1), tick=False):
        expired = stored_session(employee)
        others_expired = stored_session(colleague)
    live = stored_session(employee)

    assert sessions_end(employee) == 1

    assert not AccountSession.objects.filter(session_key__in=[expired, live]).exists()
    assert AccountSession.objects.filter(session_key=others_expired).exists()  # the daily task's


def test_a_request_in_flight_cannot_save_an_ended_session_back(employee):
    """The request loaded its session before the reset; its save at the end must fail,
    not write the session again."""
    key = stored_session(employee)
    in_flight = SessionStore(key)
    assert in_flight[SESSION_KEY] == str(employee.pk)

    sessions_end(employee)
    in_flight["changed"] = "during the request"

    with pytest.raises(UpdateError):
        in_flight.save()
    assert not AccountSession.objects.filter(session_key=key).exists()


def test_a_request_in_flight_that_cycles_its_key_does_not_bring_the_session_back(employee):
    """cycle_key() INSERTs a new row with the data loaded before the end (a second-factor
    confirmation, a sign-in, a password change): that row names the person, but signs
    nobody in, as the session's hash names the account's previous generation."""
    client = client_for(employee)
    in_flight = SessionStore(client.session.session_key)
    assert in_flight[SESSION_KEY] == str(employee.pk)  # loaded by the request

    sessions_end(employee)  # an administrator's reset, while that request runs
    in_flight.cycle_key()
    in_flight.save()

    old_key = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    assert not AccountSession.objects.filter(session_key=old_key).exists()
    assert session_keys_of(employee) == [in_flight.session_key]  # the new row names them
    client.cookies[django_settings.SESSION_COOKIE_NAME] = in_flight.session_key
    assert signed_out(client)


def test_a_session_saved_back_after_an_admin_reset_cannot_set_up_a_new_app(employee, admin_user):
    """The reviewer's case: the browser beside the lost phone confirms a code just as an
    administrator resets the second factor; its cycled session must not survive to set up
    an authenticator of its own."""
    authenticator(employee)
    browser = client_for(employee)
    in_flight = SessionStore(browser.session.session_key)
    assert in_flight[SESSION_KEY] == str(employee.pk)

    mfa.second_factor_reset(actor=admin_user, target=employee, source_address=None)
    in_flight.cycle_key()  # mark_verified, at the end of that request
    in_flight.save()
    browser.cookies[django_settings.SESSION_COOKIE_NAME] = in_flight.session_key

    response = browser.get("/account/two-factor/setup/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert not TotpDevice.objects.filter(user=employee).exists()


def test_the_middleware_refuses_a_request_whose_session_ended_meanwhile(employee, rf):
    key = stored_session(employee)
    request = rf.get("/")
    request.COOKIES[django_settings.SESSION_COOKIE_NAME] = key

    def view(request):
        assert request.session[SESSION_KEY] == str(employee.pk)
        sessions_end(employee)  # an administrator's reset, while this request runs
        request.session["changed"] = True
        return HttpResponse()

    with pytest.raises(SessionInterrupted):
        SessionMiddleware(view)(request)
    assert session_keys_of(employee) == []


def test_with_djangos_own_engine_it_still_finds_the_person_by_reading(
    employee, colleague, settings
):
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.db"
    mine = [stored_session(employee, DjangoDatabaseStore) for _ in range(2)]
    theirs = stored_session(colleague, DjangoDatabaseStore)

    assert sorted(session_keys_of(employee)) == sorted(mine)
    assert sessions_end(employee, keep=DjangoDatabaseStore(mine[0])) == 1

    assert sorted(DjangoSession.objects.values_list("session_key", flat=True)) == sorted(
        [mine[0], theirs]
    )


def test_a_session_left_in_djangos_table_is_refused_after_a_switch_back(employee, settings):
    """accounts/0008 copies live sessions and leaves them in django_session: a session
    ended since must not sign anyone in when SESSION_ENGINE goes back to Django's."""
    key = client_for(employee).session.session_key
    row = AccountSession.objects.get(session_key=key)
    DjangoSession.objects.create(
        session_key=key, session_data=row.session_data, expire_date=row.expire_date
    )

    assert sessions_end(employee) == 1  # by the portal's engine: its own table only

    settings.SESSION_ENGINE = "django.contrib.sessions.backends.db"
    assert DjangoSession.objects.filter(session_key=key).exists()
    browser = Client()
    browser.cookies[settings.SESSION_COOKIE_NAME] = key
    assert signed_out(browser)


def test_with_djangos_engine_an_expired_session_saved_back_in_flight_signs_nobody_in(
    employee, settings
):
    """Django's engines are searched for unexpired sessions only: one a request loaded just
    before it expired is not deleted, and that request's save gives it a new expiry."""
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.db"
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        browser = client_for(employee)
        key = browser.session.session_key
    with time_machine.travel(start + timedelta(seconds=settings.SESSION_COOKIE_AGE - 1)):
        in_flight = DjangoDatabaseStore(key)
        assert in_flight[SESSION_KEY] == str(employee.pk)  # loaded while still live
    with time_machine.travel(start + timedelta(seconds=settings.SESSION_COOKIE_AGE + 1)):
        assert sessions_end(employee) == 0  # expired: not found
        in_flight["changed"] = "during the request"
        in_flight.save()

        assert DjangoSession.objects.get(session_key=key).expire_date > timezone.now()
        assert signed_out(browser)


# --- the session generation ---------------------------------------------------------------


def test_before_any_end_the_hash_is_djangos_so_the_upgrade_signs_nobody_out(employee):
    assert employee.session_generation == 0
    assert employee.get_session_auth_hash() == AbstractBaseUser._get_session_auth_hash(employee)

    sessions_end(employee)

    assert employee.session_generation == 1  # read back onto the caller's instance
    assert employee.get_session_auth_hash() != AbstractBaseUser._get_session_auth_hash(employee)


def test_every_end_raises_the_generation_and_refuses_the_sessions_before(employee):
    first = client_for(employee)
    sessions_end(employee)
    second = client_for(employee)
    sessions_end(employee)

    employee.refresh_from_db()
    assert employee.session_generation == 2
    assert signed_out(first)
    assert signed_out(second)
    assert not signed_out(client_for(employee))  # signing in again works


def test_an_instance_read_before_the_end_does_not_save_the_old_generation_back(employee):
    """A directory sync or an admin form holds the account from before an end; its save
    must not put the generation back, which would sign the ended sessions in again."""
    browser = client_for(employee)
    stale = type(employee).objects.get(pk=employee.pk)

    sessions_end(employee)
    stale.first_name = "Alicia"
    stale.save()

    stale.refresh_from_db()
    assert stale.first_name == "Alicia"
    assert stale.session_generation == 1
    assert signed_out(browser)


def test_the_session_kept_stays_signed_in_only_if_it_is_the_persons(employee, colleague):
    mine, theirs = client_for(employee), client_for(colleague)

    sessions_end(employee, keep=theirs.session)  # not the person's: not given their hash

    assert signed_out(mine)
    assert not signed_out(theirs)
    assert theirs.session[HASH_SESSION_KEY] == colleague.get_session_auth_hash()


def test_a_password_change_after_an_end_keeps_the_changer_signed_in(employee, rf):
    here, elsewhere = client_for(employee), client_for(employee)
    sessions_end(employee, keep=here.session)
    other_after = client_for(employee)
    request = rf.get("/")
    request.session = SessionStore(here.session.session_key)
    request.user = type(employee).objects.get(pk=employee.pk)  # as the request loads it

    request.user.set_password("a new password for alice")
    request.user.save()
    update_session_auth_hash(request, request.user)
    request.session.save()

    here.cookies[django_settings.SESSION_COOKIE_NAME] = request.session.session_key
    assert not signed_out(here)
    assert signed_out(elsewhere)
    assert signed_out(other_after)  # a password change signs out the others, as ever


def test_a_session_of_the_old_secret_and_generation_still_verifies_by_the_fallback(
    employee, settings
):
    sessions_end(employee)
    before_rotation = employee.get_session_auth_hash()

    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a new secret key, long enough to be one, rotated in today"

    assert employee.get_session_auth_hash() != before_rotation
    assert before_rotation in list(employee.get_session_auth_fallback_hash())
    sessions_end(employee)
    assert before_rotation not in list(employee.get_session_auth_fallback_hash())


@pytest.mark.parametrize(
    "engine",
    ["django.contrib.sessions.backends.cache", "django.contrib.sessions.backends.signed_cookies"],
)
def test_an_engine_that_cannot_list_sessions_is_refused(employee, settings, engine):
    settings.SESSION_ENGINE = engine

    with pytest.raises(ImproperlyConfigured, match="keeps no session table"):
        sessions_end(employee)


def test_deactivating_many_accounts_costs_a_query_each_not_a_pass_each(employee, colleague):
    people = UserFactory.create_batch(3)
    for person in [employee, colleague, *people]:
        stored_session(person)
    for _ in range(30):
        stored_session(None)

    with CaptureQueriesContext(connection) as queries:
        for person in people:
            person.is_active = False
            person.save()

    touching = [q["sql"] for q in queries.captured_queries if "accounts_accountsession" in q["sql"]]
    assert len(touching) == 2 * len(people)
    assert all('"account_id" =' in sql and "session_data" not in sql for sql in touching)
    assert not AccountSession.objects.filter(account_id__in=[p.pk for p in people]).exists()
    assert AccountSession.objects.filter(account_id__in=[employee.pk, colleague.pk]).count() == 2


# --- clearing expired sessions ------------------------------------------------------------


def test_the_daily_task_deletes_expired_sessions_only(employee, colleague):
    start = timezone.now()
    with time_machine.travel(start - timedelta(days=2), tick=False):
        old = stored_session(employee)
        old_anonymous = stored_session(None)
        old_django = stored_session(employee, DjangoDatabaseStore)  # left from before 0008
    live = stored_session(colleague)
    live_django = stored_session(colleague, DjangoDatabaseStore)

    assert sessions_clear_expired_task.delay().get() == 3

    assert list(AccountSession.objects.values_list("session_key", flat=True)) == [live]
    assert list(DjangoSession.objects.values_list("session_key", flat=True)) == [live_django]
    assert not {old, old_anonymous, old_django} & set(
        AccountSession.objects.values_list("session_key", flat=True)
    )
    assert sessions_clear_expired() == 0


def test_with_an_engine_without_a_table_the_daily_task_warns_and_clears_what_is_left(
    employee, settings, caplog
):
    with time_machine.travel(timezone.now() - timedelta(days=2), tick=False):
        stored_session(employee)
        stored_session(employee, DjangoDatabaseStore)
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cache"

    assert sessions_clear_expired_task.delay().get() == 2

    assert "keeps no session table" in caplog.text
    assert not AccountSession.objects.exists()
    assert not DjangoSession.objects.exists()


def test_the_command_clears_both_tables_as_the_task_does(employee):
    with time_machine.travel(timezone.now() - timedelta(days=2), tick=False):
        stored_session(employee)
        stored_session(employee, DjangoDatabaseStore)
    live = stored_session(employee)
    out = StringIO()

    call_command("sessions_clear_expired", stdout=out)

    assert "Deleted 2 expired sessions." in out.getvalue()
    assert list(AccountSession.objects.values_list("session_key", flat=True)) == [live]
    assert not DjangoSession.objects.exists()


def test_a_session_expires_by_the_cookie_age(employee, settings):
    """What the task goes by: a row expires SESSION_COOKIE_AGE after its last write."""
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        stored_session(employee)
    with time_machine.travel(start + timedelta(seconds=settings.SESSION_COOKIE_AGE - 60)):
        assert sessions_clear_expired() == 0
        assert len(session_keys_of(employee)) == 1
    with time_machine.travel(start + timedelta(seconds=settings.SESSION_COOKIE_AGE + 60)):
        assert session_keys_of(employee) == []
        assert sessions_clear_expired() == 1


def test_beat_runs_it_daily():
    entry = django_settings.CELERY_BEAT_SCHEDULE["sessions-clear-expired"]

    assert entry["task"] == sessions_clear_expired_task.name
    assert entry["schedule"] == timedelta(days=1)


# --- the upgrade ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_upgrade_copies_live_sessions_with_their_account():
    executor = MigrationExecutor(connection)
    executor.migrate([("accounts", "0007_webauthn_device")])
    try:
        old_state = executor.loader.project_state(("accounts", "0007_webauthn_device"))
        OldUser = old_state.apps.get_model("accounts", "User")
        person = OldUser.objects.create(username="dora")
        signed_in = stored_session(person, DjangoDatabaseStore)
        anonymous = stored_session(None, DjangoDatabaseStore)
        with time_machine.travel(timezone.now() - timedelta(days=2), tick=False):
            expired = stored_session(person, DjangoDatabaseStore)
        tampered = stored_session(person, DjangoDatabaseStore)
        DjangoSession.objects.filter(session_key=tampered).update(session_data="forged:data")

        MigrationExecutor(connection).migrate([("accounts", "0008_account_session")])

        copied = dict(AccountSession.objects.values_list("session_key", "account_id"))
        read_back = SessionStore(signed_in).load()
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
    assert copied == {signed_in: person.pk, anonymous: None}
    assert expired not in copied
    assert read_back == {SESSION_KEY: str(person.pk), "seen": True}
