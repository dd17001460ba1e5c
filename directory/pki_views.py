"""The public repository (/pki/): CA certificates, chains and CRLs for relying parties.

No login, exact content types (RFC 2585), and caching headers that never let a cache keep
a CRL past its nextUpdate.
"""

from __future__ import annotations

from datetime import datetime

from cryptography.hazmat.primitives.serialization import Encoding

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.utils.http import http_date, quote_etag
from django.views.decorators.http import condition, require_safe

from enrollment.models import CertificateAuthority, RevocationList
from enrollment.x509 import pkcs7

CA_CERT_MAX_AGE = 24 * 3600


def _ca(slug: str) -> CertificateAuthority:
    return get_object_or_404(CertificateAuthority, slug=slug)


def _crl(slug: str) -> RevocationList:
    crl = RevocationList.objects.filter(ca__slug=slug).newest_first().first()
    if crl is None:
        raise Http404("No CRL has been published for this CA yet.")
    return crl


def _binary(
    body: bytes, content_type: str, filename: str, *, max_age: int, last_modified: datetime
) -> HttpResponse:
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'inline; filename="{filename}"'
    response["Cache-Control"] = f"public, max-age={max(max_age, 0)}"
    response["Last-Modified"] = http_date(last_modified.timestamp())
    return response


@require_safe
@condition(
    etag_func=lambda request, slug: quote_etag(_ca(slug).fingerprint_sha256),
    last_modified_func=lambda request, slug: _ca(slug).created_at,
)
def ca_certificate(request: HttpRequest, slug: str) -> HttpResponse:
    ca = _ca(slug)
    return _binary(
        bytes(ca.der),
        "application/pkix-cert",
        f"{slug}.crt",
        max_age=CA_CERT_MAX_AGE,
        last_modified=ca.created_at,
    )


@require_safe
@condition(
    etag_func=lambda request, slug: quote_etag(f"{_ca(slug).fingerprint_sha256}-chain"),
    last_modified_func=lambda request, slug: _ca(slug).created_at,
)
def ca_chain(request: HttpRequest, slug: str) -> HttpResponse:
    ca = _ca(slug)
    body = pkcs7.certificates_to_p7b([member.certificate for member in ca.chain()])
    return _binary(
        body,
        "application/pkcs7-mime",
        f"{slug}-chain.p7b",
        max_age=CA_CERT_MAX_AGE,
        last_modified=ca.created_at,
    )


def _crl_etag(request: HttpRequest, slug: str) -> str:
    crl = _crl(slug)
    return quote_etag(f"{crl.ca_id}-{crl.number}")


@require_safe
@condition(
    etag_func=_crl_etag,
    last_modified_func=lambda request, slug: _crl(slug).this_update,
)
def ca_crl(request: HttpRequest, slug: str) -> HttpResponse:
    crl = _crl(slug)
    # A cache may keep the CRL for at most an hour and never past nextUpdate.
    remaining = int((crl.next_update - timezone.now()).total_seconds())
    response = _binary(
        bytes(crl.der),
        "application/pkix-crl",
        f"{slug}.crl",
        max_age=min(remaining, 3600),
        last_modified=crl.this_update,
    )
    response["Expires"] = http_date(crl.next_update.timestamp())
    return response


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
    authorities = list(CertificateAuthority.objects.select_related("parent"))
    for ca in authorities:
        ca.current_crl = ca.latest_crl()
    return render(request, "directory/repository.html", {"authorities": authorities})
