"""Request hygiene that every view relies on, applied before anything reads the request."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse


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
