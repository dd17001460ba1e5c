"""Request hygiene that every view relies on, applied before anything reads the request;
Django's messages, made only for the requests that use them; the audit events of refused
attempts, written after the request's transaction."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from django.conf import settings
from django.contrib.messages import middleware as messages_middleware
from django.contrib.messages.storage import default_storage
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
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


def audit_apart(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """Chain the audit events of refused attempts that were made inside the request's
    transaction (ATOMIC_REQUESTS) once it has ended, committed or rolled back, so that a
    403's rollback never takes the record of the attempt with it
    (enrollment.audit.audit_record_apart). Outside one they were written at once."""
    from enrollment.audit import write_apart

    def middleware(request: HttpRequest) -> HttpResponse:
        try:
            return get_response(request)
        finally:
            write_apart()

    return middleware


def body_size_cap(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """Answer 413 to a body declared larger than DATA_UPLOAD_MAX_MEMORY_SIZE, unread.

    Django holds request.body and a form's fields to that cap, but streams the files of a
    multipart body to a temporary file however large they are; and CsrfViewMiddleware
    reads the form, files and all, of any POST carrying a CSRF cookie before a view's
    sign-in check, so an anonymous 20 MiB upload was written to disk whole. Nothing the
    portal takes comes near the cap (a CSR, a certificate or an agent's PKCS#12 is at
    most 64 KiB): here it bounds the whole body, as README says. It runs before every
    view and every middleware's process_view; under WSGI a body sent without a length
    (chunked) is never read by Django at all. Under ASGI Django spools the whole body
    before any middleware runs: serve the portal with gunicorn's WSGI workers, as README
    does, or cap bodies at the proxy.
    """
    from pkiportal.api import TOO_LARGE, is_api

    def middleware(request: HttpRequest) -> HttpResponse:
        cap = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:  # Django reads such a body as empty
            declared = 0
        if cap is None or declared <= cap:
            return get_response(request)
        if is_api(request) or request.content_type == "application/json":  # passkeys' too
            return JsonResponse({"detail": TOO_LARGE}, status=413)
        if "text/html" in request.META.get("HTTP_ACCEPT", ""):  # a browser's form
            return render(request, "413.html", {"cap_kib": cap // 1024}, status=413)
        # A protocol's client (EST, OCSP): the reason as text, as those answer errors.
        return HttpResponse(f"{TOO_LARGE}\n", status=413, content_type="text/plain; charset=utf-8")

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
