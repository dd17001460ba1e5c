"""Privileged changes made outside the services leave audit events (enrollment.change_audit).

Templates edited in the admin; role group memberships, permissions, is_staff and
is_superuser however they change (the admin, single sign-on, commands, code). Each path
writes exactly the expected event, with its actor, and the chain still verifies.
"""

from __future__ import annotations

from typing import Any

import pytest

from django.contrib.auth.models import Group
from django.db import transaction
from django.forms import CheckboxInput, ModelMultipleChoiceField, MultiWidget

from accounts.sso import mirror_groups
from enrollment.audit import audit_chain_breaks
from enrollment.change_audit import template_record, template_state
from enrollment.models import AuditEvent, CertificateTemplate
from enrollment.x509.keys import KeyAlgorithm
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

OFFICERS = "RA officers"
AGENTS = "Key recovery agents"
ADDRESS = "192.0.2.7"


@pytest.fixture
def officers(db) -> Group:
    return Group.objects.get_or_create(name=OFFICERS)[0]


@pytest.fixture
def agents(db) -> Group:
    return Group.objects.get_or_create(name=AGENTS)[0]


@pytest.fixture
def finance(db) -> Group:
    return Group.objects.create(name="Finance")


@pytest.fixture
def mark(db):
    """The events written after this point, oldest first."""
    start = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0

    def since() -> list[AuditEvent]:
        return list(AuditEvent.objects.filter(id__gt=start).order_by("id"))

    return since


@pytest.fixture(autouse=True)
def _chain_verifies(db):
    yield
    assert list(audit_chain_breaks()) == []


def summary(events: list[AuditEvent]) -> list[tuple[str, str, str, dict[str, Any]]]:
    return [(e.action, e.actor_name, e.object_repr, e.detail) for e in events]


def form_data(response) -> dict[str, Any]:
    """The POST an admin page's form would send unchanged."""
    form = response.context["adminform"].form
    data: dict[str, Any] = {}
    for name, field in form.fields.items():
        if field.disabled:
            continue
        value = form[name].value()
        if isinstance(field.widget, CheckboxInput):
            if value:
                data[name] = "on"
        elif isinstance(field.widget, MultiWidget):
            for i, part in enumerate(field.widget.decompress(value)):
                data[f"{name}_{i}"] = "" if part is None else str(part)
        elif isinstance(field, ModelMultipleChoiceField):
            data[name] = [str(getattr(v, "pk", v)) for v in value or []]
        else:
            data[name] = "" if value is None else value
    return data


def admin_post(client, url: str, **changes: Any):
    data = form_data(client.get(url))
    for name, value in changes.items():
        if value is False:
            data.pop(name, None)
        else:
            data[name] = "on" if value is True else value
    response = client.post(url, data, REMOTE_ADDR=ADDRESS)
    assert response.status_code == 302, response.context["adminform"].form.errors
    return response


# --- certificate templates in the admin -----------------------------------------------


def test_switching_key_archival_off_is_audited_with_old_and_new(admin_client_, admin_user, mark):
    template = CertificateTemplate.objects.get(slug="smime-encryption")
    assert template.archive_key

    admin_post(
        admin_client_,
        f"/admin/enrollment/certificatetemplate/{template.pk}/change/",
        archive_key=False,
        validity_days="200",
    )

    (event,) = mark()
    assert event.action == "template.change"
    assert event.actor == admin_user
    assert event.source_address == ADDRESS
    assert (event.object_type, event.object_id) == (
        "enrollment.CertificateTemplate",
        str(template.pk),
    )
    assert event.detail == {
        "slug": "smime-encryption",
        "changes": {"archive_key": [True, False], "validity_days": [template.validity_days, 200]},
    }


def test_changing_who_may_enrol_is_audited_by_group_name(admin_client_, finance, mark):
    template = CertificateTemplate.objects.get(slug="smime-signing")

    admin_post(
        admin_client_,
        f"/admin/enrollment/certificatetemplate/{template.pk}/change/",
        allowed_groups=[str(finance.pk)],
    )

    (event,) = mark()
    assert event.detail["changes"] == {"allowed_groups": [[], ["Finance"]]}


