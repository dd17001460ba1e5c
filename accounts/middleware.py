"""Until a session has confirmed the second factor it needs, it reaches only the pages
that confirm one (or set one up) and sign-out: the portal, /ra/ and the admin alike.

The API is guarded by accounts.api.VerifiedSessionAuthentication instead, which answers
in JSON and leaves token calls alone; the public repository, health and static files are
for anyone.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse

from accounts import mfa

OPEN_PREFIXES = ("/pki/", "/health/", "/metrics", "/api/")


class SecondFactorMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path_info
        static = "/" + settings.STATIC_URL.lstrip("/")
        if path.startswith((*OPEN_PREFIXES, static)) or not mfa.session_needs_second_step(request):
            return self.get_response(request)
        enrolled = mfa.state_for(request.user).enrolled
        step = reverse("accounts:mfa-verify" if enrolled else "accounts:mfa-setup")
        if path in (step, reverse("logout")):
            return self.get_response(request)
        query = ""
        if request.method in ("GET", "HEAD"):
            query = "?" + urlencode({"next": request.get_full_path()})
        return redirect(step + query)
