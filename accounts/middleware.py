"""Until a session has confirmed the second factor it needs, it reaches only the pages
that confirm one (or set one up) and sign-out: the portal, /ra/ and the admin alike. A
session confirmed with a security key of no approved model, of someone whose keys must be
of one (PKIPORTAL_WEBAUTHN_ATTESTATION_FOR), reaches only its account page to add one; so
does one confirmed with anything but a key, of someone only a key may let in
(PKIPORTAL_SECOND_FACTOR_KEYS_ONLY_FOR), to confirm with a key there or add one.
Where single sign-on is configured, its pages stay open too: a person who typed a
password may sign in through the provider instead, and that sign-in starts the second
step anew (mfa.note_sign_in), counting as verified only if the provider says so.

The API is guarded by accounts.api.VerifiedSessionAuthentication instead, which answers
in JSON and leaves token calls alone; the public repository, health and static files are
for anyone. EST (enrollment/est.py) reads no session at all.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import Resolver404, resolve, reverse

from accounts import mfa

# /language/ too: the second-factor page should be readable (pkiportal.i18n).
OPEN_PREFIXES = ("/pki/", "/health/", "/metrics", "/api/", "/.well-known/est/", "/language/")
SINGLE_SIGN_ON_PREFIX = "/oidc/"  # pkiportal.urls mounts mozilla-django-oidc here
# The security-key views a session in its second step may reach, by URL name: signing in
# with a key it has, or (with no second factor yet) setting up a first key instead of an app.
SECURITY_KEY_SIGN_IN = frozenset(
    {"accounts:passkey-authenticate-options", "accounts:passkey-authenticate"}
)
SECURITY_KEY_FIRST_SET_UP = frozenset(
    {"accounts:passkey-setup", "accounts:passkey-register-options", "accounts:passkey-register"}
)
# What a session held to the account page reaches (mfa.session_restriction: verified with
# a key of no approved model, of someone whose keys must be of one; or with no key at all,
# of someone only a key may let in): the account page, confirming a key there, adding one
# and removing an old one.
APPROVED_KEY_PAGES = frozenset(
    {
        "accounts:mfa-overview",
        "accounts:passkey-remove",
        *SECURITY_KEY_SIGN_IN,
        *SECURITY_KEY_FIRST_SET_UP,
    }
)


class SecondFactorMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path_info
        static = "/" + settings.STATIC_URL.lstrip("/")
        if path.startswith((*OPEN_PREFIXES, static)) or (
            path.startswith(SINGLE_SIGN_ON_PREFIX)
            and "mozilla_django_oidc" in settings.INSTALLED_APPS
        ):
            return self.get_response(request)
        if not mfa.session_needs_second_step(request):
            if mfa.session_restriction(request) and not (
                path == reverse("logout") or _view_name(path) in APPROVED_KEY_PAGES
            ):
                # The account page says why (accounts.views.overview).
                return redirect("accounts:mfa-overview")
            return self.get_response(request)
        enrolled = mfa.state_for(request.user).enrolled
        step = reverse(mfa.second_step_url_name(request.user))
        if path in (step, reverse("logout")) or _view_name(path) in (
            SECURITY_KEY_SIGN_IN if enrolled else SECURITY_KEY_FIRST_SET_UP
        ):
            # The security-key ceremonies of the second step (or of a first set-up): each
            # view checks what the session may do there.
            return self.get_response(request)
        query = ""
        if request.method in ("GET", "HEAD"):
            query = "?" + urlencode({"next": request.get_full_path()})
        return redirect(step + query)


def _view_name(path: str) -> str:
    try:
        return resolve(path).view_name
    except Resolver404:
        return ""
