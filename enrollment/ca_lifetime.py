"""An issuing CA's end, and what it does to the certificates it issues.

A certificate never outlives its issuer (RFC 5280 6.1.3): the builder cuts it at the CA's
notAfter. Near that end a template's year silently turns into weeks, so the portal says so
where a certificate is issued and shown, refuses one the CA would cut absurdly short
(PKIPORTAL_MIN_CERTIFICATE_DAYS), and /health/ warns long before (health.issuing_ca_status).
Reads only: no query here but template_outlook's one for the default CA.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from enrollment.models import Certificate, CertificateAuthority, CertificateTemplate
from pkiportal import plurals
from pkiportal.i18n import worded

_SECOND = timedelta(seconds=1)


def _lasts(not_before: datetime, not_after: datetime) -> timedelta:
    """A validity period's length: both ends are inclusive (RFC 5280 4.1.2.5)."""
    return not_after - not_before + _SECOND


def certificate_end(ca: CertificateAuthority, validity_days: int, now: datetime) -> datetime:
    """The notAfter a certificate issued now gets, as enrollment.x509.builder computes it."""
    start = now.replace(microsecond=0)
    return min(start + timedelta(days=validity_days) - _SECOND, ca.not_after)


def minimum_days(template: CertificateTemplate) -> int:
    """Fewer days than this and issuance is refused; a template asking for fewer is not."""
    return min(int(settings.PKIPORTAL_MIN_CERTIFICATE_DAYS), template.validity_days)


def issuance_problem(
    ca: CertificateAuthority, template: CertificateTemplate, now: datetime | None = None
) -> str | None:
    """Why ``ca`` must not issue for ``template`` now, in words for the requester and the
    operator (worded when read: the page's language, the audit trail's English); None
    when it may (perhaps cut short: see certificate_end)."""
    now = now or timezone.now()
    if ca.not_after <= now:
        return worded(
            _(
                "The issuing CA %(ca)s expired on %(date)s, so %(template)s cannot issue until "
                "an administrator moves it to a new issuing CA."
            ),
            ca=ca.name,
            date=f"{ca.not_after:%Y-%m-%d}",
            template=template.name,
        )
    if ca.not_before > now:
        return worded(
            _("The issuing CA %(ca)s is not valid before %(time)s UTC."),
            ca=ca.name,
            time=f"{ca.not_before:%Y-%m-%d %H:%M}",
        )
    start = now.replace(microsecond=0)
    lasts = _lasts(start, certificate_end(ca, template.validity_days, now))
    if lasts < timedelta(days=minimum_days(template)):
        return worded(
            _(
                "The issuing CA %(ca)s ends on %(time)s UTC, so a certificate from %(template)s "
                "would last %(lasts)s instead of %(days)s: it is not issued. An administrator "
                "must move the template to a new issuing CA."
            ),
            ca=ca.name,
            time=f"{ca.not_after:%Y-%m-%d %H:%M}",
            template=template.name,
            lasts=_days(lasts),
            days=plurals.days_when_read(template.validity_days),
        )
    return None


def _days(span: timedelta) -> str:
    if span >= timedelta(days=1):
        return plurals.days_when_read(span.days)
    return plurals.hours_when_read(int(span.total_seconds() // 3600))


@dataclass(frozen=True)
class CutShort:
    """A certificate, issued or to be issued, that its CA's end makes shorter than its template."""

    not_after: datetime
    days: int  # whole days it lasts
    template_days: int
    ca_name: str

    @property
    def message(self) -> str:
        """Read where it is shown: worded there, in that page's language."""
        return str(
            worded(
                _(
                    "Valid until %(time)s UTC (%(days)s), shorter than the template's "
                    "%(template_days)s, because the issuing CA %(ca)s ends then."
                ),
                time=f"{self.not_after:%Y-%m-%d %H:%M}",
                days=plurals.days_when_read(self.days),
                template_days=plurals.days_when_read(self.template_days),
                ca=self.ca_name,
            )
        )


def cut_short(certificate: Certificate) -> CutShort | None:
    """Whether this certificate ends with its CA, short of its template's validity.

    Ending exactly at the CA's notAfter is the builder's cut; a template whose validity was
    changed after issuance does not make an ordinary certificate look cut.
    """
    template, ca = certificate.template, certificate.ca
    if template is None or certificate.not_after < ca.not_after:
        return None
    lasts = _lasts(certificate.not_before, certificate.not_after)
    if lasts >= timedelta(days=template.validity_days):
        return None
    return CutShort(certificate.not_after, lasts.days, template.validity_days, ca.name)


@dataclass(frozen=True)
class Outlook:
    """What a certificate from a template would get if issued now."""

    ca: CertificateAuthority
    cut_short: CutShort | None
    refused: str | None


def template_outlook(template: CertificateTemplate, now: datetime | None = None) -> Outlook | None:
    """For the enrolment page: the CA the template issues from, and whether its end cuts
    or refuses a certificate issued now; None when there is no such CA."""
    now = now or timezone.now()
    ca = template.issuing_from()
    if ca is None:
        return None
    refused = issuance_problem(ca, template, now)
    if refused is not None:
        return Outlook(ca, None, refused)
    end = certificate_end(ca, template.validity_days, now)
    lasts = _lasts(now.replace(microsecond=0), end)
    short = None
    if lasts < timedelta(days=template.validity_days):
        short = CutShort(end, lasts.days, template.validity_days, ca.name)
    return Outlook(ca, short, None)
