"""An approval counts only while its officer still is an active RA officer: when the quorum
is counted, when the key is decrypted and when it is released."""

from __future__ import annotations

import pytest

from django.contrib.auth.models import Group
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext

from enrollment import ra_selectors, recovery, services
from enrollment.api.serializers import RecoveryOut
from enrollment.exceptions import InvalidState
from enrollment.models import AuditEvent, KeyRecoveryRequest
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for
from tests.enrollment.api_tools import API, token_client
from tests.enrollment.ra_fixtures import OWNER_PKCS12_PASSWORD, agent_upload, snapshot
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_pkcs12")]

State = KeyRecoveryRequest.State
NOT_OFFICER = "the approver is no longer an RA officer"
DEACTIVATED = "the approver's account is deactivated"


@pytest.fixture
def kra(quick_kra):
    return quick_kra


@pytest.fixture
def officers_group(db) -> Group:
    return Group.objects.get_or_create(name="RA officers")[0]


@pytest.fixture
def third_officer(officers_group):
    user = UserFactory(username="tina", first_name="Tina", last_name="Third")
    user.groups.add(officers_group)
    return user


@pytest.fixture
def two_approvals(settings, opened, second_officer, third_officer) -> KeyRecoveryRequest:
    """Olivia opened it; Oscar and Tina approved: two of two."""
    settings.PKIPORTAL_RECOVERY_APPROVALS = 2
    recovery.recovery_approve(recovery=opened, officer=second_officer)
    done = recovery.recovery_approve(recovery=opened, officer=third_officer)
    assert done.state == State.APPROVED
    return done


def perform(found, kra, agent_user):
    return recovery.recovery_perform(
        recovery=found, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
        agent_password=kra.password,
    )  # fmt: skip


# --- decrypting -----------------------------------------------------------------------


def test_an_approver_removed_from_the_officers_no_longer_counts(
    two_approvals, third_officer, officers_group, kra, agent_user
):
    third_officer.groups.remove(officers_group)
    before = snapshot(two_approvals)

    found = recovery.quorum(two_approvals)
    with pytest.raises(InvalidState) as refused:
        perform(two_approvals, kra, agent_user)

    assert not found.met
    assert [a.officer for a in found.counted] == [two_approvals.approvals.first().officer]
    assert [(a.officer, lapse.value) for a, lapse in found.lapsed] == [(third_officer, NOT_OFFICER)]
    assert f"Tina Third's approval ({NOT_OFFICER}) no longer counts" in refused.value.message
    assert "needs 1 more approval" in refused.value.message
    assert snapshot(two_approvals) == before  # nothing decrypted, nothing stored
    event = AuditEvent.objects.filter(action="recovery.perform").get()
    assert event.outcome == AuditEvent.Outcome.FAILURE


def test_an_approver_given_the_role_back_counts_again(
    two_approvals, third_officer, officers_group, kra, agent_user
):
    third_officer.groups.remove(officers_group)
    with pytest.raises(InvalidState):
        perform(two_approvals, kra, agent_user)

    third_officer.groups.add(officers_group)
    done, _password = perform(two_approvals, kra, agent_user)

    assert done.state == State.READY


def test_a_deactivated_approver_no_longer_counts(two_approvals, second_officer, kra, agent_user):
    second_officer.is_active = False
    second_officer.save()

    with pytest.raises(InvalidState, match=f"Oscar Second's approval \\({DEACTIVATED}\\)"):
        perform(two_approvals, kra, agent_user)

    two_approvals.refresh_from_db()
    assert two_approvals.state == State.APPROVED
    assert two_approvals.bundle is None


def test_a_superuser_who_is_no_longer_one_no_longer_counts(settings, opened, kra, agent_user):
    """Superusers count as officers (is_ra_officer): losing that is losing the role."""
    chief = UserFactory(username="cara", is_superuser=True)
    recovery.recovery_approve(recovery=opened, officer=chief)
    chief.is_superuser = False
    chief.save()

    with pytest.raises(InvalidState, match=NOT_OFFICER):
        perform(opened, kra, agent_user)


