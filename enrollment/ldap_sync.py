"""Leavers from the sign-in directory: an account that came from LDAP / Active Directory
is deactivated once the directory no longer has the person, or has disabled them, so the
leavers' machinery (accounts.User.save, enrollment.leavers) takes over.

Off unless PKIPORTAL_LDAP_SYNC_LEAVERS; beat runs leavers_sync() hourly, and
`manage.py ldap_sync_leavers` lists (and with --confirm applies) the same.

Which accounts: active ones with an unusable password, which is how django-auth-ldap
creates an account at its first sign-in. An account with a usable password (a local or
break-glass account, one created in the admin or by createsuperuser) is never looked up,
and a superuser never deactivated: one the directory no longer has is reported instead
(log, /health/, the RA console), for a person to decide.

What "gone" means is what django-auth-ldap would find at a sign-in: no entry under
AUTH_LDAP_USER_SEARCH_BASE matches AUTH_LDAP_USER_FILTER with the user name, or every entry
that does also matches PKIPORTAL_LDAP_SYNC_DISABLED_FILTER (Active Directory's
ACCOUNTDISABLE bit by default). Accounts are looked up BATCH at a time: one filter ORs
their user names and one paged search (plus one for the disabled among them) answers for
all, matched back to accounts by the attribute the filter compares with the user name.

Nothing is deactivated until the whole directory has been read without an error: a
failed bind, a timeout, a missing search base, a truncated answer, or an answer that
finds none of the accounts deactivates nobody. Nor when more accounts are gone than
PKIPORTAL_LDAP_SYNC_MAX_PER_RUN: the run holds them all back, audits it and warns until
someone runs the command with --confirm --ignore-cap. Each deactivation is a save() of
is_active (sessions end, tokens stop, the grace period starts) audited as account.change
by the system with "source": "ldap_sync", the reason and the entry's DN; a run that
deactivates anyone adds an ldap_sync.run summary.

Never the other way round: an account the directory has again is not reactivated. The
sync cannot tell its own deactivations from an officer's (a compromised account, a person
suspended), and a mistaken one costs nothing an officer's reactivation does not restore
within the grace period.
"""

from __future__ import annotations

import importlib.util
import logging
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext_lazy

from enrollment import health, ldap_publish
from enrollment.audit import audit_record
from enrollment.change_audit import changes_from
from enrollment.ldap_filter import any_of, user_attributes
from enrollment.models import AuditEvent, LdapSyncRun
from pkiportal.i18n import english, worded

logger = logging.getLogger(__name__)

Source = LdapSyncRun.Source
NOT_FOUND = "not_found"
DISABLED = "disabled"
# User names per search filter: a few kilobytes of filter, at most as many entries back.
BATCH = 100
# Entries per page of a paged search (RFC 2696), under Active Directory's MaxPageSize.
PAGE_SIZE = 500
# A run finishes every hour; after this long without one, /health/ warns.
STALE_AFTER = timedelta(hours=3)
# The task's limits, under the broker's one-hour visibility timeout.
RUN_SOFT_TIME_LIMIT = 1500
RUN_TIME_LIMIT = 1560


class SyncRefused(Exception):
    """The directory could not be read, or its answer cannot be trusted: nobody is
    deactivated. The message names no secret."""


def enabled() -> bool:
    """Is the sync turned on? A settings read, no SQL."""
    return bool(settings.PKIPORTAL_LDAP_SYNC_LEAVERS)


def configuration_problem() -> str | None:
    """Why the directory cannot be read from here, or None: the settings module refuses
    these once the sync is on, and the command's dry run says them before."""
    if not getattr(settings, "AUTH_LDAP_SERVER_URI", ""):
        return "AUTH_LDAP_SERVER_URI is not set: there is no sign-in directory to compare with."
    if importlib.util.find_spec("ldap3") is None:
        return "The ldap3 package is not installed: `pip install ldap3`."
    template = getattr(settings, "AUTH_LDAP_USER_FILTER", "")
    if not user_attributes(template):
        return (
            f"AUTH_LDAP_USER_FILTER ({template}) compares no attribute with %(user)s, so "
            "entries cannot be matched to accounts."
        )
    return None


def directory_accounts() -> QuerySet[Any]:
    """The active accounts that came from the directory: an unusable password, as
    django-auth-ldap gives the accounts it creates. Superusers among them are looked up
    (to be reported), never deactivated."""
    return get_user_model().objects.filter(
        is_active=True, password__startswith=UNUSABLE_PASSWORD_PREFIX
    )


