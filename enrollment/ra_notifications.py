"""Mail of the RA side: recovery steps to the key owner, what officers and agents must act
on, expiry notices, warnings to admins.

Sent after the transaction commits, one message per address (recipients do not see each
other). A mail server being down never undoes a step: failures are logged. No mail ever
carries a password or key: the recovered key's password travels out of band.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple
from weakref import WeakKeyDictionary

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import QuerySet
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import Promise, lazy
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from enrollment.models import (
    ApprovalNoticeDigest,
    Certificate,
    CertificateRequest,
    KeyRecoveryAgent,
)
from enrollment.notifications import Recipient, Subject, mail
from enrollment.permissions import Decider, deciders, ra_officers
from enrollment.scopes import Reach, prime_groups, prime_requesters, reaches

if TYPE_CHECKING:
    from accounts.models import User
    from enrollment.models import KeyRecoveryRequest, SharedMailbox

logger = logging.getLogger(__name__)


def _send(
    subject: Subject, template: str, context: dict[str, Any], to: Iterable[Recipient]
) -> None:
    """One mail to each address, sent once the transaction commits, in each recipient's
    language (notifications.mail): pass people, not their addresses, where there are any."""
    mail(subject, template, context, to)


def _name(user: User | None) -> str | Promise:
    """A person in words; lazy for "the system", worded in each recipient's language."""
    if user is None:
        # Translators: who acted, when no person did (a scheduled task, a command).
        return gettext_lazy("the system")
    return user.get_full_name() or user.get_username()


def _officers() -> QuerySet[User]:
    """The active RA officers (and superusers, who are officers too) with an address."""
    return get_user_model().objects.filter(ra_officers()).exclude(email="").distinct()


def officer_addresses(*, exclude: Iterable[int | None] = ()) -> list[str]:
    """Active RA officers' addresses, but those of the accounts ``exclude`` names."""
    users = _officers().exclude(pk__in=[pk for pk in exclude if pk is not None])
    return list(users.values_list("email", flat=True))


def agent_addresses() -> list[str]:
    return list(_agents().values_list("email", flat=True))


def _agents() -> QuerySet[User]:
    users = get_user_model().objects.filter(is_active=True).exclude(email="")
    return users.filter(groups__name=settings.PKIPORTAL_KRA_GROUP).distinct()


def _covering(users: QuerySet[User], certificate: Certificate) -> list[User]:
    """Those whose officer scope covers the certificate's holder (for a
    shared mailbox's: those who act for everyone): every Reach and the holder's groups
    read once, not a query per person."""
    people = list(users.only("pk", "is_superuser", "email", "language"))
    reached = reaches((p.pk, p.is_superuser) for p in people)
    if not all(reach.everyone for reach in reached.values()):
        prime_groups([certificate.owner])
    return [p for p in people if reached[p.pk].covers_certificate(certificate)]


def admins() -> list[Recipient]:
    """Superusers (they register agents in /admin/), each in their language, and the
    addresses of settings.ADMINS (in PKIPORTAL_LANGUAGE: no account says otherwise)."""
    users = get_user_model().objects.filter(is_active=True, is_superuser=True).exclude(email="")
    # ADMINS holds (name, address) pairs; Django 6 also accepts plain addresses.
    addresses = [a if isinstance(a, str) else a[1] for a in settings.ADMINS]
    return [*users, *addresses]


# --- shared mailboxes -----------------------------------------------------------------


def mailbox_recipients(mailbox: SharedMailbox, *, also: Iterable[Any] = ()) -> list[Recipient]:
    """The mailbox's own address (in PKIPORTAL_LANGUAGE) and its active delegates (and
    ``also``, e.g. those just removed), each in their language. The mailbox itself is
    told so that one delegate, or an officer who made themselves one, cannot act on its
    key unseen: everyone who reads it reads that."""
    people = [*mailbox.delegates.filter(is_active=True), *also]
    return [mailbox.email, *(p for p in people if p.is_active and p.email)]


MAILBOX_SUBJECTS: dict[str, Promise] = {
    "created": gettext_lazy("The shared mailbox %(email)s was set up in the PKI portal"),
    "delegates": gettext_lazy("The delegates of the shared mailbox %(email)s changed"),
    "issued": gettext_lazy("A certificate was issued for the shared mailbox %(email)s"),
    "revoked": gettext_lazy("A certificate of the shared mailbox %(email)s was revoked"),
    "recovery": gettext_lazy("Key recovery #%(pk)s of the shared mailbox %(email)s: %(step)s"),
}


