"""A refusal (403) is logged as a line, an error with its traceback."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from pkiportal.log_filters import RefusalWithoutTraceback
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def console():
    """The settings' console handler, writing into a buffer for the test."""
    handlers = [
        handler
        for handler in logging.getLogger().handlers
        if any(isinstance(f, RefusalWithoutTraceback) for f in handler.filters)
    ]
    assert len(handlers) == 1, "settings.LOGGING's console handler carries the filter"
    handler = handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    try:
        yield buffer
    finally:
        handler.setStream(previous)


def test_a_refused_page_is_one_line_without_a_traceback(employee, console):
    response = client_for(employee).get("/ra/requests/")

    assert response.status_code == 403
    logged = console.getvalue()
    assert "Forbidden (Permission denied): /ra/requests/" in logged
    assert "Traceback" not in logged


def test_other_errors_keep_their_traceback():
    try:
        raise RuntimeError("a real fault")
    except RuntimeError:
        record = logging.LogRecord(
            "django.request", logging.ERROR, __file__, 1, "Internal Server Error", None,
            sys.exc_info(),
        )  # fmt: skip

    assert RefusalWithoutTraceback().filter(record)
    assert record.exc_info is not None
    assert "Traceback" in logging.Formatter().format(record)
