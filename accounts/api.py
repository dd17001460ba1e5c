"""The API's browser-session authentication, refused until the session has confirmed the
second factor its holder needs (accounts.mfa)."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from django.utils.translation import gettext as _
from drf_spectacular.authentication import SessionScheme
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request

from accounts import mfa


class SecondFactorRequired(PermissionDenied):
    default_code = "second_factor_required"


class VerifiedSessionAuthentication(SessionAuthentication):
    """DRF's session authentication (with its CSRF check), plus the second factor.

    A token call never gets here with a session's user: token authentication comes first.
    """

    def authenticate(self, request: Request) -> tuple[Any, None] | None:
        result = super().authenticate(request)
        if result is None:
            return None
        django_request = request._request
        if mfa.session_needs_second_step(django_request):
            enrolled = mfa.state_for(result[0]).enrolled
            step = reverse(mfa.second_step_url_name(result[0]))
            raise SecondFactorRequired(
                {
                    "detail": (
                        _(
                            "This session has not confirmed a second factor: enter a code at "
                            "%(url)s first."
                        )
                        if enrolled
                        else _(
                            "This session has not confirmed a second factor: set one up at "
                            "%(url)s first."
                        )
                    )
                    % {"url": step},
                    "missing": "second_factor",
                    "url": step,
                }
            )
        restriction = mfa.session_restriction(django_request)
        if restriction == "security_key":
            raise SecondFactorRequired(
                {
                    "detail": _(
                        "This session was confirmed with an authenticator app, a backup code "
                        "or single sign-on, and your organisation requires a security key for "
                        "you: confirm with one (or add one) at %(url)s first."
                    )
                    % {"url": reverse("accounts:mfa-overview")},
                    "missing": "security_key",
                    "url": reverse("accounts:mfa-overview"),
                }
            )
        if restriction == "approved_security_key":
            raise SecondFactorRequired(
                {
                    "detail": _(
                        "This session was confirmed with a security key that is not of a "
                        "model your organisation approved, which your role needs: add an "
                        "approved key at %(url)s first."
                    )
                    % {"url": reverse("accounts:mfa-overview")},
                    "missing": "approved_security_key",
                    "url": reverse("accounts:mfa-overview"),
                }
            )
        return result


class VerifiedSessionScheme(SessionScheme):
    """The same OpenAPI security scheme (a session cookie) as DRF's session class."""

    # drf-spectacular declares str | type; SessionScheme's string narrows it for mypy.
    target_class = VerifiedSessionAuthentication  # type: ignore[assignment]
    priority = 0