@dataclass(frozen=True)
class Gone:
    """An account whose person the directory no longer has (NOT_FOUND) or has disabled."""

    user_id: int
    username: str
    reason: str
    dn: str = ""

    @property
    def reason_text(self) -> str:
        return "disabled" if self.reason == DISABLED else "not found"


@dataclass
class Survey:
    """What one read of the directory found; nothing changed yet."""

    checked: int = 0
    found: int = 0  # with an entry, enabled or not
    gone: list[Gone] = field(default_factory=list)  # to deactivate
    superusers: list[Gone] = field(default_factory=list)  # never deactivated


def _describe(exc: Exception) -> str:
    return ldap_publish.describe(exc, getattr(settings, "AUTH_LDAP_BIND_PASSWORD", ""))


class _Reader:
    """One bound connection that answers, for a batch of user names, which entries match."""

    def __init__(self) -> None:
        self.base = settings.AUTH_LDAP_USER_SEARCH_BASE
        self.template = settings.AUTH_LDAP_USER_FILTER
        self.attributes = user_attributes(self.template)
        self.disabled = settings.PKIPORTAL_LDAP_SYNC_DISABLED_FILTER
        self.timeout = settings.PKIPORTAL_LDAP_SYNC_TIMEOUT
        try:
            self.connection = ldap_publish.open_bound(
                uris=settings.AUTH_LDAP_SERVER_URI.split(),
                bind_dn=getattr(settings, "AUTH_LDAP_BIND_DN", ""),
                password=getattr(settings, "AUTH_LDAP_BIND_PASSWORD", ""),
                start_tls=getattr(settings, "AUTH_LDAP_START_TLS", False),
                ca_file=settings.PKIPORTAL_LDAP_SYNC_CA_FILE,
                timeout=self.timeout,
            )
        except ldap_publish.DirectoryError as exc:
            raise SyncRefused(str(exc)) from exc

    def close(self) -> None:
        from ldap3.core.exceptions import LDAPException

        with suppress(LDAPException, OSError):
            self.connection.unbind()

    def check_base(self) -> None:
        """The search base must exist: a renamed OU would otherwise read as everyone gone."""
        from ldap3 import BASE
        from ldap3.core.exceptions import LDAPException

        try:
            self.connection.search(
                self.base, "(objectClass=*)", BASE, attributes=["1.1"], time_limit=self.timeout
            )
        except LDAPException as exc:
            raise SyncRefused(
                f"AUTH_LDAP_USER_SEARCH_BASE ({self.base}) cannot be read: {_describe(exc)}"
            ) from exc

    def entries(
        self, usernames: list[str], *, disabled: bool = False
    ) -> list[tuple[str, set[str]]]:
        """The entries matching any of the user names (only the disabled ones, if asked):
        each DN with the user names it holds, case-folded. Every page or nothing."""
        from ldap3 import SUBTREE
        from ldap3.core.exceptions import LDAPException

        query = any_of(self.template, usernames)
        if disabled:
            query = f"(&{query}{self.disabled})"
        wanted = {name.lower() for name in self.attributes}
        found = []
        try:
            for item in self.connection.extend.standard.paged_search(
                self.base,
                query,
                SUBTREE,
                attributes=self.attributes,
                paged_size=PAGE_SIZE,
                time_limit=self.timeout,
                generator=True,
            ):
                if item.get("type") != "searchResEntry":
                    continue  # a referral (Active Directory's other naming contexts)
                names = {
                    bytes(value).decode("utf-8", "replace").casefold()
                    for key, values in item["raw_attributes"].items()
                    if key.split(";", 1)[0].lower() in wanted
                    for value in values
                }
                found.append((item["dn"], names))
        except LDAPException as exc:
            what = "disabled entries" if disabled else "entries"
            raise SyncRefused(
                f"searching {self.base} for the {what} of {len(usernames)} accounts failed: "
                f"{_describe(exc)}"
            ) from exc
        return found

    def survey(self, batch: list[tuple[int, str, bool]], result: Survey) -> None:
        usernames = [username for _, username, _ in batch]
        by_name: dict[str, list[str]] = {}
        for dn, names in self.entries(usernames):
            for name in names:
                by_name.setdefault(name, []).append(dn)
        off: set[str] = set()
        if self.disabled and by_name:
            off = {dn.lower() for dn, _ in self.entries(usernames, disabled=True)}
        for user_id, username, superuser in batch:
            result.checked += 1
            dns = by_name.get(username.casefold(), [])
            if not dns:
                verdict = Gone(user_id, username, NOT_FOUND)
            else:
                result.found += 1
                # Two entries for one name (django-auth-ldap then signs nobody in): gone
                # only if every one of them is disabled.
                if not all(dn.lower() in off for dn in dns):
                    continue
                verdict = Gone(user_id, username, DISABLED, dns[0])
            (result.superusers if superuser else result.gone).append(verdict)


