"""A template may name who approves its requests (CertificateTemplate.approver_group): then
only the RA officers in that group, and superusers, decide them. The service refuses the
others; the queue shows them those requests read-only, on asking; only the approvers are
mailed and see them on the console's panel; a group without an officer is warned of on the
console, in /health/ and in the admin; the API and roll-outs follow the same rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from django.contrib.auth.models import Group
from django.core import mail
from django.db import connection
from django.db.models import ProtectedError
from django.test.utils import CaptureQueriesContext

from enrollment import keystore, permissions, rollouts, services
from enrollment.exceptions import NotPermitted
from enrollment.models import (
    ApprovalNoticeDigest,
    AuditEvent,
    CertificateRequest,
    CertificateTemplate,
    SharedMailbox,
)
from enrollment.tasks import approval_notice_digests_task
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for
from tests.enrollment.api_tools import PENDING, request_url, token_client
from tests.enrollment.test_change_audit import admin_post
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
QUEUE = "/ra/requests/"
DECIDED_BY = "Decided by members of HR approvers."


@pytest.fixture
def hr(officer) -> Group:
    """The approvers of the HR template: Olivia (an RA officer) and a plain employee."""
    group = Group.objects.create(name="HR approvers")
    group.user_set.add(officer, UserFactory(username="hank"))
    return group


@pytest.fixture
def hr_template(hierarchy, approval, hr) -> CertificateTemplate:
    """S/MIME Signing, needing approval by the HR approvers."""
    chosen = approval("smime-signing")
    chosen.approver_group = hr
    chosen.save()
    return chosen


@pytest.fixture
def open_template(hierarchy, approval) -> CertificateTemplate:
    """S/MIME Dual-use, needing approval by any officer (no group)."""
    return approval("smime-dual-use")


def submit(who, template) -> CertificateRequest:
    return services.request_submit(
        requester=who, template=template, key_algorithm=KeyAlgorithm.EC_P256, channel="web"
    )


@pytest.fixture
def hr_request(hr_template, employee) -> CertificateRequest:
    return submit(employee, hr_template)


def decision(verb: str, request, officer):
    if verb == "approve":
        return services.request_approve(request=request, officer=officer, reason="ok")
    return services.request_reject(request=request, officer=officer, reason="no")


# --- the service decides ----------------------------------------------------------------


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_an_officer_outside_the_approvers_group_is_refused_and_nothing_changes(
    hr_request, second_officer, verb
):
    with pytest.raises(NotPermitted) as refused:
        decision(verb, hr_request, second_officer)

    assert refused.value.message == (
        "Requests for S/MIME Signing are decided by the members of HR approvers, and you "
        "are not one of them."
    )
    hr_request.refresh_from_db()
    assert hr_request.state == CertificateRequest.State.PENDING
    assert hr_request.decided_by is None
    # No decision's event: the attempt is an access.refused one (test_access_refused.py).
    assert not AuditEvent.objects.filter(action__in=["request.approve", "request.reject"]).exists()


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_an_officer_in_the_group_decides(hr_request, officer, verb):
    decided = decision(verb, hr_request, officer)

    assert decided.state == (
        CertificateRequest.State.APPROVED
        if verb == "approve"
        else CertificateRequest.State.REJECTED
    )
    assert decided.decided_by == officer
    assert AuditEvent.objects.filter(action=f"request.{verb}", actor=officer).exists()


def test_a_superuser_outside_the_group_decides(hr_request, admin_user):
    assert not admin_user.groups.exists()

    assert decision("approve", hr_request, admin_user).decided_by == admin_user


def test_an_approver_still_may_not_decide_their_own_request(hr_template, officer):
    own = submit(officer, hr_template)

    with pytest.raises(NotPermitted, match="your own request"):
        services.request_approve(request=own, officer=officer)
    assert CertificateRequest.objects.get(pk=own.pk).state == CertificateRequest.State.PENDING


def test_an_approver_who_reads_the_mailbox_still_may_not_decide_its_request(hr_request, officer):
    box = SharedMailbox.objects.create(email="finance@example.com", display_name="Finance")
    box.delegates.add(officer)
    CertificateRequest.objects.filter(pk=hr_request.pk).update(mailbox=box)
    hr_request.refresh_from_db()

    with pytest.raises(NotPermitted, match="delegate of this shared mailbox"):
        services.request_approve(request=hr_request, officer=officer)


def test_a_group_member_who_is_no_officer_may_not_decide(hr_request, hr):
    hank = hr.user_set.get(username="hank")

    with pytest.raises(NotPermitted, match="Only RA officers"):
        services.request_approve(request=hr_request, officer=hank)


def test_an_officer_taken_out_of_the_group_may_no_longer_decide(hr_request, officer, hr):
    hr.user_set.remove(officer)

    with pytest.raises(NotPermitted, match="members of HR approvers"):
        services.request_approve(request=hr_request, officer=officer)


def test_a_template_without_a_group_is_every_officers(open_template, employee, second_officer):
    request = submit(employee, open_template)

    assert services.request_approve(request=request, officer=second_officer).decided_by == (
        second_officer
    )


def test_the_counted_rule_is_the_decided_rule(
    hr_template, open_template, employee, officer, second_officer, admin_user, hr
):
    """Decider.decidable (counts in SQL) says of every request what Decider.barred says."""
    box = SharedMailbox.objects.create(email="finance@example.com", display_name="Finance")
    box.delegates.add(second_officer)
    other = Group.objects.create(name="Legal approvers")
    other.user_set.add(second_officer)
    made = [
        submit(employee, hr_template),
        submit(employee, open_template),
        submit(officer, open_template),
        submit(second_officer, hr_template),
        submit(UserFactory(), open_template),
        submit(UserFactory(), hr_template),
    ]
    CertificateRequest.objects.filter(pk__in=[made[4].pk, made[5].pk]).update(mailbox=box)
    requests = list(CertificateRequest.objects.select_related("template"))

    for user in (officer, second_officer, admin_user, hr.user_set.get(username="hank")):
        decider = permissions.decider(user)
        counted = set(
            CertificateRequest.objects.filter(decider.decidable()).values_list("pk", flat=True)
        )
        assert counted == {r.pk for r in requests if decider.barred(r) is None}, user
    assert permissions.decider(second_officer).mailbox_ids == {box.pk}
    # Only the groups templates name count: Legal names no template.
    assert permissions.decider(second_officer).group_ids == frozenset()


def test_what_some_officer_may_decide_is_what_one_of_them_may(
    hr_template, open_template, employee, officer, second_officer, admin_user, hr, sales_scope
):
    """permissions.decidable_by_some (the /health/ scopes check) says of every request
    what Decider.barred says of at least one of the officers, however they group."""
    box = SharedMailbox.objects.create(email="finance@example.com", display_name="Finance")
    box.delegates.add(second_officer)
    third = UserFactory(username="tess", organizational_unit="Sales")
    third.groups.add(Group.objects.get(name="RA officers"), hr, sales_scope.officers)
    made = [
        submit(employee, hr_template),
        submit(employee, open_template),
        submit(officer, open_template),
        submit(officer, hr_template),
        submit(third, hr_template),
        submit(second_officer, open_template),
        submit(UserFactory(), open_template),
        submit(UserFactory(organizational_unit="Sales"), hr_template),
    ]
    CertificateRequest.objects.filter(pk__in=[made[6].pk]).update(mailbox=box)
    requests = list(CertificateRequest.objects.select_related("template", "requester"))
    everyone = [officer, second_officer, third, admin_user]
    groups = [everyone, [officer], [second_officer], [third], [officer, third],
              [second_officer, third], [officer, second_officer], [admin_user]]  # fmt: skip

    for who in groups:
        found = list(permissions.deciders((u.pk, u.is_superuser) for u in who).values())
        for personally in (True, False):
            some = permissions.decidable_by_some(found, personally=personally)
            counted = set(CertificateRequest.objects.filter(some).values_list("pk", flat=True))
            if personally:
                expected = {r.pk for r in requests if any(d.barred(r) is None for d in found)}
            else:
                expected = {
                    r.pk
                    for r in requests
                    if any(d.reach.covers_request(r) and d.approves(r.template) for d in found)
                }
            assert counted == expected, (who, personally)


# --- the queue --------------------------------------------------------------------------


def row_of(page: str, request) -> str:
    return page.split(f'id="request-{request.pk}"')[1].split("</tr>")[0]


def test_an_approver_gets_the_form(hr_request, officer):
    page = client_for(officer).get(QUEUE).content.decode()

    assert f'action="/ra/requests/{hr_request.pk}/decide/"' in row_of(page, hr_request)
    assert "other officers approve" not in page


def test_other_officers_find_the_request_behind_a_toggle_and_read_only(
    hr_request, open_template, colleague, second_officer
):
    theirs = submit(colleague, open_template)
    client = client_for(second_officer)

    mine = client.get(QUEUE)
    every = client.get(QUEUE, {"all": "1"})

    text = mine.content.decode()
    assert [r.pk for r in mine.context["pending"]] == [theirs.pk]
    assert f'id="request-{hr_request.pk}"' not in text
    assert "1 request for templates that other officers approve is not shown" in text
    assert 'href="/ra/requests/?all=1"' in text
    text = every.content.decode()
    assert [r.pk for r in every.context["pending"]] == [hr_request.pk, theirs.pk]
    row = row_of(text, hr_request)
    assert DECIDED_BY in row
    assert "<form" not in row
    assert f"/ra/requests/{hr_request.pk}/decide/" not in text
    assert f'action="/ra/requests/{theirs.pk}/decide/"' in row_of(text, theirs)
    assert "Show only the requests you decide" in text


def test_with_only_other_teams_requests_the_queue_says_none_waits_for_you(
    hr_request, second_officer
):
    text = client_for(second_officer).get(QUEUE).content.decode()

    assert "No request is waiting for you." in text


def test_a_forged_decision_from_outside_the_group_is_a_403(hr_request, second_officer):
    response = client_for(second_officer).post(
        f"/ra/requests/{hr_request.pk}/decide/", {"decision": "approve", "reason": ""}
    )

    assert response.status_code == 403
    assert "decided by the members of HR approvers" in response.content.decode()
    hr_request.refresh_from_db()
    assert hr_request.state == CertificateRequest.State.PENDING


@pytest.mark.parametrize(("who", "status"), [("employee", 403), ("colleague", 403)])
def test_the_whole_queue_is_for_officers_only(request, hr_request, who, status):
    response = client_for(request.getfixturevalue(who)).get(QUEUE, {"all": "1"})

    assert response.status_code == status
    assert f'id="request-{hr_request.pk}"' not in response.content.decode()


def test_anonymous_visitors_are_sent_to_sign_in(client, hr_request):
    response = client.get(QUEUE, {"all": "1"})

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_the_queue_makes_no_more_queries_for_more_rows(
    hr_template, open_template, officer, second_officer
):
    """Rows of every kind (the officer's to decide, another team's, their own, a mailbox's
    they read): the rule is read once per page, not per row."""
    box = SharedMailbox.objects.create(email="finance@example.com", display_name="Finance")
    box.delegates.add(second_officer)

    def rows() -> None:
        submit(UserFactory(), hr_template)
        submit(UserFactory(), open_template)
        boxed = submit(UserFactory(), open_template)
        CertificateRequest.objects.filter(pk=boxed.pk).update(mailbox=box)

    def queries() -> int:
        client = client_for(second_officer)
        with CaptureQueriesContext(connection) as captured:
            page = client.get(QUEUE, {"all": "1"})
        assert page.status_code == 200
        return len(captured.captured_queries)

    submit(second_officer, open_template)
    rows()
    few = queries()
    for _ in range(3):
        rows()

    assert queries() == few


# --- counts on the console and the start page --------------------------------------------


def test_the_console_counts_what_waits_for_you_and_what_waits_in_all(
    hr_request, open_template, colleague, officer, second_officer
):
    submit(colleague, open_template)

    to_olivia = client_for(officer).get("/ra/")
    to_oscar = client_for(second_officer).get("/ra/")

    assert (to_olivia.context["pending_count"], to_olivia.context["pending_total"]) == (2, 2)
    tile = '<span class="count">2</span> enrolment requests waiting for your approval</a>'
    assert tile in to_olivia.content.decode()
    assert (to_oscar.context["pending_count"], to_oscar.context["pending_total"]) == (1, 2)
    tile = '<span class="count">1</span> enrolment request waiting for your approval (2 waiting'
    assert tile + " in all)</a>" in to_oscar.content.decode()


def test_the_start_page_counts_the_requests_for_you(hr_request, officer, second_officer):
    assert client_for(officer).get("/").context["pending_count"] == 1
    assert client_for(second_officer).get("/").context["pending_count"] == 0


# --- notices ----------------------------------------------------------------------------


def notices() -> dict[str, list]:
    found: dict[str, list] = {}
    for message in mail.outbox:
        if "for your approval" in message.subject:
            found.setdefault(message.to[0], []).append(message)
    return found


def test_only_the_approvers_and_superusers_are_mailed_at_once(
    hr_template, employee, officer, second_officer, admin_user, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        request = submit(employee, hr_template)

    found = notices()
    assert sorted(found) == sorted([officer.email, admin_user.email])
    for (message,) in found.values():
        assert message.subject == f"Certificate request #{request.pk} waits for your approval"


def test_the_summary_goes_to_the_approvers_only(
    scheduler, committed_at, hr_template, open_template, employee, officer, second_officer
):
    committed_at(T0, lambda: submit(employee, open_template))  # both hear of it at once
    collected = committed_at(T0 + timedelta(minutes=2), lambda: submit(UserFactory(), hr_template))
    shared = committed_at(T0 + timedelta(minutes=3), lambda: submit(UserFactory(), open_template))
    mail.outbox.clear()

    assert ApprovalNoticeDigest.objects.get(officer=officer).waiting == [collected.pk, shared.pk]
    assert ApprovalNoticeDigest.objects.get(officer=second_officer).waiting == [shared.pk]
    assert committed_at(T0 + timedelta(minutes=15), approval_notice_digests_task) == 2

    found = notices()
    (to_olivia,) = found[officer.email]
    (to_oscar,) = found[second_officer.email]
    assert to_olivia.subject == "2 certificate requests wait for your approval"
    assert to_oscar.subject == f"Certificate request #{shared.pk} waits for your approval"
    assert f"#{collected.pk} " not in to_oscar.body


def test_an_approver_taken_out_of_the_group_meanwhile_is_not_summarised_it(
    scheduler, committed_at, hr_template, employee, officer, hr
):
    """Beat and the console's panel apply the rule again, together."""
    committed_at(T0, lambda: submit(employee, hr_template))
    collected = committed_at(T0 + timedelta(minutes=2), lambda: submit(UserFactory(), hr_template))
    with time_machine.travel(T0 + timedelta(minutes=5), tick=False):
        panel = client_for(officer).get("/ra/").context["notice_summary"]
    assert panel.request_ids == (collected.pk,)
    hr.user_set.remove(officer)
    mail.outbox.clear()

    with time_machine.travel(T0 + timedelta(minutes=6), tick=False):
        panel = client_for(officer).get("/ra/").context["notice_summary"]
    assert panel.request_ids == ()
    assert panel.count == 0
    assert committed_at(T0 + timedelta(minutes=15), approval_notice_digests_task) == 0
    assert notices() == {}


