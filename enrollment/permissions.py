"""Roles as predicates (employee, RA officer, key recovery agent) and DRF permissions.

Roles are Django groups (names in settings), so a directory or SSO group sync grants them.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Q
from django.urls import reverse
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from enrollment import hotsql
from enrollment.models import ApiToken, CertificateTemplate

User = AbstractBaseUser | AnonymousUser


def _in_group(user: Any, name: str) -> bool:
    member = bool(
        user is not None
        and user.is_authenticated
        and user.is_active
        and (user.is_superuser or user.groups.filter(name=name).exists())
    )
    if member:
        refuse_token_without_second_factor(user)
    return member


def refuse_token_without_second_factor(user: Any) -> None:
    """An API token minted without a second factor (before the roll-out of the second
    factor, or before its owner got the role) carries no officer, agent or administrator
    power while the policy asks its owner for a second factor: 403, mint a new one."""
    token = getattr(user, "_pkiportal_api_token", None)
    if token is None:
        return
    verified = getattr(user, "_pkiportal_token_second_factor", None)
    if verified is None:
        verified = bool(
            ApiToken.objects.filter(auth_token=token)
            .values_list("second_factor", flat=True)
            .first()
        )
        user._pkiportal_token_second_factor = verified
    if verified:
        return
    from accounts import mfa
    from accounts.api import SecondFactorRequired

    if mfa.state_for(user).required:
        raise SecondFactorRequired(
            {
                "detail": "This API token was made without a second factor, which your role "
                "needs: it cannot act as an RA officer, key recovery agent or administrator. "
                "Mint a new token with your second factor (POST /api/v1/auth/token/ with the "
                "X-OTP-Code header, or on /account/tokens/) and revoke this one.",
                "missing": "second_factor_token",
                "url": reverse("enrollment:token-list"),
            }
        )


def is_ra_officer(user: Any) -> bool:
    return _in_group(user, settings.PKIPORTAL_RA_OFFICER_GROUP)


def ra_officers(prefix: str = "") -> Q:
    """is_ra_officer() as a filter on accounts, ``prefix`` the path to them (for counts
    in SQL; an API token's missing second factor is a matter of one request, not here)."""
    return Q(**{f"{prefix}is_active": True}) & (
        Q(**{f"{prefix}is_superuser": True})
        | Q(**{f"{prefix}groups__name": settings.PKIPORTAL_RA_OFFICER_GROUP})
    )


def is_key_recovery_agent(user: Any) -> bool:
    return _in_group(user, settings.PKIPORTAL_KRA_GROUP)


def may_use_template(
    user: Any, template: CertificateTemplate, *, open_to_user: bool | None = None
) -> bool:
    """Active templates, open to everyone or to the groups the admin chose.

    `open_to_user` is the group check when the caller has already read it
    (hotsql.enrolment_counts asks it with the limits, in one statement).
    """
    if not (user is not None and user.is_authenticated and user.is_active and template.is_active):
        return False
    if open_to_user is not None:
        return open_to_user
    prefetched = getattr(template, "_prefetched_objects_cache", {}).get("allowed_groups")
    if prefetched is None:  # one statement, as every enrolment asks this
        return hotsql.template_open_to(template.pk, user.pk)
    groups = list(prefetched)
    return not groups or user.groups.filter(pk__in=[g.pk for g in groups]).exists()


def templates_for(user: Any) -> list[CertificateTemplate]:
    templates = CertificateTemplate.objects.filter(is_active=True).prefetch_related(
        "allowed_groups"
    )
    return [template for template in templates if may_use_template(user, template)]


class IsRaOfficer(BasePermission):
    message = "Only RA officers may do that."

    def has_permission(self, request: Request, view: Any) -> bool:
        return is_ra_officer(request.user)
