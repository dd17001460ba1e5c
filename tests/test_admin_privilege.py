"""Only a superuser grants privilege or touches a privileged account in the admin.

Django's stock admin lets anyone with accounts.change_user tick "Superuser status" on
themselves, join the RA officers, or set a superuser's password (accounts.privilege).
"""

from __future__ import annotations

from typing import Any

import pytest

from django.contrib.auth.models import Group, Permission
from django.forms import MultiWidget
from django.test import Client

from accounts.models import User
from tests.conftest import client_for
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

USERS = "/admin/accounts/user/"
GROUPS = "/admin/auth/group/"
NEW_PASSWORD = "Quartz-Lantern-Harbour-77"


def perms(*codenames: str) -> list[Permission]:
    found = list(Permission.objects.filter(codename__in=codenames))
    assert len(found) == len(codenames)
    return found


@pytest.fixture
def helpdesk(db) -> User:
    """Staff who may manage accounts and groups, through a group, as a help desk would."""
    user = UserFactory(username="hugo", is_staff=True)
    team = Group.objects.create(name="Help desk")
    team.permissions.add(
        *perms("view_user", "change_user", "delete_user", "view_group", "change_group")
    )
    team.permissions.add(*perms("add_group", "delete_group"))
    user.groups.add(team)
    return user


@pytest.fixture
def signing_staff(db) -> Group:
    """A plain group: it only says who may use a template."""
    return Group.objects.create(name="Signing staff")


@pytest.fixture
def officers(officer) -> Group:
    return Group.objects.get(name="RA officers")


def form_data(client: Client, url: str, **changes: Any) -> dict[str, Any]:
    """The change form as the page shows it, with ``changes`` applied: what a browser posts."""
    page = client.get(url)
    assert page.status_code == 200
    form = page.context["adminform"].form
    data: dict[str, Any] = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if isinstance(field.widget, MultiWidget):
            for index, part in enumerate(field.widget.decompress(value)):
                data[f"{name}_{index}"] = "" if part is None else str(part)
        elif isinstance(value, bool):
            if value:
                data[name] = "on"
        elif isinstance(value, list | tuple):
            data[name] = [str(item) for item in value]
        elif value is not None:
            data[name] = str(value)
    for name, value in changes.items():
        if value is False:
            data.pop(name, None)
        elif value is True:
            data[name] = "on"
        else:
            data[name] = value
    return data


def change_url(user: User) -> str:
    return f"{USERS}{user.pk}/change/"


def test_a_help_desk_grants_plain_groups_and_edits_employees(helpdesk, employee, signing_staff):
    client = client_for(helpdesk)
    url = change_url(employee)

    response = client.post(
        url, form_data(client, url, first_name="Erika", groups=[str(signing_staff.pk)])
    )

    assert response.status_code == 302, response.context["adminform"].form.errors
    employee.refresh_from_db()
    assert employee.first_name == "Erika"
    assert list(employee.groups.all()) == [signing_staff]


def test_a_help_desk_cannot_make_itself_superuser_or_give_itself_permissions(helpdesk):
    client = client_for(helpdesk)
    url = change_url(helpdesk)
    page = client.get(url)
    assert {"is_superuser", "is_staff", "user_permissions"}.isdisjoint(
        page.context["adminform"].form.fields
    )

    response = client.post(
        url,
        form_data(
            client,
            url,
            is_superuser=True,
            user_permissions=[str(p.pk) for p in Permission.objects.all()],
            last_name="Desk",
        ),
    )

    assert response.status_code == 302, response.context["adminform"].form.errors
    helpdesk.refresh_from_db()
    assert helpdesk.last_name == "Desk"
    assert not helpdesk.is_superuser
    assert not helpdesk.user_permissions.exists()
    # The group that gives the help desk its permissions is kept, though the form does not
    # offer it.
    assert list(helpdesk.groups.values_list("name", flat=True)) == ["Help desk"]


@pytest.mark.parametrize("role", ["RA officers", "Key recovery agents", "Help desk"])
def test_a_help_desk_cannot_join_a_role_or_a_group_holding_permissions(helpdesk, role):
    group = Group.objects.get_or_create(name=role)[0]
    client = client_for(helpdesk)
    url = change_url(helpdesk)

    response = client.post(url, form_data(client, url, groups=[str(group.pk)]))

    assert response.status_code == 200
    assert "groups" in response.context["adminform"].form.errors
    assert list(helpdesk.groups.values_list("name", flat=True)) == ["Help desk"]


def test_the_help_desk_cannot_make_an_employee_staff(helpdesk, employee):
    client = client_for(helpdesk)
    url = change_url(employee)

    response = client.post(url, form_data(client, url, is_staff=True, is_superuser=True))

    assert response.status_code == 302
    employee.refresh_from_db()
    assert not employee.is_staff
    assert not employee.is_superuser


@pytest.fixture
def privileged(request, admin_user, officer, key_recovery_agent_user) -> User:
    staff = UserFactory(username="stella", is_staff=True)
    holder = UserFactory(username="percy")
    holder.user_permissions.add(*perms("view_certificate"))
    return {
        "superuser": admin_user,
        "officer": officer,
        "recovery agent": key_recovery_agent_user,
        "staff": staff,
        "a permission": holder,
    }[request.param]


