"""Roles as predicates (employee, RA officer, key recovery agent) and DRF permissions.

Roles are Django groups (names in settings), so a directory or SSO group sync grants them.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from enrollment import hotsql
from enrollment.models import (
    ApiToken,
    CertificateRequest,
    CertificateTemplate,
    MintedWith,
    OfficerScope,
    SharedMailbox,
)
from enrollment.scopes import EVERYONE, Reach, reaches

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
    """An API token carries no officer, agent or administrator power while the policy
    does not count how it was minted (token_role_refusal): 403, mint a new one. Read from
    the row the token check loaded (hotsql.tokens_with_user): no query of its own."""
    token = getattr(user, "_pkiportal_api_token", None)
    if token is None:
        return
    minted = getattr(token, "_pkiportal_minted_with", None)
    if minted is None:  # a token not loaded by TokenAuthentication
        named = ApiToken.objects.filter(auth_token=token).first()
        minted = named.minted_with if named is not None else MintedWith()
        token._pkiportal_minted_with = minted
    refusal = token_role_refusal(user, minted)
    if refusal is None:
        return
    from accounts.api import SecondFactorRequired

    raise SecondFactorRequired(
        {
            "detail": TOKEN_REFUSALS[refusal],
            "missing": refusal,
            "url": reverse("enrollment:token-list"),
        }
    )


# Why a token carries no role power, by the API's "missing" code; the tokens page says it too.
# Lazy: the API's 403 words it in the caller's language.
TOKEN_REFUSALS = {
    "second_factor_token": _(
        "This API token was made without a second factor, which your role needs: it cannot "
        "act as an RA officer, key recovery agent or administrator. Mint a new token with "
        "your second factor (POST /api/v1/auth/token/ with the X-OTP-Code header, or on "
        "/account/tokens/) and revoke this one."
    ),
    "approved_security_key_token": _(
        "This API token was minted with a security key that has not proved an approved model "
        "(or before the portal recorded what confirmed its minting), and your role needs an "
        "approved key: it cannot act as an RA officer, key recovery agent or administrator. "
        "Add an approved key on /account/, sign in with it, mint a new token on "
        "/account/tokens/ and revoke this one."
    ),
    "security_key_token": _(
        "This API token was minted with an authenticator app, a backup code or single sign-on "
        "(or before the portal recorded what confirmed its minting), and your organisation "
        "requires a security key for you: it cannot act as an RA officer, key recovery agent "
        "or administrator. Sign in with your security key, mint a new token on "
        "/account/tokens/ and revoke this one."
    ),
}


def token_role_refusal(user: Any, minted: MintedWith) -> str | None:
    """Why a token minted so gives its owner no role power now, as the API's ``missing``
    code (a key of TOKEN_REFUSALS), or None. Without a second factor, while the policy asks
    its owner for one (before the roll-out of the second factor, or before its owner got
    the role); with a key the attestation policy does not count, or with no key where only
    a key will do, as their session would not (accounts.mfa.token_needs_approved_key,
    token_needs_security_key). Asked only of someone holding a role."""
    from accounts import mfa

    if not minted.second_factor:
        return "second_factor_token" if mfa.state_for(user).required else None
    if mfa.token_needs_approved_key(user, kind=minted.kind, key_model=minted.key_model):
        return "approved_security_key_token"
    if mfa.token_needs_security_key(user, kind=minted.kind):
        return "security_key_token"
    return None


def holds_token_role(user: Any) -> bool:
    """Whether the person holds a role an API token may act in (RA officer, key recovery
    agent; a superuser holds both): whom token_role_refusal concerns. One query."""
    return bool(
        user is not None
        and user.is_authenticated
        and user.is_active
        and (
            user.is_superuser
            or user.groups.filter(
                name__in=[settings.PKIPORTAL_RA_OFFICER_GROUP, settings.PKIPORTAL_KRA_GROUP]
            ).exists()
        )
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


# --- who decides a request -------------------------------------------------------------
# Why an RA officer may not decide a request (Decider.barred): the one rule that
# services._decide enforces and that the queue, the notices (ra_notifications), the
# console's notice panel and the API's pending list show.
OWN_REQUEST = "own_request"  # nobody approves their own request
MAILBOX_DELEGATE = "mailbox_delegate"  # a delegate reads the mailbox and can get its key
NOT_AN_APPROVER = "not_an_approver"  # the template names an approvers group they are not in
OUT_OF_SCOPE = "out_of_scope"  # their officer scope does not cover the person (enrollment.scopes)
# And why else a privileged action is refused for who attempts it (NotPermitted.refusal).
NOT_AN_OFFICER = "not_an_officer"  # an RA officer's action, by someone who is none
NOT_AN_AGENT = "not_an_agent"  # a key recovery agent's, likewise
OWN_KEY = "own_key"  # a step of the recovery of their own key (or their mailbox's)
DUAL_CONTROL = "dual_control"  # a recovery step that must be another person's than theirs

# Each refusal as the audit trail says it: the ``reason`` of an access.refused event
# (services.access_refusal_record) is the key; /ra/audit/ shows this text, worded in the
# reader's language (lazy), after what was attempted ("Refused: request.approve, ...").
REFUSALS = {
    # Translators: why an action was refused, after "Refused: <action>," on the audit trail.
    OUT_OF_SCOPE: _("outside their officer scope"),
    OWN_REQUEST: _("their own request"),
    MAILBOX_DELEGATE: _("a shared mailbox they are a delegate of"),
    NOT_AN_APPROVER: _("not among the template's approvers"),
    NOT_AN_OFFICER: _("not an RA officer"),
    NOT_AN_AGENT: _("not a key recovery agent"),
    OWN_KEY: _("their own key"),
    DUAL_CONTROL: _("another person's step (dual control)"),
}


@dataclass(frozen=True)
class Decider:
    """An RA officer as the approval rule sees them: the approvers groups they are in and
    the shared mailboxes they read, read once, so that a queue or a notice to many officers
    asks nothing per request. Only for someone already known to be an RA officer."""

    pk: int
    is_superuser: bool = False
    group_ids: frozenset[int] = frozenset()  # of the groups templates name as approvers
    mailbox_ids: frozenset[int] = frozenset()  # the shared mailboxes they are a delegate of
    reach: Reach = EVERYONE  # whom they act for (OfficerScope)

    def approves(self, template: CertificateTemplate) -> bool:
        """Whether they are among the template's approvers: every officer where it names
        no group, else its members and superusers."""
        group_id = template.approver_group_id
        return self.is_superuser or group_id is None or group_id in self.group_ids

    def barred(self, request: CertificateRequest) -> str | None:
        """Why they may not approve or reject it (OWN_REQUEST, MAILBOX_DELEGATE,
        OUT_OF_SCOPE, NOT_AN_APPROVER), or None when they may. Out of scope costs a query
        for the requester's groups unless scopes.prime_groups read them."""
        if request.requester_id == self.pk:
            return OWN_REQUEST
        if request.mailbox_id is not None and request.mailbox_id in self.mailbox_ids:
            return MAILBOX_DELEGATE
        if not self.reach.covers_request(request):
            return OUT_OF_SCOPE
        if not self.approves(request.template):
            return NOT_AN_APPROVER
        return None

    def decidable(self) -> Q:
        """barred() as a filter on requests, for counts in SQL (the console, the start
        page). tests/enrollment/test_approver_groups.py holds the two to each other."""
        return self.unbarred_personally() & self.covered()

    def unbarred_personally(self) -> Q:
        """The requests OWN_REQUEST and MAILBOX_DELEGATE leave them, as a filter."""
        condition = ~Q(requester_id=self.pk)
        if self.mailbox_ids:
            condition &= ~Q(mailbox_id__in=sorted(self.mailbox_ids))
        return condition

    def covered(self) -> Q:
        """The requests OUT_OF_SCOPE and NOT_AN_APPROVER leave them, as a filter: Q() (no
        filter) when that is every request."""
        if self.is_superuser:
            return self.reach.requests()
        return self.reach.requests() & (
            Q(template__approver_group__isnull=True)
            | Q(template__approver_group_id__in=sorted(self.group_ids))
        )


