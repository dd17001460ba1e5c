"""Key recovery under dual control: ask, open, approve, perform, download; atomic and audited.

An RA officer opens a request, or the key's holder asks for their own key back and an RA
officer other than the holder accepts the request, which opens it in the same way: the
holder's ask never stands in for an officer. Then PKIPORTAL_RECOVERY_APPROVALS *other*
officers approve it; a key recovery agent who did neither performs it with their own
PKCS#12, which is used in memory only; the person the request names downloads the result
once, within a short window. So at least three different people act, whoever receives the
key (README.md, "Key recovery"): the recipient is the key owner, who may not accept,
approve or perform, or the officer who opened it.

Where the recovered key waits (README.md, "Key recovery"): between perform and download it
exists only as a PKCS#12 encrypted under a one-time password of ~119 random bits that the
server generates, shows once to the agent and never stores. The agent hands the password
to the named person out of band; the file reaches that person only through their own
signed-in, one-time download. The row's copy is wiped on download or when the window closes.
"""

from __future__ import annotations

import enum
import logging
import math
import secrets
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.functional import lazy
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext_lazy
from django.views.decorators.debug import sensitive_variables

from accounts.models import User
from enrollment import ra_notifications as notify
from enrollment import services
from enrollment.audit import audit_record
from enrollment.exceptions import (
    EnrollmentError,
    InvalidState,
    Message,
    NotPermitted,
    PolicyViolation,
    RateLimited,
)
from enrollment.models import (
    ArchivedKey,
    AuditEvent,
    Certificate,
    KeyRecoveryAgent,
    KeyRecoveryApproval,
    KeyRecoveryRequest,
    SharedMailbox,
)
from enrollment.permissions import (
    DUAL_CONTROL,
    NOT_AN_AGENT,
    NOT_AN_OFFICER,
    OUT_OF_SCOPE,
    OWN_KEY,
    is_key_recovery_agent,
    is_ra_officer,
    ra_officers,
)
from enrollment.ra_selectors import with_quorum
from enrollment.scopes import Reach, reach_of, reaches
from enrollment.x509 import cms, keys, pkcs7, pkcs12
from enrollment.x509.errors import X509Error

logger = logging.getLogger(__name__)

State = KeyRecoveryRequest.State
OPEN_STATES = (State.REQUESTED, State.PENDING, State.APPROVED, State.READY)
# Reasons and notes are read by officers and mailed; a page of text is plenty.
MAX_TEXT_LENGTH = 1000
# Tab and line breaks are text; other control characters, and the bidirectional overrides
# that make text read differently from what it says, are not.
ALLOWED_CONTROLS = frozenset("\t\n\r")
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
ASKS_WINDOW = timedelta(hours=24)
# Read aloud or copied from a screen without mistakes: no 0/O, 1/I/L. 24 characters from
# 31 are ~119 bits, beyond brute force even through the PKCS#12 key derivation.
OTP_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
OTP_GROUPS, OTP_GROUP_LENGTH = 6, 4
# An agent's PKCS#12 is a few KiB; anything much larger is not one.
MAX_AGENT_PKCS12_BYTES = 64 * 1024


def one_time_password() -> str:
    """A random password in groups of four: XXXX-XXXX-XXXX-XXXX-XXXX-XXXX."""
    length = OTP_GROUPS * OTP_GROUP_LENGTH
    characters = "".join(secrets.choice(OTP_ALPHABET) for _i in range(length))
    return "-".join(
        characters[start : start + OTP_GROUP_LENGTH] for start in range(0, length, OTP_GROUP_LENGTH)
    )


def approvals_required() -> int:
    approvals: int = settings.PKIPORTAL_RECOVERY_APPROVALS  # env.int in settings.py
    return approvals


# Every refusal of someone whose officer scope leaves the key's owner out (README.md,
# "Key recovery"): it names nobody, as the page it stands for is not theirs to see.
OUT_OF_REACH = _("This key recovery is outside the people your officer scope covers.")
# The refusal of each step, naming who may take it instead (whole sentences, so that each
# reads naturally when translated).
OUT_OF_REACH_UNCHANGED = _(
    "This key recovery is outside the people your officer scope covers. Nothing was changed."
)
OUT_OF_REACH_OPEN = _(
    "This key recovery is outside the people your officer scope covers. An officer whose "
    "scope covers the key's owner opens it. Nothing was changed."
)
OUT_OF_REACH_ACCEPT = _(
    "This key recovery is outside the people your officer scope covers. An officer whose "
    "scope covers the key's holder accepts it. Nothing was changed."
)
OUT_OF_REACH_APPROVE = _(
    "This key recovery is outside the people your officer scope covers. Officers whose "
    "scope covers the key's owner approve it. Nothing was changed."
)
OUT_OF_REACH_REJECT = _(
    "This key recovery is outside the people your officer scope covers. An officer whose "
    "scope covers the key's owner decides it. Nothing was changed."
)
OUT_OF_REACH_PERFORM = _(
    "This key recovery is outside the people your officer scope covers. A key recovery "
    "agent whose scope covers the key's owner carries it out. Nothing was changed."
)


class OutOfReach(NotPermitted):
    """The key's owner is outside the actor's officer scope (enrollment.scopes): the web
    edge answers 403 without showing the recovery."""

    def __init__(self, message: Message | None = None, *, field: str | None = None) -> None:
        super().__init__(message, field=field, refusal=OUT_OF_SCOPE)


def _check_in_reach(
    certificate: Certificate, user: Any, *, refusal: Message = OUT_OF_REACH_UNCHANGED
) -> None:
    """Nobody opens, accepts, approves, rejects or carries out the recovery of a key whose
    owner their Reach leaves out (a shared mailbox's: everyone-reach only); ``refusal``
    says who may instead."""
    if not reach_of(user).covers_certificate(certificate):
        raise OutOfReach(refusal)


def check_in_reach(
    recovery: KeyRecoveryRequest, user: Any, *, action: str, source_address: str | None
) -> None:
    """The web edge's check before a step's form is even read: OutOfReach, audited as
    ``action`` like any refused step, so the page (which would name the key's owner) is
    never shown to someone out of reach."""
    with _refusals_audited(action, actor=user, target=recovery, source_address=source_address):
        _check_in_reach(recovery.certificate, user)


def in_reach(recovery: KeyRecoveryRequest, user: Any) -> bool:
    """Whether this officer's or agent's Reach covers the key's owner: whether the RA
    pages show them the recovery (the person it is delivered to sees it regardless)."""
    return reach_of(user).covers_certificate(recovery.certificate)


class ApprovalLapse(enum.Enum):
    """Why an approval given earlier no longer counts; each value completes "does not
    count: ..." on the recovery's page and in refusals."""

    DEACTIVATED = "the approver's account is deactivated"
    NOT_OFFICER = "the approver is no longer an RA officer"
    OUT_OF_SCOPE = "outside their officer scope now"

    @property
    def text(self) -> str:
        """The value in the reader's language (the value itself stays English)."""
        return str(_LAPSE_TEXT[self])


_LAPSE_TEXT: dict[ApprovalLapse, Message] = {
    # Translators: completes "does not count: ..." about an RA officer's approval.
    ApprovalLapse.DEACTIVATED: _("the approver's account is deactivated"),
    # Translators: completes "does not count: ..." about an RA officer's approval.
    ApprovalLapse.NOT_OFFICER: _("the approver is no longer an RA officer"),
    # Translators: completes "does not count: ..." about an RA officer's approval.
    ApprovalLapse.OUT_OF_SCOPE: _("outside their officer scope now"),
}


def approval_lapse(
    approval: KeyRecoveryApproval, certificate: Certificate, reach: Reach | None = None
) -> ApprovalLapse | None:
    """Whether the approver still holds what approving took, now: an active RA officer
    whose Reach covers the key's owner (``reach``: theirs, when the caller read it).

    Roles are withdrawn (directory sync, leaving the team, an officer found to collude)
    and scopes narrowed: an approval counts only while its officer still could give it."""
    approver = approval.officer
    if not approver.is_active:
        return ApprovalLapse.DEACTIVATED
    if not is_ra_officer(approver):
        return ApprovalLapse.NOT_OFFICER
    if not (reach or reach_of(approver)).covers_certificate(certificate):
        return ApprovalLapse.OUT_OF_SCOPE
    return None


