"""Certificates of people who have left: revoked a grace period after their account was
deactivated, unless too many fall due at once.

S/MIME BR 4.9.1.1 asks the CA to revoke within 5 days once the mailbox is no longer the
subscriber's. Someone who leaves has their account deactivated (the admin, a directory or
single sign-on sync, code), and the account records when (accounts.User.deactivated_at).
Beat runs leavers_revoke() hourly: every certificate still held (not revoked, not expired)
by an account deactivated at least PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS ago is revoked
for affiliationChanged through services.certificate_revoke, so the CRL, the audit event
(actor "system") and the holder's mail are those of any revocation. An account reactivated
within the grace period loses nothing.

A directory-sync glitch can deactivate hundreds of accounts at once. A run that finds more
accounts due than PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN revokes none of them: it logs an
error, audits how many it held back, and records it on LeaverRevocationRun, where /health/
and the RA console see it. `manage.py revoke_deactivated --confirm` revokes them once
someone has checked the directory.

The same run revokes, after the same grace period, the certificates that name an address
their holder no longer has (enrollment.outdated), and their holders count against the same
cap: a sync that rewrites thousands of addresses is held back like a mass deactivation.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Exists, F, OuterRef, QuerySet, Subquery
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext, ngettext_lazy

from enrollment import health, mailboxes, outdated
from enrollment.audit import audit_record
from enrollment.exceptions import EnrollmentError, InvalidState, NotPermitted, public_message
from enrollment.models import AuditEvent, Certificate, LeaverRevocationRun
from enrollment.scopes import EVERYONE, Reach, reach_of
from pkiportal.i18n import english, worded

logger = logging.getLogger(__name__)

Source = LeaverRevocationRun.Source
# A run finishes every hour; after this long without one, /health/ warns.
STALE_AFTER = timedelta(hours=3)
# The RA page lists at most this many; the command lists every one.
PAGE_LIMIT = 500


def revocation_delay() -> timedelta | None:
    """The grace period, or None when automatic revocation is off."""
    hours = settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS
    return None if hours is None else timedelta(hours=hours)


@dataclass(frozen=True)
class Leaver:
    """A deactivated account that still holds certificates, as people are shown it."""

    user: Any
    deactivated_at: datetime | None
    due_at: datetime | None  # None: automatic revocation is off, or the time is not known
    certificates: int

    @property
    def name(self) -> str:
        return str(self.user.get_full_name())

    @property
    def username(self) -> str:
        return str(self.user.get_username())

    def is_due(self, now: datetime) -> bool:
        return self.due_at is not None and self.due_at <= now


def _holding(now: datetime) -> QuerySet[Any]:
    """Inactive accounts with a certificate that is neither revoked nor expired, counted.

    Driven by the inactive accounts (a partial index) rather than by the certificates: in
    a large directory leavers are few next to certificates.
    """
    # Imported certificates are the old CA's to revoke: they never hold a leaver here.
    held = Certificate.objects.held(now).issued_here().filter(owner=OuterRef("pk"))
    counted = held.order_by().values("owner").annotate(n=Count("pk")).values("n")
    return (
        get_user_model()
        .objects.filter(is_active=False)
        .filter(Exists(held))
        .annotate(certificate_count=Subquery(counted))
        # What a list shows (Leaver): not the password hash and the rest of the account.
        .only("username", "first_name", "last_name", "display_name", "deactivated_at")
    )


def _due(now: datetime, delay: timedelta) -> QuerySet[Any]:
    return _holding(now).filter(deactivated_at__lte=now - delay)


@dataclass(frozen=True)
class Due:
    """The accounts one run would revoke for: leavers, and holders of certificates naming
    an old address; an account may be both and counts once against the cap."""

    leavers: list[int]
    outdated: list[int]

    @property
    def accounts(self) -> list[int]:
        return list(dict.fromkeys([*self.leavers, *self.outdated]))


def _due_accounts(now: datetime, delay: timedelta) -> Due:
    leaving = _due(now, delay).order_by("deactivated_at", "pk").values_list("pk", flat=True)
    return Due(list(leaving), outdated.accounts_due(now=now, delay=delay))


def _leaver(user: Any, delay: timedelta | None) -> Leaver:
    deactivated = user.deactivated_at
    due = deactivated + delay if deactivated is not None and delay is not None else None
    return Leaver(user, deactivated, due, user.certificate_count)


def leavers_holding_certificates(
    *, now: datetime | None = None, limit: int | None = PAGE_LIMIT, reach: Reach = EVERYONE
) -> list[Leaver]:
    """Every deactivated account still holding certificates, longest gone first; a scoped
    officer's ``reach`` leaves out the people outside it."""
    now = now or timezone.now()
    delay = revocation_delay()
    found = (
        _holding(now)
        .filter(reach.people())
        .order_by(F("deactivated_at").asc(nulls_first=True), "pk")
    )
    if limit is not None:
        found = found[:limit]
    return [_leaver(user, delay) for user in found]


