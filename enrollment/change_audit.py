"""Audit events for privileged changes made outside the services.

Certificate templates are edited in the admin, and roles are Django groups that the admin,
single sign-on and any code can change: neither goes through services.py, so their events
are written here, in the transaction of the change. So are is_staff, is_superuser,
is_active and the e-mail address, however they change (the admin, ``createsuperuser``, a
sync, a shell).
Deleting a role group or an account that holds a role ends memberships without an m2m
signal; both are caught too.

Role memberships are caught by an ``m2m_changed`` receiver on ``User.groups`` (connected in
EnrollmentConfig.ready), so ``user.groups.add``, ``group.user_set.add``, ``set``, ``remove``
and ``clear`` are all seen; renaming or deleting a role group is seen too. A group that
holds Django permissions (in the admin, what a staff member may change) confers them on its
members, so its memberships are recorded as roles too; and every permission given to or
taken from an account or a group is recorded, on either side of either relation. Who made the
change is said by ``changes_from``, around the admin's views and the SSO group mirroring;
without it the change is the system's ("other"). Writes that send no signal (raw SQL,
``QuerySet.update``, ``bulk_create`` on the through table) are not seen.
A group some template names as its approvers decides which RA officers approve that
template's requests (permissions.Decider), so its memberships are recorded as roles too;
joining one starts nobody afresh (below, _record). A template that comes to name such a
group, or stops naming it, gives or takes that power from every member: recorded as their
role.grant or role.revoke with the template's event (template_record). So is a group an
officer scope limits (OfficerScope.officers): leaving it widens an officer to everyone;
scopes themselves are recorded as scope.create, scope.change and scope.delete.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, Group
from django.db import models
from django.db.models import Exists, OuterRef, Q
from django.db.models.signals import m2m_changed, post_save, pre_delete, pre_save

from accounts.models import User
from enrollment.audit import audit_record, deferred
from enrollment.models import CertificateTemplate, OfficerScope
from enrollment.permissions import power_shaping_groups

Actor = User | AnonymousUser | None


@dataclass(frozen=True)
class ChangeSource:
    source: str = "other"  # "admin", "sso", "ldap_sync" or "other"
    actor: Actor = None  # None: the system
    address: str | None = None
    # The browser session a sign-in is being made in: an account gaining privilege keeps it
    # while its other sessions end (accounts.privilege.start_afresh).
    session: Any = None
    # Why, added to an account.change (the leavers' sync: the reason and the entry's DN).
    why: dict[str, Any] | None = None


_state = threading.local()


@contextmanager
def changes_from(
    source: str,
    actor: Actor = None,
    address: str | None = None,
    session: Any = None,
    why: dict[str, Any] | None = None,
) -> Iterator[ChangeSource]:
    """Role changes made in this block are recorded as made by ``actor`` through ``source``."""
    previous = getattr(_state, "source", None)
    _state.source = ChangeSource(source, actor, address, session, why)
    try:
        yield _state.source
    finally:
        _state.source = previous


def current_source() -> ChangeSource:
    return getattr(_state, "source", None) or ChangeSource()


def role_groups() -> frozenset[str]:
    return frozenset({settings.PKIPORTAL_RA_OFFICER_GROUP, settings.PKIPORTAL_KRA_GROUP})


# --- certificate templates (the admin) -------------------------------------------------

DESCRIPTION_CHARS = 200


def template_state(template: CertificateTemplate) -> dict[str, Any]:
    """What a template says, as plain values: the issuing CA by slug, groups (those who may
    use it, its approvers) by name."""
    state: dict[str, Any] = {}
    for field in CertificateTemplate._meta.concrete_fields:
        if field.primary_key:
            continue
        if field.is_relation:
            related = getattr(template, field.name)
            if related is None:
                state[field.name] = None
            else:
                state[field.name] = related.name if isinstance(related, Group) else related.slug
        else:
            state[field.name] = field.value_from_object(template)
    state["description"] = state["description"][:DESCRIPTION_CHARS]
    state["allowed_groups"] = (
        sorted(template.allowed_groups.values_list("name", flat=True)) if template.pk else []
    )
    return state


def _changes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, list[Any]]:
    """Each value that differs, as ``[old, new]`` (None for the side that does not exist)."""
    old, new = before or {}, after or {}
    return {
        name: [old.get(name), new.get(name)]
        for name in sorted({*old, *new})
        if name not in old or name not in new or old[name] != new[name]
    }


def template_record(
    *,
    action: str,
    template: CertificateTemplate,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    actor: Actor,
    source_address: str | None,
    source: str | None = None,
) -> None:
    """template.create / template.change / template.delete with the fields that changed.

    ``changes`` maps each field to ``[old, new]`` (None for the side that does not exist);
    a change that changes nothing writes nothing. A change of its approvers group is also
    a role.revoke for each member of the old group and a role.grant for each of the new
    (_approvers_changed); ``source`` says through what ("admin"; else changes_from's).
    """
    changes = _changes(before, after)
    if not changes:
        return
    audit_record(
        action=action,
        actor=actor,
        target=template,
        source_address=source_address,
        detail={"slug": template.slug, "changes": changes},
    )
    if "approver_group" in changes:
        by = ChangeSource(source or current_source().source, actor, source_address)
        _approvers_changed(template, *changes["approver_group"], by=by)


def _approvers_changed(
    template: CertificateTemplate, old: str | None, new: str | None, *, by: ChangeSource
) -> None:
    """Naming a group as a template's approvers gives its members the power to decide the
    template's requests, and naming another (or none) takes it from the old group's: a
    role.revoke and role.grant per member, as joining or leaving the group would be, with
    the template's slug. Nobody starts afresh (_record_roles says why)."""
    for action, name in (("role.revoke", old), ("role.grant", new)):
        group = Group.objects.filter(name=name).first() if name is not None else None
        if name is None or group is None:
            continue
        _record_roles(
            action,
            ((user, name, False) for user in group.user_set.order_by("pk")),
            extra={"template": template.slug},
            by=by,
        )


# --- officer scopes (the admin) ------------------------------------------------------


def scope_state(scope: OfficerScope) -> dict[str, Any]:
    """What a scope says, as plain values: its groups by name."""
    return {
        "name": scope.name,
        "officers": scope.officers.name if scope.officers_id else None,
        "organizational_units": scope.units,
        "people_groups": (
            sorted(scope.people_groups.values_list("name", flat=True)) if scope.pk else []
        ),
    }


def scope_record(
    *,
    action: str,
    scope: OfficerScope,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    actor: Actor,
    source_address: str | None,
) -> None:
    """scope.create / scope.change / scope.delete with what changed, as template_record
    does for templates: a scope decides whom its officers may act for. The officers it
    limits are named, so the trail says whose power moved."""
    changes = _changes(before, after)
    if not changes:
        return
    group = scope.officers if scope.officers_id else None
    officers = sorted(group.user_set.values_list("username", flat=True)) if group else []
    audit_record(
        action=action,
        actor=actor,
        target=scope,
        source_address=source_address,
        detail={"scope": scope.name, "changes": changes, "officers": officers},
    )


# --- account privileges and activation (everywhere) ------------------------------------

# What a new account has unless told otherwise: creating one that differs is a change.
# is_active too: switching an account off starts its certificates' revocation
# (enrollment.leavers), and switching it back on stops it.
PRIVILEGE_DEFAULTS = {"is_staff": False, "is_superuser": False, "is_active": True}
PRIVILEGE_FIELDS = tuple(PRIVILEGE_DEFAULTS)


# The address too: certificates are issued for it, and changing it starts the revocation
# of those for the old one (enrollment.outdated). Audited with its old and new value when
# an existing account's stored address changes at all (case included: the record says what
# was written); a new account's address is not a change.
AUDITED_FIELDS = (*PRIVILEGE_FIELDS, "email")


def _privileges(user: models.Model) -> dict[str, Any]:
    return {name: bool(getattr(user, name)) for name in PRIVILEGE_FIELDS} | {
        "email": getattr(user, "email", "")
    }


def _account_saving(
    sender: Any,
    instance: models.Model,
    raw: bool = False,
    update_fields: Iterable[str] | None = None,
    **kwargs: Any,
) -> None:
    """Remember the stored is_staff, is_superuser, is_active and email, unless this save
    cannot change them (a sign-in saves last_login alone)."""
    instance._privilege_audit_before = None  # type: ignore[attr-defined]
    if raw or (update_fields is not None and not set(update_fields) & set(AUDITED_FIELDS)):
        return
    stored = (
        sender.objects.filter(pk=instance.pk).values(*AUDITED_FIELDS).first()
        if instance.pk is not None
        else None
    )
    if stored is None:
        before = {**PRIVILEGE_DEFAULTS, "email": getattr(instance, "email", "")}
    else:
        before = {name: bool(stored[name]) for name in PRIVILEGE_FIELDS} | {
            "email": stored["email"]
        }
    written = set(AUDITED_FIELDS) if update_fields is None else set(update_fields)
    # Only what this save writes: a value set on the instance but not saved is no change.
    instance._privilege_audit_before = {  # type: ignore[attr-defined]
        name: value for name, value in before.items() if name in written
    }


def _account_saved(sender: Any, instance: models.Model, **kwargs: Any) -> None:
    """account.change when is_staff, is_superuser, is_active or email changed, a new
    account's privileges included."""
    before = getattr(instance, "_privilege_audit_before", None)
    if before is None:
        return
    instance._privilege_audit_before = None  # type: ignore[attr-defined]
    after = _privileges(instance)
    changes = {
        name: [before[name], after[name]]
        for name in AUDITED_FIELDS
        if name in before and before[name] != after[name]
    }
    if changes:
        source = current_source()
        audit_record(
            action="account.change",
            actor=source.actor,
            target=instance,
            source_address=source.address,
            detail={**(source.why or {}), "changes": changes, "source": source.source},
        )
        if any(changes.get(name) == [False, True] for name in ("is_staff", "is_superuser")):
            assert isinstance(instance, User)
            _gained_privilege(
                instance, source, superuser=changes.get("is_superuser") == [False, True]
            )


# --- role group memberships (everywhere) ------------------------------------------------


def _record(
    action: str,
    what: str,
    pairs: Iterable[tuple[models.Model, str]],
    *,
    afresh: Iterable[models.Model] | None = None,
    extra: dict[str, Any] | None = None,
    by: ChangeSource | None = None,
) -> None:
    """One event per (account or group, role or permission), told who made the change by
    changes_from (or ``by``); one append for them all. A grant starts afresh the accounts,
    or the groups' members, in ``afresh`` (every holder unless told). ``extra`` is added
    to each event's detail."""
    source = by or current_source()
    holders: dict[tuple[str, int], models.Model] = {}
    with deferred():
        for target, name in pairs:
            audit_record(
                action=action,
                actor=source.actor,
                target=target,
                source_address=source.address,
                detail={what: name, "source": source.source, **(extra or {})},
            )
            holders.setdefault((target._meta.label, target.pk), target)
        if not action.endswith(".grant"):
            return
        # Each account that gained, once: a group's members once, however many of its
        # permissions were granted together.
        gained: dict[int, User] = {}
        for holder in holders.values() if afresh is None else afresh:
            members = [holder] if isinstance(holder, User) else holder.user_set.all()  # type: ignore[attr-defined]
            gained.update((member.pk, member) for member in members)
        for user in gained.values():
            _gained_privilege(user, source)


def _gained_privilege(user: User, source: ChangeSource, *, superuser: bool = False) -> None:
    from accounts.privilege import start_afresh

    start_afresh(
        user,
        actor=source.actor,
        source_address=source.address,
        source=source.source,
        keep=source.session,
        becoming_superuser=superuser,
    )


# (account, group name, whether joining it starts the account afresh)
Membership = tuple[models.Model, str, bool]


def _record_roles(
    action: str,
    memberships: Iterable[Membership],
    *,
    extra: dict[str, Any] | None = None,
    by: ChangeSource | None = None,
) -> None:
    """role.grant or role.revoke for each. Only a role group or one holding permissions
    starts its new members afresh: an approvers group gives nothing to someone who is no
    RA officer, and an officer's sessions and tokens carry the officer's power already
    (the role's grant started them afresh), so ending them would only sign the officer
    out."""
    rows = list(memberships)
    _record(
        action,
        "group",
        [(user, name) for user, name, _afresh in rows],
        afresh=[user for user, _name, afresh in rows if afresh],
        extra=extra,
        by=by,
    )


def _holds_something(group: Group) -> bool:
    """A role group, a group holding permissions or a template's approvers group: its
    memberships are recorded (_memberships says the same in SQL)."""
    return (
        group.name in role_groups()
        or group.permissions.exists()
        or Group.objects.filter(power_shaping_groups(), pk=group.pk).exists()
    )


def _memberships(
    *, user: User | None = None, group: Group | None = None, pks: Iterable[int] | None
) -> list[Membership]:
    """The memberships that exist now of role groups, groups holding permissions and
    templates' approvers groups, for one user or one group."""
    through = get_user_model().groups.through
    holds_permissions = Exists(Group.permissions.through.objects.filter(group=OuterRef("group")))
    rows = through.objects.annotate(holds_permissions=holds_permissions).filter(
        Q(group__name__in=role_groups())
        | Q(holds_permissions=True)
        | Q(group__in=Group.objects.filter(power_shaping_groups()).values("pk"))
    )
    if user is not None:
        rows = rows.filter(user=user)
    if group is not None:
        rows = rows.filter(group=group)
    if pks is not None:
        rows = rows.filter(**{"group__in" if user is not None else "user__in": list(pks)})
    found = rows.select_related("group", *(["user"] if user is None else []))
    found = found.order_by("user_id", "group__name")
    return [
        (
            user if user is not None else row.user,
            row.group.name,
            # holds_permissions: the annotation above, which the stubs do not see.
            row.group.name in role_groups() or row.holds_permissions,  # type: ignore[attr-defined]
        )
        for row in found
    ]


def _groups_changed(
    sender: Any,
    instance: models.Model,
    action: str,
    reverse: bool,
    pk_set: set[int] | None,
    **kwargs: Any,
) -> None:
    """role.grant after an add; role.revoke before a remove or clear (what is removed)."""
    user: User | None = None
    group: Group | None = None
    if reverse:  # group.user_set changed: Django passes the group
        assert isinstance(instance, Group)
        if not _holds_something(instance):
            return
        group = instance
    else:  # user.groups changed: the account
        assert isinstance(instance, User)
        user = instance
    if action == "post_add" and pk_set:
        _record_roles("role.grant", _memberships(user=user, group=group, pks=pk_set))
    elif action == "pre_remove" and pk_set:
        _record_roles("role.revoke", _memberships(user=user, group=group, pks=pk_set))
    elif action == "pre_clear":
        _record_roles("role.revoke", _memberships(user=user, group=group, pks=None))


def _group_renaming(sender: Any, instance: Group, raw: bool = False, **kwargs: Any) -> None:
    instance._role_audit_old_name = None  # type: ignore[attr-defined]
    if raw or instance.pk is None:
        return
    old = Group.objects.filter(pk=instance.pk).values_list("name", flat=True).first()
    if old is not None and old != instance.name and role_groups() & {old, instance.name}:
        instance._role_audit_old_name = old  # type: ignore[attr-defined]


def _group_renamed(sender: Any, instance: Group, **kwargs: Any) -> None:
    """A role group's members lose the role when it is renamed, and gain one by a rename."""
    old = getattr(instance, "_role_audit_old_name", None)
    if old is None:
        return
    instance._role_audit_old_name = None  # type: ignore[attr-defined]
    members = list(instance.user_set.order_by("pk"))
    if old in role_groups():
        _record_roles("role.revoke", ((user, old, True) for user in members))
    if instance.name in role_groups():
        _record_roles("role.grant", ((user, instance.name, True) for user in members))


def _group_deleting(sender: Any, instance: Group, **kwargs: Any) -> None:
    """Deleting a role group, or one holding permissions, removes its members without an
    m2m signal. Deleting a group a template names changes who may use the template (the
    last one opens it to everyone), without a signal either: template.change."""
    _record_roles("role.revoke", _memberships(group=instance, pks=None))
    source = current_source()
    for template in CertificateTemplate.objects.filter(allowed_groups=instance).order_by("pk"):
        before = template_state(template)
        after = {
            **before,
            "allowed_groups": [name for name in before["allowed_groups"] if name != instance.name],
        }
        template_record(
            action="template.change",
            template=template,
            before=before,
            after=after,
            actor=source.actor,
            source_address=source.address,
        )


def _user_deleting(sender: Any, instance: User, **kwargs: Any) -> None:
    """Deleting an account removes its memberships and permissions without an m2m signal
    either."""
    _record_roles("role.revoke", _memberships(user=instance, pks=None))
    through = get_user_model().user_permissions.through
    _record_permissions("permission.revoke", _held(through, "user", {"user": instance}))


# --- permissions of accounts and groups (everywhere) ------------------------------------


def _held(
    through: type[models.Model], holder: str, where: dict[str, Any]
) -> list[tuple[models.Model, str]]:
    """(account or group, "app_label.codename") pairs that exist now."""
    rows = (
        # User.user_permissions' or Group.permissions' through model: no common type.
        through._default_manager.filter(**where)
        .select_related(holder, "permission__content_type")
        .order_by(f"{holder}_id", "permission__content_type__app_label", "permission__codename")
    )
    return [
        (
            getattr(row, holder),
            f"{row.permission.content_type.app_label}.{row.permission.codename}",  # type: ignore[attr-defined]
        )
        for row in rows
    ]


def _record_permissions(action: str, pairs: Iterable[tuple[models.Model, str]]) -> None:
    _record(action, "permission", pairs)


def _permissions_changed(
    sender: type[models.Model],
    instance: models.Model,
    action: str,
    reverse: bool,
    pk_set: set[int] | None,
    **kwargs: Any,
) -> None:
    """permission.grant after an add; permission.revoke before a remove or clear."""
    holder = "user" if sender is get_user_model().user_permissions.through else "group"
    if reverse:  # permission.user_set / permission.group_set
        where: dict[str, Any] = {"permission": instance}
        if pk_set is not None:
            where[f"{holder}__in"] = list(pk_set)
    else:
        where = {holder: instance}
        if pk_set is not None:
            where["permission__in"] = list(pk_set)
    if action == "post_add" and pk_set:
        granted = _held(sender, holder, where)
        if not reverse:  # the caller's own instance: it follows a fresh start's new state
            granted = [(instance, name) for _row_holder, name in granted]
        _record_permissions("permission.grant", granted)
    elif (action == "pre_remove" and pk_set) or action == "pre_clear":
        _record_permissions("permission.revoke", _held(sender, holder, where))


def connect() -> None:
    """Called once from EnrollmentConfig.ready."""
    through = get_user_model().groups.through
    user_model = get_user_model()
    pre_delete.connect(_user_deleting, sender=user_model, dispatch_uid="role_audit_user")
    pre_save.connect(_account_saving, sender=user_model, dispatch_uid="privilege_audit_pre")
    post_save.connect(_account_saved, sender=user_model, dispatch_uid="privilege_audit_post")
    m2m_changed.connect(_groups_changed, sender=through, dispatch_uid="role_audit_m2m")
    pre_save.connect(_group_renaming, sender=Group, dispatch_uid="role_audit_rename_pre")
    post_save.connect(_group_renamed, sender=Group, dispatch_uid="role_audit_rename_post")
    pre_delete.connect(_group_deleting, sender=Group, dispatch_uid="role_audit_delete")
    for permissions_through, uid in (
        (get_user_model().user_permissions.through, "permission_audit_user"),
        (Group.permissions.through, "permission_audit_group"),
    ):
        m2m_changed.connect(_permissions_changed, sender=permissions_through, dispatch_uid=uid)