@dataclass(frozen=True)
class Quorum:
    """A recovery's approvals as they count now: the one rule for approve, perform,
    download and the recovery's page."""

    counted: tuple[KeyRecoveryApproval, ...]
    lapsed: tuple[tuple[KeyRecoveryApproval, ApprovalLapse], ...]
    required: int

    @property
    def met(self) -> bool:
        return len(self.counted) >= self.required

    @property
    def missing(self) -> int:
        return max(self.required - len(self.counted), 0)

    def lapses_in_words(self) -> str:
        """``Oscar Second's approval (the approver is no longer an RA officer)``, joined;
        in the reader's language."""
        return "; ".join(
            # Translators: name is an RA officer's; why says why their approval lapsed.
            str(_("%(name)s's approval (%(why)s)"))
            % {"name": _display_name(a.officer), "why": lapse.text}
            for a, lapse in self.lapsed
        )

    @property
    def scope_lapsed(self) -> bool:
        """Whether some approval no longer counts because of the approver's officer scope."""
        return any(lapse == ApprovalLapse.OUT_OF_SCOPE for _a, lapse in self.lapsed)

    @property
    def counts_again(self) -> str:
        """What brings a lapsed approval back, completing "once its approver ...": their
        role, and where a scope dropped it, a scope that covers the key's owner again."""
        if self.scope_lapsed:
            # Translators: completes "an approval counts again once its approver ...".
            return str(
                _("is an active RA officer whose officer scope covers the key's owner again")
            )
        # Translators: completes "an approval counts again once its approver ...".
        return str(_("is an active RA officer again"))


def quorum(
    recovery: KeyRecoveryRequest, approvals: Iterable[KeyRecoveryApproval] | None = None
) -> Quorum:
    """Which approvals count now; ``approvals`` (with their officers) when the caller
    has read them already."""
    if approvals is None:
        approvals = recovery.approvals.select_related("officer")
    approvals = list(approvals)
    # Every approver's Reach in one go (one query unless some are in a scope's group).
    reached = reaches({(a.officer_id, a.officer.is_superuser) for a in approvals})
    counted: list[KeyRecoveryApproval] = []
    lapsed: list[tuple[KeyRecoveryApproval, ApprovalLapse]] = []
    for approval in approvals:
        lapse = approval_lapse(approval, recovery.certificate, reached[approval.officer_id])
        if lapse is None:
            counted.append(approval)
        else:
            lapsed.append((approval, lapse))
    return Quorum(tuple(counted), tuple(lapsed), approvals_required())


# Translators: in place of the agent certificates' names, when there are none.
NO_REGISTERED_AGENT = _("no registered agent")


def _display_name(user: User) -> str:
    return user.get_full_name() or user.get_username()


def _lapses_lazily(found: Quorum) -> Message:
    """The lapsed approvals in words, put into a message when it is read (its language)."""
    return lazy(found.lapses_in_words, str)()


def _short_of_quorum(found: Quorum) -> InvalidState:
    """Why the approvals that count now fall short, as the refusal to carry it out."""
    missing = found.missing
    if not found.lapsed:
        return InvalidState(
            ngettext_lazy(
                "This recovery is not approved yet: it needs %(missing)d more approval by an "
                "RA officer other than the requester.",
                "This recovery is not approved yet: it needs %(missing)d more approvals by an "
                "RA officer other than the requester.",
                missing,
            ),
            params={"missing": missing},
        )
    lapsed = ngettext_lazy(
        # Translators: lapses lists approvals with why each lapsed, e.g. "Oscar Second's
        # approval (the approver is no longer an RA officer)".
        "This recovery no longer has the approvals it needs, so it cannot be carried out: "
        "%(lapses)s no longer counts.",
        "This recovery no longer has the approvals it needs, so it cannot be carried out: "
        "%(lapses)s no longer count.",
        len(found.lapsed),
    )
    if found.scope_lapsed:
        needs = ngettext_lazy(
            "It needs %(missing)d more approval by an RA officer other than the requester (an "
            "approval counts again once its approver is an active RA officer whose officer "
            "scope covers the key's owner again). Nothing was changed.",
            "It needs %(missing)d more approvals by an RA officer other than the requester (an "
            "approval counts again once its approver is an active RA officer whose officer "
            "scope covers the key's owner again). Nothing was changed.",
            missing,
        )
    else:
        needs = ngettext_lazy(
            "It needs %(missing)d more approval by an RA officer other than the requester (an "
            "approval counts again once its approver is an active RA officer again). Nothing "
            "was changed.",
            "It needs %(missing)d more approvals by an RA officer other than the requester (an "
            "approval counts again once its approver is an active RA officer again). Nothing "
            "was changed.",
            missing,
        )
    return InvalidState(
        format_lazy("{} {}", lapsed, needs),
        params={"lapses": _lapses_lazily(found), "missing": missing},
    )


class RecoveryAlreadyOpen(InvalidState):
    """A recovery of this key is open; ``recovery`` is it, so the edge can show it."""

    def __init__(
        self,
        message: Message,
        *,
        recovery: KeyRecoveryRequest,
        params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, params=params)
        self.recovery = recovery


# Translators: the subject of "... must be text", "... is 1200 characters long".
THE_REASON = _("The reason")
# Translators: the subject of "... must be text", "... is 1200 characters long".
THE_NOTE = _("The note")


def clean_text(value: Any, *, field: str, empty: Message, what: Message = THE_REASON) -> str:
    """Free text an officer reads and a mail carries: stripped, bounded, plain.

    Forms and serializers call it too, so text refused here is refused before any
    service runs (and stores nothing)."""
    if not isinstance(value, str):
        # Translators: what is "The reason" or "The note".
        raise PolicyViolation(_("%(what)s must be text."), params={"what": what}, field=field)
    text = value.strip()
    if not text:
        raise PolicyViolation(empty, field=field)
    if len(text) > MAX_TEXT_LENGTH:
        raise PolicyViolation(
            # Translators: what is "The reason" or "The note".
            _("%(what)s is %(length)d characters long; keep it to %(limit)d."),
            params={"what": what, "length": len(text), "limit": MAX_TEXT_LENGTH},
            field=field,
        )
    for character in text:
        if character in BIDI_CONTROLS or (
            unicodedata.category(character) in ("Cc", "Cs") and character not in ALLOWED_CONTROLS
        ):
            raise PolicyViolation(
                # Translators: what is "The reason" or "The note"; code is a hex code point.
                _("%(what)s contains the control character U+%(code)s; type plain text."),
                params={"what": what, "code": f"{ord(character):04X}"},
                field=field,
            )
    return text


def _open_one(certificate: Certificate) -> KeyRecoveryRequest | None:
    """With its quorum counted: a refusal naming its state names the one its page shows."""
    return (
        with_quorum(
            KeyRecoveryRequest.objects.filter(certificate=certificate, state__in=OPEN_STATES)
        )
        .defer("bundle")
        .first()
    )


def may_download(recovery: KeyRecoveryRequest, user: User) -> bool:
    """The named person; the requesting officer only while they still are an RA officer
    whose scope covers the key's owner."""
    if user.pk != recovery.recipient_id:
        return False
    return recovery.deliver_to == KeyRecoveryRequest.Recipient.OWNER or (
        _officer_lapse(user, recovery.certificate) is None
    )


def _officer_lapse(officer: User | None, certificate: Certificate) -> ApprovalLapse | None:
    """Why a key delivered to this officer as an officer may no longer go to them: no
    longer one (deactivated included), or the owner now outside their scope."""
    if officer is None or not is_ra_officer(officer):
        return ApprovalLapse.NOT_OFFICER
    if not reach_of(officer).covers_certificate(certificate):
        return ApprovalLapse.OUT_OF_SCOPE
    return None


def _delivered_to_former_officer(recovery: KeyRecoveryRequest) -> ApprovalLapse | None:
    # Roles are withdrawn (directory sync, leaving the team) and scopes narrowed; a key
    # delivered to someone as an officer goes only to a current one who may act for its
    # owner.
    if recovery.deliver_to != KeyRecoveryRequest.Recipient.REQUESTER:
        return None
    return _officer_lapse(recovery.requested_by, recovery.certificate)


