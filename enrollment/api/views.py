"""Enrolment API views: parse with input serializers, call services, answer with outputs.

Domain errors are not caught here: pkiportal.api.exception_handler turns them into 4xx
JSON once for every endpoint. Objects a person may not see are 404, not 403; but an RA
officer's request outside their officer scope is a 403 that names no one (_within_scope),
as its page is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import django_filters

from cryptography.hazmat.primitives.serialization import Encoding

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.http import Http404
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.debug import sensitive_variables
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.authentication import SessionAuthentication
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import mfa
from accounts.api import VerifiedSessionAuthentication
from accounts.requests import signed_in_user
from enrollment import mailboxes, ra_selectors, recent_sign_in, recovery, services
from enrollment.api import serializers as s
from enrollment.api.authentication import AxesBasicAuthentication, TokenAuthentication
from enrollment.edge import client_address
from enrollment.exceptions import Message, NotPermitted
from enrollment.models import (
    Certificate,
    CertificateRequest,
    CertificateTemplate,
    KeyRecoveryRequest,
    Rollout,
    SharedMailbox,
)
from enrollment.permissions import (
    NOT_AN_OFFICER,
    OUT_OF_SCOPE,
    IsRaOfficer,
    decider,
    is_key_recovery_agent,
    is_ra_officer,
)
from enrollment.querysets import CertificateQuerySet
from enrollment.scopes import OUTSIDE_REQUEST, prime_requesters, reach_of
from enrollment.x509.csr import parse_csr
from enrollment.x509.errors import X509Error
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.pkcs12 import Pkcs12Format
from pkiportal import plurals

# --- documentation shared by several operations ---------------------------------------

ERRORS: dict[int, OpenApiResponse] = {
    400: OpenApiResponse(
        OpenApiTypes.OBJECT,
        description="Bad input: `{field: [messages]}`, or `{detail: message}` when no "
        "single field is to blame. Nothing was changed.",
    ),
    401: OpenApiResponse(OpenApiTypes.OBJECT, description="Not signed in."),
    403: OpenApiResponse(OpenApiTypes.OBJECT, description="Signed in but not allowed."),
}
NOT_FOUND = {404: OpenApiResponse(OpenApiTypes.OBJECT, description="No such object for you.")}
CONFLICT = {
    409: OpenApiResponse(OpenApiTypes.OBJECT, description="Not possible in its current state.")
}
ENROLMENT_LIMITS = {
    413: OpenApiResponse(OpenApiTypes.OBJECT, description="The request body is too large."),
    429: OpenApiResponse(
        OpenApiTypes.OBJECT, description="Too many requests; see the Retry-After header."
    ),
    503: OpenApiResponse(
        OpenApiTypes.OBJECT,
        description="The PKI cannot issue right now (e.g. no key recovery agent for an "
        "archiving template).",
    ),
}
IDEMPOTENCY = [
    OpenApiParameter(
        "Idempotency-Key",
        OpenApiTypes.STR,
        OpenApiParameter.HEADER,
        required=False,
        description=(
            "Any 1 to 64 printable ASCII characters, e.g. a UUID, new for each request. A "
            "retry with the same key and body gets the first answer again instead of a "
            "second certificate (a PKCS#12, which is never kept, excepted: 409)."
        ),
    )
]
IDEMPOTENT_REPLAYS = {
    409: OpenApiResponse(
        OpenApiTypes.OBJECT,
        description="Not possible in its current state; or, for an Idempotency-Key whose "
        "portal-key request was issued, the request (its PKCS#12 was in the first answer).",
    ),
    422: OpenApiResponse(
        OpenApiTypes.OBJECT, description="The Idempotency-Key was used for a different request."
    ),
}
ISSUED = OpenApiResponse(
    s.IssuedOut,
    description="Issued. With a portal-generated key, `pkcs12` holds the key once.",
)
PENDING = OpenApiResponse(
    s.EnrollmentOut,
    description="Waiting for an RA officer. `Location` and `url` give the request's status; "
    "a portal-key request is then collected at `collect_url`.",
)

Row = TypeVar("Row")  # what a queryset yields: filter_queryset keeps it


def _enrolment_body(name: str, csr: type, server_key: type) -> PolymorphicProxySerializer:
    return PolymorphicProxySerializer(
        component_name=name, serializers=[csr, server_key], resource_type_field_name=None
    )


CSR_EXAMPLE = OpenApiExample(
    "From a CSR",
    value={"template": "smime-signing", "csr": "-----BEGIN CERTIFICATE REQUEST-----\n..."},
    request_only=True,
)
SERVER_KEY_EXAMPLE = OpenApiExample(
    "Portal-generated key",
    value={
        "template": "smime-dual-use",
        "key_algorithm": "rsa-3072",
        "pkcs12_password": "a long passphrase of yours",
        "pkcs12_format": "modern",
    },
    request_only=True,
)


# --- enrolments -----------------------------------------------------------------------


def _answer(
    request: Request,
    submitted: CertificateRequest,
    *,
    pkcs12: bytes | None = None,
    pkcs12_format: Pkcs12Format | None = None,
) -> Response:
    """201 with the certificate if it was issued now, else 202 pointing at the request.

    An answer carrying a PKCS#12 is the key's one way out: no cache may keep it (as the
    web page's download)."""
    context = {"request": request}
    if submitted.state == CertificateRequest.State.ISSUED and submitted.certificate is not None:
        issued = s.Issued(submitted, submitted.certificate, pkcs12, pkcs12_format)
        headers = {"Cache-Control": "no-store"} if pkcs12 is not None else None
        return Response(
            s.issued_body(issued, request), status=status.HTTP_201_CREATED, headers=headers
        )
    body = s.EnrollmentOut(submitted, context=context).data
    return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["url"]})


# Every local here and below: the serializers and pkcs12 hold the password under names of
# their own, and Django applies the nearest decorated caller's list to callee frames.
@sensitive_variables()
def _enrol(
    request: Request,
    *,
    template: CertificateTemplate | None,
    data: Any,
    renewal_of: Certificate | None = None,
) -> Response:
    """Validate one of the two enrolment shapes and submit it; shared by enrol and renew.

    With an Idempotency-Key, a request this person already made with that key is answered
    again instead of being made twice (a client retrying after a lost answer)."""
    key = _idempotency_key(request)
    if key:
        earlier = _made_with(request, key)
        if earlier is not None:
            return _replay(request, earlier, data=data, renewal_of=renewal_of)
        try:
            return _enrol_once(request, template=template, data=data, renewal_of=renewal_of,
                               idempotency_key=key)  # fmt: skip
        except IntegrityError:
            earlier = _made_with(request, key)  # a retry racing this one stored it first
            if earlier is None:
                raise
            return _replay(request, earlier, data=data, renewal_of=renewal_of)
    return _enrol_once(request, template=template, data=data, renewal_of=renewal_of)