def _mailbox_subject(event: str, facts: Mapping[str, Any]) -> str:
    """A mailbox notice's subject, worded in the language active now."""
    if event == "expiring":
        return ngettext(
            "A certificate of the shared mailbox %(email)s expires in %(days_left)d day",
            "A certificate of the shared mailbox %(email)s expires in %(days_left)d days",
            facts["days_left"],
        ) % {"email": facts["email"], "days_left": facts["days_left"]}
    return str(MAILBOX_SUBJECTS[event]) % facts


def mailbox_notice(
    mailbox: SharedMailbox,
    event: str,
    *,
    also: Iterable[Any] = (),
    **context: Any,
) -> None:
    """Tell a shared mailbox (and its delegates) what happened to its delegates, its
    certificates or its key: issuance, revocation, expiry, each recovery step."""
    facts = {"email": mailbox.email, **context}
    if "recovery" in context:
        facts["pk"] = context["recovery"].pk
    _send(
        lambda: _mailbox_subject(event, facts),
        "enrollment/email/mailbox_notice.txt",
        {"mailbox": mailbox, "event": event, **context},
        mailbox_recipients(mailbox, also=also),
    )


def mailbox_created(mailbox: SharedMailbox, *, delegates: list[Any], actor: Any) -> None:
    """The new mailbox and its first delegates learn who may hold its key, as they learn
    of every later change: a mailbox set up behind their backs shows up in its own mail."""
    mailbox_notice(
        mailbox,
        "created",
        delegates=[_name(p) for p in delegates],
        actor=_name(actor),
        url=reverse("enrollment:certificate-list"),
    )


def mailbox_delegates_changed(
    mailbox: SharedMailbox, *, added: list[Any], removed: list[Any], actor: Any
) -> None:
    """The old and the new delegates and the mailbox learn who now reads it (and may get
    its key): a delegate added behind their backs shows up in their mail."""
    mailbox_notice(
        mailbox,
        "delegates",
        also=removed,
        added=[_name(p) for p in added],
        removed=[_name(p) for p in removed],
        actor=_name(actor),
        url=reverse("enrollment:certificate-list"),
    )


def mailbox_certificate_issued(certificate: Certificate, *, delegate: Any) -> None:
    mailbox = certificate.mailbox
    assert mailbox is not None
    mailbox_notice(
        mailbox,
        "issued",
        certificate=certificate,
        actor=_name(delegate),
        url=reverse("enrollment:certificate-detail", args=[certificate.pk]),
    )


def mailbox_certificate_revoked(certificate: Certificate, *, actor: Any) -> None:
    mailbox = certificate.mailbox
    assert mailbox is not None
    mailbox_notice(
        mailbox,
        "revoked",
        certificate=certificate,
        actor=_name(actor) if actor is not None else gettext_lazy("the portal (as the system)"),
        url=reverse("enrollment:certificate-detail", args=[certificate.pk]),
    )


# --- requests awaiting approval -------------------------------------------------------
# An officer hears of the first request after a quiet period at once; those made within
# PKIPORTAL_RA_NOTICE_WINDOW_MINUTES of a notice to them are collected (ApprovalNoticeDigest,
# their row locked) and come as one summary when the window ends: beat sends it, and it opens
# the next window. A script making 200 requests in 200 calls so mails each officer a few
# times an hour, not 200 times. Without a scheduler no beat would send a summary: every
# request is mailed as it comes (notice_window). Each officer may choose, on the console,
# every request at once instead, or none by mail (ApprovalNoticeDigest.delivery).

# More than this many requests in one summary are counted, not listed.
SUMMARY_LISTS = 50

# The requests each connection's open transaction made pending, mailed when it commits.
_pending: WeakKeyDictionary[BaseDatabaseWrapper, list[int]] = WeakKeyDictionary()


def request_awaits_approval(request: CertificateRequest) -> None:
    """The officers who may decide it learn that a request waits, once its transaction
    commits. All that one transaction made pending (a script, a bulk import) go out as
    one summary, not one mail each; requests_announce says when."""
    connection = transaction.get_connection()
    _pending.setdefault(connection, []).append(request.pk)
    # Each request queues the sending: the first to run after the commit takes them all
    # and the rest find none. One queued only for the first would be lost with a rolled
    # back savepoint, and the requests after it with it.
    transaction.on_commit(lambda: _requests_pending_send(connection), robust=True)