def recipient_name(recovery: KeyRecoveryRequest) -> str:
    """Who may download, in words."""
    if recovery.deliver_to == KeyRecoveryRequest.Recipient.OWNER:
        mailbox = recovery.certificate.mailbox
        asker = recovery.asked_by
        if mailbox is not None and asker is not None:
            name = asker.get_full_name() or asker.get_username()
            return str(_("%(name)s (a delegate of %(mailbox)s)")) % {
                "name": name,
                "mailbox": mailbox.email,
            }
        owner = recovery.certificate.owner
        if owner is None:
            return "—"
        return str(_("%(name)s (the key owner)")) % {
            "name": owner.get_full_name() or owner.get_username()
        }
    officer = recovery.requested_by
    if officer is None:  # only a holder's request has none yet, and it goes to the owner
        return "—"
    return str(_("%(name)s (the requesting officer)")) % {
        "name": officer.get_full_name() or officer.get_username()
    }


@contextmanager
def _refusals_audited(
    action: str, *, actor: Any, target: models.Model, source_address: str | None
) -> Iterator[None]:
    """A refused step changes nothing, but the attempt stays on the audit trail: once, as
    access.refused when someone holding a role is refused for who they are (not an officer
    or agent, outside their scope, their own key, dual control: NotPermitted.refusal), else
    as the step's own action with outcome failure."""
    try:
        yield
    except EnrollmentError as exc:
        refusal = exc.refusal if isinstance(exc, NotPermitted) else ""
        if not services.access_refusal_record(
            actor=actor,
            attempted=action,
            target=target,
            refusal=refusal,
            source_address=source_address,
        ):
            audit_record(
                action=action,
                actor=actor,
                target=target,
                outcome=AuditEvent.Outcome.FAILURE,
                source_address=source_address,
                detail={"error": exc.english},
            )
        raise


def _lock(recovery: KeyRecoveryRequest) -> KeyRecoveryRequest:
    """The row, locked for this transaction (only it: not the certificate or the users)."""
    return (
        KeyRecoveryRequest.objects.select_for_update(of=("self",))
        .select_related("certificate", "requested_by")
        .get(pk=recovery.pk)
    )


def _refresh(recovery: KeyRecoveryRequest, locked: KeyRecoveryRequest) -> KeyRecoveryRequest:
    """The caller's object reflects the committed step too; the locked copy is returned."""
    recovery.refresh_from_db()
    return locked


# --- open, approve, reject ------------------------------------------------------------


def recovery_open(
    *,
    certificate: Certificate,
    officer: User,
    reason: str,
    deliver_to: str = KeyRecoveryRequest.Recipient.OWNER,
    pkcs12_format: str = pkcs12.Pkcs12Format.MODERN,
    close_holder_ask: int | None = None,
    source_address: str | None = None,
) -> KeyRecoveryRequest:
    """An officer asks for an archived key back; nothing is decrypted yet.

    A holder's own ask that waits for an officer blocks it (one open recovery per key),
    unless close_holder_ask is that ask's id (the one the officer saw): then it is rejected
    in the same transaction, so a
    recovery delivered to the officer (a legal hold) does not hinge on first rejecting an
    ask that the holder could renew in between. The holder is told either way, as of
    every step of a recovery of their key.
    """
    with _refusals_audited(
        "recovery.open", actor=officer, target=certificate, source_address=source_address
    ):
        if not is_ra_officer(officer):
            raise NotPermitted(_("Only RA officers open key recoveries."), refusal=NOT_AN_OFFICER)
        _check_in_reach(certificate, officer, refusal=OUT_OF_REACH_OPEN)
        if holds_certificate_key(certificate, officer.pk):
            # Opening is the step where an officer other than the holder vouches for the
            # request: a holder who opened it would need one approver and one agent only.
            raise NotPermitted(
                _(
                    "This is your own key: ask for it under My certificates, and another RA "
                    "officer will confirm it is you and open the recovery."
                ),
                refusal=OWN_KEY,
            )
        reason = clean_text(reason, field="reason", empty=_("Say why the key must be recovered."))
        if not ArchivedKey.objects.filter(certificate=certificate).exists():
            raise PolicyViolation(
                _("This certificate's key was not archived, so it cannot be recovered."),
                field="certificate",
            )
        try:
            recipient = KeyRecoveryRequest.Recipient(deliver_to)
            fmt = pkcs12.Pkcs12Format(pkcs12_format)
        except ValueError as exc:
            # Translators: choice is Python's "'x' is not a valid Recipient", kept as is.
            raise PolicyViolation(_("Unknown choice: %(choice)s"), params={"choice": exc}) from None
        owner = certificate.owner
        if recipient == KeyRecoveryRequest.Recipient.OWNER and (
            owner is None or not owner.is_active
        ):
            raise PolicyViolation(
                _("The key owner has no active account to download it; deliver it to yourself."),
                field="deliver_to",
            )
        try:
            with transaction.atomic():
                # One open recovery per key (also a partial unique constraint).
                Certificate.objects.select_for_update().filter(pk=certificate.pk).first()
                open_one = _open_one(certificate)
                closed_ask = None
                if open_one is not None and open_one.state == State.REQUESTED:
                    if close_holder_ask != open_one.pk:
                        raise RecoveryAlreadyOpen(
                            _(
                                "Recovery #%(number)d of this key is already open: its holder "
                                "asked for it. Accept that one instead, or close it and open "
                                "yours."
                            ),
                            params={"number": open_one.pk},
                            recovery=open_one,
                        )
                    closed_ask, open_one = open_one, None
                if open_one is not None:
                    raise RecoveryAlreadyOpen(
                        # Translators: state is the recovery's state, e.g. "pending".
                        _("Recovery #%(number)d of this key is already open (%(state)s)."),
                        params={"number": open_one.pk, "state": _state_lower(open_one, shown=True)},
                        recovery=open_one,
                    )
                if closed_ask is not None:
                    closed_ask = _close_for_officer(
                        closed_ask, officer=officer, source_address=source_address
                    )
                recovery = KeyRecoveryRequest.objects.create(
                    certificate=certificate,
                    requested_by=officer,
                    reason=reason,
                    deliver_to=recipient,
                    pkcs12_format=fmt.value,
                )
                detail: dict[str, Any] = {
                    "certificate": certificate.serial,
                    "reason": reason,
                    "deliver_to": recipient.value,
                    "format": fmt.value,
                    "approvals_required": approvals_required(),
                }
                if closed_ask is not None:
                    detail["closed_ask"] = closed_ask.pk
                audit_record(
                    action="recovery.open",
                    actor=officer,
                    target=recovery,
                    source_address=source_address,
                    detail=detail,
                )
                notify.recovery_step(recovery, "opened")
                notify.recovery_awaits_approval(recovery)
        except IntegrityError:
            raise InvalidState(_("A recovery of this key is already open.")) from None
    return recovery


def _state_lower(recovery: KeyRecoveryRequest, *, shown: bool = False) -> Message:
    """The recovery's state in lower case, worded when the message is read (its language):
    ``shown``, the effective state its page shows."""

    def worded() -> str:
        state = recovery.state_shown_display if shown else recovery.get_state_display()
        return str(state).lower()

    return lazy(worded, str)()


# Stored as the rejection's reason (in English, like every stored reason) and mailed.
CLOSED_FOR_OFFICER = (
    "Closed by an RA officer, who opened a recovery of this key instead. You are told "
    "about each of its steps; ask the RA if you need the key yourself."
)


def _close_for_officer(
    ask: KeyRecoveryRequest, *, officer: User, source_address: str | None
) -> KeyRecoveryRequest:
    """Reject a holder's waiting ask because an officer opens their own recovery; the
    caller holds the certificate's lock."""
    locked = _lock(ask)
    if locked.state != State.REQUESTED:  # accepted or withdrawn a moment ago
        raise RecoveryAlreadyOpen(
            # Translators: state is the recovery's state, e.g. "withdrawn".
            _("Recovery #%(number)d of this key changed meanwhile: it is %(state)s."),
            params={"number": locked.pk, "state": _state_lower(locked)},
            recovery=locked,
        )
    _reject_locked(
        locked,
        officer=officer,
        reason=CLOSED_FOR_OFFICER,
        source_address=source_address,
        closed_for="officer_recovery",
    )
    return locked


def _reject_locked(
    locked: KeyRecoveryRequest,
    *,
    officer: User,
    reason: str,
    source_address: str | None,
    closed_for: str | None = None,
) -> None:
    """Reject a recovery whose row the caller holds locked: state, audit and the owner's
    mail together."""
    locked.state = State.REJECTED
    locked.decided_by = officer
    locked.decision_reason = reason
    locked.save(update_fields=["state", "decided_by", "decision_reason", "updated_at"])
    detail = {"reason": reason, **({"closed_for": closed_for} if closed_for else {})}
    audit_record(
        action="recovery.reject",
        actor=officer,
        target=locked,
        source_address=source_address,
        detail=detail,
    )
    notify.recovery_step(locked, "rejected", actor=officer)


