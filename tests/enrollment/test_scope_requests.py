"""Officer scopes on the enrolment request side: a scoped officer's queue, history, request
pages, console counts, notices and API hold only the requests of the people their scope
covers (enrollment.scopes), count the others without naming them, and refuse a request
outside it with a 403 that names no one. Officers in no scope and superusers see every
request, as before scopes.

Olivia (``officer``) acts for Sales (``sales_scope``): Alice (``employee``) is in Sales, Bob
(``colleague``) in Engineering; Oscar (``second_officer``) is in no scope."""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext

from enrollment import ra_notifications, ra_selectors, scopes, services
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
from tests.enrollment.api_tools import API, PENDING, enrollment_url, request_url, token_client
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
QUEUE = "/ra/requests/"
HISTORY = "/ra/requests/history/"
OUTSIDE = "This request is outside the people your officer scope covers."


def submit(who, template) -> CertificateRequest:
    return services.request_submit(
        requester=who, template=template, key_algorithm=KeyAlgorithm.EC_P256, channel="web"
    )


@pytest.fixture
def needs_approval(hierarchy, approval) -> CertificateTemplate:
    return approval("smime-signing")


@pytest.fixture
def waiting(needs_approval, employee, colleague, sales_scope):
    """Alice's request (Sales: in Olivia's scope) and Bob's (Engineering: outside)."""
    return submit(employee, needs_approval), submit(colleague, needs_approval)


def page_url(request) -> str:
    return f"/enroll/requests/{request.pk}/"


def listed(response) -> list[int]:
    return [r.pk for r in response.context["pending"]]


# --- the queue ---------------------------------------------------------------------------


@pytest.mark.parametrize("query", [{}, {"all": "1"}])
def test_the_queue_leaves_out_requests_outside_the_scope_and_counts_them(waiting, officer, query):
    alices, bobs = waiting

    response = client_for(officer).get(QUEUE, query)

    assert response.status_code == 200
    assert listed(response) == [alices.pk]
    text = response.content.decode()
    assert "1 request outside your officer scope (Sales) is not shown." in text
    assert f'id="request-{bobs.pk}"' not in text
    assert "Bob" not in text
    assert "Show them too" not in text


def test_the_count_of_requests_outside_the_scope_is_plural(waiting, officer, needs_approval):
    submit(UserFactory(organizational_unit="Finance"), needs_approval)

    text = client_for(officer).get(QUEUE).content.decode()

    assert "2 requests outside your officer scope (Sales) are not shown." in text


def test_a_shared_mailboxs_request_is_outside_every_scope(
    waiting, officer, employee, needs_approval
):
    """A mailbox is in no unit: only those who act for everyone see its requests."""
    alices, _bobs = waiting
    box = SharedMailbox.objects.create(email="sales@example.com", display_name="Sales")
    boxed = submit(employee, needs_approval)
    CertificateRequest.objects.filter(pk=boxed.pk).update(mailbox=box)

    response = client_for(officer).get(QUEUE)

    assert listed(response) == [alices.pk]
    assert "2 requests outside your officer scope (Sales) are not shown." in (
        response.content.decode()
    )


def test_a_member_of_a_covered_group_is_in_the_queue_whatever_their_unit(
    waiting, officer, needs_approval, sales_scope
):
    alices, _bobs = waiting
    member = UserFactory(organizational_unit="Engineering")
    member.groups.add(sales_scope.people)
    theirs = submit(member, needs_approval)

    response = client_for(officer).get(QUEUE)

    assert listed(response) == [alices.pk, theirs.pk]
    row = response.content.decode().split(f'id="request-{theirs.pk}"')[1].split("</tr>")[0]
    assert f'action="/ra/requests/{theirs.pk}/decide/"' in row


@pytest.mark.parametrize("who", ["second_officer", "admin_user"])
def test_an_officer_in_no_scope_and_a_superuser_see_every_request(
    request, waiting, sales_scope, who
):
    user = request.getfixturevalue(who)
    if user.is_superuser:
        sales_scope.officers.user_set.add(user)  # a superuser is never limited

    response = client_for(user).get(QUEUE)

    assert listed(response) == [r.pk for r in waiting]
    assert 'id="outside-scope"' not in response.content.decode()