def test_saving_a_template_unchanged_writes_nothing(admin_client_, mark):
    template = CertificateTemplate.objects.get(slug="smime-dual-use")

    admin_post(admin_client_, f"/admin/enrollment/certificatetemplate/{template.pk}/change/")

    assert mark() == []


def test_an_unknown_key_algorithm_is_refused_before_anything_changes(admin_client_, mark):
    """Read on every enrolment: a typo here would have failed every request for it."""
    template = CertificateTemplate.objects.get(slug="smime-signing")
    url = f"/admin/enrollment/certificatetemplate/{template.pk}/change/"
    data = form_data(admin_client_.get(url))
    data["allowed_key_algorithms"] = ["ec-p256", "rsa-1024"]  # a forged box

    response = admin_client_.post(url, data)

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["allowed_key_algorithms"]
    assert "rsa-1024 is not one of the available choices" in errors[0]
    assert CertificateTemplate.objects.get(pk=template.pk).allowed_key_algorithms == []
    assert mark() == []


def test_key_algorithms_are_boxes_kept_in_their_own_order(admin_client_, mark):
    template = CertificateTemplate.objects.get(slug="smime-signing")
    url = f"/admin/enrollment/certificatetemplate/{template.pk}/change/"
    page = admin_client_.get(url).content.decode()
    assert page.count('type="checkbox" name="allowed_key_algorithms"') == len(KeyAlgorithm)

    admin_post(admin_client_, url, allowed_key_algorithms=["ec-p256", "rsa-3072"])

    assert CertificateTemplate.objects.get(pk=template.pk).allowed_key_algorithms == [
        "rsa-3072",
        "ec-p256",
    ]
    (event,) = mark()
    assert event.detail["changes"] == {"allowed_key_algorithms": [[], ["rsa-3072", "ec-p256"]]}

    admin_post(admin_client_, url, allowed_key_algorithms=False)  # none ticked: all of them

    assert CertificateTemplate.objects.get(pk=template.pk).allowed_key_algorithms == []


def test_creating_a_template_is_audited_with_every_setting(admin_client_, admin_user, mark):
    data = form_data(admin_client_.get("/admin/enrollment/certificatetemplate/add/"))
    data.update(name="Escrowed mail", slug="escrowed-mail", purpose="encryption")
    data.update(archive_key="on", validity_days="365", allowed_key_algorithms=["rsa-3072"])
    data.pop("allow_csr", None)

    response = admin_client_.post("/admin/enrollment/certificatetemplate/add/", data)

    assert response.status_code == 302
    (event,) = mark()
    assert (event.action, event.actor, event.object_repr) == (
        "template.create",
        admin_user,
        "Escrowed mail",
    )
    changes = event.detail["changes"]
    assert changes["archive_key"] == [None, True]
    assert changes["allow_csr"] == [None, False]
    assert changes["slug"] == [None, "escrowed-mail"]
    assert changes["allowed_groups"] == [None, []]
    assert changes["allowed_key_algorithms"] == [None, ["rsa-3072"]]


def test_deleting_a_template_is_audited_with_what_it_said(admin_client_, admin_user, mark):
    template = CertificateTemplate.objects.create(
        name="Old", slug="old", purpose="signing", validity_days=30
    )

    response = admin_client_.post(
        f"/admin/enrollment/certificatetemplate/{template.pk}/delete/", {"post": "yes"}
    )

    assert response.status_code == 302
    assert not CertificateTemplate.objects.filter(pk=template.pk).exists()
    (event,) = mark()
    assert (event.action, event.actor, event.object_id) == (
        "template.delete",
        admin_user,
        str(template.pk),
    )
    assert event.detail["changes"]["validity_days"] == [30, None]