def recovery_ask(
    *,
    certificate: Certificate,
    holder: User,
    reason: str,
    pkcs12_format: str = pkcs12.Pkcs12Format.MODERN,
    source_address: str | None = None,
) -> KeyRecoveryRequest:
    """The holder asks for their own archived key back; an officer must accept it first.

    The request opens nothing: it waits, as "requested", for an RA officer other than the
    holder to accept it (recovery_accept), who becomes its opener. The key goes to the
    holder. Per person, PKIPORTAL_RECOVERY_ASKS_PER_DAY asks in 24 hours (each mails the
    officers); concurrent asks by one person may pass that count together, never the
    one-open-recovery-per-key rule.
    """
    with _refusals_audited(
        "recovery.ask", actor=holder, target=certificate, source_address=source_address
    ):
        if not (holder.is_authenticated and holder.is_active):
            raise NotPermitted(_("A deactivated account cannot ask for a key recovery."))
        if not services.may_hold(holder, certificate):
            raise NotPermitted(
                _(
                    "Only the certificate's holder (for a shared mailbox: one of its "
                    "delegates) asks for its key back; RA officers open a recovery on the RA "
                    "pages instead."
                )
            )
        reason = clean_text(reason, field="reason", empty=_("Say why you need the key back."))
        try:
            fmt = pkcs12.Pkcs12Format(pkcs12_format)
        except ValueError:
            raise PolicyViolation(
                # Translators: keep "modern" and "compatible": they are the values to send.
                _("Unknown file format %(format)s: choose modern or compatible."),
                params={"format": repr(str(pkcs12_format)[:40])},
                field="pkcs12_format",
            ) from None
        if not ArchivedKey.objects.filter(certificate=certificate).exists():
            raise PolicyViolation(
                _(
                    "This certificate's key was not archived (a signing key never is), so it "
                    "cannot be recovered."
                ),
                field="certificate",
            )
        try:
            with transaction.atomic():
                # The key's row serialises asks and opens (one open recovery per key).
                Certificate.objects.select_for_update().filter(pk=certificate.pk).first()
                open_one = _open_one(certificate)
                if open_one is not None:
                    raise RecoveryAlreadyOpen(
                        # Translators: state is the recovery's state, e.g. "pending".
                        _(
                            "Recovery #%(number)d of this key is already in progress "
                            "(%(state)s); there can be one at a time."
                        ),
                        params={"number": open_one.pk, "state": _state_lower(open_one, shown=True)},
                        recovery=open_one,
                    )
                _check_ask_rate(holder)
                recovery = KeyRecoveryRequest.objects.create(
                    certificate=certificate,
                    asked_by=holder,
                    reason=reason,
                    deliver_to=KeyRecoveryRequest.Recipient.OWNER,
                    pkcs12_format=fmt.value,
                    state=State.REQUESTED,
                )
                audit_record(
                    action="recovery.ask",
                    actor=holder,
                    target=recovery,
                    source_address=source_address,
                    detail={
                        "certificate": certificate.serial,
                        "reason": reason,
                        "format": fmt.value,
                    },
                )
                notify.recovery_step(recovery, "asked", actor=holder)
                notify.recovery_asked(recovery)
        except IntegrityError:
            raise InvalidState(_("A recovery of this key is already in progress.")) from None
    return recovery


def _check_ask_rate(holder: User) -> None:
    limit = settings.PKIPORTAL_RECOVERY_ASKS_PER_DAY
    since = timezone.now() - ASKS_WINDOW
    recent = list(
        KeyRecoveryRequest.objects.filter(asked_by=holder, created_at__gt=since)
        .order_by("created_at")
        .values_list("created_at", flat=True)[:limit]
    )
    if len(recent) >= limit:
        exc = RateLimited(
            ngettext_lazy(
                "You have asked for %(count)d key recovery in the last 24 hours; please try "
                "again later, or ask an RA officer directly.",
                "You have asked for %(count)d key recoveries in the last 24 hours; please try "
                "again later, or ask an RA officer directly.",
                limit,
            ),
            params={"count": limit},
        )
        exc.retry_after = max(
            math.ceil((recent[0] + ASKS_WINDOW - timezone.now()).total_seconds()), 1
        )
        raise exc


def recovery_accept(
    *,
    recovery: KeyRecoveryRequest,
    officer: User,
    note: str,
    source_address: str | None = None,
) -> KeyRecoveryRequest:
    """An officer other than the holder takes on the holder's request and so opens it.

    From here on it is a recovery like one the officer opened for the key owner: it needs
    PKIPORTAL_RECOVERY_APPROVALS officers other than this one, and an agent who is none of
    them. ``note`` says how the officer confirmed the request is the holder's.
    """
    with _refusals_audited(
        "recovery.accept", actor=officer, target=recovery, source_address=source_address
    ):
        if not is_ra_officer(officer):
            raise NotPermitted(
                _("Only RA officers accept key recovery requests."), refusal=NOT_AN_OFFICER
            )
        _check_in_reach(recovery.certificate, officer, refusal=OUT_OF_REACH_ACCEPT)
        note = clean_text(
            note,
            field="note",
            empty=_("Say how you confirmed that the key's holder made this request."),
            what=THE_NOTE,
        )
        with transaction.atomic():
            locked = _lock(recovery)
            if officer.pk in (locked.asked_by_id, locked.certificate.owner_id) or (
                _delegate_of_mailbox(locked, officer.pk)
            ):
                raise NotPermitted(
                    _("This is the recovery of your own key; another RA officer must accept it."),
                    refusal=OWN_KEY,
                )
            if locked.state != State.REQUESTED:
                raise InvalidState(
                    # Translators: state is the recovery's state, e.g. "withdrawn".
                    _("This recovery is no longer waiting to be accepted: it is %(state)s."),
                    params={"state": _state_lower(locked)},
                )
            owner = locked.certificate.owner
            if locked.certificate.mailbox_id is not None:
                _check_delegate_recipient(locked)
            elif owner is None or not owner.is_active:
                raise PolicyViolation(
                    _(
                        "The key's holder no longer has an active account to download it. "
                        "Reject this request; if the key is still needed, open a recovery "
                        "delivered to yourself."
                    )
                )
            locked.state = State.PENDING
            locked.requested_by = officer
            locked.accepted_at = timezone.now()
            locked.acceptance_note = note
            locked.save(
                update_fields=["state", "requested_by", "accepted_at", "acceptance_note",
                               "updated_at"]
            )  # fmt: skip
            audit_record(
                action="recovery.accept",
                actor=officer,
                target=locked,
                source_address=source_address,
                detail={
                    "certificate": locked.certificate.serial,
                    "note": note,
                    "approvals_required": approvals_required(),
                },
            )
            notify.recovery_step(locked, "accepted", actor=officer)
            notify.recovery_awaits_approval(locked)
    return _refresh(recovery, locked)


def recovery_withdraw(
    *,
    recovery: KeyRecoveryRequest,
    holder: User,
    source_address: str | None = None,
) -> KeyRecoveryRequest:
    """The holder who asked takes it back while nothing has been recovered yet.

    Under the row lock that approval and perform take: a recovery withdrawn meanwhile is
    never carried out, and one carried out first can no longer be withdrawn."""
    with (
        _refusals_audited(
            "recovery.withdraw", actor=holder, target=recovery, source_address=source_address
        ),
        transaction.atomic(),
    ):
        locked = _lock(recovery)
        if locked.asked_by_id is None or locked.asked_by_id != holder.pk:
            raise NotPermitted(
                _(
                    "Only the holder who asked for this recovery withdraws it; an RA officer "
                    "rejects it instead."
                )
            )
        if not locked.may_be_withdrawn:
            raise InvalidState(
                # Translators: state is the recovery's state, e.g. "ready".
                _("This recovery can no longer be withdrawn: it is %(state)s."),
                params={"state": _state_lower(locked)},
            )
        was = locked.state
        locked.state = State.WITHDRAWN
        locked.decided_by = holder
        locked.save(update_fields=["state", "decided_by", "updated_at"])
        audit_record(
            action="recovery.withdraw",
            actor=holder,
            target=locked,
            source_address=source_address,
            detail={"state": was},
        )
    return _refresh(recovery, locked)


