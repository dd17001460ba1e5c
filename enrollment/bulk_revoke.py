"""Revoking a selection of certificates in batches: the admin's "Revoke selected
certificates…", in the officer's request up to PKIPORTAL_ADMIN_REVOKE_INLINE_MAX, in a
Celery task above it (enrollment.tasks.certificates_revoke_task), so a web server's
timeout never cuts a large selection off half-way.

Each batch is one transaction, as a leaver's certificates are (enrollment.leavers): its
certificate rows are locked first, in id order, then each is revoked through
services.certificate_revoke (audit event, CRL entry, the holder's mail), and a run's
``certificate.bulk_revoke.batch`` event names the serials it revoked; one CRL task per CA
is queued as it commits, not one per certificate. Whatever is revoked or expired by the
time its batch comes is skipped and counted, so the task can be run again (a worker that
died) and the action chosen again on the same selection to finish what a failure left.

A run is recorded on the audit trail: ``certificate.bulk_revoke.queued`` in the officer's
request (its id names the run), a ``.batch`` event per batch, and ``.done`` with the
totals (outcome failure if some could not be revoked or the run stopped early).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import IntegerField, Max, Q, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.utils import timezone

from enrollment import services, tasks
from enrollment.audit import audit_record
from enrollment.exceptions import EnrollmentError, InvalidState, NotPermitted, public_message
from enrollment.models import AuditEvent, Certificate, CrlEntry, KeyIdentity
from enrollment.permissions import is_ra_officer

logger = logging.getLogger(__name__)

QUEUED = "certificate.bulk_revoke.queued"
BATCH_DONE = "certificate.bulk_revoke.batch"
DONE = "certificate.bulk_revoke.done"
# Certificates per transaction. Each revocation takes the audit trail's lock and keeps it
# to the commit, so other audited changes wait for a whole batch: ~1 s for 50 on a busy
# 2-core machine, against ~30% more time for one transaction each.
BATCH = 50
# Failures named in the outcome (the admin's messages, the .done event); the log has all.
FAILURES_KEPT = 10
# A task revokes for this long (at most half its soft time limit), then queues the rest.
RUN_SECONDS = 60.0
# Errors about the form's input: shown on the form when the first certificate gets one.
FORM_FIELDS = ("reason", "invalidity_date")


@dataclass
class Run:
    """A confirmed selection and how far it has got: what the task's message carries (ids
    and JSON values) and what the officer is told at its end."""

    ids: list[int]  # still to do, in id order
    reason: str
    actor_id: int
    invalidity_date: datetime | None = None
    source_address: str | None = None
    run_id: int | None = None  # the .queued event; None in the request (no run events)
    total: int = 0  # to revoke, as confirmed
    revoked: int = 0
    skipped: int = 0  # already revoked or expired: when confirmed, and since
    failed: int = 0
    imported: int = 0  # of those revoked, another CA's: recorded here only
    batches: int = 0
    failures: list[str] = field(default_factory=list)  # the first FAILURES_KEPT
    error: str = ""  # why it stopped before the end

    def as_message(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.invalidity_date is not None:
            data["invalidity_date"] = self.invalidity_date.isoformat()
        return data

    @classmethod
    def from_message(cls, data: dict[str, Any]) -> Run:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        if values.get("invalidity_date"):
            values["invalidity_date"] = datetime.fromisoformat(values["invalidity_date"])
        return cls(**values)


def may_revoke_in_bulk(user: Any) -> bool:
    """Whom the admin's action serves: an active staff account that may view certificates
    there (the changelist's own check) and may revoke others' (RA officers, superusers).
    Checked again before each batch, against the account as it is then."""
    return bool(
        user is not None
        and user.is_active
        and user.is_staff
        and (
            user.has_perm("enrollment.view_certificate")
            or user.has_perm("enrollment.change_certificate")
        )
        and is_ra_officer(user)
    )


def bulk_revoke_start(
    *,
    ids: list[int],
    reason: str,
    actor: Any,
    invalidity_date: datetime | None = None,
    source_address: str | None = None,
    skipped: int = 0,
) -> Run:
    """Record a confirmed selection for a task to revoke (``.queued``, in the officer's
    name): the run to queue. The invalidity date is checked first against the selection
    (its latest certificate), so a date the service would refuse is put right on the form
    rather than fail every certificate in the background."""
    if not may_revoke_in_bulk(actor):
        raise NotPermitted("Only RA officers may revoke certificates from the admin.")
    if invalidity_date is not None and ids:
        latest = Certificate.objects.filter(pk__in=ids).aggregate(latest=Max("not_before"))
        services.invalidity_date_check(invalidity_date, not_before=latest["latest"])
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
    return Run(
        ids=sorted(ids),
        reason=reason,
        actor_id=actor.pk,
        invalidity_date=invalidity_date,
        source_address=source_address,
        run_id=event.pk,
        total=len(ids),
        skipped=skipped,
    )


def bulk_revoke_continue(
    run: Run, *, seconds: float | None = None, form_errors: bool = False
) -> None:
    """Revoke the run's batches, updating it, until none is left, ``seconds`` have passed
    (run.ids keeps the rest), or something stops it (run.error says what; the batch it
    stopped in is rolled back whole, those before it stay revoked).

    ``form_errors``: a refusal of the reason or the invalidity date for the very first
    certificate is raised (the request shows it on the form; nothing changed), not counted.
    """
    started, first = time.monotonic(), True
    while run.ids:
        # At least one batch a call, whatever the time: a run always gets further.
        if seconds is not None and not first and time.monotonic() - started >= seconds:
            return
        first = False
        actor = get_user_model().objects.filter(pk=run.actor_id).first()
        if not may_revoke_in_bulk(actor):
            who = actor.get_username() if actor is not None else f"account {run.actor_id}"
            run.error = f"{who} may no longer revoke certificates from the admin."
            return
        batch = run.ids[:BATCH]
        try:
            _revoke_batch(run, batch, actor, form_errors=form_errors)
        except SoftTimeLimitExceeded:
            raise  # the task queues the rest, this batch included
        except EnrollmentError as exc:
            if form_errors and exc.field in FORM_FIELDS:
                raise  # the first certificate's, as _revoke_batch raises it: nothing changed
            run.error = _stopped(run, exc)
            return
        except Exception as exc:
            run.error = _stopped(run, exc)
            return
        del run.ids[: len(batch)]


def _stopped(run: Run, exc: Exception) -> str:
    logger.exception(
        "Bulk revocation %s stopped after %d certificates", run.run_id or "(in the request)",
        run.revoked,
    )  # fmt: skip
    shown = public_message(exc) if isinstance(exc, EnrollmentError) else type(exc).__name__
    return f"Stopped by an error ({shown}); the log has the details."[:500]


def _revoke_batch(run: Run, ids: list[int], actor: Any, *, form_errors: bool) -> None:
    revoked: list[Certificate] = []
    skipped = failed = imported = 0
    failures: list[str] = []
    with transaction.atomic(), tasks.crl_publish_once():
        held = _lock(ids, run.reason)
        skipped = len(ids) - len(held)
        for certificate in held:
            try:
                services.certificate_revoke(
                    certificate=certificate,
                    reason=run.reason,
                    actor=actor,
                    invalidity_date=run.invalidity_date,
                    source_address=run.source_address,
                )
            except InvalidState:
                skipped += 1  # revoked meanwhile, or with a compromised key revoked here
                continue
            except EnrollmentError as exc:
                first = not (run.revoked or run.failed or revoked or failed)
                if form_errors and first and exc.field in FORM_FIELDS:
                    raise
                logger.warning("Bulk revocation of %s failed: %s", certificate.pk, exc.message)
                failed += 1
                failures.append(
                    f"{certificate} (serial {certificate.serial}): {public_message(exc)}"
                )
                continue
            revoked.append(certificate)
            imported += certificate.ca.is_imported
        if run.run_id is not None:
            audit_record(
                action=BATCH_DONE,
                actor=actor,
                source_address=run.source_address,
                detail={
                    "run": run.run_id,
                    "batch": run.batches + 1,
                    "revoked": len(revoked),
                    "skipped": skipped,
                    "failed": failed,
                    "serials": [certificate.serial for certificate in revoked],
                    "done": run.total - len(run.ids) + len(ids),
                    "of": run.total,
                },
            )
    # Committed: only now does the run count it.
    run.batches += 1
    run.revoked += len(revoked)
    run.skipped += skipped
    run.failed += failed
    run.imported += imported
    run.failures.extend(failures[: FAILURES_KEPT - len(run.failures)])


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


def bulk_revoke_finish(run: Run) -> None:
    """Record the run's end (``.done``, failure if some were not revoked) and log it."""
    actor = get_user_model().objects.filter(pk=run.actor_id).first()
    incomplete = bool(run.error or run.failed or run.ids)
    audit_record(
        action=DONE,
        actor=actor,
        source_address=run.source_address,
        outcome=AuditEvent.Outcome.FAILURE if incomplete else AuditEvent.Outcome.SUCCESS,
        detail={
            "run": run.run_id,
            "certificates": run.total,
            "revoked": run.revoked,
            "skipped": run.skipped,
            "failed": run.failed,
            "imported": run.imported,
            "not_reached": len(run.ids),
            **({"failures": run.failures} if run.failures else {}),
            **({"error": run.error} if run.error else {}),
        },
    )
    (logger.error if incomplete else logger.info)(
        "Bulk revocation %s: %d revoked, %d skipped, %d failed, %d not reached. %s",
        run.run_id, run.revoked, run.skipped, run.failed, len(run.ids), run.error,
    )  # fmt: skip


# --- what the RA console shows of runs ------------------------------------------------
# Runs started within this many days are listed, the newest first, at most RUNS_SHOWN.
RUNS_DAYS = 7
RUNS_SHOWN = 20
# A run with no event for this long and no .done is shown as possibly stalled: a batch of
# BATCH takes seconds, and a worker that died, or a request cut off, leaves no .done.
STALL_MINUTES = 10


@dataclass(frozen=True)
class RunStatus:
    """A run started from the admin, as its audit events tell it: ``selected`` is the
    whole confirmed selection (those already revoked or expired then included), so
    revoked + skipped + failed is how far it has got."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILURES = "failures"
    STOPPED = "stopped"
    STALLED = "stalled"
    LABELS = {
        RUNNING: "Running",
        FINISHED: "Finished",
        FAILURES: "Finished with failures",
        STOPPED: "Stopped",
        STALLED: "Possibly stalled",
    }

    run_id: int
    started_at: datetime
    started_by: str
    reason: str
    selected: int
    revoked: int
    skipped: int
    failed: int
    not_reached: int
    state: str
    error: str
    last_event_at: datetime

    @property
    def state_label(self) -> str:
        return self.LABELS[self.state]


def _number(key: str) -> Cast:
    """A whole number of the event's detail, on SQLite as on PostgreSQL (->> gives text)."""
    return Cast(KT(f"detail__{key}"), IntegerField())


def bulk_revoke_runs(now: datetime | None = None) -> list[RunStatus]:
    """The runs of the last RUNS_DAYS days, newest first, from their audit events alone
    (no table of runs to keep in step): the .queued events, then one grouped read of the
    .batch and .done events after the oldest of them (indexed by action and id)."""
    now = now or timezone.now()
    started = list(
        AuditEvent.objects.filter(action=QUEUED, created_at__gte=now - timedelta(days=RUNS_DAYS))
        .only("pk", "created_at", "actor_name", "detail")
        .order_by("-pk")[:RUNS_SHOWN]
    )
    if not started:
        return []
    batch, done = Q(action=BATCH_DONE), Q(action=DONE)
    # Each run's batch events are summed; .done adds whether and how it ended (its counts
    # are the task's, which a worker's death can leave short of what its batches did).
    grouped = (
        AuditEvent.objects.filter(action__in=(BATCH_DONE, DONE), pk__gt=started[-1].pk)
        .values(run=KT("detail__run"))
        .annotate(
            revoked=Sum(_number("revoked"), filter=batch, default=0),
            skipped=Sum(_number("skipped"), filter=batch, default=0),
            failed=Sum(_number("failed"), filter=batch, default=0),
            last_batch_at=Max("created_at", filter=batch),
            finished_at=Max("created_at", filter=done),
            not_reached=Max(_number("not_reached"), filter=done),
            error=Max(KT("detail__error"), filter=done),
        )
        .order_by()
    )
    progress: dict[str, dict[str, Any]] = {str(row["run"]): dict(row) for row in grouped}
    return [_run_status(event, progress.get(str(event.pk), {}), now) for event in started]


def _run_status(event: AuditEvent, progress: dict[str, Any], now: datetime) -> RunStatus:
    detail = event.detail if isinstance(event.detail, dict) else {}
    initially_skipped = _whole(detail.get("skipped"))
    reason = str(detail.get("reason", ""))
    choices = Certificate.RevocationReasonChoice
    failed = progress.get("failed") or 0
    error = progress.get("error") or ""
    finished_at = progress.get("finished_at")
    last_event_at = finished_at or progress.get("last_batch_at") or event.created_at
    if finished_at is not None and error:
        state = RunStatus.STOPPED
    elif finished_at is not None and (failed or progress.get("not_reached")):
        state = RunStatus.FAILURES
    elif finished_at is not None:
        state = RunStatus.FINISHED
    elif now - last_event_at >= timedelta(minutes=STALL_MINUTES):
        state = RunStatus.STALLED
    else:
        state = RunStatus.RUNNING
    return RunStatus(
        run_id=event.pk,
        started_at=event.created_at,
        started_by=event.actor_name,
        reason=choices(reason).label if reason in choices.values else reason,
        selected=_whole(detail.get("certificates")) + initially_skipped,
        revoked=progress.get("revoked") or 0,
        skipped=initially_skipped + (progress.get("skipped") or 0),
        failed=failed,
        not_reached=progress.get("not_reached") or 0,
        state=state,
        error=error,
        last_event_at=last_event_at,
    )


def _whole(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
