"""Ending a person's sign-ins: every browser session stored for their account.

Sessions live in the database (Django's default engine; settings.py sets no other), and a
stored session names its account only inside its signed data, so the person's sessions
are found by reading the unexpired ones. That costs one pass over the live sessions per
call (a few milliseconds per thousand), which is what an administrator's reset or a
deactivation can afford; nothing on a request's path calls it.

Deleting the row is what ends a session: a request of it still in flight cannot save it
back (Django's database store only updates an existing row, and refuses the request with
SessionInterrupted), and its cookie afterwards finds nothing, so it is signed out.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore as DatabaseStore
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone


def _store_class() -> type[DatabaseStore]:
    store = import_module(settings.SESSION_ENGINE).SessionStore
    if not (isinstance(store, type) and issubclass(store, DatabaseStore)):
        # The cache, file and cookie engines cannot list a person's sessions: ending them
        # would silently do nothing, which is worse than refusing.
        raise ImproperlyConfigured(
            f"SESSION_ENGINE {settings.SESSION_ENGINE} keeps no session table: the portal "
            "ends a person's sessions (second-factor reset, deactivation) by deleting their "
            "rows. Use django.contrib.sessions.backends.db or cached_db."
        )
    return store


def session_keys_of(user: Any) -> list[str]:
    """The keys of the unexpired stored sessions signed in as this account."""
    store = _store_class()
    model = store.get_model_class()
    account = str(user._meta.pk.value_to_string(user))
    decoder = store()
    found = []
    rows = (
        model.objects.filter(expire_date__gt=timezone.now())
        .values_list("session_key", "session_data")
        .iterator(chunk_size=2000)
    )
    for key, data in rows:
        # decode() returns {} for data it cannot verify (tampered, an old SECRET_KEY).
        if str(decoder.decode(data).get(SESSION_KEY, "")) == account:
            found.append(key)
    return found


def sessions_end(user: Any, *, keep: str | None = None) -> int:
    """Sign the person out everywhere (but in the session ``keep``, the caller's own);
    returns how many sessions ended."""
    store = _store_class()
    ended = 0
    for key in session_keys_of(user):
        if key == keep:
            continue
        store(session_key=key).delete()  # cached_db: the cached copy too
        ended += 1
    return ended
