"""Shapes of the enrolment API: input serializers check form only, services decide.

Inputs and outputs are separate classes. Inputs never echo what they were given (a
PKCS#12 password, a 60 KiB string); outputs are read-only views of models.
"""

from __future__ import annotations

import base64
import copy
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from django.conf import settings
from django.urls import NoReverseMatch, get_script_prefix, get_urlconf, reverse
from django.utils.functional import Promise, lazy
from django.utils.translation import gettext_lazy as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.validators import ProhibitSurrogateCharactersValidator

from accounts.models import User
from enrollment import ca_lifetime, hotsql, recovery
from enrollment.exceptions import EnrollmentError
from enrollment.models import (
    HOLDER_REVOCATION_REASONS,
    Certificate,
    CertificateAuthority,
    CertificateRequest,
    CertificateTemplate,
    KeyRecoveryRequest,
    SharedMailbox,
)
from enrollment.pkcs12_password import pkcs12_password_problems
from enrollment.scopes import EVERYONE, Reach
from enrollment.x509 import pkcs7
from enrollment.x509.csr import MAX_CSR_BYTES
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.pkcs12 import Pkcs12Format

MAX_PASSWORD_LENGTH = 1024
MAX_REASON_LENGTH = 1000
_SLUG = re.compile(r"[-a-zA-Z0-9_]{1,50}")


def absolute(request: Any, name: str, **kwargs: Any) -> str:
    """An absolute API URL, so clients can follow it as given."""
    url = api_path(name, **kwargs)
    return request.build_absolute_uri(url) if request is not None else url


# Stands for the id while a route's path is reversed once; it matches every lookup
# pattern of the API's routes (a pk's [^/.]+, a serial's hex) and no path holds it.
_ID_MARK = "0123456789abcdef"
# The ids put in its place: digits and lower-case hex, which every route's pattern takes
# as the mark and which reverse() would not quote (a pk; a serial as stored).
_PLAIN_ID = re.compile(r"[0-9a-f]{1,64}")


def api_path(name: str, **kwargs: Any) -> str:
    """``reverse("enrollment-api:<name>", kwargs=kwargs)``, without its cost for one id.

    Django's reverse() takes ~190,000 instructions, and every enrolment's answer has two
    URLs (~3 % of an enrolment). A route with one id is reversed once per script prefix
    and URLconf with a mark in the id's place, and the id is put into that path."""
    if len(kwargs) == 1:
        ((field, value),) = kwargs.items()
        text = str(value)
        if _PLAIN_ID.fullmatch(text):
            urlconf = get_urlconf() or settings.ROOT_URLCONF  # what reverse() resolves with
            path = _path_with_mark(name, field, get_script_prefix(), urlconf)
            if path is not None:
                return path.replace(_ID_MARK, text)
    return reverse(f"enrollment-api:{name}", kwargs=kwargs)


@functools.lru_cache(maxsize=64)
def _path_with_mark(name: str, field: str, script_prefix: str, urlconf: Any) -> str | None:
    """The route's path with _ID_MARK as its id (script_prefix and urlconf: the cache
    key, what reverse() reads), or None when it has no such path."""
    try:
        path = reverse(f"enrollment-api:{name}", urlconf=urlconf, kwargs={field: _ID_MARK})
    except NoReverseMatch:
        return None
    return path if path.count(_ID_MARK) == 1 else None


# --- inputs ---------------------------------------------------------------------------

# Values copy.deepcopy hands back unchanged, as the same object.
_SHARED_TYPES = frozenset({str, bytes, int, float, bool, type(None)})
# How one argument of a declared field is copied for a new instance (list and dict: flat).
_CopyPlan = list[tuple[str, Callable[[Any], Any]]]


def _immutable(value: Any) -> bool:
    """Whether copy.deepcopy(value) is value: Django's lazy texts and enum members return
    themselves too."""
    if type(value) in _SHARED_TYPES or isinstance(value, (Promise, Enum)):
        return True
    return type(value) is tuple and all(_immutable(item) for item in value)


