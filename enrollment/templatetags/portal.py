"""Small template filters and tags for the portal's pages."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django import template
from django.utils.html import format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _
from django.utils.translation import pgettext

from enrollment import seed_texts
from enrollment.forms import RecoveryWithdrawForm, WithdrawForm
from enrollment.models import AuditEvent, CertificateRequest, KeyRecoveryRequest
from enrollment.permissions import REFUSALS
from enrollment.scopes import Reach, reach_of
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.names import readable_rfc4514
from enrollment.x509.pkcs7 import format_fingerprint
from pkiportal import i18n, plurals

register = template.Library()

# A label put into a sentence (pkiportal.i18n): |mid_sentence for states, whose first
# letter goes small in every language; |noun_mid_sentence for nouns (purposes, revocation
# reasons), which German keeps capitalised. Not |lower: it would lower a German noun, and
# a name inside a label.
register.filter("mid_sentence", i18n.mid_sentence)
register.filter("noun_mid_sentence", i18n.noun_mid_sentence)
# A seeded template's description, still as we wrote it, in the reader's language.
register.filter("seeded_text", seed_texts.seeded_text)


@register.simple_tag
def withdraw_form(cert_request: CertificateRequest) -> WithdrawForm:
    """A blank withdrawal form for one request of a list (its ids name the request)."""
    return WithdrawForm(request_pk=cert_request.pk)


@register.simple_tag
def recovery_withdraw_form(recovery: KeyRecoveryRequest) -> RecoveryWithdrawForm:
    """A blank form to withdraw one key recovery request of a list (ids name it)."""
    return RecoveryWithdrawForm(recovery_pk=recovery.pk)


@register.simple_tag(takes_context=True)
def officer_reach(context: template.Context) -> Reach | None:
    """The signed-in officer's Reach where a scope limits it, else None: the RA pages say
    whom a scoped officer acts for, so that a short list reads as the scope, not as
    missing data. Read once per request (scopes.reach_of caches it on the user)."""
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    reach = reach_of(user)
    return None if reach.everyone else reach


@register.filter
def fingerprint(value: str) -> str:
    """AB:CD:… the way openssl, Windows and Outlook show a fingerprint."""
    return format_fingerprint(value or "")


@register.filter
def duration(value: timedelta | None) -> str:
    """A cool-off period in words: "1 hour", "30 minutes", "1 hour 30 minutes"."""
    if not isinstance(value, timedelta):
        return ""
    minutes = max(round(value.total_seconds() / 60), 1)
    hours, minutes = divmod(minutes, 60)
    parts = []
    if hours:
        parts.append(plurals.hours(hours))
    if minutes:
        parts.append(plurals.minutes(minutes))
    return " ".join(parts)


@register.filter
def key_label(value: str) -> str:
    """ "rsa-3072" as people read it: "RSA 3072"; unknown values pass through."""
    try:
        return KeyAlgorithm(value).label
    except ValueError:
        return value


@register.filter
def readable_dn(value: str) -> str:
    """A stored subject with short names (SN=, GN=) instead of dotted OIDs (2.5.4.4=)."""
    return readable_rfc4514(value or "")


@register.filter
def audit_label(event: AuditEvent) -> str:
    """What /ra/audit/ says of an event beside its action, where the action alone does not
    say it: a refused attempt names what was attempted and why ("Refused: request.approve,
    outside their officer scope"). Empty for the others."""
    from enrollment.services import ACCESS_REFUSED

    if event.action != ACCESS_REFUSED or not isinstance(event.detail, dict):
        return ""
    attempted = str(event.detail.get("attempted", "")) or _("an action")
    reason = str(event.detail.get("reason", ""))
    # Translators: on the audit page; "attempted" is an audit action such as request.approve
    # (kept in English), "reason" why it was refused.
    return _("Refused: %(attempted)s, %(reason)s") % {
        "attempted": attempted,
        "reason": REFUSALS.get(reason, reason or _("not permitted")),
    }


@register.filter
def certificate_state(value: str) -> str:
    """A certificate's state (Certificate.state: valid, revoked, expired) as its badge says
    it, in the reader's language; an unknown value passes through, capitalised."""
    labels = {
        # Translators: a certificate's status, on a badge.
        "valid": pgettext("certificate status", "Valid"),
        # Translators: a certificate's status, on a badge.
        "revoked": pgettext("certificate status", "Revoked"),
        # Translators: a certificate's status, on a badge.
        "expired": pgettext("certificate status", "Expired"),
    }
    return labels.get(value, value[:1].upper() + value[1:])


@register.filter
def invitation_status(value: str) -> str:
    """A roll-out invitation's status (RolloutInvitation.status) in words; a request state
    it falls back to, or an unknown value, passes through."""
    labels = {
        # Translators: a roll-out invitation's status: the certificate was collected.
        "collected": pgettext("invitation status", "collected"),
        # Translators: a roll-out invitation's status: waiting to be collected.
        "invited": pgettext("invitation status", "invited"),
        # Translators: a roll-out invitation's status: the person declined it.
        "declined": pgettext("invitation status", "declined"),
        # Translators: a roll-out invitation's status: an officer cancelled it.
        "cancelled": pgettext("invitation status", "cancelled"),
        # Translators: a roll-out invitation's status: its roll-out ended.
        "expired": pgettext("invitation status", "expired"),
    }
    return labels.get(value, value)


@register.filter
def join_mailboxes(mailboxes: Iterable[Any]) -> SafeString:
    """Shared mailboxes as "Name <address>, Name <address>": one value, escaped here, for a
    sentence a translation words around it."""
    return format_html_join(", ", "{} &lt;{}&gt;", ((m.display_name, m.email) for m in mailboxes))


@register.filter
def join_names(authorities: Iterable[Any]) -> str:
    """CAs' names as one value for a sentence: "Issuing CA and Root CA" (each joined by
    "and", in the reader's language)."""
    names = [str(ca.name) for ca in authorities]
    joined = names[0] if names else ""
    for name in names[1:]:
        # Translators: joins the names of certificate authorities: "Issuing CA and Root CA".
        joined = _("%(names)s and %(name)s") % {"names": joined, "name": name}
    return joined
