"""EST, RFC 7030: enrolment over the standard protocol, at /.well-known/est/.

Devices, MDM tools and scripts enrol here as they would with EJBCA or a Windows NDES
replacement: ``cacerts``, ``simpleenroll``, ``simplereenroll`` and ``csrattrs``, with the
RFC's optional label (``/.well-known/est/<template-slug>/...``) choosing the template; the
unlabelled URLs use PKIPORTAL_EST_DEFAULT_TEMPLATE. README "EST (RFC 7030)" is the
contract; this module only translates: every request goes through
services.request_submit (templates, limits, approval, audit, with the channel ``est``).

Authentication is HTTP basic (the portal account's password, under django-axes; whoever
has or must have a second factor sends a code in X-OTP-Code, as when minting an API
token) or ``Authorization: Token <api token>``. Never a session, so no CSRF: DRF's views
are CSRF-exempt, and only session authentication would check it. Over HTTPS only (RFC 7030
3.3): a signed-in call over plain HTTP is refused before its credentials are read, unless
DEBUG or PKIPORTAL_EST_ALLOW_HTTP (a test lab).

Its answers are English, never translated: EST clients are machines, which log the text
for an operator rather than show it to a person (_EstView.dispatch).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from django.conf import settings
from django.contrib.auth.signals import user_logged_in
from django.db import IntegrityError, connection
from django.db.models import BinaryField, F, Func, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.http import HttpResponse
from django.utils import timezone, translation
from rest_framework import parsers, renderers
from rest_framework.exceptions import (
    APIException,
    NotFound,
    ParseError,
    PermissionDenied,
    UnsupportedMediaType,
)
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from accounts.requests import signed_in_user
from enrollment import services
from enrollment.api.authentication import AxesBasicAuthentication, TokenAuthentication
from enrollment.api.views import BasicWording, _WithoutSession, second_factor_for_basic
from enrollment.edge import client_address
from enrollment.exceptions import NotPermitted, PolicyViolation
from enrollment.models import Certificate, CertificateRequest, CertificateTemplate
from enrollment.permissions import may_use_template
from enrollment.x509 import names, pkcs7
from enrollment.x509.csr import ParsedCsr, parse_csr
from enrollment.x509.der import tlv as _tlv
from enrollment.x509.keys import KeyAlgorithm, describe_public_key
from pkiportal import api

TEXT = "text/plain; charset=utf-8"
CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"
# How long a client waiting for an RA officer is asked to wait before it asks again.
RETRY_AFTER_SECONDS = 600
PKCS10 = "application/pkcs10"


class EstBasicAuthentication(AxesBasicAuthentication):
    """The API's basic authentication (django-axes' lock-out as a 429), realm "est"."""

    www_authenticate_realm = "est"


class _Refused(APIException):
    """An answer made before the view ran (the second factor of a basic sign-in)."""

    def __init__(self, response: Response) -> None:
        super().__init__()
        self.response = response


class _TextRenderer(renderers.BaseRenderer):
    """Never used for a body (the views answer HttpResponses): DRF wants a renderer, and
    negotiating one against an EST client's Accept header could only refuse it (406)."""

    media_type = "text/plain"
    format = "txt"
    charset = "utf-8"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        return str(data).encode()


def _text(data: Any) -> str:
    """DRF's or the domain's error body as one line of text."""
    if isinstance(data, dict):
        if set(data) <= {"detail", "missing", "url"} and "detail" in data:
            return _text(data["detail"])
        return "; ".join(f"{name}: {_text(value)}" for name, value in data.items())
    if isinstance(data, list):
        return " ".join(_text(item) for item in data)
    return str(data)