def recovery_approve(
    *,
    recovery: KeyRecoveryRequest,
    officer: User,
    source_address: str | None = None,
) -> KeyRecoveryRequest:
    """One more officer agrees; the requester and the key owner never count."""
    with _refusals_audited(
        "recovery.approve", actor=officer, target=recovery, source_address=source_address
    ):
        if not is_ra_officer(officer):
            raise NotPermitted(
                _("Only RA officers approve key recoveries."), refusal=NOT_AN_OFFICER
            )
        _check_in_reach(recovery.certificate, officer, refusal=OUT_OF_REACH_APPROVE)
        with transaction.atomic():
            # Who opened it is read under the lock: accepting a holder's request sets it.
            locked = _lock(recovery)
            if officer.pk == locked.requested_by_id:
                raise NotPermitted(
                    _("You opened this recovery; another officer must approve it."),
                    refusal=DUAL_CONTROL,
                )
            if officer.pk in (locked.certificate.owner_id, locked.asked_by_id) or (
                _delegate_of_mailbox(locked, officer.pk)
            ):
                raise NotPermitted(
                    _("You cannot approve the recovery of your own key."), refusal=OWN_KEY
                )
            if locked.state == State.REQUESTED:
                raise InvalidState(
                    _(
                        "The key's holder asked for this recovery: an RA officer must accept "
                        "it before it can be approved."
                    )
                )
            if locked.state not in (State.PENDING, State.APPROVED):
                raise InvalidState(
                    # Translators: state is the recovery's state, e.g. "rejected".
                    _("This recovery is no longer waiting for approval: it is %(state)s."),
                    params={"state": _state_lower(locked)},
                )
            approvals = list(locked.approvals.select_related("officer"))
            if any(approval.officer_id == officer.pk for approval in approvals):
                raise InvalidState(_("You have already approved this recovery."))
            # An approved recovery takes approvals again while some of its approvals no
            # longer count (their officer lost the role): others may make up the quorum.
            if quorum(locked, approvals).met:
                raise InvalidState(
                    _(
                        "This recovery is no longer waiting for approval: it has the approvals "
                        "it needs."
                    )
                )
            KeyRecoveryApproval.objects.create(request=locked, officer=officer)
            now_counting = quorum(locked)
            count, required = len(now_counting.counted), now_counting.required
            detail: dict[str, Any] = {"approvals": count, "required": required}
            if now_counting.lapsed:
                detail["not_counted"] = [
                    {"officer": a.officer.get_username(), "why": lapse.name.lower()}
                    for a, lapse in now_counting.lapsed
                ]
            audit_record(
                action="recovery.approve",
                actor=officer,
                target=locked,
                source_address=source_address,
                detail=detail,
            )
            state = State.APPROVED if now_counting.met else State.PENDING
            if locked.state != state:
                locked.state = state
                locked.save(update_fields=["state", "updated_at"])
            if now_counting.met:
                notify.recovery_step(locked, "approved", actor=officer)
                notify.recovery_awaits_agent(locked)
            else:
                notify.recovery_step(locked, "approval", actor=officer)
    return _refresh(recovery, locked)


def recovery_reject(
    *,
    recovery: KeyRecoveryRequest,
    officer: User,
    reason: str,
    source_address: str | None = None,
) -> KeyRecoveryRequest:
    """Any officer but the key's holder (may_reject) stops it before it is performed, the
    officer who opened it included (a withdrawal)."""
    with _refusals_audited(
        "recovery.reject", actor=officer, target=recovery, source_address=source_address
    ):
        if not is_ra_officer(officer):
            raise NotPermitted(_("Only RA officers reject key recoveries."), refusal=NOT_AN_OFFICER)
        _check_in_reach(recovery.certificate, officer, refusal=OUT_OF_REACH_REJECT)
        reason = clean_text(reason, field="reason", empty=_("Say why the recovery is rejected."))
        with transaction.atomic():
            locked = _lock(recovery)
            if not may_reject(locked, officer.pk):
                raise NotPermitted(
                    _(
                        "This is the recovery of your own key: another RA officer decides "
                        "whether it goes ahead."
                    ),
                    refusal=OWN_KEY,
                )
            if locked.state not in (State.REQUESTED, State.PENDING, State.APPROVED):
                raise InvalidState(
                    # Translators: state is the recovery's state, e.g. "ready".
                    _("This recovery can no longer be rejected: it is %(state)s."),
                    params={"state": _state_lower(locked)},
                )
            _reject_locked(locked, officer=officer, reason=reason, source_address=source_address)
    return _refresh(recovery, locked)


# --- perform --------------------------------------------------------------------------


# Secrets stay out of error reports (README.md, "Key recovery"): every local here and in
# the frames below, because Django applies the nearest decorated caller's list to callee
# frames, and the x509 code holds the password, the key and the one-time password under
# names of its own.
@sensitive_variables()
def _open_agent_pkcs12(
    data: bytes, password: str, *, agent_user: User
) -> tuple[KeyRecoveryAgent, Any, keys.PrivateKey]:
    """The registered agent, its certificate and key from the agent's own PKCS#12."""
    if len(data) > MAX_AGENT_PKCS12_BYTES:
        raise PolicyViolation(
            _("The file is far larger than a key recovery agent's PKCS#12."),
            field="agent_pkcs12",
        )
    try:
        key, certificate, _chain = pkcs12.load_pkcs12(data, password)
    except X509Error:
        raise PolicyViolation(
            _(
                "The agent PKCS#12 could not be opened: the password is wrong or the file is "
                "damaged. Nothing was changed."
            ),
            field="agent_password",
        ) from None
    agent = KeyRecoveryAgent.objects.filter(
        fingerprint_sha256=pkcs7.fingerprint(certificate, "sha256")
    ).first()
    if agent is None:
        raise PolicyViolation(
            # Translators: subject is a certificate's distinguished name (CN=...,O=...).
            _(
                "This PKCS#12 holds the certificate of %(subject)s, which is not a registered "
                "key recovery agent. Nothing was changed."
            ),
            params={"subject": certificate.subject.rfc4514_string()},
            field="agent_pkcs12",
        )
    if agent.user_id is not None and agent.user_id != agent_user.pk:
        raise NotPermitted(
            _(
                "The agent certificate %(agent)s belongs to another account; each agent uses "
                "their own. Nothing was changed."
            ),
            params={"agent": agent.name},
            field="agent_pkcs12",
        )
    return agent, certificate, key


def _check_may_perform(current: KeyRecoveryRequest, agent_user: User) -> None:
    """Everything but the agent's key: their scope, a third person, the quorum, the
    recipient."""
    _check_in_reach(current.certificate, agent_user, refusal=OUT_OF_REACH_PERFORM)
    _check_performable(current)
    _check_agent_independent(current, agent_user)
    _check_recipient_still_officer(current)
    _check_delegate_recipient(current)


def _current_for_agent(recovery: KeyRecoveryRequest, agent_user: User) -> KeyRecoveryRequest:
    if not is_key_recovery_agent(agent_user):
        raise NotPermitted(
            _("Only key recovery agents carry out recoveries."), refusal=NOT_AN_AGENT
        )
    current = KeyRecoveryRequest.objects.select_related("certificate__ca").get(pk=recovery.pk)
    _check_may_perform(current, agent_user)
    return current


def usable_agents(archived: ArchivedKey, agent_user: User) -> list[KeyRecoveryAgent]:
    """The archive's recipients this account may decrypt with: its own agent certificates
    and those registered for no account (as _open_agent_pkcs12 allows)."""
    return [a for a in archived.recipients.all() if a.user_id in (None, agent_user.pk)]


def _usable_agents_or_refuse(archived: ArchivedKey, agent_user: User) -> list[KeyRecoveryAgent]:
    usable = usable_agents(archived, agent_user)
    if not usable:
        names = ", ".join(a.name for a in archived.recipients.all())
        raise NotPermitted(
            # Translators: agents lists agent certificates' names, comma-separated.
            _(
                "This key was archived only to agent certificates of other accounts "
                "(%(agents)s); one of them must carry it out. Nothing was changed."
            ),
            params={"agents": names or NO_REGISTERED_AGENT},
            field="recovered_key",
        )
    return usable


