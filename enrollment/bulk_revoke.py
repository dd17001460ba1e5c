"""Revoking a selection of certificates in batches: the admin's "Revoke selected
certificates…", in the officer's request up to PKIPORTAL_ADMIN_REVOKE_INLINE_MAX, in a
Celery task above it (enrollment.tasks.certificates_revoke_task), so a web server's
timeout never cuts a large selection off half-way.

Every run is a row (models.BulkRevocationRun), written with its ``.queued`` audit event in
the officer's request: the selected ids, the reason, the counts and where the next batch
starts. The task's message carries the run's number alone and a worker reads the rest
there, so a run outlives a worker's death or a dropped message.

Each batch is one transaction, as a leaver's certificates are (enrollment.leavers): the
run's row is locked first, then its certificate rows in id order, then each is revoked
through services.certificate_revoke (audit event, CRL entry, the holder's mail), a
``.batch`` event names the serials it revoked, and the row's counts, position and
heartbeat move with it; one CRL task per CA is queued as it commits, not one per
certificate. Whatever is revoked or expired by the time its batch comes is skipped and
counted, so a batch done again does no harm.

One worker at a time: the row names, in ``claim``, the one task message (by its id) or
request that may work on the run, and each batch checks it under the row's lock. A run
not finished whose heartbeat is older than STALL_MINUTES (its worker died, its message
was dropped, its request was cut off) is stalled; resuming it, or one an error stopped,
names a new message on the row, taken with SKIP LOCKED while it is resumable: of two
resumes at once one queues a message, and a worker still on the old message stops at its
next batch.

The audit trail tells the story: ``.queued`` (its id is the run's number), a ``.batch``
event per batch, ``.done`` with the state it ended in and the totals (outcome failure if
some could not be revoked or the run stopped early); a stopped run resumed adds
``.resumed`` (in the resuming officer's name) and, at its new end, a ``.done`` saying
``after_resume`` and who started it.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.result import AsyncResult

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone, translation
from django.utils.translation import gettext_lazy as _

from enrollment import services, tasks
from enrollment.audit import audit_record
from enrollment.exceptions import EnrollmentError, InvalidState, NotPermitted, public_message
from enrollment.models import AuditEvent, BulkRevocationRun, Certificate, CrlEntry, KeyIdentity
from enrollment.permissions import is_ra_officer
from enrollment.scopes import reach_of

logger = logging.getLogger(__name__)

QUEUED = "certificate.bulk_revoke.queued"
BATCH_DONE = "certificate.bulk_revoke.batch"
RESUMED = "certificate.bulk_revoke.resumed"
DONE = "certificate.bulk_revoke.done"
# Certificates per transaction. Each revocation takes the audit trail's lock and keeps it
# to the commit, so other audited changes wait for a whole batch: ~1 s for 50 on a busy
# 2-core machine, against ~30% more time for one transaction each.
BATCH = 50
# Failures named in the outcome (the admin's messages, the .done event); the log has all.
FAILURES_KEPT = 10
# A task revokes for this long (at most half its soft time limit), then queues the rest.
RUN_SECONDS = 60.0
# A run not finished whose heartbeat (queued, claimed, last batch) is this old is stalled
# and may be resumed: a batch of BATCH takes seconds, a message waits for a worker less.
STALL_MINUTES = 10

State = BulkRevocationRun.State
UNFINISHED = (State.QUEUED, State.RUNNING)
# What a batch moves on the row, and what the worker's copy is given back after it.
PROGRESS = ("position", "revoked", "skipped", "failed", "imported", "batches", "failures")


def may_revoke_in_bulk(user: Any) -> bool:
    """Whom the admin's action serves: an active staff account that may view certificates
    there (the changelist's own check) and may revoke anyone's (superusers, RA officers
    who act for everyone: the admin lists every certificate, so it is no place for an
    officer scope). Checked again before each batch, against the account as it is then,
    and to resume."""
    return bool(
        user is not None
        and user.is_active
        and user.is_staff
        and (
            user.has_perm("enrollment.view_certificate")
            or user.has_perm("enrollment.change_certificate")
        )
        and is_ra_officer(user)
        and reach_of(user).everyone
    )


def _token() -> str:
    """A claim: the id of the one message (or request) that may work on a run."""
    return uuid.uuid4().hex


def bulk_revoke_start(
    *,
    ids: list[int],
    reason: str,
    actor: Any,
    invalidity_date: datetime | None = None,
    source_address: str | None = None,
    skipped: int = 0,
) -> BulkRevocationRun:
    """Record a confirmed selection (``.queued``, in the officer's name, and its row): the
    run, claimed for the request or message named by its ``claim``. The invalidity date is
    checked first against the selection (its latest certificate), so a date the service
    would refuse is put right on the form rather than fail every certificate."""
    if not may_revoke_in_bulk(actor):
        raise NotPermitted(
            _("Only RA officers who act for everyone may revoke certificates from the admin.")
        )
    if invalidity_date is not None and ids:
        latest = Certificate.objects.filter(pk__in=ids).aggregate(latest=Max("not_before"))
        services.invalidity_date_check(invalidity_date, not_before=latest["latest"])
    with transaction.atomic():
        event = audit_record(
            action=QUEUED,
            actor=actor,
            source_address=source_address,
            detail={
                "certificates": len(ids),
                "skipped": skipped,
                "reason": reason,
                "invalidity_date": invalidity_date,
                "batch_size": BATCH,
            },
        )
        return BulkRevocationRun.objects.create(
            event=event,
            created_at=event.created_at,
            started_by=actor,
            actor=actor,
            source_address=source_address,
            reason=reason,
            invalidity_date=invalidity_date,
            certificate_ids=sorted(ids),
            total=len(ids),
            selected=len(ids) + skipped,
            skipped=skipped,
            claim=_token(),
            heartbeat_at=event.created_at,
        )


def bulk_revoke_queue(run: BulkRevocationRun, *, error: str = "") -> AsyncResult[Any] | None:
    """Hand the run to a worker: a message with its number alone, whose id is the run's
    claim. Without a broker the task runs here, to the end (its errors are raised). None
    if the broker refused it: the run is then stopped with ``error`` (logged)."""
    task = tasks.certificates_revoke_task
    if settings.CELERY_TASK_ALWAYS_EAGER:  # what it raises is the run's, not a broker's
        return task.apply_async((run.pk,), task_id=run.claim)
    try:
        return task.apply_async((run.pk,), task_id=run.claim)
    except Exception:
        logger.exception("Could not queue bulk revocation %s", run.pk)
        _end(run, run.claim, error=error or "It could not be queued (is the broker down?).")
        return None


def bulk_revoke_work(
    run_id: int, *, claim: str, seconds: float | None = None
) -> BulkRevocationRun | None:
    """Work on the run as the message or request named ``claim``: its batches until none
    is left, ``seconds`` have passed (a new message gets the rest), or something stops
    it (``error`` says what; the batch it stopped in is rolled back whole, those before
    it stay revoked). The run as it is then (certificate ids not loaded); None if it is
    not this claim's (resumed meanwhile, or ended)."""
    claimed = BulkRevocationRun.objects.filter(pk=run_id, claim=claim, state__in=UNFINISHED).update(
        state=State.RUNNING, heartbeat_at=timezone.now()
    )
    if not claimed:
        logger.info("Bulk revocation %s is not message %s's (resumed or ended).", run_id, claim)
        return None
    run = BulkRevocationRun.objects.defer("certificate_ids").get(pk=run_id)
    # Read once a message (~0.9 MB for 100,000), not once a batch.
    ids: list[int] = BulkRevocationRun.objects.values_list("certificate_ids", flat=True).get(
        pk=run_id
    )
    started, first = time.monotonic(), True
    while run.position < run.total:
        # At least one batch a call, whatever the time: a run always gets further.
        if seconds is not None and not first and time.monotonic() - started >= seconds:
            _hand_over(run, claim)
            return run
        first = False
        actor = _actor(run)
        if not may_revoke_in_bulk(actor):
            who = actor.get_username() if actor is not None else "The account that ran it"
            _end(run, claim, error=f"{who} may no longer revoke certificates from the admin.")
            return run
        try:
            ours = _revoke_batch(run, ids, claim, actor)
        except SoftTimeLimitExceeded:
            logger.warning("Bulk revocation %s reached the time limit; the rest is queued again.",
                           run.pk)  # fmt: skip
            _hand_over(run, claim)  # this batch, rolled back, included
            return run
        except Exception as exc:
            _end(run, claim, error=_stopped(run, exc))
            return run
        if not ours:
            logger.info("Bulk revocation %s was resumed by another message; this one stops.",
                        run.pk)  # fmt: skip
            return run
    _end(run, claim)
    return run


def _actor(run: BulkRevocationRun) -> Any:
    """The account the run revokes in the name of, as it is now (None if deleted)."""
    if run.actor_id is None:
        return None
    return get_user_model().objects.filter(pk=run.actor_id).first()


def _stopped(run: BulkRevocationRun, exc: Exception) -> str:
    logger.exception("Bulk revocation %s stopped after %d certificates", run.pk, run.revoked)
    shown = _kept(exc) if isinstance(exc, EnrollmentError) else type(exc).__name__
    return f"Stopped by an error ({shown}); the log has the details."[:500]


def _kept(exc: EnrollmentError) -> str:
    """What the run's row keeps of a refusal: in English, as the audit trail keeps it,
    whoever reads it later."""
    with translation.override("en"):
        return public_message(exc)


def _locked(run_id: int, claim: str) -> BulkRevocationRun | None:
    """The run's row, locked, if it is still this claim's to work on (no certificate ids:
    they are read once a message, not once a batch)."""
    return (
        BulkRevocationRun.objects.select_for_update()
        .defer("certificate_ids")
        .filter(pk=run_id, claim=claim, state__in=UNFINISHED)
        .first()
    )


def _revoke_batch(run: BulkRevocationRun, ids: list[int], claim: str, actor: Any) -> bool:
    """The next batch and its place on the row, in one transaction; False (nothing done)
    if the run is no longer this claim's."""
    with transaction.atomic(), tasks.crl_publish_once():
        # The run's row before any certificate's: a second worker on the run waits here,
        # and a single revocation never takes it.
        current = _locked(run.pk, claim)
        if current is None:
            return False
        batch = ids[current.position : current.position + BATCH]
        revoked: list[Certificate] = []
        held = _lock(batch, current.reason)
        skipped = len(batch) - len(held)
        failed = imported = 0
        for certificate in held:
            try:
                services.certificate_revoke(
                    certificate=certificate,
                    reason=current.reason,
                    actor=actor,
                    invalidity_date=current.invalidity_date,
                    source_address=current.source_address,
                )
            except InvalidState:
                skipped += 1  # revoked meanwhile, or with a compromised key revoked here
                continue
            except EnrollmentError as exc:
                logger.warning("Bulk revocation of %s failed: %s", certificate.pk, exc.message)
                failed += 1
                if len(current.failures) < FAILURES_KEPT:
                    current.failures.append(
                        f"{certificate} (serial {certificate.serial}): {_kept(exc)}"
                    )
                continue
            revoked.append(certificate)
            imported += certificate.ca.is_imported
        audit_record(
            action=BATCH_DONE,
            actor=actor,
            source_address=current.source_address,
            detail={
                "run": current.pk,
                "batch": current.batches + 1,
                "revoked": len(revoked),
                "skipped": skipped,
                "failed": failed,
                "serials": [certificate.serial for certificate in revoked],
                "done": current.position + len(batch),
                "of": current.total,
            },
        )
        current.position += len(batch)
        current.batches += 1
        current.revoked += len(revoked)
        current.skipped += skipped
        current.failed += failed
        current.imported += imported
        current.heartbeat_at = timezone.now()
        current.save(update_fields=[*PROGRESS, "heartbeat_at"])
    # Committed: only now does the worker's copy count it.
    for name in (*PROGRESS, "heartbeat_at"):
        setattr(run, name, getattr(current, name))
    return True


def _lock(ids: list[int], reason: str) -> list[Certificate]:
    """Lock the batch in the order a single revocation takes its locks, before the first
    takes the audit trail's: for keyCompromise each key's row (issuance and compromise
    meet there), then every certificate it revokes or re-reasons, then their CRL
    entries; otherwise the batch's certificate rows. Then those still held, in id order.

    Taking a row after the audit trail's lock, which the batch holds from its first
    revocation, would deadlock with a single revocation waiting for that lock."""
    compromised = Certificate.RevocationReasonChoice.KEY_COMPROMISE
    if reason == compromised:
        keys = sorted(
            set(
                Certificate.objects.filter(pk__in=ids)
                .exclude(spki_sha256="")
                .values_list("spki_sha256", flat=True)
            )
        )
        KeyIdentity.objects.bulk_create(
            [KeyIdentity(spki_sha256=key) for key in keys], ignore_conflicts=True
        )
        services.lock_in_order(KeyIdentity.objects.filter(pk__in=keys))
        changed = services.lock_in_order(
            Certificate.objects.filter(
                Q(pk__in=ids) | (Q(spki_sha256__in=keys) & ~Q(revocation_reason=compromised))
            )
        )
        services.lock_in_order(CrlEntry.objects.filter(pk__in=changed))
    else:
        services.lock_in_order(Certificate.objects.filter(pk__in=ids))
    return list(
        Certificate.objects.held(timezone.now())
        .filter(pk__in=ids)
        .select_related("owner", "template", "ca", "mailbox")
        .order_by("pk")
    )


def _end(run: BulkRevocationRun, claim: str, *, error: str = "") -> bool:
    """Record the run's end, if it is still this claim's: finished (with failures if some
    were refused) or, with ``error``, stopped; ``.done`` with the totals, and the log.

    A stopped run may be resumed and end again: each ``.done`` names the state it ended
    in, and one after a resume says so (``after_resume``, how many) and who started the
    run, since its actor is then whoever resumed it: the trail reads "stopped, resumed by
    …, finished after resume", not two ends of one run."""
    with transaction.atomic():
        current = _locked(run.pk, claim)
        if current is None:
            return False
        if error:
            current.state = State.STOPPED
        else:
            current.state = State.FAILED if current.failed else State.DONE
        current.error = error[:500]
        current.finished_at = current.heartbeat_at = timezone.now()
        ended = ["state", "error", "finished_at", "heartbeat_at"]
        if current.state == State.DONE:
            # Every certificate done and none refused: nothing will read its ids again
            # (only a stopped or stalled run is resumed), so the list goes, up to ~0.9 MB
            # for 100,000; the counts stay for the console, the events for the trail.
            # One stopped (or stalled) keeps them to be resumed; one finished with failures
            # keeps them too, the selection its failures are looked into against.
            current.certificate_ids = []
            ended.append("certificate_ids")
        current.save(update_fields=ended)
        incomplete = bool(error or current.failed or current.not_reached)
        resumed = (
            {"after_resume": current.resumes, "started_by": current.event.actor_name}
            if current.resumes
            else {}
        )
        audit_record(
            action=DONE,
            actor=_actor(current),
            source_address=current.source_address,
            outcome=AuditEvent.Outcome.FAILURE if incomplete else AuditEvent.Outcome.SUCCESS,
            detail={
                "run": current.pk,
                "state": current.state,
                **resumed,
                "certificates": current.total,
                "revoked": current.revoked,
                "skipped": current.skipped,
                "failed": current.failed,
                "imported": current.imported,
                "not_reached": current.not_reached,
                **({"failures": current.failures} if current.failures else {}),
                **({"error": current.error} if current.error else {}),
            },
        )
    for name in (*PROGRESS, "state", "error", "finished_at", "heartbeat_at"):
        setattr(run, name, getattr(current, name))
    (logger.error if incomplete else logger.info)(
        "Bulk revocation %s%s: %d revoked, %d skipped, %d failed, %d not reached. %s",
        run.pk, " (after resume)" if resumed else "",
        run.revoked, run.skipped, run.failed, run.not_reached, run.error,
    )  # fmt: skip
    return True


def _hand_over(run: BulkRevocationRun, claim: str) -> None:
    """Time is up with batches left: name a new message as the run's claim, then queue it
    (committed first, so the message finds itself named)."""
    successor = _token()
    moved = BulkRevocationRun.objects.filter(pk=run.pk, claim=claim, state=State.RUNNING).update(
        state=State.QUEUED, claim=successor
    )
    if moved:
        run.state, run.claim = State.QUEUED, successor
        bulk_revoke_queue(run, error="Could not queue the rest (is the broker down?).")


def _stalled_since(now: datetime) -> datetime:
    """An unfinished run whose heartbeat is this old or older has stalled: the one threshold
    for resuming it (resumable) and for the console calling it so (_run_status)."""
    return now - timedelta(minutes=STALL_MINUTES)


def resumable(now: datetime) -> Q:
    """Runs that may be resumed: stopped early, or stalled (not finished, no heartbeat for
    STALL_MINUTES)."""
    stalled = Q(state__in=UNFINISHED, heartbeat_at__lte=_stalled_since(now))
    return Q(state=State.STOPPED) | stalled


def bulk_revoke_resume(
    *, run: BulkRevocationRun, actor: Any, source_address: str | None = None
) -> BulkRevocationRun:
    """Give a stalled or stopped run to a new message, in ``actor``'s name from now on
    (``.resumed``); the run, to queue (bulk_revoke_queue) once this commits. What is
    already revoked is skipped, so resuming is safe.

    The row is taken with SKIP LOCKED, and only while it is resumable: a second resume at
    the same moment, or one while a batch (stuck past the stall time) holds the row, is
    refused at once rather than left waiting; a worker still on the old message stops at
    its next batch."""
    if not may_revoke_in_bulk(actor):
        raise NotPermitted(
            _("Only RA officers who may revoke certificates in the admin may resume a run.")
        )
    now = timezone.now()
    with transaction.atomic():
        current = (
            BulkRevocationRun.objects.select_for_update(skip_locked=True)
            .defer("certificate_ids")
            .filter(resumable(now), pk=run.pk)
            .first()
        )
        if current is None:
            raise InvalidState(
                _("Bulk revocation #%(number)d is running or has finished: nothing to resume."),
                params={"number": run.pk},
            )
        stopped_by = current.error
        current.state = State.QUEUED
        current.claim = _token()
        current.heartbeat_at = now
        current.actor = actor
        current.source_address = source_address
        current.error = ""
        current.finished_at = None
        current.resumes += 1
        current.save(
            update_fields=[
                "state",
                "claim",
                "heartbeat_at",
                "actor",
                "source_address",
                "error",
                "finished_at",
                "resumes",
            ]
        )
        audit_record(
            action=RESUMED,
            actor=actor,
            source_address=source_address,
            detail={
                "run": current.pk,
                "resumes": current.resumes,
                "done": current.position,
                "of": current.total,
                **({"stopped_by": stopped_by} if stopped_by else {}),
            },
        )
    return current


# --- what the RA console shows of runs ------------------------------------------------
# Runs started within this many days are listed, the newest first, at most RUNS_SHOWN.
RUNS_DAYS = 7
RUNS_SHOWN = 20


@dataclass(frozen=True)
class RunStatus:
    """A run started from the admin, as its row tells it: ``selected`` is the whole
    confirmed selection (those already revoked or expired then included), so
    revoked + skipped + failed is how far it has got."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILURES = "failures"
    STOPPED = "stopped"
    STALLED = "stalled"
    # Translators: the state of a bulk revocation run, in the admin's list.
    LABELS = {
        RUNNING: _("Running"),
        FINISHED: _("Finished"),
        FAILURES: _("Finished with failures"),
        STOPPED: _("Stopped"),
        STALLED: _("Stalled"),
    }

    run_id: int
    started_at: datetime
    started_by: str
    resumed_by: str  # who it runs for since the last resume; "" if never resumed
    resumes: int
    reason: str
    selected: int
    revoked: int
    skipped: int
    failed: int
    left: int  # not done yet
    not_reached: int  # of a run that has ended: left when it did
    state: str
    error: str
    heartbeat_at: datetime

    @property
    def state_label(self) -> str:
        return str(self.LABELS[self.state])

    @property
    def resumable(self) -> bool:
        return self.state in (self.STALLED, self.STOPPED)


def bulk_revoke_runs(now: datetime | None = None) -> list[RunStatus]:
    """The runs of the last RUNS_DAYS days, newest first, in one read of their rows (not
    their certificate ids). Runs from before the rows existed are on the audit trail only."""
    now = now or timezone.now()
    rows = (
        BulkRevocationRun.objects.filter(created_at__gte=now - timedelta(days=RUNS_DAYS))
        .select_related("event", "actor")
        .defer("certificate_ids", "failures", "event__detail")
        .order_by("-pk")[:RUNS_SHOWN]
    )
    return [_run_status(row, now) for row in rows]


def _run_status(row: BulkRevocationRun, now: datetime) -> RunStatus:
    choices = Certificate.RevocationReasonChoice
    if row.state == State.STOPPED:
        state = RunStatus.STOPPED
    elif row.state == State.FAILED:
        state = RunStatus.FAILURES
    elif row.state == State.DONE:
        state = RunStatus.FINISHED
    elif row.heartbeat_at <= _stalled_since(now):
        state = RunStatus.STALLED
    else:
        state = RunStatus.RUNNING
    return RunStatus(
        run_id=row.pk,
        started_at=row.created_at,
        started_by=row.event.actor_name,
        resumed_by=(row.actor.get_username() if row.actor else "(deleted account)")
        if row.resumes
        else "",
        resumes=row.resumes,
        reason=str(choices(row.reason).label) if row.reason in choices.values else row.reason,
        selected=row.selected,
        revoked=row.revoked,
        skipped=row.skipped,
        failed=row.failed,
        left=row.not_reached,
        not_reached=0 if state in (RunStatus.RUNNING, RunStatus.STALLED) else row.not_reached,
        state=state,
        error=row.error,
        heartbeat_at=row.heartbeat_at,
    )
