"""Expiry notices to owners and to shared mailboxes' delegates (30, 7 and 1 days before)
and the recovery-agent warning.

Run daily by beat. "Once per threshold, never twice, across restarts" rests on the
database: a notice row is inserted (unique per certificate and threshold) in the same
transaction that queues the mail, so a second run, a retried task or a concurrent worker
finds the row and sends nothing. The price is at-most-once: a mail server that is down at
that moment loses the notice (logged), which beats mailing people twice a day.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from enrollment import ra_notifications as notify
from enrollment.audit import audit_record
from enrollment.models import AgentExpiryWarning, Certificate, ExpiryNotice, KeyRecoveryAgent
from enrollment.ra_selectors import agent_overview

logger = logging.getLogger(__name__)


def _threshold(remaining: timedelta, thresholds: Sequence[int]) -> int | None:
    """The smallest threshold the certificate is inside: 5 days left is the 7-day notice."""
    inside = [days for days in thresholds if remaining <= timedelta(days=days)]
    return min(inside) if inside else None


def expiry_notices_send(*, now: datetime | None = None) -> dict[int, int]:
    """Mail owners whose valid certificates reach a threshold; summarise to the officers.

    A certificate first seen inside a smaller threshold (issued late, or the task did not
    run for weeks) gets one mail for that threshold, not a burst of the larger ones.
    """
    now = now or timezone.now()
    thresholds = list(settings.PKIPORTAL_EXPIRY_NOTICE_DAYS)
    horizon = now + timedelta(days=max(thresholds))
    candidates = (
        Certificate.objects.valid(now)
        .filter(not_after__lte=horizon)
        # A person's (still with us), or an active shared mailbox's: its delegates are told.
        .filter(
            Q(owner__isnull=False, owner__is_active=True)
            | Q(owner__isnull=True, mailbox__is_active=True)
        )
        .select_related("owner", "template", "ca", "mailbox")
        .order_by("not_after", "pk")
    )
    notified: dict[int, list[Certificate]] = {days: [] for days in thresholds}
    for certificate in candidates.iterator(chunk_size=500):
        threshold = _threshold(certificate.not_after - now, thresholds)
        if threshold is None:
            continue
        if ExpiryNotice.objects.filter(
            certificate=certificate, threshold_days__lte=threshold
        ).exists():
            continue
        try:
            with transaction.atomic():
                ExpiryNotice.objects.create(
                    certificate=certificate, threshold_days=threshold, sent_at=now
                )
                notify.certificate_expiring(
                    certificate, days_left=_days_left(certificate.not_after - now)
                )
        except IntegrityError:
            continue  # another run got there first: it sent the mail
        notified[threshold].append(certificate)
    counts = {days: len(certificates) for days, certificates in notified.items()}
    if any(counts.values()):
        notify.expiry_summary(notified, now=now)
        audit_record(action="expiry.notify", detail={f"{d}d": n for d, n in counts.items()})
    return counts


def _days_left(remaining: timedelta) -> int:
    """Whole days, rounded up: 6 days and 3 hours is "7 days" to a reader, never "0"."""
    return max(-(-int(remaining.total_seconds()) // 86400), 1)


def agent_expiry_check(*, now: datetime | None = None) -> KeyRecoveryAgent | None:
    """Warn the admins once when the last valid agent certificate is about to expire."""
    overview = agent_overview(now)
    last = overview.last_valid
    now = now or timezone.now()
    warning = timedelta(days=settings.PKIPORTAL_KRA_EXPIRY_WARNING_DAYS)
    if last is None or last.not_after - now > warning:
        return None
    if AgentExpiryWarning.objects.filter(agent=last).exists():
        return None
    try:
        with transaction.atomic():
            AgentExpiryWarning.objects.create(agent=last, sent_at=now)
            audit_record(
                action="kra.expiry_warning",
                target=last,
                detail={"not_after": last.not_after, "valid_agents": overview.valid},
            )
            notify.agent_expiring(last, valid_agents=overview.valid)
    except IntegrityError:
        return None
    logger.warning("The last valid key recovery agent certificate, %s, expires soon.", last)
    return last