@sensitive_variables()  # as _open_agent_pkcs12
def recovery_perform(
    *,
    recovery: KeyRecoveryRequest,
    agent_user: User,
    agent_pkcs12: bytes,
    agent_password: str,
    source_address: str | None = None,
) -> tuple[KeyRecoveryRequest, str]:
    """Decrypt the archive with the agent's key and re-wrap it under a one-time password.

    The agent's PKCS#12 and password are used here, in memory, and kept nowhere. The
    one-time password is returned to be shown once; it exists nowhere else.
    """
    with _refusals_audited(
        "recovery.perform", actor=agent_user, target=recovery, source_address=source_address
    ):
        current = _current_for_agent(recovery, agent_user)
        agent, agent_certificate, agent_key = _open_agent_pkcs12(
            agent_pkcs12, agent_password, agent_user=agent_user
        )
        certificate = current.certificate
        archived = ArchivedKey.objects.get(certificate=certificate)
        recipients = list(archived.recipients.all())
        if agent not in recipients:
            names = ", ".join(a.name for a in recipients)
            raise PolicyViolation(
                # Translators: agents lists agent certificates' names, comma-separated.
                _(
                    "This key was not archived to %(agent)s; it can be recovered with the "
                    "PKCS#12 of: %(agents)s. Nothing was changed."
                ),
                params={"agent": agent.name, "agents": names or NO_REGISTERED_AGENT},
                field="agent_pkcs12",
            )
        try:
            key = cms.recover_private_key(
                bytes(archived.envelope),
                recipient_certificate=agent_certificate,
                recipient_key=agent_key,
            )
        except X509Error as exc:
            raise PolicyViolation.from_x509(exc, field="agent_pkcs12") from None
        del agent_key  # Python cannot wipe memory; dropping the references is what we can do.
        if key.public_key() != certificate.certificate.public_key():
            raise InvalidState(
                _(
                    "The archive holds a key that does not belong to this certificate; nothing "
                    "was recovered. Report this to the PKI administrators."
                )
            )
        return _wrap_for_recipient(
            recovery, current, key, agent=agent, agent_user=agent_user,
            source_address=source_address, detail={},
        )  # fmt: skip


def recovery_archive_export(
    *, recovery: KeyRecoveryRequest, agent_user: User, source_address: str | None = None
) -> tuple[KeyRecoveryRequest, bytes]:
    """The archive itself (DER CMS EnvelopedData) for an agent who decrypts it offline, so
    that their agent key never reaches this server: only once the recovery may be carried
    out, and only to an agent who may carry it out and holds one of its recipients' keys.
    It is encrypted to the agents, so it says nothing to anyone else; audited all the same
    (recovery.export), as the step that starts an offline recovery."""
    with _refusals_audited(
        "recovery.export", actor=agent_user, target=recovery, source_address=source_address
    ):
        current = _current_for_agent(recovery, agent_user)
        archived = ArchivedKey.objects.get(certificate=current.certificate)
        usable = _usable_agents_or_refuse(archived, agent_user)
        audit_record(
            action="recovery.export",
            actor=agent_user,
            target=current,
            source_address=source_address,
            detail={
                "agents": [a.name for a in usable],
                "agent_fingerprints": [a.fingerprint_sha256 for a in usable],
            },
        )
    return current, bytes(archived.envelope)


@sensitive_variables()  # as _open_agent_pkcs12
def recovery_perform_offline(
    *,
    recovery: KeyRecoveryRequest,
    agent_user: User,
    key_file: bytes,
    key_passphrase: str,
    source_address: str | None = None,
) -> tuple[KeyRecoveryRequest, str]:
    """Finish a recovery with the key an agent decrypted from the exported archive on their
    own machine (recovery_archive_export): the same checks as recovery_perform, the key
    must be the certificate's, and it is re-wrapped under a one-time password alike. The
    agent's own key never came here; the recovered one is used in memory, kept nowhere."""
    with _refusals_audited(
        "recovery.perform", actor=agent_user, target=recovery, source_address=source_address
    ):
        current = _current_for_agent(recovery, agent_user)
        certificate = current.certificate
        archived = ArchivedKey.objects.get(certificate=certificate)
        usable = _usable_agents_or_refuse(archived, agent_user)
        if len(key_file) > MAX_AGENT_PKCS12_BYTES:
            raise PolicyViolation(
                _("The file is far larger than a private key."), field="recovered_key"
            )
        try:
            key = keys.load_private_key(
                key_file, key_passphrase.encode("utf-8") if key_passphrase else None
            )
        except X509Error as exc:
            raise PolicyViolation(
                # Translators: problem is a whole sentence saying why the key file was refused.
                _("%(problem)s Nothing was changed."),
                params={"problem": PolicyViolation.from_x509(exc)},
                field="recovered_key",
            ) from None
        if key.public_key() != certificate.certificate.public_key():
            raise PolicyViolation(
                _(
                    "This is not the key of certificate %(serial)s: its public key differs. "
                    "Upload what `openssl cms -decrypt` wrote from this recovery's archive. "
                    "Nothing was changed."
                ),
                params={"serial": certificate.serial},
                field="recovered_key",
            )
        # Whose key opened it cannot be known here; one usable certificate of this
        # account's own is named (as recovery_perform names the one used), else none.
        own = [a for a in usable if a.user_id == agent_user.pk]
        agent = own[0] if len(own) == 1 else (usable[0] if len(usable) == 1 else None)
        return _wrap_for_recipient(
            recovery, current, key, agent=agent, agent_user=agent_user,
            source_address=source_address, detail={"offline": True},
        )  # fmt: skip


@sensitive_variables()  # as _open_agent_pkcs12
def _wrap_for_recipient(
    recovery: KeyRecoveryRequest,
    current: KeyRecoveryRequest,
    key: keys.PrivateKey,
    *,
    agent: KeyRecoveryAgent | None,
    agent_user: User,
    source_address: str | None,
    detail: dict[str, Any],
) -> tuple[KeyRecoveryRequest, str]:
    """The recovered key, its certificate and the chain as a PKCS#12 under a one-time
    password, stored for the one download; the password is returned to be shown once."""
    certificate = current.certificate
    password = one_time_password()
    bundle = pkcs12.export_pkcs12(
        key=key,
        certificate=certificate.certificate,
        chain=[ca.certificate for ca in certificate.ca.chain()],
        password=password,
        friendly_name=f"{certificate.common_name} (recovered)",
        fmt=pkcs12.Pkcs12Format(current.pkcs12_format),
    )
    del key
    with transaction.atomic():
        # As recovery_download: a shared mailbox's row first, then the recovery's, and
        # the delegates read again under it. A delegate's removal either commits before
        # this reads them (refused: nothing recovered for someone just removed) or
        # waits until this has committed (and the download is refused instead).
        services.lock_mailbox(certificate.mailbox_id)
        locked = _lock(recovery)
        _check_may_perform(locked, agent_user)
        now = timezone.now()
        locked.state = State.READY
        locked.agent = agent
        locked.performed_by = agent_user
        locked.performed_at = now
        locked.bundle = bundle
        locked.download_expires_at = now + timedelta(
            minutes=settings.PKIPORTAL_RECOVERY_DOWNLOAD_MINUTES
        )
        locked.save(
            update_fields=["state", "agent", "performed_by", "performed_at", "bundle",
                           "download_expires_at", "updated_at"]
        )  # fmt: skip
        audit_record(
            action="recovery.perform",
            actor=agent_user,
            target=locked,
            source_address=source_address,
            detail={
                "agent": agent.name if agent is not None else "",
                "agent_fingerprint": agent.fingerprint_sha256 if agent is not None else "",
                **detail,
                "format": locked.pkcs12_format,
                "download_until": locked.download_expires_at,
            },
        )
        notify.recovery_step(locked, "ready", actor=agent_user)
    return _refresh(recovery, locked), password


class AgentConflict(enum.Enum):
    """Why a key recovery agent may not carry out this recovery: each value is the short
    reason the recovery page gives (``text``: in the reader's language); the refusal says
    more (_AGENT_REFUSALS)."""

    OWNER = "it is your own key"
    RECIPIENT = "you receive the key"
    OPENER = "you opened it"
    APPROVER = "you approved it"

    @property
    def text(self) -> str:
        return str(_CONFLICT_TEXT[self])


_CONFLICT_TEXT: dict[AgentConflict, Message] = {
    # Translators: why a key recovery agent may not carry out this recovery.
    AgentConflict.OWNER: _("it is your own key"),
    # Translators: why a key recovery agent may not carry out this recovery.
    AgentConflict.RECIPIENT: _("you receive the key"),
    # Translators: why a key recovery agent may not carry out this recovery.
    AgentConflict.OPENER: _("you opened it"),
    # Translators: why a key recovery agent may not carry out this recovery.
    AgentConflict.APPROVER: _("you approved it"),
}

