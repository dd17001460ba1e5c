"""The portal's session engine (SESSION_ENGINE = "accounts.session_store"): Django's
database store, writing each session to accounts.AccountSession with the account it is
signed in as, so that accounts.sessions finds and deletes a person's sessions by an
indexed column.

The class keeps Django's name, SessionStore: the signing salt of a session's data is
derived from the class's name ("django.contrib.sessions.SessionStore"), so data written by
Django's db and cached_db engines reads here unchanged (accounts/0008 copies it over) and
the other way round.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore as DatabaseStore

from accounts.models import AccountSession


def account_of(data: dict[str, Any]) -> int | None:
    """The account id a session's data is signed in as (Django's login() stores it as a
    string), or None: nobody, or something that is no account id."""
    signed_in = str(data.get(SESSION_KEY, ""))
    return int(signed_in) if signed_in.isascii() and signed_in.isdigit() else None


class SessionStore(DatabaseStore[AccountSession]):
    """Every write of the row (a new session, a cycled key, the end of any request that
    changed the session) stores the account id derived from the data written with it.
    Saving a session whose row was deleted fails (an UPDATE that finds no row), but a
    request in flight that cycles its key INSERTs it again: what keeps such a session
    signed out is the account's session generation in its hash (accounts.sessions)."""

    @classmethod
    def get_model_class(cls) -> type[AccountSession]:
        return AccountSession

    def create_model_instance(self, data: dict[str, Any]) -> AccountSession:
        row = super().create_model_instance(data)
        row.account_id = account_of(data)
        return row

    async def acreate_model_instance(self, data: dict[str, Any]) -> AccountSession:
        row = await super().acreate_model_instance(data)
        row.account_id = account_of(data)
        return row
