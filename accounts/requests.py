"""The signed-in user of a request, typed as our User model.

Django types ``request.user`` as ``User | AnonymousUser``; behind ``login_required`` or
DRF's ``IsAuthenticated`` it is always a ``User``, and services take exactly that.
"""

from __future__ import annotations

from django.http import HttpRequest
from rest_framework.exceptions import NotAuthenticated
from rest_framework.request import Request

from accounts.models import User


class AuthenticatedHttpRequest(HttpRequest):
    """The request a ``login_required`` view receives: for type checking only, never built."""

    user: User


def signed_in_user(request: Request) -> User:
    """The caller of an API view that its permission classes have already let in.

    Checked rather than assumed, so a view whose permissions are ever loosened answers
    401 instead of handing an anonymous user to a service.
    """
    user = request.user
    if not isinstance(user, User) or not user.is_authenticated:
        raise NotAuthenticated()
    return user