_AGENT_REFUSALS: dict[AgentConflict, Message] = {
    AgentConflict.OWNER: _(
        "This is your own key, so another key recovery agent must recover it: nobody carries "
        "out the recovery of their own key."
    ),
    AgentConflict.RECIPIENT: _(
        "You are the one who receives this key, so another key recovery agent must recover "
        "it: nobody holds both the file and its password alone."
    ),
    AgentConflict.OPENER: _(
        "You opened this recovery, so another key recovery agent must carry it out: opening, "
        "approving and recovering a key take different people."
    ),
    AgentConflict.APPROVER: _(
        "You approved this recovery, so another key recovery agent must carry it out: "
        "opening, approving and recovering a key take different people."
    ),
}


def agent_conflict(
    recovery: KeyRecoveryRequest, user_pk: int, approver_pks: Iterable[int] | None = None
) -> AgentConflict | None:
    """The agent is a third person: not the key's owner, not the recipient, not the opener,
    not an approver. The owner matters where the key goes to the officer who opened the
    recovery: a key under legal hold must not be recovered by the person it is held from.
    The one rule for the service and for what the recovery page offers; ``approver_pks``
    when the caller has the approvals already."""
    if user_pk == recovery.certificate.owner_id or _delegate_of_mailbox(recovery, user_pk):
        return AgentConflict.OWNER
    if user_pk == recovery.recipient_id:
        return AgentConflict.RECIPIENT
    if user_pk == recovery.requested_by_id:
        return AgentConflict.OPENER
    approved = (
        user_pk in set(approver_pks)
        if approver_pks is not None
        else recovery.approvals.filter(officer_id=user_pk).exists()
    )
    return AgentConflict.APPROVER if approved else None


def _check_agent_independent(recovery: KeyRecoveryRequest, agent_user: User) -> None:
    conflict = agent_conflict(recovery, agent_user.pk)
    if conflict is not None:
        own = conflict == AgentConflict.OWNER
        raise NotPermitted(_AGENT_REFUSALS[conflict], refusal=OWN_KEY if own else DUAL_CONTROL)


def _check_recipient_still_officer(recovery: KeyRecoveryRequest) -> None:
    lapse = _delivered_to_former_officer(recovery)
    if lapse is not None:
        officer = recovery.requested_by  # set: a recovery for the requester was opened
        name = (officer.get_full_name() or officer.get_username()) if officer else ""
        if lapse == ApprovalLapse.OUT_OF_SCOPE:
            message = _(
                "%(name)s opened this recovery to receive the key as an RA officer and the "
                "key's owner is now outside their officer scope, so it cannot be carried out. "
                "Reject it; an officer can open a new one. Nothing was changed."
            )
        else:
            message = _(
                "%(name)s opened this recovery to receive the key as an RA officer and no "
                "longer is one, so it cannot be carried out. Reject it; an officer can open a "
                "new one. Nothing was changed."
            )
        # Translators: stands for the officer's name when the account is gone.
        raise InvalidState(message, params={"name": name or _("An officer")})


def holds_key(recovery: KeyRecoveryRequest, user_pk: int) -> bool:
    """The key's owner, or a delegate of the shared mailbox it is: someone who may not
    open, accept, approve, reject or carry out its recovery (what the recovery page offers
    follows)."""
    return holds_certificate_key(recovery.certificate, user_pk)


def holds_certificate_key(certificate: Certificate, user_pk: int) -> bool:
    """holds_key() before there is a recovery: whether this person may open one."""
    return user_pk == certificate.owner_id or _delegate_of(certificate, user_pk)


def may_reject(recovery: KeyRecoveryRequest, user_pk: int) -> bool:
    """An officer may stop a recovery unless it is of their own key: a legal hold is not
    its holder's to end (README, "When the holder asks"). A holder calls their own ask off
    by withdrawing it (recovery_withdraw, audited as such), officer or not."""
    return not holds_key(recovery, user_pk)


def _delegate_of_mailbox(recovery: KeyRecoveryRequest, user_pk: int) -> bool:
    return _delegate_of(recovery.certificate, user_pk)


def _delegate_of(certificate: Certificate, user_pk: int) -> bool:
    """A delegate of the shared mailbox whose key this is: one of its holders, so never an
    accepting or approving officer, nor its agent (dual control, as for an owner)."""
    mailbox_id = certificate.mailbox_id
    return mailbox_id is not None and (
        SharedMailbox.objects.filter(pk=mailbox_id, delegates__pk=user_pk).exists()
    )


def _check_delegate_recipient(recovery: KeyRecoveryRequest, *, downloading: bool = False) -> None:
    """A shared mailbox's key goes to the delegate who asked for it, and only while they
    still are a delegate of the active mailbox: removed meanwhile, nothing is released."""
    certificate = recovery.certificate
    if certificate.mailbox_id is None or recovery.deliver_to != KeyRecoveryRequest.Recipient.OWNER:
        return
    asker = recovery.asked_by
    if asker is None or not services.is_delegate(asker, certificate.mailbox):
        cls = NotPermitted if downloading else PolicyViolation
        raise cls(
            _(
                "The delegate who asked for this shared mailbox's key is no longer one of its "
                "delegates (or the mailbox was deactivated), so the key is not released to "
                "them. Reject this request; nothing was changed."
            )
        )


def may_be_performed(recovery: KeyRecoveryRequest, found: Quorum) -> bool:
    """Open for approval, and the approvals that count now make the quorum: the stored
    state records the quorum as the last approval found it, not as the approvers' roles
    are now (an approver who lost the role and got it back counts again)."""
    return recovery.state in (State.PENDING, State.APPROVED) and found.met


def _check_performable(recovery: KeyRecoveryRequest) -> None:
    if recovery.state == State.REQUESTED:
        raise InvalidState(
            _("The key's holder asked for this recovery and no RA officer has accepted it yet.")
        )
    if recovery.state in (State.PENDING, State.APPROVED):
        found = quorum(recovery)
        if may_be_performed(recovery, found):
            return
        raise _short_of_quorum(found)
    raise InvalidState(
        # Translators: state is the recovery's state, e.g. "rejected".
        _("This recovery cannot be carried out: it is %(state)s."),
        params={"state": _state_lower(recovery)},
    )


def left_stranded(recovery: KeyRecoveryRequest, found: Quorum) -> str | None:
    """Why officer scopes leave nobody to take this open recovery's next step (accept,
    approve, carry out), in words for an officer's page; None when someone may, or when
    the scopes are not what stops it. By role and scope only: whether an agent also holds
    an agent certificate the archive is encrypted to is not asked."""
    certificate = recovery.certificate
    approver_pks = {a.officer_id for a in (*found.counted, *(a for a, _l in found.lapsed))}
    if recovery.state == State.REQUESTED:
        needed = 1
        stranded = ngettext_lazy(
            "Officer scopes leave too few people to finish this recovery: it needs "
            "%(needed)d RA officer whose scope covers the key's owner to accept it, and "
            "%(can)d can. An administrator can widen an officer scope; otherwise reject it.",
            "Officer scopes leave too few people to finish this recovery: it needs "
            "%(needed)d RA officers whose scope covers the key's owner to accept it, and "
            "%(can)d can. An administrator can widen an officer scope; otherwise reject it.",
            needed,
        )
        people = _unconflicted(User.objects.filter(ra_officers()), recovery, approver_pks)
    elif recovery.state in (State.PENDING, State.APPROVED) and not found.met:
        needed = found.missing
        stranded = ngettext_lazy(
            "Officer scopes leave too few people to finish this recovery: it needs "
            "%(needed)d RA officer whose scope covers the key's owner to approve it, and "
            "%(can)d can. An administrator can widen an officer scope; otherwise reject it.",
            "Officer scopes leave too few people to finish this recovery: it needs "
            "%(needed)d RA officers whose scope covers the key's owner to approve it, and "
            "%(can)d can. An administrator can widen an officer scope; otherwise reject it.",
            needed,
        )
        people = _unconflicted(
            User.objects.filter(ra_officers()).exclude(pk__in=[recovery.requested_by_id]),
            recovery,
            approver_pks,
        )
    elif recovery.state in (State.PENDING, State.APPROVED):
        needed = 1
        stranded = ngettext_lazy(
            "Officer scopes leave too few people to finish this recovery: it needs "
            "%(needed)d key recovery agent whose scope covers the key's owner to carry it "
            "out, and %(can)d can. An administrator can widen an officer scope; otherwise "
            "reject it.",
            "Officer scopes leave too few people to finish this recovery: it needs "
            "%(needed)d key recovery agents whose scope covers the key's owner to carry it "
            "out, and %(can)d can. An administrator can widen an officer scope; otherwise "
            "reject it.",
            needed,
        )
        agents = User.objects.filter(
            Q(is_superuser=True) | Q(groups__name=settings.PKIPORTAL_KRA_GROUP), is_active=True
        )
        people = [
            p
            for p in _unconflicted(agents, recovery, approver_pks)
            if agent_conflict(recovery, p.pk, approver_pks) is None
        ]
    else:
        return None
    if len(people) < needed:
        return None  # too few whatever the scopes: not theirs to explain
    reached = reaches((p.pk, p.is_superuser) for p in people)
    covering = [p for p in people if reached[p.pk].covers_certificate(certificate)]
    if len(covering) >= needed:
        return None
    return str(stranded) % {"needed": needed, "can": len(covering)}


