"""Only sign-in and sign-out are mounted under /accounts/: no password reset or change.

A password reset by e-mail would hand an account (a superuser's too) to whoever reads its
mailbox, with no audit event; Django's password change checks the old password outside
django-axes, so a stolen session could guess it without limit.
"""

from __future__ import annotations

import pytest

from django.urls import NoReverseMatch, reverse

from tests.factories import UserFactory
from tests.second_factor import verified_login

pytestmark = pytest.mark.django_db

PASSWORD_PAGES = [
    "/accounts/password_reset/",
    "/accounts/password_reset/done/",
    "/accounts/reset/MQ/set-password/",
    "/accounts/reset/done/",
    "/accounts/password_change/",
    "/accounts/password_change/done/",
    # The admin's copy checks the old password outside django-axes just the same.
    "/admin/password_change/",
    "/admin/password_change/done/",
]


@pytest.mark.parametrize("url", PASSWORD_PAGES)
def test_password_pages_do_not_exist_signed_in_or_not(client, url):
    assert client.get(url).status_code == 404
    assert client.post(url, {"email": "alice@example.com"}).status_code in (403, 404)

    verified_login(client, UserFactory())
    assert client.get(url).status_code == 404

    verified_login(client, UserFactory(is_staff=True, is_superuser=True))
    assert client.get(url).status_code == 404
    assert client.post(url, {"old_password": "guess"}).status_code in (403, 404)


def test_the_admin_offers_no_password_change_and_names_the_portal(client):
    verified_login(client, UserFactory(is_staff=True, is_superuser=True))

    page = client.get("/admin/").content.decode()

    assert "password_change" not in page
    assert "Change password" not in page
    assert "pkiportal administration" in page
    assert "Log out" in page


@pytest.mark.parametrize("name", ["password_reset", "password_change", "password_reset_done"])
def test_no_password_url_can_be_linked(name):
    with pytest.raises(NoReverseMatch):
        reverse(name)


def test_sign_in_and_out_still_work(client):
    user = UserFactory(username="alice")
    user.set_password("a long enough passphrase")
    user.save()

    assert client.get(reverse("login")).status_code == 200
    signed_in = client.post(
        reverse("login"), {"username": "alice", "password": "a long enough passphrase"}
    )
    assert signed_in.status_code == 302
    assert client.get(reverse("home")).context["user"] == user
    assert client.post(reverse("logout")).status_code in (200, 302)
    assert not client.get(reverse("home")).context["user"].is_authenticated


def test_signing_out_says_so(client):
    verified_login(client, UserFactory(username="alice"))

    response = client.post(reverse("logout"))

    assert response.status_code == 200
    assert "You have signed out" in response.content.decode()
    assert not client.get(reverse("home")).context["user"].is_authenticated
