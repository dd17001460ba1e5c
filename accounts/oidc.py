"""mozilla-django-oidc backend that fills the account from the identity provider's claims.

Use it as AUTHENTICATION_BACKENDS=accounts.oidc.PortalOIDCBackend (README.md, "Company
directory and single sign-on"). Importing this module needs mozilla-django-oidc installed.
"""

from __future__ import annotations

from typing import Any

from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from django.conf import settings

from accounts.sso import update_account_from_claims


class PortalOIDCBackend(OIDCAuthenticationBackend):
    """Accounts named as the provider names them; their attributes refreshed at each sign-in."""

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        # A certificate needs an address; without one the person could not enrol anyway.
        return bool(claims.get("email")) and claims.get("email_verified", True) is not False

    def get_username(self, claims: dict[str, Any]) -> str:
        username = claims.get(getattr(settings, "OIDC_CLAIM_USERNAME", "preferred_username"))
        return username if isinstance(username, str) and username else super().get_username(claims)

    def create_user(self, claims: dict[str, Any]) -> Any:
        user = self.UserModel.objects.create_user(self.get_username(claims))
        return update_account_from_claims(user, claims)

    def update_user(self, user: Any, claims: dict[str, Any]) -> Any:
        return update_account_from_claims(user, claims)
