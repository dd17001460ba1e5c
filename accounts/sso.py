"""Directory and single sign-on attributes onto the account, without any SSO package.

The account is the only source of what a certificate says about its holder, so whatever
signs people in (LDAP, OIDC) writes the name, address and unit here; accounts.oidc uses
these for mozilla-django-oidc, and django-auth-ldap does the same through its settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractUser, Group

from enrollment.change_audit import changes_from


def _text(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name) if name else None
    return value.strip() if isinstance(value, str) else ""


def account_fields_from_claims(claims: Mapping[str, Any]) -> dict[str, str]:
    """OpenID Connect standard claims (and the configured unit claim) as account fields."""
    return {
        "first_name": _text(claims, "given_name")[:150],
        "last_name": _text(claims, "family_name")[:150],
        "display_name": _text(claims, "name")[:200],
        "email": _text(claims, "email").lower()[:254],
        "organizational_unit": _text(
            claims, getattr(settings, "OIDC_CLAIM_ORGANIZATIONAL_UNIT", "department")
        )[:200],
    }


def mirror_groups(user: AbstractUser, names: Iterable[str], session: Any = None) -> None:
    """Make the user's mirrored groups (settings.SSO_MIRRORED_GROUPS) exactly ``names``.

    Only mirrored groups are touched, so a role given by the directory is also taken away
    by it, while groups an administrator manages by hand stay as they are. Role changes
    are audited (enrollment.change_audit) as the system's, from "sso".
    """
    mirrored = set(settings.SSO_MIRRORED_GROUPS)
    wanted = {name for name in names if name in mirrored}
    current = set(user.groups.filter(name__in=mirrored).values_list("name", flat=True))
    with changes_from("sso", session=session):
        for name in wanted - current:
            user.groups.add(Group.objects.get_or_create(name=name)[0])
        if current - wanted:
            user.groups.remove(*Group.objects.filter(name__in=current - wanted))


def update_account_from_claims(
    user: AbstractUser, claims: Mapping[str, Any], session: Any = None
) -> AbstractUser:
    """Write the claims onto the account and mirror the role groups from the groups claim;
    ``session`` is the browser's the sign-in is made in, kept if a role is gained."""
    for field, value in account_fields_from_claims(claims).items():
        setattr(user, field, value)
    # A changed address (or privilege) is audited as the provider's, like its role groups.
    with changes_from("sso", session=session):
        user.save()
    groups = claims.get(getattr(settings, "OIDC_CLAIM_GROUPS", "groups"))
    if isinstance(groups, list):
        mirror_groups(user, (g for g in groups if isinstance(g, str)), session)
    return user