@pytest.fixture
def key_recovery_agent_user(db) -> User:
    user = UserFactory(username="karl")
    user.groups.add(Group.objects.get_or_create(name="Key recovery agents")[0])
    return user


PRIVILEGED = ["superuser", "officer", "recovery agent", "staff", "a permission"]


@pytest.mark.parametrize("privileged", PRIVILEGED, indirect=True)
def test_a_help_desk_cannot_take_over_a_privileged_account(helpdesk, privileged):
    client = client_for(helpdesk)
    before = User.objects.get(pk=privileged.pk)

    password = client.post(
        f"{USERS}{privileged.pk}/password/",
        {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"},
    )
    change = client.post(change_url(privileged), {"email": "hugo@example.com"})
    delete = client.post(f"{USERS}{privileged.pk}/delete/", {"post": "yes"})
    bulk = client.post(
        USERS, {"action": "delete_selected", "_selected_action": [privileged.pk], "post": "yes"}
    )

    assert password.status_code == 403
    assert change.status_code == 403
    assert delete.status_code == 403
    assert bulk.status_code == 403
    after = User.objects.get(pk=privileged.pk)
    assert after.password == before.password
    assert after.email == before.email


@pytest.mark.parametrize("privileged", PRIVILEGED, indirect=True)
def test_a_superuser_administers_privileged_accounts(admin_client_, privileged):
    response = admin_client_.post(
        f"{USERS}{privileged.pk}/password/",
        {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"},
    )

    assert response.status_code == 302
    assert User.objects.get(pk=privileged.pk).check_password(NEW_PASSWORD)


def test_a_help_desk_sets_an_employees_password(helpdesk, employee):
    response = client_for(helpdesk).post(
        f"{USERS}{employee.pk}/password/",
        {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"},
    )

    assert response.status_code == 302
    employee.refresh_from_db()
    assert employee.check_password(NEW_PASSWORD)


def test_a_superuser_grants_roles_and_superuser_status(admin_client_, employee, officers):
    url = change_url(employee)

    response = admin_client_.post(
        url,
        form_data(admin_client_, url, is_superuser=True, is_staff=True, groups=[str(officers.pk)]),
    )

    assert response.status_code == 302
    employee.refresh_from_db()
    assert employee.is_superuser
    assert employee.is_staff
    assert list(employee.groups.all()) == [officers]


# --- groups ---------------------------------------------------------------------------


def test_a_help_desk_renames_plain_groups_but_gives_them_no_permissions(helpdesk, signing_staff):
    client = client_for(helpdesk)
    url = f"{GROUPS}{signing_staff.pk}/change/"
    assert "permissions" not in client.get(url).context["adminform"].form.fields

    response = client.post(
        url,
        {"name": "Signing people", "permissions": [str(p.pk) for p in perms("change_user")]},
    )

    assert response.status_code == 302
    signing_staff.refresh_from_db()
    assert signing_staff.name == "Signing people"
    assert not signing_staff.permissions.exists()


@pytest.mark.parametrize("role", ["RA officers", "Key recovery agents"])
def test_a_help_desk_cannot_name_a_group_after_a_role(helpdesk, signing_staff, role):
    client = client_for(helpdesk)

    renamed = client.post(f"{GROUPS}{signing_staff.pk}/change/", {"name": role})
    added = client.post(f"{GROUPS}add/", {"name": role})

    assert renamed.status_code == 200
    assert "name" in renamed.context["adminform"].form.errors
    assert added.status_code == 200
    assert "name" in added.context["adminform"].form.errors
    assert not Group.objects.filter(name=role).exists()
    signing_staff.refresh_from_db()
    assert signing_staff.name == "Signing staff"


@pytest.mark.parametrize("which", ["RA officers", "Help desk"])
def test_a_help_desk_cannot_change_or_delete_privileged_groups(helpdesk, officers, which):
    group = Group.objects.get(name=which)
    client = client_for(helpdesk)

    change = client.post(f"{GROUPS}{group.pk}/change/", {"name": "Anything"})
    delete = client.post(f"{GROUPS}{group.pk}/delete/", {"post": "yes"})
    bulk = client.post(
        GROUPS, {"action": "delete_selected", "_selected_action": [group.pk], "post": "yes"}
    )

    assert (change.status_code, delete.status_code, bulk.status_code) == (403, 403, 403)
    assert Group.objects.filter(pk=group.pk, name=which).exists()


def test_a_superuser_gives_a_group_permissions_and_a_role_name(admin_client_, signing_staff):
    response = admin_client_.post(
        f"{GROUPS}{signing_staff.pk}/change/",
        {"name": "RA officers", "permissions": [str(p.pk) for p in perms("view_user")]},
    )

    assert response.status_code == 302
    signing_staff.refresh_from_db()
    assert signing_staff.name == "RA officers"
    assert list(signing_staff.permissions.values_list("codename", flat=True)) == ["view_user"]
