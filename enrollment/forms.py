"""Web forms of the CA side: they check the shape of what a person typed; services decide."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from django import forms
from django.conf import settings
from django.utils import timezone
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from accounts.models import User
from enrollment.exceptions import EnrollmentError
from enrollment.models import HOLDER_REVOCATION_REASONS, CertificateTemplate
from enrollment.pkcs12_password import pkcs12_password_problems
from enrollment.recovery import MAX_TEXT_LENGTH, clean_text
from enrollment.x509.csr import MAX_CSR_BYTES
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.pkcs12 import Pkcs12Format
from pkiportal import plurals

if TYPE_CHECKING:
    from django_stubs_ext import StrOrPromise

# Offered in this order; RSA first because every mail client can encrypt to it.
ALGORITHM_ORDER = [
    KeyAlgorithm.RSA_3072,
    KeyAlgorithm.RSA_2048,
    KeyAlgorithm.RSA_4096,
    KeyAlgorithm.EC_P256,
    KeyAlgorithm.EC_P384,
]
ALGORITHM_HELP = {
    KeyAlgorithm.RSA_2048: _("works everywhere; the minimum the S/MIME rules allow"),
    KeyAlgorithm.RSA_3072: _("recommended; works with every mail client"),
    KeyAlgorithm.RSA_4096: _("strongest RSA; generating it takes a few seconds"),
    KeyAlgorithm.EC_P256: _("small and fast; older Outlook versions cannot encrypt to it"),
    KeyAlgorithm.EC_P384: _("small and fast; older Outlook versions cannot encrypt to it"),
}
FORMAT_CHOICES = [
    (
        Pkcs12Format.MODERN.value,
        _(
            "Modern (AES-256): Windows 10 and 11, Outlook 2019 and later, macOS, iOS, "
            "Android, Thunderbird"
        ),
    ),
    (
        Pkcs12Format.COMPATIBLE.value,
        _(
            "Compatible (3DES): older Windows and Outlook versions that reject the modern "
            "file; weaker protection, so keep the file safe and delete it after importing"
        ),
    ),
]
# What a person may give as the reason for revoking their own certificate (RFC 5280 5.3.1).
OWN_REVOCATION_REASONS = [(choice.value, choice.label) for choice in HOLDER_REVOCATION_REASONS]
# Translators: the descriptions below complete "<revocation reason>: ...", said by the
# certificate's holder ("my private key").
REVOCATION_HELP = {
    "keyCompromise": _("someone else may have my private key (a lost laptop, a leaked file)"),
    "affiliationChanged": _("my name, e-mail address or role changed"),
    "superseded": _("I have a new certificate that replaces this one"),
    "cessationOfOperation": _("I no longer need it"),
}


class PortalForm(forms.Form):
    """Labels without Django's trailing colon: the pages style labels as headings.

    A form sent back with errors autofocuses its first field with one: the browser
    scrolls it into view, where on a long page (a phone's) it would sit below the fold
    and the page look as if nothing had happened."""

    # A field whose error sends the focus to another: one typed again before it.
    error_focus: ClassVar[dict[str, str]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)

    def add_error(self, field: str | None, error: Any) -> None:
        super().add_error(field, error)
        first = next((name for name in self.fields if name in self.errors), None)
        if first is not None:
            focus = self.fields[self.error_focus.get(first, first)]
            focus.widget.attrs["autofocus"] = True


def password_manager_name(what: str) -> str:
    """The name a password manager files a file's password under: the file, not the person.

    A form with only password fields looks to a password manager like a sign-up or a
    password change of the site's account, so it offers to save (or "update") the portal
    sign-in with the file's password. Chromium's guide ("Create Amazing Password Forms":
    hidden fields for implicit information) and its form parser take the field marked
    autocomplete="username", shown or not, as the account: this one names the file.
    """
    return f"{what} (.p12 file)"


class Pkcs12PasswordForm(PortalForm):
    """The password that protects a PKCS#12 file; it is used once and never stored.

    Both fields are "new-password" (a password chosen now, never the sign-in's to fill),
    and the template puts ``password_manager_name`` before them as the username
    (enrollment/includes/password_manager_name.html).
    """

    # Sent back, both password fields are empty (PasswordInput): the first is typed first.
    error_focus: ClassVar[dict[str, str]] = {"pkcs12_password_confirm": "pkcs12_password"}

    pkcs12_password = forms.CharField(
        label=_("Password for the .p12 file"),
        strip=False,
        error_messages={"required": _("Choose a password for the .p12 file.")},
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    pkcs12_password_confirm = forms.CharField(
        label=_("The same password again"),
        strip=False,
        error_messages={"required": _("Type the password a second time.")},
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    pkcs12_format = forms.ChoiceField(
        label=_("File format"),
        choices=FORMAT_CHOICES,
        initial=Pkcs12Format.MODERN.value,
        widget=forms.RadioSelect,
    )

    def __init__(self, *args: Any, user: User, file_of: str = "Certificate", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self.password_manager_name = password_manager_name(file_of)
        minimum = settings.PKIPORTAL_PKCS12_PASSWORD_MIN_LENGTH
        self.fields["pkcs12_password"].help_text = ngettext(
            "At least %(count)d character, not your sign-in password. You need it once, when "
            "you import the file into your mail client; the portal does not keep it and "
            "cannot tell it to you again.",
            "At least %(count)d characters, not your sign-in password. You need it once, when "
            "you import the file into your mail client; the portal does not keep it and "
            "cannot tell it to you again.",
            minimum,
        ) % {"count": minimum}

    def clean_pkcs12_password(self) -> str:
        password: str = self.cleaned_data["pkcs12_password"]
        problems = pkcs12_password_problems(password, self.user)
        if problems:
            raise forms.ValidationError(problems)
        return password

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        password = cleaned.get("pkcs12_password")
        confirmation = cleaned.get("pkcs12_password_confirm")
        if password and confirmation is not None and password != confirmation:
            self.add_error("pkcs12_password_confirm", _("The two passwords differ."))
        return cleaned

    @property
    def chosen_format(self) -> Pkcs12Format:
        return Pkcs12Format(self.cleaned_data["pkcs12_format"])


class ServerKeyForm(Pkcs12PasswordForm):
    """Enrol with a key the portal generates, for the algorithms the template allows."""

    key_algorithm = forms.ChoiceField(
        label=_("Key type"),
        widget=forms.RadioSelect,
        error_messages={"invalid_choice": _("This template does not allow that key type.")},
    )
    renewal_of = forms.IntegerField(required=False, widget=forms.HiddenInput)
    mailbox = forms.ChoiceField(
        label=_("For"),
        required=False,
        widget=forms.RadioSelect,
        error_messages={"invalid_choice": _("You are not a delegate of that shared mailbox.")},
    )

    field_order = ["mailbox", "key_algorithm", "pkcs12_password", "pkcs12_password_confirm"]

    def __init__(
        self,
        *args: Any,
        template: CertificateTemplate,
        ask_password: bool = True,
        mailboxes: Sequence[Any] = (),
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("file_of", template.name)
        super().__init__(*args, **kwargs)
        if mailboxes:
            # A delegate enrols for a shared mailbox here: its subject is the mailbox's.
            user = getattr(self, "user", None)
            mine = _("Myself (%(address)s)") % {
                "address": getattr(user, "email", "") or _("my account")
            }
            mailbox_field = self.fields["mailbox"]
            assert isinstance(mailbox_field, forms.ChoiceField)  # as declared above
            mailbox_field.choices = [
                ("", mine),
                *(
                    (
                        str(m.pk),
                        _("%(name)s <%(email)s> (shared mailbox)")
                        % {"name": m.display_name, "email": m.email},
                    )
                    for m in mailboxes
                ),
            ]
            self._mailboxes = {str(m.pk): m for m in mailboxes}
        else:
            del self.fields["mailbox"]
            self._mailboxes = {}
        if not ask_password:
            # Approval first: the key is generated, and the password asked, at download.
            for name in ("pkcs12_password", "pkcs12_password_confirm", "pkcs12_format"):
                del self.fields[name]
        allowed = [a for a in ALGORITHM_ORDER if a in template.key_algorithms]
        field = self.fields["key_algorithm"]
        assert isinstance(field, forms.ChoiceField)  # as declared above
        field.choices = [(a.value, f"{a.label} ({ALGORITHM_HELP[a]})") for a in allowed]
        if allowed:
            field.initial = allowed[0].value

    @property
    def chosen_algorithm(self) -> KeyAlgorithm:
        return KeyAlgorithm(self.cleaned_data["key_algorithm"])

    @property
    def chosen_mailbox(self) -> Any:
        """The shared mailbox chosen, or None for the person themselves."""
        return self._mailboxes.get(self.cleaned_data.get("mailbox") or "")


class CsrForm(PortalForm):
    """Enrol with your own key: a PKCS#10 request pasted as PEM or uploaded as PEM/DER."""

    csr = forms.CharField(
        label=_("Paste the request (PEM)"),
        required=False,
        max_length=MAX_CSR_BYTES,
        widget=forms.Textarea(
            attrs={
                "rows": 8,
                "spellcheck": "false",
                "placeholder": "-----BEGIN CERTIFICATE REQUEST-----\n…",
            }
        ),
    )
    csr_file = forms.FileField(
        label=_("…or upload the file (.csr, .req, .pem or .der)"),
        required=False,
        widget=forms.ClearableFileInput(attrs={"accept": ".csr,.req,.pem,.der,.p10"}),
    )
    renewal_of = forms.IntegerField(required=False, widget=forms.HiddenInput)

    def clean_csr_file(self) -> bytes | None:
        upload = self.cleaned_data.get("csr_file")
        if not upload:
            return None
        if upload.size > MAX_CSR_BYTES:
            raise forms.ValidationError(
                _("The file is larger than %(size)d KiB; that is not a certificate request.")
                % {"size": MAX_CSR_BYTES // 1024}
            )
        data: bytes = upload.read(MAX_CSR_BYTES + 1)
        return data

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        pasted = (cleaned.get("csr") or "").strip()
        uploaded = cleaned.get("csr_file")
        if self.errors:
            return cleaned
        if pasted and uploaded:
            raise forms.ValidationError(_("Paste the request or upload it, not both."))
        if not pasted and not uploaded:
            raise forms.ValidationError(_("Paste a certificate request or choose its file."))
        cleaned["csr_data"] = uploaded or pasted.encode("utf-8")
        return cleaned


class DecisionForm(PortalForm):
    """An RA officer's approval or rejection; a rejection must say why."""

    # Translators: an RA officer's decision on a certificate request.
    decision = forms.ChoiceField(choices=[("approve", _("Approve")), ("reject", _("Reject"))])
    reason = forms.CharField(
        label=_("Reason"),
        required=False,
        max_length=1000,
        widget=forms.TextInput(attrs={"placeholder": _("Required when rejecting")}),
    )

    @property
    def approves(self) -> bool:
        return bool(self.cleaned_data["decision"] == "approve")


def invalidity_date_field(
    label: StrOrPromise, *, help_text: StrOrPromise = ""
) -> forms.DateTimeField:
    """Since when a key may be compromised (RFC 5280 5.3.2), as a browser's date and time
    picker in the portal's time zone; the service checks it is possible."""
    return forms.DateTimeField(
        label=label,
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text=help_text,
        error_messages={"invalid": _("Give a date and time, e.g. 2026-11-02 09:30.")},
    )


COMPROMISE_ONLY = _(
    "Only a key compromise has a date since when the key may have been in other hands: "
    "leave the date empty, or choose key compromise."
)


class RevokeForm(PortalForm):
    """Revoke your own certificate, for one of the reasons a subscriber may give.

    The date since when the key may have been in other hands belongs to a key compromise
    only: the page shows it for that reason alone (static/js/revoke.js), and without
    JavaScript a date given with another reason is refused rather than published on
    every CRL as if the key had leaked.
    """

    reason = forms.ChoiceField(
        label=_("Why?"),
        choices=[
            (value, format_lazy("{}: {}", label, REVOCATION_HELP[value]))
            for value, label in OWN_REVOCATION_REASONS
        ],
        widget=forms.RadioSelect,
        error_messages={"required": _("Say why you revoke it.")},
    )
    invalidity_date = invalidity_date_field(
        _("Since when may the key have been in other hands? (optional)")
    )
    confirm = forms.BooleanField(
        label=_("I understand that a revoked certificate cannot be used again."),
        error_messages={"required": _("Tick the box to confirm.")},
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The zone the typed time is read in, named: read now, as TIME_ZONE may change.
        zone = timezone.get_current_timezone_name()
        field = self.fields["invalidity_date"]
        field.label = _("Since when may the key have been in other hands? (optional, %(zone)s)") % {
            "zone": zone
        }
        field.help_text = _(
            "Only for a key compromise. A date and time in %(zone)s, the portal's time zone. "
            "If you know it, the revocation list says so (RFC 5280's invalidity date), and "
            "whoever checks a signature made after it can tell."
        ) % {"zone": zone}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        reason = cleaned.get("reason")
        if cleaned.get("invalidity_date") is not None and reason and reason != "keyCompromise":
            self.add_error("invalidity_date", COMPROMISE_ONLY)
        return cleaned


class WithdrawForm(PortalForm):
    """Take back one's own request; the tick is there because it cannot be undone."""

    def __init__(self, *args: Any, request_pk: int | None = None, **kwargs: Any) -> None:
        # Ids that name the request: a list of requests holds one form per row.
        if request_pk is not None:
            kwargs.setdefault("auto_id", f"withdraw-{request_pk}-%s")
        super().__init__(*args, **kwargs)

    confirm = forms.BooleanField(
        label=_(
            "I understand that a withdrawn request cannot be reopened: I would have to "
            "request again."
        ),
        error_messages={"required": _("Tick the box to confirm.")},
    )


# --- API tokens (/account/tokens/) ----------------------------------------------------

# Lifetimes offered besides the longest allowed (API_TOKEN_TTL_DAYS), which is always one.
TOKEN_LIFETIMES = (1, 7, 30, 90, 180, 365)
TOKEN_DEFAULT_LIFETIME = 30


def token_lifetime_choices() -> list[tuple[int, str]]:
    """1 day up to API_TOKEN_TTL_DAYS, never beyond: read when the form is made, so a
    changed setting needs no restart of this module."""
    longest = settings.API_TOKEN_TTL_DAYS
    days = sorted({*(d for d in TOKEN_LIFETIMES if d < longest), longest})
    return [
        (
            d,
            _("%(days)s (the longest allowed)") % {"days": plurals.days(d)}
            if d == longest
            else plurals.days(d),
        )
        for d in days
    ]


class ApiTokenForm(PortalForm):
    """Name a new API token and choose how long it lives; the service decides the rest."""

    label = forms.CharField(
        label=_("Name"),
        max_length=100,
        help_text=_(
            "What uses it, so you know which one to revoke later: e.g. “backup script on build-01”."
        ),
        error_messages={"required": _("Name the token, e.g. after the script that uses it.")},
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    lifetime_days = forms.TypedChoiceField(
        label=_("Expires after"),
        coerce=int,
        help_text=_(
            "A shorter life limits what a leaked token can do; create a new one when it expires."
        ),
        error_messages={
            "required": _("Choose how long the token lives."),
            "invalid_choice": _("Choose one of the lifetimes offered."),
        },
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = token_lifetime_choices()
        field = self.fields["lifetime_days"]
        assert isinstance(field, forms.TypedChoiceField)  # as declared above
        field.choices = choices
        offered = [days for days, _label in choices]
        field.initial = TOKEN_DEFAULT_LIFETIME if TOKEN_DEFAULT_LIFETIME in offered else offered[-1]


# The tick's label, for one API token or for all of them: whole sentences, so that a
# translation need not fit "it" or "them" into a frame.
CONFIRM_REVOKE_ONE = _("I understand that scripts using it stop working at once.")
CONFIRM_REVOKE_ALL = _("I understand that scripts using them stop working at once.")


class ConfirmForm(PortalForm):
    """A tick before something that cannot be undone (revoking API tokens)."""

    def __init__(
        self,
        *args: Any,
        id_prefix: str,
        label: StrOrPromise = CONFIRM_REVOKE_ONE,
        **kwargs: Any,
    ) -> None:
        # Ids of their own: the tokens page holds one form per token and one for all.
        kwargs.setdefault("auto_id", f"{id_prefix}-%s")
        super().__init__(*args, **kwargs)
        self.fields["confirm"].label = label

    confirm = forms.BooleanField(error_messages={"required": _("Tick the box to confirm.")})


def plain_text(value: str, *, field: str, empty: str, what: str = "The reason") -> str:
    """The services' text rule (enrollment.recovery.clean_text), as a form error."""
    try:
        return clean_text(value, field=field, empty=empty, what=what)
    except EnrollmentError as exc:
        raise forms.ValidationError(exc.message) from None


class RecoveryAskForm(PortalForm):
    """The holder asks for their archived key back: why, and the file format they need."""

    reason = forms.CharField(
        label=_("Why do you need the key back?"),
        max_length=MAX_TEXT_LENGTH,
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={"required": _("Say why you need the key back.")},
        help_text=_(
            "For example: “My laptop was stolen and I need to read mail encrypted to "
            "this certificate.” RA officers read it, and it is kept in the audit trail."
        ),
    )
    pkcs12_format = forms.ChoiceField(
        label=_("File format of the recovered key"),
        choices=FORMAT_CHOICES,
        initial=Pkcs12Format.MODERN.value,
        widget=forms.RadioSelect,
    )

    def clean_reason(self) -> str:
        return plain_text(
            self.cleaned_data["reason"],
            field="reason",
            empty=str(_("Say why you need the key back.")),
            what="The reason",
        )


class RecoveryWithdrawForm(PortalForm):
    """The holder takes back their recovery request; ticked, as a new one must be asked."""

    def __init__(self, *args: Any, recovery_pk: int | None = None, **kwargs: Any) -> None:
        if recovery_pk is not None:
            kwargs.setdefault("auto_id", f"withdraw-recovery-{recovery_pk}-%s")
        super().__init__(*args, **kwargs)

    confirm = forms.BooleanField(
        label=_("I no longer need this key recovered. (To get it later, I would ask again.)"),
        error_messages={"required": _("Tick the box to confirm.")},
    )
