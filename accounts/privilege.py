"""Who may administer whose account, and grant what, in the admin.

Django's admin lets anyone holding ``accounts.change_user`` edit every field of every
account: tick "Superuser status" on themselves, join the RA officers or the recovery
agents, or set a superuser's password and sign in as them; ``auth.change_group`` lets them
add any permission to a group they are in. A help desk that resets employees' passwords
would hold the whole PKI. Here only a superuser grants privilege or touches a privileged
account; everyone else administers plain accounts and plain groups.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group
from django.db.models import Q, QuerySet

from enrollment.change_audit import role_groups


def privileged_groups() -> QuerySet[Group]:
    """Groups whose members hold something: a role (by name) or any permission."""
    return Group.objects.filter(Q(name__in=role_groups()) | Q(permissions__isnull=False)).distinct()


def plain_groups() -> QuerySet[Group]:
    """Groups that only say who may use which template: anyone who may change accounts may
    grant them."""
    return Group.objects.exclude(pk__in=privileged_groups().values("pk"))


def is_privileged_group(group: Group) -> bool:
    return group.pk is not None and privileged_groups().filter(pk=group.pk).exists()


def is_privileged(user: Any) -> bool:
    """A superuser, staff, a role, or a permission of their own or through a group: taking
    the account over (its password, address or second factor) would gain any of them."""
    if user.is_superuser or user.is_staff:
        return True
    if user.pk is None:
        return False
    return bool(
        user.user_permissions.exists()
        or user.groups.filter(pk__in=privileged_groups().values("pk")).exists()
    )


def may_administer(actor: Any, target: Any) -> bool:
    """A superuser any account; anyone else their own (whose privileges they see read-only)
    and accounts that hold no privilege."""
    if not (actor.is_authenticated and actor.is_active):
        return False
    if actor.is_superuser or actor.pk == target.pk:
        return True
    return not is_privileged(target)
