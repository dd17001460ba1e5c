"""Whom an RA officer or key recovery agent acts for (OfficerScope), as one value.

Where an organisation splits the RA's work (Sales' officers for Sales, Engineering's for
Engineering), an admin gives each officers' group a scope: organisational units, groups
of people, or both. Every place an officer acts on a person asks the officer's Reach: the
request queue and its decisions, revocation, finding certificates, key recovery. An
officer in no scope's group acts for everyone, as before scopes existed, and so does a
superuser; a shared mailbox, or a certificate with no holder, is in no unit, so only
those who act for everyone handle it.

A Reach is read once per officer and request cycle (reach_of caches it on the user
object); whether it covers a person costs no query when the person's groups were read
with them (prime_groups), else one.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Exists, OuterRef, Q
from django.utils.translation import gettext_lazy as _

from enrollment.models import OfficerScope

# Cached on a user object: their Reach as an officer, and the ids of their groups as a
# person someone may act for.
_REACH = "_pkiportal_reach"
_GROUP_IDS = "_pkiportal_group_ids"


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def fold(unit: str) -> str:
    """A unit as Reach.covers compares it, folding case as the database's ``iexact`` does
    in Reach.people(), so that the check and the filter never disagree: SQLite's LIKE folds
    ASCII letters only ("Ñ" and "ñ" differ there), PostgreSQL's UPPER() every letter."""
    if connection.vendor == "sqlite":
        return unit.translate(_ASCII_LOWER)
    return unit.lower()


@dataclass(frozen=True)
class Reach:
    """Whom one officer acts for: everyone, or the people of ``units`` (fold()ed) and
    the members of the groups ``group_ids``. ``scopes`` names the scopes it came from."""

    everyone: bool = True
    units: frozenset[str] = frozenset()
    group_ids: frozenset[int] = frozenset()
    scopes: tuple[str, ...] = ()

    def people(self, field: str = "") -> Q:
        """The people it covers, as a filter on a model whose ``field`` is the person
        (a foreign key to the user; empty: the user model itself). Everyone: no filter; a
        row whose ``field`` is empty is covered only then."""
        if self.everyone:
            return Q()
        path = f"{field}__" if field else ""
        condition = Q(pk__in=[])  # a scope of nothing covers nobody
        for unit in sorted(self.units):
            condition |= Q(**{f"{path}organizational_unit__iexact": unit})
        if self.group_ids:
            memberships = get_user_model().groups.through.objects.filter(
                user_id=OuterRef(f"{field}_id" if field else "pk"),
                group_id__in=sorted(self.group_ids),
            )
            condition |= Q(Exists(memberships))
        return condition

    def requests(self) -> Q:
        """people() on CertificateRequest: a request is covered with its requester, a shared
        mailbox's only when the Reach is everyone."""
        if self.everyone:
            return Q()
        return self.people("requester") & Q(mailbox__isnull=True)

    def certificates(self, prefix: str = "") -> Q:
        """people() on Certificate (``prefix``: the path to it, e.g. "certificate__"): a
        certificate is covered with its holder; a shared mailbox's, or one held by nobody,
        only when the Reach is everyone."""
        if self.everyone:
            return Q()
        return self.people(f"{prefix}owner") & Q(**{f"{prefix}owner__isnull": False})

    def covers(self, person: Any) -> bool:
        """Whether it covers this account: its unit, else its groups (one query unless
        prime_groups read them)."""
        if self.everyone:
            return True
        if person is None:
            return False
        if fold(person.organizational_unit or "") in self.units:
            return True
        if not self.group_ids:
            return False
        return not self.group_ids.isdisjoint(_group_ids(person))

    def covers_request(self, request: Any) -> bool:
        """requests() for one CertificateRequest."""
        if self.everyone:
            return True
        return request.mailbox_id is None and self.covers(request.requester)

    def covers_certificate(self, certificate: Any) -> bool:
        """certificates() for one Certificate."""
        if self.everyone:
            return True
        return certificate.owner_id is not None and self.covers(certificate.owner)

    def describe(self) -> str:
        """What an officer's pages say of it: "everyone", or the scopes' names."""
        # Translators: whom an officer acts for when no scope limits them.
        return str(_("everyone")) if self.everyone else ", ".join(self.scopes)


EVERYONE = Reach()

# What an officer is told of a request outside their Reach (its page, the API): no name,
# as they may not see who asked.
OUTSIDE_REQUEST = _("This request is outside the people your officer scope covers.")


def _group_ids(person: Any) -> frozenset[int]:
    cached = getattr(person, _GROUP_IDS, None)
    if cached is None:
        cached = frozenset(person.groups.values_list("pk", flat=True))
        setattr(person, _GROUP_IDS, cached)
    return cached


def prime_groups(people: Iterable[Any]) -> None:
    """Read the groups of these accounts in one query, for Reach.covers on each (a queue,
    a notice run): only needed where some officer's Reach names groups. Several copies of
    one account (rows read with select_related carry their own) are all primed."""
    pending: dict[int, list[Any]] = {}
    for person in people:
        if person is not None and getattr(person, _GROUP_IDS, None) is None:
            pending.setdefault(person.pk, []).append(person)
    if not pending:
        return
    found: dict[int, set[int]] = {pk: set() for pk in pending}
    through = get_user_model().groups.through.objects.filter(user_id__in=sorted(pending))
    for user_id, group_id in through.values_list("user_id", "group_id"):
        found[user_id].add(group_id)
    for pk, copies in pending.items():
        for person in copies:
            setattr(person, _GROUP_IDS, frozenset(found[pk]))