def test_the_bulk_delete_action_audits_each_template(admin_client_, mark):
    made = [
        CertificateTemplate.objects.create(name=n, slug=n, purpose="signing") for n in ("a", "b")
    ]

    response = admin_client_.post(
        "/admin/enrollment/certificatetemplate/",
        {"action": "delete_selected", "_selected_action": [t.pk for t in made], "post": "yes"},
    )

    assert response.status_code == 302
    assert [(e.action, e.object_repr) for e in mark()] == [
        ("template.delete", "a"),
        ("template.delete", "b"),
    ]


# --- role group memberships -----------------------------------------------------------


def role(action: str, username: str, group: str, source: str = "other", actor: str = "system"):
    return (action, actor, username, {"group": group, "source": source})


def test_adding_and_removing_a_role_in_code_is_the_systems(officers, mark):
    user = UserFactory(username="ursula")

    user.groups.add(officers)
    user.groups.remove(officers)

    events = mark()
    assert summary(events) == [
        role("role.grant", "ursula", OFFICERS),
        role("role.revoke", "ursula", OFFICERS),
    ]
    assert events[0].actor is None
    assert (events[0].object_type, events[0].object_id) == ("accounts.User", str(user.pk))


def test_the_reverse_side_and_clear_are_audited_per_member(officers, agents, mark):
    ann, ben = UserFactory(username="ann"), UserFactory(username="ben")

    officers.user_set.add(ann, ben)
    agents.user_set.add(ann)
    officers.user_set.clear()
    ann.groups.clear()

    assert summary(mark()) == [
        role("role.grant", "ann", OFFICERS),
        role("role.grant", "ben", OFFICERS),
        role("role.grant", "ann", AGENTS),
        role("role.revoke", "ann", OFFICERS),
        role("role.revoke", "ben", OFFICERS),
        role("role.revoke", "ann", AGENTS),
    ]


def test_only_real_changes_are_recorded(officers, agents, mark):
    user = UserFactory(username="ursula")
    user.groups.add(officers)
    first = mark()

    user.groups.add(officers)  # already a member
    user.groups.remove(agents)  # never was one
    user.groups.set([officers, agents])

    assert summary(mark()[len(first) :]) == [role("role.grant", "ursula", AGENTS)]


def test_a_group_that_is_not_a_role_writes_nothing(finance, mark):
    user = UserFactory(username="ursula")

    user.groups.add(finance)
    finance.user_set.add(UserFactory(username="vic"))
    user.groups.remove(finance)
    finance.user_set.clear()
    finance.name = "Treasury"
    finance.save()
    finance.delete()

    assert mark() == []


def test_a_rolled_back_grant_leaves_no_event(officers, mark):
    user = UserFactory(username="ursula")

    def grant_then_fail() -> None:
        with transaction.atomic():
            user.groups.add(officers)
            raise RuntimeError

    with pytest.raises(RuntimeError):
        grant_then_fail()

    assert mark() == []
    assert not user.groups.exists()


def test_renaming_a_group_into_or_out_of_a_role_is_audited(finance, officers, mark):
    UserFactory(username="ann").groups.add(finance)
    officers.delete()  # no members: nothing to record

    finance.name = OFFICERS
    finance.save()
    finance.name = "Finance"
    finance.save()

    assert summary(mark()) == [
        role("role.grant", "ann", OFFICERS),
        role("role.revoke", "ann", OFFICERS),
    ]


def test_single_sign_on_mirroring_is_audited_as_sso(db, mark):
    user = UserFactory(username="dora")

    mirror_groups(user, [OFFICERS, "Everyone"])
    mirror_groups(user, [AGENTS])

    assert summary(mark()) == [
        role("role.grant", "dora", OFFICERS, source="sso"),
        role("role.grant", "dora", AGENTS, source="sso"),
        role("role.revoke", "dora", OFFICERS, source="sso"),
    ]


# --- accounts and groups in the admin -------------------------------------------------