def _declared(field: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments DRF's Field.__new__ keeps, from which Field.__deepcopy__ makes a field."""
    return field._args, field._kwargs


def _copy_plan(field: serializers.Field) -> _CopyPlan | None:  # type: ignore[type-arg]
    """Which of ``field``'s declared arguments a new instance needs copies of, and how:
    a list or dict of immutable values is copied flat, which is what copy.deepcopy makes
    of it. None: some argument is anything else, and the field is deep-copied as DRF does."""
    args, kwargs = _declared(field)
    if (
        args
        or isinstance(field, serializers.BaseSerializer)
        or type(field).__deepcopy__ is not serializers.Field.__deepcopy__
    ):
        return None
    plan: _CopyPlan = []
    for key, value in kwargs.items():
        if key in ("validators", "regex") or _immutable(value):
            continue  # shared: DRF's Field.__deepcopy__ shares validators and regexes too
        if type(value) is list and all(_immutable(item) for item in value):
            plan.append((key, list))
        elif type(value) is dict and all(_immutable(k) and _immutable(v) for k, v in value.items()):
            plan.append((key, dict))
        else:
            return None
    return plan


class InputSerializer(serializers.Serializer[None]):
    """A serializer whose fields are made for each instance as DRF makes them, cheaper.

    DRF deep-copies the declared fields for each serializer, and Field.__deepcopy__ makes
    each field again from deep copies of the arguments it was declared with: texts,
    numbers and choice lists here, for which copy.deepcopy's machinery cost ~220,000
    instructions of every enrolment (bench/enroll_instructions.py). What to copy is
    worked out once per class instead, and copied flat."""

    _copy_plans: dict[str, _CopyPlan | None]

    def get_fields(self) -> dict[str, serializers.Field]:  # type: ignore[type-arg]
        shape = type(self)
        plans = shape.__dict__.get("_copy_plans")  # each class its own, not a parent's
        if plans is None:
            plans = {name: _copy_plan(field) for name, field in self._declared_fields.items()}
            shape._copy_plans = plans
        fields = {}
        for name, field in self._declared_fields.items():
            plan = plans[name]
            if plan is None:
                fields[name] = copy.deepcopy(field)
                continue
            kwargs = _declared(field)[1].copy()
            for key, copy_flat in plan:
                kwargs[key] = copy_flat(kwargs[key])
            fields[name] = type(field)(**kwargs)
        return fields


@extend_schema_field(OpenApiTypes.STR)
class TemplateSlugField(serializers.Field):  # type: ignore[type-arg]
    """A template by slug. The slug is checked for shape before any query, never echoed long.

    A plain Field, not a RelatedField: DRF deep-copies every declared field for each
    serializer it makes, and a RelatedField's queryset with it (~50,000 instructions of
    every enrolment); the lookup is hotsql's anyway."""

    default_error_messages = {
        "invalid": _("Give the template's slug, e.g. smime-signing."),
        "does_not_exist": _("There is no certificate template {slug!r}."),
    }

    def to_internal_value(self, data: Any) -> CertificateTemplate:
        if not isinstance(data, str) or not _SLUG.fullmatch(data):
            self.fail("invalid")
        template = hotsql.template_by_slug(data)  # the enrolment path's first query
        if template is None:
            self.fail("does_not_exist", slug=data)
        return template

    def to_representation(self, value: CertificateTemplate) -> str:
        return value.slug


_SURROGATE = re.compile("[\ud800-\udfff]")


class _SurrogatesRefused(ProhibitSurrogateCharactersValidator):
    """DRF's check, by one regular expression: DRF's own is a Python generator over every
    character, ~150,000 instructions for a 400-character CSR (~1.3 % of an enrolment)."""

    def __call__(self, value: Any) -> None:
        found = _SURROGATE.search(str(value))
        if found is not None:
            message = self.message.format(code_point=ord(found[0]))
            raise serializers.ValidationError(message, code=self.code)


class LongTextField(serializers.CharField):
    """A CharField for long input (a CSR): the same checks, the per-character one in C."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validators = [
            _SurrogatesRefused() if type(check) is ProhibitSurrogateCharactersValidator else check
            for check in self.validators
        ]


def _render(message: Promise, params: dict[str, Any]) -> str:
    return str(message) % params


def _formatted(message: Promise, **params: Any) -> str:
    """A declared message with its values, worded when it is shown (a lazy text, which the
    field keeps as it keeps any other)."""
    worded: str = lazy(_render, str)(message, params)
    return worded


class CsrIn(InputSerializer):
    """Your own key: a PKCS#10 request. Subject and addresses always come from your account."""

    csr = LongTextField(
        min_length=1,  # blank is refused: the schema says so (minLength) for generated clients
        max_length=MAX_CSR_BYTES,
        help_text=_("PEM (-----BEGIN CERTIFICATE REQUEST-----) or the base64 of the DER."),
        error_messages={
            "max_length": _formatted(
                _("A certificate request is at most %(size)d KiB."), size=MAX_CSR_BYTES // 1024
            ),
            "blank": _("Paste the certificate request."),
        },
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        extra = [name for name in ("key_algorithm", "pkcs12_password") if name in self.initial_data]
        if extra:
            raise serializers.ValidationError(
                {extra[0]: [_("Give either a CSR or a key algorithm and password, not both.")]}
            )
        return attrs


class Pkcs12In(InputSerializer):
    """How the PKCS#12 that carries a portal-generated key is protected."""

    pkcs12_password = serializers.CharField(
        write_only=True,
        trim_whitespace=False,
        min_length=1,
        max_length=MAX_PASSWORD_LENGTH,
        style={"input_type": "password"},
        help_text=(
            _("Protects the PKCS#12 file. Checked for strength; never stored, logged or returned.")
        ),
    )
    pkcs12_format = serializers.ChoiceField(
        choices=[(f.value, f.value) for f in Pkcs12Format],
        default=Pkcs12Format.MODERN.value,
        help_text=(
            _(
                "modern: PBES2 with AES-256 (current clients); compatible: 3DES with SHA-1, "
                "for old Windows and Outlook versions."
            )
        ),
    )

    def validate_pkcs12_password(self, password: str) -> str:
        check_pkcs12_password(password, self.context["request"].user)
        return password


class ServerKeyIn(Pkcs12In):
    """A key the portal generates; it leaves once, in a PKCS#12 under your password."""

    key_algorithm = serializers.ChoiceField(choices=[(a.value, a.label) for a in KeyAlgorithm])
    pkcs12_password = serializers.CharField(
        required=False,
        write_only=True,
        trim_whitespace=False,
        min_length=1,
        max_length=MAX_PASSWORD_LENGTH,
        style={"input_type": "password"},
        help_text=(
            _(
                "Protects the PKCS#12 file; checked for strength, never stored, logged or "
                "returned. Required unless the template needs approval: then give it when you "
                "collect."
            )
        ),
    )


@extend_schema_field({"type": "string", "format": "email"})
class MailboxAddressField(serializers.Field):  # type: ignore[type-arg]
    """A shared mailbox by its address (case aside); whether you may use it is the
    service's question (403 for a non-delegate)."""

    default_error_messages = {
        "invalid": _("Give the shared mailbox's e-mail address."),
        "does_not_exist": _("There is no active shared mailbox with that address."),
    }

    def to_internal_value(self, data: Any) -> SharedMailbox:
        if not isinstance(data, str) or not 3 <= len(data) <= 254 or not data.isprintable():
            self.fail("invalid")
        found = SharedMailbox.objects.filter(email=data.strip().lower(), is_active=True).first()
        if found is None:
            self.fail("does_not_exist")
        return found

    def to_representation(self, value: SharedMailbox) -> str:
        return value.email


class CsrEnrollmentIn(CsrIn):
    template = TemplateSlugField(help_text=_("The template's slug, e.g. smime-signing."))


class ServerKeyEnrollmentIn(ServerKeyIn):
    template = TemplateSlugField(help_text=_("The template's slug, e.g. smime-encryption."))
    mailbox = MailboxAddressField(
        required=False,
        help_text=(
            _(
                "Enrol for this shared mailbox (its address), of which you are a delegate: the "
                "certificate names the mailbox, not you. Archiving templates only; no CSR."
            )
        ),
    )


class CollectIn(Pkcs12In):
    """Download an approved portal-key request: the key is generated now."""


def check_pkcs12_password(password: str, user: Any) -> None:
    """The web form's rule (enrollment.pkcs12_password), as a serializer error."""
    problems = pkcs12_password_problems(password, user)
    if problems:
        raise serializers.ValidationError(problems)


def valid_csr_body(
    data: Any, *, names_template: bool, resolve: bool = True
) -> dict[str, Any] | None:
    """What CsrEnrollmentIn (``names_template``) or CsrIn validates a well-formed JSON body
    to, without them; None for anything else, which the serializer then checks and
    explains as ever. Without ``resolve``, the template's slug as ``template_slug``,
    not looked up (services.csr_submit_named reads it with the rest).

    A DRF serializer builds its fields afresh for every instance (deep copies of the
    declared ones): ~440,000 instructions of each enrolment (~4 %) for two strings. This
    takes only what both would take as it is, and gives what they would give."""
    if type(data) is not dict or "key_algorithm" in data or "pkcs12_password" in data:
        return None  # CsrIn.validate's refusal; a QueryDict goes the serializer's way
    csr = data.get("csr")
    if type(csr) is not str:
        return None
    csr = csr.strip()  # CharField's trim_whitespace, before its checks
    if not csr or len(csr) > MAX_CSR_BYTES or "\x00" in csr or _SURROGATE.search(csr):
        return None
    if not names_template:
        return {"csr": csr}
    slug = data.get("template")
    if type(slug) is not str or not _SLUG.fullmatch(slug):
        return None
    if not resolve:
        return {"csr": csr, "template_slug": slug}
    template = hotsql.template_by_slug(slug)
    if template is None:
        return None
    return {"csr": csr, "template": template}


def is_csr_body(data: Any) -> bool:
    """Which of the two enrolment shapes the client meant: a CSR if it sent one."""
    return isinstance(data, dict) and "csr" in data


class RevokeIn(serializers.Serializer[None]):
    reason = serializers.ChoiceField(
        choices=Certificate.RevocationReasonChoice.choices,
        help_text=(
            _(
                "Holders: keyCompromise, affiliationChanged, superseded, cessationOfOperation. "
                "RA officers: any of these values."
            )
        ),
    )
    invalidity_date = serializers.DateTimeField(
        required=False,
        allow_null=True,
        help_text=_("When the key is known or suspected to have been compromised (optional)."),
    )

    def validate_reason(self, reason: str) -> str:
        if not self.context.get("officer") and reason not in HOLDER_REVOCATION_REASONS:
            allowed = ", ".join(sorted(HOLDER_REVOCATION_REASONS))
            raise serializers.ValidationError(
                # Translators: allowed lists revocation reasons' API values; reason is one.
                _(
                    "As the certificate's holder you may give %(allowed)s; %(reason)s is for RA "
                    "officers."
                )
                % {"allowed": allowed, "reason": reason}
            )
        return reason


class ApproveIn(serializers.Serializer[None]):
    reason = serializers.CharField(
        required=False, allow_blank=True, max_length=MAX_REASON_LENGTH, default=""
    )


class RejectIn(serializers.Serializer[None]):
    reason = serializers.CharField(
        min_length=1,
        max_length=MAX_REASON_LENGTH,
        help_text=_("Why the request is rejected; the requester is told."),
        error_messages={"blank": _("Say why the request is rejected.")},
    )


class RecoverIn(serializers.Serializer[None]):
    """The holder asks for their archived key back."""

    reason = serializers.CharField(
        min_length=1,
        max_length=recovery.MAX_TEXT_LENGTH,
        help_text=_("Why you need the key back; RA officers read it. Plain text."),
        error_messages={"blank": _("Say why you need the key back.")},
    )
    pkcs12_format = serializers.ChoiceField(
        choices=[(f.value, f.value) for f in Pkcs12Format],
        default=Pkcs12Format.MODERN.value,
        help_text=_("The recovered key's file: modern (AES-256) or compatible (3DES)."),
    )

    def validate_reason(self, reason: str) -> str:
        try:
            return recovery.clean_text(
                reason, field="reason", empty=_("Say why you need the key back.")
            )
        except EnrollmentError as exc:
            raise serializers.ValidationError(exc.message) from None


# --- outputs --------------------------------------------------------------------------


class CertificateOut(serializers.ModelSerializer[Certificate]):
    """A certificate's facts; the same for its holder and for officers."""

    url = serializers.SerializerMethodField()
    # The model allows a certificate without owner or template (issued from the shell).
    owner: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    issuer: serializers.SlugRelatedField[CertificateAuthority] = serializers.SlugRelatedField(
        source="ca", slug_field="slug", read_only=True
    )
    template: serializers.SlugRelatedField[CertificateTemplate] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True, allow_null=True
    )
    status = serializers.ChoiceField(
        source="state",
        choices=["valid", "revoked", "expired"],
        read_only=True,
        help_text=_("valid, revoked or expired."),
    )
    # Declared: DRF drops allow_blank from read_only_fields, so the schema said an enum
    # without "", which is what a certificate not revoked (or without a reason) answers.
    revocation_reason = serializers.ChoiceField(
        choices=Certificate.RevocationReasonChoice.choices,
        allow_blank=True,
        read_only=True,
        help_text=_("RFC 5280 reason; empty when not revoked or revoked without one."),
    )

    class Meta:
        model = Certificate
        fields = [
            "serial",
            "url",
            "status",
            "owner",
            "common_name",
            "email",
            "emails",
            "subject",
            "issuer",
            "template",
            "purpose",
            "key_algorithm",
            "not_before",
            "not_after",
            "fingerprint_sha256",
            "fingerprint_sha1",
            "revoked_at",
            "revocation_reason",
            "invalidity_date",
        ]
        read_only_fields = fields

    def get_url(self, certificate: Certificate) -> str:
        return absolute(
            self.context.get("request"), "certificate-detail", serial=certificate.serial
        )


class CertificateDetailOut(CertificateOut):
    """Adds the certificate and its chain as PEM, for clients that install them."""

    certificate = serializers.SerializerMethodField(help_text=_("The certificate, PEM."))
    chain = serializers.SerializerMethodField(
        help_text=_("The CA certificates, PEM, issuer first and the root last.")
    )

    class Meta(CertificateOut.Meta):
        fields = [*CertificateOut.Meta.fields, "certificate", "chain"]
        read_only_fields = fields

    def get_certificate(self, certificate: Certificate) -> str:
        return pkcs7.certificate_pem(certificate.certificate).decode("ascii")

    def get_chain(self, certificate: Certificate) -> list[str]:
        return chain_pem(certificate)


# CA chains as PEM, per issuing CA and its certificate's fingerprint: every enrolment answer
# carries one, and a CA's certificates never change under the same fingerprint. A handful
# of entries at most (one per CA), public data only.
_CHAIN_PEM: dict[tuple[int, str], tuple[str, ...]] = {}


def chain_pem(certificate: Certificate) -> list[str]:
    """The issuing CA's chain up to the root, PEM; read and encoded once per process."""
    ca = certificate.ca
    key = (ca.pk, ca.fingerprint_sha256)
    if key not in _CHAIN_PEM:
        _CHAIN_PEM[key] = tuple(
            pkcs7.certificate_pem(link.certificate).decode("ascii") for link in ca.chain()
        )
    return list(_CHAIN_PEM[key])


class EnrollmentOut(serializers.ModelSerializer[CertificateRequest]):
    """A request and where it stands; `collect_url` appears once a PKCS#12 awaits download,
    `withdraw_url` (to the requester) while they may still take the request back."""

    url = serializers.SerializerMethodField()
    requester: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )
    requester_name = serializers.CharField(source="requester.get_full_name", read_only=True)
    template: serializers.SlugRelatedField[CertificateTemplate] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    renewal_of: serializers.SlugRelatedField[Certificate] = serializers.SlugRelatedField(
        slug_field="serial",
        read_only=True,
        allow_null=True,
        help_text=_("The serial (hex) of the certificate this renews; null for a first enrolment."),
    )
    mailbox: serializers.SlugRelatedField[SharedMailbox] = serializers.SlugRelatedField(
        slug_field="email",
        read_only=True,
        allow_null=True,
        help_text=(
            _(
                "The shared mailbox's address when the request is a delegate's for a shared "
                "mailbox: the certificate then names the mailbox (organization-validated), not "
                "the requester. Null for a personal request."
            )
        ),
    )
    channel = serializers.ChoiceField(
        choices=CertificateRequest.Channel.choices,
        read_only=True,
        help_text=(
            _(
                "How the request came: `web` (the portal's pages), `api` (this API), `est` "
                "(EST, RFC 7030), `rollout` (an RA officer's roll-out invitation), or `unknown` "
                "for requests made before the portal recorded it (a web request and an API "
                "request without an Idempotency-Key could not be told apart)."
            )
        ),
    )
    serial = serializers.CharField(source="certificate.serial", read_only=True, allow_null=True)
    certificate_url = serializers.SerializerMethodField()
    collect_url = serializers.SerializerMethodField()
    withdraw_url = serializers.SerializerMethodField()

    class Meta:
        model = CertificateRequest
        fields = [
            "id",
            "url",
            "state",
            "requester",
            "requester_name",
            "mailbox",
            "template",
            "channel",
            "key_source",
            "key_algorithm",
            "requested_subject",
            "requested_emails",
            "renewal_of",
            "serial",
            "certificate_url",
            "collect_url",
            "withdraw_url",
            "decision_reason",
            "decided_at",
            "error",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_url(self, request: CertificateRequest) -> str:
        return absolute(self.context.get("request"), "enrollment-detail", pk=request.pk)

    def get_certificate_url(self, request: CertificateRequest) -> str | None:
        if request.certificate is None:
            return None
        return absolute(
            self.context.get("request"), "certificate-detail", serial=request.certificate.serial
        )

    def get_collect_url(self, request: CertificateRequest) -> str | None:
        if not request.awaits_download:
            return None
        return absolute(self.context.get("request"), "enrollment-collect", pk=request.pk)

    def get_withdraw_url(self, request: CertificateRequest) -> str | None:
        """Only for the requester: an officer who lists pending requests rejects them."""
        http = self.context.get("request")
        viewer = getattr(getattr(http, "user", None), "pk", None)
        if not request.may_be_withdrawn or viewer != request.requester_id:
            return None
        return absolute(http, "enrollment-withdraw", pk=request.pk)


class PendingOut(EnrollmentOut):
    """A request in the officers' queue: who decides it, and whether the caller may. The
    caller's Decider comes in the context (``decider``): no query per request."""

    approvers = serializers.CharField(
        source="template.approver_group.name",
        read_only=True,
        allow_null=True,
        help_text=_(
            "The group whose RA officers (and superusers) decide the template's "
            "requests; null: every RA officer."
        ),
    )
    may_decide = serializers.SerializerMethodField(
        help_text=_(
            "Whether you may approve or reject it: not your own request, not one of a "
            "shared mailbox you are a delegate of, and you are among the template's approvers. "
            "The others are refused with 403 (as is every request outside your officer scope, "
            "which this list leaves out)."
        )
    )

    class Meta(EnrollmentOut.Meta):
        fields = [*EnrollmentOut.Meta.fields, "approvers", "may_decide"]
        read_only_fields = fields

    def get_may_decide(self, request: CertificateRequest) -> bool:
        return bool(self.context["decider"].barred(request) is None)


@dataclass(frozen=True)
class Issued:
    """What an enrolment that issued at once hands back."""

    request: CertificateRequest
    certificate: Certificate
    pkcs12: bytes | None = None
    pkcs12_format: Pkcs12Format | None = None


class IssuedOut(serializers.Serializer[Issued]):
    """201: the certificate with its chain, and the PKCS#12 when the portal made the key."""

    id = serializers.IntegerField(source="request.pk", help_text=_("The enrolment's id."))
    url = serializers.SerializerMethodField(help_text=_("The enrolment's status URL."))
    state = serializers.CharField(source="request.state")
    serial = serializers.CharField(source="certificate.serial", help_text=_("Lowercase hex."))
    fingerprint = serializers.CharField(
        source="certificate.fingerprint_sha256", help_text=_("SHA-256 of the DER, hex.")
    )
    subject = serializers.CharField(source="certificate.subject")
    emails = serializers.ListField(child=serializers.EmailField(), source="certificate.emails")
    not_before = serializers.DateTimeField(source="certificate.not_before")
    not_after = serializers.DateTimeField(source="certificate.not_after")
    certificate = serializers.SerializerMethodField(help_text=_("The certificate, PEM."))
    chain = serializers.SerializerMethodField(
        help_text=_("The CA certificates, PEM, issuer first and the root last.")
    )
    certificate_url = serializers.SerializerMethodField()
    notice = serializers.SerializerMethodField(
        help_text=_(
            "Set when the CSR asked for a name or address the certificate does not "
            "carry, or when the issuing CA's end made the certificate shorter than its template."
        )
    )
    pkcs12 = serializers.SerializerMethodField(
        help_text=_("The PKCS#12 (key, certificate, chain), base64; null for a CSR enrolment.")
    )
    pkcs12_format = serializers.CharField(allow_null=True)

    def get_url(self, issued: Issued) -> str:
        return absolute(self.context.get("request"), "enrollment-detail", pk=issued.request.pk)

    def get_certificate(self, issued: Issued) -> str:
        return pkcs7.certificate_pem(issued.certificate.certificate).decode("ascii")

    def get_chain(self, issued: Issued) -> list[str]:
        return chain_pem(issued.certificate)

    def get_certificate_url(self, issued: Issued) -> str:
        return absolute(
            self.context.get("request"), "certificate-detail", serial=issued.certificate.serial
        )

    def get_notice(self, issued: Issued) -> str:
        return enrolment_notice(issued.request, issued.certificate)

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_pkcs12(self, issued: Issued) -> str | None:
        return base64.b64encode(issued.pkcs12).decode("ascii") if issued.pkcs12 else None


_WHEN = serializers.DateTimeField()


def issued_body(issued: Issued, request: Any) -> dict[str, Any]:
    """``IssuedOut(issued).data``, built directly for the answer of every enrolment.

    A DRF serializer deep-copies its fields for each instance: for this one that was a
    tenth of the CPU of issuing a certificate. IssuedOut still documents the shape, and a
    test keeps the two equal.
    """
    certificate = issued.certificate
    return {
        "id": issued.request.pk,
        "url": absolute(request, "enrollment-detail", pk=issued.request.pk),
        "state": str(issued.request.state),
        "serial": certificate.serial,
        "fingerprint": certificate.fingerprint_sha256,
        "subject": certificate.subject,
        "emails": [str(email) for email in certificate.emails],
        "not_before": _WHEN.to_representation(certificate.not_before),
        "not_after": _WHEN.to_representation(certificate.not_after),
        "certificate": pkcs7.der_to_pem(bytes(certificate.der)).decode("ascii"),
        "chain": chain_pem(certificate),
        "certificate_url": absolute(request, "certificate-detail", serial=certificate.serial),
        "notice": enrolment_notice(issued.request, certificate),
        "pkcs12": base64.b64encode(issued.pkcs12).decode("ascii") if issued.pkcs12 else None,
        "pkcs12_format": str(issued.pkcs12_format) if issued.pkcs12_format else None,
    }


def enrolment_notice(request: CertificateRequest, certificate: Certificate) -> str:
    """What the requester should know about what they got: names not taken from the CSR,
    and a validity cut short by the issuing CA's end. Empty when nothing."""
    short = ca_lifetime.cut_short(certificate)
    notes = (substitution_notice(request, certificate), short.message if short else "")
    return " ".join(note for note in notes if note)


def substitution_notice(request: CertificateRequest, certificate: Certificate) -> str:
    """Say so when a CSR asked for names the account does not have (they were not used)."""
    asked_emails = {address.lower() for address in request.requested_emails}
    asked_names: set[str] = set()
    if request.requested_subject:
        try:
            name = x509.Name.from_rfc4514_string(request.requested_subject)
        except ValueError:
            name = None
        if name is not None:
            asked_names = {str(a.value) for a in name.get_attributes_for_oid(NameOID.COMMON_NAME)}
    if asked_emails <= set(certificate.emails) and asked_names <= {certificate.common_name}:
        return ""
    asked = request.requested_subject or str(NO_NAME)
    if asked_emails:
        asked += " <" + ", ".join(sorted(asked_emails)) + ">"
    return str(
        # Translators: asked is the name (and addresses) a CSR asked for; name and emails
        # are the certificate's.
        _(
            "The request asked for %(asked)s; the certificate names you as in your account: "
            "%(name)s <%(emails)s>."
        )
    ) % {"asked": asked, "name": certificate.common_name, "emails": ", ".join(certificate.emails)}


# Translators: what a CSR asked for when it named no one.
NO_NAME = _("no name")


class TokenIn(serializers.Serializer[None]):
    """What a new API token is called and how long it lives; both optional."""

    label = serializers.CharField(  # type: ignore[assignment]  # a field, not Field.label
        required=False,
        allow_blank=True,
        default="",
        max_length=100,
        help_text=_("Your name for it, e.g. the script that uses it; unique among your tokens."),
    )
    lifetime_days = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        min_value=1,
        help_text=_("Days until it expires: 1 to API_TOKEN_TTL_DAYS (90 by default), the default."),
    )


