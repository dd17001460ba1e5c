"""Officer scopes (enrollment.scopes): whom an RA officer acts for. The Reach each officer
gets, its filter and its one-at-a-time check agreeing on every kind of person, and the
decision rule (permissions.Decider) refusing a request outside it."""

from __future__ import annotations

import pytest

from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError

from enrollment import permissions, scopes, services
from enrollment.exceptions import NotPermitted
from enrollment.models import (
    AuditEvent,
    CertificateRequest,
    OfficerScope,
    SharedMailbox,
)
from enrollment.x509.keys import KeyAlgorithm
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def reach(user) -> scopes.Reach:
    scopes.forget_reach(user)
    return scopes.reach_of(user)


def submit(who, template) -> CertificateRequest:
    return services.request_submit(
        requester=who, template=template, key_algorithm=KeyAlgorithm.EC_P256, channel="web"
    )


# --- the Reach ---------------------------------------------------------------------------


def test_an_officer_in_no_scope_acts_for_everyone(officer, sales_scope):
    other = UserFactory(username="oscar")
    other.groups.add(Group.objects.get(name="RA officers"))

    assert reach(other) == scopes.EVERYONE
    assert reach(other).everyone


def test_a_superuser_acts_for_everyone_even_in_a_scope_group(admin_user, sales_scope):
    sales_scope.officers.user_set.add(admin_user)

    assert reach(admin_user).everyone


def test_a_scoped_officer_acts_for_the_units_and_groups_of_the_scope(officer, sales_scope):
    found = reach(officer)

    assert not found.everyone
    assert found.units == frozenset({"sales"})
    assert found.group_ids == frozenset({sales_scope.people.pk})
    assert found.scopes == ("Sales",)
    assert found.describe() == "Sales"


def test_an_officer_in_two_scopes_acts_for_both(officer, sales_scope):
    support = Group.objects.create(name="Support officers")
    support.user_set.add(officer)
    OfficerScope.objects.create(
        name="Support", officers=support, organizational_units="Support\nHelpdesk"
    )

    found = reach(officer)

    assert found.units == frozenset({"sales", "support", "helpdesk"})
    assert found.scopes == ("Sales", "Support")


def test_a_scope_of_nothing_covers_nobody(officer, employee, colleague):
    group = Group.objects.create(name="Idle officers")
    group.user_set.add(officer)
    OfficerScope.objects.create(name="Nobody yet", officers=group)

    found = reach(officer)

    assert not found.everyone
    assert not found.covers(employee)
    assert not type(employee).objects.filter(found.people()).exists()


def test_reaches_reads_many_officers_in_a_fixed_number_of_queries(
    officer, sales_scope, django_assert_num_queries
):
    others = [UserFactory() for _ in range(5)]
    sales_scope.officers.user_set.add(*others[:2])

    with django_assert_num_queries(3):
        found = scopes.reaches([(u.pk, False) for u in [officer, *others]])

    assert [found[u.pk].everyone for u in [officer, *others]] == [
        False,
        False,
        False,
        True,
        True,
        True,
    ]


def test_an_anonymous_user_reaches_nobody():
    from django.contrib.auth.models import AnonymousUser

    assert not scopes.reach_of(AnonymousUser()).covers(UserFactory.build())


# --- the filter and the check agree -----------------------------------------------------


@pytest.fixture
def people(sales_scope, employee, colleague):
    """Alice (unit Sales), Bob (Engineering), and others: the unit in another case and
    with blanks, a member of Sales people in another unit, someone without a unit, and a
    member of an unrelated group."""
    shouty = UserFactory(username="shouty", organizational_unit="SALES")
    padded = UserFactory(username="padded", organizational_unit="sales")
    member = UserFactory(username="member", organizational_unit="Engineering")
    member.groups.add(sales_scope.people)
    nobody = UserFactory(username="nobody", organizational_unit="")
    unrelated = UserFactory(username="unrelated", organizational_unit="Finance")
    unrelated.groups.add(Group.objects.create(name="Finance people"))
    return {
        "alice": (employee, True),
        "bob": (colleague, False),
        "shouty": (shouty, True),
        "padded": (padded, True),
        "member": (member, True),
        "nobody": (nobody, False),
        "unrelated": (unrelated, False),
    }


