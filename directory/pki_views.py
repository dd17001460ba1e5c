"""The public repository (/pki/): CA certificates, chains and CRLs for relying parties.

No login, exact content types (RFC 2585), and caching headers that never let a cache keep
a CRL past its nextUpdate.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.serialization import Encoding

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.utils.cache import get_conditional_response
from django.utils.http import http_date, quote_etag
from django.utils.translation import gettext as _
from django.views.decorators.http import require_safe

from enrollment import binary, services
from enrollment.exceptions import Busy
from enrollment.models import CertificateAuthority, CertificateTemplate, RevocationList
from enrollment.x509 import pkcs7

CA_CERT_MAX_AGE = 24 * 3600
# After a failed signature, requests answer 503 this long without trying again.
CRL_RETRY_PAUSE = timedelta(minutes=1)


def _ca(slug: str) -> CertificateAuthority:
    return get_object_or_404(CertificateAuthority, slug=slug)


def _repository_answer(
    request: HttpRequest,
    *,
    body: Callable[[], bytes],
    content_type: str,
    filename: str,
    etag: str,
    last_modified: datetime,
    max_age: int,
    expires: datetime | None = None,
    if_modified_since: bool = True,
) -> HttpResponse:
    """200, or 304 to a matching validator, both with the same caching headers.

    RFC 9110 15.4.5: a 304 carries the Cache-Control, ETag and Expires the 200 would, else
    a cache refreshes the stored answer with none (Django's @condition sends a bare one).
    ``if_modified_since=False`` leaves that header unanswered: only ETags give a 304.
    """
    response = get_conditional_response(
        request,
        etag=etag,
        last_modified=int(last_modified.timestamp()) if if_modified_since else None,
    )
    if response is None:
        response = HttpResponse(body(), content_type=content_type)
        response["Content-Disposition"] = f'inline; filename="{filename}"'
    elif response.status_code != 304:
        return response  # 412 to If-Match or If-Unmodified-Since: nothing to cache
    response["ETag"] = etag
    response["Last-Modified"] = http_date(last_modified.timestamp())
    response["Cache-Control"] = f"public, max-age={max(max_age, 0)}"
    if expires is not None:
        response["Expires"] = http_date(expires.timestamp())
    return response


@require_safe
def ca_certificate(request: HttpRequest, slug: str) -> HttpResponse:
    ca = _ca(slug)
    return _repository_answer(
        request,
        body=lambda: bytes(ca.der),
        content_type="application/pkix-cert",
        filename=f"{slug}.crt",
        etag=quote_etag(ca.fingerprint_sha256),
        last_modified=ca.created_at,
        max_age=CA_CERT_MAX_AGE,
    )


@require_safe
def ca_chain(request: HttpRequest, slug: str) -> HttpResponse:
    ca = _ca(slug)
    return _repository_answer(
        request,
        body=lambda: pkcs7.certificates_to_p7b([member.certificate for member in ca.chain()]),
        content_type="application/pkcs7-mime",
        filename=f"{slug}-chain.p7b",
        etag=quote_etag(f"{ca.fingerprint_sha256}-chain"),
        last_modified=ca.created_at,
        max_age=CA_CERT_MAX_AGE,
    )


def _fresh_crl(ca: CertificateAuthority) -> tuple[RevocationList | None, bool]:
    """The newest CRL (DER deferred), and whether another process is signing a new one.

    An expired CRL makes every signature from this CA unverifiable (django-ca issue 167):
    an online CA signs a new one right here. A request never queues for it: within a
    minute of a failure nobody tries again, and while another publisher holds the CA lock
    (one request of a crowd, the worker) the others answer at once rather than wait.
    """
    crl = ca.latest_crl()
    now = timezone.now()
    if not ca.is_online or (crl is not None and crl.next_update > now):
        return crl, False
    if ca.crl_failed_at is not None and now - ca.crl_failed_at < CRL_RETRY_PAUSE:
        return crl, False
    attempt = services.CrlAttempt()
    try:
        services.crl_publish_if_due(ca=ca, pending_for=None, wait=False, attempt=attempt)
    except Busy:
        return ca.latest_crl(), True
    except Exception as exc:
        # Once a minute at most, as the pause above: the audit trail is not flooded. With
        # what the attempt saw under the lock: a CRL another publisher committed once this
        # one rolled back makes up for the failure, which is then audited, not shown.
        services.crl_failure_record(ca=ca, error=exc, newest_before=attempt.newest_crl_id)
    return ca.latest_crl(), False


def _crl_unavailable(ca: CertificateAuthority, crl: RevocationList, *, busy: bool) -> HttpResponse:
    """503 with a body a person and a monitoring probe both understand.

    Anonymous: never ca.crl_error, which names the key file and why it failed; operators
    read that in the log, on /health/ (with details) and on the RA console.
    """
    if not ca.is_online:
        reason = _("its key is offline: sign a new one with %(command)s") % {
            "command": "`manage.py sign_root_crl`"
        }
    elif busy:
        reason = _("a new one is being signed right now; try again in a few seconds")
    else:
        reason = _("signing a new one failed (operators: see the RA console or the server log)")
    body = (
        _(
            "The CRL of %(ca)s expired at %(when)s UTC and this server cannot replace it: "
            "%(reason)s. An expired CRL is not served, because relying parties would reject "
            "it anyway."
        )
        % {"ca": ca.name, "when": f"{crl.next_update:%Y-%m-%d %H:%M:%S}", "reason": reason}
        + "\n"
    )
    response = HttpResponse(body, status=503, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = "5" if busy else "300"
    response["Cache-Control"] = "no-store"
    return response


def _last_modified_is_ambiguous(crl: RevocationList) -> bool:
    """Whether an earlier CRL of this CA has a thisUpdate in the same second or later.

    Last-Modified has 1-second resolution: two CRLs signed within one second (publish
    delay 0, or a slow clock's thisUpdate clamped to the previous one) share it, and a
    client revalidating with If-Modified-Since would keep the older one. thisUpdate is
    never moved ahead instead: relying parties reject a CRL from their future.
    """
    return (
        RevocationList.objects.filter(
            ca_id=crl.ca_id,
            number__lt=crl.number,
            this_update__gte=crl.this_update.replace(microsecond=0),
        )
        .order_by()
        .exists()
    )


@require_safe
def ca_crl(request: HttpRequest, slug: str) -> HttpResponse:
    ca = _ca(slug)
    crl, busy = _fresh_crl(ca)
    if crl is None:
        raise Http404(_("No CRL has been published for this CA yet."))
    now = timezone.now()
    if crl.next_update <= now:
        return _crl_unavailable(ca, crl, busy=busy)
    # Only a request revalidating by date alone pays for the query (If-None-Match wins).
    by_date = "If-Modified-Since" in request.headers and "If-None-Match" not in request.headers
    # A cache may keep the CRL for at most an hour and never past nextUpdate.
    remaining = int((crl.next_update - now).total_seconds())
    return _repository_answer(
        request,
        body=lambda: binary.read(RevocationList, crl.pk, "der"),
        content_type="application/pkix-crl",
        filename=f"{slug}.crl",
        etag=quote_etag(f"{crl.ca_id}-{crl.number}"),
        last_modified=crl.this_update,
        max_age=min(remaining, 3600),
        expires=crl.next_update,
        if_modified_since=not (by_date and _last_modified_is_ambiguous(crl)),
    )


@require_safe
def ca_certificate_pem(request: HttpRequest, slug: str) -> HttpResponse:
    ca = _ca(slug)
    response = HttpResponse(
        ca.certificate.public_bytes(Encoding.PEM), content_type="application/x-pem-file"
    )
    response["Content-Disposition"] = f'attachment; filename="{slug}.pem"'
    return response


@require_safe
def repository(request: HttpRequest) -> HttpResponse:
    """The human page: what to download, what to compare, how to trust it per platform."""
    # Not the CAs whose certificates were imported: the old CA publishes their CRLs.
    authorities = list(CertificateAuthority.objects.ours().select_related("parent"))
    # Root first, each CA after its issuer: gpgsm's manual CRL steps must load in that order.
    parents = {ca.pk: ca.parent_id for ca in authorities}

    def depth(pk: int) -> int:
        parent = parents.get(pk)
        return 0 if parent is None else 1 + depth(parent)

    authorities.sort(key=lambda ca: (depth(ca.pk), ca.name, ca.pk))
    now = timezone.now()
    # Which issuing CAs sign new certificates, and which only publish CRLs for the ones
    # they signed before a successor took over: relying parties need both.
    active = CertificateTemplate.objects.filter(is_active=True)
    named = set(active.filter(issuing_ca__isnull=False).values_list("issuing_ca", flat=True))
    follow_default = active.filter(issuing_ca__isnull=True).exists()
    for ca in authorities:
        ca.issues_now = ca.pk in named or (ca.is_default and follow_default)
        ca.current_crl = ca.latest_crl()
        ca.crl_overdue = ca.current_crl is not None and ca.current_crl.next_update <= now
        # SHA-1 is what Windows ("Thumbprint"), Outlook and gpgsm's trustlist.txt show.
        ca.fingerprint_sha1 = pkcs7.fingerprint(ca.certificate, "sha1")
        ca.fingerprint_sha1_colons = pkcs7.format_fingerprint(ca.fingerprint_sha1)
    context = {
        "authorities": authorities,
        "roots": [ca for ca in authorities if ca.is_root],
        "intermediates": [ca for ca in authorities if not ca.is_root],
        "base_url": settings.PKIPORTAL_BASE_URL,
    }
    return render(request, "directory/repository.html", context)