class TokenOut(serializers.Serializer[dict[str, Any]]):
    """A new API token: shown once, stored only as a hash."""

    token = serializers.CharField(help_text=_("Send as `Authorization: Token <token>`."))
    expiry = serializers.DateTimeField(allow_null=True)
    label = serializers.CharField()  # type: ignore[assignment]  # a field, not Field.label
    prefix = serializers.CharField(
        help_text=_("The token's first characters, as /account/tokens/ lists it.")
    )


class RecoveryOut(serializers.ModelSerializer[KeyRecoveryRequest]):
    """A key recovery as the key's holder follows it. The recovered key is downloaded once
    on its web page (`page_url`), signed in, with the one-time password the key recovery
    agent gives in person: never through the API."""

    url = serializers.SerializerMethodField()
    state = serializers.SerializerMethodField()  # described on get_state, with its choices
    serial = serializers.CharField(source="certificate.serial", read_only=True)
    certificate_url = serializers.SerializerMethodField()
    asked_by_holder = serializers.SerializerMethodField(
        help_text=_("true when the key's holder asked for it; false when an RA officer opened it.")
    )
    pkcs12_format = serializers.ChoiceField(
        choices=[(f.value, f.value) for f in Pkcs12Format], read_only=True
    )
    approvals = serializers.SerializerMethodField(
        help_text=_(
            "Approvals that count now: an approver who is no longer an active RA officer "
            "does not count (as on the recovery's page)."
        )
    )
    approvals_required = serializers.SerializerMethodField()
    download_until = serializers.SerializerMethodField(
        help_text=_("While `ready`: the end of the one download's window.")
    )
    page_url = serializers.SerializerMethodField(
        help_text=_("Its web page, where the holder downloads the recovered key once.")
    )
    withdraw_url = serializers.SerializerMethodField(
        help_text=_("For the holder who asked, while nothing is recovered yet.")
    )

    class Meta:
        model = KeyRecoveryRequest
        fields = [
            "id",
            "url",
            "state",
            "serial",
            "certificate_url",
            "asked_by_holder",
            "reason",
            "pkcs12_format",
            "approvals",
            "approvals_required",
            "decision_reason",
            "download_until",
            "page_url",
            "withdraw_url",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_url(self, found: KeyRecoveryRequest) -> str:
        return absolute(self.context.get("request"), "recovery-detail", pk=found.pk)

    @extend_schema_field(
        serializers.ChoiceField(
            choices=KeyRecoveryRequest.State.choices,
            help_text=_(
                "The effective state: as its approvals count now, as the portal's pages "
                "show it. An approved recovery whose approver is no longer an active RA officer "
                "is `pending` again (its `approvals` fall short of `approvals_required`) until "
                "another officer approves it or the role comes back."
            ),
        )
    )
    def get_state(self, found: KeyRecoveryRequest) -> str:
        """state_shown, as the pages say; what a step returns is not annotated, so its
        quorum is counted here (one recovery, one query)."""
        if getattr(found, "quorum_met", None) is not None:  # the viewset's with_quorum
            return found.state_shown
        if found.state in (KeyRecoveryRequest.State.PENDING, KeyRecoveryRequest.State.APPROVED):
            return found.state_with_quorum(recovery.quorum(found).met)
        return found.state

    def get_certificate_url(self, found: KeyRecoveryRequest) -> str:
        return absolute(
            self.context.get("request"), "certificate-detail", serial=found.certificate.serial
        )

    def get_asked_by_holder(self, found: KeyRecoveryRequest) -> bool:
        return found.asked_by_id is not None

    def get_approvals(self, found: KeyRecoveryRequest) -> int:
        counted = getattr(found, "approval_count", None)  # the viewset's queryset counts them
        return counted if counted is not None else len(recovery.quorum(found).counted)

    def get_approvals_required(self, found: KeyRecoveryRequest) -> int:
        return recovery.approvals_required()

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_download_until(self, found: KeyRecoveryRequest) -> Any:
        if found.state != KeyRecoveryRequest.State.READY or found.download_expires_at is None:
            return None
        return serializers.DateTimeField().to_representation(found.download_expires_at)

    def get_page_url(self, found: KeyRecoveryRequest) -> str:
        url = reverse("ra:recovery-detail", args=[found.pk])
        http = self.context.get("request")
        return http.build_absolute_uri(url) if http is not None else url

    def get_withdraw_url(self, found: KeyRecoveryRequest) -> str | None:
        http = self.context.get("request")
        viewer = getattr(getattr(http, "user", None), "pk", None)
        if not found.may_be_withdrawn or viewer != found.asked_by_id:
            return None
        return absolute(http, "recovery-withdraw", pk=found.pk)


class RecoveryConflictOut(serializers.Serializer[dict[str, Any]]):
    """A recovery of this key is already in progress: there is one at a time."""

    detail = serializers.CharField()
    recovery = serializers.URLField(
        allow_null=True, help_text=_("The one in progress, when it comes to you; else null.")
    )


# --- roll-outs --------------------------------------------------------------------------


class RolloutIn(serializers.Serializer[Any]):
    """A roll-out to create: the template, and a group and/or people by name or address."""

    template = serializers.SlugField(
        min_length=1, max_length=50, help_text=_("The template's slug.")
    )
    group = serializers.CharField(
        max_length=150,
        required=False,
        allow_blank=True,
        help_text=_("A group's name: all its members."),
    )
    people = serializers.ListField(
        child=serializers.CharField(max_length=1000, allow_blank=True, trim_whitespace=True),
        required=False,
        default=list,
        help_text=_(
            "User names or e-mail addresses. Those that name nobody, or someone who "
            "cannot be invited, are reported in `skipped`, not refused."
        ),
    )
    key_algorithm = serializers.ChoiceField(
        choices=[(a.value, a.label) for a in KeyAlgorithm],  # the enrolment's enum
        required=False,
        help_text=_(
            "The key the portal generates; default: the first the template allows "
            "(RSA 3072 where allowed)."
        ),
    )
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")

    def validate_people(self, value: list[str]) -> list[str]:
        from django.conf import settings

        if len(value) > settings.PKIPORTAL_ROLLOUT_MAX_PEOPLE:
            raise serializers.ValidationError(
                _("At most %(limit)d people per roll-out.")
                % {"limit": settings.PKIPORTAL_ROLLOUT_MAX_PEOPLE}
            )
        return value


class RolloutOut(serializers.ModelSerializer[Any]):
    """A roll-out: its counts (`invited` is how many were invited; `counts` where they
    stand now), who was not invited and why, and each invited person's request."""

    url = serializers.SerializerMethodField()
    template: serializers.SlugRelatedField[CertificateTemplate] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    created_by = serializers.CharField(source="created_by.get_username", read_only=True)
    group = serializers.CharField(source="group_name", read_only=True)
    counts = serializers.SerializerMethodField(
        help_text=_("Where its people stand; for an officer in a scope, of the people it covers.")
    )
    skipped = serializers.SerializerMethodField(allow_null=True)
    people = serializers.SerializerMethodField(
        help_text=_(
            "Each invited person's request; for an officer in a scope, of the people "
            "it covers only."
        )
    )

    class Meta:
        from enrollment.models import Rollout

        model = Rollout
        fields = [
            "id",
            "url",
            "name",
            "template",
            "key_algorithm",
            "state",
            "created_by",
            "created_at",
            "expires_at",
            "group",
            "invited",
            "counts",
            "skipped_count",
            "skipped",
            "people",
        ]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, rollout: Any) -> str:
        return reverse("enrollment-api:rollout-detail", args=[rollout.pk])

    @extend_schema_field(
        {"type": "object", "additionalProperties": {"type": "integer"},
         "example": {"invited": 3, "collected": 1, "declined": 0, "cancelled": 0,
                     "expired": 0, "failed": 0}}
    )  # fmt: skip
    def get_counts(self, rollout: Any) -> dict[str, int]:
        from enrollment.rollouts import rollout_counts

        return rollout_counts(rollout, self._reach())

    def _reach(self) -> Reach:
        """The caller's officer scope (the view's context): only their people are listed
        and counted. Everyone when no view gave one (a roll-out just created)."""
        reach = self.context.get("reach", EVERYONE)
        assert isinstance(reach, Reach)
        return reach

    @extend_schema_field(
        {"type": "array", "items": {"type": "object", "properties": {
            "entry": {"type": "string", "description": "As named; empty for `outside_scope`."},
            "reason": {"type": "string"},
            "count": {"type": "integer",
                      "description": "`outside_scope` only: how many the inviting officer's "
                      "scope left out, unnamed."}}}}
    )  # fmt: skip
    def get_skipped(self, rollout: Any) -> list[dict[str, Any]] | None:
        """Who was not invited, as kept; null for an officer in a scope looking at another
        officer's roll-out, whose list may name people outside their scope."""
        viewer = self.context.get("viewer_id")
        if self._reach().everyone or viewer is None or viewer == rollout.created_by_id:
            return list(rollout.skipped)
        return None

    @extend_schema_field(
        {"type": "array", "items": {"type": "object", "properties": {
            "username": {"type": "string"}, "request": {"type": "integer"},
            "status": {"type": "string"},
            "mailed_at": {"type": "string", "format": "date-time", "nullable": True,
                          "description": "When the invitation's mail went out; null: not yet."},
            "mail_error": {"type": "string",
                           "description": "The mail server's last refusal, if any."}}}}
    )  # fmt: skip
    def get_people(self, rollout: Any) -> list[dict[str, object]]:
        invitations = (
            rollout.invitations.filter(self._reach().people("request__requester"))
            .select_related("request__requester")
            .order_by("pk")
        )
        return [
            {"username": i.request.requester.get_username(), "request": i.request_id,
             "status": i.status,
             "mailed_at": i.mailed_at.isoformat() if i.mailed_at else None,
             "mail_error": i.mail_error}
            for i in invitations
        ]  # fmt: skip


