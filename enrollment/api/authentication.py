"""API authentication: knox tokens on every call, HTTP basic (under django-axes) to mint one."""

from __future__ import annotations

import atexit
import binascii
import logging
import threading
from contextlib import suppress
from datetime import datetime, timedelta
from hmac import compare_digest
from typing import Any

from knox import auth as knox_auth
from knox.crypto import hash_token
from knox.models import AuthToken
from knox.settings import CONSTANTS, knox_settings
from knox.signals import token_expired

from django.contrib.auth import get_user_model
from django.db import DatabaseError
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_variables
from drf_spectacular.contrib.knox_auth_token import KnoxTokenScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import status
from rest_framework.authentication import BasicAuthentication
from rest_framework.exceptions import APIException, AuthenticationFailed

from enrollment import audit, hotsql, services
from enrollment.services import LAST_USE_RESOLUTION

logger = logging.getLogger(__name__)


class TokenAuthentication(knox_auth.TokenAuthentication):  # type: ignore[misc]  # knox: untyped
    """knox's token check without its housekeeping on every call.

    knox reads all of the user's other tokens on each request to delete expired ones: a
    second query on the hottest path of the API (enrolment by scripts). Here only the
    presented token's own expiry is checked (an expired one is refused and deleted, as knox
    does); expired tokens are purged by the daily ``api_tokens_purge_task`` instead.
    """

    def authenticate_credentials(self, token: bytes) -> tuple[Any, AuthToken]:
        """knox's own check, with the token and its user read in one precompiled query."""
        # knox tokens are printable ASCII (hex behind an optional prefix). Anything else is
        # no token, and must not reach decode() (not UTF-8) or the query (PostgreSQL
        # refuses NUL): the header is the client's to get wrong, so it is a 401.
        if not token.isascii() or not token.decode("ascii").isprintable():
            raise _refused()
        presented = token.decode("ascii")
        for auth_token in hotsql.tokens_with_user(presented[: CONSTANTS.TOKEN_KEY_LENGTH]):
            if self._cleanup_token(auth_token):
                continue
            try:
                digest = hash_token(presented)
            except (TypeError, binascii.Error):
                raise _refused() from None
            if compare_digest(digest, auth_token.digest):
                if knox_settings.AUTO_REFRESH and auth_token.expiry:
                    self.renew_token(auth_token)
                user_and_token: tuple[Any, AuthToken] = self.validate_user(auth_token)
                # The role checks (enrollment.permissions) ask whether it was minted with
                # a second factor, only when the user holds a role: not on every call.
                user_and_token[0]._pkiportal_api_token = auth_token
                _note_use(auth_token)
                return user_and_token
        raise _refused()

    def _cleanup_token(self, auth_token: AuthToken) -> bool:
        if auth_token.expiry is None or auth_token.expiry >= timezone.now():
            return False
        username = auth_token.user.get_username()
        auth_token.delete()
        token_expired.send(sender=type(self), username=username, source="auth_token")
        return True


# When this process last noted each token's use (by digest): the check on every call
# records a use at most once an hour per token and process, and never reads for it.
# Bounded: a process that has seen more tokens than this starts over (a few more writes).
_uses_noted: dict[str, datetime] = {}
_USES_REMEMBERED = 10_000
# Uses noted and not yet written, with when each was noted. They are written together, one
# statement, by the first call a minute or more after the last write (so at once when calls
# are rare), or when the process exits: a busy API, where every call may bring a token not
# seen this hour, pays one statement a minute instead of one per call (0.8 ms of a 12 ms
# enrolment, measured with bench/enroll_compare.py). Never inside a request's transaction
# (ATOMIC_REQUESTS): its rollback would take the whole batch with it.
_uses_pending: dict[str, datetime] = {}
_written_at: datetime | None = None
WRITE_EVERY = timedelta(minutes=1)
_lock = threading.Lock()  # gthread workers share the module


def _note_use(auth_token: AuthToken) -> None:
    """Note when the token was used, to the hour, without touching the token query."""
    now = timezone.now()
    with _lock:
        last = _uses_noted.get(auth_token.digest)
        if last is None or not timedelta(0) <= now - last < LAST_USE_RESOLUTION:
            if len(_uses_noted) >= _USES_REMEMBERED:
                _uses_noted.clear()
            _uses_noted[auth_token.digest] = now
            _uses_pending.setdefault(auth_token.digest, now)
        due = bool(_uses_pending) and (
            _written_at is None or not timedelta(0) <= now - _written_at < WRITE_EVERY
        )
    if due and not audit.in_a_transaction():
        write_token_uses()


def write_token_uses(*, log: bool = True) -> None:
    """Write the uses noted so far, each with the moment it was noted. A failure is logged
    and never fails the call that happened to trigger it: the uses wait for the next write."""
    global _written_at
    with _lock:
        _written_at = timezone.now()
        uses = dict(_uses_pending)
        _uses_pending.clear()
    if not uses:
        return
    try:
        services.api_token_uses_record(uses=uses)
    except DatabaseError:
        if log:
            logger.warning(
                "Could not record the last use of %d API tokens", len(uses), exc_info=True
            )
        with _lock:
            for digest, at in uses.items():
                _uses_pending[digest] = min(at, _uses_pending.get(digest, at))


def _write_at_exit() -> None:
    """What the process noted in its last minute; the database may be gone by then."""
    if _uses_pending:
        # Logging may be shut down already, and nothing may stop a process from exiting.
        with suppress(Exception):
            write_token_uses(log=False)


atexit.register(_write_at_exit)


def _refused() -> AuthenticationFailed:
    """Made only when refusing: translating its message costs ~60 us on every call."""
    return AuthenticationFailed(_("Invalid token."))


class TokenScheme(KnoxTokenScheme):
    """The same OpenAPI security scheme as knox's own class."""

    # drf-spectacular declares str | type; KnoxTokenScheme's string narrows it for mypy.
    target_class = TokenAuthentication  # type: ignore[assignment]


class SignInLockedOut(APIException):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_detail = _("Too many failed sign-ins for this account from this address; try later.")
    default_code = "locked_out"


class AxesBasicAuthentication(BasicAuthentication):
    """DRF's basic auth, with axes' lock-out turned into a 429 instead of a bare 401.

    DRF passes its Request to authenticate(), so the AxesStandaloneBackend sees every
    attempt and refuses a locked-out user before the password is checked; it flags the
    lock-out on that Request, where AxesMiddleware cannot see it, so we answer here.
    """

    @sensitive_variables()  # the sign-in password, here and in DRF's frames below
    def authenticate_credentials(
        self, userid: str, password: str, request: Any = None
    ) -> tuple[Any, None]:
        if "\x00" in userid or len(userid) > _username_max_length():
            # No account has such a name, and axes could not record the failure (PostgreSQL
            # refuses NUL; AccessAttempt.username is 255 characters): refuse it here.
            raise AuthenticationFailed(_("Invalid username/password."))
        try:
            return super().authenticate_credentials(userid, password, request)
        except AuthenticationFailed:
            if getattr(request, "axes_locked_out", False):
                raise SignInLockedOut() from None
            raise


def _username_max_length() -> int:
    """The longest name both the account model and axes' AccessAttempt (255) can hold."""
    user_model = get_user_model()
    max_length = getattr(user_model._meta.get_field(user_model.USERNAME_FIELD), "max_length", None)
    return min(max_length or 255, 255)


class AxesBasicScheme(OpenApiAuthenticationExtension):
    """Tells drf-spectacular that AxesBasicAuthentication is plain HTTP basic."""

    target_class = AxesBasicAuthentication
    name = "basicAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "basic"}
