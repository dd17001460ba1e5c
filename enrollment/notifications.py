"""E-mail to people about their requests, sent after the transaction commits.

Mail goes through Django's configured backend (console by default). A mail server being
down never undoes a decision: failures are logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.functional import Promise
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from enrollment.models import ApiToken, Certificate, CertificateRequest
from pkiportal.i18n import in_language_of, language_of

logger = logging.getLogger(__name__)

# A subject: text (marked with gettext_lazy) or, when it carries values, a function that
# words it; either is turned into words inside each recipient's language.
Subject = str | Promise | Callable[[], str]

# A recipient: an address (no account, e.g. a shared mailbox's: PKIPORTAL_LANGUAGE) or a
# person (anything with ``email`` and ``language``, e.g. a User), mailed in their language.
Recipient = str | Any


def _address(recipient: Recipient) -> str:
    return (recipient if isinstance(recipient, str) else recipient.email or "").strip()


def _words(subject: Subject) -> str:
    return subject() if callable(subject) else str(subject)


def mail(
    subject: Subject, template: str, context: Mapping[str, object], to: Iterable[Recipient]
) -> None:
    """The template rendered now (links under PKIPORTAL_SITE_URL) and mailed to each address
    once the transaction commits: a step rolled back mails nobody, and one address that
    fails is logged without keeping the others from theirs.

    Subject and body are worded in each recipient's language (pkiportal.i18n), once per
    language. An address listed twice is mailed once, in the language of the account it
    came with, if any: a bare address (ADMINS, a mailbox) knows no one's choice."""
    chosen: dict[str, Recipient] = {}
    for recipient in to:
        address = _address(recipient)
        if address and (address not in chosen or isinstance(chosen[address], str)):
            chosen[address] = recipient
    if not chosen:
        return
    worded: dict[str, tuple[str, str]] = {}
    languages: dict[str, str] = {}
    for address, recipient in chosen.items():
        person = None if isinstance(recipient, str) else recipient
        language = languages[address] = language_of(person)
        if language not in worded:
            with in_language_of(person):
                worded[language] = (
                    _words(subject),
                    render_to_string(
                        template, {**context, "site_url": settings.PKIPORTAL_SITE_URL}
                    ),
                )

    def send() -> None:
        for address in sorted(chosen):
            subject_words, body = worded[languages[address]]
            try:
                send_mail(subject_words, body, settings.DEFAULT_FROM_EMAIL, [address])
            except Exception:
                logger.exception("Could not send %r to %s", subject_words, address)

    transaction.on_commit(send, robust=True)


def _send(subject: Subject, template: str, context: dict[str, object], to: Any) -> None:
    """One person's mail (or an address's, with no account), in their language."""
    mail(subject, template, context, [to])


def request_decided(request: CertificateRequest) -> None:
    """The decision, and for a CSR approved now its outcome: issued, or failed and why."""
    state = CertificateRequest.State
    failed = request.state == state.FAILED
    approved = request.state in (state.APPROVED, state.ISSUED, state.FAILED)
    if failed:
        subject = gettext_lazy("Your certificate request was approved but could not be issued")
    elif approved:
        subject = gettext_lazy("Your certificate request was approved")
    else:
        subject = gettext_lazy("Your certificate request was rejected")
    _send(
        subject,
        "enrollment/email/request_decided.txt",
        {
            "request": request,
            "approved": approved,
            "failed": failed,
            "url": reverse("enrollment:request-detail", args=[request.pk]),
        },
        request.requester,
    )


def certificate_revoked(certificate: Certificate, *, actor: object = None) -> None:
    """Tell the holder: they learn of a revocation they did not make, or confirm their own.
    A shared mailbox's certificate: the mailbox and its delegates."""
    if certificate.mailbox_id is not None:
        from enrollment.ra_notifications import mailbox_certificate_revoked

        mailbox_certificate_revoked(certificate, actor=actor)
        return
    owner = certificate.owner
    if owner is None:
        return
    _send(
        gettext_lazy("Your certificate was revoked"),
        "enrollment/email/certificate_revoked.txt",
        {
            "certificate": certificate,
            "owner": owner,
            "by_holder": getattr(actor, "pk", None) == owner.pk,
            "url": reverse("enrollment:certificate-detail", args=[certificate.pk]),
        },
        owner,
    )


def certificates_outdated(owner: Any, found: list[tuple[Certificate, datetime | None]]) -> None:
    """Certificates naming an address the holder no longer has: which, when each is revoked
    (None: not automatically) and where to renew it for the new address. To the new one."""
    _send(
        lambda: ngettext(
            "Your certificate names your old e-mail address",
            "Your certificates name your old e-mail address",
            len(found),
        ),
        "enrollment/email/certificates_outdated.txt",
        {
            "owner": owner,
            "certificates": [
                {
                    "certificate": certificate,
                    "due_at": due,
                    "url": reverse("enrollment:certificate-detail", args=[certificate.pk]),
                }
                for certificate, due in found
            ],
        },
        owner,
    )


