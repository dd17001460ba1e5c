"""Filters on the portal's log handlers (settings.LOGGING)."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied


class RefusalWithoutTraceback(logging.Filter):
    """A 403 is the portal answering "you may not", not a fault: Django logs each one from
    django.request with the PermissionDenied's whole traceback, which buries real errors
    and fills disks where every scan and stale bookmark is refused. The warning line (path
    and status) stays; only the traceback goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        if (
            record.name == "django.request"
            and exc_info
            and isinstance(exc_info[1], PermissionDenied)
        ):
            record.exc_info = None
            record.exc_text = None
        return True