def _requests_pending_send(connection: BaseDatabaseWrapper) -> None:
    ids = _pending.pop(connection, [])
    if ids:
        requests_announce(ids)


def notice_window() -> timedelta:
    """How long after a notice an officer's further requests are collected for a summary.
    Zero without a scheduler (the embedded default): no beat would ever send the summary,
    and an officer who never hears of a request is worse off than one who hears of each."""
    from enrollment import health

    if health.no_scheduler():
        return timedelta(0)
    return timedelta(minutes=settings.PKIPORTAL_RA_NOTICE_WINDOW_MINUTES)


def _window_of(digest: ApprovalNoticeDigest, window: timedelta) -> timedelta:
    """The officer's own window: none for one who wants every request at once."""
    return window if digest.delivery == ApprovalNoticeDigest.Delivery.SUMMARIES else timedelta(0)


def _collecting(digest: ApprovalNoticeDigest, window: timedelta, now: datetime) -> bool:
    """Whether the window the officer's last notice opened is still open."""
    window = _window_of(digest, window)
    return bool(window) and digest.last_sent_at is not None and now < digest.last_sent_at + window


def _still_pending(ids: Iterable[int]) -> dict[int, CertificateRequest]:
    """Those still pending, by id: a request rolled back with its transaction is not
    there, one withdrawn or decided since needs no officer."""
    requests = (
        CertificateRequest.objects.filter(pk__in=set(ids), state=CertificateRequest.State.PENDING)
        .select_related("requester", "template", "mailbox")
        .order_by("pk")
    )
    return {r.pk: r for r in requests}


def _theirs(decider: Decider, requests: Mapping[int, CertificateRequest]) -> list[int]:
    """The ids of the requests this officer may decide (Decider.barred, the rule
    services._decide enforces), oldest first. The console's panel
    (ra_selectors.approval_notice_summary) lists the same."""
    return sorted(pk for pk, request in requests.items() if decider.barred(request) is None)


def still_theirs(decider: Decider, ids: Iterable[int]) -> list[int]:
    """Of these requests, the ids of those still pending that the officer may decide, oldest
    first: what beat's summary to them would list (approval_digests_send), as the console's
    panel shows it."""
    requests = _still_pending(ids)
    prime_requesters(requests.values(), [decider.reach])
    return _theirs(decider, requests)


class Officer(NamedTuple):
    """Whom a notice goes to, and in which language (pkiportal.i18n.language_of)."""

    email: str
    language: str


def _asked(
    requests: Mapping[int, CertificateRequest], *, among: Iterable[int] | None = None
) -> dict[int, tuple[Officer, Decider, list[int]]]:
    """Each active officer with an address (of ``among``, when given), their address and
    language, their Decider and the ids of the requests they may decide, oldest first."""
    officers = _officers()
    if among is not None:
        officers = officers.filter(pk__in=list(among))
    rows = list(officers.values_list("pk", "email", "is_superuser", "language"))
    found = deciders((pk, superuser) for pk, _email, superuser, _language in rows)
    # An officer scope asks each requester's groups: read once for every officer here.
    prime_requesters(requests.values(), [officer.reach for officer in found.values()])
    asked: dict[int, tuple[Officer, Decider, list[int]]] = {}
    for pk, email, _superuser, language in rows:
        theirs = _theirs(found[pk], requests)
        if theirs:
            asked[pk] = (Officer(email, language), found[pk], theirs)
    return asked