def test_with_only_requests_outside_the_scope_none_waits_for_you(
    needs_approval, colleague, officer, sales_scope
):
    submit(colleague, needs_approval)

    text = client_for(officer).get(QUEUE).content.decode()

    assert "No request is waiting for you." in text
    assert "1 request outside your officer scope (Sales) is not shown." in text


def test_recently_decided_lists_only_requests_in_the_scope(waiting, officer, second_officer):
    alices, bobs = waiting
    services.request_reject(request=bobs, officer=second_officer, reason="not Bob's job")
    services.request_reject(request=alices, officer=second_officer, reason="not yet")

    to_olivia = client_for(officer).get(QUEUE)
    to_oscar = client_for(second_officer).get(QUEUE)

    assert [r.pk for r in to_olivia.context["decided"]] == [alices.pk]
    assert "not Bob&#x27;s job" not in to_olivia.content.decode()
    assert {r.pk for r in to_oscar.context["decided"]} == {alices.pk, bobs.pk}


def test_the_queue_makes_no_more_queries_for_more_rows_under_a_scope(
    needs_approval, officer, sales_scope
):
    """Requesters covered by a group of people, not by their unit: their groups are read
    once for the page, not once per row."""

    def rows() -> None:
        member = UserFactory(organizational_unit="Engineering")
        member.groups.add(sales_scope.people)
        submit(member, needs_approval)
        submit(UserFactory(organizational_unit="Sales"), needs_approval)
        submit(UserFactory(organizational_unit="Finance"), needs_approval)

    def queries() -> int:
        client = client_for(officer)
        with CaptureQueriesContext(connection) as captured:
            page = client.get(QUEUE, {"all": "1"})
        assert page.status_code == 200
        return len(captured.captured_queries)

    rows()
    few = queries()
    for _ in range(3):
        rows()

    assert queries() == few


# --- deciding from the queue --------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [{"decision": "approve", "reason": ""}, {"decision": "reject", "reason": ""}]
)
def test_a_decision_posted_on_a_request_outside_the_scope_is_a_403(waiting, officer, data):
    """Also a reject without its reason: the refusal comes before the form."""
    _alices, bobs = waiting

    response = client_for(officer).post(f"/ra/requests/{bobs.pk}/decide/", data)

    assert response.status_code == 403
    text = response.content.decode()
    assert OUTSIDE in text
    assert "Bob" not in text
    bobs.refresh_from_db()
    assert bobs.state == CertificateRequest.State.PENDING
    assert not AuditEvent.objects.filter(action__in=["request.approve", "request.reject"]).exists()


def test_a_scoped_officer_decides_from_the_queue_in_the_scope(waiting, officer):
    alices, _bobs = waiting

    response = client_for(officer).post(
        f"/ra/requests/{alices.pk}/decide/", {"decision": "approve", "reason": ""}
    )

    assert response.status_code == 302
    alices.refresh_from_db()
    assert alices.decided_by == officer


# --- a request's page ---------------------------------------------------------------------


def test_a_request_outside_the_scope_is_a_403_naming_no_one(waiting, officer):
    _alices, bobs = waiting

    response = client_for(officer).get(page_url(bobs))

    assert response.status_code == 403
    text = response.content.decode()
    assert OUTSIDE in text
    assert "Bob" not in text
    assert "bob" not in text


@pytest.mark.parametrize(
    ("who", "status"),
    [
        ("officer", 200),  # Alice's is in Olivia's scope
        ("second_officer", 200),
        ("admin_user", 200),
        ("employee", 200),  # her own
        ("colleague", 404),  # not his
    ],
)
def test_who_sees_a_request_in_the_scope(request, waiting, who, status):
    alices, _bobs = waiting

    assert client_for(request.getfixturevalue(who)).get(page_url(alices)).status_code == status


