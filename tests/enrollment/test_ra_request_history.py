"""/ra/requests/history/: every enrolment request for RA officers, filtered and paged."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django.utils import timezone

from enrollment import ra_views
from enrollment.models import CertificateRequest
from tests.conftest import client_for
from tests.enrollment.tools import issue, new_key
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

HISTORY = "/ra/requests/history/"
State = CertificateRequest.State


def make(requester, template, state=State.FAILED, *, decided_by=None, reason="", days_ago=0):
    created = timezone.now() - timedelta(days=days_ago)
    certificate = issue(requester, template, new_key()) if state == State.ISSUED else None
    return CertificateRequest.objects.create(
        certificate=certificate,
        requester=requester,
        template=template,
        state=state,
        key_source=CertificateRequest.KeySource.SERVER,
        key_algorithm="ec-p256",
        decided_by=decided_by,
        decided_at=created if decided_by else None,
        decision_reason=reason,
        created_at=created,
    )


@pytest.fixture
def history(hierarchy, template, employee, colleague, officer, second_officer):
    """Alice's rejected and approved requests, Bob's issued one from last year."""
    return {
        "rejected": make(
            employee,
            template("smime-dual-use"),
            State.REJECTED,
            decided_by=officer,
            reason="not in the pilot group",
            days_ago=2,
        ),
        "approved": make(
            employee, template("smime-dual-use"), State.APPROVED, decided_by=second_officer
        ),
        "old": make(colleague, template("smime-signing"), State.ISSUED, days_ago=400),
    }


def shown(response) -> list[int]:
    return [r.pk for r in response.context["requests"]]


@pytest.mark.parametrize(
    ("who", "status"),
    [
        ("officer", 200),
        ("admin_user", 200),
        ("employee", 403),
        ("colleague", 403),
        (None, 302),
    ],
)
def test_only_ra_officers_see_the_request_history(request, history, who, status):
    user = request.getfixturevalue(who) if who else None

    response = client_for(user).get(HISTORY)

    assert response.status_code == status
    if status == 302:
        assert response["Location"].startswith("/accounts/login/")
    else:
        assert (b"not in the pilot group" in response.content) == (status == 200)


def test_a_key_recovery_agent_is_not_an_officer(history, db):
    from django.contrib.auth.models import Group

    karl = UserFactory(username="karl")
    karl.groups.add(Group.objects.get_or_create(name="Key recovery agents")[0])

    assert client_for(karl).get(HISTORY).status_code == 403


def test_the_page_takes_no_post(officer, history):
    assert client_for(officer).post(HISTORY).status_code == 405


def test_every_request_shows_newest_first_with_who_decided(officer, history):
    response = client_for(officer).get(HISTORY)
    page = response.content.decode()

    assert shown(response) == sorted((r.pk for r in history.values()), reverse=True)
    assert "not in the pilot group" in page
    assert "no approval needed" in page  # Bob's issued without a decision


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("person=alice", {"rejected", "approved"}),
        ("person=ANDERSSON", {"rejected", "approved"}),
        ("person=bob", {"old"}),
        ("state=rejected", {"rejected"}),
        ("template=smime-signing", {"old"}),
        ("decided_by=olivia", {"rejected"}),
        ("person=alice&state=approved", {"approved"}),
        ("person=nobody-by-that-name", set()),
    ],
)
def test_the_filters_narrow_the_list(officer, history, query, expected):
    response = client_for(officer).get(f"{HISTORY}?{query}")

    assert set(shown(response)) == {history[name].pk for name in expected}


def test_dates_narrow_the_list_by_when_the_request_was_made(officer, history):
    since = (timezone.localdate() - timedelta(days=3)).isoformat()
    until = (timezone.localdate() - timedelta(days=1)).isoformat()

    response = client_for(officer).get(f"{HISTORY}?since={since}&until={until}")

    assert shown(response) == [history["rejected"].pk]


@pytest.mark.parametrize(
    "query",
    [
        "state=lost",
        "template=no-such-template",
        "since=yesterday",
        "since=2026-05-02&until=2026-05-01",
    ],
)
def test_a_bad_filter_shows_nothing_and_says_which(officer, history, query):
    response = client_for(officer).get(f"{HISTORY}?{query}")

    assert response.status_code == 200
    assert shown(response) == []
    assert response.context["form"].errors
    assert "Correct the filters above" in response.content.decode()


def test_the_list_continues_page_by_page_with_its_filters(
    officer, colleague, employee, template, monkeypatch
):
    monkeypatch.setattr(ra_views, "REQUEST_PAGE_SIZE", 2)
    made = [make(employee, template("smime-signing"), days_ago=n) for n in range(5)]
    make(colleague, template("smime-signing"))  # filtered out on every page
    client = client_for(officer)

    seen: list[int] = []
    url = f"{HISTORY}?person=alice"
    while url:
        response = client.get(url)
        seen += shown(response)
        older = response.context["older"]
        if older:
            assert "person=alice" in older
        url = f"{HISTORY}?{older}" if older else ""

    assert seen == sorted((r.pk for r in made), reverse=True)


def test_the_waiting_queue_links_to_the_history(officer, hierarchy):
    page = client_for(officer).get("/ra/requests/").content.decode()

    assert f'href="{HISTORY}"' in page


def test_officers_have_one_ra_link_in_the_header(officer, hierarchy):
    header = client_for(officer).get("/").content.decode().split("</header>")[0]

    assert header.count('href="/ra/') == 1


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    params=st.dictionaries(
        st.sampled_from(["person", "state", "template", "decided_by", "since", "until", "before"]),
        st.text(max_size=300),
        max_size=7,
    )
)
def test_hostile_query_strings_never_break_the_page(officer, history, params):
    response = client_for(officer).get(HISTORY, params)

    assert response.status_code == 200


@pytest.mark.parametrize(
    "query",
    [
        "before=²",  # str.isdigit() says yes, int() says no
        "before=" + "9" * 5000,  # past int()'s digit limit
        "before=99999999999999999999",  # past a bigint
        "until=9999-12-31",  # a day more leaves datetime
        "since=0001-01-01",
    ],
)
@pytest.mark.parametrize("page", [HISTORY, "/ra/audit/", "/ra/audit/export.csv"])
def test_edge_values_in_the_query_string_never_break_a_page(officer, history, page, query):
    response = client_for(officer).get(f"{page}?{query}")

    assert response.status_code in (200, 400)
    if "before=" in query and page != "/ra/audit/export.csv":
        assert response.status_code == 200


@pytest.mark.parametrize("value", ["²", "9" * 5000])
def test_the_recovery_form_takes_no_odd_certificate_number(officer, hierarchy, value):
    assert client_for(officer).get(f"/ra/recovery/new/?certificate={value}").status_code == 200
    response = client_for(officer).post("/ra/recovery/new/", {"certificate": value})
    assert response.status_code == 400


def test_the_audit_trail_continues_page_by_page_with_its_filters(officer, monkeypatch):
    """The audit trail pages the same way (one helper serves both lists)."""
    from enrollment.audit import audit_record
    from enrollment.models import AuditEvent

    monkeypatch.setattr(ra_views, "AUDIT_PAGE_SIZE", 2)
    made = [audit_record(action="test.page", detail={"n": n}).pk for n in range(5)]
    audit_record(action="other.action")  # filtered out on every page
    client = client_for(officer)

    seen: list[int] = []
    url = "/ra/audit/?action=test.page"
    while url:
        response = client.get(url)
        seen += [event.pk for event in response.context["events"]]
        older = response.context["older"]
        if older:
            assert "action=test.page" in older
        url = f"/ra/audit/?{older}" if older else ""

    assert seen == sorted(made, reverse=True)
    assert AuditEvent.objects.filter(action="test.page").count() == 5