def requests_announce(ids: Iterable[int]) -> None:
    """Tell the officers who may decide them that these requests wait (after their commit).

    An officer whose last notice is older than the window (or who has none, or who wants
    every request at once) is mailed at once, with whatever an ended window collected that
    beat has not sent yet; the others' requests are collected for the summary at the end of
    their window. One who wants none by mail is left alone. Each officer's row is locked,
    so two requests committed at the same moment mail them once, not twice, and a choice
    changed meanwhile (approval_notice_delivery_set) is the one that counts."""
    requests = _still_pending(ids)
    asked = _asked(requests)
    if not asked:
        return
    window = notice_window()
    # The rows exist before they are locked, each inserted on its own: two announcements
    # never wait on each other's uncommitted inserts.
    known = set(ApprovalNoticeDigest.objects.filter(pk__in=asked).values_list("pk", flat=True))
    ApprovalNoticeDigest.objects.bulk_create(
        [ApprovalNoticeDigest(officer_id=pk) for pk in asked if pk not in known],
        ignore_conflicts=True,
    )
    mails: dict[tuple[tuple[int, ...], timedelta], list[Officer]] = {}
    with transaction.atomic():
        # Locked in one order by everyone, so two announcements never deadlock. The choice
        # is read under the lock: PostgreSQL checks the condition again on a row it waited for.
        digests = list(
            ApprovalNoticeDigest.objects.select_for_update()
            .filter(pk__in=asked)
            .exclude(delivery=ApprovalNoticeDigest.Delivery.NONE)
            .order_by("pk")
        )
        now = timezone.now()
        leftovers = _still_pending(
            pk
            for digest in digests
            if not _collecting(digest, window, now)
            for pk in digest.waiting
        )
        prime_requesters(leftovers.values(), [officer.reach for _e, officer, _t in asked.values()])
        requests = {**leftovers, **requests}
        for digest in digests:
            email, officer, theirs = asked[digest.pk]
            if _collecting(digest, window, now):
                assert digest.last_sent_at is not None
                digest.waiting = [
                    *digest.waiting,
                    *(pk for pk in theirs if pk not in digest.waiting),
                ]
                digest.due_at = digest.last_sent_at + window
                digest.save(update_fields=["waiting", "due_at"])
                continue
            # An ended window's requests beat has not sent: they come in this one mail.
            also = _theirs(officer, {pk: leftovers[pk] for pk in digest.waiting if pk in leftovers})
            listed = tuple(sorted({*theirs, *also}))
            # The mail says whether the next requests are collected: not for "at once".
            mails.setdefault((listed, _window_of(digest, window)), []).append(email)
            digest.waiting, digest.due_at, digest.last_sent_at = [], None, now
            digest.save(update_fields=["waiting", "due_at", "last_sent_at"])
        for (listed, theirs_window), addresses in mails.items():
            _requests_mail([requests[pk] for pk in listed], addresses, window=theirs_window)


def approval_digests_send() -> int:
    """Beat: each officer whose window has ended gets one summary of the requests collected
    in it that still wait and that they may still decide (none: no mail), which opens
    their next window. How many officers were mailed.

    Rows another worker holds are skipped: it is sending them, and once it commits they
    are no longer due. The mail goes after the commit: never twice, as every notice."""
    with transaction.atomic():
        now = timezone.now()
        digests = list(
            ApprovalNoticeDigest.objects.select_for_update(skip_locked=True)
            .filter(due_at__lte=now)
            .order_by("pk")
        )
        if not digests:
            return 0
        requests = _still_pending(pk for digest in digests for pk in digest.waiting)
        # One no longer active, no longer an officer or without an address is not asked.
        asked = _asked(requests, among=[digest.pk for digest in digests])
        mails: dict[tuple[int, ...], list[Officer]] = {}
        for digest in digests:
            email, _officer, theirs = asked.get(digest.pk, (Officer("", ""), None, []))
            listed = tuple(pk for pk in theirs if pk in digest.waiting)
            digest.waiting, digest.due_at = [], None
            if listed:
                mails.setdefault(listed, []).append(email)
                digest.last_sent_at = now
            digest.save(update_fields=["waiting", "due_at", "last_sent_at"])
        for listed, addresses in mails.items():
            _requests_mail([requests[pk] for pk in listed], addresses, window=notice_window())
    return sum(len(addresses) for addresses in mails.values())


