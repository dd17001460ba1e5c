"""Thin Celery tasks: ids in, one service call, retries owned here.

With no CELERY_BROKER_URL, Celery runs tasks eagerly, so queueing on commit runs them
inline right after the transaction: the embedded default needs no Redis.

Every task is idempotent and acknowledged late: a worker killed mid-task gives the message
back to the broker (reject_on_worker_lost) and a second run does no harm. A message whose
runs keep killing their worker is dropped after a few redeliveries (pkiportal/celery.py).
A message lost with the broker itself, or dropped, is caught by the watchdog, which beat
runs every few minutes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypedDict

from celery import shared_task
from celery.signals import worker_ready

from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction

from accounts.sessions import sessions_clear_expired
from enrollment import health, ldap_publish, ldap_sync, services
from enrollment.models import CertificateAuthority, RevocationList

logger = logging.getLogger(__name__)


# Database hiccups are worth retrying; a missing key or a policy error is not: it is
# recorded on the CA (health check, audit) and the watchdog tries again later.
class _RetryOptions(TypedDict):
    acks_late: bool
    reject_on_worker_lost: bool
    autoretry_for: tuple[type[BaseException], ...]
    retry_backoff: bool
    retry_backoff_max: int
    max_retries: int


RETRY: _RetryOptions = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": 8,
}


@shared_task(**RETRY)
def crl_publish_task(ca_id: int, force: bool = False) -> int | None:
    """Bring one CA's CRL up to date; the CRL number, or None if it already was.

    Without ``force`` it publishes only if a revocation is on no CRL yet (or the CRL is
    missing or expired): the tasks of a burst of revocations give one CRL, not one each.
    """
    ca = CertificateAuthority.objects.get(pk=ca_id)
    crl: RevocationList | None
    attempt = services.CrlAttempt()
    try:
        if force:
            services.crl_entries_repair(ca=ca)
            crl = services.crl_publish(ca=ca, attempt=attempt)
        else:
            crl = services.crl_publish_if_due(ca=ca, attempt=attempt)
    except (OperationalError, InterfaceError):
        raise
    except Exception as exc:
        services.crl_failure_record(ca=ca, error=exc, newest_before=attempt.newest_crl_id)
        raise
    return crl.number if crl is not None else None


@shared_task(acks_late=True, reject_on_worker_lost=True)
def crl_publish_scheduled_task() -> list[int]:
    """Beat, daily by default: a fresh CRL for every online CA (S/MIME BR 4.9.7)."""
    ca_ids = list(CertificateAuthority.objects.online().values_list("pk", flat=True))
    for ca_id in ca_ids:
        crl_publish_task.delay(ca_id, force=True)
    return ca_ids


@shared_task(acks_late=True, reject_on_worker_lost=True)
def crl_watchdog_task() -> dict[str, str]:
    """Beat, every few minutes: replace CRLs that missed their refresh; report failures.

    An online CA's CRL is regenerated here when it is in its overlap window (the scheduled
    refresh did not happen) or when a revocation has waited longer than one watchdog
    period (its queued task was lost with the broker or a worker). Each run is recorded:
    it is beat's heartbeat.
    """
    pending_for = timedelta(minutes=settings.PKIPORTAL_CRL_WATCHDOG_MINUTES)
    results: dict[str, str] = {}
    for ca in CertificateAuthority.objects.online():
        attempt = services.CrlAttempt()
        try:
            crl = services.crl_publish_if_due(
                ca=ca, overlap=ca.crl_overlap(), pending_for=pending_for, attempt=attempt
            )
        except Exception as exc:
            services.crl_failure_record(ca=ca, error=exc, newest_before=attempt.newest_crl_id)
            results[ca.slug] = f"failed: {type(exc).__name__}"
            continue
        results[ca.slug] = f"published #{crl.number}" if crl is not None else "current"
        if crl is not None:
            logger.warning("The watchdog published %s's CRL #%d.", ca, crl.number)
    for warning in health.root_crl_warnings():
        logger.warning(warning)
    # Last, so a run that died half-way does not count: /health/ reads this to tell that
    # beat (and a worker) still run, long before a CRL nears its overlap window.
    services.scheduled_run_record(name=health.WATCHDOG_RUN)
    return results


@worker_ready.connect
def _catch_up_when_a_worker_starts(**kwargs: object) -> None:
    """A (re)started worker first publishes what is waiting: a crashed worker or a broker
    that came back empty lost those messages, and the watchdog would take minutes."""
    try:
        for ca_id in CertificateAuthority.objects.online().values_list("pk", flat=True):
            crl_publish_task.delay(ca_id)
    except Exception:
        logger.exception("Could not queue the start-up CRL check; the watchdog will run it.")


def _send_crl_publish(ca_id: int) -> None:
    try:
        # The delay lets a burst of revocations share one CRL.
        crl_publish_task.apply_async(
            (ca_id,), countdown=settings.PKIPORTAL_CRL_PUBLISH_DELAY_SECONDS
        )
    except Exception:
        # The revocation is committed; the watchdog brings the CRL up to date.
        logger.exception("Could not queue the CRL for CA %s; the next scheduled run will.", ca_id)


_collecting = threading.local()


def crl_publish_on_commit(ca_id: int) -> None:
    """Queue a CRL regeneration once the current transaction commits (inside
    crl_publish_once(): once for the whole block)."""
    collected: set[int] | None = getattr(_collecting, "ca_ids", None)
    if collected is not None:
        collected.add(ca_id)
        return
    transaction.on_commit(lambda: _send_crl_publish(ca_id), robust=True)


@contextmanager
def crl_publish_once() -> Iterator[None]:
    """Within, revocations queue no CRL each: as the block ends, each CA they touched is
    queued once, on commit of the transaction it ends in. For a batch of revocations in
    one transaction (the admin's bulk revocation): one CRL task per CA and batch rather
    than per certificate, which runs a CRL per certificate where tasks run inline. Used
    inside that transaction: a block that raises queues nothing, as it is rolled back."""
    if getattr(_collecting, "ca_ids", None) is not None:  # nested: the outer block queues
        yield
        return
    collected: set[int] = set()
    _collecting.ca_ids = collected
    try:
        yield
    finally:
        _collecting.ca_ids = None
    for ca_id in sorted(collected):
        crl_publish_on_commit(ca_id)


# --- issue 6: expiry notices and recovered-key cleanup ---------------------------------
# Imported here rather than at the top: these modules send mail and audit, and a task
# module imported by the worker at start-up should not pull them in for CRL work.


@shared_task(acks_late=True, reject_on_worker_lost=True)
def expiry_notices_task() -> dict[str, int]:
    """Beat, daily: owners hear 30, 7 and 1 days before expiry (once each); admins hear
    once when the last recovery agent certificate nears its end."""
    from enrollment import expiry

    sent = expiry.expiry_notices_send()
    expiry.agent_expiry_check()
    return {f"{days}d": count for days, count in sent.items()}


@shared_task(acks_late=True, reject_on_worker_lost=True)
def recovery_cleanup_task() -> int:
    """Beat, every few minutes: wipe recovered keys whose download window has closed."""
    from enrollment import recovery

    return recovery.recovery_expire_due()


@shared_task(acks_late=True, reject_on_worker_lost=True)
def api_tokens_purge_task() -> int:
    """Beat, daily: delete expired API tokens (token authentication only refuses them)."""
    return services.api_tokens_purge()


@shared_task(acks_late=True, reject_on_worker_lost=True)
def sessions_clear_expired_task() -> int:
    """Beat, daily: delete expired browser sessions (Django only refuses them, and
    nothing else runs clearsessions); how many."""
    return sessions_clear_expired()


@shared_task(acks_late=True, reject_on_worker_lost=True)
def leavers_revoke_task() -> dict[str, int]:
    """Beat, hourly: revoke the certificates of accounts deactivated longer ago than the
    grace period (affiliationChanged), unless more are due than the cap allows."""
    from enrollment import leavers

    return leavers.leavers_revoke().as_dict()


@shared_task(acks_late=True, reject_on_worker_lost=True)
def approval_notice_digests_task() -> int:
    """Beat, every minute: each officer whose notice window has ended gets one summary of
    the requests collected in it that still wait; how many officers were mailed."""
    from enrollment import ra_notifications

    return ra_notifications.approval_digests_send()


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True)
def certificates_revoke_task(self: Any, run_id: int) -> dict[str, Any] | None:
    """Revoke an officer's confirmed selection from the admin in batches (enrollment.
    bulk_revoke): the message names the run, whose row holds the certificates; its
    counts, or None if the run is not this message's. A worker revokes for a minute at
    most, then queues the rest as a new message, so no run meets the task time limits;
    inline (no broker) it runs to the end. Given back after a worker died, the message
    goes on where the run's row says (its id is still the run's claim)."""
    from enrollment import bulk_revoke

    if not isinstance(run_id, int):
        # A message from before the run rows (enrollment 0039) carried the selection
        # itself; its run has no row to go on from.
        logger.error("Bulk revocation %s: a message from before the upgrade, not continued; "
                     "choose the admin's action again on the same selection.",
                     run_id.get("run_id") if isinstance(run_id, dict) else run_id)  # fmt: skip
        return None
    seconds = None
    if not self.request.is_eager:
        seconds = min(bulk_revoke.RUN_SECONDS, settings.CELERY_TASK_SOFT_TIME_LIMIT / 2)
    run = bulk_revoke.bulk_revoke_work(run_id, claim=self.request.id, seconds=seconds)
    if run is None:
        return None
    return {
        "run": run.pk,
        "state": run.state,
        "revoked": run.revoked,
        "skipped": run.skipped,
        "failed": run.failed,
        "not_reached": run.not_reached,
    }


# --- publishing certificates to the organisation's LDAP directory ---------------------
# A directory that is down or refuses the bind is retried ten times, with Celery's full
# jitter: each wait a random time up to 15 s, doubling to at most 15 min; after that the
# hourly reconciliation takes over.
@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(ldap_publish.DirectoryError, OperationalError, InterfaceError),
    retry_backoff=15,
    retry_backoff_max=900,
    max_retries=10,
)
def ldap_publish_task(user_id: int) -> dict[str, Any] | None:
    """After an issuance or a revocation commits: make the holder's entry right. Nothing
    if publication has been turned off since the task was queued."""
    if not ldap_publish.enabled():
        return None
    result = ldap_publish.person_publish(user_id=user_id)
    return None if result is None else {"added": result.added, "removed": result.removed}


# Its own limits, longer than the default 300 s and under the broker's one-hour visibility
# timeout; the run itself stops taking people after ldap_publish.RUN_SECONDS.
@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=ldap_publish.RUN_SOFT_TIME_LIMIT,
    time_limit=ldap_publish.RUN_TIME_LIMIT,
)
def ldap_reconcile_task() -> dict[str, Any]:
    """Beat, hourly: the people the database diff finds (missed events, a directory that
    was down, expiry, leavers), then a bounded slice of the full sweep (entries edited by
    hand). One run at a time: a second one returns at once."""
    if not ldap_publish.enabled():
        return {"mode": "off"}
    try:
        result = ldap_publish.reconcile(
            sweep=settings.PKIPORTAL_LDAP_SWEEP_BATCH, seconds=ldap_publish.RUN_SECONDS
        )
    except ldap_publish.RunInProgress:
        logger.info("A directory reconciliation is still running; this one is skipped.")
        return {"skipped": "another run is in progress"}
    return result.as_dict()


# --- leavers from the sign-in directory ------------------------------------------------
@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=ldap_sync.RUN_SOFT_TIME_LIMIT,
    time_limit=ldap_sync.RUN_TIME_LIMIT,
)
def ldap_sync_leavers_task() -> dict[str, Any]:
    """Beat, hourly: deactivate the accounts the directory no longer has or has disabled,
    unless it cannot be read whole or more are gone than the cap. Nothing if turned off."""
    if not ldap_sync.enabled():
        return {"mode": "off"}
    return ldap_sync.leavers_sync().as_dict()


# --- roll-outs --------------------------------------------------------------------------


@shared_task(**RETRY)
def rollout_mail_task(invitation_ids: list[int], kind: str) -> int:
    """Mail one chunk of a roll-out's invitations (``invite``) or reminders (``remind``).

    Queued on commit by enrollment.rollouts; an invitation already mailed is not mailed
    again when the message comes back after a worker died."""
    from enrollment import rollouts

    return rollouts.rollout_mail_send(invitation_ids=invitation_ids, kind=kind)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def rollouts_mail_retry_task() -> int:
    """Beat, hourly: queue again the invitations whose mail never went out (a mail server
    that was down, a lost message, an address refused fewer than five times)."""
    from enrollment import rollouts

    return rollouts.rollout_mail_retry()


@shared_task(acks_late=True, reject_on_worker_lost=True)
def rollouts_expire_task() -> int:
    """Beat, hourly: withdraw the invitations nobody collected before their roll-out's end."""
    from enrollment import rollouts

    return rollouts.rollouts_expire_due()


# --- forwarding the audit trail to a SIEM ----------------------------------------------


@shared_task(acks_late=True, reject_on_worker_lost=True)
def audit_ship_task() -> dict[str, Any]:
    """Beat, every PKIPORTAL_AUDIT_SYSLOG_INTERVAL seconds: send the audit events after the
    watermark to the SIEM (enrollment.audit_shipping). A receiver that is down is retried
    by the next run, from the same event; runs that overlap wait for each other."""
    from enrollment import audit_shipping

    if not audit_shipping.enabled():
        return {"mode": "off"}
    result = audit_shipping.ship(max_batches=audit_shipping.TASK_BATCHES)
    if not result.error:
        # The heartbeat /metrics shows, for a run that reached the receiver.
        services.scheduled_run_record(name=audit_shipping.RUN_NAME)
    return {"sent": result.sent, "last_event_id": result.last_event_id, "error": result.error}