def directory_survey() -> Survey:
    """Read the directory for every account that came from it; SyncRefused when it cannot
    be read whole, or when it finds none of them (a wrong base or filter, an empty
    replica), rather than a partial answer that would take present people for leavers."""
    problem = configuration_problem()
    if problem is not None:
        raise SyncRefused(problem)
    reader = _Reader()
    result = Survey()
    try:
        reader.check_base()
        accounts = directory_accounts().order_by("pk").values_list("pk", "username", "is_superuser")
        batch: list[tuple[int, str, bool]] = []
        for row in accounts.iterator(chunk_size=2000):
            batch.append(row)
            if len(batch) == BATCH:
                reader.survey(batch, result)
                batch = []
        if batch:
            reader.survey(batch, result)
    finally:
        reader.close()
    if result.checked and not result.found:
        raise SyncRefused(
            f"The directory found none of the {result.checked} accounts that came from it "
            f"under {reader.base} with {reader.template}: a wrong search base or filter, or an "
            "empty directory, is not taken for everyone leaving."
        )
    return result


@dataclass
class Outcome:
    """What one run did; its fields are LdapSyncRun's columns."""

    checked: int = 0
    found: int = 0
    gone: int = 0
    cap: int = 0
    held_back: int = 0
    deactivated: int = 0
    failed: int = 0
    superusers: list[str] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        """What the run did (the task's result): every field but the cap it ran under."""
        return {name: value for name, value in asdict(self).items() if name != "cap"}


def leavers_sync(
    *,
    survey: Survey | None = None,
    confirmed: bool = False,
    ignore_cap: bool = False,
    now: datetime | None = None,
) -> Outcome:
    """Deactivate every account the directory no longer has or has disabled: none at all
    when the directory cannot be read whole, or when more are gone than the cap, unless
    ``ignore_cap`` (the command, after someone checked the directory). ``survey``: what
    the command has just listed, so it deactivates exactly those."""
    now = now or timezone.now()
    source = Source.COMMAND if confirmed else Source.SCHEDULE
    outcome = Outcome(cap=settings.PKIPORTAL_LDAP_SYNC_MAX_PER_RUN)
    if survey is None:
        try:
            survey = directory_survey()
        except SyncRefused as exc:
            outcome.error = f"Nobody was deactivated: {exc}"[:500]
            logger.error("Directory leavers' sync: %s", outcome.error)
            _record(outcome, now=now, source=source)
            return outcome
        except SoftTimeLimitExceeded:
            outcome.error = (
                "Nobody was deactivated: reading the directory reached the task's time limit."
            )
            logger.error("Directory leavers' sync: %s", outcome.error)
            _record(outcome, now=now, source=source)
            return outcome
    outcome.checked, outcome.found, outcome.gone = survey.checked, survey.found, len(survey.gone)
    outcome.superusers = [gone.username for gone in survey.superusers]
    for gone in survey.superusers:
        logger.warning(
            "Superuser %s is %s in the directory; the sync never deactivates a superuser.",
            gone.username,
            gone.reason_text,
        )
    if len(survey.gone) > outcome.cap and not ignore_cap:
        outcome.held_back = len(survey.gone)
        logger.error("%s", held_back_message(outcome.held_back, outcome.cap))
        audit_record(
            action="ldap_sync.held_back",
            outcome=AuditEvent.Outcome.FAILURE,
            detail={
                "held_back": outcome.held_back,
                "cap": outcome.cap,
                "not_found": sum(gone.reason == NOT_FOUND for gone in survey.gone),
                "disabled": sum(gone.reason == DISABLED for gone in survey.gone),
                "checked": survey.checked,
                "source": source,
            },
        )
    else:
        _deactivate_all(survey, outcome, source=source)
    _record(outcome, now=now, source=source)
    return outcome


def _deactivate_all(survey: Survey, outcome: Outcome, *, source: str) -> None:
    for gone in survey.gone:
        try:
            if _deactivate(gone):
                outcome.deactivated += 1
        except SoftTimeLimitExceeded:
            # Each account commits on its own: the next run goes on with the rest.
            outcome.error = "Stopped at the task's time limit; the next run goes on."
            break
        except Exception as exc:
            logger.exception("Could not deactivate account %s", gone.username)
            outcome.failed += 1
            outcome.error = f"{type(exc).__name__}: {exc}"[:500]
    if outcome.deactivated or outcome.failed:
        audit_record(
            action="ldap_sync.run",
            outcome=AuditEvent.Outcome.FAILURE if outcome.failed else AuditEvent.Outcome.SUCCESS,
            detail={**outcome.as_dict(), "cap": outcome.cap, "source": source},
        )