def text_response(message: str, status: int, **headers: str) -> HttpResponse:
    response = HttpResponse(message.rstrip() + "\n", status=status, content_type=TEXT)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def _exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponse | None:
    """The API's translation of errors (domain errors, DRF's, a body too large), as text."""
    answered = exc.response if isinstance(exc, _Refused) else api.exception_handler(exc, context)
    if answered is None:
        return None
    response = text_response(_text(answered.data), answered.status_code)
    for header in ("WWW-Authenticate", "Retry-After", "X-OTP-Code"):
        if header in answered:
            response[header] = answered[header]
    return response


class _OpaqueParser(parsers.BaseParser):
    """Any body is no form: what django-axes sees of request.POST on a failed sign-in.
    The views read the body themselves (csr_der)."""

    media_type = "*/*"

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        return {}


class _EstView(APIView):
    authentication_classes = [EstBasicAuthentication, TokenAuthentication]
    permission_classes = [IsAuthenticated]
    parser_classes = [_OpaqueParser]
    renderer_classes = [_TextRenderer]
    schema = None  # not part of the REST API's OpenAPI document
    # OPTIONS is 405: DRF's metadata would answer it with the view's docstring and the
    # API's renderers and parsers, none of which is EST's business.
    metadata_class = None

    def get_exception_handler(self) -> Any:
        return _exception_handler

    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        """In English whatever Accept-Language or PKIPORTAL_LANGUAGE say: the API's and
        DRF's messages it shares are translated for people, and an EST client is a device
        or script whose log an operator reads, the same everywhere."""
        with translation.override("en"):
            response = super().dispatch(request, *args, **kwargs)
        response["Content-Language"] = "en"
        return response

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        return (_TextRenderer(), _TextRenderer.media_type)

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        if not settings.PKIPORTAL_EST_ENABLED:
            raise NotFound("EST is not enabled on this portal.")
        if self.authentication_classes and not _transport_ok(request):
            # RFC 7030 3.3: TLS always. Refused before any credential is looked at (no
            # password checked, no lock-out counted) and before a 401 could invite one.
            raise PermissionDenied(
                "EST takes passwords and API tokens over HTTPS only: use the https:// URL."
            )
        # Read now, within DATA_UPLOAD_MAX_MEMORY_SIZE (413 beyond): django-axes looks at
        # the request's POST data when a sign-in fails, and the body must still be there.
        request._request.body  # noqa: B018
        super().initial(request, *args, **kwargs)
        if isinstance(request.successful_authenticator, EstBasicAuthentication):
            # A password alone is not enough for whoever has, or must have, a second
            # factor: the same rule, header and throttle as minting an API token.
            refused = second_factor_for_basic(request, via="est", wording=_est_wording())
            if refused is not None:
                raise _Refused(refused)
            # As a token's minting does: Django records the sign-in, django-axes resets
            # the failures.
            user_logged_in.send(
                sender=type(request.user), request=_WithoutSession(request), user=request.user
            )


def _transport_ok(request: Request) -> bool:
    """HTTPS (as Django sees it: SECURE_PROXY_SSL_HEADER behind a proxy), or a portal that
    allows plain HTTP: DEBUG, or PKIPORTAL_EST_ALLOW_HTTP for a test lab."""
    return request._request.is_secure() or settings.DEBUG or settings.PKIPORTAL_EST_ALLOW_HTTP


def _est_wording() -> BasicWording:
    return BasicWording(
        realm="est",
        no_second_factor="Your role needs a second factor: set one up on the portal (%(url)s) "
        "before enrolling over EST with a password, or enrol with an API token.",
        security_key_only="Your second factor is a security key, which HTTP basic cannot use: "
        "enrol with an API token (Authorization: Token), created on the portal (%(url)s) from "
        "a session that confirmed it.",
    )


def _template(label: str) -> CertificateTemplate:
    slug = label or settings.PKIPORTAL_EST_DEFAULT_TEMPLATE
    if not slug:
        raise NotFound("No default EST template is configured: use /.well-known/est/<template>/...")
    template = CertificateTemplate.objects.select_related("issuing_ca").filter(slug=slug).first()
    if template is None or not template.is_active:
        raise NotFound(f"No active template {slug!r}.")
    return template