# --- approving ------------------------------------------------------------------------


def test_another_officer_makes_up_for_an_approval_that_no_longer_counts(
    two_approvals, third_officer, officers_group, kra, agent_user
):
    third_officer.groups.remove(officers_group)
    fourth = UserFactory(username="fred")
    fourth.groups.add(officers_group)

    approved = recovery.recovery_approve(recovery=two_approvals, officer=fourth)

    assert approved.state == State.APPROVED
    event = AuditEvent.objects.filter(action="recovery.approve").latest("pk")
    assert event.detail == {
        "approvals": 2,
        "required": 2,
        "not_counted": [{"officer": "tina", "why": "not_officer"}],
    }
    done, _password = perform(two_approvals, kra, agent_user)
    assert done.state == State.READY


def test_an_approval_that_falls_short_again_sends_it_back_to_waiting(
    two_approvals, second_officer, third_officer, officers_group, employee,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    """Both approvers lost the role: one new approval is not enough, and it says so."""
    second_officer.groups.remove(officers_group)
    third_officer.groups.remove(officers_group)
    fourth = UserFactory(username="fred")
    fourth.groups.add(officers_group)

    with django_capture_on_commit_callbacks(execute=True):
        waiting = recovery.recovery_approve(recovery=two_approvals, officer=fourth)

    assert waiting.state == State.PENDING
    assert recovery.quorum(waiting).missing == 1
    (told,) = [m for m in mail.outbox if m.to == [employee.email]]
    assert "(1 of 2 approvals)" in told.body  # the owner hears what counts


def test_a_recovery_whose_approvals_count_takes_no_more(two_approvals, officers_group):
    fourth = UserFactory(username="fred")
    fourth.groups.add(officers_group)

    with pytest.raises(InvalidState, match="no longer waiting for approval"):
        recovery.recovery_approve(recovery=two_approvals, officer=fourth)

    assert two_approvals.approvals.count() == 2


def test_an_approval_given_while_another_had_lapsed_counts_once_it_is_back(
    settings, opened, second_officer, third_officer, officers_group, kra, agent_user
):
    """Oscar approves and loses the role; Tina's approval is then the only one that
    counts, so the recovery keeps waiting. Oscar's role back, the two count: it can be
    carried out without a third officer (none may be left to approve it)."""
    settings.PKIPORTAL_RECOVERY_APPROVALS = 2
    recovery.recovery_approve(recovery=opened, officer=second_officer)
    second_officer.groups.remove(officers_group)
    assert recovery.recovery_approve(recovery=opened, officer=third_officer).state == (
        State.PENDING
    )

    second_officer.groups.add(officers_group)
    done, _password = perform(opened, kra, agent_user)

    assert done.state == State.READY


# --- releasing ------------------------------------------------------------------------


@pytest.fixture
def recovered(two_approvals, kra, agent_user):
    done, password = perform(two_approvals, kra, agent_user)
    return done


def test_the_key_is_not_released_after_an_approver_lost_the_role(
    recovered, third_officer, officers_group, employee
):
    third_officer.groups.remove(officers_group)
    before = snapshot(recovered)

    with pytest.raises(InvalidState, match="not released: Tina Third's approval"):
        recovery.recovery_download(recovery=recovered, user=employee)

    assert snapshot(recovered) == before  # the copy waits for its window
    refused = AuditEvent.objects.filter(action="recovery.download").get()
    assert refused.outcome == AuditEvent.Outcome.FAILURE

    third_officer.groups.add(officers_group)
    done, bundle = recovery.recovery_download(recovery=recovered, user=employee)
    assert done.state == State.DOWNLOADED
    assert bundle


def test_a_quorum_raised_after_the_recovery_does_not_hold_the_key_back(
    settings, recovered, employee
):
    """Nobody can approve a recovered key: only an approver's lost role holds it back."""
    settings.PKIPORTAL_RECOVERY_APPROVALS = 3

    done, _bundle = recovery.recovery_download(recovery=recovered, user=employee)

    assert done.state == State.DOWNLOADED


# --- the pages ------------------------------------------------------------------------


def test_the_recovery_page_says_which_approvals_no_longer_count_and_why(
    two_approvals, second_officer, third_officer, officers_group, agent_user, officer
):
    third_officer.groups.remove(officers_group)
    second_officer.is_active = False
    second_officer.save()
    fourth = UserFactory(username="fred")
    fourth.groups.add(officers_group)

    agent_page = client_for(agent_user).get(f"/ra/recovery/{two_approvals.pk}/")
    officer_page = client_for(fourth).get(f"/ra/recovery/{two_approvals.pk}/")

    text = agent_page.content.decode()
    assert f"does not count: {NOT_OFFICER}" in text
    assert "does not count: the approver&#x27;s account is deactivated" in text
    assert "0 of 2 count" in text
    assert '<span class="badge recovery-pending">Waiting for approval</span>' in text
    assert "It cannot be carried out" in text
    assert not agent_page.context["can_perform"]
    assert "Carry it out" not in text
    assert officer_page.context["can_approve"]
    assert [lapse for _a, lapse in officer_page.context["approvals"]] == [
        "the approver's account is deactivated",
        NOT_OFFICER,
    ]


def test_the_recovery_list_counts_only_approvals_that_count(
    two_approvals, third_officer, officers_group, officer
):
    third_officer.groups.remove(officers_group)

    page = client_for(officer).get("/ra/recovery/")

    (row,) = [r for r in page.context["open"] if r.pk == two_approvals.pk]
    assert row.approval_count == 1


def test_the_queues_show_the_state_its_approvals_count_to_now(
    two_approvals, third_officer, officers_group, officer
):
    """The console and the list say what the recovery's page says: not "Approved" with
    one approval of two."""
    third_officer.groups.remove(officers_group)
    pending = '<span class="badge recovery-pending">Waiting for approval</span>'

    for url in ("/ra/", "/ra/recovery/"):
        text = client_for(officer).get(url).content.decode()
        assert pending in text
        assert "1 of 2" in text
        assert "recovery-approved" not in text

    third_officer.groups.add(officers_group)
    text = client_for(officer).get("/ra/recovery/").content.decode()
    assert "Approved: waiting for a key recovery agent</span>" in text
    assert pending not in text


def test_the_holder_sees_the_state_its_approvals_count_to_now(
    two_approvals, third_officer, officers_group, employee
):
    """Alice's pages said "approved: waiting for a key recovery agent" while the RA pages
    said it waits for approval again."""
    third_officer.groups.remove(officers_group)
    holder = client_for(employee)
    certificate = two_approvals.certificate

    pages = {
        url: holder.get(url).content.decode()
        for url in ("/", "/certificates/", f"/certificates/{certificate.pk}/")
    }

    for url, text in pages.items():
        assert "waiting for approval" in text.lower(), url
        assert "waiting for a key recovery agent" not in text, url
    third_officer.groups.add(officers_group)
    assert "waiting for a key recovery agent" in holder.get("/certificates/").content.decode()


def test_an_agent_cannot_carry_it_out_from_the_page_either(
    two_approvals, third_officer, officers_group, kra, agent_user
):
    third_officer.groups.remove(officers_group)

    response = client_for(agent_user).post(
        f"/ra/recovery/{two_approvals.pk}/perform/", agent_upload(kra.pkcs12, kra.password)
    )

    assert response.status_code == 400
    assert "no longer counts" in response.content.decode()
    two_approvals.refresh_from_db()
    assert two_approvals.state == State.APPROVED


# --- every count of approvals is the quorum's -----------------------------------------


def test_the_api_counts_only_approvals_that_count(
    two_approvals, third_officer, officers_group, employee
):
    """The holder follows it through the API: it must not say two of two while the page
    says the recovery cannot be carried out."""
    third_officer.groups.remove(officers_group)
    holder = token_client(employee)

    one = holder.get(f"{API}/recoveries/{two_approvals.pk}/").json()
    (listed,) = holder.get(f"{API}/recoveries/").json()["results"]

    assert (one["approvals"], one["approvals_required"]) == (1, 2)
    assert listed["approvals"] == 1
    assert len(recovery.quorum(two_approvals).counted) == 1


def test_the_api_list_counts_approvals_in_its_own_query(
    settings, archived, officer, second_officer, employee, django_assert_max_num_queries
):
    """Counting each recovery's approvals in turn costs a query per recovery."""
    settings.PKIPORTAL_RECOVERY_APPROVALS = 2
    holder = token_client(employee)
    url = f"{API}/recoveries/"

    def one_more() -> None:
        found = recovery.recovery_open(
            certificate=archived.certificate, officer=officer, reason="A third laptop lost."
        )
        recovery.recovery_approve(recovery=found, officer=second_officer)
        recovery.recovery_reject(recovery=found, officer=officer, reason="Found it again.")

    one_more()
    holder.get(url)  # the token's first use notes it; not the list's cost
    with CaptureQueriesContext(connection) as one:
        assert holder.get(url).status_code == 200
    for _ in range(4):
        one_more()

    with django_assert_max_num_queries(len(one.captured_queries)):
        data = holder.get(url).json()

    assert [row["approvals"] for row in data["results"]] == [1] * 5


def test_the_api_says_the_state_the_pages_say(
    two_approvals, third_officer, officers_group, employee, officer
):
    """The API said "approved" with one approval of two, while every page said the
    recovery waits for approval again."""
    third_officer.groups.remove(officers_group)
    detail = f"{API}/recoveries/{two_approvals.pk}/"
    holder, ra = token_client(employee), token_client(officer)  # two querysets, one rule

    one = holder.get(detail).json()
    (listed,) = holder.get(f"{API}/recoveries/").json()["results"]
    officers = ra.get(detail).json()
    page = client_for(officer).get(f"/ra/recovery/{two_approvals.pk}/").content.decode()

    assert '<span class="badge recovery-pending">' in page
    assert one["state"] == listed["state"] == officers["state"] == "pending"
    assert (one["approvals"], one["approvals_required"]) == (1, 2)
    two_approvals.refresh_from_db()
    assert two_approvals.state == State.APPROVED  # stored; shown as it counts now

    third_officer.groups.add(officers_group)
    assert holder.get(detail).json()["state"] == ra.get(detail).json()["state"] == "approved"


def test_the_api_answer_to_a_step_counts_the_quorum_too(
    two_approvals, third_officer, officers_group
):
    """An answer built from the object a step returns, not from the viewset's query."""
    third_officer.groups.remove(officers_group)
    found = KeyRecoveryRequest.objects.get(pk=two_approvals.pk)  # no quorum_met

    data = RecoveryOut(found).data

    assert (data["state"], data["approvals"]) == ("pending", 1)


def test_the_api_list_shows_states_in_its_own_query(
    settings, kra, template, employee, officer, second_officer, third_officer, officers_group,
    django_assert_max_num_queries,
):  # fmt: skip
    """Working out each recovery's state in turn costs a query per recovery."""
    settings.PKIPORTAL_RECOVERY_APPROVALS = 2
    holder = token_client(employee)
    url = f"{API}/recoveries/"

    def one_more() -> None:
        certificate, _bundle = services.certificate_issue_with_server_key(
            template=template("smime-encryption"), owner=employee,
            key_algorithm=KeyAlgorithm.EC_P256, pkcs12_password=OWNER_PKCS12_PASSWORD,
        )  # fmt: skip
        found = recovery.recovery_open(certificate=certificate, officer=officer, reason="Lost.")
        recovery.recovery_approve(recovery=found, officer=second_officer)
        recovery.recovery_approve(recovery=found, officer=third_officer)

    one_more()
    third_officer.groups.remove(officers_group)
    holder.get(url)  # the token's first use notes it; not the list's cost
    with CaptureQueriesContext(connection) as one:
        assert holder.get(url).status_code == 200
    third_officer.groups.add(officers_group)
    for _ in range(4):
        one_more()
    third_officer.groups.remove(officers_group)

    with django_assert_max_num_queries(len(one.captured_queries)):
        data = holder.get(url).json()

    assert [(row["state"], row["approvals"]) for row in data["results"]] == [("pending", 1)] * 5


def test_an_agent_is_not_called_for_a_recovery_whose_approval_no_longer_counts(
    two_approvals, third_officer, officers_group, agent_user
):
    """The start page's count is what an agent may carry out (may_be_performed)."""
    agent = client_for(agent_user)
    assert "1 key recovery waiting for an agent" in agent.get("/").content.decode()

    third_officer.groups.remove(officers_group)

    assert "waiting for an agent</a>" not in agent.get("/").content.decode()
    fourth = UserFactory(username="fred")
    fourth.groups.add(officers_group)
    recovery.recovery_approve(recovery=two_approvals, officer=fourth)
    assert "1 key recovery waiting for an agent" in agent.get("/").content.decode()


@pytest.mark.parametrize(
    "change",
    ["none", "group removed", "deactivated", "superuser demoted", "superuser deactivated"],
)
def test_the_lists_count_as_the_quorum_does(settings, opened, officers_group, change):
    """The lists count in SQL (ra_selectors.counted_approvals), a recovery's own steps in
    Python (recovery.quorum): both must say the same for every way of losing the role."""
    settings.PKIPORTAL_RECOVERY_APPROVALS = 3
    officer_approver = UserFactory(username="ann")
    officer_approver.groups.add(officers_group)
    superuser_approver = UserFactory(username="sue", is_superuser=True)
    for approver in (officer_approver, superuser_approver):
        recovery.recovery_approve(recovery=opened, officer=approver)
    if change == "group removed":
        officer_approver.groups.remove(officers_group)
    elif change == "deactivated":
        officer_approver.is_active = False
        officer_approver.save()
    elif change == "superuser demoted":
        superuser_approver.is_superuser = False
        superuser_approver.save()
    elif change == "superuser deactivated":
        superuser_approver.is_active = False
        superuser_approver.save()

    (listed,) = ra_selectors.open_recoveries().filter(pk=opened.pk)
    api = token_client(opened.certificate.owner).get(f"{API}/recoveries/{opened.pk}/").json()

    counted = len(recovery.quorum(opened).counted)
    assert counted == (2 if change == "none" else 1)
    assert listed.approval_count == api["approvals"] == counted


def test_a_refusal_for_an_open_recovery_names_the_state_its_approvals_count_to(
    two_approvals, third_officer, officers_group, officer, employee
):
    """A second ask or open is refused naming the open one's state: "approved: waiting for
    an agent" said that while its page said it waits for approval again."""
    third_officer.groups.remove(officers_group)
    certificate = two_approvals.certificate

    with pytest.raises(recovery.RecoveryAlreadyOpen) as by_holder:
        recovery.recovery_ask(certificate=certificate, holder=employee, reason="Lost my laptop.")
    with pytest.raises(recovery.RecoveryAlreadyOpen) as by_officer:
        recovery.recovery_open(certificate=certificate, officer=officer, reason="Again.")

    for refused in (by_holder, by_officer):
        assert "(waiting for approval)" in refused.value.message
        assert "approved" not in refused.value.message