def test_a_template_given_approvers_meanwhile_leaves_the_others_panel_and_summary(
    scheduler, committed_at, open_template, employee, officer, second_officer, hr
):
    committed_at(T0, lambda: submit(employee, open_template))
    collected = committed_at(
        T0 + timedelta(minutes=2), lambda: submit(UserFactory(), open_template)
    )
    open_template.approver_group = hr
    open_template.save()
    mail.outbox.clear()

    with time_machine.travel(T0 + timedelta(minutes=5), tick=False):
        to_olivia = client_for(officer).get("/ra/").context["notice_summary"]
        to_oscar = client_for(second_officer).get("/ra/").context["notice_summary"]

    assert to_olivia.request_ids == (collected.pk,)
    assert to_oscar.request_ids == ()
    assert committed_at(T0 + timedelta(minutes=15), approval_notice_digests_task) == 1
    assert list(notices()) == [officer.email]


# --- a group nobody can decide for ------------------------------------------------------


@pytest.fixture
def nobody(hierarchy, approval) -> CertificateTemplate:
    """S/MIME Dual-use, needing approval by a group whose only member is no officer."""
    group = Group.objects.create(name="Payroll approvers")
    group.user_set.add(UserFactory(username="pat"))
    chosen = approval("smime-dual-use")
    chosen.approver_group = group
    chosen.save()
    return chosen