def test_the_filter_and_the_check_agree_on_every_person(officer, people):
    found = reach(officer)
    User = type(officer)

    in_sql = set(User.objects.filter(found.people()).values_list("username", flat=True))
    checked = {name for name, (person, _) in people.items() if found.covers(person)}
    expected = {name for name, (_, covered) in people.items() if covered}

    assert checked == expected
    assert in_sql & set(people) == expected


def test_prime_groups_answers_covers_without_a_query(officer, people, django_assert_num_queries):
    found = reach(officer)
    fresh = list(type(officer).objects.filter(username__in=list(people)))

    with django_assert_num_queries(1):
        scopes.prime_groups(fresh)
    with django_assert_num_queries(0):
        covered = {p.username for p in fresh if found.covers(p)}

    assert covered == {name for name, (_, c) in people.items() if c}


def test_a_shared_mailboxs_request_is_only_for_those_who_act_for_everyone(
    officer, employee, sales_scope, hierarchy, approval
):
    template = approval("smime-signing")
    box = SharedMailbox.objects.create(email="sales@example.com", display_name="Sales")
    request = submit(employee, template)
    CertificateRequest.objects.filter(pk=request.pk).update(mailbox=box)
    request.refresh_from_db()
    found = reach(officer)

    assert not found.covers_request(request)
    assert not CertificateRequest.objects.filter(found.requests(), pk=request.pk).exists()
    assert scopes.EVERYONE.covers_request(request)


# --- deciding ----------------------------------------------------------------------------


@pytest.fixture
def waiting(hierarchy, approval, employee, colleague, sales_scope):
    """Two requests waiting for approval: Alice's (Sales) and Bob's (Engineering)."""
    template = approval("smime-signing")
    return submit(employee, template), submit(colleague, template)


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_a_scoped_officer_may_not_decide_a_request_outside_the_scope(officer, waiting, verb):
    _alices, bobs = waiting
    decide = services.request_approve if verb == "approve" else services.request_reject

    with pytest.raises(NotPermitted) as refused:
        decide(request=bobs, officer=officer, reason="no")

    assert "outside the people your officer scope covers" in refused.value.message
    assert "Bob" not in refused.value.message
    bobs.refresh_from_db()
    assert bobs.state == CertificateRequest.State.PENDING
    assert bobs.decided_by is None
    assert not AuditEvent.objects.filter(action__in=["request.approve", "request.reject"]).exists()


def test_a_scoped_officer_decides_a_request_inside_the_scope(officer, waiting):
    alices, _bobs = waiting

    assert services.request_approve(request=alices, officer=officer).decided_by == officer


def test_leaving_the_scope_group_gives_back_every_request(officer, waiting, sales_scope):
    _alices, bobs = waiting
    sales_scope.officers.user_set.remove(officer)
    scopes.forget_reach(officer)

    assert permissions.decider(officer).barred(bobs) is None


def test_decidable_and_barred_agree_under_a_scope(officer, waiting, sales_scope):
    alices, bobs = waiting
    box = SharedMailbox.objects.create(email="sales@example.com", display_name="Sales")
    boxed = submit(UserFactory(organizational_unit="Sales"), alices.template)
    CertificateRequest.objects.filter(pk=boxed.pk).update(mailbox=box)
    own = submit(officer, alices.template)
    officer_decider = permissions.decider(officer)
    every = list(
        CertificateRequest.objects.filter(state=CertificateRequest.State.PENDING).select_related(
            "requester", "template"
        )
    )

    by_rule = {r.pk for r in every if officer_decider.barred(r) is None}
    in_sql = set(
        CertificateRequest.objects.filter(officer_decider.decidable()).values_list("pk", flat=True)
    )

    assert by_rule == in_sql == {alices.pk}
    assert officer_decider.barred(bobs) == permissions.OUT_OF_SCOPE
    assert officer_decider.barred(own) == permissions.OWN_REQUEST


# --- the model ---------------------------------------------------------------------------


def test_a_unit_listed_twice_is_refused(sales_scope):
    sales_scope.scope.organizational_units = "Sales\n  SALES  "

    with pytest.raises(ValidationError, match="listed twice"):
        sales_scope.scope.full_clean()


def test_units_are_kept_one_per_line_without_blanks(sales_scope):
    sales_scope.scope.organizational_units = "  Sales \n\n Support\n"

    sales_scope.scope.full_clean()

    assert sales_scope.scope.organizational_units == "Sales\nSupport"
    assert sales_scope.scope.units == ["Sales", "Support"]