def _usable(user: User, template: CertificateTemplate) -> None:
    if not may_use_template(user, template):
        raise NotPermitted(f"You may not use the template {template.name}.")


class CaCertsView(_EstView):
    """RFC 7030 4.1: the CA chain of the template's issuing CA, to the root. Public, as
    /pki/ is: a client bootstraps its trust with it before it authenticates."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    def get(self, request: Request, label: str = "") -> HttpResponse:
        template = _template(label)
        ca = template.issuing_ca or services.default_issuing_ca()
        chain = [authority.certificate for authority in ca.chain()]
        return _base64_response(pkcs7.certificates_to_p7b(chain), "application/pkcs7-mime")


class CsrAttrsView(_EstView):
    """RFC 7030 4.5: the key types the template accepts (204 when it accepts any)."""

    def get(self, request: Request, label: str = "") -> HttpResponse:
        template = _template(label)
        _usable(signed_in_user(request), template)
        der = csr_attributes(template.key_algorithms)
        if der is None:
            return HttpResponse(status=204)
        return _base64_response(der, "application/csrattrs")


class SimpleEnrollView(_EstView):
    """RFC 7030 4.2.1."""

    renew = False

    def post(self, request: Request, label: str = "") -> HttpResponse:
        return _enrol(request, _template(label), renew=self.renew)


class SimpleReenrollView(SimpleEnrollView):
    """RFC 7030 4.2.2: renews the caller's certificate that the CSR names (renewed())."""

    renew = True


def _base64_response(der: bytes, content_type: str, status: int = 200) -> HttpResponse:
    response = HttpResponse(base64.encodebytes(der), status=status, content_type=content_type)
    # RFC 7030 sends it; RFC 8951 tells clients to ignore it (base64 is always used).
    response["Content-Transfer-Encoding"] = "base64"
    return response


def csr_der(body: bytes, content_type: str) -> bytes:
    """The CSR's DER from an EST body: base64 (RFC 7030 4.2.1, RFC 8951), or - tolerated -
    PEM or bare DER, which parse_csr reads as they are."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media != PKCS10:
        raise UnsupportedMediaType(
            media or "(none)", detail=f"Send the CSR as {PKCS10} (base64 of its DER)."
        )
    if not body.strip():
        raise ParseError("The body is empty: send the CSR, base64 of its DER.")
    if body[:1] == b"\x30" or body.lstrip().startswith(b"-----BEGIN"):
        return body
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ParseError("The body is not base64: send the CSR, base64 of its DER.") from None


def _enrol(request: Request, template: CertificateTemplate, *, renew: bool) -> HttpResponse:
    user = signed_in_user(request)
    raw = csr_der(request._request.body, request.content_type or "")
    parsed = parse_csr(raw)  # its X509Error is the API's 400
    der = parsed.csr.public_bytes(Encoding.DER)
    key = request_key(template, der, renew=renew)
    # Before any repeat is answered: whoever may no longer use the template learns nothing
    # of what an earlier request of theirs became.
    _usable(user, template)
    # RFC 7030 4.2.3: the same request again, after a 202. Also when the template's slug
    # changed under the unlabelled URL (PKIPORTAL_EST_DEFAULT_TEMPLATE) while it waited.
    earlier = _made_with(user, key) or _waiting_with(user, der, renew=renew)
    if earlier is not None:
        return _repeat(user, earlier)
    renewal_of = renewed(user, template, parsed) if renew else None
    try:
        # request_submit keeps its own transaction: a refusal leaves nothing behind.
        submitted = services.request_submit(
            requester=user,
            template=template,
            csr=der,
            renewal_of=renewal_of,
            source_address=client_address(request),
            idempotency_key=key,
            channel=services.EST_CHANNEL,
        )
    except IntegrityError:
        earlier = _made_with(user, key)  # the same CSR, sent twice at once, stored first
        if earlier is None:
            raise
        return _repeat(user, earlier)
    return _answer(submitted)


def request_key(template: CertificateTemplate, der: bytes, *, renew: bool) -> str:
    """The request's idempotency key: the same CSR to the same template and operation."""
    digest = hashlib.sha256(
        template.slug.encode() + (b"\0reenroll\0" if renew else b"\0enroll\0") + der
    ).hexdigest()
    return services.EST_KEY_PREFIX + digest[: 64 - len(services.EST_KEY_PREFIX)]