def alert(page) -> str:
    text = page.content.decode()
    if 'id="approvers-alert"' not in text:
        return ""
    start = text.index('id="approvers-alert"')
    return text[start : text.index("</div>", start)]


def test_the_console_warns_loudly_of_a_template_nobody_can_decide(nobody, officer, employee):
    submit(employee, nobody)

    text = alert(client_for(officer).get("/ra/"))

    assert "Requests no officer can decide." in text
    assert (
        "S/MIME Dual-use: no active RA officer is in its approvers group Payroll approvers, "
        "so only a superuser can approve or reject its requests (1 waiting)."
    ) in text


def test_health_warns_of_it_and_still_answers_200(nobody, officer, hierarchy):
    services.crl_publish(  # the offline root's CRL: all else is well
        ca=hierarchy.root,
        offline_key=keystore.OfflineKey(hierarchy.root_key_path, hierarchy.root_passphrase),
    )

    response = client_for(officer).get("/health/")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "warn"
    check = body["checks"]["approvers"]
    assert check["status"] == "warn"
    assert check["templates"] == {"smime-dual-use": 0}
    assert "Payroll approvers" in check["problems"][0]


@pytest.mark.parametrize("member", ["inactive officer", "officer"])
def test_an_officer_in_the_group_ends_the_warning_only_while_active(nobody, member, officer):
    group = nobody.approver_group
    group.user_set.add(officer)  # in the officers' group and this one: two memberships
    if member == "inactive officer":
        officer.is_active = False
        officer.save()

    check = client_for(UserFactory(is_staff=True)).get("/health/").json()["checks"]["approvers"]

    assert check["status"] == ("warn" if member == "inactive officer" else "ok")


