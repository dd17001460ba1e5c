"""The OCSP responder's HTTP side (RFC 6960 Appendix A, RFC 5019 5 and 6): /pki/ocsp/.

POST a DER request (application/ocsp-request) to /pki/ocsp/, or GET /pki/ocsp/<base64 of
the DER, URL-encoded>. No login and no CSRF token: mail clients send no cookie, the
answer is public and nothing changes. Every OCSP-level answer is HTTP 200 with an
application/ocsp-response body except tryLater (503) and internalError (500); what is
not an OCSP request at all gets a plain 4xx naming the problem.
"""

from __future__ import annotations

import base64
import binascii
import logging
from datetime import timedelta
from urllib.parse import unquote

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.cache import get_conditional_response
from django.utils.http import http_date, quote_etag
from django.views.decorators.csrf import csrf_exempt

from enrollment import ocsp

logger = logging.getLogger(__name__)

# One CertID with a 128-octet nonce is ~250 bytes; a signed request with its signer's
# chain a few KB. Anything larger is not a request this responder answers.
MAX_REQUEST_BYTES = 4096
# The base64 of that, which is what a GET path carries (before URL-encoding).
MAX_GET_CHARACTERS = 4 * -(-MAX_REQUEST_BYTES // 3)
CONTENT_TYPE = "application/ocsp-response"
REQUEST_CONTENT_TYPE = "application/ocsp-request"
_HOW = (
    "This is the OCSP responder (RFC 6960): POST a DER OCSP request with Content-Type "
    f"{REQUEST_CONTENT_TYPE}, or GET /pki/ocsp/<base64 of the DER request, URL-encoded>.\n"
)
_HTTP_STATUS = {ocsp.Outcome.TRY_LATER: 503, ocsp.Outcome.INTERNAL_ERROR: 500}


def _refuse(status: int, reason: str, **headers: str) -> HttpResponse:
    response = HttpResponse(f"{reason}\n{_HOW}", status=status, content_type="text/plain")
    response["Cache-Control"] = "no-store"
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


@csrf_exempt
def responder(request: HttpRequest, encoded: str = "") -> HttpResponse:
    """POST to /pki/ocsp/ (or /pki/ocsp), GET or HEAD /pki/ocsp/<request>."""
    if encoded:
        if request.method not in ("GET", "HEAD"):
            return _refuse(405, f"{request.method} is not answered here.", Allow="GET, HEAD")
        return _get(request, encoded)
    if request.method != "POST":
        return _refuse(405, f"{request.method} is not answered here.", Allow="POST")
    return _post(request)


def _post(request: HttpRequest) -> HttpResponse:
    content_type = (request.content_type or "").strip().lower()
    if content_type != REQUEST_CONTENT_TYPE:
        shown = content_type[:100] or "none"
        return _refuse(415, f"Content-Type {shown!r}: send {REQUEST_CONTENT_TYPE}.")
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        return _refuse(400, "The Content-Length header is not a number.")
    if declared > MAX_REQUEST_BYTES:
        return _refuse(413, f"An OCSP request here is at most {MAX_REQUEST_BYTES} bytes.")
    # Read at most one byte past the limit, whatever was declared (chunked bodies too).
    body = request.read(MAX_REQUEST_BYTES + 1)
    if len(body) > MAX_REQUEST_BYTES:
        return _refuse(413, f"An OCSP request here is at most {MAX_REQUEST_BYTES} bytes.")
    answer = _answer(body)
    response = _ocsp_response(answer)
    response["Cache-Control"] = "no-store"  # RFC 5019 5: only GET answers are cached
    return response


def _get(request: HttpRequest, encoded: str) -> HttpResponse:
    # Clients that append "/<request>" to a URL ending in "/" send two slashes; base64 of
    # a DER SEQUENCE starts with "M", never "/", so leading slashes are never data.
    encoded = encoded.lstrip("/")
    if len(encoded) > 3 * MAX_GET_CHARACTERS:  # room for %XX encoding once more
        return _refuse(414, f"An OCSP request here is at most {MAX_REQUEST_BYTES} bytes.")
    der = _decode(encoded)
    if der is None:
        answer = ocsp.unsuccessful(ocsp.Outcome.MALFORMED_REQUEST)
    elif len(der) > MAX_REQUEST_BYTES:
        return _refuse(414, f"An OCSP request here is at most {MAX_REQUEST_BYTES} bytes.")
    else:
        answer = _answer(der)
    response = None
    max_age = _max_age(answer)
    if max_age is not None:
        # ETags only: two answers signed within one second share a Last-Modified, and a
        # revocation must not be taken for "not modified" (see the CRL's same problem).
        response = get_conditional_response(request, etag=quote_etag(answer.etag))
        if response is not None and response.status_code != 304:
            return response  # 412 to If-Match: nothing to cache
    if response is None:
        response = _ocsp_response(answer)
    if max_age is None:
        response["Cache-Control"] = "no-store"
        return response
    # RFC 5019 6.2's headers, bounded by the operator's max-age and the time a newer
    # response is due; Expires agrees with max-age for HTTP/1.0 caches.
    assert answer.this_update is not None
    response["ETag"] = quote_etag(answer.etag)
    response["Last-Modified"] = http_date(answer.this_update.timestamp())
    response["Expires"] = http_date((timezone.now() + timedelta(seconds=max_age)).timestamp())
    response["Cache-Control"] = f"public, max-age={max_age}, no-transform, must-revalidate"
    return response


def _decode(encoded: str) -> bytes | None:
    """The DER inside a GET path, or None. Tolerant of what clients and proxies do to
    it: URL-encoded once more, '+' turned into ' ', the padding dropped, base64url."""
    if "%" in encoded:
        encoded = unquote(encoded)
    text = encoded.strip().replace(" ", "+").replace("-", "+").replace("_", "/")
    text = text.rstrip("=")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _answer(der: bytes) -> ocsp.OcspAnswer:
    try:
        return ocsp.answer(der)
    except Exception:
        # A bug, not the client's doing: an OCSP answer it can read, and the traceback here.
        logger.exception("OCSP: answering a request failed")
        return ocsp.unsuccessful(ocsp.Outcome.INTERNAL_ERROR)


def _max_age(answer: ocsp.OcspAnswer) -> int | None:
    """Seconds a shared cache may keep a GET answer, or None: not to be kept at all.

    Only signed answers without a nonce (a nonce makes an answer one client's), and never
    past the time a newer response is due.
    """
    if answer.fresh_until is None or answer.nonce:
        return None
    due = int((answer.fresh_until - timezone.now()).total_seconds())
    limit: int = settings.PKIPORTAL_OCSP_MAX_AGE_SECONDS
    return max(0, min(limit, due))


def _ocsp_response(answer: ocsp.OcspAnswer) -> HttpResponse:
    response = HttpResponse(
        answer.der, content_type=CONTENT_TYPE, status=_HTTP_STATUS.get(answer.outcome, 200)
    )
    if answer.outcome is ocsp.Outcome.TRY_LATER:
        response["Retry-After"] = "60"
    return response