def test_the_admin_granting_a_role_and_superuser_is_audited_as_theirs(
    admin_client_, admin_user, officers, finance, mark
):
    user = UserFactory(username="ursula")

    admin_post(
        admin_client_,
        f"/admin/accounts/user/{user.pk}/change/",
        groups=[str(officers.pk), str(finance.pk)],
        is_superuser=True,
    )

    events = mark()
    assert summary(events) == [
        (
            "account.change",
            "root-admin",
            "ursula",
            {
                "changes": {"is_superuser": [False, True]},
                "source": "admin",
            },
        ),
        role("role.grant", "ursula", OFFICERS, source="admin", actor="root-admin"),
    ]
    assert {e.actor for e in events} == {admin_user}
    assert {e.source_address for e in events} == {ADDRESS}


def test_the_admin_revoking_a_role_and_staff_is_audited(admin_client_, officers, mark):
    user = UserFactory(username="ursula", is_staff=True)
    user.groups.add(officers)
    first = mark()

    admin_post(admin_client_, f"/admin/accounts/user/{user.pk}/change/", groups=[], is_staff=False)

    assert summary(mark()[len(first) :]) == [
        (
            "account.change",
            "root-admin",
            "ursula",
            {
                "changes": {"is_staff": [True, False]},
                "source": "admin",
            },
        ),
        role("role.revoke", "ursula", OFFICERS, source="admin", actor="root-admin"),
    ]


def test_the_admin_changing_other_fields_writes_nothing(admin_client_, officers, mark):
    user = UserFactory(username="ursula")
    user.groups.add(officers)
    first = mark()

    admin_post(admin_client_, f"/admin/accounts/user/{user.pk}/change/", last_name="Renamed")

    assert mark()[len(first) :] == []


def test_deleting_a_role_group_in_the_admin_revokes_each_member(admin_client_, officers, mark):
    officers.user_set.add(UserFactory(username="ann"), UserFactory(username="ben"))
    first = mark()

    response = admin_client_.post(f"/admin/auth/group/{officers.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert summary(mark()[len(first) :]) == [
        role("role.revoke", "ann", OFFICERS, source="admin", actor="root-admin"),
        role("role.revoke", "ben", OFFICERS, source="admin", actor="root-admin"),
    ]


def test_deleting_an_account_that_holds_roles_revokes_them(
    admin_client_, officers, agents, finance, mark
):
    user = UserFactory(username="vera")
    user.groups.add(officers, agents, finance)
    plain = UserFactory(username="walt")
    plain.groups.add(finance)
    first = mark()

    response = admin_client_.post(f"/admin/accounts/user/{user.pk}/delete/", {"post": "yes"})
    plain.delete()  # holds no role: nothing to record

    assert response.status_code == 302
    assert summary(mark()[len(first) :]) == [
        role("role.revoke", "vera", AGENTS, source="admin", actor="root-admin"),
        role("role.revoke", "vera", OFFICERS, source="admin", actor="root-admin"),
    ]


# --- permissions, and groups that hold them ---------------------------------------------


def perm(action: str, holder: str, permission: str, source: str = "other", actor: str = "system"):
    return (action, actor, holder, {"permission": permission, "source": source})


def permission(codename: str):
    from django.contrib.auth.models import Permission

    return Permission.objects.get(codename=codename)


def test_permissions_given_and_taken_in_code_are_audited_on_both_sides(finance, mark):
    user = UserFactory(username="ursula")
    change_template, view_ca = (
        permission("change_certificatetemplate"),
        permission("view_certificateauthority"),
    )

    user.user_permissions.add(change_template)
    finance.permissions.add(change_template, view_ca)
    view_ca.user_set.add(user)
    change_template.group_set.remove(finance)
    user.user_permissions.clear()
    finance.permissions.remove(change_template)  # no longer held: nothing to record

    assert summary(mark()) == [
        perm("permission.grant", "ursula", "enrollment.change_certificatetemplate"),
        perm("permission.grant", "Finance", "enrollment.change_certificatetemplate"),
        perm("permission.grant", "Finance", "enrollment.view_certificateauthority"),
        perm("permission.grant", "ursula", "enrollment.view_certificateauthority"),
        perm("permission.revoke", "Finance", "enrollment.change_certificatetemplate"),
        perm("permission.revoke", "ursula", "enrollment.change_certificatetemplate"),
        perm("permission.revoke", "ursula", "enrollment.view_certificateauthority"),
    ]


