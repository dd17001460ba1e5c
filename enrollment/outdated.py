"""Certificates that name an address their holder no longer has: the holder is told, and
they are revoked a grace period after the address changed, unless it changes back.

A certificate's address is the account's (accounts.User.email) when it is issued. When the
account's address changes (a name change, a directory or single sign-on sync, the admin),
the certificates for the old one stay valid, yet the organisation no longer vouches that
the mailbox is the holder's: S/MIME BR 4.9.1.1 (items 9, 10 and 12; item 5, within 24
hours, once the old mailbox is someone else's) asks the CA to revoke them.

The hourly leavers' run (enrollment.leavers) calls outdated_sync() first. It compares every
held certificate's address with its holder's current one, so an address rewritten by
QuerySet.update() or SQL is found like one saved through User.save(): comparing the state,
not hooking the save, is what survives bulk writers. A newly found certificate gets an
OutdatedCertificate row, whose ``since`` starts its grace period, and its holder one mail
(for all of theirs found in that run) naming them, when they will be revoked and where to
renew. The row goes once the certificate is revoked, expires or names the holder's address
again, so an address changed back within the grace period revokes nothing, and a later
change starts afresh. The run then revokes, for affiliationChanged through
services.certificate_revoke, those whose grace period is over, counting their holders
against the leavers' cap.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.db.models.functions import Lower, Trim

from enrollment import notifications, services
from enrollment.audit import audit_record
from enrollment.exceptions import InvalidState
from enrollment.models import Certificate, LeaverRevocationRun, OutdatedCertificate
from enrollment.scopes import EVERYONE, Reach

logger = logging.getLogger(__name__)

AFFILIATION_CHANGED = Certificate.RevocationReasonChoice.AFFILIATION_CHANGED


def current_address(user: Any) -> str:
    """The account's address as certificates carry it (lower-case)."""
    return (user.email or "").strip().lower()


def names_other_address(prefix: str = "") -> Q:
    """The certificate names an address, and not its holder's (certificates store it
    lower-case). One naming none (imported, say) has no mailbox to lose. The query twin of
    Certificate.names_current_address (negated), over every holder at once: this run and
    LDAP publication's database diff (enrollment.ldap_publish) read it."""
    return ~Q(**{f"{prefix}email": ""}) & ~Q(
        **{f"{prefix}email": Lower(Trim(f"{prefix}owner__email"))}
    )


def outdated_held(now: datetime) -> QuerySet[Certificate]:
    """Every held certificate whose address is not its holder's: one join over the held
    certificates, run hourly, not on a page."""
    return (
        Certificate.objects.held(now)
        .issued_here()  # imported ones are the old CA's to revoke
        .filter(owner__isnull=False)
        .filter(names_other_address())
    )


def recorded(now: datetime) -> QuerySet[OutdatedCertificate]:
    """The rows whose certificate is still held and still names another address: driven by
    the rows (few), so the RA console and /health/ can afford it on every page."""
    return OutdatedCertificate.objects.filter(
        certificate__status=Certificate.Status.VALID, certificate__not_after__gt=now
    ).filter(names_other_address("certificate__"))


def due_at(since: datetime | None, delay: timedelta | None) -> datetime | None:
    return since + delay if since is not None and delay is not None else None


# --- finding them and telling their holders ----------------------------------------------


def outdated_sync(*, now: datetime, delay: timedelta | None) -> int:
    """Forget the rows of certificates no longer outdated, record the newly outdated ones
    and mail their holders once; how many were found.

    A new row's grace period starts when the account recorded the change (User.save), or
    at this run when the change was not recorded (see _since).
    """
    OutdatedCertificate.objects.exclude(pk__in=recorded(now).values("pk")).delete()
    previous = LeaverRevocationRun.objects.filter(pk=1).values_list("ran_at", flat=True).first()
    found = (
        outdated_held(now)
        .filter(outdated__isnull=True)
        .select_related("owner", "template")
        .defer("der")  # the mail names them; thousands at once after a directory sync
        # No ORDER BY: at a million certificates it made PostgreSQL sort every held row
        # before the comparison kept a handful; each holder's few are sorted below.
        .order_by()
    )
    by_owner: dict[int, list[Certificate]] = defaultdict(list)
    for certificate in found:
        by_owner[certificate.owner_id].append(certificate)  # type: ignore[index]
    told = failed = 0
    last_error = ""
    for owner_pk, certificates in sorted(by_owner.items()):
        certificates.sort(key=lambda certificate: certificate.pk)
        try:
            told += _record_and_tell(
                owner_pk, certificates, now=now, since_floor=previous, delay=delay
            )
        except SoftTimeLimitExceeded:
            raise  # a subclass of Exception: the run must stop and record what it did
        except Exception as exc:
            # The next run tries again; revoking what is due must not wait for this one.
            logger.exception("Could not record the outdated certificates of account %s", owner_pk)
            failed += 1
            last_error = f"{type(exc).__name__}: {exc}"
    if told:
        logger.info("%d certificate(s) newly name an address their holder no longer has", told)
    if failed:
        # Reported by the run (and so /health/), after every other holder was dealt with.
        raise OutdatedSyncFailed(
            f"the outdated certificates of {failed} account(s) could not be recorded ({last_error})"
        )
    return told


class OutdatedSyncFailed(Exception):
    """Some holders' outdated certificates could not be recorded this run."""


def _since(
    changed: datetime | None, certificate: Certificate, *, now: datetime, floor: datetime | None
) -> datetime:
    """The account's recorded change if it can be what outdated the certificate: not before
    the certificate was issued, nor before the previous run (which found nothing then).
    Otherwise the address changed by a path that records no moment (QuerySet.update(),
    SQL), and the grace period starts now."""
    if changed is None or changed < certificate.created_at or (floor and changed < floor):
        return now
    return min(changed, now)