@pytest.mark.parametrize(
    ("who", "status"),
    [("second_officer", 200), ("admin_user", 200), ("colleague", 200), ("employee", 404)],
)
def test_who_sees_a_request_outside_the_scope(request, waiting, who, status):
    _alices, bobs = waiting

    assert client_for(request.getfixturevalue(who)).get(page_url(bobs)).status_code == status


def test_anonymous_visitors_are_sent_to_sign_in(client, waiting):
    response = client.get(page_url(waiting[1]))

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_a_scoped_officer_still_sees_their_own_request_outside_the_scope(
    officer, needs_approval, sales_scope
):
    """Olivia has no unit: her scope does not cover her, her page is still hers."""
    own = submit(officer, needs_approval)

    assert client_for(officer).get(page_url(own)).status_code == 200


# --- the history ------------------------------------------------------------------------


def test_the_history_holds_only_requests_in_the_scope(waiting, officer, second_officer):
    alices, bobs = waiting

    mine = client_for(officer).get(HISTORY)
    every = client_for(second_officer).get(HISTORY)

    assert [r.pk for r in mine.context["requests"]] == [alices.pk]
    assert "Bob" not in mine.content.decode()
    assert [r.pk for r in every.context["requests"]] == [bobs.pk, alices.pk]


@pytest.mark.parametrize(
    ("filters", "found"),
    [
        ({"person": "alice"}, "alices"),
        ({"person": "bob"}, None),
        ({"state": "pending"}, "alices"),
        ({"state": "rejected"}, None),
    ],
)
def test_the_history_filters_still_work_within_the_scope(waiting, officer, filters, found):
    alices, _bobs = waiting

    response = client_for(officer).get(HISTORY, filters)

    assert response.status_code == 200
    assert [r.pk for r in response.context["requests"]] == ([alices.pk] if found else [])


@pytest.mark.parametrize(("who", "status"), [("employee", 403), ("colleague", 403)])
def test_the_history_is_for_officers_only(request, waiting, who, status):
    assert client_for(request.getfixturevalue(who)).get(HISTORY).status_code == status


# --- counts on the console and the start page ---------------------------------------------


def test_the_console_counts_only_requests_in_the_scope(waiting, officer, second_officer):
    to_olivia = client_for(officer).get("/ra/")
    to_oscar = client_for(second_officer).get("/ra/")

    assert (to_olivia.context["pending_count"], to_olivia.context["pending_total"]) == (1, 1)
    assert "waiting in all" not in to_olivia.content.decode()
    assert (to_oscar.context["pending_count"], to_oscar.context["pending_total"]) == (2, 2)


def test_waiting_in_all_counts_the_scopes_requests_the_officer_may_not_decide(
    waiting, officer, needs_approval
):
    """Her own request is outside her scope (she has no unit); a Sales colleague's that
    waits for another officer's template is in it."""
    submit(officer, needs_approval)
    own_sales = UserFactory(organizational_unit="Sales")
    own_sales.groups.add(officer.groups.get(name="RA officers"))
    submit(own_sales, needs_approval)  # another officer's request: Olivia decides it

    counts = client_for(officer).get("/ra/").context

    assert (counts["pending_count"], counts["pending_total"]) == (2, 2)


def test_the_start_page_counts_only_requests_in_the_scope(waiting, officer, second_officer):
    assert client_for(officer).get("/").context["pending_count"] == 1
    assert client_for(second_officer).get("/").context["pending_count"] == 2


# --- notices ------------------------------------------------------------------------------


def notices() -> dict[str, list]:
    found: dict[str, list] = {}
    for message in mail.outbox:
        if "for your approval" in message.subject:
            found.setdefault(message.to[0], []).append(message)
    return found


