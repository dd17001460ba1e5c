from typing import Any

from django.conf import settings
from django.http import HttpRequest

from enrollment.permissions import is_key_recovery_agent, is_ra_officer


def portal(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    return {
        "organization_name": settings.PKIPORTAL_ORGANIZATION_NAME,
        # A callable: templates call it only where they ask, so other pages pay no query.
        "is_ra_officer": lambda: is_ra_officer(user),
        "is_key_recovery_agent": lambda: is_key_recovery_agent(user),
        "oidc_enabled": "mozilla_django_oidc" in settings.INSTALLED_APPS,
    }