def test_joining_and_leaving_a_group_that_holds_permissions_is_audited_as_a_role(finance, mark):
    """Such a group confers its permissions on its members: a role in all but name."""
    finance.permissions.add(permission("change_certificatetemplate"))
    ann, ben = UserFactory(username="ann"), UserFactory(username="ben")
    first = mark()

    ann.groups.add(finance)
    finance.user_set.add(ben)
    ann.groups.remove(finance)
    finance.delete()

    assert summary(mark()[len(first) :]) == [
        role("role.grant", "ann", "Finance"),
        role("role.grant", "ben", "Finance"),
        role("role.revoke", "ann", "Finance"),
        role("role.revoke", "ben", "Finance"),
    ]


def test_the_admin_giving_a_group_a_permission_is_audited_as_theirs(
    admin_client_, admin_user, finance, mark
):
    change_template = permission("change_certificatetemplate")

    admin_post(
        admin_client_,
        f"/admin/auth/group/{finance.pk}/change/",
        permissions=[str(change_template.pk)],
    )
    events = mark()
    admin_post(admin_client_, f"/admin/auth/group/{finance.pk}/change/", permissions=[])

    assert summary(events) == [
        perm(
            "permission.grant",
            "Finance",
            "enrollment.change_certificatetemplate",
            source="admin",
            actor="root-admin",
        )
    ]
    assert summary(mark()[len(events) :]) == [
        perm(
            "permission.revoke",
            "Finance",
            "enrollment.change_certificatetemplate",
            source="admin",
            actor="root-admin",
        )
    ]
    assert {e.actor for e in mark()} == {admin_user}
    assert {e.source_address for e in mark()} == {ADDRESS}
    assert {(e.object_type, e.object_id) for e in mark()} == {("auth.Group", str(finance.pk))}


def test_deleting_an_account_records_the_permissions_it_held(admin_client_, mark):
    user = UserFactory(username="vera")
    user.user_permissions.add(permission("change_certificatetemplate"))
    first = mark()

    response = admin_client_.post(f"/admin/accounts/user/{user.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert summary(mark()[len(first) :]) == [
        perm(
            "permission.revoke",
            "vera",
            "enrollment.change_certificatetemplate",
            source="admin",
            actor="root-admin",
        )
    ]


# --- a template's approvers group -------------------------------------------------------

PAYROLL = "Payroll approvers"


@pytest.fixture
def payroll(db) -> Group:
    """The group S/MIME Signing names as its approvers: who is in it decides which RA
    officers approve that template's requests."""
    group = Group.objects.create(name=PAYROLL)
    CertificateTemplate.objects.filter(slug="smime-signing").update(approver_group=group)
    return group


def test_joining_and_leaving_an_approvers_group_is_audited_as_a_role(payroll, officers, mark):
    ann, ben = UserFactory(username="ann"), UserFactory(username="ben")
    ann.groups.add(officers)
    first = mark()

    ann.groups.add(payroll)
    payroll.user_set.add(ben)
    ann.groups.remove(payroll)
    payroll.user_set.clear()

    assert summary(mark()[len(first) :]) == [
        role("role.grant", "ann", PAYROLL),
        role("role.grant", "ben", PAYROLL),
        role("role.revoke", "ann", PAYROLL),
        role("role.revoke", "ben", PAYROLL),
    ]


def test_a_group_no_template_names_any_longer_is_plain_again(payroll, mark):
    CertificateTemplate.objects.filter(approver_group=payroll).update(approver_group=None)
    first = mark()

    payroll.user_set.add(UserFactory(username="ann"))
    UserFactory(username="ben").groups.add(payroll)

    assert mark()[len(first) :] == []