def test_only_officers_whose_scope_covers_the_requester_are_mailed(
    needs_approval,
    employee,
    colleague,
    officer,
    second_officer,
    admin_user,
    sales_scope,
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks(execute=True):
        bobs = submit(colleague, needs_approval)
    to_bob = notices()
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        submit(employee, needs_approval)

    assert sorted(to_bob) == sorted([second_officer.email, admin_user.email])
    assert officer.email not in to_bob
    for (message,) in to_bob.values():
        assert message.subject == f"Certificate request #{bobs.pk} waits for your approval"
    assert sorted(notices()) == sorted([officer.email, second_officer.email, admin_user.email])


def test_the_summary_and_the_panel_hold_only_requests_in_the_scope(
    scheduler,
    committed_at,
    needs_approval,
    employee,
    colleague,
    officer,
    second_officer,
    sales_scope,
):
    committed_at(T0, lambda: submit(employee, needs_approval))  # both hear of it at once
    bobs = committed_at(T0 + timedelta(minutes=2), lambda: submit(colleague, needs_approval))
    member = UserFactory(organizational_unit="Engineering")
    member.groups.add(sales_scope.people)
    members = committed_at(T0 + timedelta(minutes=3), lambda: submit(member, needs_approval))
    mail.outbox.clear()

    assert ApprovalNoticeDigest.objects.get(officer=officer).waiting == [members.pk]
    assert ApprovalNoticeDigest.objects.get(officer=second_officer).waiting == [
        bobs.pk,
        members.pk,
    ]
    with time_machine.travel(T0 + timedelta(minutes=5), tick=False):
        panel = client_for(officer).get("/ra/").context["notice_summary"]
    assert panel.request_ids == (members.pk,)
    assert committed_at(T0 + timedelta(minutes=15), approval_notice_digests_task) == 2

    found = notices()
    (to_olivia,) = found[officer.email]
    (to_oscar,) = found[second_officer.email]
    assert to_olivia.subject == f"Certificate request #{members.pk} waits for your approval"
    assert f"#{bobs.pk} " not in to_olivia.body
    assert to_oscar.subject == "2 certificate requests wait for your approval"


def test_an_officer_given_a_scope_meanwhile_is_not_summarised_what_it_leaves_out(
    scheduler, committed_at, needs_approval, employee, colleague, second_officer, sales_scope
):
    """Beat and the console's panel apply the rule again, together."""
    committed_at(T0, lambda: submit(employee, needs_approval))
    bobs = committed_at(T0 + timedelta(minutes=2), lambda: submit(colleague, needs_approval))
    with time_machine.travel(T0 + timedelta(minutes=5), tick=False):
        panel = client_for(second_officer).get("/ra/").context["notice_summary"]
    assert panel.request_ids == (bobs.pk,)
    sales_scope.officers.user_set.add(second_officer)
    mail.outbox.clear()

    with time_machine.travel(T0 + timedelta(minutes=6), tick=False):
        panel = client_for(second_officer).get("/ra/").context["notice_summary"]
    assert (panel.request_ids, panel.count) == ((), 0)
    assert committed_at(T0 + timedelta(minutes=15), approval_notice_digests_task) == 0
    assert notices() == {}


def test_the_panel_reads_as_many_queries_for_many_collected_requests_under_a_scope(
    scheduler, committed_at, needs_approval, employee, officer, sales_scope
):
    """Collected requests of people covered by a group, not by their unit: their groups
    are read once for the panel, not once per request."""
    committed_at(T0, lambda: submit(employee, needs_approval))  # mailed: opens her window

    def collect(count: int, start: int) -> None:
        for n in range(count):
            member = UserFactory(organizational_unit="Engineering")
            member.groups.add(sales_scope.people)
            committed_at(
                T0 + timedelta(minutes=1, seconds=start + n),
                lambda member=member: submit(member, needs_approval),
            )

    def queries() -> int:
        scopes.forget_reach(officer)
        with (
            time_machine.travel(T0 + timedelta(minutes=5), tick=False),
            CaptureQueriesContext(connection) as captured,
        ):
            summary = ra_selectors.approval_notice_summary(officer)
        assert summary.count == len(ApprovalNoticeDigest.objects.get(officer=officer).waiting)
        return len(captured.captured_queries)

    collect(2, 0)
    few = queries()
    collect(4, 10)

    assert queries() == few


def test_a_notice_run_reads_requesters_groups_once_not_per_request(
    needs_approval, officer, second_officer, sales_scope
):
    """Two scoped officers and one unscoped, requesters covered by a group: the same
    number of queries for three requests as for nine."""
    third = UserFactory(username="tess")
    third.groups.add(officer.groups.get(name="RA officers"), sales_scope.officers)

    def made(count: int) -> list[int]:
        ids = []
        for n in range(count):
            member = UserFactory(organizational_unit="Engineering" if n % 2 else "Finance")
            if n % 2:
                member.groups.add(sales_scope.people)
            ids.append(submit(member, needs_approval).pk)
        return ids

    def queries(ids: list[int]) -> int:
        with CaptureQueriesContext(connection) as captured:
            ra_notifications.requests_announce(ids)
        return len(captured.captured_queries)

    few = queries(made(3))
    ApprovalNoticeDigest.objects.all().delete()

    assert queries(made(9)) == few


# --- the API ------------------------------------------------------------------------------


def test_the_pending_list_holds_only_requests_in_the_scope(waiting, officer, second_officer):
    alices, bobs = waiting

    to_olivia = token_client(officer).get(PENDING).json()["results"]
    to_oscar = token_client(second_officer).get(PENDING).json()["results"]

    assert [(r["id"], r["may_decide"]) for r in to_olivia] == [(alices.pk, True)]
    assert [r["id"] for r in to_oscar] == [alices.pk, bobs.pk]


def test_the_request_list_holds_only_requests_in_the_scope(waiting, officer, second_officer):
    alices, bobs = waiting

    assert [r["id"] for r in token_client(officer).get(f"{API}/requests/").json()["results"]] == [
        alices.pk
    ]
    every = token_client(second_officer).get(f"{API}/requests/").json()["results"]
    assert [r["id"] for r in every] == [bobs.pk, alices.pk]


@pytest.mark.parametrize(("who", "status"), [("employee", 403), (None, 401)])
def test_the_pending_list_is_for_officers_only(request, waiting, who, status):
    user = request.getfixturevalue(who) if who else None

    assert token_client(user).get(PENDING).status_code == status


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_the_api_refuses_a_decision_outside_the_scope_and_changes_nothing(waiting, officer, verb):
    _alices, bobs = waiting

    response = token_client(officer).post(request_url(bobs.pk, verb), {}, format="json")

    assert response.status_code == 403
    assert response.json() == {"detail": OUTSIDE}
    bobs.refresh_from_db()
    assert (bobs.state, bobs.decided_by) == (CertificateRequest.State.PENDING, None)
    assert not AuditEvent.objects.filter(action__in=["request.approve", "request.reject"]).exists()


@pytest.mark.parametrize("who", ["officer", "second_officer"])
def test_the_api_lets_an_officer_decide_in_their_scope(request, waiting, who):
    alices, _bobs = waiting
    user = request.getfixturevalue(who)

    response = token_client(user).post(request_url(alices.pk, "reject"), {"reason": "x"})

    assert response.status_code == 200
    assert response.json()["state"] == "rejected"


@pytest.mark.parametrize(
    ("who", "status"),
    [
        ("officer", 403),
        ("second_officer", 200),
        ("admin_user", 200),
        ("colleague", 200),  # his own
        ("employee", 404),
    ],
)
def test_who_reads_an_enrolment_outside_the_scope_in_the_api(request, waiting, who, status):
    _alices, bobs = waiting

    response = token_client(request.getfixturevalue(who)).get(enrollment_url(bobs.pk))

    assert response.status_code == status
    if status == 403:
        assert response.json() == {"detail": OUTSIDE}


@pytest.mark.parametrize("action", ["withdraw", "collect"])
def test_an_officer_acting_on_an_enrolment_outside_the_scope_is_refused_by_scope(
    waiting, officer, action
):
    _alices, bobs = waiting

    response = token_client(officer).post(f"{enrollment_url(bobs.pk)}{action}/", {})

    assert response.status_code == 403
    assert response.json() == {"detail": OUTSIDE}
    bobs.refresh_from_db()
    assert bobs.state == CertificateRequest.State.PENDING


def test_the_pending_list_makes_no_more_queries_for_more_rows_under_a_scope(
    needs_approval, officer, sales_scope
):
    client = token_client(officer)

    def rows() -> None:
        for _ in range(2):
            member = UserFactory(organizational_unit="Engineering")
            member.groups.add(sales_scope.people)
            submit(member, needs_approval)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            response = client.get(PENDING)
        assert response.status_code == 200
        return len(captured.captured_queries)

    rows()
    few = queries()
    rows()
    rows()

    assert queries() == few


# --- requests no officer's scope covers ------------------------------------------------------


def scope_alert(page) -> str:
    text = html.unescape(page.content.decode())
    if 'id="scopes-alert"' not in text:
        return ""
    start = text.index('id="scopes-alert"')
    return text[start : text.index("</div>", start)]


def scope_check(user) -> dict:
    return client_for(user).get("/health/").json()["checks"]["scopes"]


def test_the_console_warns_of_requests_outside_every_officers_scope(waiting, officer):
    """Olivia is the only officer, and Bob is outside her scope."""
    text = scope_alert(client_for(officer).get("/ra/"))

    assert "Requests that no RA officer may decide." in text
    assert (
        "1 pending request is outside the officer scope of every RA officer who may decide "
        "it, so only a superuser "
        "can approve or reject it."
    ) in text
    assert "Bob" not in text
    assert "An administrator changes officer scopes: ask one to." in text
    assert "/admin/enrollment/officerscope/" not in text


def test_a_superuser_is_sent_to_the_admins_scopes(waiting, admin_user):
    text = scope_alert(client_for(admin_user).get("/ra/"))

    assert 'href="/admin/enrollment/officerscope/"' in text
    assert "ask one to" not in text


def test_health_warns_of_them_and_still_answers_200(waiting, officer, hierarchy):
    from enrollment import keystore

    services.crl_publish(  # the offline root's CRL: all else is well
        ca=hierarchy.root,
        offline_key=keystore.OfflineKey(hierarchy.root_key_path, hierarchy.root_passphrase),
    )

    response = client_for(officer).get("/health/")

    assert response.status_code == 200
    check = response.json()["checks"]["scopes"]
    assert {k: check[k] for k in ("status", "requests", "mailboxes")} == {
        "status": "warn",
        "requests": 1,
        "mailboxes": 0,
    }
    assert "only a superuser can approve or reject it" in check["problems"][0]


def test_a_shared_mailboxs_request_is_outside_every_scope_too(
    needs_approval, employee, officer, sales_scope
):
    box = SharedMailbox.objects.create(email="sales@example.com", display_name="Sales")
    boxed = submit(employee, needs_approval)
    CertificateRequest.objects.filter(pk=boxed.pk).update(mailbox=box)

    check = scope_check(officer)

    assert (check["status"], check["requests"], check["mailboxes"]) == ("warn", 1, 1)
    assert (
        "1 pending request is outside the officer scope of every RA officer who may decide "
        "it (1 of them for a "
        "shared mailbox, which only an officer in no scope handles)"
    ) in check["problems"][0]


def test_an_active_officer_in_no_scope_ends_the_warning(waiting, officer, second_officer):
    assert scope_check(officer)["status"] == "ok"
    assert scope_alert(client_for(officer).get("/ra/")) == ""


def test_a_deactivated_officer_in_no_scope_does_not(waiting, officer, second_officer):
    second_officer.is_active = False
    second_officer.save()

    assert scope_check(officer)["status"] == "warn"


def test_requests_every_scope_covers_are_no_warning(needs_approval, employee, officer, sales_scope):
    submit(employee, needs_approval)

    assert scope_check(officer) == {
        "status": "ok",
        "requests": 0,
        "mailboxes": 0,
        "barred": 0,
        "problems": [],
    }


def test_with_superusers_only_left_it_is_no_matter_of_scopes(waiting, officer, admin_user):
    """No officer but superusers: nothing here would help."""
    officer.groups.clear()

    assert scope_check(admin_user)["status"] == "ok"


def test_the_check_reads_few_queries_however_many_requests_and_officers(
    waiting, officer, needs_approval, sales_scope, django_assert_max_num_queries
):
    from enrollment import health

    with django_assert_max_num_queries(6):
        assert health.requests_outside_scopes().requests == 1
    for _ in range(3):
        scoped = UserFactory()
        scoped.groups.add(officer.groups.get(name="RA officers"), sales_scope.officers)
        submit(UserFactory(organizational_unit="Finance"), needs_approval)
    with django_assert_max_num_queries(6):
        assert health.requests_outside_scopes().requests == 4
    unscoped = UserFactory()
    unscoped.groups.add(officer.groups.get(name="RA officers"))
    with django_assert_max_num_queries(6):
        assert health.requests_outside_scopes().requests == 0
    for _ in range(3):  # officers who read a mailbox make the filter longer, not the queries
        more = UserFactory()
        more.groups.add(officer.groups.get(name="RA officers"))
        box = SharedMailbox.objects.create(email=f"box-{more.pk}@example.com", display_name="Box")
        box.delegates.add(more)
    with django_assert_max_num_queries(6):
        assert health.requests_outside_scopes().requests == 0


def test_without_scopes_the_check_reads_four_queries(
    needs_approval, officer, second_officer, django_assert_num_queries
):
    """The officers, their approvers groups, their mailboxes and one count: an officer's
    own request may be left to nobody else, scopes or none."""
    from enrollment import health

    submit(UserFactory(), needs_approval)

    with django_assert_num_queries(4):
        assert health.requests_outside_scopes().requests == 0


# --- with the requester the only officer whose scope covers it: as the service decides ------


LEFT_TO_THEMSELVES = (
    "1 pending request is left to no RA officer but its own requester or a delegate of its "
    "shared mailbox, who may not decide it, so only a superuser can approve or reject it."
)


@pytest.fixture
def olivias_own(needs_approval, officer, sales_scope) -> CertificateRequest:
    """Olivia, in Sales, asks for a certificate herself: her scope covers her."""
    officer.organizational_unit = "Sales"
    officer.save()
    return submit(officer, needs_approval)


def test_a_request_whose_only_officer_in_scope_is_its_requester_is_warned_of(
    olivias_own, officer, second_officer
):
    """Oscar acts for everyone but is no officer any more; Olivia may not decide her own."""
    second_officer.groups.clear()

    check = scope_check(officer)

    assert (check["status"], check["requests"]) == ("warn", 1)
    assert check["barred"] == 1
    assert LEFT_TO_THEMSELVES in check["problems"][0]
    assert "Olivia" not in check["problems"][0]
    assert LEFT_TO_THEMSELVES in scope_alert(client_for(officer).get("/ra/"))
    with pytest.raises(NotPermitted, match="your own request"):
        services.request_approve(request=olivias_own, officer=officer)


def test_another_officer_whose_scope_covers_it_ends_the_warning(
    olivias_own, officer, sales_scope, needs_approval
):
    another = UserFactory(username="sam")
    another.groups.add(officer.groups.get(name="RA officers"), sales_scope.officers)

    assert scope_check(officer)["status"] == "ok"
    assert services.request_approve(request=olivias_own, officer=another).decided_by == another


def test_an_officer_in_no_scope_ends_it_too(olivias_own, officer, second_officer):
    assert scope_check(officer)["status"] == "ok"


def test_without_scopes_the_only_officers_own_request_is_warned_of(
    needs_approval, officer, admin_user
):
    """Scopes or none: a portal with one RA officer leaves their own request to a
    superuser."""
    submit(officer, needs_approval)

    check = scope_check(officer)

    assert (check["status"], check["requests"]) == ("warn", 1)
    assert check["barred"] == 1
    assert LEFT_TO_THEMSELVES in check["problems"][0]


def test_the_only_officer_in_scope_who_reads_the_mailbox_leaves_its_request_to_nobody(
    needs_approval, officer, second_officer, employee, sales_scope
):
    """A mailbox's request: only Oscar acts for everyone, and he is its delegate."""
    box = SharedMailbox.objects.create(email="sales@example.com", display_name="Sales")
    box.delegates.add(second_officer)
    boxed = submit(employee, needs_approval)
    CertificateRequest.objects.filter(pk=boxed.pk).update(mailbox=box)

    check = scope_check(officer)

    assert (check["requests"], check["mailboxes"]) == (1, 1)
    assert check["barred"] == 1


def test_barred_and_out_of_scope_requests_are_counted_apart(
    waiting, olivias_own, officer, second_officer
):
    """Bob's is outside Olivia's scope; her own she may not decide."""
    second_officer.groups.clear()

    check = scope_check(officer)

    assert check["requests"] == 2
    assert check["barred"] == 1
    assert check["problems"][0].startswith(
        "2 pending requests are outside the officer scope of every RA officer who may decide "
        "them (1 of them is left to no RA officer but its own requester or a delegate of its "
        "shared mailbox, who may not decide it), so only a superuser can approve or reject "
        "them."
    )


# --- with approvers groups: who may decide is the group's officers ---------------------------


@pytest.fixture
def sales_approves(needs_approval, sales_scope):
    """The template's approvers: the Sales officers' group (Olivia, scoped to Sales)."""
    needs_approval.approver_group = sales_scope.officers
    needs_approval.save()
    return needs_approval


def test_a_request_outside_every_approvers_scope_is_warned_of(
    sales_approves, waiting, officer, second_officer
):
    """Oscar acts for everyone but is no approver of the template; Olivia approves it but
    her scope leaves Bob out: only a superuser can decide Bob's request."""
    check = scope_check(officer)

    assert (check["status"], check["requests"]) == ("warn", 1)
    assert "who may decide it" in check["problems"][0]


def test_an_approver_who_acts_for_everyone_ends_it(
    sales_approves, waiting, officer, second_officer, sales_scope
):
    from django.contrib.auth.models import Group

    outside_scopes = Group.objects.create(name="Sales approvers too")
    sales_approves.approver_group = outside_scopes
    sales_approves.save()
    outside_scopes.user_set.add(officer, second_officer)

    assert scope_check(officer)["status"] == "ok"


def test_a_group_with_no_active_officer_is_the_approvers_checks_not_this(
    needs_approval, waiting, officer, second_officer
):
    from django.contrib.auth.models import Group

    needs_approval.approver_group = Group.objects.create(name="Nobody approves")
    needs_approval.save()

    assert scope_check(officer)["status"] == "ok"


def test_an_approver_whose_own_request_it_is_leaves_it_to_nobody(
    sales_approves, olivias_own, officer, second_officer
):
    """Oscar acts for everyone but is no approver of the template; Olivia, its only
    approver, asked herself."""
    check = scope_check(officer)

    assert (check["status"], check["requests"]) == ("warn", 1)
    assert check["barred"] == 1


def test_a_second_approver_in_scope_ends_it(
    sales_approves, olivias_own, officer, second_officer, sales_scope
):
    another = UserFactory(username="sam")
    another.groups.add(officer.groups.get(name="RA officers"), sales_scope.officers)

    assert scope_check(officer)["status"] == "ok"


def test_an_officer_who_may_decide_it_but_approves_not_does_not_count(
    sales_approves, olivias_own, officer, second_officer
):
    """Oscar acts for everyone and is no approver; Sam approves another template."""
    from django.contrib.auth.models import Group

    another = UserFactory(username="sam")
    another.groups.add(officer.groups.get(name="RA officers"))
    other = Group.objects.create(name="Legal approvers")
    other.user_set.add(another)
    CertificateTemplate.objects.filter(slug="smime-dual-use").update(approver_group=other)

    assert scope_check(officer)["requests"] == 1