class RolloutSummaryOut(RolloutOut):
    """A roll-out in a list: its counts, not its people (a list of roll-outs of thousands
    each would be hundreds of thousands of rows); `url` gives them."""

    class Meta(RolloutOut.Meta):
        fields = [f for f in RolloutOut.Meta.fields if f not in ("people", "skipped")]
        read_only_fields = fields


# --- shared mailboxes -------------------------------------------------------------------


class MailboxOut(serializers.ModelSerializer[SharedMailbox]):
    delegates = serializers.SerializerMethodField(help_text=_("Delegates' user names."))

    class Meta:
        model = SharedMailbox
        fields = ["id", "email", "display_name", "is_active", "deactivated_at", "delegates"]

    def get_delegates(self, mailbox: SharedMailbox) -> list[str]:
        return sorted(d.get_username() for d in mailbox.delegates.all())


class MailboxIn(serializers.Serializer[None]):
    """Shape only: enrollment.mailboxes checks the address, the name and the delegates."""

    email = serializers.CharField(max_length=254, help_text=_("Never changed afterwards."))
    display_name = serializers.CharField(max_length=400)
    delegates = serializers.ListField(
        child=serializers.CharField(max_length=150),
        max_length=200,
        required=False,
        default=list,
        help_text=_("User names of active accounts."),
    )


class MailboxChangeIn(serializers.Serializer[None]):
    """A partial update: a field left out keeps its value."""

    display_name = serializers.CharField(max_length=400, required=False)
    delegates = serializers.ListField(
        child=serializers.CharField(max_length=150),
        max_length=200,
        required=False,
        help_text=_("User names of active accounts: the whole new list."),
    )
