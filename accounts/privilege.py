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
from django.db import DEFAULT_DB_ALIAS
from django.db.models import Q, QuerySet

from accounts.models import User
from enrollment.change_audit import role_groups
from enrollment.models import AuditEvent
from enrollment.permissions import power_shaping_groups


def privileged_groups() -> QuerySet[Group]:
    """Groups whose members hold something: a role (by name), any permission, or the
    approval of some template's requests (a template's approvers group: who is in it decides
    which RA officers approve that template, permissions.Decider), or a group an officer
    scope limits (taking an officer out of it widens them to everyone). Whoever may put
    people in such a group could otherwise choose the approvers, themselves included."""
    return Group.objects.filter(
        Q(name__in=role_groups()) | Q(permissions__isnull=False) | power_shaping_groups()
    ).distinct()


def plain_groups() -> QuerySet[Group]:
    """Groups that only say who may use which template: anyone who may change accounts may
    grant them."""
    return Group.objects.exclude(pk__in=privileged_groups().values("pk"))


def is_privileged_group(group: Group) -> bool:
    return group.pk is not None and privileged_groups().filter(pk=group.pk).exists()


def is_privileged(user: Any) -> bool:
    """A superuser, staff, a role, a permission of their own or through a group, or a
    template's approvers group: taking the account over (its password, address or second
    factor) would gain any of them (an approvers group's member who is no RA officer yet
    approves once made one)."""
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


def members_never_granted(name: str, *, using: str = DEFAULT_DB_ALIAS) -> list[Any]:
    """Members of the group ``name`` (by user name) whose newest role.grant or role.revoke
    for that name is not a grant: they joined while the group was no role, and it became one
    when a role group setting was pointed at it. Nothing recorded them gaining the role or
    started them afresh, and whoever managed the plain group (a help desk) chose them and
    may know their passwords (enrollment.checks, pkiportal.W013)."""
    members = list(User.objects.using(using).filter(groups__name=name).order_by("username"))
    if not members:
        return []
    events = (
        AuditEvent.objects.using(using)
        .filter(
            action__in=("role.grant", "role.revoke"),
            object_type=User._meta.label,
            object_id__in=[str(member.pk) for member in members],
            detail__group=name,
        )
        .order_by("pk")
        .values_list("object_id", "action")
    )
    latest = dict(events)  # oldest first: each account's newest event wins
    return [member for member in members if latest.get(str(member.pk)) != "role.grant"]


def start_afresh(
    user: Any,
    *,
    actor: Any,
    source_address: str | None,
    source: str,
    keep: Any = None,
    becoming_superuser: bool = False,
) -> None:
    """An account that gains privilege (a role, a permission, staff or superuser status)
    starts its credentials afresh: its sessions end and its API tokens go, so none made
    while it held nothing carries the new power. If its password was last set by an
    administrator who is not a superuser, that administrator knows it and may have set up
    the second factor as well: the password is made unusable and the second factor
    removed, and whoever grants the role gives the person a new password (or they sign
    in through the directory or single sign-on). A sign-in that brings the privilege (a
    role mirrored from the provider) keeps its own session, ``keep``. A superuser gaining
    a role gains nothing (``becoming_superuser``: the save that made them one). Audited as
    account.fresh_start when anything ended, and its owner is mailed what ended."""
    from knox.models import AuthToken

    from accounts.mfa import remove_devices
    from accounts.sessions import sessions_end
    from enrollment.audit import audit_record
    from enrollment.models import AuditEvent
    from enrollment.notifications import account_started_afresh
    from enrollment.services import token_facts

    if user.pk is None or (user.is_superuser and not becoming_superuser):
        return  # a superuser holds everything already: a role adds nothing to take over
    # sessions_end updates the account's row first: an admin write deciding under that row's
    # lock (PortalUserAdmin.get_object) has committed when it returns, so the password such
    # a write set is seen below, however the two overlapped.
    ended = sessions_end(user, keep=keep)
    user.refresh_from_db(fields=["password"])  # what such a write stored, not what was read
    # Named before they go, for the owner's mail (as api_token_revoke names one).
    held = list(AuthToken.objects.filter(user=user).select_related("api_token").order_by("created"))
    tokens = AuthToken.objects.filter(user=user).delete()[1].get(AuthToken._meta.label, 0)
    last_set = (
        AuditEvent.objects.filter(
            action="account.password_set",
            object_type=user._meta.label,
            object_id=str(user.pk),
        )
        .select_related("actor")
        .order_by("-pk")
        .first()
    )
    known_to_another = last_set is not None and (
        last_set.actor_id != user.pk and not (last_set.actor and last_set.actor.is_superuser)
    )
    if known_to_another and user.has_usable_password():
        user.set_unusable_password()
        type(user)._base_manager.filter(pk=user.pk).update(password=user.password)
    removed = remove_devices(user) if known_to_another else 0
    if not (ended or tokens or known_to_another):
        return  # nothing to start afresh: a new account, an officer-to-be never signed in
    audit_record(
        action="account.fresh_start",
        actor=actor,
        target=user,
        source_address=source_address,
        detail={
            "sessions_ended": ended,
            "tokens_deleted": tokens,
            "password_unusable": known_to_another,
            "second_factor_removed": bool(removed),
            "source": source,
        },
    )
    # After the commit (notifications._send): a grant rolled back ended nothing.
    account_started_afresh(
        user,
        granted_by=actor if getattr(actor, "pk", None) not in (None, user.pk) else None,
        sessions_ended=ended,
        tokens=[token_facts(token) for token in held],
        password_unusable=known_to_another,
        second_factor_removed=bool(removed),
    )
