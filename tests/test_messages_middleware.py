"""pkiportal.middleware.MessageMiddleware: Django's messages, their storage made on first use."""

from __future__ import annotations

import pytest

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import clear_url_caches, path
from django.utils.functional import empty

from pkiportal import urls as portal_urls

pytestmark = pytest.mark.django_db

OURS = "pkiportal.middleware.MessageMiddleware"
DJANGOS = "django.contrib.messages.middleware.MessageMiddleware"


def add(request: HttpRequest) -> HttpResponse:
    messages.success(request, "Saved.")
    return HttpResponse("added")


def show(request: HttpRequest) -> HttpResponse:
    return HttpResponse(" | ".join(str(message) for message in messages.get_messages(request)))


def ignore(request: HttpRequest) -> HttpResponse:
    return HttpResponse("nothing")


@pytest.fixture(params=[OURS, DJANGOS])
def middleware(request, monkeypatch, settings):
    """The same flows under ours and under Django's: they must answer alike."""
    settings.MIDDLEWARE = [request.param if m == OURS else m for m in settings.MIDDLEWARE]
    views = [path("m/add/", add), path("m/show/", show), path("m/ignore/", ignore)]
    monkeypatch.setattr(portal_urls, "urlpatterns", [*views, *portal_urls.urlpatterns])
    clear_url_caches()
    yield request.param
    monkeypatch.undo()
    clear_url_caches()


def _cookie(response: HttpResponse) -> tuple[str, str] | None:
    morsel = response.cookies.get("messages")  # CookieStorage.cookie_name
    return None if morsel is None else (morsel.value, morsel["max-age"])


def test_a_message_reaches_the_next_page_once(middleware):
    client = Client()

    added = client.get("/m/add/")
    ignored = client.get("/m/ignore/")  # does not read them: they stay
    shown = client.get("/m/show/")
    again = client.get("/m/show/")

    assert _cookie(added) is not None
    assert _cookie(ignored) is None
    assert shown.content == b"Saved."
    assert _cookie(shown) == ("", 0)  # read: the cookie is deleted
    assert again.content == b""


def test_a_request_that_uses_no_messages_answers_without_making_their_storage(middleware):
    response = Client().get("/m/ignore/")

    assert _cookie(response) is None
    if middleware == OURS:
        assert response.wsgi_request._messages._wrapped is empty
