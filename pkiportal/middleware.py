"""Request hygiene that every view relies on, applied before anything reads the request;
Django's messages, made only for the requests that use them."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from django.contrib.messages import middleware as messages_middleware
from django.contrib.messages.storage import default_storage
from django.http import HttpRequest, HttpResponse
from django.utils.functional import SimpleLazyObject, empty


def header_nul_to_space(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """Replace NUL in header field values with a space, as RFC 9110 5.5 lets a recipient.

    django-axes stores User-Agent and Accept with every failed sign-in, and PostgreSQL
    refuses NUL in text: one such header turned a wrong password into a 500. gunicorn
    refuses these headers already; other servers (runserver, some proxies) pass them on.
    """

    def middleware(request: HttpRequest) -> HttpResponse:
        meta = request.META
        for name, value in meta.items():
            if name.startswith("HTTP_") and isinstance(value, str) and "\x00" in value:
                meta[name] = value.replace("\x00", " ")
        return get_response(request)

    return middleware


class MessageMiddleware(messages_middleware.MessageMiddleware):
    """Django's messages, with their storage made when a message is first added or read.

    Django builds the storage for every request, a cookie signer and all (~65,000
    instructions of each API call, bench/enroll_instructions.py), though only web pages
    use messages. A storage nobody touched has nothing to store in the response either:
    Django's update() then does nothing, so skipping it answers the same."""

    def process_request(self, request: HttpRequest) -> None:
        request._messages = SimpleLazyObject(partial(default_storage, request))  # type: ignore[attr-defined]

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        messages = getattr(request, "_messages", None)
        if isinstance(messages, SimpleLazyObject) and messages._wrapped is empty:
            return response
        return super().process_response(request, response)