@sensitive_variables()
def _enrol_once(
    request: Request,
    *,
    template: CertificateTemplate | None,
    data: Any,
    renewal_of: Certificate | None = None,
    idempotency_key: str = "",
) -> Response:
    csr_shape = s.is_csr_body(data)
    if csr_shape and template is None and renewal_of is None and "mailbox" not in data:
        # The template the body names is read with the enrolment's other reads.
        named = s.valid_csr_body(data, names_template=True, resolve=False)
        if named is not None:
            submitted = services.csr_submit_named(
                requester=signed_in_user(request),
                template_slug=named["template_slug"],
                csr=named["csr"],
                source_address=client_address(request),
                idempotency_key=idempotency_key,
                channel=CertificateRequest.Channel.API,
            )
            if submitted is not None:
                return _answer(request, submitted)
            # No template has that slug: the serializer below says so, as it always has.
    if template is None:
        shape: type[serializers.Serializer[None]] = (
            s.CsrEnrollmentIn if csr_shape else s.ServerKeyEnrollmentIn
        )
    else:
        shape = s.CsrIn if csr_shape else s.ServerKeyIn
    validated = s.valid_csr_body(data, names_template=template is None) if csr_shape else None
    if validated is None:
        serializer = shape(data=data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        validated = serializer.validated_data
    template = template or validated["template"]
    mailbox = validated.get("mailbox")
    if renewal_of is not None and renewal_of.mailbox_id is not None:
        mailbox = renewal_of.mailbox  # a renewal stays with the mailbox it renews
    if csr_shape and (mailbox is not None or (isinstance(data, dict) and data.get("mailbox"))):
        raise serializers.ValidationError({"csr": [services.MAILBOX_NEEDS_SERVER_KEY]})
    if not csr_shape and not template.requires_approval and not validated.get("pkcs12_password"):
        # Checked before anything is stored: the key would be made now and needs it.
        raise serializers.ValidationError(
            {"pkcs12_password": [_("This template issues at once: give the PKCS#12 password.")]}
        )
    common: dict[str, Any] = {
        "requester": request.user,
        "template": template,
        "renewal_of": renewal_of,
        "source_address": client_address(request),
        "idempotency_key": idempotency_key,
        "channel": CertificateRequest.Channel.API,
    }
    # One transaction each: an enrolment answered with an error leaves nothing behind (a
    # request approved later that then fails stays visible as failed instead). A CSR's
    # is request_submit's own: one statement when it is issued at once on PostgreSQL.
    if csr_shape:
        submitted = services.request_submit(csr=validated["csr"], **common)
        return _answer(request, submitted)
    pkcs12_format = Pkcs12Format(validated["pkcs12_format"])
    with transaction.atomic():
        submitted = services.request_submit(
            key_algorithm=KeyAlgorithm(validated["key_algorithm"]), mailbox=mailbox, **common
        )
        if not submitted.awaits_download:
            return _answer(request, submitted)
        _certificate, bundle = services.request_collect(
            request=submitted,
            actor=signed_in_user(request),
            pkcs12_password=validated["pkcs12_password"],
            pkcs12_format=pkcs12_format,
            source_address=client_address(request),
        )
    return _answer(request, submitted, pkcs12=bundle, pkcs12_format=pkcs12_format)


IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,64}")  # printable ASCII, no spaces (a UUID fits)


def _idempotency_key(request: Request) -> str:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return ""
    if not IDEMPOTENCY_KEY.fullmatch(key) or key.startswith(services.EST_KEY_PREFIX):
        # Still refused now that the channel is a column of its own: EST's keys live in the
        # same unique (requester, idempotency_key) index as the API's, and est._made_with
        # finds a request by that key alone. A client key equal to one EST would make
        # (sha256 of template, operation and CSR: computable by whoever holds the CSR)
        # would have EST answer an API request as the CSR's, or the API replay an EST
        # request; with the prefix refused, the two key spaces cannot meet.
        raise serializers.ValidationError(
            {
                "Idempotency-Key": [
                    _(
                        "Give 1 to 64 printable ASCII characters, e.g. a UUID (not starting "
                        "with %(prefix)s, which EST requests use)."
                    )
                    % {"prefix": repr(services.EST_KEY_PREFIX)}
                ]
            }
        )
    return key


def _made_with(request: Request, key: str) -> CertificateRequest | None:
    return (
        CertificateRequest.objects.select_related(
            "certificate", "template", "renewal_of", "mailbox"
        )
        .filter(requester=signed_in_user(request), idempotency_key=key)
        .first()
    )


def _replay(
    request: Request,
    earlier: CertificateRequest,
    *,
    data: Any,
    renewal_of: Certificate | None,
) -> Response:
    """The answer to a request made before with this key, if this body asks the same."""
    if not _asks_the_same(earlier, data, renewal_of):
        return Response(
            {"detail": _("This Idempotency-Key was used for a different request; use a new "
                         "key for a new request.")},
            status=status.HTTP_422_UNPROCESSABLE_ENTITY,
        )  # fmt: skip
    if (
        earlier.key_source == CertificateRequest.KeySource.SERVER
        and earlier.state == CertificateRequest.State.ISSUED
    ):
        # The key left once, inside the first answer's PKCS#12, and is kept nowhere.
        body = s.EnrollmentOut(earlier, context={"request": request}).data
        body["detail"] = _(
            "This request was issued, and its PKCS#12 was in the first answer: the portal "
            "does not keep keys. If that answer was lost, revoke the certificate and enrol "
            "again with a new Idempotency-Key."
        )
        return Response(body, status=status.HTTP_409_CONFLICT)
    return _answer(request, earlier)


def _asks_the_same(earlier: CertificateRequest, data: Any, renewal_of: Certificate | None) -> bool:
    if not isinstance(data, dict) or (renewal_of and renewal_of.pk) != earlier.renewal_of_id:
        return False
    if renewal_of is None and data.get("template") != earlier.template.slug:
        return False
    if renewal_of is None and str(data.get("mailbox") or "").strip().lower() != (
        earlier.mailbox.email if earlier.mailbox is not None else ""
    ):
        return False
    if s.is_csr_body(data):
        if earlier.key_source != CertificateRequest.KeySource.CSR:
            return False
        try:
            asked = parse_csr(data.get("csr") or "").csr.public_bytes(Encoding.DER)
        except (X509Error, TypeError, ValueError):
            return False
        return asked == bytes(earlier.csr or b"")
    return (
        earlier.key_source == CertificateRequest.KeySource.SERVER
        and data.get("key_algorithm") == earlier.key_algorithm
    )