def api_token_created(api_token: ApiToken, *, via: str, source_address: str | None) -> None:
    """A token outlives the session that made it: a stolen session or password that mints
    one shows up in the owner's mailbox, with where to revoke it."""
    token = api_token.auth_token
    _send(
        gettext_lazy("A new API token was created for your account"),
        "enrollment/email/api_token_created.txt",
        {
            "api_token": api_token,
            "auth_token": token,
            "via": via,
            "source_address": source_address,
            "url": reverse("enrollment:token-list"),
        },
        token.user,
    )


def api_token_revoked(owner: Any, *, facts: dict[str, object], actor: Any) -> None:
    """Someone else (an administrator) revoked one of the owner's tokens: scripts that use
    it stop working, and its owner should know why."""
    _send(
        gettext_lazy("One of your API tokens was revoked"),
        "enrollment/email/api_token_revoked.txt",
        {"owner": owner, "facts": facts, "actor": actor, "url": reverse("enrollment:token-list")},
        owner,
    )


def account_started_afresh(
    user: Any,
    *,
    granted_by: Any,
    sessions_ended: int,
    tokens: list[dict[str, object]],
    password_unusable: bool,
    second_factor_removed: bool,
) -> None:
    """The account gained privilege and started afresh (accounts.privilege.start_afresh):
    signed out, its scripts stopped, perhaps its password gone, with no other word. One
    mail says what ended and what to do; ``tokens`` as api_token_revoked names them."""
    _send(
        gettext_lazy("Your account was given new rights: its sign-ins were reset"),
        "enrollment/email/account_fresh_start.txt",
        {
            "user": user,
            "granted_by": granted_by,
            "sessions_ended": sessions_ended,
            "tokens": tokens,
            "password_unusable": password_unusable,
            "second_factor_removed": second_factor_removed,
            "tokens_url": reverse("enrollment:token-list"),
            "url": reverse("accounts:mfa-overview"),
        },
        user,
    )


SECOND_FACTOR_SUBJECTS: dict[str, Promise] = {
    "added": gettext_lazy("An authenticator app was set up for your account"),
    "replaced": gettext_lazy("Your authenticator app was replaced"),
    "removed": gettext_lazy("Your second factor was removed"),
    "app_removed": gettext_lazy("Your authenticator app was removed"),
    "reset": gettext_lazy("An administrator reset your second factor"),
    "backup_codes": gettext_lazy("New backup codes were made for your account"),
    "locked": gettext_lazy("Many wrong second-factor codes were entered for your account"),
    "key_added": gettext_lazy("A security key was added to your account"),
    "key_added_backup_codes": gettext_lazy(
        "A security key and backup codes were added to your account"
    ),
    "key_removed": gettext_lazy("A security key was removed from your account"),
    "key_cloned": gettext_lazy("A copy of your security key was refused"),
}


def second_factor_changed(user: Any, *, change: str, source_address: str | None) -> None:
    """A second factor changed (or is under attack): a thief with the session or the
    password who swaps it shows up in the owner's mailbox, with what to do."""
    _send(
        SECOND_FACTOR_SUBJECTS[change],
        "enrollment/email/second_factor_changed.txt",
        {
            "user": user,
            "change": change,
            "source_address": source_address,
            "url": reverse("accounts:mfa-overview"),
        },
        user,
    )


def rollout_invitations_send(
    invitations: list[Any],
    *,
    reminder: bool,
    on_sent: Callable[[Any], None] | None = None,
    on_failed: Callable[[Any, Exception], None] | None = None,
) -> list[Any]:
    """Mail each invited person the link to their request, over one connection (called by
    a task, outside any transaction); the invitations whose mail went out. One address
    the server refuses does not stop the others. ``on_sent`` runs after each one that
    went, so a worker dying half-way through does not mail the rest of the chunk twice;
    ``on_failed`` after each the server refused. A server that cannot be reached raises."""
    from django.core.mail import EmailMessage, get_connection

    sent: list[Any] = []
    if not invitations:
        return sent
    connection = get_connection()
    try:
        connection.open()
        for invitation in invitations:
            request = invitation.request
            to = (request.requester.email or "").strip()
            if not to:
                continue
            with in_language_of(request.requester):
                subject, body = _invitation(invitation, reminder=reminder)
            message = EmailMessage(
                subject, body, settings.DEFAULT_FROM_EMAIL, [to], connection=connection
            )
            try:
                message.send()
            except Exception as exc:
                logger.exception("Could not send the roll-out invitation #%s", invitation.pk)
                if on_failed is not None:
                    on_failed(invitation, exc)
            else:
                sent.append(invitation)
                if on_sent is not None:
                    on_sent(invitation)
    finally:
        connection.close()
    return sent


def _invitation(invitation: Any, *, reminder: bool) -> tuple[str, str]:
    """A roll-out invitation's subject and body, in the language active now."""
    request = invitation.request
    body = render_to_string(
        "enrollment/email/rollout_invitation.txt",
        {
            "invitation": invitation,
            "request": request,
            "rollout": invitation.rollout,
            "reminder": reminder,
            "url": reverse("enrollment:request-detail", args=[request.pk]),
            "site_url": settings.PKIPORTAL_SITE_URL,
        },
    )
    name = invitation.rollout.template.name
    if reminder:
        subject = _("Reminder: collect your %(template)s certificate") % {"template": name}
    else:
        subject = _("Collect your %(template)s certificate") % {"template": name}
    return subject, body