def decidable_by_some(officers: Iterable[Decider], *, personally: bool = True) -> Q:
    """The requests at least one of these officers may decide (decidable() of each, ORed),
    as one filter: Q() when that is every request. Officers of one Reach and approvers
    groups make one branch, not one each, so it grows with the scopes and groups, not with
    the officers: of two of them who read no shared mailbox, one may decide whatever the
    other may not (a request has one requester). ``personally=False``: as if OWN_REQUEST
    and MAILBOX_DELEGATE barred nobody (covered() of each). The scopes check of /health/
    counts what it leaves out; test_approver_groups.py holds it to barred()."""
    alike: dict[tuple[bool, Reach, frozenset[int]], list[Decider]] = {}
    for officer in officers:
        key = (officer.is_superuser, officer.reach, officer.group_ids)
        alike.setdefault(key, []).append(officer)
    branches = []
    for members in alike.values():
        branch = members[0].covered()
        if personally and sum(1 for m in members if not m.mailbox_ids) < 2:
            branch &= functools.reduce(operator.or_, (m.unbarred_personally() for m in members))
        if not branch:  # Q(): every request
            return Q()
        branches.append(branch)
    return functools.reduce(operator.or_, branches) if branches else Q(pk__in=[])


def approver_groups() -> QuerySet[Group]:
    """The groups some template names as its approvers."""
    return Group.objects.filter(approver_templates__isnull=False)