def approval_notice_delivery_set(*, officer: User, delivery: str) -> int:
    """Record how an officer hears of requests waiting for their approval, from now on.

    What was collected for their next summary goes out at once when they choose every
    request at once (they would wait for it otherwise), and is dropped when they choose
    none by mail (the queue and the console still show every request). How many requests
    were mailed. Not audited: it is the officer's own preference and grants nothing; the
    other officers who may decide a request still hear of it.

    Under the row's lock, as requests_announce and beat: a request collected at the same
    moment is either mailed or dropped with the others, never left behind."""
    Delivery = ApprovalNoticeDigest.Delivery
    ApprovalNoticeDigest.objects.bulk_create(
        [ApprovalNoticeDigest(officer_id=officer.pk)], ignore_conflicts=True
    )
    with transaction.atomic():
        digest = ApprovalNoticeDigest.objects.select_for_update().get(pk=officer.pk)
        fields = ["delivery"]
        mailed: list[CertificateRequest] = []
        if delivery != Delivery.SUMMARIES and digest.waiting:
            if delivery == Delivery.IMMEDIATE:
                requests = _still_pending(digest.waiting)
                email, _decider, theirs = _asked(requests, among=[officer.pk]).get(
                    officer.pk, (Officer("", ""), None, [])
                )
                mailed = [requests[pk] for pk in theirs]
            digest.waiting, digest.due_at = [], None
            fields += ["waiting", "due_at"]
            if mailed:
                _requests_mail(mailed, [email], window=timedelta(0))
                digest.last_sent_at = timezone.now()
                fields.append("last_sent_at")
        digest.delivery = delivery
        digest.save(update_fields=fields)
    return len(mailed)


