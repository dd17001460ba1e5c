"""Query vocabulary for certificates, CAs and CRLs: filters live here, not in views."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.db import models
from django.utils import timezone

if TYPE_CHECKING:
    from accounts.models import User

    # Named in quotes as the querysets' model types: enrollment.models imports this module.
    from enrollment.models import (  # noqa: F401
        Certificate,
        CertificateAuthority,
        RevocationList,
    )


# Purposes whose key usage lets a sender encrypt to the certificate (keyEncipherment for
# RSA, keyAgreement for EC; S/MIME BR 7.1.2.3 (e)): everything but signing-only.
ENCRYPTING_PURPOSES = ("encryption", "dual_use")


class CertificateAuthorityQuerySet(models.QuerySet["CertificateAuthority"]):
    def online(self) -> CertificateAuthorityQuerySet:
        return self.filter(is_online=True)

    def roots(self) -> CertificateAuthorityQuerySet:
        return self.filter(parent__isnull=True, is_imported=False)

    def ours(self) -> CertificateAuthorityQuerySet:
        """The portal's own hierarchy: not the other CAs whose certificates were imported."""
        return self.filter(is_imported=False)

    def imported(self) -> CertificateAuthorityQuerySet:
        return self.filter(is_imported=True)

    def issuing(self) -> CertificateAuthorityQuerySet:
        """Online CAs under a root: those that can sign certificates here."""
        return self.filter(is_online=True, parent__isnull=False)


class CertificateQuerySet(models.QuerySet["Certificate"]):
    def valid(self, now: datetime | None = None) -> CertificateQuerySet:
        """Not revoked and inside their validity period."""
        now = now or timezone.now()
        return self.filter(status="valid", not_before__lte=now, not_after__gt=now)

    def held(self, now: datetime | None = None) -> CertificateQuerySet:
        """Not revoked and not expired, valid yet or not: what a person holds against the
        per-template cap. A certificate dated a moment ahead (another server's clock, or
        one issued while the counting enrolment waited for its turn) still counts."""
        return self.filter(status="valid", not_after__gt=now or timezone.now())

    def issued_here(self) -> CertificateQuerySet:
        """Issued by the portal's own CAs: those it can revoke (not imported ones)."""
        return self.filter(ca__is_imported=False)

    def revoked(self) -> CertificateQuerySet:
        return self.filter(status="revoked")

    def encryption_capable(self) -> CertificateQuerySet:
        """Certificates a sender may encrypt to: encryption-only or dual-use keys."""
        return self.filter(purpose__in=ENCRYPTING_PURPOSES)

    def expired(self, now: datetime | None = None) -> CertificateQuerySet:
        return self.filter(not_after__lte=now or timezone.now())

    def expiring(self, within: timedelta, now: datetime | None = None) -> CertificateQuerySet:
        now = now or timezone.now()
        return self.valid(now).filter(not_after__lte=now + within)

    def owned_by(self, user: User) -> CertificateQuerySet:
        return self.filter(owner=user)


class RevocationListQuerySet(models.QuerySet["RevocationList"]):
    def newest_first(self) -> RevocationListQuerySet:
        return self.order_by("-number")