def _within_scope(
    request: Request, found: CertificateRequest, *, attempted: str = ""
) -> CertificateRequest:
    """Someone else's request outside the officer's scope (enrollment.scopes) is refused
    with a 403 that names no one, before anything is read from the body. ``attempted``:
    the decision the call would make, whose refusal is audited (reading one is not)."""
    if found.requester_id != request.user.pk and not reach_of(request.user).covers_request(found):
        if attempted:
            services.access_refusal_record(
                actor=request.user,
                attempted=attempted,
                target=found,
                refusal=OUT_OF_SCOPE,
                source_address=client_address(request),
            )
        raise NotPermitted(OUTSIDE_REQUEST)
    return found


@extend_schema_view(
    list=extend_schema(
        summary="My enrolments",
        description="Requests you made, newest first.",
        responses={200: s.EnrollmentOut(many=True), **ERRORS},
    ),
    retrieve=extend_schema(
        summary="One enrolment",
        description=(
            "Yours, or anyone's for RA officers; one outside an officer's scope is refused "
            "with 403."
        ),
        responses={200: s.EnrollmentOut, **ERRORS, **NOT_FOUND},
    ),
)
class EnrollmentViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet[CertificateRequest],
):
    """Enrol for a certificate from a CSR or with a portal-generated key; collect or withdraw."""

    serializer_class = s.EnrollmentOut

    def get_queryset(self) -> QuerySet[CertificateRequest]:
        requests = CertificateRequest.objects.select_related(
            "template", "requester", "certificate", "renewal_of", "mailbox"
        )
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular reading the types
            return requests.none()
        if self.action == "list" or not is_ra_officer(self.request.user):
            return requests.filter(requester=signed_in_user(self.request))
        return requests

    def get_object(self) -> CertificateRequest:
        return _within_scope(self.request, super().get_object())

    @extend_schema(
        summary="Enrol",
        description=(
            "Give `template` and either `csr`, or `key_algorithm` with `pkcs12_password`. "
            "The certificate's subject and addresses come from your account, whatever the "
            "CSR asks for. 201 when issued at once; 202 when an RA officer must approve."
        ),
        request=_enrolment_body("EnrollmentRequest", s.CsrEnrollmentIn, s.ServerKeyEnrollmentIn),
        parameters=IDEMPOTENCY,
        responses={201: ISSUED, 202: PENDING, **ERRORS, **ENROLMENT_LIMITS, **IDEMPOTENT_REPLAYS},
        examples=[CSR_EXAMPLE, SERVER_KEY_EXAMPLE],
    )
    def create(self, request: Request) -> Response:
        return _enrol(request, template=None, data=request.data)

    @extend_schema(
        summary="Download an approved portal-key enrolment",
        description="Generates the key and returns it once inside the PKCS#12.",
        request=s.CollectIn,
        responses={201: ISSUED, **ERRORS, **NOT_FOUND, **CONFLICT},
    )
    @action(detail=True, methods=["post"])
    @sensitive_variables()  # as _enrol
    def collect(self, request: Request, pk: str | None = None) -> Response:
        submitted = self.get_object()
        serializer = s.CollectIn(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        pkcs12_format = Pkcs12Format(serializer.validated_data["pkcs12_format"])
        _certificate, bundle = services.request_collect(
            request=submitted,
            actor=signed_in_user(request),
            pkcs12_password=serializer.validated_data["pkcs12_password"],
            pkcs12_format=pkcs12_format,
            source_address=client_address(request),
        )
        return _answer(request, submitted, pkcs12=bundle, pkcs12_format=pkcs12_format)

    @extend_schema(
        summary="Withdraw my enrolment",
        description=(
            "Take back your own request while it waits for an RA officer (`pending`) or for "
            "your download (`approved`, portal-generated key): nothing is issued for it, it "
            "leaves the officers' queue and no longer counts against your per-template "
            "limit. No body. 409 once it is no longer open (issued, rejected, failed or "
            "withdrawn); RA officers reject other people's requests instead (403)."
        ),
        request=None,
        responses={200: s.EnrollmentOut, 401: ERRORS[401], 403: ERRORS[403], **NOT_FOUND,
                   **CONFLICT},
    )  # fmt: skip
    @action(detail=True, methods=["post"])
    def withdraw(self, request: Request, pk: str | None = None) -> Response:
        submitted = self.get_object()  # the requester's own; officers see every request
        withdrawn = services.request_withdraw(
            request=submitted, actor=signed_in_user(request), source_address=client_address(request)
        )
        return Response(self.get_serializer(withdrawn).data)


# --- certificates ---------------------------------------------------------------------


def normalise_serial(serial: str) -> str:
    """The stored form: lowercase hex without colons or leading zeros."""
    return serial.replace(":", "").lower().lstrip("0") or "0"


class CertificateFilter(django_filters.FilterSet):
    owner = django_filters.CharFilter(
        field_name="owner__username", help_text=gettext_lazy("The holder's user name.")
    )
    email = django_filters.CharFilter(field_name="email", lookup_expr="iexact")
    status = django_filters.ChoiceFilter(
        choices=[("valid", "valid"), ("revoked", "revoked"), ("expired", "expired")],
        method="filter_status",
    )
    template = django_filters.CharFilter(field_name="template__slug")
    serial = django_filters.CharFilter(
        method="filter_serial", help_text=gettext_lazy("Hex; colons allowed.")
    )

    class Meta:
        model = Certificate
        fields = ["owner", "email", "status", "template", "serial"]

    def filter_status(
        self, queryset: CertificateQuerySet, name: str, value: str
    ) -> CertificateQuerySet:
        """valid, revoked or expired, as CertificateOut.status reports them."""
        if value == "revoked":
            return queryset.revoked()
        if value == "expired":
            return queryset.filter(status=Certificate.Status.VALID).expired()
        return queryset.valid()

    def filter_serial(
        self, queryset: CertificateQuerySet, name: str, value: str
    ) -> CertificateQuerySet:
        return queryset.filter(serial=normalise_serial(value))


@extend_schema_view(
    list=extend_schema(
        summary="Certificates",
        description=(
            "Your certificates; RA officers see everyone's (an officer scope: those of the "
            "people it covers, and their own) and filter them."
        ),
        responses={200: s.CertificateOut(many=True), **ERRORS},
    ),
    retrieve=extend_schema(
        summary="One certificate, with its chain",
        description=(
            "By hex serial. Yours, or anyone's for RA officers (within their officer scope); "
            "404 for one you may not see."
        ),
        responses={200: s.CertificateDetailOut, **ERRORS, **NOT_FOUND},
    ),
)
class CertificateViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[Certificate]
):
    """List, fetch, revoke and renew certificates; ask for an archived key back."""

    lookup_field = "serial"
    lookup_value_regex = r"[0-9A-Fa-f:]{1,128}"
    filterset_class = CertificateFilter

    def get_serializer_class(self) -> type[serializers.Serializer[Certificate]]:
        return s.CertificateDetailOut if self.action == "retrieve" else s.CertificateOut

    def get_queryset(self) -> QuerySet[Certificate]:
        certificates = Certificate.objects.select_related("owner", "template", "ca", "mailbox")
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular reading the types
            return certificates.none()
        user = signed_in_user(self.request)
        # Mine, and those of the shared mailboxes I am a delegate of.
        mine = Q(owner=user) | Q(mailbox__in=mailboxes.mailboxes_of(user))
        if is_ra_officer(user):
            reach = reach_of(user)
            # Everyone's; a scoped officer's own and those of the people the scope covers.
            return (
                certificates if reach.everyone else certificates.filter(mine | reach.certificates())
            )
        return certificates.filter(mine)

    def get_object(self, *, to_revoke: bool = False) -> Certificate:
        """By serial, among those the caller sees; ``to_revoke``: an officer's lookup
        among every certificate, so that the service refuses one outside their scope
        with a 403 that says why (a serial is public: the directory, the CRL)."""
        serial = normalise_serial(self.kwargs["serial"])
        found = self.get_queryset()
        if to_revoke and is_ra_officer(self.request.user):
            found = Certificate.objects.select_related("owner", "template", "ca", "mailbox")
        # Serials are unique per CA; should two CAs ever share one, the newest wins.
        certificate = found.filter(serial=serial).first()
        if certificate is None:
            raise Http404(_("No such certificate."))
        self.check_object_permissions(self.request, certificate)
        return certificate

    @extend_schema(
        summary="Revoke",
        description=(
            "Holders revoke their own certificates with keyCompromise, affiliationChanged, "
            "superseded or cessationOfOperation; RA officers revoke any with any reason "
            "(a scoped officer, those of the people the scope covers: 403 for another's). "
            "The CRL is regenerated after the change is committed. A certificate imported "
            "from another CA is recorded revoked here only (no CRL entry, no OCSP answer): "
            "revoke it at that CA too."
        ),
        request=s.RevokeIn,
        responses={200: s.CertificateOut, **ERRORS, **NOT_FOUND, **CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, serial: str | None = None) -> Response:
        certificate = self.get_object(to_revoke=True)  # only holders and officers find it
        # Outside an officer's scope: 403 before the body is read, as the service rules.
        services.certificate_revoke_check(
            request.user, certificate, source_address=client_address(request)
        )
        officer = is_ra_officer(request.user)
        serializer = s.RevokeIn(data=request.data, context={"officer": officer})
        serializer.is_valid(raise_exception=True)
        revoked = services.certificate_revoke(
            certificate=certificate,
            reason=serializer.validated_data["reason"],
            invalidity_date=serializer.validated_data.get("invalidity_date"),
            actor=request.user,
            source_address=client_address(request),
        )
        return Response(s.CertificateOut(revoked, context={"request": request}).data)

    @extend_schema(
        summary="Renew",
        description=(
            "A new certificate from the same template, with a new key: give `csr`, or "
            "`key_algorithm` with `pkcs12_password`. The old certificate is revoked as "
            "superseded when the new one is issued."
        ),
        request=_enrolment_body("RenewalRequest", s.CsrIn, s.ServerKeyIn),
        parameters=IDEMPOTENCY,
        responses={201: ISSUED, 202: PENDING, **ERRORS, **NOT_FOUND, **CONFLICT,
                   **ENROLMENT_LIMITS, **IDEMPOTENT_REPLAYS},
    )  # fmt: skip
    @action(detail=True, methods=["post"])
    def renew(self, request: Request, serial: str | None = None) -> Response:
        certificate = self.get_object()
        if certificate.template is None:
            return Response(
                {"detail": _("This certificate was not issued from a template; enrol anew.")},
                status=status.HTTP_409_CONFLICT,
            )
        return _enrol(
            request, template=certificate.template, data=request.data, renewal_of=certificate
        )

    @extend_schema(
        summary="Ask for my archived key back",
        description=(
            "For the certificate's holder, whatever its status (an expired or revoked "
            "encryption certificate is what old mail needs). Creates a key recovery in state "
            "`requested`: an RA officer other than you confirms it with you and accepts it, "
            "other officers approve it, and a key recovery agent recovers it; you then "
            "download the key once on its `page_url`, signed in, with the one-time password "
            "the agent gives you in person. 400 when the key was not archived (signing keys "
            "never are); 409 while a recovery of this key is in progress (`recovery` is its "
            "URL when it is yours to see); 429 past PKIPORTAL_RECOVERY_ASKS_PER_DAY; 403 for "
            "RA officers on someone else's certificate (they open recoveries on the RA pages)."
        ),
        request=s.RecoverIn,
        responses={
            201: s.RecoveryOut,
            **ERRORS,
            **NOT_FOUND,
            409: OpenApiResponse(
                s.RecoveryConflictOut, description="A recovery of this key is in progress."
            ),
            429: ENROLMENT_LIMITS[429],
        },
    )
    @action(detail=True, methods=["post"])
    def recover(self, request: Request, serial: str | None = None) -> Response:
        certificate = self.get_object()  # holders see their own; officers everyone's
        if not services.may_hold(request.user, certificate):
            raise NotPermitted(
                gettext_lazy(
                    "Only the certificate's holder asks for its key back; RA officers open a "
                    "recovery on the RA pages."
                )
            )
        serializer = s.RecoverIn(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            asked = recovery.recovery_ask(
                certificate=certificate,
                holder=signed_in_user(request),
                reason=serializer.validated_data["reason"],
                pkcs12_format=serializer.validated_data["pkcs12_format"],
                source_address=client_address(request),
            )
        except recovery.RecoveryAlreadyOpen as exc:
            existing = exc.recovery
            visible = existing.recipient_id == request.user.pk
            body = {
                "detail": exc.message,
                "recovery": s.absolute(request, "recovery-detail", pk=existing.pk)
                if visible
                else None,
            }
            return Response(body, status=status.HTTP_409_CONFLICT)
        body = s.RecoveryOut(asked, context={"request": request}).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": body["url"]})


# --- shared mailboxes -----------------------------------------------------------------


def _delegates(names: list[str]) -> list[Any]:
    """Active accounts by user name, case aside; a name that matches none, or several
    (user names differing in case only), is a 400 naming it: never a guess at who reads a
    mailbox (the web form's rule, mailbox_views.DelegatesField)."""
    people, unknown = [], []
    for name in dict.fromkeys(names):
        found = list(get_user_model().objects.filter(username__iexact=name, is_active=True)[:2])
        if len(found) != 1:
            unknown.append(name[:60])
        else:
            people.append(found[0])
    if unknown:
        raise serializers.ValidationError(
            {
                "delegates": [
                    _("No single active account has the user name: %(names)s.")
                    % {"names": ", ".join(unknown)}
                ]
            }
        )
    return people


@extend_schema_view(
    list=extend_schema(
        summary="Shared mailboxes",
        description=(
            "The active shared mailboxes you are a delegate of (enrol for one with "
            "`mailbox` in POST /api/v1/enrollments/); RA officers who act for everyone see "
            "every mailbox (an officer scope covers none)."
        ),
        responses={200: s.MailboxOut(many=True), **ERRORS},
    ),
    retrieve=extend_schema(
        summary="One shared mailbox",
        responses={200: s.MailboxOut, **ERRORS, **NOT_FOUND},
    ),
)
class MailboxViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[SharedMailbox]
):
    """Shared mailboxes: delegates list theirs; RA officers create, change and deactivate."""

    serializer_class = s.MailboxOut

    def get_queryset(self) -> QuerySet[SharedMailbox]:
        if getattr(self, "swagger_fake_view", False):
            return SharedMailbox.objects.none()
        if mailboxes.may_manage(self.request.user):
            found = SharedMailbox.objects.all()
        else:  # a scoped officer's scope covers no mailbox: theirs as a delegate only
            found = mailboxes.mailboxes_of(signed_in_user(self.request))
        return found.prefetch_related("delegates").order_by("email")

    def _officer(self) -> None:
        if not is_ra_officer(self.request.user):
            raise PermissionDenied(_("Only RA officers manage shared mailboxes."))
        if not mailboxes.may_manage(self.request.user):
            raise PermissionDenied(mailboxes.OUT_OF_SCOPE)

    @extend_schema(
        summary="Create a shared mailbox (RA officers)",
        request=s.MailboxIn,
        responses={201: s.MailboxOut, **ERRORS},
    )
    def create(self, request: Request) -> Response:
        self._officer()
        serializer = s.MailboxIn(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        created = mailboxes.mailbox_create(
            email=data["email"],
            display_name=data["display_name"],
            delegates=_delegates(data["delegates"]),
            actor=request.user,
            source_address=client_address(request),
        )
        return Response(s.MailboxOut(created).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Change a shared mailbox's display name or delegates (RA officers)",
        description=(
            "A partial update: what the body leaves out stays as it is. `delegates` replaces "
            "the whole list; you cannot add yourself (another officer must)."
        ),
        request=s.MailboxChangeIn,
        responses={200: s.MailboxOut, **ERRORS, **NOT_FOUND},
    )
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        self._officer()
        mailbox = self.get_object()
        serializer = s.MailboxChangeIn(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        changed = mailboxes.mailbox_update(
            mailbox=mailbox,
            display_name=data.get("display_name", mailbox.display_name),
            delegates=_delegates(data["delegates"])
            if "delegates" in data
            else mailbox.delegates.all(),
            actor=request.user,
            source_address=client_address(request),
        )
        return Response(s.MailboxOut(changed).data)

    def _set_active(self, request: Request, active: bool) -> Response:
        self._officer()
        changed = mailboxes.mailbox_set_active(
            mailbox=self.get_object(),
            active=active,
            actor=request.user,
            source_address=client_address(request),
        )
        return Response(s.MailboxOut(changed).data)

    @extend_schema(
        summary="Deactivate a shared mailbox (RA officers)",
        description="Its certificates are revoked after the leavers' grace period.",
        request=None,
        responses={200: s.MailboxOut, **ERRORS, **NOT_FOUND, **CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def deactivate(self, request: Request, pk: str | None = None) -> Response:
        return self._set_active(request, False)

    @extend_schema(
        summary="Reactivate a shared mailbox (RA officers)",
        request=None,
        responses={200: s.MailboxOut, **ERRORS, **NOT_FOUND, **CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def reactivate(self, request: Request, pk: str | None = None) -> Response:
        return self._set_active(request, True)


# --- key recoveries -------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(
        summary="Recoveries of my keys",
        description=(
            "Recoveries of your archived keys that come to you, asked by you or opened for "
            "you by an RA officer, newest first."
        ),
        responses={200: s.RecoveryOut(many=True), **ERRORS},
    ),
    retrieve=extend_schema(
        summary="One key recovery",
        description="One that comes to you; RA officers and key recovery agents see any "
        "whose key owner their officer scope covers (403 for the others).",
        responses={200: s.RecoveryOut, **ERRORS, **NOT_FOUND},
    ),
)
class RecoveryViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet[KeyRecoveryRequest],
):
    """Follow, and withdraw, the recovery of one's own archived key.

    Accepting, approving and carrying out a recovery stay on the RA web pages, and the
    recovered key is downloaded only there: a script holding an API token never gets it."""

    serializer_class = s.RecoveryOut

    def get_queryset(self) -> QuerySet[KeyRecoveryRequest]:
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular reading the types
            return KeyRecoveryRequest.objects.none()
        user = self.request.user
        # with_quorum, in the list's own query as on the RA pages: `approvals` counts those
        # that count, and `state` is what they make of it (state_shown).
        if self.action == "list" or not (is_ra_officer(user) or is_key_recovery_agent(user)):
            return ra_selectors.recoveries_of_holder(user).select_related("certificate")
        return ra_selectors.with_quorum(
            KeyRecoveryRequest.objects.select_related("certificate").defer("bundle")
        )

    def get_object(self) -> KeyRecoveryRequest:
        """An officer or agent sees one only of a key owner their officer scope covers (403,
        naming nobody, as on the RA pages); the person it comes to sees it regardless."""
        found = super().get_object()
        if found.recipient_id != self.request.user.pk and not recovery.in_reach(
            found, self.request.user
        ):
            raise recovery.OutOfReach(recovery.OUT_OF_REACH)
        return found

    @extend_schema(
        summary="Withdraw my recovery request",
        description=(
            "For the holder who asked, while nothing is recovered yet (`requested`, "
            "`pending` or `approved`): it leaves the officers' queue. No body. 409 once it is "
            "recovered, downloaded, expired, rejected or withdrawn; 403 for anyone else who "
            "may see it (an RA officer rejects it instead)."
        ),
        request=None,
        responses={200: s.RecoveryOut, 401: ERRORS[401], 403: ERRORS[403], **NOT_FOUND,
                   **CONFLICT},
    )  # fmt: skip
    @action(detail=True, methods=["post"])
    def withdraw(self, request: Request, pk: str | None = None) -> Response:
        found = self.get_object()
        withdrawn = recovery.recovery_withdraw(
            recovery=found, holder=signed_in_user(request), source_address=client_address(request)
        )
        return Response(self.get_serializer(withdrawn).data)


# --- RA officers ----------------------------------------------------------------------


class RequestFilter(django_filters.FilterSet):
    requester = django_filters.CharFilter(
        field_name="requester__username", help_text=gettext_lazy("The requester's user name.")
    )
    state = django_filters.ChoiceFilter(choices=CertificateRequest.State.choices)
    template = django_filters.CharFilter(field_name="template__slug")
    decided_by = django_filters.CharFilter(
        field_name="decided_by__username",
        help_text=gettext_lazy("The deciding officer's user name."),
    )
    created_after = django_filters.IsoDateTimeFilter(
        field_name="created_at", lookup_expr="gte", help_text=gettext_lazy("ISO 8601, inclusive.")
    )
    created_before = django_filters.IsoDateTimeFilter(
        field_name="created_at", lookup_expr="lt", help_text=gettext_lazy("ISO 8601, exclusive.")
    )

    class Meta:
        model = CertificateRequest
        fields = ["requester", "state", "template", "decided_by", "created_after", "created_before"]


@extend_schema_view(
    list=extend_schema(
        summary="Every request (RA officers)",
        description=(
            "Newest first, in every state, those issued without approval too, within your "
            "officer scope; filtered like /ra/requests/history/. A requester sees their own "
            "under /api/v1/enrollments/."
        ),
        responses={200: s.EnrollmentOut(many=True), **ERRORS},
    ),
)
class RequestViewSet(mixins.ListModelMixin, viewsets.GenericViewSet[CertificateRequest]):
    """Every request, the pending ones, and the RA officer's decision on them."""

    permission_classes = [IsAuthenticated, IsRaOfficer]
    serializer_class = s.EnrollmentOut
    filterset_class = RequestFilter

    def get_queryset(self) -> QuerySet[CertificateRequest]:
        requests = CertificateRequest.objects.select_related(
            "template", "requester", "certificate", "renewal_of", "mailbox"
        )
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular reading the types
            return requests.none()
        # The lists hold only the requests within the officer's scope (enrollment.scopes);
        # a decision on one outside it is a 403 (get_object), not a 404.
        within = reach_of(self.request.user).requests()
        if self.action == "pending":
            return (
                requests.filter(within, state=CertificateRequest.State.PENDING)
                .select_related("template__approver_group")
                .order_by("created_at", "id")
            )
        if self.action == "list":
            return requests.filter(within).order_by("-created_at", "-id")
        return requests

    def permission_denied(
        self, request: Request, message: str | None = None, code: str | None = None
    ) -> NoReturn:
        """A decision refused to someone holding another role (a key recovery agent) for
        not being an RA officer is audited, as the service and the page audit it
        (access.refused, not_an_officer); the others are refused unrecorded."""
        pk = str(self.kwargs.get("pk", ""))
        if (
            self.action in ("approve", "reject")
            and request.user.is_authenticated
            and not is_ra_officer(request.user)
            and pk.isdigit()
            and (found := CertificateRequest.objects.filter(pk=int(pk)).first()) is not None
        ):
            services.access_refusal_record(
                actor=request.user,
                attempted=f"request.{self.action}",
                target=found,
                refusal=NOT_AN_OFFICER,
                source_address=client_address(request),
            )
        super().permission_denied(request, message=message, code=code)

    def get_object(self) -> CertificateRequest:
        decision = self.action in ("approve", "reject")
        return _within_scope(
            self.request,
            super().get_object(),
            attempted=f"request.{self.action}" if decision else "",
        )

    def filter_queryset(
        self, queryset: QuerySet[CertificateRequest, Row]
    ) -> QuerySet[CertificateRequest, Row]:
        """The filters are the list's; the pending queue and the decisions take none."""
        if self.action != "list":
            return queryset
        return super().filter_queryset(queryset)

    @extend_schema(
        summary="Pending requests (RA officers)",
        description=(
            "Oldest first, every officer's within your officer scope (those outside it are "
            "not listed): each says who decides it (`approvers`, the template's approvers "
            "group, null for every officer) and whether you may (`may_decide`); approving "
            "or rejecting one you may not is refused with 403."
        ),
        filters=False,  # the queue takes none (filter_queryset): the schema must not offer them
        responses={200: s.PendingOut(many=True), **ERRORS},
    )
    @action(detail=False, methods=["get"])
    def pending(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        officer = decider(request.user)
        # may_decide asks covers_request of each: their requesters' groups in one query.
        prime_requesters(page or [], [officer.reach])
        serializer = s.PendingOut(
            page, many=True, context={**self.get_serializer_context(), "decider": officer}
        )
        return self.get_paginated_response(serializer.data)

    @extend_schema(
        summary="Approve (RA officers)",
        description=(
            "A CSR request is issued at once (`state` becomes issued, or failed for good "
            "with `error`); a portal-key request waits for its requester to collect it. "
            "When the CA cannot sign right now (its key unreadable, no online issuing CA), "
            "nothing is approved: 503, and the request stays pending for another try."
        ),
        request=s.ApproveIn,
        responses={
            200: s.EnrollmentOut,
            **ERRORS,
            **NOT_FOUND,
            **CONFLICT,
            503: OpenApiResponse(
                OpenApiTypes.OBJECT,
                description="The CA cannot sign right now; the request stays pending.",
            ),
        },
    )
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str | None = None) -> Response:
        pending = self.get_object()
        serializer = s.ApproveIn(data=request.data)
        serializer.is_valid(raise_exception=True)
        decided = services.request_approve(
            request=pending,
            officer=signed_in_user(request),
            reason=serializer.validated_data["reason"],
            source_address=client_address(request),
        )
        return Response(self.get_serializer(decided).data)

    @extend_schema(
        summary="Reject (RA officers)",
        request=s.RejectIn,
        responses={200: s.EnrollmentOut, **ERRORS, **NOT_FOUND, **CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def reject(self, request: Request, pk: str | None = None) -> Response:
        pending = self.get_object()
        serializer = s.RejectIn(data=request.data)
        serializer.is_valid(raise_exception=True)
        decided = services.request_reject(
            request=pending,
            officer=signed_in_user(request),
            reason=serializer.validated_data["reason"],
            source_address=client_address(request),
        )
        return Response(self.get_serializer(decided).data)


# --- API tokens -----------------------------------------------------------------------

# With HTTP basic, the code of a second factor (accounts.mfa), as GitHub's X-GitHub-OTP.
SECOND_FACTOR_HEADER = "X-OTP-Code"


class TokenCreateView(APIView):
    """Mint an API token from a browser session or HTTP basic credentials.

    Not from another token: a stolen token must not be able to outlive its expiry. The
    web page /account/tokens/ does the same for people who sign in without a password.
    """

    authentication_classes = [AxesBasicAuthentication, VerifiedSessionAuthentication]
    permission_classes = [IsAuthenticated]

    @extend_schema(
        summary="Create an API token",
        description=(
            "Sign in with HTTP basic (your portal user name and password) or a session; "
            "with single sign-on, create tokens on the portal page `/account/tokens/` "
            "instead. The token is shown once; the server keeps only its hash. Use it as "
            "`Authorization: Token <token>`. One person holds at most "
            "PKIPORTAL_MAX_API_TOKENS (10) live tokens. Whoever has a second factor (RA "
            "officers, key recovery agents and administrators must) sends a current code "
            f"from it, or a backup code, in the `{SECOND_FACTOR_HEADER}` header with HTTP "
            "basic; a session must have confirmed it at sign-in. Whoever has only security "
            "keys (passkeys) mints tokens from a browser session that confirmed one: HTTP "
            "basic answers 403 with `missing: second_factor_session`."
        ),
        parameters=[
            OpenApiParameter(
                SECOND_FACTOR_HEADER,
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="With HTTP basic: a code from your authenticator app, or a "
                "backup code, if you have a second factor.",
            )
        ],
        request=s.TokenIn,
        responses={
            200: s.TokenOut,
            400: ERRORS[400],
            401: ERRORS[401],
            429: ENROLMENT_LIMITS[429],
        },
    )
    @sensitive_variables("clear")
    def post(self, request: Request, format: Any = None) -> Response:
        if isinstance(
            request.successful_authenticator, SessionAuthentication
        ) and not recent_sign_in.signed_in_recently(request._request):
            # A token outlives the session: a stolen session cookie must not be enough.
            raise PermissionDenied(
                # Translators: minutes is e.g. "15 minutes".
                _(
                    "Sign in again to create a token from a browser session: it must be within "
                    "%(minutes)s of signing in. HTTP basic needs no second sign-in."
                )
                % {"minutes": plurals.minutes(settings.PKIPORTAL_TOKEN_SIGN_IN_MINUTES)}
            )
        if isinstance(request.successful_authenticator, SessionAuthentication):
            second_factor = mfa.session_verified(request._request)
            verified_by = mfa.session_verification(request._request)
        else:
            checked = check_basic_second_factor(request)
            if isinstance(checked, Response):
                return checked
            verified_by = checked
            second_factor = bool(verified_by.kind)  # a code was checked
        serializer = s.TokenIn(data=request.data)
        serializer.is_valid(raise_exception=True)
        named, clear = services.api_token_create(
            owner=signed_in_user(request),
            label=serializer.validated_data["label"],
            lifetime_days=serializer.validated_data["lifetime_days"],
            via=services.TokenVia.API,
            source_address=client_address(request),
            second_factor=second_factor,
            second_factor_kind=verified_by.kind,
            second_factor_key_model=verified_by.key_model,
        )
        if not isinstance(request.successful_authenticator, SessionAuthentication):
            # As knox does for a password: Django records the sign-in, django-axes resets
            # the failures. A session signed in already; this is no new sign-in.
            user_logged_in.send(
                sender=type(request.user), request=_WithoutSession(request), user=request.user
            )
        token = named.auth_token
        body = {"token": clear, "expiry": token.expiry, "label": named.label}
        response = Response(s.TokenOut({**body, "prefix": token.token_key}).data)
        response["Cache-Control"] = "no-store"
        return response


@dataclass(frozen=True)
class BasicWording:
    """What a second-factor refusal of HTTP basic says: the realm of its challenge, and
    two whole sentences: where to set up a second factor first (``%(url)s``, that page),
    and where someone with only security keys goes instead (``%(url)s``: the tokens page)."""

    realm: str
    no_second_factor: Message
    security_key_only: Message


def _token_wording() -> BasicWording:
    return BasicWording(
        realm="api",
        no_second_factor=gettext_lazy(
            "Your role needs a second factor: set one up on the portal (%(url)s) before "
            "minting a token."
        ),
        security_key_only=gettext_lazy(
            "Your second factor is a security key, which HTTP basic cannot use: create the "
            "token from a browser session that confirmed it (%(url)s, or POST here with that "
            "session)."
        ),
    )


def second_factor_for_basic(
    request: Request, *, via: str = "api", wording: BasicWording | None = None
) -> Response | None:
    """A password alone mints no token for whoever has, or must have, a second factor: a
    token outlives everything, so it takes what a sign-in in the browser takes. None: go on.
    Wrong codes are throttled per device, not counted as failed sign-ins by django-axes
    (the password was right). EST (enrollment/est.py) asks the same of its basic sign-ins,
    ``via="est"`` in the mfa.verify events, with its own ``wording`` (realm "est")."""
    checked = check_basic_second_factor(request, via=via, wording=wording)
    return checked if isinstance(checked, Response) else None


@sensitive_variables("code")  # the X-OTP-Code header's: an app's code or a backup code
def check_basic_second_factor(
    request: Request, *, via: str = "api", wording: BasicWording | None = None
) -> Response | mfa.Verification:
    """second_factor_for_basic(), answering what the code checked was (an app's or a backup
    code: the token records it) instead of None; no code asked: an empty Verification."""
    wording = wording or _token_wording()
    user = signed_in_user(request)
    state = mfa.state_for(user)
    if not state.asked:
        return mfa.Verification()
    if not state.enrolled:
        return Response(
            {
                "detail": str(wording.no_second_factor)
                % {"url": reverse(mfa.second_step_url_name(user))},
                "missing": "second_factor",
            },
            status=status.HTTP_403_FORBIDDEN,
        )
    if not state.totp:
        # Only security keys: a signature for this origin, which no header can carry. Their
        # backup codes are for a lost key in the browser, not to be spent by a script.
        return Response(
            {
                "detail": str(wording.security_key_only)
                % {"url": reverse("enrollment:token-list")},
                "missing": "second_factor_session",
                "url": reverse("enrollment:token-list"),
            },
            status=status.HTTP_403_FORBIDDEN,
        )
    code = request.headers.get(SECOND_FACTOR_HEADER, "").strip()
    unauthorised = {
        "WWW-Authenticate": f'Basic realm="{wording.realm}"',
        SECOND_FACTOR_HEADER: "required",
    }
    if not code:
        return Response(
            {
                "detail": _(
                    "Send a code from your authenticator app (or a backup code) in the "
                    "%(header)s header."
                )
                % {"header": SECOND_FACTOR_HEADER},
                "missing": "second_factor",
            },
            status=status.HTTP_401_UNAUTHORIZED,
            headers=unauthorised,
        )
    check, _device = mfa.check_code(
        user=user, code=code[:40], source_address=client_address(request), via=via
    )
    if check.ok:
        return mfa.code_verification(check.kind)
    if check.problem:
        return Response(
            {
                # Translators: problem is a whole sentence on what is wrong with the app.
                "detail": _("%(problem)s A backup code in %(header)s still works.")
                % {"problem": check.problem, "header": SECOND_FACTOR_HEADER},
                "missing": "second_factor_reset",
            },
            status=status.HTTP_403_FORBIDDEN,
        )
    if check.replayed:
        return Response(
            {
                "detail": _(
                    "The code in %(header)s was used already: each call with a password needs "
                    "a new code (wait for the next one). Scripts and devices use an API token "
                    "instead."
                )
                % {"header": SECOND_FACTOR_HEADER},
                "missing": "second_factor",
            },
            status=status.HTTP_401_UNAUTHORIZED,
            headers=unauthorised,
        )
    if check.throttled_until is not None:
        wait = mfa.seconds_until(check.throttled_until)
        return Response(
            {
                # Translators: wait is e.g. "5 minutes".
                "detail": _("Too many wrong codes: try again in %(wait)s.")
                % {"wait": mfa.wait_in_words(wait)}
            },
            status=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": str(wait)},
        )
    return Response(
        {
            "detail": _("The code in %(header)s is not right, or was used already.")
            % {"header": SECOND_FACTOR_HEADER},
            "missing": "second_factor",
        },
        status=status.HTTP_401_UNAUTHORIZED,
        headers=unauthorised,
    )


class _WithoutSession:
    """The request as a token's sign-in or sign-out shows it to the signals' receivers:
    with no session. django-axes creates one to hash its key into the access log when the
    request has a session, so each token a script minted or revoked left an empty session
    row and a cookie. (Its sign-out then closes the log entries of token sign-ins, whose
    session hash is empty, rather than a browser session's.)"""

    def __init__(self, request: Request) -> None:
        self._request = request

    def __getattr__(self, name: str) -> Any:
        if name == "session":
            raise AttributeError(name)
        return getattr(self._request, name)


class TokenLogoutView(APIView):
    """Revoke the token this request was made with."""

    authentication_classes = [TokenAuthentication]
    permission_classes = [IsAuthenticated]

    @extend_schema(
        summary="Revoke this API token",
        request=None,
        responses={204: OpenApiResponse(description="Revoked."), 401: ERRORS[401]},
    )
    def post(self, request: Request, format: Any = None) -> Response:
        services.api_token_revoke(
            token=request.auth,
            actor=request.user,
            via=services.TokenVia.API,
            source_address=client_address(request),
        )
        user_logged_out.send(
            sender=type(request.user), request=_WithoutSession(request), user=request.user
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenLogoutAllView(APIView):
    """Revoke every API token of the token's owner (a leaked script, a lost laptop)."""

    authentication_classes = [TokenAuthentication]
    permission_classes = [IsAuthenticated]

    @extend_schema(
        summary="Revoke all my API tokens",
        request=None,
        responses={204: OpenApiResponse(description="Revoked."), 401: ERRORS[401]},
    )
    def post(self, request: Request, format: Any = None) -> Response:
        services.api_tokens_revoke_all(
            owner=signed_in_user(request),
            actor=request.user,
            via=services.TokenVia.API,
            source_address=client_address(request),
        )
        user_logged_out.send(
            sender=type(request.user), request=_WithoutSession(request), user=request.user
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- roll-outs ------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(
        summary="Roll-outs (RA officers)",
        description="Newest first; counts only: each one's `url` lists its people.",
        responses={200: s.RolloutSummaryOut(many=True), **ERRORS},
    ),
    retrieve=extend_schema(
        summary="One roll-out (RA officers)",
        description=(
            "Its counts and every invited person's request with where it stands. For an "
            "officer in a scope, of the people it covers only; `skipped` is null for them "
            "on another officer's roll-out."
        ),
        responses={200: s.RolloutOut, **ERRORS, **NOT_FOUND},
    ),
)
class RolloutViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[Rollout]
):
    """Invite many people to collect a certificate (README.md, "Rolling out to many people")."""

    permission_classes = [IsAuthenticated, IsRaOfficer]
    serializer_class = s.RolloutOut

    def get_queryset(self) -> QuerySet[Rollout]:
        return Rollout.objects.select_related("template", "created_by")

    def get_serializer_class(self) -> type[serializers.BaseSerializer[Any]]:
        return s.RolloutSummaryOut if self.action == "list" else s.RolloutOut

    def get_serializer_context(self) -> dict[str, Any]:
        """The caller's officer scope: a roll-out's people and counts are of those it
        covers (RolloutOut)."""
        context = dict(super().get_serializer_context())
        if not getattr(self, "swagger_fake_view", False):
            context["reach"] = reach_of(self.request.user)
            context["viewer_id"] = self.request.user.pk
        return context

    @extend_schema(
        summary="Create a roll-out (RA officers)",
        description=(
            "Everyone eligible in `group` and `people` gets a request for the template, "
            "approved by you, and an e-mail with its link; they collect a portal-generated "
            "key as a PKCS#12 there. Who was not invited, and why, is in `skipped`; people "
            "outside your officer scope are not invited, and counted there as one "
            "`outside_scope` item with `count`, unnamed. 400 when "
            "nobody can be invited or the template issues no portal keys; 503 when an "
            "archiving template has no valid key recovery agent. Nothing is stored then."
        ),
        request=s.RolloutIn,
        responses={201: s.RolloutOut, **ERRORS, 503: ENROLMENT_LIMITS[503]},
    )
    def create(self, request: Request) -> Response:
        from django.contrib.auth.models import Group

        from enrollment import rollouts

        serializer = s.RolloutIn(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        template = CertificateTemplate.objects.filter(slug=data["template"]).first()
        if template is None:
            raise serializers.ValidationError({"template": [_("No such template.")]})
        group = None
        if data.get("group"):
            group = Group.objects.filter(name=data["group"]).first()
            if group is None:
                raise serializers.ValidationError({"group": [_("No such group.")]})
        created = rollouts.rollout_create(
            officer=signed_in_user(request),
            template=template,
            group=group,
            people=data["people"],  # entry by entry: an API item is one name or address
            name=data["name"],
            key_algorithm=KeyAlgorithm(data["key_algorithm"])
            if data.get("key_algorithm")
            else None,
            source_address=client_address(request),
        )
        return Response(self.get_serializer(created).data, status=status.HTTP_201_CREATED)