def test_a_template_with_nothing_to_decide_is_no_warning(nobody, officer):
    nobody.requires_approval = False
    nobody.save()

    assert alert(client_for(officer).get("/ra/")) == ""
    assert client_for(officer).get("/health/").json()["checks"]["approvers"] == {
        "status": "ok",
        "templates": {},
        "problems": [],
    }


def test_requests_still_pending_keep_the_warning_after_approval_is_switched_off(
    nobody, officer, employee
):
    submit(employee, nobody)
    nobody.requires_approval = False
    nobody.is_active = False
    nobody.save()

    check = client_for(officer).get("/health/").json()["checks"]["approvers"]

    assert check["templates"] == {"smime-dual-use": 1}


# --- the admin --------------------------------------------------------------------------


def change_url(template) -> str:
    return f"/admin/enrollment/certificatetemplate/{template.pk}/change/"


def test_the_admin_offers_the_field_with_its_help(admin_client_, open_template):
    page = admin_client_.get(change_url(open_template))

    field = page.context["adminform"].form.fields["approver_group"]
    assert field.label == "Approvers"
    assert field.help_text.startswith("Who approves or rejects this template's requests.")
    assert "Warning" not in field.help_text
    assert 'name="approver_group"' in page.content.decode()


def test_the_admin_form_warns_of_a_group_without_an_officer(admin_client_, nobody):
    field = admin_client_.get(change_url(nobody)).context["adminform"].form.fields["approver_group"]

    assert field.help_text.startswith(
        "Warning: no active RA officer is in Payroll approvers now, so only a superuser can "
        "approve or reject this template's requests."
    )