def prime_requesters(requests: Iterable[Any], officers: Iterable[Reach]) -> None:
    """prime_groups for the requesters of these CertificateRequests, when one of these
    officers' Reaches names groups (else no query): a queue, or a notice to many officers,
    asks covers_request of every request."""
    if not any(not reach.everyone and reach.group_ids for reach in officers):
        return
    # A mailbox's request is no person's: covers_request never asks its requester.
    prime_groups(request.requester for request in requests if request.mailbox_id is None)


def reaches(
    officers: Iterable[tuple[int, bool]], *, scope_groups: dict[int, set[int]] | None = None
) -> dict[int, Reach]:
    """A Reach for each (pk, is_superuser): one query when nobody is in a scope's group
    (none when every one is a superuser), three when some are. ``scope_groups``: the scope
    groups each officer is in, when the caller read them already (permissions.deciders,
    with the approvers groups): then one query fewer."""
    flags = dict(officers)
    groups_of: dict[int, set[int]] = {}
    members = sorted(pk for pk, superuser in flags.items() if not superuser)
    if scope_groups is not None:
        groups_of = {pk: set(ids) for pk, ids in scope_groups.items() if pk in members}
    elif members:
        memberships = get_user_model().groups.through.objects.filter(
            user_id__in=members, group__officer_scopes__isnull=False
        )
        for user_id, group_id in memberships.values_list("user_id", "group_id"):
            groups_of.setdefault(user_id, set()).add(group_id)
    by_group: dict[int, list[OfficerScope]] = {}
    if groups_of:
        wanted = sorted(set().union(*groups_of.values()))
        scopes = OfficerScope.objects.filter(officers_id__in=wanted).prefetch_related(
            "people_groups"
        )
        for scope in scopes:
            by_group.setdefault(scope.officers_id, []).append(scope)
    result: dict[int, Reach] = {}
    for pk, superuser in flags.items():
        mine = [s for g in sorted(groups_of.get(pk, ())) for s in by_group.get(g, [])]
        if superuser or not mine:
            result[pk] = EVERYONE
            continue
        result[pk] = Reach(
            everyone=False,
            units=frozenset(fold(u) for s in mine for u in s.units),
            group_ids=frozenset(g.pk for s in mine for g in s.people_groups.all()),
            scopes=tuple(sorted({s.name for s in mine})),
        )
    return result


def reach_of(user: Any) -> Reach:
    """This officer's Reach, read once per user object (a request's ``request.user``)."""
    cached = getattr(user, _REACH, None)
    if isinstance(cached, Reach):
        return cached
    if user is None or not getattr(user, "is_authenticated", False):
        return Reach(everyone=False, scopes=())
    reach = reaches([(user.pk, bool(user.is_superuser))])[user.pk]
    setattr(user, _REACH, reach)
    return reach


def forget_reach(user: Any) -> None:
    """Drop the cached Reach (after the officer's groups or scopes changed in the same
    request, as tests and the admin's own pages do)."""
    if hasattr(user, _REACH):
        delattr(user, _REACH)


def officers_limited_by(scope: OfficerScope) -> list[str]:
    """The user names of the active RA officers and key recovery agents a scope limits
    (its group's members holding either role; superusers are never limited)."""
    from django.conf import settings

    roles = [settings.PKIPORTAL_RA_OFFICER_GROUP, settings.PKIPORTAL_KRA_GROUP]
    # Two filter() calls, two joins: one would look for one group that is both.
    people = (
        get_user_model()
        .objects.filter(is_active=True, is_superuser=False, groups=scope.officers_id)
        .filter(groups__name__in=roles)
        .distinct()
        .order_by("username")
    )
    return list(people.values_list("username", flat=True))


def scoped_reaches() -> dict[int, Reach]:
    """The Reach of everyone a scope limits (non-superusers in some scope's officers group):
    for a count in SQL over many officers' acts (approvals that count), where a person not
    named here acts for everyone. One query when no scope limits anybody, four when some do."""
    limited = (
        get_user_model()
        .groups.through.objects.filter(
            group__officer_scopes__isnull=False, user__is_superuser=False
        )
        .values_list("user_id", flat=True)
        .distinct()
    )
    return reaches((pk, False) for pk in limited)


def within_reach(officer: str, prefix: str = "") -> Q:
    """Rows whose officer (``officer``: the path to the officer's id, e.g.
    "approvals__officer_id") acts within their Reach for the certificate at ``prefix``
    (as Reach.certificates): covers_certificate for many officers at once, in SQL. One
    branch per scope's Reach, not per officer; scoped_reaches' queries before it."""
    reached = scoped_reaches()
    if not reached:
        return Q()
    grouped: dict[Reach, list[int]] = {}
    for pk, reach in sorted(reached.items()):
        grouped.setdefault(reach, []).append(pk)
    condition = ~Q(**{f"{officer}__in": sorted(reached)})
    for reach, pks in grouped.items():
        condition |= Q(**{f"{officer}__in": pks}) & reach.certificates(prefix)
    return condition