def _made_with(user: User, key: str) -> CertificateRequest | None:
    return (
        CertificateRequest.objects.select_related("certificate", "template")
        .filter(requester=user, idempotency_key=key)
        .first()
    )


def _waiting_with(user: User, der: bytes, *, renew: bool) -> CertificateRequest | None:
    """The caller's EST request for this very CSR and operation, under any template, that
    answered 202: still waiting, or decided by an officer since. The key names the
    template, so without this a changed default template made a second request for a CSR
    still waiting (or approved while its client waited)."""
    return _waiting_queryset(user, der, renew=renew).first()


def _waiting_queryset(user: User, der: bytes, *, renew: bool) -> QuerySet[CertificateRequest]:
    """_waiting_with's query (its test reads the plan)."""
    state = CertificateRequest.State
    requests = CertificateRequest.objects.select_related("certificate", "template")
    if connection.vendor == "postgresql":
        # request_est_csr_idx (migration 0033): (requester_id, sha256(csr)) WHERE channel =
        # 'est', so that an account enrolling many devices finds one CSR among its requests
        # without reading them all. 'est' is written into the SQL, not passed as a
        # parameter: a prepared statement's generic plan sees only "$n" and could not use
        # a partial index. sha256, not md5, which a FIPS-mode PostgreSQL refuses; the
        # digest only finds the row, csr=der below still compares the bytes.
        requests = requests.alias(
            csr_sha256=Func(F("csr"), function="SHA256", output_field=BinaryField())
        )
        requests = requests.filter(
            channel=RawSQL(f"'{services.EST_CHANNEL.value}'", ()),
            csr_sha256=hashlib.sha256(der).digest(),
        )
    else:
        requests = requests.filter(channel=services.EST_CHANNEL)
    return requests.filter(
        Q(state__in=[state.PENDING, state.APPROVED]) | Q(decided_at__isnull=False),
        requester=user,
        renewal_of__isnull=not renew,
        csr=der,
    ).order_by("pk")


def _repeat(user: User, earlier: CertificateRequest) -> HttpResponse:
    """The answer to a CSR sent again. RFC 7030 4.2.3 has a client repeat a request while
    it waits (202); once issued, the certificate is answered again only while it is still
    valid and the caller may still use its template: a revoked, superseded or expired one
    is never handed out as if freshly issued."""
    _usable(user, earlier.template)
    if earlier.state == CertificateRequest.State.ISSUED and earlier.certificate is not None:
        certificate = earlier.certificate
        ended = ""
        if certificate.status == Certificate.Status.REVOKED:
            ended = "revoked"
        elif certificate.not_after <= timezone.now():
            ended = "expired"
        if ended:
            return text_response(
                f"The certificate for this CSR is {ended}: send a new CSR, with a new key.",
                409,
            )
    return _answer(earlier)


def _answer(submitted: CertificateRequest) -> HttpResponse:
    state = CertificateRequest.State
    if submitted.state == state.ISSUED and submitted.certificate is not None:
        der = pkcs7.certificates_to_p7b([submitted.certificate.certificate])
        return _base64_response(der, CERTS_ONLY)
    if submitted.state in (state.PENDING, state.APPROVED):
        return text_response(
            "Waiting for an RA officer's approval: send the same request again later.",
            202,
            Retry_After=str(RETRY_AFTER_SECONDS),
        )
    if submitted.state == state.REJECTED:
        reason = submitted.decision_reason or "no reason given"
        return text_response(f"An RA officer rejected this request: {reason}", 403)
    if submitted.state == state.WITHDRAWN:
        return text_response("This request was withdrawn: send a new CSR.", 403)
    return text_response(
        f"This request failed: {submitted.error or 'see the portal'}. Send a new CSR.", 400
    )