def _requests_mail(
    listed: Sequence[CertificateRequest], addresses: list[Officer], *, window: timedelta
) -> None:
    count = len(listed)

    def subject() -> str:
        if count == 1:
            return _("Certificate request #%(pk)s waits for your approval") % {"pk": listed[0].pk}
        return ngettext(
            "%(count)d certificate request waits for your approval",
            "%(count)d certificate requests wait for your approval",
            count,
        ) % {"count": count}

    _send(
        subject,
        "enrollment/email/requests_await_approval.txt",
        {
            "requests": [
                {"request": r, "requester": _name(r.requester)} for r in listed[:SUMMARY_LISTS]
            ],
            "count": count,
            "more": max(count - SUMMARY_LISTS, 0),
            # One request: the link opens the queue at its card (a phone shows a few).
            "url": reverse("enrollment:ra-requests")
            + (f"#request-{listed[0].pk}" if count == 1 else ""),
            "window_minutes": int(window.total_seconds() // 60),
            # Where the officer chooses how these reach them (or stops them).
            "choice_url": reverse("ra:console") + "#notice-summary",
        },
        addresses,
    )


# --- key recovery ---------------------------------------------------------------------

STEP_SUBJECTS: dict[str, Promise] = {
    "asked": gettext_lazy("You asked for your archived encryption key back"),
    "accepted": gettext_lazy("An RA officer accepted your request to recover your encryption key"),
    "opened": gettext_lazy("A recovery of your archived encryption key was requested"),
    "approval": gettext_lazy("The recovery of your encryption key was approved by an officer"),
    "approved": gettext_lazy("The recovery of your encryption key is approved"),
    "rejected": gettext_lazy("The recovery of your encryption key was rejected"),
    "ready": gettext_lazy("Your encryption key was recovered"),
    "downloaded": gettext_lazy("Your recovered encryption key was downloaded"),
    "expired": gettext_lazy("Your recovered encryption key was not downloaded in time"),
}


# The same steps told to a shared mailbox and its delegates: the key is the mailbox's.
MAILBOX_STEP_SUBJECTS: dict[str, Promise] = {
    "asked": gettext_lazy("A delegate asked for the mailbox's archived encryption key back"),
    "accepted": gettext_lazy(
        "An RA officer accepted the request to recover the mailbox's encryption key"
    ),
    "opened": gettext_lazy("A recovery of the mailbox's archived encryption key was requested"),
    "approval": gettext_lazy(
        "The recovery of the mailbox's encryption key was approved by an officer"
    ),
    "approved": gettext_lazy("The recovery of the mailbox's encryption key is approved"),
    "rejected": gettext_lazy("The recovery of the mailbox's encryption key was rejected"),
    "ready": gettext_lazy("The mailbox's encryption key was recovered"),
    "downloaded": gettext_lazy("The mailbox's recovered encryption key was downloaded"),
    "expired": gettext_lazy("The mailbox's recovered encryption key was not downloaded in time"),
}


def recovery_step(recovery: KeyRecoveryRequest, step: str, *, actor: Any = None) -> None:
    """Tell the key owner about every step; the one who downloads also learns it is ready."""
    from enrollment.recovery import approvals_required, quorum, recipient_name

    certificate = recovery.certificate
    owner = certificate.owner
    holder_id = certificate.owner_id
    if certificate.mailbox_id is not None and recovery.asked_by is not None:
        # A shared mailbox's key: the delegate who asked for it stands in for an owner.
        owner, holder_id = recovery.asked_by, recovery.asked_by_id
    url = reverse("ra:recovery-detail", args=[recovery.pk])
    context = {
        "recovery": recovery,
        "certificate": certificate,
        "step": step,
        "actor": _name(actor),
        "requester": _name(recovery.requested_by),
        # Those that count: an approver who lost the role is not one of them.
        "approvals": len(quorum(recovery).counted) if step == "approval" else None,
        "required": approvals_required(),
        # Worded as each recipient's mail is: a name with its role in words.
        "recipient": lazy(recipient_name, str)(recovery),
        "owner_downloads": recovery.recipient_id == holder_id,
        "url": url,
    }
    if owner is not None:
        _send(
            STEP_SUBJECTS[step],
            "enrollment/email/recovery_step.txt",
            {**context, "person": owner},
            [owner],
        )
    if certificate.mailbox is not None:
        # Every delegate (and the mailbox) hears of every step: one of them getting the
        # key, or an officer getting it, must not pass unseen by the others.
        notice_context = {**context, "step_subject": MAILBOX_STEP_SUBJECTS[step]}
        facts = {"pk": recovery.pk, "email": certificate.mailbox.email, "step": step}
        _send(
            lambda: str(MAILBOX_SUBJECTS["recovery"]) % facts,
            "enrollment/email/mailbox_notice.txt",
            {**notice_context, "mailbox": certificate.mailbox, "event": "recovery"},
            [
                recipient
                for recipient in mailbox_recipients(certificate.mailbox)
                if owner is None
                or (recipient if isinstance(recipient, str) else recipient.email) != owner.email
            ],
        )
    if step == "ready" and recovery.recipient_id != holder_id and recovery.requested_by:
        officer = recovery.requested_by
        _send(
            lambda: _("Key recovery #%(pk)s is ready for you to download") % {"pk": recovery.pk},
            "enrollment/email/recovery_ready.txt",
            {**context, "person": officer},
            [officer],
        )


def recovery_asked(recovery: KeyRecoveryRequest) -> None:
    """The officers whose scope covers the key's holder learn that the holder asks for it
    back and waits for one of them."""
    holder = recovery.asked_by
    _send(
        lambda: (
            _("Key recovery #%(pk)s: a key holder asks for their encryption key back")
            % {"pk": recovery.pk}
        ),
        "enrollment/email/recovery_asked.txt",
        {
            "recovery": recovery,
            "certificate": recovery.certificate,
            "holder": _name(holder),
            "url": reverse("ra:recovery-detail", args=[recovery.pk]),
        },
        _covering(_officers().exclude(pk__in=[recovery.asked_by_id]), recovery.certificate),
    )


def recovery_awaits_approval(recovery: KeyRecoveryRequest) -> None:
    """The officers who may approve it (not its opener, not the key's owner, only those
    whose scope covers the owner) learn it waits."""
    from enrollment.recovery import approvals_required

    _send(
        lambda: _("Key recovery #%(pk)s waits for your approval") % {"pk": recovery.pk},
        "enrollment/email/recovery_awaits_approval.txt",
        {
            "recovery": recovery,
            "certificate": recovery.certificate,
            "opener": _name(recovery.requested_by),
            "asked": recovery.asked_by_id is not None,
            "required": approvals_required(),
            "url": reverse("ra:recovery-detail", args=[recovery.pk]),
        },
        _covering(
            _officers().exclude(
                pk__in=[
                    pk
                    for pk in (
                        recovery.requested_by_id,
                        recovery.certificate.owner_id,
                        recovery.asked_by_id,
                    )
                    if pk is not None
                ]
            ),
            recovery.certificate,
        ),
    )


def recovery_awaits_agent(recovery: KeyRecoveryRequest) -> None:
    """The key recovery agents whose scope covers the key's owner learn that an approved
    recovery waits for one of them."""
    _send(
        lambda: (
            _("Key recovery #%(pk)s is approved and waits for a key recovery agent")
            % {"pk": recovery.pk}
        ),
        "enrollment/email/recovery_awaits_agent.txt",
        {
            "recovery": recovery,
            "url": reverse("ra:recovery-perform", args=[recovery.pk]),
        },
        _covering(_agents(), recovery.certificate),
    )


# --- expiry ---------------------------------------------------------------------------


def certificate_expiring(certificate: Certificate, *, days_left: int) -> None:
    owner = certificate.owner
    if certificate.mailbox is not None:
        mailbox_notice(
            certificate.mailbox,
            "expiring",
            certificate=certificate,
            days_left=days_left,
            url=reverse("enrollment:certificate-detail", args=[certificate.pk]),
        )
        return
    if owner is None:
        return
    _send(
        lambda: (
            ngettext(
                "Your certificate expires in %(count)d day",
                "Your certificate expires in %(count)d days",
                days_left,
            )
            % {"count": days_left}
        ),
        "enrollment/email/certificate_expiring.txt",
        {
            "certificate": certificate,
            "owner": owner,
            "days_left": days_left,
            "url": reverse("enrollment:certificate-detail", args=[certificate.pk]),
            # An imported certificate has no template to renew from: enrol anew.
            "enrol_url": reverse("enrollment:enroll-index"),
        },
        [owner],
    )


def expiry_summary(notified: Mapping[int, Sequence[Certificate]], *, now: datetime) -> None:
    """One mail per run to the officers: who was told their certificate expires. An
    officer a scope limits hears only of the people it covers (nothing at all when none
    of theirs expires): one mail per distinct Reach, not per officer."""
    people = list(_officers().only("pk", "is_superuser", "email", "language"))
    reached = reaches((p.pk, p.is_superuser) for p in people)
    if not all(reach.everyone for reach in reached.values()):
        prime_groups(c.owner for certificates in notified.values() for c in certificates)
    by_reach: dict[Reach, list[User]] = {}
    for person in people:
        by_reach.setdefault(reached[person.pk], []).append(person)
    for reach, addresses in by_reach.items():
        theirs = {
            threshold: [c for c in certificates if reach.covers_certificate(c)]
            for threshold, certificates in notified.items()
        }
        total = sum(len(certificates) for certificates in theirs.values())
        if not total and not reach.everyone:
            continue  # a scoped officer is not mailed that none of theirs expires
        _send(
            partial(_expiry_summary_subject, total),
            "enrollment/email/expiry_summary.txt",
            {
                "notified": sorted(theirs.items()),
                "total": total,
                "now": now,
                "scope": "" if reach.everyone else reach.describe(),
            },
            addresses,
        )


def _expiry_summary_subject(total: int) -> str:
    return ngettext(
        "Expiry notices: %(total)d certificate expires soon",
        "Expiry notices: %(total)d certificates expire soon",
        total,
    ) % {"total": total}


def agent_registered(
    agent: KeyRecoveryAgent, *, actor: Any = None, source_address: str | None = None
) -> None:
    """A new agent certificate can open every key archived from now on: the other agents
    and the administrators learn who registered it, when, from where, and its fingerprint,
    so one registered behind their backs is seen and can be deactivated.

    The subject is fixed: the agent's name is the registrant's text, and a line break in a
    subject would make the mail fail (BadHeaderError) and so go unsent."""
    # The holders of the other active agent certificates, in the agents' group or not.
    others = KeyRecoveryAgent.objects.filter(is_active=True, user__isnull=False).exclude(
        pk=agent.pk
    )
    holders = get_user_model().objects.filter(is_active=True, pk__in=others.values("user"))
    _send(
        gettext_lazy("A key recovery agent certificate was registered"),
        "enrollment/email/agent_registered.txt",
        {
            "agent": agent,
            "holder": _name(agent.user) if agent.user is not None else "",
            "actor": _name(actor) if getattr(actor, "is_authenticated", False) else "",
            "actor_username": actor.get_username()
            if getattr(actor, "is_authenticated", False)
            else "",
            "source_address": source_address,
            "url": reverse("admin:enrollment_keyrecoveryagent_changelist"),
        },
        [*_agents(), *holders.exclude(email=""), *admins()],
    )


def agent_expiring(agent: KeyRecoveryAgent, *, valid_agents: int) -> None:
    """The last valid agent certificate is about to expire: archival would stop."""
    _send(
        gettext_lazy("The last key recovery agent certificate expires soon"),
        "enrollment/email/agent_expiring.txt",
        {
            "agent": agent,
            "valid_agents": valid_agents,
            "url": reverse("admin:enrollment_keyrecoveryagent_add"),
        },
        admins(),
    )