def leavers_holding_count(*, now: datetime | None = None, reach: Reach = EVERYONE) -> int:
    """How many deactivated accounts (within ``reach``) still hold certificates (the RA
    console's tile)."""
    return _holding(now or timezone.now()).filter(reach.people()).count()


def leavers_due(*, now: datetime | None = None) -> list[Leaver]:
    """The accounts whose grace period is over and who still hold certificates."""
    now = now or timezone.now()
    delay = revocation_delay()
    if delay is None:
        return []
    found = _due(now, delay).order_by("deactivated_at", "pk")
    return [_leaver(user, delay) for user in found]


@dataclass
class Outcome:
    """What one run did."""

    due: int = 0
    cap: int = 0
    held_back: int = 0
    revoked_accounts: int = 0
    revoked_certificates: int = 0
    failed_accounts: int = 0
    revoked_mailboxes: int = 0  # deactivated shared mailboxes, counted apart from accounts
    failed_mailboxes: int = 0
    error: str = ""
    stopped: bool = dataclasses.field(default=False, metadata={"stored": False})

    def as_dict(self) -> dict[str, int]:
        return {
            "due": self.due,
            "held_back": self.held_back,
            "revoked_accounts": self.revoked_accounts,
            "revoked_certificates": self.revoked_certificates,
            "failed_accounts": self.failed_accounts,
            "revoked_mailboxes": self.revoked_mailboxes,
            "failed_mailboxes": self.failed_mailboxes,
        }


def _start_missing_clocks(now: datetime) -> int:
    """Inactive accounts that never recorded when (switched off by QuerySet.update() or
    SQL, which skip User.save()) start their grace period now rather than never; active
    accounts switched back on that way forget their old time, so switching them off again
    starts a new grace period."""
    accounts = get_user_model().objects
    accounts.filter(is_active=True, deactivated_at__isnull=False).update(deactivated_at=None)
    return accounts.filter(is_active=False, deactivated_at__isnull=True).update(deactivated_at=now)


def leavers_revoke(*, now: datetime | None = None, confirmed: bool = False) -> Outcome:
    """Revoke (affiliationChanged) the certificates of every account whose grace period is
    over, and those naming an address their holder no longer has; none at all when more
    accounts are due than the cap, unless ``confirmed`` (the command, after someone checked
    the directory). Each account in its own transaction.
    """
    delay = revocation_delay()
    now = now or timezone.now()
    # Holders hear of an outdated certificate even while automatic revocation is off.
    looking_failed = ""
    try:
        outdated.outdated_sync(now=now, delay=delay)
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:
        # Leavers' revocations, and those found by earlier runs, must not wait for it; but
        # the run records it, so /health/ and the RA console say so.
        logger.exception("Could not look for certificates naming an old address")
        looking_failed = f"Looking for certificates naming an old address failed: {exc}."[:500]
    if delay is None:
        return Outcome()
    _start_missing_clocks(now)
    cap = settings.PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN
    due = _due_accounts(now, delay)
    accounts = due.accounts
    outcome = Outcome(due=len(accounts), cap=cap, error=looking_failed)
    source = Source.COMMAND if confirmed else Source.SCHEDULE
    if len(accounts) > cap and not confirmed:
        outcome.held_back = len(accounts)
        _hold_back(outcome, delay, due)
    else:
        leaving, changed = set(due.leavers), set(due.outdated)
        for user_pk in accounts:
            try:
                revoked = 0
                if user_pk in leaving:
                    revoked += (
                        _revoke_account(user_pk, cutoff=now - delay, now=now, source=source) or 0
                    )
                if user_pk in changed:
                    revoked += outdated.revoke_account(
                        user_pk, cutoff=now - delay, now=now, source=source
                    )
            except SoftTimeLimitExceeded:
                # Each account commits on its own: stop here, say so, and let the next
                # run go on, rather than be killed at the hard limit with nothing recorded.
                outcome.error = "Stopped at the task's time limit; the next run goes on."
                outcome.stopped = True
                logger.error("Leavers' revocation stopped at the time limit after %d accounts",
                             outcome.revoked_accounts)  # fmt: skip
                break
            except Exception as exc:
                logger.exception("Could not revoke the certificates of account %s", user_pk)
                outcome.failed_accounts += 1
                # Shown to officers: a key store's own message names key files.
                shown = public_message(exc) if isinstance(exc, EnrollmentError) else str(exc)
                outcome.error = f"{type(exc).__name__}: {shown}"[:500]
                continue
            if revoked:
                outcome.revoked_accounts += 1
                outcome.revoked_certificates += revoked
    if not outcome.stopped:
        # Past the soft limit the hard one is near: the next run revokes the mailboxes.
        _revoke_mailboxes(outcome, now=now, delay=delay, source=source)
    _record(outcome, now=now, source=source)
    return outcome


