"""mozilla-django-oidc backend that fills the account from the identity provider's claims.

Use it as AUTHENTICATION_BACKENDS=accounts.oidc.PortalOIDCBackend (README.md, "Company
directory and single sign-on"). Importing this module needs mozilla-django-oidc installed.
"""

from __future__ import annotations

import logging
from typing import Any

from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView

from django.conf import settings
from django.contrib import auth
from django.core.exceptions import SuspiciousOperation
from django.http import HttpResponse
from django.middleware.csrf import rotate_token

from accounts import mfa
from accounts.mfa import SSO_AMR
from accounts.sso import account_fields_from_claims, update_account_from_claims
from enrollment import recent_sign_in

logger = logging.getLogger(__name__)

USERNAME_MAX_LENGTH = 150  # AbstractUser.username


class PortalOIDCBackend(OIDCAuthenticationBackend):  # type: ignore[misc]  # untyped package
    """Accounts named as the provider names them; their attributes refreshed at each sign-in.

    A sign-in is matched to an account by the user name claim (settings.OIDC_CLAIM_USERNAME),
    exactly, never by e-mail address: mozilla-django-oidc's default lookup by address let
    anyone whose provider account carried an existing account's address sign in as it.

    Local and single sign-on accounts share one user name namespace, as with LDAP: the
    provider's user ``dora`` signs in as the account ``dora`` even if that account was
    created in the portal (admin, createsuperuser, demo data) and keeps its password and
    flags, superuser included. That is how existing accounts move to single sign-on; an
    operator who keeps a local account whose name the provider could also hand out (a
    break-glass ``admin``) gives that provider's user the account. Choose the username
    claim and the local accounts' names with this in mind.

    The certificate's address comes from the account, so only an address the provider
    says it verified (``email_verified`` exactly true) is taken; OIDC_TRUST_PROVIDER_EMAIL
    accepts a provider that never sends the claim. An address another account already
    holds is refused too: the directory hands certificates out by address, so a second
    account under it would receive mail encrypted to the first.
    """

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        if self._username(claims) is None:
            logger.warning("OIDC sign-in refused: no usable %s claim", _username_claim())
            return False
        # A certificate needs an address; without one the person could not enrol anyway.
        if not isinstance(claims.get("email"), str) or not claims["email"].strip():
            logger.warning("OIDC sign-in refused: no email claim")
            return False
        verified = claims.get("email_verified")
        if verified is True:
            return True
        if "email_verified" not in claims and getattr(settings, "OIDC_TRUST_PROVIDER_EMAIL", False):
            return True
        logger.warning("OIDC sign-in refused: email_verified is %r", verified)
        return False

    def get_or_create_user(self, access_token: Any, id_token: Any, payload: Any) -> Any:
        """Keep the ID token's amr claim (RFC 8176) in the session until login(): it says
        whether the provider checked a second factor (accounts.mfa.note_sign_in)."""
        session = getattr(getattr(self, "request", None), "session", None)
        if session is not None:
            amr = payload.get("amr") if isinstance(payload, dict) else None
            session[SSO_AMR] = (
                [m for m in amr if isinstance(m, str)][:20] if isinstance(amr, list) else None
            )
        return super().get_or_create_user(access_token, id_token, payload)

    def filter_users_by_claims(self, claims: dict[str, Any]) -> Any:
        username = self._username(claims)
        if username is None:
            return self.UserModel.objects.none()
        return self.UserModel.objects.filter(username=username)

    def describe_user_by_claims(self, claims: dict[str, Any]) -> str:
        return f"username {self._username(claims)!r}"

    def get_username(self, claims: dict[str, Any]) -> str:
        username = self._username(claims)
        if username is None:  # verify_claims refuses these first
            raise SuspiciousOperation(f"No usable {_username_claim()} claim")
        return username

    def create_user(self, claims: dict[str, Any]) -> Any:
        username = self.get_username(claims)
        self._refuse_an_address_held_elsewhere(username, claims)
        user = self.UserModel.objects.create_user(username)
        return update_account_from_claims(user, claims, self._session())

    def update_user(self, user: Any, claims: dict[str, Any]) -> Any:
        self._refuse_an_address_held_elsewhere(user.get_username(), claims)
        return update_account_from_claims(user, claims, self._session())

    def _session(self) -> Any:
        """The browser's session this sign-in is made in (none outside a request)."""
        return getattr(getattr(self, "request", None), "session", None)

    def _username(self, claims: dict[str, Any]) -> str | None:
        username = claims.get(_username_claim())
        if isinstance(username, str) and 0 < len(username) <= USERNAME_MAX_LENGTH:
            return username
        return None

    def _refuse_an_address_held_elsewhere(self, username: str, claims: dict[str, Any]) -> None:
        email = account_fields_from_claims(claims)["email"]
        others = self.UserModel.objects.filter(email__iexact=email).exclude(username=username)
        if others.exists():
            # authenticate() turns this into a refused sign-in and logs it.
            raise SuspiciousOperation(
                f"The address of {username!r} already belongs to another account"
            )


def _username_claim() -> str:
    return getattr(settings, "OIDC_CLAIM_USERNAME", "preferred_username")


class PortalOIDCCallbackView(OIDCAuthenticationCallbackView):  # type: ignore[misc]  # untyped
    """A sign-in through the provider is a sign-in, also from a browser whose password
    sign-in of the same person still waits for its code.

    mozilla-django-oidc skips login() when the session already belongs to the person (it
    takes that for a session refresh), so mfa.note_sign_in never saw the provider's amr
    and such a session stayed confined whatever the provider had checked: the person had
    to sign out first. A session that has confirmed its second factor keeps the library's
    refresh behaviour (no new sign-in: its second factor stands), but the provider did sign
    the person in again: that is a recent sign-in (enrollment.recent_sign_in), or a person
    without a password could never mint a token once their session was a quarter of an
    hour old. Noted only on a new session key, as login() would give it: the old key may
    be a stolen cookie, which must not share in the fresh sign-in."""

    def login_success(self) -> HttpResponse:
        if mfa.session_needs_second_step(self.request):
            auth.login(self.request, self.user)
        response: HttpResponse = super().login_success()
        self.request.session.cycle_key()
        rotate_token(self.request)
        recent_sign_in.note_sign_in(self.request, self.user)
        return response
