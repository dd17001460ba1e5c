"""Only a superuser grants privilege or touches a privileged account in the admin.

Django's stock admin lets anyone with accounts.change_user tick "Superuser status" on
themselves, join the RA officers, or set a superuser's password (accounts.privilege).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pytest

from django.contrib.auth.models import Group, Permission
from django.core import mail
from django.db import transaction
from django.forms import MultiWidget
from django.test import Client

from accounts.models import User
from enrollment.models import OfficerScope
from tests.conftest import client_for
from tests.enrollment.test_compromise_concurrency import overlap
from tests.factories import UserFactory
from tests.markers import needs_row_locks

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


def scope_officers_group(name: str) -> Group:
    """A group an officer scope limits: leaving it would widen its officers to everyone."""
    group = Group.objects.get_or_create(name=name)[0]
    OfficerScope.objects.get_or_create(
        name=name, defaults={"officers": group, "organizational_units": "Sales"}
    )
    return group


@pytest.fixture
def sales_officers(db) -> Group:
    return scope_officers_group("Sales officers")


@pytest.fixture
def officers(officer) -> Group:
    return Group.objects.get(name="RA officers")


def approvers_of(slug: str, name: str) -> Group:
    """A group the template ``slug`` names as its approvers."""
    from enrollment.models import CertificateTemplate

    group = Group.objects.create(name=name)
    assert CertificateTemplate.objects.filter(slug=slug).update(approver_group=group) == 1
    return group


@pytest.fixture
def payroll(db) -> Group:
    """S/MIME Signing's approvers: its members, once RA officers, approve its requests."""
    return approvers_of("smime-signing", "Payroll approvers")


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


@pytest.mark.parametrize(
    "role",
    ["RA officers", "Key recovery agents", "Help desk", "Payroll approvers", "Sales officers"],
)
def test_a_help_desk_cannot_join_a_role_or_a_group_holding_permissions(
    helpdesk, payroll, sales_officers, role
):
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
    member = UserFactory(username="gemma")
    auditors = Group.objects.create(name="Auditors")
    auditors.permissions.add(*perms("view_auditevent"))
    member.groups.add(auditors)
    approver = UserFactory(username="april")
    approver.groups.add(approvers_of("smime-dual-use", "Dual-use approvers"))
    scoped = UserFactory(username="sally")
    scoped.groups.add(scope_officers_group("Sales officers"))
    return {
        "superuser": admin_user,
        "officer": officer,
        "recovery agent": key_recovery_agent_user,
        "staff": staff,
        "a permission": holder,
        "a group with permissions": member,
        "an approvers group": approver,
        "an officer scope's group": scoped,
    }[request.param]


@pytest.fixture
def key_recovery_agent_user(db) -> User:
    user = UserFactory(username="karl")
    user.groups.add(Group.objects.get_or_create(name="Key recovery agents")[0])
    return user


PRIVILEGED = [
    "superuser",
    "officer",
    "recovery agent",
    "staff",
    "a permission",
    "a group with permissions",
    "an approvers group",
    "an officer scope's group",
]


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


def test_a_help_desk_cannot_change_an_approvers_group(helpdesk, payroll):
    """Nor delete it: nobody may while a template names it (CertificateTemplate.approver_group
    protects it; the bulk action shows it as protected)."""
    client = client_for(helpdesk)

    change = client.post(f"{GROUPS}{payroll.pk}/change/", {"name": "Anything"})
    delete = client.post(f"{GROUPS}{payroll.pk}/delete/", {"post": "yes"})
    client.post(
        GROUPS, {"action": "delete_selected", "_selected_action": [payroll.pk], "post": "yes"}
    )

    assert (change.status_code, delete.status_code) == (403, 403)
    assert Group.objects.filter(pk=payroll.pk, name="Payroll approvers").exists()


