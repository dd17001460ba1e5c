"""An account records when it stopped being active, however it was switched off.

The moment starts the grace period after which a leaver's certificates are revoked
(enrollment.leavers); reactivating the account clears it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from accounts.sso import update_account_from_claims
from tests.conftest import client_for
from tests.enrollment.test_change_audit import admin_post

pytestmark = pytest.mark.django_db

MONDAY = datetime(2027, 3, 1, 9, 30, tzinfo=UTC)


def stored(user) -> datetime | None:
    return get_user_model().objects.values_list("deactivated_at", flat=True).get(pk=user.pk)


def test_an_active_account_has_no_deactivation_time(employee):
    assert employee.deactivated_at is None
    assert stored(employee) is None


def test_code_switching_an_account_off_records_the_moment(employee):
    employee.is_active = False
    with time_machine.travel(MONDAY, tick=False):
        employee.save()

    assert stored(employee) == MONDAY


def test_a_save_of_is_active_alone_records_it_too(employee):
    employee.is_active = False
    with time_machine.travel(MONDAY, tick=False):
        employee.save(update_fields=["is_active"])

    assert stored(employee) == MONDAY


def test_saving_an_inactive_account_again_keeps_the_first_moment(employee):
    employee.is_active = False
    with time_machine.travel(MONDAY, tick=False):
        employee.save()
    with time_machine.travel(MONDAY + timedelta(days=2), tick=False):
        employee.last_name = "Renamed"
        employee.save()
        fresh = get_user_model().objects.get(pk=employee.pk)
        fresh.save()

    assert stored(employee) == MONDAY


def test_a_sign_in_saving_last_login_does_not_touch_it(employee):
    employee.is_active = False
    employee.save()
    before = stored(employee)
    assert before is not None
    employee.deactivated_at = None  # what a stale object in memory might hold

    employee.save(update_fields=["last_login"])

    assert stored(employee) == before


def test_reactivating_clears_it(employee):
    employee.is_active = False
    employee.save()
    assert stored(employee) is not None

    employee.is_active = True
    employee.save()

    assert stored(employee) is None


def test_a_directory_sync_switching_the_account_off_records_it(employee):
    """An LDAP or OIDC backend writes the flag onto the account and saves it whole."""
    employee.is_active = False
    with time_machine.travel(MONDAY, tick=False):
        update_account_from_claims(
            employee, {"given_name": "Alice", "family_name": "A", "email": "alice@example.com"}
        )

    assert stored(employee) == MONDAY


def test_the_admin_switching_an_account_off_and_on_records_and_clears_it(admin_user, employee):
    url = f"/admin/accounts/user/{employee.pk}/change/"
    with time_machine.travel(MONDAY, tick=False):
        admin = client_for(admin_user)
        admin_post(admin, url, is_active=False)

        assert stored(employee) == MONDAY
        page = admin.get(url).content.decode()
        assert "Deactivated at" in page

        admin_post(admin, url, is_active=True)

    assert stored(employee) is None


def test_the_admin_cannot_edit_the_moment_itself(admin_user, employee):
    employee.is_active = False
    url = f"/admin/accounts/user/{employee.pk}/change/"
    with time_machine.travel(MONDAY, tick=False):
        employee.save()
        admin_post(client_for(admin_user), url, deactivated_at="2020-01-01 00:00:00")

    assert stored(employee) == MONDAY


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_migration_starts_existing_inactive_accounts_clock_at_the_upgrade():
    """Not in the past: an upgrade must not revoke at once what nobody has looked at."""
    executor = MigrationExecutor(connection)
    executor.migrate([("accounts", "0003_username_upper_index")])
    try:
        old_state = executor.loader.project_state(("accounts", "0003_username_upper_index"))
        OldUser = old_state.apps.get_model("accounts", "User")
        OldUser.objects.create(username="left-long-ago", is_active=False)
        OldUser.objects.create(username="still-here", is_active=True)

        executor = MigrationExecutor(connection)
        with time_machine.travel(MONDAY, tick=False):
            executor.migrate([("accounts", "0004_user_deactivated_at")])
        after = MigrationExecutor(connection).loader.project_state(
            ("accounts", "0004_user_deactivated_at")
        )
        UserThen = after.apps.get_model("accounts", "User")
        times = dict(UserThen.objects.values_list("username", "deactivated_at"))
    finally:
        # Back to the newest schema: the next test on this worker uses today's models (a
        # later migration's columns were missing for it, and it failed at setup).
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
    assert times == {"left-long-ago": MONDAY, "still-here": None}


def test_the_admin_says_what_deactivating_does_to_certificates(admin_client_, employee, settings):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 48

    page = admin_client_.get(f"/admin/accounts/user/{employee.pk}/change/").content.decode()

    assert "their valid certificates are revoked 48 hours later (by the scheduled task" in page


# --- the person's sessions end ----------------------------------------------------------


def signed_out(client) -> bool:
    response = client.get("/certificates/")
    return response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_the_admin_switching_an_account_off_signs_the_person_out_for_good(
    admin_user, employee, colleague
):
    person, bystander = client_for(employee), client_for(colleague)
    url = f"/admin/accounts/user/{employee.pk}/change/"
    admin = client_for(admin_user)

    admin_post(admin, url, is_active=False)
    assert signed_out(person)
    # Switched back on (a mistake put right), the old session stays ended: it is deleted,
    # not merely refused while the account is off.
    admin_post(admin, url, is_active=True)

    assert signed_out(person)
    assert not signed_out(bystander)
    assert not signed_out(admin)


def test_a_directory_sync_switching_the_account_off_ends_its_sessions(employee):
    person = client_for(employee)
    employee.is_active = False
    employee.save(update_fields=["is_active"])
    employee.is_active = True
    employee.save(update_fields=["is_active"])

    assert signed_out(person)


@pytest.fixture
def single_sign_on(settings):
    """The OIDC backend signs people in (and, per session, loads them again)."""
    settings.AUTHENTICATION_BACKENDS = [
        "axes.backends.AxesStandaloneBackend",
        "accounts.oidc.PortalOIDCBackend",
    ]
    settings.OIDC_OP_AUTHORIZATION_ENDPOINT = "https://idp.example.com/authorize"
    settings.OIDC_OP_TOKEN_ENDPOINT = "https://idp.example.com/token"
    settings.OIDC_OP_USER_ENDPOINT = "https://idp.example.com/userinfo"
    settings.OIDC_OP_JWKS_ENDPOINT = "https://idp.example.com/jwks"
    settings.OIDC_RP_CLIENT_ID = "pkiportal"
    settings.OIDC_RP_CLIENT_SECRET = "secret"
    settings.OIDC_RP_SIGN_ALGO = "RS256"
    return "accounts.oidc.PortalOIDCBackend"


def test_a_single_sign_on_session_ends_when_a_bulk_write_switches_the_account_off(
    single_sign_on, employee
):
    # mozilla-django-oidc's get_user() loads inactive accounts too, and a QuerySet.update()
    # passes no save() that could delete the session: the session check itself refuses.
    person = client_for(employee)
    person.force_login(employee, backend=single_sign_on)
    assert not signed_out(person)

    get_user_model().objects.filter(pk=employee.pk).update(is_active=False)

    assert signed_out(person)
    get_user_model().objects.filter(pk=employee.pk).update(is_active=True)
    assert signed_out(person)
