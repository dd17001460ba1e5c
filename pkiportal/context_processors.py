from typing import Any

from django.conf import settings
from django.http import HttpRequest

from accounts import mfa, passkeys
from enrollment.permissions import is_key_recovery_agent, is_ra_officer


def portal(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    return {
        "organization_name": settings.PKIPORTAL_ORGANIZATION_NAME,
        # A callable: templates call it only where they ask, so other pages pay no query.
        "is_ra_officer": lambda: is_ra_officer(user),
        "is_key_recovery_agent": lambda: is_key_recovery_agent(user),
        "oidc_enabled": "mozilla_django_oidc" in settings.INSTALLED_APPS,
        # Until the second factor is confirmed (or, where the person's keys must be of an
        # approved model, or only a key will do, such a key confirmed or added) every other
        # page sends back to it: the navigation offers only signing out
        # (accounts.middleware.SecondFactorMiddleware).
        "second_step_pending": lambda: (
            user is not None
            and (mfa.session_needs_second_step(request) or bool(mfa.session_restriction(request)))
        ),
        # Whether the footer's language form shows a choice made (the account's, or this
        # browser's) rather than the browser's language (pkiportal.i18n).
        "language_chosen": lambda: bool(
            getattr(user, "language", "") or request.COOKIES.get(settings.LANGUAGE_COOKIE_NAME)
        ),
        # Where security keys work, if not at this page's origin (accounts.passkeys).
        "passkey_elsewhere": lambda: passkeys.origin_elsewhere(request),
    }
