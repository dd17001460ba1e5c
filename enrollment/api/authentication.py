"""HTTP basic sign-in for minting API tokens, under django-axes' brute-force protection."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import status
from rest_framework.authentication import BasicAuthentication
from rest_framework.exceptions import APIException, AuthenticationFailed


class SignInLockedOut(APIException):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_detail = "Too many failed sign-ins for this account from this address; try later."
    default_code = "locked_out"


class AxesBasicAuthentication(BasicAuthentication):
    """DRF's basic auth, with axes' lock-out turned into a 429 instead of a bare 401.

    DRF passes its Request to authenticate(), so the AxesStandaloneBackend sees every
    attempt and refuses a locked-out user before the password is checked; it flags the
    lock-out on that Request, where AxesMiddleware cannot see it, so we answer here.
    """

    def authenticate_credentials(
        self, userid: str, password: str, request: Any = None
    ) -> tuple[Any, None]:
        try:
            return super().authenticate_credentials(userid, password, request)
        except AuthenticationFailed:
            if getattr(request, "axes_locked_out", False):
                raise SignInLockedOut() from None
            raise


class AxesBasicScheme(OpenApiAuthenticationExtension):
    """Tells drf-spectacular that AxesBasicAuthentication is plain HTTP basic."""

    target_class = AxesBasicAuthentication
    name = "basicAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "basic"}