def test_a_help_desk_puts_nobody_in_an_approvers_group(helpdesk, employee, officers, payroll):
    """Who is in it chooses which officers approve the template: a help desk that is an RA
    officer too would otherwise approve it themselves, and one filling it with employees
    would choose tomorrow's approvers."""
    helpdesk.groups.add(officers)
    client = client_for(helpdesk)

    for person in (employee, helpdesk):
        url = change_url(person)
        offered = client.get(url).context["adminform"].form.fields["groups"].queryset
        assert payroll not in offered
        response = client.post(url, form_data(client, url, groups=[str(payroll.pk)]))
        assert response.status_code == 200
        assert "groups" in response.context["adminform"].form.errors

    assert not payroll.user_set.exists()


def test_a_help_desk_saving_its_own_account_keeps_its_approvers_group(
    helpdesk, officers, payroll, signing_staff
):
    helpdesk.groups.add(officers, payroll)
    client = client_for(helpdesk)
    url = change_url(helpdesk)

    response = client.post(url, form_data(client, url, groups=[str(signing_staff.pk)]))

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert set(helpdesk.groups.values_list("name", flat=True)) == {
        "Help desk",
        "RA officers",
        "Payroll approvers",
        "Signing staff",
    }


def test_a_superuser_puts_an_officer_in_an_approvers_group(admin_client_, officer, payroll):
    url = change_url(officer)
    groups = [str(pk) for pk in officer.groups.values_list("pk", flat=True)]

    response = admin_client_.post(
        url, form_data(admin_client_, url, groups=[*groups, str(payroll.pk)])
    )

    assert response.status_code == 302
    assert payroll.user_set.filter(pk=officer.pk).exists()


def test_a_superuser_gives_a_group_permissions_and_a_role_name(admin_client_, signing_staff):
    response = admin_client_.post(
        f"{GROUPS}{signing_staff.pk}/change/",
        {"name": "RA officers", "permissions": [str(p.pk) for p in perms("view_user")]},
    )

    assert response.status_code == 302
    signing_staff.refresh_from_db()
    assert signing_staff.name == "RA officers"
    assert list(signing_staff.permissions.values_list("codename", flat=True)) == ["view_user"]


# --- an account that gains privilege starts afresh --------------------------------------


def signed_in_browser(user: User) -> Client:
    from tests.second_factor import verified_login

    user.refresh_from_db()  # the password and session generation the admin wrote
    client = verified_login(Client(), user)
    assert client.get("/certificates/").status_code == 200
    return client


def api_token(user: User) -> str:
    from knox.models import AuthToken

    return AuthToken.objects.create(user=user)[1]


def fresh_starts(user: User) -> list[dict[str, Any]]:
    from enrollment.models import AuditEvent

    return list(
        AuditEvent.objects.filter(action="account.fresh_start", object_id=str(user.pk))
        .order_by("pk")
        .values_list("detail", flat=True)
    )


