"""Forms of the RA pages and the admin's agent registration: shape only; services decide."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any, cast

from django_stubs_ext import StrOrPromise

from cryptography import x509

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _

from enrollment import bulk_revoke
from enrollment.forms import (
    ALGORITHM_ORDER,
    FORMAT_CHOICES,
    PortalForm,
    invalidity_date_field,
    password_manager_name,
    plain_text,
)
from enrollment.models import (
    ApprovalNoticeDigest,
    AuditEvent,
    Certificate,
    CertificateRequest,
    CertificateTemplate,
    KeyRecoveryRequest,
)
from enrollment.permissions import decider
from enrollment.recovery import MAX_AGENT_PKCS12_BYTES, MAX_TEXT_LENGTH
from enrollment.x509.pkcs12 import Pkcs12Format

# Officers revoke for any RFC 5280 reason a subscriber certificate can have.
OFFICER_REVOCATION_REASONS = Certificate.RevocationReasonChoice.choices
MAX_CERTIFICATE_BYTES = 64 * 1024


class CertificateSearchForm(PortalForm):
    q = forms.CharField(
        label=_("Find a certificate"),
        required=False,
        max_length=200,
        help_text=_(
            "Names and addresses match from three characters; user names, serials and "
            "fingerprints match exactly (a serial also by its first six or more digits)."
        ),
        widget=forms.TextInput(
            attrs={
                "type": "search",
                "placeholder": _("Name, e-mail, user name, serial or fingerprint"),
            }
        ),
    )


class NoticeDeliveryForm(PortalForm):
    """How the signed-in officer hears of requests waiting for their approval."""

    delivery = forms.ChoiceField(
        label=_("Mail me about requests waiting for my approval"),
        choices=[
            (
                ApprovalNoticeDigest.Delivery.SUMMARIES,
                _(
                    "In summaries (the default): the first request after a quiet period at "
                    "once, those soon after it together"
                ),
            ),
            (
                ApprovalNoticeDigest.Delivery.IMMEDIATE,
                _("Every request at once, each in its own mail"),
            ),
            (ApprovalNoticeDigest.Delivery.NONE, _("Not at all: I check this console myself")),
        ],
        widget=forms.RadioSelect,
    )


class OfficerRevokeForm(PortalForm):
    # Translators: the revocation reason, a field label.
    reason = forms.ChoiceField(label=_("Reason"), choices=OFFICER_REVOCATION_REASONS)
    # Lazy, so worded in the reader's language (cast: invalidity_date_field types it str).
    invalidity_date = invalidity_date_field(cast(str, _("Key exposed since")))
    confirm = forms.BooleanField(label=_("Revoke: this cannot be undone"), required=True)


class LeaverRevokeForm(PortalForm):
    """Revoke every certificate a leaver still holds: the reason is affiliationChanged,
    so only the RA page's "I am sure" is asked."""

    confirm = OfficerRevokeForm.base_fields["confirm"]


class BulkRevokeResumeForm(PortalForm):
    """Resume a stalled or stopped bulk revocation: it revokes what is left of a selection
    confirmed earlier, so only "I am sure" is asked."""

    confirm = forms.BooleanField(label=_("Resume: what is left is revoked"), required=True)


class MailboxDeactivateForm(PortalForm):
    """The admin's "deactivate" of shared mailboxes: their certificates are revoked after
    the grace period and their open requests withdrawn, so it is confirmed first."""

    confirm = forms.BooleanField(
        label=_(
            "Deactivate: their open requests are withdrawn, their certificates revoked "
            "after the grace period"
        ),
        error_messages={"required": _("Tick the box to confirm.")},
    )


class CaSwitchForm(PortalForm):
    """The admin's "issue from this CA": every template of the default CA moves at once,
    so it is confirmed on a page that lists them."""

    confirm = forms.BooleanField(
        label=_("Switch: the templates listed issue from this CA from now on"),
        error_messages={"required": _("Tick the box to confirm.")},
    )


