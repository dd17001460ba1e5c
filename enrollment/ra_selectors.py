"""Reads for the RA console: certificate search, CRL, service and recovery-agent status.

Read-only; the verdicts on CRLs come from enrollment.health (the same as /health/), so
the console and monitoring never disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connection
from django.db.models import (
    BooleanField,
    Count,
    Exists,
    ExpressionWrapper,
    OuterRef,
    Q,
    QuerySet,
)
from django.db.models.functions import Length
from django.utils import timezone
from django.utils.translation import gettext as _

from enrollment import health, ra_notifications
from enrollment.models import (
    ApprovalNoticeDigest,
    ArchivedKey,
    AuditEvent,
    Certificate,
    CertificateRequest,
    KeyRecoveryAgent,
    KeyRecoveryRequest,
    RevocationList,
)
from enrollment.permissions import decider, ra_officers
from enrollment.scopes import EVERYONE, Reach, within_reach
from pkiportal import plurals

HEX = re.compile(r"[0-9a-f]+")


# Shorter text cannot be looked up in a trigram index; it still finds user names,
# serials and fingerprints exactly.
MIN_SUBSTRING_LENGTH = 3
# Up to this many matches are fetched by id and sorted; a search matching more (an
# organisation's domain, a common syllable) reads the newest certificates first instead.
SEARCH_CANDIDATES = 2000


def certificate_search(
    query: str, *, archived_only: bool = False, reach: Reach = EVERYONE
) -> QuerySet[Certificate]:
    """Any certificate ``reach`` covers (an officer's, enrollment.scopes) by name, e-mail,
    user name, serial or fingerprint (colons allowed), newest first.

    The matches are ordered in one of two ways. Few: their ids come from index scans
    (search_matches) and only they are sorted. Many: the newest certificates are read in
    order until a page is full. One statement for both would leave PostgreSQL to guess
    which case it is in, and a prepared statement's guess, made once, was 3 s wrong for a
    rare name at a million certificates.
    """
    matching = search_matches(query, archived_only=archived_only, reach=reach)
    ids = list(matching.order_by().values_list("pk", flat=True)[: SEARCH_CANDIDATES + 1])
    found = matching if len(ids) > SEARCH_CANDIDATES else Certificate.objects.filter(pk__in=ids)
    return _listed(found)


def certificates_of(owner_id: int, *, reach: Reach = EVERYONE) -> QuerySet[Certificate]:
    """One account's certificates, newest first, as a search lists them: what a link for
    one person opens (a name search also finds namesakes). None outside ``reach``."""
    return _listed(Certificate.objects.filter(reach.certificates(), owner_id=owner_id))


def _listed(found: QuerySet[Certificate]) -> QuerySet[Certificate]:
    return (
        found.select_related("owner", "template", "ca", "mailbox")
        .defer("der", "ca__der")  # a list never shows them; sorting them spilled to disk
        .annotate(has_archive=Exists(ArchivedKey.objects.filter(certificate=OuterRef("pk"))))
        .order_by("-not_before", "-id")
    )


def search_matches(
    query: str, *, archived_only: bool = False, reach: Reach = EVERYONE
) -> QuerySet[Certificate]:
    """The certificates a search names, unordered, with an index for every alternative.

    The holder is looked up first (a handful of ids) rather than joined, and names and
    addresses are matched as substrings only from three characters, so PostgreSQL can OR
    index scans instead of reading every certificate (1.4-3 s at a million before). A
    scoped officer's ``reach`` is one more condition on what those scans find, checked
    against each match's holder: it leaves them their indexes.
    """
    text = query.strip()
    if not text:
        return Certificate.objects.none()
    holders = list(
        get_user_model().objects.filter(username__iexact=text).values_list("pk", flat=True)[:10]
    )
    condition = Q(owner_id__in=holders)
    if len(text) >= MIN_SUBSTRING_LENGTH:
        condition |= Q(common_name__icontains=text) | Q(email__icontains=text)
    digits = re.sub(r"[\s:]", "", text).lower()
    if HEX.fullmatch(digits):
        serial = digits.lstrip("0") or "0"
        condition |= Q(serial=serial) | Q(fingerprint_sha256=digits) | Q(fingerprint_sha1=digits)
        if len(serial) >= 6:  # a serial read off a screen is often cut short
            condition |= Q(serial__startswith=serial)
    matching = Certificate.objects.filter(condition).filter(reach.certificates())
    if archived_only:
        matching = matching.filter(Exists(ArchivedKey.objects.filter(certificate=OuterRef("pk"))))
    return matching


class PendingCounts(NamedTuple):
    theirs: int  # waiting for this officer: theirs to approve or reject
    total: int  # waiting for any officer, within this officer's scope


def pending_enrolment_counts(officer: Any) -> PendingCounts:
    """How many requests wait for this officer's decision, and how many in all (their own,
    a mailbox's they read, those of templates other officers approve), those outside their
    officer scope not at all: one count, with the officer's Decider (two queries, more
    for a scope) before it."""
    theirs = decider(officer)
    counts = CertificateRequest.objects.filter(state=CertificateRequest.State.PENDING).aggregate(
        theirs=Count("pk", filter=theirs.decidable()),
        total=Count("pk", filter=theirs.reach.requests()),
    )
    return PendingCounts(counts["theirs"], counts["total"])


# --- the officer's next approval-notice summary ---------------------------------------

# The console links this many of the collected requests and counts the rest.
SUMMARY_PANEL_LISTS = 20


@dataclass(frozen=True)
class NoticeSummary:
    """How one officer hears of requests awaiting approval (ra_notifications) and what
    their next summary will list, as their console shows it."""

    window_minutes: int  # 0: no summaries (every request as it comes, or none by mail)
    delivery: str = ApprovalNoticeDigest.Delivery.SUMMARIES  # the officer's choice
    due_at: datetime | None = None  # None: no summary pending
    request_ids: tuple[int, ...] = ()  # the first SUMMARY_PANEL_LISTS, oldest first
    count: int = 0
    overdue: bool = False  # its time has passed: beat's next run sends it

    @property
    def more(self) -> int:
        """Collected but not linked on the console."""
        return self.count - len(self.request_ids)


def approval_notice_summary(officer: Any) -> NoticeSummary:
    """The officer's own choice and next summary: the choice (and what is collected) in one
    query by key, and only when something is, the collected requests and the officer's
    Decider.

    Only what beat would list (ra_notifications.still_theirs, the rule beat applies):
    collected requests still pending that the officer may still decide. One decided or
    withdrawn since is gone, and a window whose requests all went that way sends no mail,
    so it shows as none pending."""
    Delivery = ApprovalNoticeDigest.Delivery
    row = (
        ApprovalNoticeDigest.objects.filter(officer_id=officer.pk)
        .values_list("delivery", "due_at", "waiting")
        .first()
    )
    delivery, due_at, waiting = row or (Delivery.SUMMARIES, None, [])
    if delivery != Delivery.SUMMARIES:
        return NoticeSummary(window_minutes=0, delivery=delivery)
    window = ra_notifications.notice_window()
    if not window:
        return NoticeSummary(window_minutes=0)
    minutes = int(window.total_seconds() // 60)
    if due_at is None:  # nothing collected: ra_notifications sets both together
        return NoticeSummary(window_minutes=minutes)
    theirs = ra_notifications.still_theirs(decider(officer), waiting)
    if not theirs:
        return NoticeSummary(window_minutes=minutes)
    return NoticeSummary(
        window_minutes=minutes,
        due_at=due_at,
        request_ids=tuple(theirs[:SUMMARY_PANEL_LISTS]),
        count=len(theirs),
        overdue=due_at <= timezone.now(),
    )


def open_recoveries(reach: Reach = EVERYONE) -> QuerySet[KeyRecoveryRequest]:
    """In progress, oldest first; a holder's request that waits for an officer included,
    with_quorum(). Only those of the key owners ``reach`` covers (an officer's queue)."""
    found = (
        KeyRecoveryRequest.objects.filter(
            reach.certificates("certificate__"),
            state__in=[
                KeyRecoveryRequest.State.REQUESTED,
                KeyRecoveryRequest.State.PENDING,
                KeyRecoveryRequest.State.APPROVED,
                KeyRecoveryRequest.State.READY,
            ],
        )
        .select_related("certificate__owner", "requested_by", "asked_by")
        .defer("bundle")
        .order_by("created_at", "id")
    )
    return with_quorum(found)


def counted_approvals() -> Count:
    """How many of a recovery's approvals count now, in the list's own query: those of
    officers who still are active RA officers and whose officer scope still covers the key's
    owner, the rule enrollment.recovery.quorum applies one recovery at a time
    (permissions.ra_officers is is_ra_officer as a filter, scopes.within_reach
    Reach.covers_certificate). Every count of approvals shown (queue, API, start page) is
    this one."""
    counts = ra_officers("approvals__officer__") & within_reach(
        "approvals__officer_id", "certificate__"
    )
    return Count("approvals", filter=counts, distinct=True)


def with_quorum(recoveries: QuerySet[KeyRecoveryRequest]) -> QuerySet[KeyRecoveryRequest]:
    """Each with ``approval_count`` (counted_approvals) and ``quorum_met``: whether they make
    PKIPORTAL_RECOVERY_APPROVALS now, as recovery.Quorum.met says of one recovery."""
    # Read when called: recovery imports services, which imports this module.
    from enrollment.recovery import approvals_required

    return recoveries.annotate(approval_count=counted_approvals()).annotate(
        quorum_met=ExpressionWrapper(
            Q(approval_count__gte=approvals_required()), output_field=BooleanField()
        )
    )


def recoveries_for_agents(reach: Reach = EVERYONE) -> QuerySet[KeyRecoveryRequest]:
    """Those a key recovery agent may carry out now (recovery.may_be_performed): an approved
    recovery whose approver lost the role waits for another officer, not for an agent; and
    only of the key owners the agent's ``reach`` covers."""
    return with_quorum(
        KeyRecoveryRequest.objects.filter(
            reach.certificates("certificate__"),
            state__in=[KeyRecoveryRequest.State.PENDING, KeyRecoveryRequest.State.APPROVED],
        )
    ).filter(Q(quorum_met=True))  # Q: django-stubs cannot see the annotation


def recoveries_of_holder(user: Any) -> QuerySet[KeyRecoveryRequest]:
    """Recoveries of this person's keys that come to them, open or not, newest first.

    The holder's own requests, and officers' recoveries delivered to the key owner; not
    those an officer opened for themselves (the owner is mailed about those, no more).
    with_quorum(), so each shows the state its approvals count to now."""
    return with_quorum(
        KeyRecoveryRequest.objects.filter(
            Q(certificate__owner=user)
            # A shared mailbox's key goes to the delegate who asked (recipient_id).
            | Q(certificate__mailbox__isnull=False, asked_by=user),
            deliver_to=KeyRecoveryRequest.Recipient.OWNER,
        )
        .select_related("certificate__template", "requested_by", "asked_by")
        .defer("bundle")
        .order_by("-created_at", "-id")
    )


def open_recoveries_for_recipient(user: Any) -> QuerySet[KeyRecoveryRequest]:
    """Open recoveries whose key this person is to download: theirs, or as the officer."""
    Recipient = KeyRecoveryRequest.Recipient
    return (
        open_recoveries()
        .filter(
            Q(deliver_to=Recipient.OWNER, certificate__owner=user)
            | Q(deliver_to=Recipient.OWNER, certificate__mailbox__isnull=False, asked_by=user)
            | Q(deliver_to=Recipient.REQUESTER, requested_by=user)
        )
        .select_related("certificate__template")
    )


# --- CRLs -----------------------------------------------------------------------------


@dataclass
class CrlRow:
    """One CA's current CRL as the console shows it."""

    status: health.CrlStatus
    size: int | None
    age: timedelta | None


def crl_overview(now: datetime | None = None) -> list[CrlRow]:
    now = now or timezone.now()
    rows = []
    for status in health.crl_status(now):
        size = None
        if status.number is not None:
            size = (
                RevocationList.objects.filter(ca__slug=status.slug, number=status.number)
                .annotate(size=Length("der"))
                .values_list("size", flat=True)
                .first()
            )
        age = now - status.this_update if status.this_update is not None else None
        rows.append(CrlRow(status, size, age))
    return rows


def service_health() -> dict[str, dict[str, Any]]:
    """Broker, worker and beat as /health/ sees them; empty if that is not installed."""
    try:
        from pkiportal.health import checks
    except ImportError:  # pragma: no cover - /health/ ships with the portal
        return {}
    results = checks()
    services: dict[str, dict[str, Any]] = {
        name: dict(results[name]) for name in ("broker", "worker", "scheduler") if name in results
    }
    beat = services.get("scheduler", {})
    if beat.get("last_run"):  # ISO text for /health/'s JSON; the page shows local time
        beat["last_run"] = datetime.fromisoformat(beat["last_run"])
    return services


# --- key recovery agents --------------------------------------------------------------


@dataclass
class AgentRow:
    agent: KeyRecoveryAgent
    state: str  # valid, expiring, expired, not yet valid, inactive
    days_left: int
    archives: int


@dataclass
class AgentOverview:
    rows: list[AgentRow] = field(default_factory=list)
    valid: int = 0
    last_valid: KeyRecoveryAgent | None = None
    level: str = health.OK
    message: str = ""


def agent_overview(now: datetime | None = None) -> AgentOverview:
    """Every agent certificate, and whether archival can continue (and for how long)."""
    now = now or timezone.now()
    warning = timedelta(days=settings.PKIPORTAL_KRA_EXPIRY_WARNING_DAYS)
    overview = AgentOverview()
    agents = KeyRecoveryAgent.objects.select_related("user").annotate(
        archive_count=Count("archived_keys")
    )
    for agent in agents.order_by("-not_after", "name"):
        usable = agent.is_active and agent.not_before <= now < agent.not_after
        if not agent.is_active:
            state = "inactive"
        elif agent.not_after <= now:
            state = "expired"
        elif agent.not_before > now:
            state = "not yet valid"
        else:
            state = "expiring" if agent.not_after - now <= warning else "valid"
        if usable:
            overview.valid += 1
            if overview.last_valid is None or agent.not_after > overview.last_valid.not_after:
                overview.last_valid = agent
        days_left = max((agent.not_after - now).days, 0)
        overview.rows.append(AgentRow(agent, state, days_left, agent.archive_count))
    last = overview.last_valid
    if last is None:
        overview.level = health.FAIL
        overview.message = _(
            "No valid key recovery agent certificate. Templates that archive keys (S/MIME "
            "Encryption) cannot issue until an administrator registers one."
        )
    elif last.not_after - now <= warning:
        overview.level = health.WARN
        overview.message = _(
            "The last valid key recovery agent certificate, %(name)s, expires on %(date)s (in "
            "%(days)s). Register a new one before then, or archiving templates stop issuing."
        ) % {
            "name": last.name,
            "date": f"{last.not_after:%Y-%m-%d}",
            "days": plurals.days(max((last.not_after - now).days, 0)),
        }
    return overview


def archives_only_agent_opens(agent: KeyRecoveryAgent) -> int:
    """Archived keys encrypted to this agent and to no other: recovering them needs its key.

    The recipients are counted before the filter on this agent, so the count sees every
    recipient of each archive, not only the joined one.
    """
    return (
        ArchivedKey.objects.annotate(recipient_count=Count("recipients"))
        .filter(recipient_count=1, recipients=agent)
        .count()
    )


def usable_agents(now: datetime | None = None) -> QuerySet[KeyRecoveryAgent]:
    """Agents new archives are encrypted to: active and within their validity."""
    now = now or timezone.now()
    return KeyRecoveryAgent.objects.filter(is_active=True, not_before__lte=now, not_after__gt=now)


def usable_agents_locked(agent_ids: list[int]) -> list[int]:
    """Which of these agents are still usable, share-locked until the transaction ends
    where the database locks rows: concurrent archives go on together, while a
    deactivation (a row lock for update) waits for them to commit. The ORM has no FOR
    SHARE, so the lock is added to usable_agents()'s own SQL."""
    if not agent_ids:
        return []
    query = usable_agents().filter(pk__in=agent_ids).values_list("pk", flat=True)
    sql, params = query.query.sql_with_params()
    lock = " FOR SHARE" if connection.features.has_select_for_update else ""
    with connection.cursor() as cursor:
        cursor.execute(sql + lock, params)
        return [int(row[0]) for row in cursor.fetchall()]


AUDIT_ACTIONS_SECONDS = 300


def audit_actions() -> list[str]:
    """The action names in the trail, offered as suggestions by the audit filter.

    A DISTINCT over the whole trail costs ~0.1 s at two million events, on every page:
    it is worked out at most every five minutes per process. A new kind of action is
    suggested that much later; filtering by it works at once.
    """
    actions = cache.get_or_set(
        "pkiportal:audit-actions",
        lambda: sorted(AuditEvent.objects.order_by().values_list("action", flat=True).distinct()),
        AUDIT_ACTIONS_SECONDS,
    )
    return actions if isinstance(actions, list) else []  # the cache's values are Any