def test_a_password_the_help_desk_set_does_not_survive_a_promotion(
    helpdesk, employee, officers, admin_client_
):
    """The help desk set the employee's password (its job) and could have set up their
    second factor and an API token as them; a superuser then makes them an officer."""
    from accounts.models import TotpDevice
    from tests.second_factor import authenticator

    assert (
        client_for(helpdesk)
        .post(
            f"{USERS}{employee.pk}/password/",
            {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"},
        )
        .status_code
        == 302
    )
    authenticator(employee)
    browser = signed_in_browser(employee)
    token = api_token(employee)
    url = change_url(employee)

    response = admin_client_.post(url, form_data(admin_client_, url, groups=[str(officers.pk)]))

    assert response.status_code == 302
    employee.refresh_from_db()
    assert list(employee.groups.all()) == [officers]
    assert not employee.has_usable_password()
    assert not TotpDevice.objects.filter(user=employee).exists()
    assert browser.get("/certificates/").status_code == 302  # signed out
    assert (
        Client().get("/api/v1/certificates/", HTTP_AUTHORIZATION=f"Token {token}").status_code
        == 401
    )
    [start] = fresh_starts(employee)
    assert start["password_unusable"] is True
    assert start["second_factor_removed"] is True
    assert start["tokens_deleted"] == 1
    assert start["source"] == "admin"


def test_a_password_a_superuser_set_survives_a_promotion_but_sessions_and_tokens_do_not(
    employee, officers, admin_client_
):
    from accounts.models import TotpDevice
    from tests.second_factor import authenticator

    assert (
        admin_client_.post(
            f"{USERS}{employee.pk}/password/",
            {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"},
        ).status_code
        == 302
    )
    authenticator(employee)
    browser = signed_in_browser(employee)
    token = api_token(employee)

    employee.groups.add(officers)

    employee.refresh_from_db()
    assert employee.check_password(NEW_PASSWORD)
    assert TotpDevice.objects.filter(user=employee).exists()
    assert browser.get("/certificates/").status_code == 302
    assert (
        Client().get("/api/v1/certificates/", HTTP_AUTHORIZATION=f"Token {token}").status_code
        == 401
    )
    [start] = fresh_starts(employee)
    assert start["password_unusable"] is False
    assert start["sessions_ended"] == 1


@pytest.mark.parametrize("how", ["staff", "superuser", "permission", "group permission"])
def test_every_way_of_gaining_privilege_starts_afresh(employee, signing_staff, how):
    employee.groups.add(signing_staff)
    token = api_token(employee)

    if how == "group permission":
        signing_staff.permissions.add(*perms("view_certificate"))
    elif how == "permission":
        employee.user_permissions.add(*perms("view_certificate"))
    else:
        setattr(employee, f"is_{how}", True)
        employee.save()

    assert (
        Client().get("/api/v1/certificates/", HTTP_AUTHORIZATION=f"Token {token}").status_code
        == 401
    )
    assert [start["tokens_deleted"] for start in fresh_starts(employee)] == [1]


def test_losing_privilege_or_a_plain_group_starts_nothing(officer, signing_staff):
    token = api_token(officer)

    officer.groups.add(signing_staff)
    officer.groups.remove(Group.objects.get(name="RA officers"))

    assert fresh_starts(officer) == []
    from knox.models import AuthToken

    assert AuthToken.objects.filter(user=officer).count() == 1
    assert token


# --- the owner is told what ended -----------------------------------------------------


def fresh_start_mail(user: User) -> list[Any]:
    return [m for m in mail.outbox if m.to == [user.email] and "new rights" in m.subject]


def test_a_promotion_tells_the_owner_what_ended_in_one_mail(
    helpdesk, employee, officers, admin_user, admin_client_, django_capture_on_commit_callbacks
):
    """Their scripts stop and their password goes without a word otherwise: revoking a
    token mails its owner (api_token_revoke), a fresh start deletes them directly."""
    from enrollment.models import ApiToken
    from tests.second_factor import authenticator

    client_for(helpdesk).post(
        f"{USERS}{employee.pk}/password/",
        {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"},
    )
    authenticator(employee)
    signed_in_browser(employee)
    api_token(employee)
    ApiToken.objects.filter(auth_token__user=employee).update(label="nightly export")
    api_token(employee)
    named, unnamed = (
        ApiToken.objects.get(label=label).auth_token.token_key for label in ("nightly export", "")
    )
    mail.outbox.clear()
    url = change_url(employee)
    data = form_data(admin_client_, url, groups=[str(officers.pk)])

    with django_capture_on_commit_callbacks(execute=True):
        assert admin_client_.post(url, data).status_code == 302

    [message] = [m for m in mail.outbox if m.to == [employee.email]]
    assert message in fresh_start_mail(employee)
    body = message.body
    assert "Hello Alice Andersson," in body
    assert (
        f"alice was given new rights (a role or a permission) by {admin_user.get_full_name()}."
        in body
    )
    assert "signed out of the portal (1 browser session)" in body
    assert f'"nightly export" (starting with {named})' in body
    assert f'"(no name)" (starting with {unnamed})' in body
    assert "were revoked" in body
    assert "https://portal.example.com/account/tokens/" in body
    assert "Your password no longer works" in body
    assert "Your second factor" in body
    assert [start["tokens_deleted"] for start in fresh_starts(employee)] == [2]


def test_a_password_that_survives_is_not_said_to_be_gone(
    employee, officers, django_capture_on_commit_callbacks
):
    api_token(employee)

    with django_capture_on_commit_callbacks(execute=True):
        employee.groups.add(officers)

    [message] = fresh_start_mail(employee)
    assert 'API token "(no name)"' in message.body
    assert " was revoked" in message.body
    assert "signed out" not in message.body  # never signed in
    assert "password" not in message.body
    assert "second factor" not in message.body


def test_nothing_ended_nothing_is_mailed(employee, officers, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        employee.groups.add(officers)

    assert fresh_start_mail(employee) == []


def test_the_mail_waits_for_the_commit(employee, officers, django_capture_on_commit_callbacks):
    api_token(employee)

    with django_capture_on_commit_callbacks() as callbacks:
        employee.groups.add(officers)
        assert fresh_start_mail(employee) == []

    assert fresh_start_mail(employee) == []
    for callback in callbacks:
        callback()
    assert len(fresh_start_mail(employee)) == 1


def test_a_grant_rolled_back_mails_nothing(employee, officers, django_capture_on_commit_callbacks):
    api_token(employee)

    with (
        django_capture_on_commit_callbacks(execute=True),
        contextlib.suppress(RuntimeError),
        transaction.atomic(),
    ):
        employee.groups.add(officers)
        raise RuntimeError("the directory sync failed half-way")

    assert fresh_start_mail(employee) == []


def test_the_help_desk_cannot_rename_an_account(helpdesk, employee):
    client = client_for(helpdesk)
    url = change_url(employee)
    assert "username" not in client.get(url).context["adminform"].form.fields

    response = client.post(url, form_data(client, url, username="future-officer"))

    assert response.status_code == 302
    employee.refresh_from_db()
    assert employee.username == "alice"


def test_the_help_desk_sees_a_privileged_account_read_only(helpdesk, officer):
    page = client_for(helpdesk).get(change_url(officer))

    assert page.status_code == 200
    assert page.context["has_change_permission"] is False


def test_a_group_a_template_is_restricted_to_is_a_superusers_to_delete(
    helpdesk, signing_staff, admin_client_, hierarchy
):
    from enrollment.models import AuditEvent, CertificateTemplate

    template = CertificateTemplate.objects.get(slug="smime-signing")
    template.allowed_groups.set([signing_staff])

    refused = client_for(helpdesk).post(f"{GROUPS}{signing_staff.pk}/delete/", {"post": "yes"})
    deleted = admin_client_.post(f"{GROUPS}{signing_staff.pk}/delete/", {"post": "yes"})

    assert refused.status_code == 403
    assert deleted.status_code == 302
    assert not template.allowed_groups.exists()  # open to everyone now: recorded
    [event] = AuditEvent.objects.filter(action="template.change")
    assert event.detail["changes"] == {"allowed_groups": [["Signing staff"], []]}
    assert event.actor_name == "root-admin"


def test_a_superuser_joining_a_role_stays_signed_in(admin_user, admin_client_, officers):
    """They hold everything already; ending their sessions would only sign them out of the
    page they granted it on."""
    url = change_url(admin_user)

    response = admin_client_.post(url, form_data(admin_client_, url, groups=[str(officers.pk)]))

    assert response.status_code == 302
    assert admin_client_.get(USERS).status_code == 200
    assert fresh_starts(admin_user) == []


# --- the account page links only where the viewer may go --------------------------------


def reset_url(user: User) -> str:
    return f"{USERS}{user.pk}/two-factor/reset/"


def test_a_privileged_account_seen_read_only_offers_no_password_or_reset_link(helpdesk, officer):
    """Both pages would refuse the help desk (403): no link to them."""
    from tests.second_factor import authenticator

    authenticator(officer)
    client = client_for(helpdesk)

    page = client.get(change_url(officer)).content.decode()

    assert "Authenticator app: confirmed, set up" in page  # what it has is still shown
    assert "../password/" not in page
    assert reset_url(officer) not in page
    assert client.get(f"{USERS}{officer.pk}/password/").status_code == 403
    assert client.get(reset_url(officer)).status_code == 403


def test_a_superuser_sees_the_password_and_reset_links_of_a_privileged_account(
    admin_client_, officer
):
    from tests.second_factor import authenticator

    authenticator(officer)

    page = admin_client_.get(change_url(officer)).content.decode()

    assert "../password/" in page
    assert reset_url(officer) in page
    assert admin_client_.get(f"{USERS}{officer.pk}/password/").status_code == 200
    assert admin_client_.get(reset_url(officer)).status_code == 200


def test_the_help_desk_sees_the_links_for_an_employee_and_no_reset_of_its_own(helpdesk, employee):
    """It may set an employee's password and reset their second factor, and set its own
    password, but never reset its own second factor (mfa.may_reset)."""
    from tests.second_factor import authenticator

    authenticator(employee)
    authenticator(helpdesk)
    client = client_for(helpdesk)

    theirs = client.get(change_url(employee)).content.decode()
    own = client.get(change_url(helpdesk)).content.decode()

    assert "../password/" in theirs
    assert reset_url(employee) in theirs
    assert "../password/" in own
    assert reset_url(helpdesk) not in own
    assert "Authenticator app: confirmed, set up" in own
    assert client.get(reset_url(helpdesk)).status_code == 403


# --- a group's page lists its members --------------------------------------------------


def group_url(group: Group) -> str:
    return f"{GROUPS}{group.pk}/change/"


def members_field(page) -> str:
    """The rendered Members line of a group's change page."""
    [line] = [
        field
        for fieldset in page.context["adminform"]
        for row in fieldset
        for field in row
        if isinstance(field.field, dict) and field.field["label"] == "Members"
    ]
    return str(line.contents())


def test_a_groups_page_lists_its_members_linked_to_their_accounts(
    helpdesk, signing_staff, employee, colleague
):
    signing_staff.user_set.add(employee, colleague)

    page = client_for(helpdesk).get(group_url(signing_staff))

    assert page.status_code == 200
    assert members_field(page) == (
        f'<a href="{change_url(employee)}">alice</a>, '
        f'<a href="{change_url(colleague)}">bob</a> (2).'
    )


def test_a_role_groups_members_are_shown_to_a_help_desk_that_may_only_view_it(
    helpdesk, officers, officer
):
    page = client_for(helpdesk).get(group_url(officers))

    assert page.status_code == 200
    assert page.context["has_change_permission"] is False
    assert members_field(page) == f'<a href="{change_url(officer)}">olivia</a> (1).'
    # The link leads somewhere it may go: the account, read-only.
    assert client_for(helpdesk).get(change_url(officer)).status_code == 200


def test_a_big_groups_page_shows_the_first_members_and_links_to_all_of_them(
    helpdesk, signing_staff
):
    from accounts.admin import PortalGroupAdmin

    shown = PortalGroupAdmin.MEMBERS_SHOWN
    people = [UserFactory(username=f"member{n:03d}") for n in range(shown + 3)]
    signing_staff.user_set.add(*people)
    client = client_for(helpdesk)

    line = members_field(client.get(group_url(signing_staff)))

    every = f"{USERS}?groups__id__exact={signing_staff.pk}"
    assert line.count("<a href=") == shown + 1
    assert f">member{shown - 1:03d}</a>" in line
    assert f">member{shown:03d}</a>" not in line
    assert line.endswith(f' and 3 more: <a href="{every}">all {shown + 3} members</a>.')
    listed = client.get(every)
    assert listed.status_code == 200
    assert listed.context["cl"].result_count == shown + 3


def test_a_viewer_who_may_not_open_accounts_sees_member_names_unlinked(signing_staff, employee):
    signing_staff.user_set.add(employee)
    viewer = UserFactory(username="vera", is_staff=True)
    viewer.user_permissions.add(*perms("view_group"))
    viewer.refresh_from_db()
    client = client_for(viewer)

    page = client.get(group_url(signing_staff))

    assert page.status_code == 200
    assert members_field(page) == "alice (1)."
    assert client.get(change_url(employee)).status_code == 403


def test_who_may_not_view_a_group_sees_no_members(signing_staff, employee):
    signing_staff.user_set.add(employee)
    staff = UserFactory(username="stan", is_staff=True)

    assert client_for(staff).get(group_url(signing_staff)).status_code == 403
    assert client_for(employee).get(group_url(signing_staff)).status_code == 302  # sign-in


def test_adding_a_group_shows_no_members_line(helpdesk):
    page = client_for(helpdesk).get(f"{GROUPS}add/")

    assert page.status_code == 200
    assert "Members" not in page.content.decode()


# --- a help desk's write and a promotion at the same moment (PostgreSQL) -----------------


def write(page: str, client: Client, user: User) -> tuple[str, dict[str, Any]]:
    """The help desk's POST to one of the pages that write an account, the page first
    opened as a browser would (which also leaves nothing slow for the first request of a
    thread, so the POST reaches its check while the other transaction is open)."""
    url = {
        "password": f"{USERS}{user.pk}/password/",
        "change": change_url(user),
        "second factor reset": reset_url(user),
        "delete": f"{USERS}{user.pk}/delete/",
    }[page]
    assert client.get(url).status_code == 200
    if page == "password":
        data = {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD, "usable_password": "true"}
    elif page == "change":
        data = form_data(client, url, email="taken-over@example.com")
    else:
        data = {"post": "yes"} if page == "delete" else {}
    return url, data


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@needs_row_locks
@pytest.mark.parametrize("page", ["password", "change", "second factor reset", "delete"])
def test_a_help_desk_write_waiting_on_a_promotion_sees_it_and_is_refused(
    helpdesk, employee, officers, page
):
    """The promotion has the account's row (its fresh start); the help desk's write waits
    for it to commit, then finds an officer it may not administer."""
    from accounts.models import TotpDevice
    from tests.second_factor import authenticator

    authenticator(employee)
    client = client_for(helpdesk)
    url, data = write(page, client, employee)
    before = User.objects.get(pk=employee.pk)
    promoted, release = threading.Event(), threading.Event()

    def promote() -> None:
        with transaction.atomic():
            employee.groups.add(officers)
            promoted.set()
            release.wait(timeout=30)  # an officer, not yet committed

    promoting, writing, waited = overlap(promote, promoted, release, lambda: client.post(url, data))

    assert waited  # on the account's row
    assert "error" not in promoting, promoting
    assert writing["value"].status_code == 403
    after = User.objects.get(pk=employee.pk)
    assert (after.password, after.email) == (before.password, before.email)
    assert TotpDevice.objects.filter(user=employee).exists()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@needs_row_locks
@pytest.mark.parametrize("had_password", [True, False], ids=["had a password", "had none"])
def test_a_promotion_waiting_on_a_help_desks_password_finds_it_and_makes_it_unusable(
    helpdesk, employee, officers, monkeypatch, had_password
):
    """The help desk judged the account plain and is setting its password (its job); the
    promotion waits for that to commit, then starts the account afresh without it, though
    the instance it was given was read before (an account without a password, say one
    that signs in through single sign-on, then has one)."""
    from accounts.admin import PortalUserAdmin

    if not had_password:
        employee.set_unusable_password()
        employee.save()
    client = client_for(helpdesk)
    decided, release = threading.Event(), threading.Event()
    check = PortalUserAdmin.has_change_permission

    def check_then_hold(self, request, obj=None):  # type: ignore[no-untyped-def]
        allowed = check(self, request, obj)
        if obj is not None and request.method == "POST" and not decided.is_set():
            decided.set()  # judged plain; the password not yet set
            release.wait(timeout=30)
        return allowed

    monkeypatch.setattr(PortalUserAdmin, "has_change_permission", check_then_hold)
    url, data = write("password", client, employee)

    def promote() -> None:
        with transaction.atomic():
            employee.groups.add(officers)

    writing, promoting, waited = overlap(lambda: client.post(url, data), decided, release, promote)

    assert waited  # on the account's row
    assert "error" not in promoting, promoting
    assert writing["value"].status_code == 302  # a plain account when it was set
    employee.refresh_from_db()
    assert list(employee.groups.all()) == [officers]
    assert not employee.has_usable_password()
    [start] = fresh_starts(employee)
    assert start["password_unusable"] is True


# --- a plain group a role group setting is later pointed at ------------------------------


@pytest.fixture
def auditors_filled_by_the_help_desk(helpdesk, employee) -> Group:
    """A plain group the help desk made and filled, as it may: no role by that name yet."""
    client = client_for(helpdesk)
    assert client.post(f"{GROUPS}add/", {"name": "pki-auditors"}).status_code == 302
    group = Group.objects.get(name="pki-auditors")
    url = change_url(employee)
    assert client.post(url, form_data(client, url, groups=[str(group.pk)])).status_code == 302
    return group


def role_checks() -> list[Any]:
    from enrollment.checks import role_group_members_were_granted

    return role_group_members_were_granted(databases=["default"])


def test_a_role_setting_pointed_at_a_group_the_help_desk_filled_names_its_members(
    auditors_filled_by_the_help_desk, settings
):
    from io import StringIO

    from django.core.management import call_command

    settings.PKIPORTAL_KRA_GROUP = "pki-auditors"

    [warning] = role_checks()
    out = StringIO()
    call_command("check", "--database", "default", stdout=out, stderr=out)

    assert warning.id == "pkiportal.W013"
    assert "PKIPORTAL_KRA_GROUP names the group 'pki-auditors'" in warning.msg
    assert "1 of its members" in warning.msg
    assert ": alice." in warning.msg
    assert "pkiportal.W013" in out.getvalue()
    assert "alice" in out.getvalue()


def test_the_role_groups_check_reads_the_database_only_when_asked(
    auditors_filled_by_the_help_desk, settings
):
    """Like Django's own database checks: not on every command, only migrate and
    check --database."""
    from enrollment.checks import role_group_members_were_granted

    settings.PKIPORTAL_KRA_GROUP = "pki-auditors"

    assert role_group_members_were_granted(databases=None) == []


def test_members_who_joined_a_role_group_as_such_are_not_named(officer, key_recovery_agent_user):
    assert role_checks() == []


def test_a_member_given_the_role_again_by_a_superuser_is_no_longer_named(
    auditors_filled_by_the_help_desk, employee, admin_client_, settings
):
    settings.PKIPORTAL_KRA_GROUP = "pki-auditors"
    api_token(employee)
    url = change_url(employee)
    group = auditors_filled_by_the_help_desk

    removed = admin_client_.post(url, form_data(admin_client_, url, groups=[]))
    added = admin_client_.post(url, form_data(admin_client_, url, groups=[str(group.pk)]))

    assert (removed.status_code, added.status_code) == (302, 302)
    assert role_checks() == []
    [start] = fresh_starts(employee)  # what the silent binding never did
    assert start["tokens_deleted"] == 1


def test_a_member_removed_from_the_role_and_put_back_while_the_group_was_plain_is_named(
    officer, officers, settings
):
    """The newest recorded word counts: a grant long ago does not cover a silent return
    after a recorded removal."""
    officer.groups.remove(officers)  # recorded: role.revoke
    settings.PKIPORTAL_RA_OFFICER_GROUP = "Officers elsewhere"
    officer.groups.add(officers)  # a plain group meanwhile: nothing recorded
    settings.PKIPORTAL_RA_OFFICER_GROUP = "RA officers"

    [warning] = role_checks()

    assert warning.id == "pkiportal.W013"
    assert ": olivia." in warning.msg


def test_a_long_list_of_members_is_cut_short_with_a_count(
    auditors_filled_by_the_help_desk, colleague, settings, monkeypatch
):
    from enrollment import checks

    monkeypatch.setattr(checks, "MEMBERS_NAMED", 1)
    auditors_filled_by_the_help_desk.user_set.add(colleague)
    settings.PKIPORTAL_RA_OFFICER_GROUP = "pki-auditors"

    [warning] = role_checks()

    assert "2 of its members" in warning.msg
    assert ": alice and 1 more." in warning.msg