def _revoke_mailboxes(outcome: Outcome, *, now: datetime, delay: timedelta, source: str) -> None:
    """Deactivated shared mailboxes past the same grace period: their certificates are
    revoked as a leaver's are. Not under the cap, which guards against a directory sync
    switching people off by mistake: only an officer deactivates a mailbox, one at a time,
    audited. Counted apart from accounts (revoked_mailboxes, failed_mailboxes)."""
    for mailbox_pk in mailboxes.mailboxes_due(now=now, delay=delay):
        try:
            revoked = mailboxes.mailbox_revoke(
                mailbox_pk, cutoff=now - delay, now=now, source=source
            )
        except SoftTimeLimitExceeded:
            outcome.error = "Stopped at the task's time limit; the next run goes on."
            outcome.stopped = True
            return
        except Exception as exc:
            logger.exception("Could not revoke the certificates of shared mailbox %s", mailbox_pk)
            outcome.failed_mailboxes += 1
            shown = public_message(exc) if isinstance(exc, EnrollmentError) else str(exc)
            outcome.error = f"{type(exc).__name__}: {shown}"[:500]
            continue
        if revoked:
            outcome.revoked_mailboxes += 1
            outcome.revoked_certificates += revoked


def _hold_back(outcome: Outcome, delay: timedelta, due: Due) -> None:
    logger.error("%s", held_back_message(due, outcome.cap))
    audit_record(
        action="leaver.held_back",
        outcome=AuditEvent.Outcome.FAILURE,
        detail={
            "held_back": outcome.held_back,
            "cap": outcome.cap,
            "after_hours": int(delay.total_seconds() // 3600),
            "deactivated": len(due.leavers),
            "address_changed": len(set(due.outdated) - set(due.leavers)),
        },
    )


# The audit detail's "source" of an officer's "revoke all" on /ra/leavers/ (the runs say
# LeaverRevocationRun.Source: "schedule", "command").
OFFICER_SOURCE = "ra"


def _revoke_account(
    user_pk: int,
    *,
    cutoff: datetime | None,
    now: datetime,
    source: str,
    actor: Any = None,
    source_address: str | None = None,
) -> int | None:
    """Revoke one leaver's held certificates in one transaction; how many, or None when
    the account is not (or no longer) a leaver deactivated by ``cutoff`` (None: whenever).

    The account's row is locked and read again first, so an account reactivated since the
    run looked (or while it waits for the lock) keeps its certificates.
    """
    with transaction.atomic():
        found = get_user_model().objects.select_for_update().filter(pk=user_pk, is_active=False)
        if cutoff is not None:
            found = found.filter(deactivated_at__lte=cutoff)
        user = found.first()
        if user is None:
            return None
        held = (
            Certificate.objects.held(now).issued_here().filter(owner=user).select_related("owner")
        )
        revoked = outdated.revoke_each(
            held.order_by("pk"), actor=actor, source_address=source_address
        )
        if revoked:
            audit_record(
                action="leaver.revoke",
                actor=actor,
                target=user,
                source_address=source_address,
                detail={
                    "deactivated_at": user.deactivated_at,
                    "serials": [certificate.serial for certificate in revoked],
                    "source": source,
                },
            )
        return len(revoked)


OUT_OF_SCOPE_LEAVER = _(
    "This account is outside the people your officer scope covers: an officer whose scope "
    "covers it revokes its certificates."
)


def leaver_revoke_check(actor: Any, user: Any, *, source_address: str | None = None) -> None:
    """NotPermitted unless ``actor`` may revoke all of this account's certificates: an RA
    officer whose Reach covers it. The page asks it before its form, leaver_revoke before
    any change (and certificate_revoke again for each certificate); a refusal is audited
    once, where it is made (services.access_refusal_record)."""
    from enrollment.permissions import NOT_AN_OFFICER, OUT_OF_SCOPE, is_ra_officer
    from enrollment.services import access_refusals_recorded

    with access_refusals_recorded(
        actor=actor, attempted="leaver.revoke", target=user, source_address=source_address
    ):
        if not is_ra_officer(actor):
            raise NotPermitted(
                _("Only RA officers may revoke a leaver's certificates."), refusal=NOT_AN_OFFICER
            )
        if not reach_of(actor).covers(user):
            raise NotPermitted(OUT_OF_SCOPE_LEAVER, refusal=OUT_OF_SCOPE)  # naming no one


def leaver_revoke(*, user: Any, actor: Any, source_address: str | None = None) -> int:
    """An officer revokes, now, every certificate a deactivated account still holds
    (affiliationChanged), without waiting for the grace period; how many. Audited as the
    hourly run's are (each certificate.revoke, one leaver.revoke naming the serials), in
    the officer's name with ``"source": "ra"``. An account active again keeps them."""
    leaver_revoke_check(actor, user, source_address=source_address)
    revoked = _revoke_account(
        user.pk,
        cutoff=None,
        now=timezone.now(),
        source=OFFICER_SOURCE,
        actor=actor,
        source_address=source_address,
    )
    if revoked is None:
        raise InvalidState(
            _("%(username)s's account is active again: its certificates were not revoked."),
            params={"username": user.get_username()},
        )
    return revoked


def _record(outcome: Outcome, *, now: datetime, source: str) -> None:
    # Outcome's fields are the row's columns, name for name.
    LeaverRevocationRun.objects.update_or_create(
        pk=1,
        defaults={
            "ran_at": now,
            "source": source,
            **{
                field.name: getattr(outcome, field.name)
                for field in dataclasses.fields(outcome)
                if field.metadata.get("stored", True)
            },
        },
    )


# --- what /health/ and the RA console say ---------------------------------------------


CRON_HINT = _(
    "Revoke them on /ra/leavers/, or run `manage.py revoke_deactivated --confirm` from cron "
    "every hour: it revokes what is due, as the hourly run would."
)


def waiting_without_scheduler(now: datetime | None = None, *, reach: Reach = EVERYONE) -> list[str]:
    """What the hourly run would revoke, waiting for a run that never comes because
    nothing runs on a schedule (health.no_scheduler()); empty when beat runs or automatic
    revocation is off. Said on the RA console, beside beat's "Not used": to a scoped
    officer, of the people their ``reach`` covers (shared mailboxes are in no scope)."""
    delay = revocation_delay()
    if delay is None or not health.no_scheduler():
        return []
    now = now or timezone.now()
    waiting = []
    if accounts := leavers_holding_count(now=now, reach=reach):
        waiting.append(
            ngettext(
                "%(count)d deactivated account(s) still holding certificates",
                "%(count)d deactivated account(s) still holding certificates",
                accounts,
            )
            % {"count": accounts}
        )
    if old := outdated.outdated_count(now=now, reach=reach):
        waiting.append(
            ngettext(
                "%(count)d certificate(s) for an address their holder no longer has",
                "%(count)d certificate(s) for an address their holder no longer has",
                old,
            )
            % {"count": old}
        )
    # Every deactivated mailbox that holds certificates, its grace period over or not.
    if reach.everyone and (closed := len(mailboxes.mailboxes_due(now=now, delay=timedelta(0)))):
        waiting.append(
            ngettext(
                "%(count)d deactivated shared mailbox(es) still holding certificates",
                "%(count)d deactivated shared mailbox(es) still holding certificates",
                closed,
            )
            % {"count": closed}
        )
    return waiting


def held_back_message(due: Due, cap: int) -> str:
    """Why the run revoked nothing, in English: for the worker's log."""
    return english(_held_back(due, cap))


def _held_back(due: Due, cap: int) -> str:
    """The same, worded when read: in the officer's language on the RA console."""
    changed = set(due.outdated) - set(due.leavers)
    if not changed:
        count = len(due.leavers)
        return worded(
            ngettext_lazy(
                "%(count)d deactivated accounts are due for certificate revocation, more than "
                "PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN (%(cap)d), so none were revoked. "
                "Check the directory (a sync may have switched them off by mistake) and "
                "reactivate those who have not left; then run `manage.py revoke_deactivated "
                "--confirm`.",
                "%(count)d deactivated accounts are due for certificate revocation, more than "
                "PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN (%(cap)d), so none were revoked. "
                "Check the directory (a sync may have switched them off by mistake) and "
                "reactivate those who have not left; then run `manage.py revoke_deactivated "
                "--confirm`.",
                count,
            ),
            count=count,
            cap=cap,
        )
    count = len(due.accounts)
    return worded(
        ngettext_lazy(
            "%(count)d accounts (%(leavers)d deactivated, %(changed)d whose e-mail address "
            "changed) are due for certificate revocation, more than "
            "PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN (%(cap)d), so none were revoked. Check "
            "the directory (a sync may have switched accounts off or rewritten their addresses "
            "by mistake) and put back what should not have changed; then run `manage.py "
            "revoke_deactivated --confirm`.",
            "%(count)d accounts (%(leavers)d deactivated, %(changed)d whose e-mail address "
            "changed) are due for certificate revocation, more than "
            "PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN (%(cap)d), so none were revoked. Check "
            "the directory (a sync may have switched accounts off or rewritten their addresses "
            "by mistake) and put back what should not have changed; then run `manage.py "
            "revoke_deactivated --confirm`.",
            count,
        ),
        count=count,
        leavers=len(due.leavers),
        changed=len(changed),
        cap=cap,
    )


def leaver_check(now: datetime | None = None) -> dict[str, Any]:
    """The verdict on the leavers' revocation: "warn" while the cap holds accounts back,
    the last run could not revoke some, or runs stopped finishing; "ok" otherwise, or when
    it is off (or never ran: the embedded default has no beat).

    Reads the last run's row; only while that says accounts were held back does it count
    them again, so reactivating them or the command's run clears the warning at once.
    """
    delay = revocation_delay()
    if delay is None:
        return {"status": health.OK, "mode": "off"}
    now = now or timezone.now()
    cap = settings.PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN
    run = LeaverRevocationRun.objects.filter(pk=1).first()
    result: dict[str, Any] = {
        "status": health.OK,
        "after_hours": settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS,
        "max_per_run": cap,
        "last_run": run.ran_at.isoformat() if run is not None else None,
        "problems": [],
    }
    if run is None:
        return result
    if run.held_back:
        due = _due_accounts(now, delay)
        if len(due.accounts) > cap:
            result["held_back"] = len(due.accounts)
            result["problems"].append(_held_back(due, cap))
    if now - run.ran_at > STALE_AFTER:
        result["problems"].append(
            worded(
                _(
                    "The hourly revocation of leavers' certificates last finished at %(time)s "
                    "UTC: is it failing? See the worker's log."
                ),
                time=f"{run.ran_at:%Y-%m-%d %H:%M}",
            )
        )
    if run.failed_accounts or run.failed_mailboxes:
        accounts = worded(
            ngettext_lazy(
                "%(count)d account(s) (deactivated, or whose address changed)",
                "%(count)d account(s) (deactivated, or whose address changed)",
                run.failed_accounts,
            ),
            count=run.failed_accounts,
        )
        boxes = worded(
            ngettext_lazy(
                "%(count)d deactivated shared mailbox(es)",
                "%(count)d deactivated shared mailbox(es)",
                run.failed_mailboxes,
            ),
            count=run.failed_mailboxes,
        )
        if not run.failed_mailboxes:
            whose = accounts
        elif not run.failed_accounts:
            whose = boxes
        else:
            # Translators: whose certificates the last run could not revoke.
            whose = worded(_("%(accounts)s and %(mailboxes)s"), accounts=accounts, mailboxes=boxes)
        result["problems"].append(
            worded(
                _(
                    "The last run could not revoke the certificates of %(whose)s: %(error)s. It "
                    "tries again every hour."
                ),
                whose=whose,
                error=run.error,
            )
        )
    elif run.error:  # stopped at its time limit, or could not look for old addresses
        result["problems"].append(
            worded(_("The last run: %(error)s It tries again every hour."), error=run.error)
        )
    if result["problems"]:
        result["status"] = health.WARN
    return result
