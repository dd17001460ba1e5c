"""API edge: domain errors become 4xx JSON naming the field and what was wrong."""

from __future__ import annotations

from typing import Any

from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from enrollment.exceptions import EnrollmentError, NotPermitted
from enrollment.x509.errors import X509Error


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, EnrollmentError):
        code = status.HTTP_403_FORBIDDEN if isinstance(exc, NotPermitted) else 400
        body = {exc.field: [exc.message]} if exc.field else {"detail": exc.message}
        return Response(body, status=code)
    if isinstance(exc, X509Error):
        return Response({"detail": exc.message}, status=status.HTTP_400_BAD_REQUEST)
    return drf_exception_handler(exc, context)