def test_the_admin_adding_and_removing_an_approver_is_audited_as_theirs(
    admin_client_, admin_user, officers, payroll, mark
):
    user = UserFactory(username="ursula")
    user.groups.add(officers)
    first = mark()
    url = f"/admin/accounts/user/{user.pk}/change/"

    admin_post(admin_client_, url, groups=[str(officers.pk), str(payroll.pk)])
    admin_post(admin_client_, url, groups=[str(officers.pk)])

    events = mark()[len(first) :]
    assert summary(events) == [
        role("role.grant", "ursula", PAYROLL, source="admin", actor="root-admin"),
        role("role.revoke", "ursula", PAYROLL, source="admin", actor="root-admin"),
    ]
    assert {e.actor for e in events} == {admin_user}
    assert {e.source_address for e in events} == {ADDRESS}


def test_deleting_an_approver_revokes_the_membership(admin_client_, payroll, mark):
    user = UserFactory(username="vera")
    user.groups.add(payroll)
    first = mark()

    response = admin_client_.post(f"/admin/accounts/user/{user.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert summary(mark()[len(first) :]) == [
        role("role.revoke", "vera", PAYROLL, source="admin", actor="root-admin")
    ]


def test_joining_an_approvers_group_alone_starts_nobody_afresh(payroll, officers, mark):
    """An officer's sessions and tokens carry the officer's power already (the role's grant
    started them afresh); someone who is no officer gains nothing by it. Joining the role
    in the same change still starts them afresh."""
    from knox.models import AuthToken

    ann, ben = UserFactory(username="ann"), UserFactory(username="ben")
    ann.groups.add(officers)
    AuthToken.objects.create(user=ann)
    AuthToken.objects.create(user=ben)
    first = mark()

    ann.groups.add(payroll)
    ben.groups.add(payroll, officers)

    assert [(e.action, e.object_repr) for e in mark()[len(first) :]] == [
        ("role.grant", "ann"),
        ("role.grant", "ben"),
        ("role.grant", "ben"),
        ("account.fresh_start", "ben"),
    ]
    assert AuthToken.objects.filter(user=ann).count() == 1
    assert not AuthToken.objects.filter(user=ben).exists()


def approver(action: str, username: str, group: str, template: str, **by: str):
    """A role event of a member whose template names their group, or stops naming it."""
    source, actor = by.get("source", "other"), by.get("actor", "system")
    return (action, actor, username, {"group": group, "source": source, "template": template})


def test_the_admin_naming_a_templates_approvers_grants_and_revokes_their_members(
    admin_client_, admin_user, payroll, finance, mark
):
    """Their members gain or lose the power to decide its requests, as joining or leaving
    the group would give or take it; nobody starts afresh."""
    from knox.models import AuthToken

    ann, ben, cy = (UserFactory(username=name) for name in ("ann", "ben", "cy"))
    payroll.user_set.add(ann, ben)
    finance.user_set.add(cy)
    AuthToken.objects.create(user=ann)
    template = CertificateTemplate.objects.get(slug="smime-dual-use")
    url = f"/admin/enrollment/certificatetemplate/{template.pk}/change/"
    first = mark()

    admin_post(admin_client_, url, approver_group=str(payroll.pk))
    admin_post(admin_client_, url, approver_group=str(finance.pk))
    admin_post(admin_client_, url, approver_group="")

    events = mark()[len(first) :]
    by = {"source": "admin", "actor": "root-admin"}
    assert [e.action for e in events if e.action == "template.change"] == ["template.change"] * 3
    assert summary([e for e in events if e.action != "template.change"]) == [
        approver("role.grant", "ann", PAYROLL, "smime-dual-use", **by),
        approver("role.grant", "ben", PAYROLL, "smime-dual-use", **by),
        approver("role.revoke", "ann", PAYROLL, "smime-dual-use", **by),
        approver("role.revoke", "ben", PAYROLL, "smime-dual-use", **by),
        approver("role.grant", "cy", "Finance", "smime-dual-use", **by),
        approver("role.revoke", "cy", "Finance", "smime-dual-use", **by),
    ]
    assert [e.action for e in events][:3] == ["template.change", "role.grant", "role.grant"]
    assert {e.actor for e in events} == {admin_user}
    assert {e.source_address for e in events} == {ADDRESS}
    assert AuthToken.objects.filter(user=ann).count() == 1


