"""Officer scopes in the admin: only superusers see or change them, every change is an
audit event naming what changed and whose power it moved, and joining or leaving a
scope's group is recorded as a role change (leaving widens an officer to everyone)."""

from __future__ import annotations

import pytest

from django.contrib.auth.models import Group, Permission

from enrollment.models import AuditEvent, OfficerScope
from tests.conftest import client_for
from tests.enrollment.test_change_audit import ADDRESS, admin_post
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

SCOPES = "/admin/enrollment/officerscope/"


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("pk"))


def test_a_superuser_creates_a_scope_and_it_is_audited(admin_client_, admin_user, officer):
    officers = Group.objects.create(name="Sales officers")
    officers.user_set.add(officer)
    people = Group.objects.create(name="Sales people")

    response = admin_client_.post(
        f"{SCOPES}add/",
        {
            "name": "Sales",
            "officers": str(officers.pk),
            "organizational_units": " Sales \n\nSales EMEA\n",
            "people_groups": [str(people.pk)],
        },
        REMOTE_ADDR=ADDRESS,
    )

    assert response.status_code == 302, response.context["adminform"].form.errors
    scope = OfficerScope.objects.get(name="Sales")
    assert scope.units == ["Sales", "Sales EMEA"]
    [event] = events("scope.create")
    assert event.actor == admin_user
    assert event.source_address == ADDRESS
    assert event.detail == {
        "scope": "Sales",
        "changes": {
            "name": [None, "Sales"],
            "officers": [None, "Sales officers"],
            "organizational_units": [None, ["Sales", "Sales EMEA"]],
            "people_groups": [None, ["Sales people"]],
        },
        "officers": ["olivia"],
    }


def test_changing_a_scopes_units_records_old_and_new(admin_client_, sales_scope):
    url = f"{SCOPES}{sales_scope.scope.pk}/change/"

    admin_post(admin_client_, url, organizational_units="Sales\nMarketing")

    [event] = events("scope.change")
    assert event.detail["changes"] == {
        "organizational_units": [["Sales"], ["Sales", "Marketing"]],
    }
    assert event.detail["officers"] == ["olivia"]


def test_saving_a_scope_unchanged_writes_nothing(admin_client_, sales_scope):
    admin_post(admin_client_, f"{SCOPES}{sales_scope.scope.pk}/change/")

    assert not events("scope.change")


def test_deleting_a_scope_is_audited(admin_client_, sales_scope):
    response = admin_client_.post(f"{SCOPES}{sales_scope.scope.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not OfficerScope.objects.exists()
    [event] = events("scope.delete")
    assert event.detail["changes"]["organizational_units"] == [["Sales"], None]


def test_the_bulk_delete_is_audited_per_scope(admin_client_, sales_scope):
    response = admin_client_.post(
        SCOPES,
        {
            "action": "delete_selected",
            "_selected_action": [sales_scope.scope.pk],
            "post": "yes",
        },
    )

    assert response.status_code == 302
    assert [e.detail["scope"] for e in events("scope.delete")] == ["Sales"]


def test_a_unit_twice_is_refused_in_the_admin(admin_client_, sales_scope):
    url = f"{SCOPES}{sales_scope.scope.pk}/change/"
    response = admin_client_.get(url)
    data = {
        "name": "Sales",
        "officers": str(sales_scope.officers.pk),
        "organizational_units": "Sales\nSALES",
        "people_groups": [],
    }

    response = admin_client_.post(url, data)

    assert response.status_code == 200
    assert "listed twice" in str(response.context["adminform"].form.errors)
    assert not events("scope.change")


def test_the_list_names_the_officers_each_scope_limits(admin_client_, sales_scope, admin_user):
    sales_scope.officers.user_set.add(admin_user, UserFactory(username="plain"))

    response = admin_client_.get(SCOPES)

    assert response.status_code == 200
    row = response.content.decode()
    # Olivia is an RA officer; the superuser is never limited; a plain member holds no role.
    assert ">olivia<" in row
    assert "root-admin" not in row.split("Officers it limits")[1]
    assert ">plain<" not in row


@pytest.mark.parametrize("path", ["", "add/", "{pk}/change/", "{pk}/delete/"])
def test_staff_with_every_permission_but_not_superuser_is_refused(sales_scope, path):
    staff = UserFactory(username="stella", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__endswith="officerscope"))
    url = SCOPES + path.format(pk=sales_scope.scope.pk)

    response = client_for(staff).get(url)

    assert response.status_code == 403
    assert client_for(staff).get("/admin/").content.decode().count("Officer scopes") == 0


def test_an_officer_is_refused_and_anonymous_sent_to_sign_in(officer_client, client):
    assert officer_client.get(SCOPES).status_code in (302, 403)
    response = client.get(SCOPES)
    assert response.status_code == 302
    assert "/login/" in response["Location"]


def test_joining_and_leaving_a_scopes_group_are_role_events(sales_scope, colleague):
    sales_scope.officers.user_set.add(colleague)
    sales_scope.officers.user_set.remove(colleague)

    grant = [e for e in events("role.grant") if e.object_repr == str(colleague)]
    revoke = [e for e in events("role.revoke") if e.object_repr == str(colleague)]
    assert [e.detail["group"] for e in grant] == ["Sales officers"]
    assert [e.detail["group"] for e in revoke] == ["Sales officers"]


def test_a_plain_groups_memberships_are_not_role_events(sales_scope, colleague):
    sales_scope.people.user_set.add(colleague)

    assert not [e for e in events("role.grant") if e.object_repr == str(colleague)]
