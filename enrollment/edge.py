"""The web edge: domain errors become form errors and status codes, in one place."""

from __future__ import annotations

import logging
import re
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db.models import Model
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext as _

from enrollment.exceptions import (
    ConfigurationError,
    EnrollmentError,
    KeyStoreError,
    NotPermitted,
    RateLimited,
    public_message,
)
from enrollment.permissions import is_ra_officer

# The address recorded in audit events: the same one django-axes locks out, so both name
# the real client behind a trusted proxy (PKIPORTAL_TRUSTED_PROXIES).
from pkiportal.clients import client_address as client_address

logger = logging.getLogger(__name__)

# A one-time download's page stays put while the file arrives, so its script
# (static/js/enrol.js) sends a random token and waits for it in a cookie to know the
# download has arrived; only letters and digits are echoed back.
DOWNLOAD_TOKEN = re.compile(r"[A-Za-z0-9]{8,64}")


def report_download(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """Echo the form's download token in a short-lived cookie, for the page's script to
    tell the person the one-time download arrived (and not to offer it again)."""
    token = request.POST.get("download_token", "")
    if DOWNLOAD_TOKEN.fullmatch(token):
        response.set_cookie(
            "pkiportal_download",
            token,
            max_age=120,
            samesite="Strict",
            secure=request.is_secure(),
        )
    return response


def status_for(exc: EnrollmentError) -> int:
    if isinstance(exc, RateLimited):
        return 429
    if isinstance(exc, NotPermitted):
        return 403
    if isinstance(exc, ConfigurationError | KeyStoreError):
        return 503  # the operator's to fix (no KRA, no CA key), as the API answers
    return 400


def show_error(form: Any, exc: EnrollmentError) -> int:
    """Put a service's message on the form (on its field when the form has one)."""
    if isinstance(exc, KeyStoreError):
        logger.error("CA key store: %s", exc.message)
    field = exc.field if exc.field in form.fields else None
    form.add_error(field, public_message(exc))
    return status_for(exc)


def officer_required(request: HttpRequest) -> None:
    if not is_ra_officer(request.user):
        raise PermissionDenied(_("Only RA officers may see this page."))


def officer_required_to(request: HttpRequest, attempted: str, model: type[Model], pk: Any) -> None:
    """officer_required_for() the row ``pk`` of ``model``, read only to record a refusal. A
    row that does not exist is nobody's attempt."""
    if not is_ra_officer(request.user):
        officer_required_for(request, attempted, model._default_manager.filter(pk=pk).first())


def officer_required_for(request: HttpRequest, attempted: str, target: Model | None) -> None:
    """officer_required() for an officer's action (``attempted``, its audit name) on
    ``target``: someone holding another role (a key recovery agent) is refused as the
    service would refuse them, and audited so (access.refused, not_an_officer); the others
    as anyone is."""
    if is_ra_officer(request.user):
        return
    from enrollment import services
    from enrollment.permissions import NOT_AN_OFFICER

    if target is not None:
        services.access_refusal_record(
            actor=request.user,
            attempted=attempted,
            target=target,
            refusal=NOT_AN_OFFICER,
            source_address=client_address(request),
        )
    officer_required(request)
