"""Forward the audit trail to the organisation's SIEM over syslog: at least once, in
order, without gaps (README.md, "Forwarding the audit trail to a SIEM").

A watermark row (AuditForwarding) holds the id of the newest event sent. Each run sends
the events after it, oldest first, in batches; a batch moves the watermark only once it
was handed whole to the connection (enrollment.syslog.SyslogSender.send), in the
transaction that holds the row's lock, so two shippers at once (beat's task and
`manage.py audit_ship` from cron) wait for each other and never send an event twice or
skip one. A failed send leaves the watermark where it was: the next run sends the batch
again. A run that dies between the send and the commit sends it again too: at least
once, so a SIEM may see an event twice (its id and hash tell).

Why the events' ids are the chain's order, so "every id after the watermark" has no
gaps. Every event is appended under the lock of the one chain-head row (enrollment.audit,
hotsql.audit_chain_append, hotsql.issue_checked and the audit_head_lock() fallback), and
its id is drawn from the sequence after that lock is taken, in the same statement or
after it; the lock is held until the transaction ends. So:

- ids increase along the chain: the next appender draws its ids only once the previous
  one's transaction has ended;
- no event with a smaller id becomes visible after one with a larger id: the larger id
  was drawn by a transaction that waited for the smaller one's to end, committed or
  rolled back (its ids then never appear: a gap in the ids, not in the chain), and
  PostgreSQL releases a row lock only after the commit is visible to new snapshots.
  A savepoint rolled back releases the lock early, but takes its events with it.
  SQLite runs one writing transaction at a time.

So a run never passes over an event still to be committed: the ids are the chain's
positions, and the chain needs no position column of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from enrollment import audit, health
from enrollment.models import AuditEvent, AuditForwarding
from enrollment.syslog import (
    FACILITIES,
    NOTICE,
    WARNING,
    SyslogError,
    SyslogSender,
    SyslogTarget,
    message,
    parse_target,
)
from pkiportal import plurals

logger = logging.getLogger(__name__)

BATCH_SIZE = 500
# /health/ warns once an event has waited this long to be sent.
LATE_AFTER = timedelta(minutes=10)
# The name of beat's entry, and of its ScheduledRun heartbeat.
RUN_NAME = "audit-syslog"
# A run of beat's task sends at most this many batches; the next run goes on. The command
# sends until the trail is caught up.
TASK_BATCHES = 40


def enabled() -> bool:
    return bool(settings.PKIPORTAL_AUDIT_SYSLOG)


def target() -> SyslogTarget:
    return parse_target(settings.PKIPORTAL_AUDIT_SYSLOG)


def hostname() -> str:
    """The HOSTNAME of every message: the portal's own name, the same whichever worker or
    cron job sends it (PKIPORTAL_SITE_URL's host, else PKIPORTAL_BASE_URL's)."""
    url = settings.PKIPORTAL_SITE_URL or settings.PKIPORTAL_BASE_URL
    return urlsplit(url).hostname or "-"


def syslog_message(event: AuditEvent, *, host: str | None = None) -> bytes:
    """One event as an RFC 5424 message: severity notice, or warning for a failure; MSGID
    its action; MSG its line of the JSON Lines export, hashes included."""
    failed = event.outcome == AuditEvent.Outcome.FAILURE
    return message(
        facility=FACILITIES[settings.PKIPORTAL_AUDIT_SYSLOG_FACILITY],
        severity=WARNING if failed else NOTICE,
        timestamp=event.created_at,
        hostname=host if host is not None else hostname(),
        msgid=event.action,
        msg=audit.export_json(event),
    )


@dataclass
class ShipResult:
    sent: int = 0
    last_event_id: int = 0
    error: str = ""
    caught_up: bool = False


def _watermark_locked() -> AuditForwarding:
    """The watermark row, locked until the transaction ends (made the first time: a
    trail never forwarded starts from its beginning)."""
    AuditForwarding.objects.get_or_create(pk=1)
    return AuditForwarding.objects.select_for_update().get(pk=1)


def ship(*, max_batches: int | None = None, batch_size: int = BATCH_SIZE) -> ShipResult:
    """Send the events after the watermark, oldest first, until none are left (or after
    ``max_batches``). Never raises for the receiver: a failure is logged, recorded on the
    watermark row (/health/) and returned in ShipResult.error."""
    result = ShipResult()
    sender = SyslogSender(target(), ca_file=settings.PKIPORTAL_AUDIT_SYSLOG_CA)
    host = hostname()
    batches = 0
    try:
        while max_batches is None or batches < max_batches:
            with transaction.atomic():
                mark = _watermark_locked()
                result.last_event_id = mark.last_event_id
                events = list(
                    AuditEvent.objects.filter(pk__gt=mark.last_event_id).order_by("pk")[:batch_size]
                )
                now = timezone.now()
                if not events:
                    mark.succeeded_at = now
                    mark.save(update_fields=["succeeded_at"])
                    result.caught_up = True
                    break
                try:
                    sender.send([syslog_message(event, host=host) for event in events])
                except SyslogError as exc:
                    # No secret in the text: it names the target and the socket's error.
                    logger.warning(
                        "Could not forward audit events %d to %d to the SIEM; the next run "
                        "tries again: %s",
                        events[0].pk,
                        events[-1].pk,
                        exc,
                    )
                    mark.failed_at, mark.error = now, str(exc)[:500]
                    mark.save(update_fields=["failed_at", "error"])
                    result.error = str(exc)
                    break
                mark.last_event_id, mark.last_event_at = events[-1].pk, events[-1].created_at
                mark.succeeded_at = now
                mark.save(update_fields=["last_event_id", "last_event_at", "succeeded_at"])
            result.sent += len(events)
            result.last_event_id = events[-1].pk
            batches += 1
    finally:
        sender.close()
    return result


def start_from_now() -> tuple[int, int]:
    """Move the watermark to the trail's current end, skipping what was not sent yet (a
    first forwarding that should not send years of history). Audited: the event, sent
    next, tells the SIEM which ids it will never get from this run. The skipped count and
    the new watermark."""
    with transaction.atomic():
        mark = _watermark_locked()
        end = AuditEvent.objects.aggregate(end=Max("pk"))["end"] or 0
        skipped = AuditEvent.objects.filter(pk__gt=mark.last_event_id, pk__lte=end).count()
        before = mark.last_event_id
        if end > before:
            newest = AuditEvent.objects.get(pk=end)
            mark.last_event_id, mark.last_event_at = end, newest.created_at
            mark.save(update_fields=["last_event_id", "last_event_at"])
        audit.audit_record(
            action="audit.forwarding_start",
            target=mark,
            detail={"skipped": skipped, "after_event": before, "up_to_event": end},
        )
    return skipped, max(end, before)


class NothingToResend(Exception):
    """resend_from() refused, with nothing changed: the text says why, for the operator."""


def resend_from(event_id: int) -> int:
    """Move the watermark back so that the next run sends again every event from
    ``event_id`` on: for a receiver that took the bytes and then lost them (TCP confirms
    the host got them, not that the SIEM stored them). At least once: the SIEM may get
    events it has already, and tells them by their id and hash.

    Under the watermark row's lock, as ship() takes it, so a run in progress finishes its
    batch first and the next one starts from the new watermark. Audited in the same
    transaction as ``audit.forwarding_resend``; that event comes after every event resent,
    so the SIEM learns of the resend in the same run. Refused (NothingToResend) when
    ``event_id`` names no event, or one after the watermark: not sent yet, so the next run
    sends it anyway. The watermark it had before."""
    with transaction.atomic():
        mark = _watermark_locked()
        if not AuditEvent.objects.filter(pk=event_id).exists():
            raise NothingToResend(f"There is no audit event {event_id}.")
        before = mark.last_event_id
        if event_id > before:
            raise NothingToResend(
                f"Nothing to resend: event {event_id} was not sent yet (the trail is "
                f"forwarded up to event {before}); the next run sends it."
            )
        # The newest event before it, so that the watermark names an event sent, as ship()
        # leaves it (ids may have gaps: a rolled-back append draws ids that never appear).
        previous = AuditEvent.objects.filter(pk__lt=event_id).order_by("-pk").first()
        mark.last_event_id = previous.pk if previous is not None else 0
        mark.last_event_at = previous.created_at if previous is not None else None
        mark.save(update_fields=["last_event_id", "last_event_at"])
        audit.audit_record(
            action="audit.forwarding_resend",
            target=mark,
            detail={"from_event": event_id, "previous_watermark": before},
        )
    return before


def forwarding_check(now: datetime | None = None) -> dict[str, Any]:
    """/health/'s verdict: "warn" (never "fail": the trail itself is whole) while the last
    run failed or an event has waited more than LATE_AFTER; "ok" otherwise, and when
    forwarding is off."""
    if not enabled():
        return {"status": health.OK, "mode": "off"}
    now = now or timezone.now()
    mark = AuditForwarding.objects.filter(pk=1).first() or AuditForwarding(pk=1)
    waiting = AuditEvent.objects.filter(pk__gt=mark.last_event_id)
    oldest = waiting.order_by("pk").values_list("created_at", flat=True).first()

    def when(moment: datetime | None) -> str | None:
        return moment.isoformat() if moment is not None else None

    result: dict[str, Any] = {
        "status": health.OK,
        "mode": "cron" if health.no_scheduler() else "worker",
        "target": str(target()),
        "last_event_id": mark.last_event_id,
        "last_event_at": when(mark.last_event_at),
        "unshipped": waiting.count(),
        "oldest_unshipped": when(oldest),
        "last_success": when(mark.succeeded_at),
        "last_failure": when(mark.failed_at),
        "last_error": mark.error,
        "problems": [],
    }
    if health.no_scheduler():
        result["note"] = (
            "No broker: nothing is forwarded on its own. Run `manage.py audit_ship` from cron "
            "every minute or so."
        )
    if mark.failed_at is not None and (
        mark.succeeded_at is None or mark.failed_at >= mark.succeeded_at
    ):
        result["problems"].append(
            f"Forwarding the audit trail failed at {mark.failed_at:%Y-%m-%d %H:%M} UTC: "
            f"{mark.error}"
        )
    if oldest is not None and now - oldest > LATE_AFTER:
        minutes = int((now - oldest).total_seconds() // 60)
        result["problems"].append(
            f"The oldest audit event not forwarded yet was recorded {plurals.minutes(minutes)} ago."
        )
    if result["problems"]:
        result["status"] = health.WARN
    return result