def test_the_officers_group_of_a_scope_cannot_be_deleted(sales_scope):
    from django.db.models import ProtectedError

    with pytest.raises(ProtectedError):
        sales_scope.officers.delete()


# --- the RA pages say it -----------------------------------------------------------------


def test_a_scoped_officers_ra_pages_name_the_scope(officer, sales_scope):
    from tests.conftest import client_for

    response = client_for(officer).get("/ra/")

    assert response.status_code == 200
    assert "Your officer scope: <strong>Sales</strong>" in response.content.decode()


def test_an_officer_who_acts_for_everyone_sees_no_scope_note(officer_client, sales_scope):
    sales_scope.scope.delete()

    response = officer_client.get("/ra/")

    assert response.status_code == 200
    assert "officer-scope" not in response.content.decode()


def test_deciders_read_scopes_with_the_approvers_groups(
    officer, sales_scope, django_assert_num_queries
):
    """The scopes' memberships come with the approvers groups' (one statement): no query
    more while nobody is in a scope's group, two more (the scopes) when someone is."""
    unscoped = [UserFactory() for _ in range(3)]
    # A group that both approves a template and is a scope's officers group counts as both.
    from enrollment.models import CertificateTemplate

    CertificateTemplate.objects.filter(slug="smime-signing").update(
        approver_group=sales_scope.officers
    )

    with django_assert_num_queries(2):
        plain = permissions.deciders([(u.pk, False) for u in unscoped])
    with django_assert_num_queries(4):
        both = permissions.deciders([(officer.pk, False), *[(u.pk, False) for u in unscoped]])

    assert all(d.reach.everyone for d in plain.values())
    assert both[officer.pk].reach.scopes == ("Sales",)
    assert both[officer.pk].group_ids == frozenset({sales_scope.officers.pk})


@pytest.mark.parametrize("stored", ["VENTAS Ñ", "ventas ñ", "Ventas Ñ", "ventas Ñ"])
def test_the_filter_and_the_check_agree_on_a_unit_with_non_ascii_letters(officer, stored):
    """The database folds case as it does (SQLite: ASCII letters only; PostgreSQL: every
    letter): whatever it says, the one-at-a-time check says the same."""
    group = Group.objects.create(name="Ventas officers")
    group.user_set.add(officer)
    OfficerScope.objects.create(name="Ventas", officers=group, organizational_units="Ventas Ñ")
    person = UserFactory(username="pedro", organizational_unit=stored)
    found = reach(officer)

    in_sql = type(person).objects.filter(found.people(), pk=person.pk).exists()

    assert found.covers(person) == in_sql
    assert found.covers(person) or stored.endswith("ñ")  # ASCII case always folds


# --- the audit trail is for officers who act for everyone --------------------------------


@pytest.mark.parametrize("path", ["/ra/audit/", "/ra/audit/export.csv", "/ra/audit/export.jsonl"])
def test_a_scoped_officer_neither_browses_nor_exports_the_audit_trail(officer, sales_scope, path):
    from tests.conftest import client_for

    response = client_for(officer).get(path)

    assert response.status_code == 403
    assert "it is for officers who act for everyone" in response.content.decode()
    assert not AuditEvent.objects.filter(action="audit.export").exists()


def test_a_scoped_officers_navigation_offers_no_audit_trail(officer, sales_scope, officer_client):
    page = officer_client.get("/ra/").content.decode()

    assert 'href="/ra/audit/"' not in page


@pytest.mark.parametrize("who", ["unscoped", "superuser"])
def test_officers_who_act_for_everyone_still_browse_and_export_it(
    who, sales_scope, second_officer, admin_user
):
    from tests.conftest import client_for

    if who == "superuser":
        sales_scope.officers.user_set.add(admin_user)  # a superuser is never limited
    client = client_for(second_officer if who == "unscoped" else admin_user)

    assert client.get("/ra/audit/").status_code == 200
    assert 'href="/ra/audit/"' in client.get("/ra/").content.decode()
    assert client.get("/ra/audit/export.csv").status_code == 200


def test_prime_groups_primes_every_copy_of_an_account(officer, people, django_assert_num_queries):
    """Rows read with select_related carry their own copy of an account each."""
    found = reach(officer)
    User = type(officer)
    copies = [User.objects.get(username="member"), User.objects.get(username="member")]

    with django_assert_num_queries(1):
        scopes.prime_groups(copies)
    with django_assert_num_queries(0):
        assert [found.covers(copy) for copy in copies] == [True, True]