def scope_officer_groups() -> QuerySet[Group]:
    """The groups some officer scope limits (OfficerScope.officers): leaving one widens an
    officer to everyone, so who is in it is as much a matter of power as a role."""
    return Group.objects.filter(officer_scopes__isnull=False)


def power_shaping_groups() -> Q:
    """approver_groups() and scope_officer_groups() together, as a filter on groups: whose
    memberships decide what an RA officer may do, without being a role themselves."""
    return Q(pk__in=approver_groups().values("pk")) | Q(pk__in=scope_officer_groups().values("pk"))


def deciders(officers: Iterable[tuple[int, bool]]) -> dict[int, Decider]:
    """A Decider for each (pk, is_superuser), in two queries however many (one when all
    are superusers; two more when some are in an officer scope's group)."""
    flags = dict(officers)
    if not flags:
        return {}
    groups: dict[int, set[int]] = {}
    in_scopes: dict[int, set[int]] = {}
    members = [pk for pk, superuser in flags.items() if not superuser]
    if members:  # a superuser approves every template: their groups are not asked
        # The approvers groups and the scopes' groups they are in, in one statement.
        scoped = Exists(OfficerScope.objects.filter(officers_id=OuterRef("group_id")))
        approves = Exists(
            CertificateTemplate.objects.filter(approver_group_id=OuterRef("group_id"))
        )
        memberships = (
            get_user_model()
            .groups.through.objects.annotate(scoped=scoped, approves=approves)
            .filter(scoped | approves, user_id__in=members)
        )
        # "scoped" and "approves": the annotations above, which the stubs do not see.
        rows = memberships.values_list("user_id", "group_id", "scoped", "approves")  # type: ignore[misc]
        for user_id, group_id, is_scope, is_approvers in rows:
            if is_approvers:
                groups.setdefault(user_id, set()).add(group_id)
            if is_scope:
                in_scopes.setdefault(user_id, set()).add(group_id)
    reached = reaches(flags.items(), scope_groups=in_scopes)
    boxes: dict[int, set[int]] = {}
    delegations = SharedMailbox.delegates.through.objects.filter(user_id__in=list(flags))
    for user_id, mailbox_id in delegations.values_list("user_id", "sharedmailbox_id"):
        boxes.setdefault(user_id, set()).add(mailbox_id)
    return {
        pk: Decider(
            pk,
            is_superuser=superuser,
            group_ids=frozenset(groups.get(pk, ())),
            mailbox_ids=frozenset(boxes.get(pk, ())),
            reach=reached[pk],
        )
        for pk, superuser in flags.items()
    }


def decider(user: Any) -> Decider:
    """One officer's Decider (deciders: two queries, one for a superuser)."""
    return deciders([(user.pk, bool(user.is_superuser))])[user.pk]


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
    message = _("Only RA officers may do that.")

    def has_permission(self, request: Request, view: Any) -> bool:
        return is_ra_officer(request.user)
