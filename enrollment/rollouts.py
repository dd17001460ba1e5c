"""Roll-outs: an RA officer invites many people at once to collect a certificate.

Each invited person gets an ordinary CertificateRequest, already approved by the officer
(audited as ``request.approve``, as an approval in the queue is) for a portal-generated
key: they collect it on the request's page like any approved request (request_collect),
or decline by withdrawing it (request_withdraw). No new issuance path.

Built for thousands of people per roll-out: the people are resolved with a few bulk
queries, the rows written with bulk inserts in one transaction, the audit events chained
in batches, and the mail sent by Celery tasks queued after the commit.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar, cast

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models, transaction
from django.db.models import Count, F
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.functional import lazy
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext_lazy

from accounts.models import EMAIL_KEY, User
from enrollment import audit, hotsql, services
from enrollment.audit import audit_record
from enrollment.exceptions import (
    ConfigurationError,
    InvalidState,
    Message,
    NotPermitted,
    PolicyViolation,
    RateLimited,
)
from enrollment.models import (
    Certificate,
    CertificateRequest,
    CertificateTemplate,
    Rollout,
    RolloutInvitation,
    SharedMailbox,
)
from enrollment.permissions import OUT_OF_SCOPE, Decider
from enrollment.scopes import EVERYONE, Reach, prime_groups
from enrollment.x509 import keys
from enrollment.x509.mail_domains import address_permitted, issuer_permits
from enrollment.x509.names import printable
from pkiportal import plurals
from pkiportal.i18n import mid_sentence_when_read

logger = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

# Rows per IN list and per bulk insert: below SQLite's 999 bound parameters, and audit
# events chained per batch stay well below PostgreSQL's 65,535 (11 columns each).
CHUNK = 900
AUDIT_BATCH = 1000
# Rows per bulk insert: Django lowers it where the backend binds fewer parameters (SQLite);
# on PostgreSQL a request row has ~20 columns, so 1,000 stay below 65,535 parameters.
INSERT_BATCH = 1000
# Invitations per mail task; sends an address may be refused before the hourly retry
# gives up on it; how long a queued invitation is left to its task before it is retried.
MAIL_CHUNK = 200
MAIL_ATTEMPTS = 5
MAIL_RETRY_AFTER = timedelta(minutes=30)
# Entries of a pasted list are separated by line breaks, commas, semicolons or blanks
# (user names and addresses hold none of them).
SEPARATORS = re.compile(r"[\s,;]+")
MAX_ENTRY_LENGTH = 254  # the longest e-mail address (RFC 5321 path limit)


class Reason:
    """Why a person named by the officer is not invited (codes kept on the roll-out)."""

    INVALID = "invalid"
    UNKNOWN = "unknown"
    AMBIGUOUS = "ambiguous"
    DUPLICATE = "duplicate"
    INACTIVE = "inactive"
    YOURSELF = "yourself"
    NO_EMAIL = "no_email"
    BAD_ADDRESS = "bad_address"
    OUTSIDE_DOMAINS = "outside_domains"
    SHARED_MAILBOX = "shared_mailbox"
    ADDRESS_SHARED = "address_shared"
    NOT_PERMITTED = "not_permitted"
    HOLDS_VALID = "holds_valid"
    OPEN_REQUEST = "open_request"
    AT_LIMIT = "at_limit"
    # Not a Skip of one person: how many the officer's scope leaves out, never whom
    # (Resolution.outside_scope; kept on the roll-out as one item with its "count").
    OUTSIDE_SCOPE = "outside_scope"

    # Translators: why a person named for a roll-out is not invited; shown after their
    # name or after a count ("3 no such account").
    # Lazy texts, worded in the reader's language wherever they are shown (typed as the
    # str they stand in for, which pages and rows take them as).
    LABELS: dict[str, str] = cast(
        dict[str, str],
        {
            INVALID: _("not a user name or e-mail address"),
            UNKNOWN: _("no such account"),
            AMBIGUOUS: _("more than one account has this address: name the user instead"),
            DUPLICATE: _("named more than once"),
            INACTIVE: _("the account is deactivated"),
            YOURSELF: _("you cannot approve a request of your own"),
            NO_EMAIL: _("the account has no e-mail address"),
            BAD_ADDRESS: _(
                "the account's address holds white space, a control or a non-ASCII character: an "
                "administrator must correct it"
            ),
            OUTSIDE_DOMAINS: _(
                "the account's address is outside the mail domains the CA issues for"
            ),
            SHARED_MAILBOX: _(
                "the account's address is a shared mailbox's: its delegates enrol for the mailbox, "
                "and an administrator must correct the account's address"
            ),
            ADDRESS_SHARED: _(
                "another account has the same address: an administrator must correct one of them"
            ),
            NOT_PERMITTED: _("may not use this template"),
            HOLDS_VALID: _("already holds a valid certificate of this template"),
            OPEN_REQUEST: _("already has an open request for this template"),
            AT_LIMIT: _("at the limit of certificates and requests for this template"),
            OUTSIDE_SCOPE: _("outside your officer scope"),
        },
    )


@dataclass(frozen=True)
class Skip:
    entry: str  # as named (escaped), or the user name for a group member
    reason: str

    @property
    def label(self) -> str:
        return str(Reason.LABELS[self.reason])


@dataclass
class Resolution:
    """Who a roll-out would invite, and who not and why: the preview, and what it stores.
    People outside the officer's scope are counted (``outside_scope``), never listed: the
    officer may not see who they are, nor why else they would not be invited."""

    eligible: list[User] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    outside_scope: int = 0
    scope: str = ""  # the officer's Reach.describe(), to say whose scope left them out

    def counts(self) -> dict[str, int]:
        counts = dict(Counter(skip.reason for skip in self.skipped))
        if self.outside_scope:
            counts[Reason.OUTSIDE_SCOPE] = self.outside_scope
        return counts

    @property
    def skipped_count(self) -> int:
        return len(self.skipped) + self.outside_scope

    def kept_skipped(self) -> list[dict[str, object]]:
        """What the roll-out keeps of who was not invited: those outside the scope as one
        item with their count (first, so it is always kept), then the first named."""
        kept: list[dict[str, object]] = []
        if self.outside_scope:
            kept.append({"entry": "", "reason": Reason.OUTSIDE_SCOPE, "count": self.outside_scope})
        kept += [{"entry": s.entry, "reason": s.reason} for s in self.skipped]
        return kept[: Rollout.SKIPPED_KEPT]


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def parse_people(text: str | Sequence[str]) -> list[str]:
    """The entries of a pasted list, in order; empty ones dropped. A list (the API's) is
    taken entry by entry: "alice bob" there is one name that matches no one, not two."""
    if isinstance(text, str):
        entries = [entry for entry in SEPARATORS.split(text or "") if entry]
    else:
        entries = [entry.strip() for entry in text if entry.strip()]
    limit = settings.PKIPORTAL_ROLLOUT_MAX_PEOPLE
    if len(entries) > limit:
        raise PolicyViolation(
            _(
                "The list names %(count)d people; a roll-out invites at most %(limit)d "
                "(PKIPORTAL_ROLLOUT_MAX_PEOPLE). Split it into several roll-outs."
            ),
            params={"count": len(entries), "limit": limit},
            field="people",
        )
    return entries


def _is_plain(entry: str) -> bool:
    """A user name or address is printable and has no control or format character."""
    return len(entry) <= MAX_ENTRY_LENGTH and all(
        character.isprintable() and unicodedata.category(character)[0] not in "CZ"
        for character in entry
    )


def _accounts_by(column: str, values: list[str]) -> dict[str, list[User]]:
    """Accounts whose user name or address is one of ``values`` (lower case), ignoring case."""
    found: dict[str, list[User]] = {}
    for chunk in _chunks(values):
        for user in User.objects.annotate(key=Lower(column)).filter(key__in=chunk).order_by("pk"):
            found.setdefault(user.key, []).append(user)
    return found


def _named(entries: list[str], resolution: Resolution) -> list[tuple[str, User]]:
    """Map pasted entries to accounts; what maps to none (or two) goes to ``skipped``."""
    plain = [(entry, entry.lower()) for entry in entries if _is_plain(entry)]
    addresses = _accounts_by("email", sorted({key for _e, key in plain if "@" in key}))
    # Every entry is looked up as a user name too: where sign-in names look like addresses
    # (LDAP, single sign-on), "carol@example.com" may be Carol's name and someone else's
    # address, and must then be refused as ambiguous, not given to whoever has the address.
    names = _accounts_by("username", sorted({key for _e, key in plain}))
    named: list[tuple[str, User]] = []
    for entry in entries:
        if not _is_plain(entry):
            resolution.skipped.append(Skip(printable(entry[:MAX_ENTRY_LENGTH]), Reason.INVALID))
            continue
        key = entry.lower()
        matches = names.get(key, [])
        if "@" in key:
            by_name = {user.pk for user in matches}
            matches = matches + [u for u in addresses.get(key, []) if u.pk not in by_name]
        elif len(matches) > 1:
            exact = [user for user in matches if user.get_username() == entry]
            matches = exact or matches
        if not matches:
            resolution.skipped.append(Skip(entry, Reason.UNKNOWN))
        elif len(matches) > 1:
            resolution.skipped.append(Skip(entry, Reason.AMBIGUOUS))
        else:
            named.append((entry, matches[0]))
    return named


def rollout_resolve(
    *,
    officer: User,
    template: CertificateTemplate,
    group: Group | None = None,
    people: str | Sequence[str] = "",
    lock: bool = False,
) -> Resolution:
    """Who the officer's group and list name, and which of them may be invited.

    Refused (nothing invited) only when the list is too long; every other problem is one
    person's and is reported for that person. ``lock`` locks the candidates' rows first
    (rollout_create, in its transaction).
    """
    reach = _approves(officer, template).reach
    resolution = Resolution()
    candidates: list[tuple[str, User]] = []
    if group is not None:
        candidates += [(u.get_username(), u) for u in group.user_set.order_by("pk")]
    candidates += _named(parse_people(people), resolution)
    if len({user.pk for _e, user in candidates}) > settings.PKIPORTAL_ROLLOUT_MAX_PEOPLE:
        raise PolicyViolation(
            _(
                "A roll-out invites at most %(limit)d people (PKIPORTAL_ROLLOUT_MAX_PEOPLE); "
                "split it into several."
            ),
            params={"limit": settings.PKIPORTAL_ROLLOUT_MAX_PEOPLE},
            field="people",
        )
    seen: set[int] = set()
    unique: list[tuple[str, User]] = []
    for entry, user in candidates:
        if user.pk in seen:
            resolution.skipped.append(Skip(entry, Reason.DUPLICATE))
        else:
            seen.add(user.pk)
            unique.append((entry, user))
    if not reach.everyone:
        # Before every other reason: why someone outside the scope would not be invited
        # (holds one already, deactivated) is as much theirs as who they are.
        if reach.group_ids:
            prime_groups(user for _e, user in unique)
        covered = [(entry, user) for entry, user in unique if reach.covers(user)]
        resolution.outside_scope = len(unique) - len(covered)
        resolution.scope = reach.describe()
        unique = covered
    ids = [user.pk for _e, user in unique]
    if lock:
        # Their enrolment locks, as request_submit takes its requester's (in id order): an
        # enrolment of one of them waits, so the limits read here stay true, and one that
        # counted without the lock does not issue on its counts (hotsql.issue_checked).
        hotsql.lock_people(ids)
    allowed_groups = list(template.allowed_groups.values_list("pk", flat=True))
    permitted: set[int] | None = None
    holders: set[int] = set()
    # Addresses of active shared mailboxes that an account has too (services.
    # mailbox_address_taken would refuse its collection, stranding the invitation).
    mailbox_addresses: set[str] = set()
    # Addresses more than one active account has (services.address_taken refuses them).
    shared_addresses: set[str] = set()
    open_requests: dict[int, int] = {}
    now = timezone.now()
    if allowed_groups:
        permitted = set()
    addresses = sorted({_address(user) for _e, user in unique} - {""})
    for address_chunk in _chunks(addresses):
        mailbox_addresses.update(
            SharedMailbox.objects.filter(email__in=address_chunk, is_active=True).values_list(
                "email", flat=True
            )
        )
        shared_addresses.update(
            User.objects.filter(is_active=True)
            .annotate(address=EMAIL_KEY)
            .filter(address__in=address_chunk)
            .values("address")
            .annotate(accounts=Count("pk"))
            .filter(accounts__gt=1)
            .values_list("address", flat=True)
        )
    for chunk in _chunks(ids):
        if permitted is not None:
            permitted.update(
                User.objects.filter(pk__in=chunk, groups__in=allowed_groups).values_list(
                    "pk", flat=True
                )
            )
        holders.update(
            Certificate.objects.valid(now)
            .filter(template=template, owner_id__in=chunk)
            .values_list("owner_id", flat=True)
        )
        open_requests.update(
            CertificateRequest.objects.filter(
                template=template,
                requester_id__in=chunk,
                state__in=(CertificateRequest.State.PENDING, CertificateRequest.State.APPROVED),
                mailbox__isnull=True,  # a delegate's request for a shared mailbox is not theirs
            )
            .values("requester_id")
            .annotate(n=Count("pk"))
            .values_list("requester_id", "n")
        )
    cap = settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE
    ca = template.issuing_from()
    for entry, user in unique:
        reason = None
        if not user.is_active:
            reason = Reason.INACTIVE
        elif user.pk == officer.pk:
            reason = Reason.YOURSELF
        elif not (user.email or "").strip():
            reason = Reason.NO_EMAIL
        elif services.address_unusable(_address(user)):
            reason = Reason.BAD_ADDRESS
        elif not address_permitted(user.email.strip(), settings.PKIPORTAL_MAIL_DOMAINS) or (
            ca is not None and not issuer_permits(ca.certificate, user.email.strip())
        ):
            # Collecting would be refused: by subject_for, or (503) by the CA's own name
            # constraints, narrower than the setting.
            reason = Reason.OUTSIDE_DOMAINS
        elif _address(user) in mailbox_addresses:
            reason = Reason.SHARED_MAILBOX
        elif _address(user) in shared_addresses:
            reason = Reason.ADDRESS_SHARED
        elif permitted is not None and user.pk not in permitted:
            reason = Reason.NOT_PERMITTED
        elif user.pk in holders:
            reason = Reason.HOLDS_VALID
        elif open_requests.get(user.pk, 0):
            reason = Reason.OPEN_REQUEST
        elif open_requests.get(user.pk, 0) + 1 > cap:  # PKIPORTAL_MAX_VALID_PER_TEMPLATE
            reason = Reason.AT_LIMIT
        if reason is None:
            resolution.eligible.append(user)
        else:
            resolution.skipped.append(Skip(entry, reason))
    return resolution


def _address(user: User) -> str:
    """As services.account_email: shared mailboxes' addresses are stored lower-case."""
    return services.account_email(user)


def default_key_algorithm(template: CertificateTemplate) -> keys.KeyAlgorithm:
    """The key type the enrolment page offers first for this template."""
    from enrollment.forms import ALGORITHM_ORDER

    return next(a for a in ALGORITHM_ORDER if a in template.key_algorithms)


def check_template(template: CertificateTemplate, key_algorithm: keys.KeyAlgorithm) -> None:
    """A roll-out hands out portal-generated keys: the template must issue them, now."""
    from enrollment.services import _active_agents, _check_server_key

    if not template.is_active:
        # Translators: template is a certificate template's name.
        raise PolicyViolation(
            _("%(template)s is switched off."), params={"template": template.name}, field="template"
        )
    if not template.allow_server_key:
        raise PolicyViolation(
            # Translators: template is a certificate template's name.
            _(
                "%(template)s takes only CSRs; a roll-out hands out keys the portal generates. "
                "Invite people to /enroll/ instead."
            ),
            params={"template": template.name},
            field="template",
        )
    _check_server_key(template, key_algorithm, field="key_algorithm")
    if template.archive_key and not _active_agents():
        raise ConfigurationError(
            # Translators: template is a certificate template's name.
            _(
                "No valid key recovery agent is configured, so %(template)s cannot issue right "
                "now: encryption keys must be archived."
            ),
            params={"template": template.name},
        )
    if template.issuing_from() is None:
        raise ConfigurationError(
            # Translators: template is a certificate template's name.
            _("No online issuing CA issues for %(template)s."),
            params={"template": template.name},
        )


def _officer(officer: User) -> None:
    from enrollment.permissions import NOT_AN_OFFICER, is_ra_officer

    if not is_ra_officer(officer):
        raise NotPermitted(_("Only RA officers run roll-outs."), refusal=NOT_AN_OFFICER)


CREATES_APPROVED = _("A roll-out approves the requests it makes.")


def _approves(
    officer: User,
    template: CertificateTemplate,
    *,
    why: Message = CREATES_APPROVED,
    field: str | None = "template",
) -> Decider:
    """A roll-out approves the requests it makes: only the template's approvers run one,
    remind its people or cancel it (permissions.Decider.approves, the rule
    services._decide enforces). Their Decider, whose ``reach`` says whom they may invite."""
    from enrollment.permissions import NOT_AN_APPROVER, decider

    theirs = decider(officer)
    if not theirs.approves(template):
        # Two sentences: who decides this template's requests, then why that matters here
        # (each worded when the refusal is read).
        barred = lazy(services.decision_refusal, str)(NOT_AN_APPROVER, template)
        raise NotPermitted(format_lazy("{} {}", barred, why), field=field, refusal=NOT_AN_APPROVER)
    return theirs


def not_all_in_scope(count: int) -> Message:
    """Why remind and cancel refuse an officer whose scope leaves out some of its people
    (``count`` and ``scope`` its params)."""
    return ngettext_lazy(
        # Translators: scope names the officer's scopes, e.g. "Sales, Berlin".
        "%(count)d of the people this roll-out still waits for is outside your officer scope "
        "(%(scope)s): only an officer whose scope covers them all reminds them or cancels it.",
        "%(count)d of the people this roll-out still waits for are outside your officer scope "
        "(%(scope)s): only an officer whose scope covers them all reminds them or cancels it.",
        count,
    )


def waiting_outside(rollout: Rollout, reach: Reach) -> int:
    """How many of the people the roll-out still waits for ``reach`` leaves out: remind and
    cancel act on them all (one query, none for a Reach of everyone)."""
    if reach.everyone:
        return 0
    waiting = RolloutInvitation.objects.filter(
        rollout=rollout, request__state=CertificateRequest.State.APPROVED
    ).aggregate(total=Count("pk"), covered=Count("pk", filter=reach.people("request__requester")))
    return int(waiting["total"] - waiting["covered"])


def _covers_every_waiting(rollout: Rollout, reach: Reach) -> None:
    """Remind and cancel act on everyone who has not collected: an officer whose scope
    leaves some of them out may do neither."""
    outside = waiting_outside(rollout, reach)
    if outside:
        raise NotPermitted(
            not_all_in_scope(outside),
            params={"count": outside, "scope": reach.describe()},
            refusal=OUT_OF_SCOPE,
        )


# Why remind and cancel refuse an officer outside the template's approvers group.
NOT_YOURS_TO_END = _("Only they may remind the people of its roll-outs or cancel them.")


def _audit_each(
    action: str,
    requests: Iterable[CertificateRequest],
    *,
    actor: User | None,
    source_address: str | None,
    detail: dict[str, object],
) -> None:
    """One event per request, chained a batch at a time: one head lock and one insert per
    AUDIT_BATCH events instead of per event."""
    batch: list[CertificateRequest] = []

    def flush() -> None:
        with audit.deferred():
            for request in batch:
                audit_record(
                    action=action,
                    actor=actor,
                    target=request,
                    source_address=source_address,
                    detail=detail,
                )
        batch.clear()

    for request in requests:
        batch.append(request)
        if len(batch) >= AUDIT_BATCH:
            flush()
    if batch:
        flush()


def _queue_mail(invitation_ids: list[int], kind: str) -> None:
    """A task per chunk: a worker sends a few hundred per task, never thousands at once."""
    from enrollment.tasks import rollout_mail_task

    for chunk in _chunks(invitation_ids, MAIL_CHUNK):
        rollout_mail_task.delay(list(chunk), kind)


def _mail_on_commit(invitation_ids: list[int], kind: str) -> None:
    """Queue the invitations' mail once the transaction commits, never inside the
    officer's request."""
    transaction.on_commit(lambda: _queue_mail(invitation_ids, kind), robust=True)


def _refusals_recorded(attempted: str, target: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """A service whose refusal of the officer for who they are (not an officer, not the
    template's approver, some people outside their scope) is an access.refused event
    (services.access_refusal_record), on the object its keyword ``target`` names."""

    def decorate(function: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(function)
        def recorded(*args: P.args, **kwargs: P.kwargs) -> T:
            with services.access_refusals_recorded(
                actor=cast(User, kwargs["officer"]),
                attempted=attempted,
                target=cast(models.Model, kwargs[target]),
                source_address=cast(str | None, kwargs.get("source_address")),
            ):
                return function(*args, **kwargs)

        return recorded

    return decorate


@_refusals_recorded("rollout.create", target="template")
def rollout_create(
    *,
    officer: User,
    template: CertificateTemplate,
    group: Group | None = None,
    people: str | Sequence[str] = "",
    name: str = "",
    key_algorithm: keys.KeyAlgorithm | None = None,
    source_address: str | None = None,
) -> Rollout:
    """Invite everyone eligible the group and the list name: one approved request each.

    In one transaction: the roll-out, the requests and invitations (bulk inserts), one
    ``rollout.create`` event with the counts and one ``request.approve`` per request. The
    mail goes after the commit. A roll-out that would invite nobody is refused.
    """
    _officer(officer)
    if group is None and not parse_people(people):
        raise PolicyViolation(_("Choose a group or list the people to invite."), field="people")
    name = (name or "").strip()
    if len(name) > 200 or not all(c.isprintable() for c in name):
        raise PolicyViolation(_("Give the roll-out a short plain name."), field="name")
    algorithm = key_algorithm or default_key_algorithm(template)
    check_template(template, algorithm)
    now = timezone.now()
    with transaction.atomic():
        resolution = rollout_resolve(
            officer=officer, template=template, group=group, people=people, lock=True
        )
        if not resolution.eligible:
            raise PolicyViolation(
                # Translators: why is e.g. "2 no such account; 1 named more than once".
                _("Nobody here can be invited: %(why)s."),
                params={"why": lazy(_summary, str)(resolution.counts())},
                field="people",
            )
        rollout = Rollout.objects.create(
            name=name,
            template=template,
            key_algorithm=algorithm.value,
            created_by=officer,
            created_at=now,
            expires_at=now + timedelta(days=settings.PKIPORTAL_ROLLOUT_EXPIRY_DAYS),
            group=group,
            group_name=group.name if group is not None else "",
            invited=len(resolution.eligible),
            skipped=resolution.kept_skipped(),
            skipped_count=resolution.skipped_count,
        )
        reason = f"Roll-out #{rollout.pk}" + (f": {name}" if name else "")
        requests = CertificateRequest.objects.bulk_create(
            [
                CertificateRequest(
                    requester=person,
                    template=template,
                    state=CertificateRequest.State.APPROVED,
                    key_source=CertificateRequest.KeySource.SERVER,
                    key_algorithm=algorithm.value,
                    decided_by=officer,
                    decided_at=now,
                    decision_reason=reason,
                    # The person made no request: the officer's address is on the audit
                    # events, and a download records the person's own.
                    source_address=None,
                    created_at=now,
                    channel=CertificateRequest.Channel.ROLLOUT,
                )
                for person in resolution.eligible
            ],
            batch_size=INSERT_BATCH,
        )
        invitations = RolloutInvitation.objects.bulk_create(
            [RolloutInvitation(rollout=rollout, request=request) for request in requests],
            batch_size=INSERT_BATCH,
        )
        audit_record(
            action="rollout.create",
            actor=officer,
            target=rollout,
            source_address=source_address,
            detail={
                "template": template.slug,
                "key_algorithm": algorithm.value,
                "group": rollout.group_name or None,
                "invited": rollout.invited,
                "skipped": resolution.counts(),
                "expires_at": rollout.expires_at.isoformat(),
            },
        )
        _audit_each(
            "request.approve",
            requests,
            actor=officer,
            source_address=source_address,
            detail={"reason": reason, "rollout": rollout.pk, "template": template.slug},
        )
        _mail_on_commit([i.pk for i in invitations], "invite")
    return rollout


def _summary(counts: dict[str, int]) -> str:
    """The counts of who was not invited and why, in the reader's language."""
    return "; ".join(
        # Translators: count people, and why they are not invited ("3 no such account").
        str(_("%(count)d %(reason)s")) % {"count": n, "reason": Reason.LABELS[reason]}
        for reason, n in counts.items()
    ) or str(_("no one"))


def _locked_open(rollout: Rollout) -> Rollout:
    locked = Rollout.objects.select_for_update().get(pk=rollout.pk)
    if not locked.is_open:
        raise InvalidState(
            # Translators: state is the roll-out's state, e.g. "cancelled".
            _("This roll-out is already %(state)s."),
            params={"state": mid_sentence_when_read(locked.get_state_display())},
        )
    return locked


def _uncollected_locked(rollout: Rollout) -> list[CertificateRequest]:
    """The roll-out's requests still waiting for their download, locked as request_collect
    and request_withdraw lock them: whichever comes second sees the first's outcome (a
    request collected meanwhile no longer matches, and is left alone)."""
    return list(
        CertificateRequest.objects.select_for_update(of=("self",))
        .filter(invitation__rollout=rollout, state=CertificateRequest.State.APPROVED)
        .order_by("pk")
    )


def _end_uncollected(
    rollout: Rollout, *, ended: str, actor: User | None, source_address: str | None
) -> int:
    requests = _uncollected_locked(rollout)
    ids = [r.pk for r in requests]
    now = timezone.now()
    for chunk in _chunks(ids):
        CertificateRequest.objects.filter(pk__in=chunk).update(
            state=CertificateRequest.State.WITHDRAWN, updated_at=now
        )
        RolloutInvitation.objects.filter(request_id__in=chunk).update(ended=ended)
    _audit_each(
        "request.withdraw" if ended == RolloutInvitation.Ended.CANCELLED else "request.expire",
        requests,
        actor=actor,
        source_address=source_address,
        detail={"rollout": rollout.pk, "template": rollout.template.slug, "state": "approved",
                "why": ended},
    )  # fmt: skip
    return len(ids)


@_refusals_recorded("rollout.cancel", target="rollout")
def rollout_cancel(*, rollout: Rollout, officer: User, source_address: str | None = None) -> int:
    """Withdraw every invitation not collected yet; the number withdrawn. Certificates
    already collected stay valid (revoke them one by one if they must go)."""
    _officer(officer)
    reach = _approves(officer, rollout.template, why=NOT_YOURS_TO_END, field=None).reach
    with transaction.atomic():
        locked = _locked_open(rollout)
        _covers_every_waiting(locked, reach)
        withdrawn = _end_uncollected(
            locked,
            ended=RolloutInvitation.Ended.CANCELLED,
            actor=officer,
            source_address=source_address,
        )
        locked.state = Rollout.State.CANCELLED
        locked.ended_by = officer
        locked.ended_at = timezone.now()
        locked.save(update_fields=["state", "ended_by", "ended_at"])
        audit_record(
            action="rollout.cancel",
            actor=officer,
            target=locked,
            source_address=source_address,
            detail={"withdrawn": withdrawn, "template": locked.template.slug},
        )
    rollout.refresh_from_db()
    return withdrawn


@_refusals_recorded("rollout.remind", target="rollout")
def rollout_remind(*, rollout: Rollout, officer: User, source_address: str | None = None) -> int:
    """Mail again everyone who has not collected yet; the number reminded.

    At most once per PKIPORTAL_ROLLOUT_REMIND_HOURS per roll-out: a reminder goes to
    thousands of mailboxes, and a double click must not send it twice."""
    _officer(officer)
    reach = _approves(officer, rollout.template, why=NOT_YOURS_TO_END, field=None).reach
    with transaction.atomic():
        locked = _locked_open(rollout)
        _covers_every_waiting(locked, reach)
        now = timezone.now()
        if locked.expires_at <= now:  # the hourly expiry has not swept it yet
            raise InvalidState(
                _("This roll-out's invitations have run out; they are withdrawn within the hour.")
            )
        every = timedelta(hours=settings.PKIPORTAL_ROLLOUT_REMIND_HOURS)
        if locked.last_reminded_at is not None and locked.last_reminded_at + every > now:
            when = timezone.localtime(locked.last_reminded_at)
            error = RateLimited(
                # Translators: when is a date and time; hours is e.g. "24 hours".
                _(
                    "This roll-out's people were reminded at %(when)s; remind them again "
                    "%(hours)s after that."
                ),
                params={
                    "when": f"{when:%Y-%m-%d %H:%M %Z}",
                    "hours": plurals.hours_when_read(settings.PKIPORTAL_ROLLOUT_REMIND_HOURS),
                },
            )
            error.retry_after = (locked.last_reminded_at + every - now).total_seconds()
            raise error
        ids = list(
            RolloutInvitation.objects.filter(
                rollout=locked, request__state=CertificateRequest.State.APPROVED
            ).values_list("pk", flat=True)
        )
        if not ids:
            raise InvalidState(_("Everyone invited has collected, declined or been withdrawn."))
        for chunk in _chunks(ids):
            RolloutInvitation.objects.filter(pk__in=chunk).update(reminded_at=now)
        locked.last_reminded_at = now
        locked.save(update_fields=["last_reminded_at"])
        audit_record(
            action="rollout.remind",
            actor=officer,
            target=locked,
            source_address=source_address,
            detail={"reminded": len(ids)},
        )
        _mail_on_commit(ids, "remind")
    rollout.refresh_from_db()
    return len(ids)


def rollouts_expire_due(*, now: datetime | None = None) -> int:
    """Beat, hourly: withdraw the invitations of roll-outs past their expiry; how many.

    Each roll-out in its own transaction, audited as the system: ``rollout.expire`` with
    the count, ``request.expire`` per request."""
    now = now or timezone.now()
    expired = 0
    due = Rollout.objects.filter(state=Rollout.State.OPEN, expires_at__lte=now)
    for rollout_id in due.values_list("pk", flat=True):
        with transaction.atomic():
            locked = Rollout.objects.select_for_update().get(pk=rollout_id)
            if not locked.is_open:
                continue
            count = _end_uncollected(
                locked, ended=RolloutInvitation.Ended.EXPIRED, actor=None, source_address=None
            )
            locked.state = Rollout.State.EXPIRED
            locked.ended_at = now
            locked.save(update_fields=["state", "ended_at"])
            audit_record(action="rollout.expire", target=locked, detail={"withdrawn": count})
            expired += count
    return expired


def rollout_counts(rollout: Rollout, reach: Reach = EVERYONE) -> dict[str, int]:
    """How many of its people are invited, collected, declined, cancelled, expired, failed;
    of those ``reach`` covers (an officer's scope: the people they may see)."""
    counts = dict.fromkeys(
        ("invited", "collected", "declined", "cancelled", "expired", "failed"), 0
    )
    rows = (
        RolloutInvitation.objects.filter(reach.people("request__requester"), rollout=rollout)
        .values_list("request__state", "ended")
        .annotate(n=Count("pk"))
        .order_by()
    )
    for state, ended, n in rows:
        if state == CertificateRequest.State.ISSUED:
            counts["collected"] += n
        elif state == CertificateRequest.State.APPROVED:
            counts["invited"] += n
        elif state == CertificateRequest.State.WITHDRAWN:
            counts[ended or "declined"] += n
        else:
            counts["failed"] += n
    return counts


def rollout_mail_send(*, invitation_ids: list[int], kind: str) -> int:
    """Mail these invitations (``invite``: those not mailed yet; ``remind``: those still
    waiting), over one connection; the number sent. An address the server refuses is
    counted on its invitation (``mail_attempts``, ``mail_error``) for the hourly retry and
    the roll-out's page; a server that cannot be reached fails the task, and the hourly
    retry sends the chunk again."""
    from enrollment.notifications import rollout_invitations_send

    invitations = list(
        RolloutInvitation.objects.filter(
            pk__in=invitation_ids,
            request__state=CertificateRequest.State.APPROVED,
            request__requester__is_active=True,  # a leaver is not asked to collect
        ).select_related("rollout__template", "rollout__created_by", "request__requester")
    )
    if kind == "invite":
        invitations = [i for i in invitations if i.mailed_at is None]

    def mark_mailed(invitation: RolloutInvitation) -> None:
        RolloutInvitation.objects.filter(pk=invitation.pk).update(
            mailed_at=timezone.now(), mail_error=""
        )

    def mark_refused(invitation: RolloutInvitation, exc: Exception) -> None:
        # The server's answer names the address and the reason; never a credential.
        error = f"{type(exc).__name__}: {exc}"[:300]
        RolloutInvitation.objects.filter(pk=invitation.pk).update(
            mail_attempts=F("mail_attempts") + 1, mail_error=error
        )

    invite = kind == "invite"
    sent = rollout_invitations_send(
        invitations,
        reminder=not invite,
        on_sent=mark_mailed if invite else None,
        on_failed=mark_refused if invite else None,
    )
    return len(sent)


def unmailed_count(rollout: Rollout, reach: Reach = EVERYONE) -> int:
    """Invited people still waiting whose invitation never reached the mail server (of
    those ``reach`` covers)."""
    return RolloutInvitation.objects.filter(
        reach.people("request__requester"),
        rollout=rollout,
        mailed_at__isnull=True,
        request__state=CertificateRequest.State.APPROVED,
    ).count()


def rollout_mail_retry(*, now: datetime | None = None) -> int:
    """Queue again the invitations of open roll-outs whose mail never went: the server
    was down (the task failed), its message was lost, or it refused the address fewer
    than MAIL_ATTEMPTS times. Those queued in the last MAIL_RETRY_AFTER are left to the
    queue. How many were queued."""
    now = now or timezone.now()
    ids = list(
        RolloutInvitation.objects.filter(
            mailed_at__isnull=True,
            mail_attempts__lt=MAIL_ATTEMPTS,
            rollout__state=Rollout.State.OPEN,
            rollout__expires_at__gt=now,
            rollout__created_at__lte=now - MAIL_RETRY_AFTER,
            request__state=CertificateRequest.State.APPROVED,
            request__requester__is_active=True,
        )
        .exclude(request__requester__email="")
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    _queue_mail(ids, "invite")
    if ids:
        logger.info("Queued %d roll-out invitation(s) whose mail never went out", len(ids))
    return len(ids)
