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
from /pki/<ca>.crl's mirror or cache, or from any client that has it), checks it is the
CA's own, revokes again each certificate it lists that the database holds as valid (with
the original time, reason and invalidity date), keeps it as the CA's newest CRL and
publishes the next one above its number, all under the CA's lock, in one transaction.

What no CRL can give back: certificates issued after the backup are not in the database.
Their serials, when that CRL lists them, are reported: they drop off the next CRL. Point-
in-time recovery of PostgreSQL (WAL archiving) loses nothing and needs none of this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509

from django.db import transaction

from enrollment import services
from enrollment.audit import audit_record
from enrollment.exceptions import InvalidState, PolicyViolation
from enrollment.models import Certificate, CertificateAuthority, KeyIdentity, RevocationList

Actor = services.Actor


@dataclass
class Resumed:
    """What resume_after_restore() did, for the command to show."""

    imported_number: int
    published: RevocationList
    revoked_again: list[str] = field(default_factory=list)
    already_revoked: int = 0
    unknown: list[str] = field(default_factory=list)


def _entry_facts(entry: x509.RevokedCertificate) -> tuple[str | None, datetime | None]:
    """The entry's reason (our choice values are RFC 5280's names) and invalidity date."""
    extensions = entry.extensions
    try:
        reason: str | None = extensions.get_extension_for_class(x509.CRLReason).value.reason.value
    except x509.ExtensionNotFound:
        reason = None
    try:
        invalidity = extensions.get_extension_for_class(x509.InvalidityDate).value
        invalid_since: datetime | None = invalidity.invalidity_date_utc
    except x509.ExtensionNotFound:
        invalid_since = None
    return reason, invalid_since


def resume_after_restore(*, ca: CertificateAuthority, der: bytes, actor: Actor = None) -> Resumed:
    """Revoke again what ``der`` (the CA's newest published CRL) lists and publish above it."""
    if not ca.is_online:
        raise PolicyViolation(
            f"{ca.name} is offline: import its newest CRL with `import_crl` instead."
        )
    crl, number = services.crl_verified(ca=ca, der=der)
    if crl.next_update_utc is None:
        raise PolicyViolation("The CRL has no nextUpdate.")
    with transaction.atomic():
        locked = services._lock_ca(ca)
        previous = services._latest_crl_facts(locked)
        if previous is not None and number <= previous.number:
            raise InvalidState(
                f"CRL #{number} is not newer than this database's #{previous.number}: the "
                "database is not behind it, and nothing needs resuming."
            )
        stored = {
            row.serial: row
            for row in Certificate.objects.filter(
                ca=locked, serial__in=[f"{entry.serial_number:x}" for entry in crl]
            ).only("pk", "serial", "status", "not_before", "spki_sha256")
        }
        result = Resumed(imported_number=number, published=services._crl_store(locked, crl, number))
        for entry in crl:
            serial = f"{entry.serial_number:x}"
            certificate = stored.get(serial)
            if certificate is None:
                result.unknown.append(serial)
                continue
            if certificate.status == Certificate.Status.REVOKED:
                result.already_revoked += 1
                continue
            reason, invalid_since = _entry_facts(entry)
            compromised = reason == Certificate.RevocationReasonChoice.KEY_COMPROMISE
            if compromised and certificate.spki_sha256:  # as certificate_revoke marks it
                KeyIdentity.objects.update_or_create(
                    spki_sha256=certificate.spki_sha256, defaults={"compromised": True}
                )
            services._revoke(
                certificate=certificate,
                reason=reason,
                actor=actor,
                invalidity_date=invalid_since,
                source_address=None,
                revoked_at=entry.revocation_date_utc,
                detail={"restored_from_crl": number},
            )
            result.revoked_again.append(serial)
        result.published = services._crl_publish_locked(
            locked, services._latest_crl_facts(locked), actor=actor
        )
        audit_record(
            action="crl.resume",
            actor=actor,
            target=result.published,
            detail={
                "imported_number": number,
                "database_number": previous.number if previous is not None else None,
                "published_number": result.published.number,
                "revoked_again": result.revoked_again,
                "already_revoked": result.already_revoked,
                "unknown_serials": result.unknown,
            },
        )
    return result
