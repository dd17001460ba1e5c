"""API edge: domain errors become 4xx JSON naming the field and what was wrong."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.translation import gettext_lazy as _
from django.views import defaults
from rest_framework import exceptions, parsers, renderers, status
from rest_framework.response import Response

from enrollment.exceptions import (
    ConfigurationError,
    EnrollmentError,
    InvalidState,
    KeyStoreError,
    NotPermitted,
    RateLimited,
    public_message,
)
from enrollment.x509.errors import X509Error

logger = logging.getLogger(__name__)

# Most specific first; any other EnrollmentError is the client's bad input (400).
_STATUS_FOR_ERROR: tuple[tuple[Any, int], ...] = (
    (NotPermitted, status.HTTP_403_FORBIDDEN),
    (InvalidState, status.HTTP_409_CONFLICT),
    (RateLimited, status.HTTP_429_TOO_MANY_REQUESTS),
    # The operator's to fix (no KRA, no CA key), not the client's: retry later.
    ((ConfigurationError, KeyStoreError), status.HTTP_503_SERVICE_UNAVAILABLE),
)
TOO_LARGE = _("The request body is larger than this server accepts.")
# RateLimited counts requests over a rolling hour: an hour is always long enough.
DEFAULT_RETRY_AFTER_SECONDS = 3600


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Translate domain errors once, here; everything else is DRF's own 4xx handling."""
    if isinstance(exc, EnrollmentError):
        code = next(
            (code for kinds, code in _STATUS_FOR_ERROR if isinstance(exc, kinds)),
            status.HTTP_400_BAD_REQUEST,
        )
        body = {exc.field: [exc.message]} if exc.field else {"detail": exc.message}
        if isinstance(exc, KeyStoreError):
            # Its message names key files and backends: for the operator's log, not clients.
            logger.error("CA key store: %s", exc.message)
            body = {"detail": public_message(exc)}
        response = Response(body, status=code)
        if isinstance(exc, RateLimited):
            retry_after = getattr(exc, "retry_after", None) or DEFAULT_RETRY_AFTER_SECONDS
            response["Retry-After"] = str(int(retry_after))
        return response
    if isinstance(exc, RequestDataTooBig):
        # DRF reads JSON through request.body, which enforces DATA_UPLOAD_MAX_MEMORY_SIZE.
        return Response({"detail": TOO_LARGE}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, X509Error):
        # Its msgid and values, worded in the reader's language.
        shown = EnrollmentError.from_x509(exc).message
        return Response({"detail": shown}, status=status.HTTP_400_BAD_REQUEST)
    # Imported here: rest_framework.views reads DEFAULT_RENDERER_CLASSES as it loads,
    # which names this module's renderer, so importing it at the top made this module
    # unimportable before DRF's views (a script's first import, say).
    from rest_framework.views import exception_handler as drf_exception_handler

    return drf_exception_handler(exc, context)


class JSONParser(parsers.JSONParser):
    """DRF's, with JSON nested deeper than Python's parser goes a 400 like any malformed
    body: DRF catches only ValueError, so ``[[[[``... within the size cap was a 500."""

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError(_("JSON parse error - nested too deeply.")) from None


class BrowsableAPIRenderer(renderers.BrowsableAPIRenderer):
    """DRF's browsable API without pygments' CSS in an inline <style> element.

    That CSS styles only DRF's retired documentation pages, and the Content-Security-Policy
    refuses inline <style>; the API's own answers are highlighted by prettify's CSS file.
    """

    def get_context(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context(*args, **kwargs)
        context["code_style"] = None
        return context


# --- Django's error views (pkiportal/urls.py), for errors no DRF view answers ---------
# A URL the resolver cannot match (/api/v1/enrollments/1.5/), an exception outside DRF or
# a bad Host header: under /api/ these answer JSON in DRF's shape, as README promises.


def is_api(request: HttpRequest) -> bool:
    return request.path_info.startswith("/api/")


def _api_error(detail: Any, code: int) -> JsonResponse:
    return JsonResponse({"detail": str(detail)}, status=code)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api(request):
        return _api_error(_("Bad request."), status.HTTP_400_BAD_REQUEST)
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api(request):
        detail = exceptions.PermissionDenied.default_detail
        return _api_error(detail, status.HTTP_403_FORBIDDEN)
    return defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api(request):
        return _api_error(exceptions.NotFound.default_detail, status.HTTP_404_NOT_FOUND)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """Never the exception's text: it may name hosts, paths or credentials."""
    if is_api(request):
        detail = exceptions.APIException.default_detail
        return _api_error(detail, status.HTTP_500_INTERNAL_SERVER_ERROR)
    return defaults.server_error(request)
