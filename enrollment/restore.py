"""After the database was restored from a backup: take up where the published CRL left off.

A backup is older than the failure it is restored after. Whatever the CA did in between is
gone from the database, but not from the world: the CRLs it published then are in mail
clients, proxies and mirrors. Two things then go wrong on their own:

- the revocations made after the backup are lost, and the next CRL would drop them, so
  revoked certificates would look good again once the published CRL expires;
- the next CRL would reuse numbers already published with other contents (RFC 5280 5.2.3
  wants them strictly increasing), and a client holding the higher number keeps the old
  list until its nextUpdate, deaf to every revocation since.

resume_after_restore() takes the newest CRL the CA published before the failure (fetched
from /pki/<ca>.crl's mirror or cache, or from any client that has it) and checks it is
the CA's own. Each certificate it lists that the database holds as valid is revoked again
with the published time, reason and invalidity date; one the database holds as revoked
later, or for a weaker reason (someone revoked it again after the restore), takes the
published facts back: the earlier time, keyCompromise if either said so. Then the next CRL
is published NUMBER_MARGIN above the highest number either side knows, because the CRL
handed in may not be the last one out (a cache a few hours behind) and the restored
portal may already have published over the lost numbers. All under the CA's lock, in one
transaction, whatever the numbers say: a restored portal that published again before this
ran is exactly when revocations are missing.

What no CRL can give back: certificates issued after the backup are not in the database.
Their serials, when that CRL lists them, are reported: they drop off the next CRL. Point-
in-time recovery of PostgreSQL (WAL archiving) loses nothing and needs none of this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509

from django.db import transaction
from django.utils import timezone

from enrollment import services
from enrollment.audit import audit_record
from enrollment.exceptions import PolicyViolation
from enrollment.models import (
    Certificate,
    CertificateAuthority,
    CrlEntry,
    KeyIdentity,
    RevocationList,
)

Actor = services.Actor
KEY_COMPROMISE = Certificate.RevocationReasonChoice.KEY_COMPROMISE.value

# How far above the highest known CRL number the next CRL goes: more CRLs than the lost
# period can have published (one per revocation burst and per refresh), so no number a
# client may hold is issued again with other contents. RFC 5280 5.2.3 asks for increasing
# numbers, not consecutive ones.
NUMBER_MARGIN = 100_000
# Serials per query: PostgreSQL takes at most 65,535 parameters in one statement.
SERIALS_PER_QUERY = 10_000
# Serials named in the audit event; the command prints them all.
AUDITED_SERIALS = 1_000


@dataclass
class Resumed:
    """What resume_after_restore() did, for the command to show."""

    imported_number: int
    database_number: int | None
    published: RevocationList
    revoked_again: list[str] = field(default_factory=list)
    corrected: list[str] = field(default_factory=list)
    already_revoked: int = 0
    unknown: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Published:
    serial: str
    revoked_at: datetime
    reason: str | None
    invalid_since: datetime | None


def _published(entry: x509.RevokedCertificate) -> _Published:
    """The entry's facts; our reason values are RFC 5280's names."""
    extensions = entry.extensions
    try:
        reason: str | None = extensions.get_extension_for_class(x509.CRLReason).value.reason.value
    except x509.ExtensionNotFound:
        reason = None
    try:
        invalid_since: datetime | None = extensions.get_extension_for_class(
            x509.InvalidityDate
        ).value.invalidity_date_utc
    except x509.ExtensionNotFound:
        invalid_since = None
    return _Published(f"{entry.serial_number:x}", entry.revocation_date_utc, reason, invalid_since)


def _stored(ca: CertificateAuthority, serials: list[str]) -> dict[str, Certificate]:
    found: dict[str, Certificate] = {}
    for start in range(0, len(serials), SERIALS_PER_QUERY):
        chunk = serials[start : start + SERIALS_PER_QUERY]
        for certificate in Certificate.objects.filter(ca=ca, serial__in=chunk):
            found[certificate.serial] = certificate
    return found


def _earlier(ours: datetime | None, published: datetime | None) -> datetime | None:
    """The published time if it is earlier than ours. A CRL keeps whole seconds, so ours
    within the same second is the same moment, not a later one."""
    if ours is None or (published is not None and published < ours.replace(microsecond=0)):
        return published
    return ours


def _take_back(certificate: Certificate, facts: _Published, *, number: int, actor: Actor) -> bool:
    """A certificate revoked here later or for a weaker reason than the CRL said gets the
    published facts back (and a CRL entry to match); True if anything changed."""
    before = (
        certificate.revoked_at,
        certificate.revocation_reason,
        certificate.invalidity_date,
    )
    # What was published stands; a revocation here since may only make it keyCompromise,
    # the one change RFC 5280 5.3.1 expects a reason to go through.
    ours = certificate.revocation_reason or None
    reason = KEY_COMPROMISE if KEY_COMPROMISE in (ours, facts.reason) else facts.reason or ours
    after = (
        _earlier(certificate.revoked_at, facts.revoked_at),
        reason or "",
        _earlier(certificate.invalidity_date, facts.invalid_since),
    )
    if after == before:
        return False
    certificate.revoked_at, certificate.revocation_reason, certificate.invalidity_date = after
    certificate.queued_for_crl_at = timezone.now()  # its entry is unpublished again
    certificate.save(
        update_fields=["revoked_at", "revocation_reason", "invalidity_date", "queued_for_crl_at"]
    )
    CrlEntry.objects.filter(certificate=certificate).delete()
    services._crl_entry_create(certificate)  # unpublished again: the next CRL lists it
    audit_record(
        action="certificate.revocation_restored",
        actor=actor,
        target=certificate,
        detail={
            "serial": certificate.serial,
            "restored_from_crl": number,
            "before": [str(before[0]), before[1], str(before[2]) if before[2] else None],
            "after": [str(after[0]), after[1], str(after[2]) if after[2] else None],
        },
    )
    return True


def resume_after_restore(*, ca: CertificateAuthority, der: bytes, actor: Actor = None) -> Resumed:
    """Put back what ``der`` (a CRL the CA published) lists and publish well above it."""
    if not ca.is_online:
        raise PolicyViolation(
            f"{ca.name} is offline: import its newest CRL with `import_crl` instead."
        )
    crl, number = services.crl_verified(ca=ca, der=der)
    if crl.next_update_utc is None:
        raise PolicyViolation("The CRL has no nextUpdate.")
    entries = [_published(entry) for entry in crl]
    compromised_keys = {
        certificate.spki_sha256
        for certificate in _stored(
            ca, [facts.serial for facts in entries if facts.reason == KEY_COMPROMISE]
        ).values()
        if certificate.spki_sha256
    }
    with transaction.atomic():
        # Keys first, as issuance and certificate_revoke take them: before any other lock.
        for spki_sha256 in sorted(compromised_keys):
            KeyIdentity.objects.update_or_create(
                spki_sha256=spki_sha256, defaults={"compromised": True}
            )
        locked = services._lock_ca(ca)
        previous = services._latest_crl_facts(locked)
        database_number = previous.number if previous is not None else None
        if database_number is None or number > database_number:
            services._crl_store(locked, crl, number)  # the history has it, as published
        serials = [facts.serial for facts in entries]
        # Their rows before the audit chain's head, as one revocation takes them
        # (services.lock_in_order), in id order across chunks of bounded statements;
        # then read again under those locks: one revoked meanwhile is taken back below,
        # not revoked a second time.
        ids = sorted(certificate.pk for certificate in _stored(locked, serials).values())
        for start in range(0, len(ids), SERIALS_PER_QUERY):
            chunk = ids[start : start + SERIALS_PER_QUERY]
            services.lock_in_order(Certificate.objects.filter(pk__in=chunk))
        stored = _stored(locked, serials)
        revoked_again: list[str] = []
        corrected: list[str] = []
        unknown: list[str] = []
        already_revoked = 0
        for facts in entries:
            certificate = stored.get(facts.serial)
            if certificate is None:
                unknown.append(facts.serial)
            elif certificate.status == Certificate.Status.REVOKED:
                already_revoked += 1
                if _take_back(certificate, facts, number=number, actor=actor):
                    corrected.append(facts.serial)
            else:
                services._revoke(
                    certificate=certificate,
                    reason=facts.reason,
                    actor=actor,
                    invalidity_date=facts.invalid_since,
                    source_address=None,
                    revoked_at=facts.revoked_at,
                    detail={"restored_from_crl": number},
                    queue_crl=False,  # published below, in this transaction
                )
                revoked_again.append(facts.serial)
        highest = max(number, database_number or 0)
        published = services._crl_publish_locked(
            locked,
            services._latest_crl_facts(locked),
            actor=actor,
            number=highest + NUMBER_MARGIN,
        )
        result = Resumed(
            imported_number=number,
            database_number=database_number,
            published=published,
            revoked_again=revoked_again,
            corrected=corrected,
            already_revoked=already_revoked,
            unknown=unknown,
        )
        audit_record(
            action="crl.resume",
            actor=actor,
            target=result.published,
            detail={
                "imported_number": number,
                "database_number": database_number,
                "published_number": result.published.number,
                "revoked_again": result.revoked_again[:AUDITED_SERIALS],
                "corrected": result.corrected[:AUDITED_SERIALS],
                "already_revoked": result.already_revoked,
                "unknown_count": len(result.unknown),
                "unknown_serials": result.unknown[:AUDITED_SERIALS],
            },
        )
    return result