def _deactivate(gone: Gone) -> bool:
    """Switch one account off with save(), under its row lock, if it is still an active,
    password-less, non-superuser account of that name; whether it was."""
    why = {"reason": gone.reason} | ({"dn": gone.dn} if gone.dn else {})
    with transaction.atomic(), changes_from("ldap_sync", why=why):
        user = (
            directory_accounts()
            .select_for_update()
            .filter(pk=gone.user_id, username=gone.username, is_superuser=False)
            .first()
        )
        if user is None:
            return False
        user.is_active = False
        user.save(update_fields=["is_active"])
    logger.info("Deactivated %s: %s in the directory", gone.username, gone.reason_text)
    return True


def _record(outcome: Outcome, *, now: datetime, source: str) -> None:
    LdapSyncRun.objects.update_or_create(
        pk=1,
        # Outcome's fields are the row's columns, name for name.
        defaults={"ran_at": now, "source": source, **asdict(outcome)},
    )


# --- what /health/ and the RA console say ---------------------------------------------


def held_back_message(count: int, cap: int) -> str:
    """Why the sync deactivated nobody, in English: for the worker's log and the command."""
    return english(_held_back(count, cap))


def _held_back(count: int, cap: int) -> str:
    """The same, worded when read: in the officer's language on the RA console."""
    return worded(
        ngettext_lazy(
            "%(count)d accounts are gone from the directory or disabled there, more than "
            "PKIPORTAL_LDAP_SYNC_MAX_PER_RUN (%(cap)d), so none were deactivated. Check the "
            "directory (a changed search base or filter, a moved OU, a restore may make "
            "present people look gone); `manage.py ldap_sync_leavers` lists them, and "
            "`manage.py ldap_sync_leavers --confirm --ignore-cap` deactivates them.",
            "%(count)d accounts are gone from the directory or disabled there, more than "
            "PKIPORTAL_LDAP_SYNC_MAX_PER_RUN (%(cap)d), so none were deactivated. Check the "
            "directory (a changed search base or filter, a moved OU, a restore may make "
            "present people look gone); `manage.py ldap_sync_leavers` lists them, and "
            "`manage.py ldap_sync_leavers --confirm --ignore-cap` deactivates them.",
            count,
        ),
        count=count,
        cap=cap,
    )


def ldap_sync_check(now: datetime | None = None) -> dict[str, Any]:
    """The verdict for /health/ and the RA console: "warn" while the last run could not
    read the directory, held deactivations back or could not deactivate some, a superuser
    has left the directory, or runs stopped finishing; "ok" otherwise, or when it is off."""
    if not enabled():
        return {"status": health.OK, "mode": "off"}
    now = now or timezone.now()
    inline = health.no_scheduler()
    run = LdapSyncRun.objects.filter(pk=1).first()
    result: dict[str, Any] = {
        "status": health.OK,
        "mode": "cron" if inline else "worker",
        "max_per_run": settings.PKIPORTAL_LDAP_SYNC_MAX_PER_RUN,
        "last_run": run.ran_at.isoformat() if run is not None else None,
        "problems": [],
    }
    if inline:
        result["note"] = (
            "No broker: nobody is deactivated on their own. Run "
            "`manage.py ldap_sync_leavers --confirm` from cron every hour."
        )
    if run is None:
        return result
    result |= {
        "checked": run.checked,
        "gone": run.gone,
        "deactivated": run.deactivated,
        "held_back": run.held_back,
    }
    problems = result["problems"]
    if run.held_back:
        problems.append(_held_back(run.held_back, run.cap))
    ran = f"{run.ran_at:%Y-%m-%d %H:%M}"
    if run.error:
        problems.append(
            worded(
                _("The sync with the directory at %(time)s UTC: %(error)s"),
                time=ran,
                error=run.error,
            )
        )
    if run.superusers:
        problems.append(
            worded(
                ngettext_lazy(
                    "Superuser(s) %(names)s are gone from the directory or disabled there. The "
                    "sync never deactivates a superuser: if they have left, deactivate them in "
                    "the admin.",
                    "Superuser(s) %(names)s are gone from the directory or disabled there. The "
                    "sync never deactivates a superuser: if they have left, deactivate them in "
                    "the admin.",
                    len(run.superusers),
                ),
                names=", ".join(run.superusers),
            )
        )
    if now - run.ran_at > STALE_AFTER:
        problems.append(
            worded(
                _(
                    "The directory leavers' sync last finished at %(time)s UTC: is it failing? "
                    "See the worker's log."
                ),
                time=ran,
            )
        )
    if problems:
        result["status"] = health.WARN
    return result