def change_approvers(template: CertificateTemplate, group: Group | None, **audit: Any) -> None:
    """What the admin does: save the template, then record the change."""
    before = template_state(template)
    template.approver_group = group
    template.save()
    template_record(
        action="template.change",
        template=template,
        before=before,
        after=template_state(template),
        actor=audit.get("actor"),
        source_address=audit.get("source_address"),
    )


def test_recording_a_change_of_approvers_in_code_grants_in_its_transaction(payroll, finance, mark):
    """The role events are written with the template's, and are gone if it is undone."""
    ann = UserFactory(username="ann")
    finance.user_set.add(ann)
    template = CertificateTemplate.objects.get(slug="smime-signing")  # Payroll's, empty
    first = mark()

    written: list[str] = []

    def undone() -> None:
        with transaction.atomic():
            change_approvers(template, finance)
            written.extend(e.action for e in mark()[len(first) :])
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        undone()
    assert written == ["template.change", "role.grant"]
    assert mark()[len(first) :] == []

    template.refresh_from_db()
    change_approvers(template, finance, source_address=ADDRESS)

    events = mark()[len(first) :]
    assert events[0].detail["changes"] == {"approver_group": [PAYROLL, "Finance"]}
    assert summary(events[1:]) == [approver("role.grant", "ann", "Finance", "smime-signing")]
    assert events[1].source_address == ADDRESS


def test_a_change_that_leaves_the_approvers_alone_grants_nothing(payroll, mark):
    payroll.user_set.add(UserFactory(username="ann"))
    template = CertificateTemplate.objects.get(slug="smime-signing")
    first = mark()

    before = template_state(template)
    template.validity_days += 1
    template.save()
    template_record(
        action="template.change",
        template=template,
        before=before,
        after=template_state(template),
        actor=None,
        source_address=None,
    )

    assert [e.action for e in mark()[len(first) :]] == ["template.change"]


# --- is_staff and is_superuser outside the admin ----------------------------------------


def privileges(username: str, changes: dict[str, list[bool]], source: str = "other"):
    return ("account.change", "system", username, {"changes": changes, "source": source})


def test_createsuperuser_is_audited(mark):
    from django.core.management import call_command

    call_command("createsuperuser", username="root2", email="root2@example.com", interactive=False)

    assert summary(mark()) == [
        privileges("root2", {"is_staff": [False, True], "is_superuser": [False, True]})
    ]


def test_privileges_changed_in_code_are_audited_and_other_saves_are_not(mark):
    from django.contrib.auth.models import update_last_login

    user = UserFactory(username="ursula")
    user.is_staff = True
    user.save()
    user.last_name = "Renamed"
    user.save()
    update_last_login(None, user)  # a sign-in: saves last_login alone
    user.is_superuser = True
    user.save(update_fields=["last_name"])  # not saved, so not changed
    user.is_superuser = False
    user.is_staff = False
    user.save(update_fields=["is_staff"])

    assert summary(mark()) == [
        privileges("ursula", {"is_staff": [False, True]}),
        privileges("ursula", {"is_staff": [True, False]}),
    ]


# --- is_active: switching an account off starts its certificates' revocation -----------


def test_switching_an_account_off_and_on_is_audited_however_it_is_done(admin_client_, mark):
    user = UserFactory(username="ursula")
    UserFactory(username="victor")  # a new active account: nothing to record
    first = mark()

    admin_post(admin_client_, f"/admin/accounts/user/{user.pk}/change/", groups=[], is_active=False)
    user.refresh_from_db()
    user.is_active = True
    user.save(update_fields=["is_active"])
    UserFactory(username="wanda", is_active=False)  # created switched off

    assert summary(mark()[len(first) :]) == [
        (
            "account.change",
            "root-admin",
            "ursula",
            {"changes": {"is_active": [True, False]}, "source": "admin"},
        ),
        privileges("ursula", {"is_active": [False, True]}),
        privileges("wanda", {"is_active": [True, False]}),
    ]
