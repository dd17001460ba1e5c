"""/account/'s "Sign out everywhere else": the person's other browser sessions end, the
acting one stays, API tokens are untouched; audited with the count."""

from __future__ import annotations

import pytest

from django.contrib.auth import SESSION_KEY
from django.test import Client

from accounts.models import AccountSession
from enrollment.models import AuditEvent
from tests.conftest import client_for
from tests.second_factor import authenticator, verified_login

pytestmark = pytest.mark.django_db

URL = "/account/sessions/sign-out-elsewhere/"
ACTION = "account.sessions_end"


def signed_in(client: Client) -> bool:
    """Whether the client's next request is still signed in (its own session is read)."""
    response = client.get("/account/")
    return response.status_code == 200


def sessions_of(user) -> int:
    return AccountSession.objects.filter(account_id=user.pk).count()


def test_anonymous_is_sent_to_sign_in_and_nothing_happens(anonymous_client, employee):
    other = client_for(employee)

    response = anonymous_client.post(URL)

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert signed_in(other)
    assert not AuditEvent.objects.filter(action=ACTION).exists()


def test_get_is_refused(employee_client, employee):
    other = client_for(employee)

    assert employee_client.get(URL).status_code == 405
    assert signed_in(other)
    assert not AuditEvent.objects.filter(action=ACTION).exists()


def test_csrf_is_enforced(employee):
    other = client_for(employee)
    client = verified_login(Client(enforce_csrf_checks=True), employee)

    assert client.post(URL).status_code == 403
    assert signed_in(other)
    assert not AuditEvent.objects.filter(action=ACTION).exists()

    client.get("/account/")  # sets the CSRF cookie, as the page's form would use it
    token = client.cookies["csrftoken"].value
    response = client.post(URL, {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert not signed_in(other)


def test_an_employee_ends_their_other_sessions_and_stays_signed_in(employee, colleague):
    acting, laptop, phone = client_for(employee), client_for(employee), client_for(employee)
    bobs = client_for(colleague)
    assert sessions_of(employee) == 3

    response = acting.post(URL, follow=True)

    assert response.status_code == 200
    assert "2 other sessions signed out" in response.content.decode()
    for ended in (laptop, phone):
        gone = ended.get("/account/")
        assert gone.status_code == 302
        assert gone["Location"].startswith("/accounts/login/")
        assert SESSION_KEY not in ended.session
    assert signed_in(acting)
    assert sessions_of(employee) == 1
    assert signed_in(bobs)
    assert sessions_of(colleague) == 1
    event = AuditEvent.objects.get(action=ACTION)
    assert event.actor == employee
    assert event.outcome == AuditEvent.Outcome.SUCCESS
    assert event.detail == {"via": "self", "sessions_ended": 2}


def test_with_no_other_session_it_says_none_and_audits_zero(employee_client):
    response = employee_client.post(URL, follow=True)

    assert "0 other sessions signed out" in response.content.decode()
    assert signed_in(employee_client)
    assert AuditEvent.objects.get(action=ACTION).detail["sessions_ended"] == 0


def test_the_page_offers_it_and_says_tokens_stay(employee_client):
    text = employee_client.get("/account/").content.decode()

    assert f'action="{URL}"' in text
    assert "API tokens are not affected" in text


def test_a_verified_officer_may_use_it_without_a_code(officer):
    acting, other = client_for(officer), client_for(officer)

    response = acting.post(URL)

    assert response.status_code == 302
    assert response["Location"] == "/account/"
    assert not signed_in(other)
    assert signed_in(acting)  # still verified: no second step asked again
    assert AuditEvent.objects.get(action=ACTION).detail["sessions_ended"] == 1


def test_a_session_still_in_its_second_step_cannot_reach_it(officer):
    authenticator(officer)
    other = client_for(officer)
    pending = Client()
    pending.force_login(officer)  # password done, code not yet

    response = pending.post(URL)

    assert response.status_code == 302
    assert response["Location"] == "/account/two-factor/verify/"
    assert signed_in(other)
    assert sessions_of(officer) == 2
    assert not AuditEvent.objects.filter(action=ACTION).exists()