def test_choosing_and_clearing_the_approvers_is_audited_by_group_name(
    admin_client_, admin_user, open_template, hr
):
    start = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()

    admin_post(admin_client_, change_url(open_template), approver_group=str(hr.pk))
    admin_post(admin_client_, change_url(open_template), approver_group="")

    chosen, cleared = AuditEvent.objects.filter(id__gt=start, action="template.change").order_by(
        "id"
    )
    assert (chosen.action, chosen.actor) == ("template.change", admin_user)
    assert chosen.detail == {
        "slug": "smime-dual-use",
        "changes": {"approver_group": [None, "HR approvers"]},
    }
    assert cleared.detail["changes"] == {"approver_group": ["HR approvers", None]}


def test_an_approvers_group_cannot_be_deleted_while_a_template_names_it(
    admin_client_, hr_template, hr
):
    """Without it every officer would approve the template's requests."""
    with pytest.raises(ProtectedError):
        hr.delete()

    admin_client_.post(f"/admin/auth/group/{hr.pk}/delete/", {"post": "yes"})

    assert Group.objects.filter(pk=hr.pk).exists()


# --- the API and roll-outs --------------------------------------------------------------


def test_the_pending_list_says_who_decides_and_whether_you_may(
    hr_request, open_template, colleague, officer, second_officer
):
    theirs = submit(colleague, open_template)

    for user, mine in ((officer, [True, True]), (second_officer, [False, True])):
        results = token_client(user).get(PENDING).json()["results"]
        assert [r["id"] for r in results] == [hr_request.pk, theirs.pk]
        assert [r["approvers"] for r in results] == ["HR approvers", None]
        assert [r["may_decide"] for r in results] == mine


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_the_api_refuses_an_officer_outside_the_group(hr_request, second_officer, verb):
    response = token_client(second_officer).post(
        request_url(hr_request.pk, verb), {"reason": "x"}, format="json"
    )

    assert response.status_code == 403
    assert "members of HR approvers" in response.json()["detail"]
    hr_request.refresh_from_db()
    assert hr_request.state == CertificateRequest.State.PENDING


