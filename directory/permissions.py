"""Who may read the directory: signed-in people, or everyone when the operator says so.

PKIPORTAL_DIRECTORY_PUBLIC opens the pages and the lookup API to partner organisations
exchanging encrypted mail. Read at request time, so a settings change needs no restart
of anything but the processes themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from rest_framework.permissions import BasePermission
from rest_framework.request import Request


def may_read_directory(user: Any) -> bool:
    return bool(
        settings.PKIPORTAL_DIRECTORY_PUBLIC
        or (user is not None and user.is_authenticated and user.is_active)
    )


def directory_readable(
    view: Callable[..., HttpResponse],
) -> Callable[..., HttpResponse]:
    """Send anonymous readers to sign in unless the directory is public."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if may_read_directory(request.user):
            return view(request, *args, **kwargs)
        return redirect_to_login(request.get_full_path())

    return wrapper


class DirectoryReadable(BasePermission):
    message = "Sign in to use the directory."

    def has_permission(self, request: Request, view: Any) -> bool:
        return may_read_directory(request.user)