def _record_and_tell(
    owner_pk: int,
    certificates: list[Certificate],
    *,
    now: datetime,
    since_floor: datetime | None,
    delay: timedelta | None,
) -> int:
    """One holder's newly outdated certificates: rows and one mail, in one transaction.

    The account's row is locked and read again, so an address changed back meanwhile
    records nothing, and a confirmed command run racing the hourly one records (and mails)
    each certificate once.
    """
    with transaction.atomic():
        owner = get_user_model().objects.select_for_update().filter(pk=owner_pk).first()
        if owner is None:
            return 0
        address = current_address(owner)
        known = set(
            OutdatedCertificate.objects.filter(certificate__in=certificates).values_list(
                "certificate_id", flat=True
            )
        )
        fresh = [c for c in certificates if c.pk not in known and c.email != address]
        if not fresh:
            return 0
        rows = [
            OutdatedCertificate(
                certificate=certificate,
                since=_since(owner.email_changed_at, certificate, now=now, floor=since_floor),
                address=address,
                notified_at=now if address else None,
            )
            for certificate in fresh
        ]
        OutdatedCertificate.objects.bulk_create(rows)
        if address:
            notifications.certificates_outdated(
                owner, [(row.certificate, due_at(row.since, delay)) for row in rows]
            )
        return len(rows)


# --- what is due, and revoking it --------------------------------------------------------


def accounts_due(*, now: datetime, delay: timedelta) -> list[int]:
    """The holders of certificates whose grace period is over, longest outdated first."""
    rows = recorded(now).filter(since__lte=now - delay).order_by("since", "certificate_id")
    seen: dict[int, None] = {}
    for owner_id in rows.values_list("certificate__owner_id", flat=True):
        seen.setdefault(owner_id, None)
    return list(seen)


def revoke_account(user_pk: int, *, cutoff: datetime, now: datetime, source: str) -> int:
    """Revoke one holder's certificates outdated since ``cutoff`` or before, in one
    transaction; how many.

    The account's row is locked and its address read again first, so an address changed
    back since the run looked (or while it waits for the lock) keeps its certificates.
    """
    with transaction.atomic():
        user = get_user_model().objects.select_for_update().filter(pk=user_pk).first()
        if user is None:
            return 0
        address = current_address(user)
        held = (
            Certificate.objects.held(now)
            .issued_here()
            .filter(owner=user, outdated__since__lte=cutoff)
            .exclude(email=address)
            .select_related("owner")
            .order_by("pk")
        )
        revoked = revoke_each(held)
        if revoked:
            audit_record(
                action="outdated.revoke",
                target=user,
                detail={
                    "address": address,
                    "old_addresses": sorted({certificate.email for certificate in revoked}),
                    "email_changed_at": user.email_changed_at,
                    "serials": [certificate.serial for certificate in revoked],
                    "source": source,
                },
            )
        return len(revoked)


def revoke_each(
    certificates: Iterable[Certificate],
    *,
    reason: str = AFFILIATION_CHANGED,
    actor: Any = None,
    source_address: str | None = None,
) -> list[Certificate]:
    """Revoke each (affiliationChanged unless told) through the ordinary revocation (CRL,
    audit as the system or the officer who asked, the holder's mail); the ones it revoked.
    One an officer or the holder revoked a moment ago is left out. Shared with the leavers'
    and mailboxes' runs and an officer's "revoke all" on /ra/leavers/."""
    revoked = []
    with transaction.atomic():
        chosen = list(certificates)
        # All their rows first, then each revocation takes the audit chain's head: taking
        # a second row after the head deadlocked with a single revocation of it.
        services.lock_in_order(Certificate.objects.filter(pk__in=[c.pk for c in chosen]))
        for certificate in chosen:
            try:
                services.certificate_revoke(
                    certificate=certificate,
                    reason=reason,
                    actor=actor,
                    source_address=source_address,
                )
            except InvalidState:
                continue
            revoked.append(certificate)
    return revoked


# --- what people are shown ----------------------------------------------------------------


@dataclass(frozen=True)
class Outdated:
    """A held certificate naming an old address, as the RA page lists it."""

    certificate: Certificate
    since: datetime
    due_at: datetime | None
    notified: bool

    @property
    def holder(self) -> Any:
        return self.certificate.owner


def outdated_certificates(
    *, delay: timedelta | None, now: datetime, limit: int | None, reach: Reach = EVERYONE
) -> list[Outdated]:
    """The recorded outdated certificates still held, longest outdated first; of the
    people a scoped officer's ``reach`` covers."""
    rows = (
        recorded(now)
        .filter(reach.certificates("certificate__"))
        .select_related("certificate__owner", "certificate__template")
        .defer("certificate__der")
        .order_by(F("since").asc(), "certificate_id")[:limit]
    )
    return [
        Outdated(row.certificate, row.since, due_at(row.since, delay), row.notified_at is not None)
        for row in rows
    ]


def outdated_count(*, now: datetime, reach: Reach = EVERYONE) -> int:
    """How many recorded outdated certificates (within ``reach``) are still held (the RA
    console's tile)."""
    return recorded(now).filter(reach.certificates("certificate__")).count()


def certificate_due(certificate: Certificate, delay: timedelta | None) -> datetime | None:
    """When this certificate (naming an old address) is revoked, if the run found it yet;
    None when it has not, or automatic revocation is off."""
    row = getattr(certificate, "outdated", None)
    return due_at(row.since, delay) if row is not None else None