class BulkRevokeForm(OfficerRevokeForm):
    """The admin's "revoke selected certificates": the RA page's reason, date and "I am
    sure", no reason chosen in advance, and for more than one certificate their number
    typed out, so "select all" cannot revoke a whole PKI in two clicks."""

    count = forms.IntegerField(
        label=_("Number of certificates to revoke"),
        min_value=0,
        error_messages={"required": _("Type the number of certificates to revoke.")},
    )

    def __init__(self, *args: Any, expected: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.expected = expected
        reason = self.fields["reason"]
        assert isinstance(reason, forms.ChoiceField)  # as OfficerRevokeForm declares it
        reason.choices = [("", _("Choose a reason…")), *OFFICER_REVOCATION_REASONS]
        reason.error_messages["required"] = _("Choose a reason.")
        if expected > 1:
            self.fields["count"].help_text = _("Type %(expected)d to confirm.") % {
                "expected": expected
            }
        else:
            del self.fields["count"]

    def clean_count(self) -> int:
        typed: int = self.cleaned_data["count"]
        if typed != self.expected:
            raise forms.ValidationError(
                _(
                    "%(typed)d is not the number of certificates that would be revoked: "
                    "%(expected)d. Check the selection, then type %(expected)d."
                )
                % {"typed": typed, "expected": self.expected}
            )
        return typed


class RecoveryOpenForm(PortalForm):
    certificate = forms.IntegerField(widget=forms.HiddenInput)
    reason = forms.CharField(
        label=_("Why must the key be recovered?"),
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text=_(
            "Shown to the approving officers and the key owner, and kept in the audit trail."
        ),
    )
    deliver_to = forms.ChoiceField(
        label=_("Who downloads the recovered key?"),
        choices=[
            (KeyRecoveryRequest.Recipient.OWNER, _("The key owner, signed in as themselves")),
            (KeyRecoveryRequest.Recipient.REQUESTER, _("Me, the requesting officer")),
        ],
        initial=KeyRecoveryRequest.Recipient.OWNER,
        widget=forms.RadioSelect,
    )
    pkcs12_format = forms.ChoiceField(
        label=_("File format"),
        choices=FORMAT_CHOICES,
        initial=Pkcs12Format.MODERN.value,
        widget=forms.RadioSelect,
    )
    # The id of the holder's request the officer saw and ticked to close: a request that
    # replaced it since (withdrawn and asked again) is not closed unseen.
    close_holder_ask = forms.IntegerField(required=False, min_value=1, max_value=2**63 - 1)

    def clean_reason(self) -> str:
        empty = str(_("Say why the key must be recovered."))
        return plain_text(self.cleaned_data["reason"], field="reason", empty=empty)


class RecoveryRejectForm(PortalForm):
    # Translators: why a key recovery is rejected, a field label.
    reason = forms.CharField(label=_("Reason"), max_length=1000)

    def clean_reason(self) -> str:
        empty = str(_("Say why the recovery is rejected."))
        return plain_text(self.cleaned_data["reason"], field="reason", empty=empty)


NOTE_EMPTY = _("Say how you confirmed that the key's holder asked.")


class RecoveryAcceptForm(PortalForm):
    """An officer takes on a holder's request, saying how they confirmed it is theirs."""

    note = forms.CharField(
        label=_("How did you confirm that the key's holder made this request?"),
        max_length=MAX_TEXT_LENGTH,
        widget=forms.Textarea(attrs={"rows": 2}),
        error_messages={"required": NOTE_EMPTY},
        help_text=_(
            "For example: “Called her back on the directory number; she lost her laptop on "
            "3 March.” Shown to the approving officers and kept in the audit trail."
        ),
    )

    def clean_note(self) -> str:
        return plain_text(
            self.cleaned_data["note"], field="note", empty=str(NOTE_EMPTY), what=str(_("The note"))
        )


class RecoveryPerformForm(PortalForm):
    """The agent's own PKCS#12 and its password: used in memory for this request only.

    The password is the file's, typed as a sign-in's would be ("current-password": browsers
    ignore "off" on password fields and took this for the portal's sign-in form), under a
    username naming the file (enrollment.forms.password_manager_name)."""

    password_manager_name = password_manager_name("Key recovery agent")

    agent_pkcs12 = forms.FileField(
        label=_("Your key recovery agent PKCS#12 (.p12 or .pfx)"),
        widget=forms.ClearableFileInput(attrs={"accept": ".p12,.pfx"}),
    )
    agent_password = forms.CharField(
        label=_("Its password"),
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )

    def clean_agent_pkcs12(self) -> bytes:
        return _small_file(
            self.cleaned_data["agent_pkcs12"],
            _("The file is far larger than a key recovery agent's PKCS#12."),
        )


def _small_file(upload: Any, too_large: StrOrPromise) -> bytes:
    """A key file's bytes, in memory (AgentFileInMemory), refused past the size cap
    (``too_large``: the whole refusal, as each file's sentence reads differently)."""
    if upload.size > MAX_AGENT_PKCS12_BYTES:
        raise forms.ValidationError(too_large)
    data: bytes = upload.read(MAX_AGENT_PKCS12_BYTES + 1)
    return data


class RecoveredKeyForm(PortalForm):
    """The key an agent decrypted offline from the exported archive, and its passphrase:
    used in memory for this request only, as RecoveryPerformForm's file (and its
    passphrase marked up as that file's password is)."""

    password_manager_name = "Recovered key (recovered-key.pem)"

    recovered_key = forms.FileField(
        label=_("The recovered key (recovered-key.pem, or the DER that openssl cms wrote)"),
        widget=forms.ClearableFileInput(attrs={"accept": ".pem,.der,.key"}),
    )
    key_passphrase = forms.CharField(
        label=_("Its passphrase (empty if the file is not encrypted)"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )

    def clean_recovered_key(self) -> bytes:
        return _small_file(
            self.cleaned_data["recovered_key"], _("The file is far larger than a private key.")
        )


# Dates a filter takes: wide enough for any record, narrow enough that a day more or a zone
# offset never leaves what datetime can hold (an OverflowError, a 500, at 9999-12-31).
FIRST_DAY = date(1900, 1, 1)
LAST_DAY = date(9998, 12, 31)


class DateRangeForm(PortalForm):
    """A "From"/"To" pair of days, both optional, each inclusive."""

    since = forms.DateField(
        # Translators: the first day of a date range filter.
        label=_("From"),
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    until = forms.DateField(
        # Translators: the last day of a date range filter.
        label=_("To"),
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for name in ("since", "until"):
            day = cleaned.get(name)
            if day is not None and not FIRST_DAY <= day <= LAST_DAY:
                self.add_error(
                    name,
                    _("Give a day from %(first)s to %(last)s.")
                    % {"first": FIRST_DAY, "last": LAST_DAY},
                )
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since > until:
            self.add_error("until", _("The end date is before the start date."))
        return cleaned

    def within(self, rows: QuerySet[Any]) -> QuerySet[Any]:
        """``rows`` created from the first day's start to the last day's end."""
        data = self.cleaned_data
        if data.get("since"):
            rows = rows.filter(created_at__gte=_start_of(data["since"]))
        if data.get("until"):
            rows = rows.filter(created_at__lt=_start_of(data["until"]) + timedelta(days=1))
        return rows


class AuditFilterForm(DateRangeForm):
    """Filters of /ra/audit/; every field is optional and narrows the list."""

    field_order = ["actor", "action", "object", "outcome", "since", "until", "run"]

    # Translators: who acted, in the audit trail.
    actor = forms.CharField(label=_("Actor"), required=False, max_length=200)
    action = forms.CharField(
        # Translators: what was done, in the audit trail.
        label=_("Action"),
        required=False,
        max_length=60,
        widget=forms.TextInput(attrs={"list": "audit-actions"}),
        help_text=_('"recovery" matches every recovery.* action.'),
    )
    object = forms.CharField(
        # Translators: what an audit event was done to.
        label=_("Object"),
        required=False,
        max_length=300,
        help_text=_("Name, id or type."),
    )
    outcome = forms.ChoiceField(
        label=_("Outcome"),
        required=False,
        # Translators: a filter's choice that filters nothing.
        choices=[("", _("Any")), *AuditEvent.Outcome.choices],
    )
    run = forms.IntegerField(
        label=_("Bulk revocation"),
        required=False,
        min_value=1,
        max_value=2**63 - 1,
        help_text=_("A run's number (its .queued event's #): its events."),
    )

    def filter(self, events: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        data = self.cleaned_data
        if data.get("actor"):
            events = events.filter(actor_name__icontains=data["actor"].strip())
        if data.get("action"):
            action = data["action"].strip()
            prefix = action.rstrip(".") + "."
            events = events.filter(Q(action=action) | Q(action__startswith=prefix))
        if data.get("object"):
            text = data["object"].strip()
            events = events.filter(
                Q(object_repr__icontains=text) | Q(object_id=text) | Q(object_type__iexact=text)
            )
        if data.get("outcome"):
            events = events.filter(outcome=data["outcome"])
        if data.get("run"):
            events = events.filter(_bulk_revoke_run(data["run"]))
        return self.within(events)


def _bulk_revoke_run(run: int) -> Q:
    """A bulk revocation's events: the .queued one whose id names the run, and the .batch,
    .resumed and .done events after it that name it. The JSON lookup only compares the few
    events the action and id indexes leave (detail.run is a number: exact on SQLite and
    jsonb)."""
    return Q(pk=run, action=bulk_revoke.QUEUED) | Q(
        pk__gt=run,
        action__in=(bulk_revoke.BATCH_DONE, bulk_revoke.RESUMED, bulk_revoke.DONE),
        detail__run=run,
    )


class RequestFilterForm(DateRangeForm):
    """Filters of /ra/requests/history/: every field is optional and narrows the list."""

    field_order = ["person", "state", "template", "decided_by", "since", "until"]

    person = forms.CharField(
        label=_("Requester"),
        required=False,
        max_length=200,
        help_text=_("Part of a name, user name or e-mail address."),
    )
    state = forms.ChoiceField(
        label=_("State"),
        required=False,
        choices=[("", _("Any")), *CertificateRequest.State.choices],
    )
    template = forms.ModelChoiceField(
        label=_("Template"),
        required=False,
        queryset=CertificateTemplate.objects.order_by("name"),
        to_field_name="slug",
        empty_label=_("Any"),
    )
    decided_by = forms.CharField(
        label=_("Decided by"),
        required=False,
        max_length=200,
        help_text=_("Officer's name or user name."),
    )

    def filter(self, found: QuerySet[CertificateRequest]) -> QuerySet[CertificateRequest]:
        data = self.cleaned_data
        if data.get("person"):
            found = found.filter(_named("requester", data["person"], "email"))
        if data.get("state"):
            found = found.filter(state=data["state"])
        if data.get("template"):
            found = found.filter(template=data["template"])
        if data.get("decided_by"):
            found = found.filter(_named("decided_by", data["decided_by"]))
        return self.within(found)


def _named(account: str, text: str, *more: str) -> Q:
    """The account at ``account`` has ``text`` in its user name or any of its names (or in
    the ``more`` fields too)."""
    text = text.strip()
    fields = ("username", "display_name", "first_name", "last_name", *more)
    match = Q()
    for name in fields:
        match |= Q(**{f"{account}__{name}__icontains": text})
    return match


def _start_of(day: Any) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


class KeyRecoveryAgentRegisterForm(forms.Form):
    """The admin's agent registration: a certificate only, never a private key."""

    name = forms.CharField(
        label=_("Name"), max_length=200, help_text=_('E.g. "Security team KRA 2027".')
    )
    certificate = forms.FileField(
        label=_("Certificate"),
        help_text=_(
            "The agent's certificate, PEM or DER (.pem, .crt, .cer). RSA, with "
            "keyEncipherment. The agent keeps the private key: never upload it."
        ),
    )
    user = forms.ModelChoiceField(
        label=_("User"),
        queryset=get_user_model().objects.filter(is_active=True).order_by("username"),
        required=False,
        help_text=_("The agent's account: only they can then use this certificate to recover."),
    )

    def clean_certificate(self) -> x509.Certificate:
        upload = self.cleaned_data["certificate"]
        if upload.size > MAX_CERTIFICATE_BYTES:
            raise forms.ValidationError(_("The file is too large to be a certificate."))
        data = upload.read(MAX_CERTIFICATE_BYTES + 1)
        if b"PRIVATE KEY" in data:
            raise forms.ValidationError(
                _(
                    "The file holds a private key. Upload the certificate only; the agent's "
                    "key must never reach the server."
                )
            )
        try:
            if b"-----BEGIN CERTIFICATE-----" in data:
                return x509.load_pem_x509_certificate(data)
            return x509.load_der_x509_certificate(data)
        except ValueError:
            raise forms.ValidationError(
                _(
                    "The file is not a PEM or DER certificate (a .p12/.pfx holds the private "
                    "key: export the certificate alone)."
                )
            ) from None


class KeyRecoveryAgentDeactivateForm(forms.Form):
    """Why agents are deactivated: kept in the audit trail."""

    reason = forms.CharField(
        # Translators: why agents are deactivated, a field label.
        label=_("Reason"),
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text=_(
            'E.g. "Holder left the security team" or "Token lost: key may be compromised".'
        ),
    )


class RolloutForm(PortalForm):
    """A roll-out: the template, and the people as a group and/or a pasted list."""

    template = forms.ModelChoiceField(
        label=_("Template"),
        queryset=CertificateTemplate.objects.filter(is_active=True, allow_server_key=True),
        empty_label=None,
        help_text=_("People collect a key the portal generates for them, in a .p12 file."),
    )
    group = forms.ModelChoiceField(
        label=_("Group"),
        queryset=Group.objects.order_by("name"),
        required=False,
        empty_label=_("(no group)"),
        help_text=_("Everyone in this group, as your directory or the admin keeps it."),
    )
    people = forms.CharField(
        label=_("People"),
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false"}),
        help_text=_("User names or e-mail addresses, one a line (or separated by commas)."),
    )
    name = forms.CharField(
        # Translators: a roll-out's name.
        label=_("Name"),
        required=False,
        max_length=200,
        help_text=_("For you and the mail, e.g. “Finance, spring 2027”."),
    )
    key_algorithm = forms.ChoiceField(
        label=_("Key type"),
        required=False,
        choices=[("", _("The template's first (RSA 3072 where it allows it)"))]
        + [(a.value, a.label) for a in ALGORITHM_ORDER],
        help_text=_("Older Outlook versions cannot encrypt to EC keys."),
    )

    def __init__(self, *args: Any, officer: Any, **kwargs: Any) -> None:
        """Only the templates ``officer`` approves (permissions.Decider.approves): a
        roll-out approves the requests it makes, so rollouts.rollout_resolve refuses the
        others; offering them would only lead to that refusal."""
        super().__init__(*args, **kwargs)
        field = self.fields["template"]
        assert isinstance(field, forms.ModelChoiceField)  # as declared above
        templates = field.queryset
        assert templates is not None
        theirs = decider(officer)
        approves = theirs.approves
        offered = list(templates)
        mine = [template.pk for template in offered if approves(template)]
        field.queryset = templates.filter(pk__in=mine)
        if len(mine) < len(offered):
            field.help_text = format_lazy(
                "{} {}",
                field.help_text,
                _(
                    "Only the templates you approve are offered: the requests a roll-out "
                    "makes are approved by you."
                ),
            )
        if not theirs.reach.everyone:  # rollouts.rollout_resolve leaves the others out
            scoped = _(
                "Only the people your officer scope (%(scope)s) covers are invited; the others "
                "are counted, not named."
            ) % {"scope": theirs.reach.describe()}
            group = self.fields["group"]
            group.help_text = format_lazy("{} {}", group.help_text, scoped)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if (
            not self.errors
            and cleaned.get("group") is None
            and not cleaned.get("people", "").strip()
        ):
            raise forms.ValidationError(_("Choose a group or list the people to invite."))
        return cleaned
