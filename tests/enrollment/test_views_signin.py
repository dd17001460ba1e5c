"""Sign-in through the real login view, and django-axes locking out password guessers."""

from __future__ import annotations

import pytest

from django.test import Client

from tests.factories import UserFactory
from tests.second_factor import verified_login

pytestmark = pytest.mark.django_db

RIGHT = "correct horse battery staple"  # tests/factories.py gives every user this password


def sign_in(client: Client, username: str, password: str, address: str = "192.0.2.10"):
    return client.post(
        "/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=address
    )


@pytest.fixture
def alice(db):
    return UserFactory(username="alice", first_name="Alice", last_name="Andersson")


def test_the_sign_in_page_explains_itself(anonymous_client):
    response = anonymous_client.get("/accounts/login/")

    assert response.status_code == 200
    assert "Use your company account" in response.content.decode()


def test_a_person_signs_in_and_lands_where_they_were_going(anonymous_client, alice):
    response = anonymous_client.post(
        "/accounts/login/?next=/certificates/",
        {"username": "alice", "password": RIGHT, "next": "/certificates/"},
    )

    assert response.status_code == 302
    assert response["Location"] == "/certificates/"
    assert anonymous_client.get("/certificates/").status_code == 200


def test_a_wrong_password_says_so_without_saying_which_part_was_wrong(anonymous_client, alice):
    response = sign_in(anonymous_client, "alice", "not it")

    assert response.status_code == 200
    assert "enter a correct username and password" in response.content.decode()


def test_it_locks_out_after_the_failure_limit(anonymous_client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert sign_in(anonymous_client, "alice", "guess").status_code == 200

    locked = sign_in(anonymous_client, "alice", "guess")

    assert locked.status_code == 429
    page = locked.content.decode()
    assert "Too many failed sign-ins" in page
    assert f"After {settings.AXES_FAILURE_LIMIT} wrong passwords" in page
    assert "for 1 hour" in page
    # Even the right password is refused while the lock lasts.
    assert sign_in(anonymous_client, "alice", RIGHT).status_code == 429
    assert anonymous_client.get("/certificates/").status_code == 302


def test_the_lock_is_for_that_user_from_that_address_only(anonymous_client, alice, settings):
    UserFactory(username="bob")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        sign_in(anonymous_client, "alice", "guess")

    assert sign_in(Client(), "bob", RIGHT).status_code == 302
    assert sign_in(Client(), "alice", RIGHT, address="198.51.100.7").status_code == 302


def test_a_successful_sign_in_forgets_earlier_failures(anonymous_client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        sign_in(anonymous_client, "alice", "guess")
    assert sign_in(Client(), "alice", RIGHT).status_code == 302

    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert sign_in(anonymous_client, "alice", "guess").status_code == 200


def test_signing_out_takes_a_post(alice):
    client = Client()
    verified_login(client, alice)

    assert client.get("/accounts/logout/").status_code == 405  # a link cannot sign you out
    response = client.post("/accounts/logout/")

    assert response.status_code == 200  # "You have signed out"
    assert client.get("/certificates/").status_code == 302


@pytest.mark.parametrize("header", ["HTTP_USER_AGENT", "HTTP_ACCEPT"])
def test_a_nul_in_a_header_is_a_space_so_a_failed_sign_in_is_still_counted(
    anonymous_client, alice, header
):
    """django-axes stores these headers, and PostgreSQL refuses NUL in text (was a 500)."""
    from axes.models import AccessAttempt

    response = anonymous_client.post(
        "/accounts/login/", {"username": "alice", "password": "guess"}, **{header: "a\x00b"}
    )

    assert response.status_code == 200
    attempt = AccessAttempt.objects.get(username="alice")
    stored = attempt.user_agent if header == "HTTP_USER_AGENT" else attempt.http_accept
    assert stored == "a b"


def test_a_nul_in_a_header_does_not_stop_a_sign_in(anonymous_client, alice):
    response = anonymous_client.post(
        "/accounts/login/", {"username": "alice", "password": RIGHT}, HTTP_USER_AGENT="x\x00"
    )

    assert response.status_code == 302
