"""Ending a person's sign-ins: every browser session stored for their account.

The portal's engine (accounts.session_store, the default SESSION_ENGINE) stores each
session with the account it is signed in as, in an indexed column: finding and ending a
person's sessions costs the same whatever the number of other sessions, so a directory
sync that deactivates hundreds of accounts pays hundreds of small indexed queries, not
hundreds of passes over every stored session.

Django's own database engines (django.contrib.sessions.backends.db or cached_db, set in
a settings override) still work: their table names the account only inside each
session's signed data, so the person's sessions are found by reading and decoding every
unexpired one, once per call (a few milliseconds per thousand sessions).

What ends a session is the account's session generation (User.session_generation),
which sessions_end raises: Django checks on every request that the session's hash
(HASH_SESSION_KEY) is the account's current one, and the generation is part of it, so a
session signed in before is signed out wherever it is. That covers what deleting rows
cannot: a request in flight that cycles its key (a sign-in, a second factor confirmed, a
password change) INSERTs its session again under a new key; the database engines save
back a session that expired while its request ran (it was not found to delete); a cached
copy; and the rows accounts/0008 left in django_session, read again after a switch back
to Django's engine. The rows are deleted all the same: tidy, and counted for the audit.
"""

from __future__ import annotations

import logging
from importlib import import_module
from typing import Any

from django.apps import apps
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.base import SessionBase
from django.contrib.sessions.backends.db import SessionStore as DatabaseStore
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.session_store import SessionStore as AccountStore

logger = logging.getLogger(__name__)


def _store_class() -> type[DatabaseStore[Any]]:
    store = import_module(settings.SESSION_ENGINE).SessionStore
    if not (isinstance(store, type) and issubclass(store, DatabaseStore)):
        # The cache, file and cookie engines cannot list a person's sessions: the session
        # generation would still sign them out, but the audit would count nothing and
        # their data would stay; refused, as before the generation existed.
        raise ImproperlyConfigured(
            f"SESSION_ENGINE {settings.SESSION_ENGINE} keeps no session table: the portal "
            "ends a person's sessions (second-factor reset, deactivation) by deleting their "
            "rows. Use accounts.session_store (the default), or Django's "
            "django.contrib.sessions.backends.db or cached_db."
        )
    return store


def _indexed(store: type[DatabaseStore[Any]]) -> bool:
    """Whether the store keeps the account in its own column. Not a subclass that caches
    (as cached_db does): one DELETE would leave its cached copies signed in."""
    return issubclass(store, AccountStore) and store.load is AccountStore.load


def session_keys_of(user: Any) -> list[str]:
    """The keys of the unexpired stored sessions signed in as this account."""
    store = _store_class()
    live = store.get_model_class().objects.filter(expire_date__gt=timezone.now())
    if _indexed(store):
        return list(live.filter(account_id=user.pk).values_list("session_key", flat=True))
    account = str(user._meta.pk.value_to_string(user))
    decoder = store()
    found = []
    rows = live.values_list("session_key", "session_data").iterator(chunk_size=2000)
    for key, data in rows:
        # decode() returns {} for data it cannot verify (tampered, an old SECRET_KEY).
        if str(decoder.decode(data).get(SESSION_KEY, "")) == account:
            found.append(key)
    return found


def sessions_end(user: Any, *, keep: SessionBase | None = None) -> int:
    """Sign the person out everywhere (but in the session ``keep``, the caller's own,
    which stays signed in as update_session_auth_hash keeps it after a password change);
    returns how many stored sessions ended, for the audit trail.

    Raising the session generation is what ends them (see the module docstring). With
    the portal's engine the rows go by the indexed account column, however many sessions
    others have: the unexpired ones (counted by that DELETE), then the expired ones not yet
    cleared by the daily task, in one transaction.
    """
    store = _store_class()
    with transaction.atomic():
        user._meta.model._base_manager.filter(pk=user.pk).update(
            session_generation=F("session_generation") + 1
        )
        # The caller's instance hashes with the new generation from here on (a kept
        # session, a password change later in the same request).
        user.refresh_from_db(fields=["session_generation"])
        if keep is not None and str(keep.get(SESSION_KEY, "")) == str(user.pk):
            keep[HASH_SESSION_KEY] = user.get_session_auth_hash()
            keep.save()  # now, in this transaction: a rollback keeps the old hash valid
        kept = keep.session_key if keep is not None else None
        if _indexed(store):
            rows = store.get_model_class().objects.filter(account_id=user.pk)
            if kept is not None:
                rows = rows.exclude(session_key=kept)
            live: int = rows.filter(expire_date__gt=timezone.now()).delete()[0]
            rows.delete()
            return live
        ended = 0
        for key in session_keys_of(user):
            if key == kept:
                continue
            store(session_key=key).delete()  # cached_db: the cached copy too
            ended += 1
        return ended


def sessions_clear_expired() -> int:
    """Delete expired sessions; how many. Django only refuses them (nothing else deletes
    them), so without this the table grows by every sign-in.

    The configured engine's table, and the other tables the portal knows when installed:
    after the upgrade to accounts.session_store, the rows left in Django's django_session
    expire and go; after a switch back, those of accounts_accountsession (Django's
    clearsessions clears the configured engine's only). An engine without a table (cache,
    file, cookie) is warned about, not raised on daily: ending a person's sessions refuses
    it loudly already, and the tables left from before still get cleared.
    """
    try:
        models = {_store_class().get_model_class()}
    except ImproperlyConfigured as exc:
        logger.warning("Clearing only the session tables left from before: %s", exc)
        models = set()
    models.add(AccountStore.get_model_class())
    if apps.is_installed("django.contrib.sessions"):
        models.add(apps.get_model("sessions", "Session"))
    now = timezone.now()
    cleared = 0
    for model in sorted(models, key=lambda model: model._meta.label):
        deleted, _by_model = model.objects.filter(expire_date__lt=now).delete()
        cleared += deleted
    return cleared
