"""When this browser session last signed in, for actions a stolen session must not take.

A session cookie lives for hours (SESSION_COOKIE_AGE). An API token made from it outlives
the session, sign-out and a password change, so minting one asks for a sign-in within the
last PKIPORTAL_TOKEN_SIGN_IN_MINUTES, as GitHub's "sudo mode" does. The moment is kept in
the session when Django logs the person in, by password or single sign-on alike.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.contrib.auth.signals import user_logged_in
from django.http import HttpRequest
from django.utils import timezone

SIGNED_IN_AT = "pkiportal_signed_in_at"
CLOCK_SKEW = timedelta(minutes=2)


def _note_sign_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """Only a sign-in that made this session, through django.contrib.auth.login (password
    or single sign-on). Not the API's token endpoint, which sends the signal with DRF's
    request after minting: from a session, that would stretch one sign-in for ever."""
    note_sign_in(request, user)


def note_sign_in(request: Any, user: Any) -> None:
    """This session's person signed in just now (also a single sign-on that the library
    took for a refresh of the session, and did not log in again)."""
    if not isinstance(request, HttpRequest):
        return
    session = getattr(request, "session", None)
    if session is None or str(session.get(SESSION_KEY)) != str(user.pk):
        return
    session[SIGNED_IN_AT] = timezone.now().isoformat()


def connect() -> None:
    user_logged_in.connect(_note_sign_in, dispatch_uid="pkiportal_recent_sign_in")


def signed_in_at(request: HttpRequest) -> datetime | None:
    value = getattr(request, "session", {}).get(SIGNED_IN_AT)
    try:
        return datetime.fromisoformat(value) if value else None
    except (TypeError, ValueError):
        return None


def signed_in_recently(request: HttpRequest) -> bool:
    """Whether this session's sign-in is recent enough to mint a token."""
    at = signed_in_at(request)
    if at is None:
        return False
    window = timedelta(minutes=settings.PKIPORTAL_TOKEN_SIGN_IN_MINUTES)
    # A sign-in "in the future" is a clock stepped back or skewed between web nodes: a
    # little is tolerated, more would stretch the window by the skew.
    return -CLOCK_SKEW <= timezone.now() - at < window