def test_the_api_lets_an_approver_decide(hr_request, officer):
    response = token_client(officer).post(
        request_url(hr_request.pk, "reject"), {"reason": "x"}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["state"] == "rejected"


def test_only_approvers_roll_a_template_out(hr_template, officer, second_officer, employee):
    """A roll-out approves the requests it makes."""
    with pytest.raises(NotPermitted, match="members of HR approvers") as refused:
        rollouts.rollout_create(officer=second_officer, template=hr_template, people="alice")
    assert refused.value.field == "template"
    assert not CertificateRequest.objects.filter(requester=employee).exists()
    (refusal,) = AuditEvent.objects.filter(action="access.refused")
    assert (refusal.actor, refusal.object_type, refusal.object_id, refusal.detail) == (
        second_officer,
        "enrollment.CertificateTemplate",
        str(hr_template.pk),
        {"attempted": "rollout.create", "reason": "not_an_approver"},
    )

    rollout = rollouts.rollout_create(officer=officer, template=hr_template, people="alice")

    assert rollout.invited == 1


ROLLOUT_FORM = "/ra/rollouts/new/"


def offered(user) -> list[str]:
    page = client_for(user).get(ROLLOUT_FORM)
    assert page.status_code == 200
    return [t.slug for t in page.context["form"].fields["template"].queryset.order_by("slug")]


def test_the_rollout_form_offers_only_the_templates_you_approve(
    hr_template, open_template, officer, second_officer, admin_user
):
    """The others would only be refused at Preview or Invite."""
    assert offered(second_officer) == ["smime-dual-use", "smime-encryption"]
    for approver in (officer, admin_user):
        assert offered(approver) == ["smime-dual-use", "smime-encryption", "smime-signing"]

    page = client_for(second_officer).get(ROLLOUT_FORM).content.decode()
    assert "S/MIME Signing" not in page
    assert "Only the templates you approve are offered" in page
    assert "Only the templates you approve" not in (
        client_for(officer).get(ROLLOUT_FORM).content.decode()
    )


@pytest.mark.parametrize("action", ["preview", "confirm"])
def test_a_template_you_do_not_approve_posted_anyway_is_refused(
    hr_template, second_officer, employee, action
):
    response = client_for(second_officer).post(
        ROLLOUT_FORM, {"template": hr_template.pk, "people": "alice", action: "1"}
    )

    assert response.status_code == 400
    assert "template" in response.context["form"].errors
    assert response.context["preview"] is None
    assert not rollouts.Rollout.objects.exists()
    assert not CertificateRequest.objects.filter(requester=employee).exists()


def test_an_approver_previews_and_rolls_the_template_out_from_the_form(
    hr_template, officer, employee
):
    client = client_for(officer)
    data = {"template": hr_template.pk, "people": "alice", "key_algorithm": "ec-p256"}

    preview = client.post(ROLLOUT_FORM, {**data, "preview": "1"})
    invited = client.post(ROLLOUT_FORM, {**data, "confirm": "1"})

    assert preview.status_code == 200
    assert [u.pk for u in preview.context["preview"].eligible] == [employee.pk]
    assert invited.status_code == 302
    assert CertificateRequest.objects.get(requester=employee).decided_by == officer


@pytest.fixture
def hr_rollout(hr_template, officer, employee) -> rollouts.Rollout:
    """Olivia (an HR approver) invited Alice to collect an S/MIME Signing certificate."""
    return rollouts.rollout_create(officer=officer, template=hr_template, people="alice")


def ending(verb: str, rollout, officer) -> int:
    if verb == "remind":
        return rollouts.rollout_remind(rollout=rollout, officer=officer)
    return rollouts.rollout_cancel(rollout=rollout, officer=officer)


@pytest.mark.parametrize("verb", ["remind", "cancel"])
def test_an_officer_outside_the_group_may_not_remind_or_cancel_a_roll_out(
    hr_rollout, second_officer, verb
):
    """They could not have started it: the roll-out's approval is the approvers'."""
    start = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()

    with pytest.raises(NotPermitted, match="members of HR approvers") as refused:
        ending(verb, hr_rollout, second_officer)

    assert "Only they may remind the people of its roll-outs" in refused.value.message
    hr_rollout.refresh_from_db()
    assert (hr_rollout.state, hr_rollout.last_reminded_at) == ("open", None)
    # The attempt is recorded, nothing else: no rollout.remind or .cancel, no withdrawal.
    (refusal,) = AuditEvent.objects.filter(id__gt=start)
    assert (refusal.action, refusal.actor, refusal.object_id, refusal.detail) == (
        "access.refused",
        second_officer,
        str(hr_rollout.pk),
        {"attempted": f"rollout.{verb}", "reason": "not_an_approver"},
    )
    invitation = hr_rollout.invitations.get()
    assert invitation.reminded_at is None
    assert invitation.request.state == CertificateRequest.State.APPROVED


@pytest.mark.parametrize("verb", ["remind", "cancel"])
@pytest.mark.parametrize("who", ["officer", "admin_user"])
def test_an_approver_or_a_superuser_reminds_and_cancels_it(request, hr_rollout, who, verb):
    assert ending(verb, hr_rollout, request.getfixturevalue(who)) == 1


@pytest.mark.parametrize("verb", ["remind", "cancel"])
def test_a_forged_remind_or_cancel_from_outside_the_group_is_a_403(
    hr_rollout, second_officer, verb
):
    response = client_for(second_officer).post(f"/ra/rollouts/{hr_rollout.pk}/{verb}/")

    assert response.status_code == 403
    assert "members of HR approvers, and you are not one of them" in response.content.decode()
    hr_rollout.refresh_from_db()
    assert (hr_rollout.state, hr_rollout.last_reminded_at) == ("open", None)
    assert not AuditEvent.objects.filter(action=f"rollout.{verb}").exists()


def test_the_roll_out_page_offers_remind_and_cancel_to_its_approvers_only(
    hr_rollout, officer, second_officer, admin_user
):
    url = f"/ra/rollouts/{hr_rollout.pk}/"
    for approver in (officer, admin_user):
        page = client_for(approver).get(url).content.decode()
        assert f"/ra/rollouts/{hr_rollout.pk}/remind/" in page
        assert f"/ra/rollouts/{hr_rollout.pk}/cancel/" in page
        assert 'id="not-yours"' not in page

    page = client_for(second_officer).get(url)

    assert page.status_code == 200
    html = page.content.decode()
    assert "/remind/" not in html
    assert "/cancel/" not in html
    assert "Only the members of HR approvers (the approvers of S/MIME Signing)" in html


# --- decidable_by_some against barred, over small generated worlds ---------------------


@pytest.fixture
def small_world(hierarchy, template):
    """Four people (units Sales, Engineering, none; groups P1, P2 of people), three
    templates (no approvers group, G1, G2), two shared mailboxes, and a pending request for
    every requester, template and mailbox (or none): what generated officers decide on."""
    from django.db.models import Q

    from enrollment.models import OfficerScope

    p1, p2, g1, g2 = (Group.objects.create(name=n) for n in ("P1", "P2", "G1", "G2"))
    people = [
        UserFactory(username="w-sales", organizational_unit="Sales"),
        UserFactory(username="w-eng", organizational_unit="Engineering"),
        UserFactory(username="w-none", organizational_unit=""),
        UserFactory(username="w-sales2", organizational_unit="sales"),
    ]
    people[1].groups.add(p1)
    people[2].groups.add(p1, p2)
    people[3].groups.add(p2)
    boxes = [
        SharedMailbox.objects.create(email=f"box{n}@example.com", display_name=f"Box {n}")
        for n in (1, 2)
    ]
    templates = list(CertificateTemplate.objects.order_by("pk")[:3])
    for chosen, group in zip(templates, (None, g1, g2), strict=True):
        chosen.requires_approval = True
        chosen.approver_group = group
        chosen.save()
    first = submit(people[0], templates[0])
    made = []
    for requester in people:
        for chosen in templates:
            for box in (None, *boxes):
                copy = CertificateRequest.objects.get(pk=first.pk)
                copy.pk = None
                copy.requester, copy.template, copy.mailbox = requester, chosen, box
                if box is not None:
                    copy.key_source = "server"
                copy.save()
                made.append(copy.pk)
    CertificateRequest.objects.exclude(pk__in=made).delete()
    assert not OfficerScope.objects.exists()
    return {
        "people": [p.pk for p in people],
        "people_groups": [p1.pk, p2.pk],
        "approver_groups": [g1.pk, g2.pk],
        "boxes": [b.pk for b in boxes],
        "requests": list(
            CertificateRequest.objects.filter(Q(pk__in=made)).select_related(
                "template", "requester"
            )
        ),
    }


def _officers(world):
    """A strategy: up to four Deciders, some of them the requesters themselves."""
    from hypothesis import strategies as st

    from enrollment.scopes import EVERYONE, Reach

    reach = st.one_of(
        st.just(EVERYONE),
        st.builds(
            lambda units, groups: Reach(
                everyone=False, units=frozenset(units), group_ids=frozenset(groups)
            ),
            st.sets(st.sampled_from(["sales", "engineering"])),
            st.sets(st.sampled_from(world["people_groups"])),
        ),
    )
    officer = st.builds(
        lambda pk, superuser, groups, boxes, reached: permissions.Decider(
            pk,
            is_superuser=superuser,
            group_ids=frozenset(groups),
            mailbox_ids=frozenset(boxes),
            reach=reached,
        ),
        st.sampled_from([*world["people"], 10**9]),  # a requester, or nobody's
        st.booleans(),
        st.sets(st.sampled_from(world["approver_groups"])),
        st.sets(st.sampled_from(world["boxes"])),
        reach,
    )
    # Distinct officers, as deciders() gives them (one Decider per account).
    return st.lists(officer, max_size=4, unique_by=lambda decider: decider.pk)


def test_decidable_by_some_agrees_with_barred_over_generated_officers(small_world):
    """For any few officers (duplicates of one Reach and groups, requesters among them,
    delegates, superusers), decidable_by_some selects exactly the requests at least one of
    them may decide by Decider.barred; with personally=False, those one covers."""
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings

    requests = small_world["requests"]

    @hypothesis_settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(found=_officers(small_world))
    def check(found):
        for personally in (True, False):
            some = permissions.decidable_by_some(found, personally=personally)
            counted = set(CertificateRequest.objects.filter(some).values_list("pk", flat=True))
            if personally:
                expected = {r.pk for r in requests if any(d.barred(r) is None for d in found)}
            else:
                expected = {
                    r.pk
                    for r in requests
                    if any(d.reach.covers_request(r) and d.approves(r.template) for d in found)
                }
            assert counted == expected, (found, personally)

    check()
