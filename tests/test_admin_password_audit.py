"""An administrator who sets someone's password is audited; nobody else's sign-in is."""

from __future__ import annotations

import json
import secrets

import pytest

from django.contrib.auth.hashers import make_password

from enrollment.models import AuditEvent
from tests.conftest import client_for
from tests.enrollment.tools import error_report

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "Quartz-Lantern-Harbour-77"


def password_page(user) -> str:
    return f"/admin/accounts/user/{user.pk}/password/"


def events() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="account.password_set"))


def test_setting_a_password_in_the_admin_is_audited_without_the_password(
    admin_client_, admin_user, employee
):
    response = admin_client_.post(
        password_page(employee),
        {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"},
        REMOTE_ADDR="192.0.2.7",
    )

    assert response.status_code == 302
    employee.refresh_from_db()
    assert employee.check_password(NEW_PASSWORD)
    [event] = events()
    assert event.actor == admin_user
    assert event.object_id == str(employee.pk)
    assert event.source_address == "192.0.2.7"
    assert event.detail == {"usable": True, "source": "admin"}
    stored = json.dumps(AuditEvent.objects.values().get(pk=event.pk), default=str)
    assert NEW_PASSWORD not in stored
    assert employee.password not in stored


def test_switching_password_sign_in_off_is_audited_too(admin_client_, employee):
    response = admin_client_.post(
        password_page(employee), {"usable_password": "false", "unset-password": "1"}
    )

    assert response.status_code == 302
    employee.refresh_from_db()
    assert not employee.has_usable_password()
    [event] = events()
    assert event.detail == {"usable": False, "source": "admin"}


def test_a_refused_form_changes_nothing_and_records_nothing(admin_client_, employee):
    before = employee.password

    response = admin_client_.post(
        password_page(employee),
        {"password1": NEW_PASSWORD, "password2": "something else", "usable_password": "true"},
    )

    assert response.status_code == 200
    employee.refresh_from_db()
    assert employee.password == before
    assert events() == []


@pytest.mark.parametrize("who", ["employee", "officer", None])
def test_who_is_not_staff_cannot_set_a_password(request, colleague, who):
    user = request.getfixturevalue(who) if who else None
    before = colleague.password

    response = client_for(user).post(
        password_page(colleague),
        {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"},
    )

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    colleague.refresh_from_db()
    assert colleague.password == before
    assert events() == []


def test_a_sign_in_that_rehashes_the_password_is_not_an_event(client, employee, settings):
    """Django re-hashes a password under an outdated hasher when its owner signs in."""
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    ]
    employee.password = make_password(NEW_PASSWORD, hasher="pbkdf2_sha256")
    employee.save()

    response = client.post(
        "/accounts/login/", {"username": employee.username, "password": NEW_PASSWORD}
    )

    assert response.status_code == 302
    employee.refresh_from_db()
    assert employee.password.startswith("md5$")  # it was re-hashed
    assert events() == []


@pytest.mark.parametrize("account", ["999999", "not-a-number"])
def test_an_unknown_account_is_a_404_not_an_error(admin_client_, account):
    data = {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"}

    response = admin_client_.post(f"/admin/accounts/user/{account}/password/", data)

    assert response.status_code == 404
    assert events() == []


def test_a_server_error_on_the_password_page_hides_the_new_password(
    admin_client_, employee, monkeypatch
):
    """An error before Django's own view runs (here, finding the account) is reported with
    the request: its POST must not show the password on the debug page or in mail."""
    from accounts.admin import PortalUserAdmin

    password = f"Hidden-{secrets.token_urlsafe()}"  # not a literal: those show as source lines

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(PortalUserAdmin, "get_object", broken)
    admin_client_.raise_request_exception = True

    with error_report(RuntimeError) as report:
        admin_client_.post(
            password_page(employee),
            {"password1": password, "password2": password, "usable_password": "true"},
        )

    assert "user_change_password" in report.text
    assert password not in report.text