def renewed(user: User, template: CertificateTemplate, parsed: ParsedCsr) -> Certificate:
    """The certificate a simplereenroll renews (README "EST (RFC 7030)").

    The caller's own valid certificate from this template (not a shared mailbox's) whose
    subject is the CSR's subject (RFC 7030 4.2.2: a re-enrolment repeats it) and whose key
    is of the CSR's key type; of several, the one that ends first. The new certificate's
    subject still comes from the account, as every certificate's does.
    """
    held = list(
        Certificate.objects.valid()
        .filter(owner=user, mailbox__isnull=True, template=template)
        .order_by("not_after", "pk")
    )
    if not held:
        raise NotPermitted(
            f"You hold no valid certificate from {template.name} to renew: use simpleenroll."
        )
    same_subject = [c for c in held if _subject(c) == parsed.csr.subject]
    if not same_subject:
        raise PolicyViolation(
            "A re-enrolment repeats the subject of the certificate it renews; none of your "
            f"valid {template.name} certificates has this CSR's subject "
            f"({names.printable(parsed.requested_subject) or 'empty'}).",
            field="csr",
        )
    key_type = describe_public_key(parsed.public_key)
    for certificate in same_subject:
        if certificate.key_algorithm == key_type:
            return certificate
    raise PolicyViolation(
        f"A re-enrolment keeps the key type: this CSR's key is {key_type}, the certificate "
        f"it renews has {same_subject[0].key_algorithm}.",
        field="csr",
    )


def _subject(certificate: Certificate) -> x509.Name:
    return certificate.certificate.subject


# --- csrattrs: CsrAttrs ::= SEQUENCE OF AttrOrOID (RFC 7030 4.5.2, RFC 9908), in DER ---

RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
EC_PUBLIC_KEY = "1.2.840.10045.2.1"
CURVE_OIDS = {KeyAlgorithm.EC_P256: "1.2.840.10045.3.1.7", KeyAlgorithm.EC_P384: "1.3.132.0.34"}


def csr_attributes(algorithms: frozenset[KeyAlgorithm]) -> bytes | None:
    """The key types the template takes, as RFC 9908 (which clarifies RFC 7030 4.5) has
    an Attribute say them: rsaEncryption with the key sizes, id-ecPublicKey with the
    curves (its bare OID next to it would add nothing). None when it takes every key type
    the portal knows: nothing to ask for."""
    if algorithms >= frozenset(KeyAlgorithm):
        return None
    items: list[bytes] = []
    sizes = [a.rsa_key_size for a in algorithms if a.rsa_key_size is not None]
    if sizes:
        items.append(_attribute(RSA_ENCRYPTION, [_integer(size) for size in sizes]))
    curves = [CURVE_OIDS[a] for a in algorithms if a in CURVE_OIDS]
    if curves:
        items.append(_attribute(EC_PUBLIC_KEY, [_oid(curve) for curve in curves]))
    return _tlv(0x30, b"".join(items))


def _attribute(oid: str, values: list[bytes]) -> bytes:
    """Attribute ::= SEQUENCE { type OID, values SET OF } with the SET OF in DER order."""
    return _tlv(0x30, _oid(oid) + _tlv(0x31, b"".join(sorted(values))))


def _integer(value: int) -> bytes:
    """A non-negative DER INTEGER (a leading zero when the top bit is set)."""
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _oid(dotted: str) -> bytes:
    arcs = [int(arc) for arc in dotted.split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _tlv(0x06, bytes(body))