def _unconflicted(
    people: models.QuerySet[User], recovery: KeyRecoveryRequest, approver_pks: set[int]
) -> list[User]:
    """The active ones who neither hold the key nor approved it (read once, distinct)."""
    certificate = recovery.certificate
    found = people.exclude(pk__in=[certificate.owner_id, recovery.asked_by_id, *approver_pks])
    if certificate.mailbox_id is not None:
        found = found.exclude(delegated_mailboxes=certificate.mailbox_id)
    return list(found.distinct().only("pk", "is_superuser"))


# --- download and expiry --------------------------------------------------------------


def recovery_download(
    *,
    recovery: KeyRecoveryRequest,
    user: User,
    source_address: str | None = None,
) -> tuple[KeyRecoveryRequest, bytes]:
    """Hand the named person the encrypted PKCS#12, once; the stored copy is wiped."""
    expired = False
    with _refusals_audited(
        "recovery.download", actor=user, target=recovery, source_address=source_address
    ):
        if user.pk != recovery.recipient_id:
            raise NotPermitted(
                # Translators: recipient is a name with a role, e.g. "Ann Lee (the key owner)".
                _("Only %(recipient)s may download this key."),
                params={"recipient": lazy(recipient_name, str)(recovery)},
            )
        with transaction.atomic():
            # A shared mailbox's row first (as mailboxes.mailbox_update takes it, before the
            # delegates change): removing this delegate either commits before the check
            # below reads the delegates, or waits until the download has committed.
            services.lock_mailbox(recovery.certificate.mailbox_id)
            locked = _lock(recovery)
            lapse = _delivered_to_former_officer(locked)
            if lapse is not None:
                if lapse == ApprovalLapse.OUT_OF_SCOPE:
                    raise NotPermitted(
                        _(
                            "This key was recovered for you as an RA officer, and its owner is "
                            "now outside the people your officer scope covers, so you may not "
                            "download it. Nothing was downloaded."
                        )
                    )
                raise NotPermitted(
                    _(
                        "This key was recovered for you as an RA officer, and you no longer "
                        "are one, so you may not download it. Nothing was downloaded."
                    )
                )
            _check_delegate_recipient(locked, downloading=True)
            now = timezone.now()
            if locked.state == State.READY and _window_closed(locked, now):
                _expire(locked)
                expired = True
            elif locked.state != State.READY:
                raise _no_download_because(locked)
            else:
                _check_approvals_still_count(locked)
                assert locked.bundle is not None  # recovery_bundle_only_while_ready
                bundle = bytes(locked.bundle)
                locked.bundle = None
                locked.state = State.DOWNLOADED
                locked.downloaded_at = now
                locked.save(update_fields=["bundle", "state", "downloaded_at", "updated_at"])
                audit_record(
                    action="recovery.download",
                    actor=user,
                    target=locked,
                    source_address=source_address,
                    detail={"format": locked.pkcs12_format},
                )
                notify.recovery_step(locked, "downloaded", actor=user)
        if expired:
            # Outside the block above: the wipe is committed before the refusal is raised.
            raise _no_download_because(locked)
    return _refresh(recovery, locked), bundle


def _check_approvals_still_count(recovery: KeyRecoveryRequest) -> None:
    """The key leaves only while the approvals it was recovered on still count. Only an
    approver's lost role refuses it: a quorum raised after the recovery was carried out
    does not (nobody can approve a recovered key, and the approvals met the rule then).
    Refused, the copy waits: the approver's role back, it can be downloaded in its window."""
    found = quorum(recovery)
    if found.lapsed and not found.met:
        until = recovery.download_expires_at
        stand = ngettext_lazy(
            # Translators: lapses lists approvals with why each lapsed, e.g. "Oscar
            # Second's approval (the approver is no longer an RA officer)".
            "The approvals this key was recovered on no longer stand, so it is not released: "
            "%(lapses)s no longer counts.",
            "The approvals this key was recovered on no longer stand, so it is not released: "
            "%(lapses)s no longer count.",
            len(found.lapsed),
        )
        if found.scope_lapsed:
            # Translators: until is a date and time, e.g. "2026-05-01 14:30".
            then = _(
                "If the approver is an active RA officer whose officer scope covers the key's "
                "owner again before the download window closes (%(until)s UTC), it can be "
                "downloaded; otherwise the copy is deleted then and a new recovery must be "
                "opened. Nothing was downloaded."
            )
        else:
            # Translators: until is a date and time, e.g. "2026-05-01 14:30".
            then = _(
                "If the approver is an active RA officer again before the download window "
                "closes (%(until)s UTC), it can be downloaded; otherwise the copy is deleted "
                "then and a new recovery must be opened. Nothing was downloaded."
            )
        raise InvalidState(
            format_lazy("{} {}", stand, then),
            params={"lapses": _lapses_lazily(found), "until": f"{until:%Y-%m-%d %H:%M}"},
        )


def _window_closed(recovery: KeyRecoveryRequest, now: datetime) -> bool:
    # A ready row always has an end (a database constraint); a missing one counts as closed.
    return recovery.download_expires_at is None or recovery.download_expires_at <= now


def _no_download_because(recovery: KeyRecoveryRequest) -> InvalidState:
    when = recovery.downloaded_at or recovery.download_expires_at
    if recovery.state == State.DOWNLOADED:
        return InvalidState(
            # Translators: when is a date and time, e.g. "2026-05-01 14:30".
            _(
                "The recovered key was already downloaded (%(when)s UTC); it can be downloaded "
                "only once. Open a new recovery if it is needed again."
            ),
            params={"when": f"{when:%Y-%m-%d %H:%M}"},
        )
    if recovery.state == State.EXPIRED:
        return InvalidState(
            # Translators: when is a date and time, e.g. "2026-05-01 14:30".
            _(
                "The download window closed at %(when)s UTC and the recovered copy was deleted. "
                "Open a new recovery if the key is still needed."
            ),
            params={"when": f"{when:%Y-%m-%d %H:%M}"},
        )
    if recovery.state == State.REJECTED:
        return InvalidState(_("This recovery was rejected; there is nothing to download."))
    if recovery.state == State.WITHDRAWN:
        return InvalidState(_("This recovery was withdrawn; there is nothing to download."))
    return InvalidState(_("The key has not been recovered yet; there is nothing to download."))


def _expire(locked: KeyRecoveryRequest) -> None:
    locked.bundle = None
    locked.state = State.EXPIRED
    locked.save(update_fields=["bundle", "state", "updated_at"])
    audit_record(
        action="recovery.expire",
        target=locked,
        detail={"download_until": locked.download_expires_at},
    )
    notify.recovery_step(locked, "expired")


def recovery_expire_due(*, now: datetime | None = None) -> int:
    """Wipe recovered keys whose download window closed (beat, every few minutes)."""
    now = now or timezone.now()
    due = KeyRecoveryRequest.objects.filter(state=State.READY, download_expires_at__lte=now)
    wiped = 0
    for pk in list(due.values_list("pk", flat=True)):
        with transaction.atomic():
            locked = (
                KeyRecoveryRequest.objects.select_for_update(of=("self",))
                .select_related("certificate", "requested_by")
                .get(pk=pk)
            )
            if locked.state == State.READY and _window_closed(locked, now):
                _expire(locked)
                wiped += 1
    return wiped
