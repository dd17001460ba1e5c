"""Key recovery follows officer scopes (enrollment.scopes): nobody opens, accepts, approves,
rejects or carries out the recovery of a key whose owner is outside their scope, nor is
mailed about it; an approval counts only while its officer's scope still covers the owner,
in the lists' SQL as in a recovery's own steps. The pages: test_recovery_scope_pages.py.

Olivia (``officer``) is scoped to Sales, where Alice (``employee``) works; Bob
(``colleague``) is in Engineering. Oscar (``second_officer``) and the admin act for
everyone; Karl (``agent_user``) is scoped to Sales as ``scoped_agent``. The keys and
recoveries are tests/enrollment/conftest.py's."""

from __future__ import annotations

import pytest

from django.contrib.auth.models import Group
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext

from enrollment import ra_selectors, recovery
from enrollment.exceptions import InvalidState, NotPermitted
from enrollment.models import AuditEvent, Certificate, KeyRecoveryRequest, OfficerScope
from tests.enrollment.api_tools import API, token_client
from tests.enrollment.ra_fixtures import (
    ACCEPT_NOTE,
    HOLDER_REASON,
    REASON,
    snapshot,
)
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_pkcs12")]

State = KeyRecoveryRequest.State
OUT = "outside the people your officer scope covers"
LAPSED = "outside their officer scope now"


@pytest.fixture
def kra(quick_kra):
    return quick_kra


def open_for(certificate, officer, **kwargs) -> KeyRecoveryRequest:
    return recovery.recovery_open(certificate=certificate, officer=officer, reason=REASON, **kwargs)


def perform(found, kra, agent_user):
    return recovery.recovery_perform(
        recovery=found, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
        agent_password=kra.password,
    )  # fmt: skip


def failures(action: str) -> list[AuditEvent]:
    """The refused attempts at a step out of scope: each one access.refused event, none of
    the step's own beside it."""
    assert not AuditEvent.objects.filter(action=action, outcome=AuditEvent.Outcome.FAILURE).exists()
    refused = AuditEvent.objects.filter(action="access.refused", detail__attempted=action)
    assert {e.detail["reason"] for e in refused} <= {"out_of_scope"}
    assert {e.outcome for e in refused} <= {AuditEvent.Outcome.FAILURE}
    return list(refused.order_by("pk"))


def names_nobody(text: str) -> bool:
    return not any(name in text for name in ("Bob", "Brown", "bob@", "Alice", "Andersson"))


# --- open -------------------------------------------------------------------------------


def test_a_scoped_officer_opens_a_recovery_only_of_a_key_in_their_scope(
    officer, alices_key, bobs_key
):
    with pytest.raises(NotPermitted) as refused:
        open_for(bobs_key.certificate, officer)

    assert OUT in refused.value.message
    assert names_nobody(refused.value.message)
    assert not KeyRecoveryRequest.objects.filter(certificate=bobs_key.certificate).exists()
    (event,) = failures("recovery.open")
    assert event.actor == officer
    assert open_for(alices_key.certificate, officer).requested_by == officer


@pytest.mark.parametrize("who", ["unscoped officer", "superuser in the scope's group"])
def test_who_acts_for_everyone_opens_a_recovery_of_any_key(
    who, bobs_key, second_officer, admin_user, sales_scope
):
    opener = second_officer if who == "unscoped officer" else admin_user
    if who != "unscoped officer":
        sales_scope.officers.user_set.add(admin_user)

    assert open_for(bobs_key.certificate, opener).state == State.PENDING


# --- accept -----------------------------------------------------------------------------


def test_only_an_officer_whose_scope_covers_the_holder_accepts_their_ask(
    bob_asks, officer, second_officer
):
    before = snapshot(bob_asks)

    with pytest.raises(NotPermitted, match=OUT):
        recovery.recovery_accept(recovery=bob_asks, officer=officer, note=ACCEPT_NOTE)

    assert snapshot(bob_asks) == before
    assert len(failures("recovery.accept")) == 1
    accepted = recovery.recovery_accept(recovery=bob_asks, officer=second_officer, note=ACCEPT_NOTE)
    assert accepted.state == State.PENDING


# --- approve and reject -----------------------------------------------------------------


def test_only_officers_whose_scope_covers_the_owner_approve(bobs_opened, officer, admin_user):
    before = snapshot(bobs_opened)

    with pytest.raises(NotPermitted, match=OUT):
        recovery.recovery_approve(recovery=bobs_opened, officer=officer)

    assert snapshot(bobs_opened) == before
    assert len(failures("recovery.approve")) == 1
    assert recovery.recovery_approve(recovery=bobs_opened, officer=admin_user).state == (
        State.APPROVED
    )


def test_only_officers_whose_scope_covers_the_owner_reject(bobs_opened, officer):
    before = snapshot(bobs_opened)

    with pytest.raises(NotPermitted, match=OUT):
        recovery.recovery_reject(recovery=bobs_opened, officer=officer, reason="No.")

    assert snapshot(bobs_opened) == before
    assert len(failures("recovery.reject")) == 1


# --- an approval counts only while the officer's scope covers the owner -------------------


def narrow(sales_scope) -> None:
    """The Sales scope no longer covers the Sales unit (nor so Alice)."""
    sales_scope.scope.organizational_units = "Marketing"
    sales_scope.scope.save()


def test_an_approval_stops_counting_when_the_scope_no_longer_covers_the_owner(
    olivia_approved, sales_scope, officer, kra, agent_user
):
    narrow(sales_scope)
    before = snapshot(olivia_approved)

    found = recovery.quorum(olivia_approved)
    with pytest.raises(InvalidState) as refused:
        perform(olivia_approved, kra, agent_user)

    assert not found.met
    assert [(a.officer, lapse.value) for a, lapse in found.lapsed] == [(officer, LAPSED)]
    assert f"Olivia Officer's approval ({LAPSED}) no longer counts" in refused.value.message
    assert "whose officer scope covers the key's owner again" in refused.value.message
    assert snapshot(olivia_approved) == before


def test_the_approval_counts_again_once_the_scope_covers_the_owner_again(
    olivia_approved, sales_scope, kra, agent_user
):
    narrow(sales_scope)
    with pytest.raises(InvalidState):
        perform(olivia_approved, kra, agent_user)

    sales_scope.scope.organizational_units = "Sales"
    sales_scope.scope.save()
    done, _password = perform(olivia_approved, kra, agent_user)

    assert done.state == State.READY


def test_an_owner_who_moves_out_of_the_scope_takes_the_approval_with_them(
    olivia_approved, employee, kra, agent_user, second_officer
):
    employee.organizational_unit = "Engineering"
    employee.save()

    with pytest.raises(InvalidState, match=LAPSED):
        perform(olivia_approved, kra, agent_user)
    # Another officer, who acts for Alice, makes up for it.
    tina = UserFactory(username="tina")
    tina.groups.add(Group.objects.get(name="RA officers"))
    recovery.recovery_approve(recovery=olivia_approved, officer=tina)
    assert perform(olivia_approved, kra, agent_user)[0].state == State.READY


def test_the_key_is_not_released_once_the_scope_no_longer_covers_the_owner(
    olivia_approved, sales_scope, kra, agent_user, employee
):
    done, _password = perform(olivia_approved, kra, agent_user)
    narrow(sales_scope)

    with pytest.raises(InvalidState) as refused:
        recovery.recovery_download(recovery=done, user=employee)

    assert LAPSED in refused.value.message
    done.refresh_from_db()
    assert (done.state, done.bundle is not None) == (State.READY, True)
    sales_scope.scope.organizational_units = "Sales"
    sales_scope.scope.save()
    assert recovery.recovery_download(recovery=done, user=employee)[1]


@pytest.mark.parametrize(
    "change", ["none", "scope narrowed", "owner moved", "approver left the scope's group"]
)
def test_the_lists_count_as_the_quorum_does_under_scopes(
    settings, alices_key, second_officer, officer, sales_scope, employee, change
):
    """The lists count in SQL (scopes.within_reach), a recovery's own steps in Python
    (approval_lapse): both must say the same for every way a scope changes."""
    settings.PKIPORTAL_RECOVERY_APPROVALS = 3
    found = open_for(alices_key.certificate, second_officer)
    member = UserFactory(username="mona", organizational_unit="Engineering")
    member.groups.add(Group.objects.get(name="RA officers"), sales_scope.officers)
    # A second scope covers Alice through a group of people, not her unit.
    helpers = Group.objects.create(name="Helpdesk officers")
    helpers.user_set.add(member)
    fans = Group.objects.create(name="Alice's team")
    fans.user_set.add(employee)
    OfficerScope.objects.create(name="Helpdesk", officers=helpers).people_groups.add(fans)
    recovery.recovery_approve(recovery=found, officer=officer)
    recovery.recovery_approve(recovery=found, officer=member)
    expected = 2
    if change == "scope narrowed":
        narrow(sales_scope)
        expected = 1  # Olivia's lapses; Mona still covers Alice through her team
    elif change == "owner moved":
        employee.organizational_unit = "Engineering"
        employee.save()
        fans.user_set.remove(employee)
        expected = 0
    elif change == "approver left the scope's group":
        sales_scope.officers.user_set.remove(officer)
        narrow(sales_scope)
        expected = 2  # in no scope's group, Olivia acts for everyone again

    (listed,) = ra_selectors.open_recoveries().filter(pk=found.pk)
    api = token_client(employee).get(f"{API}/recoveries/{found.pk}/").json()

    assert len(recovery.quorum(found).counted) == expected
    assert listed.approval_count == api["approvals"] == expected


def test_a_scope_of_nobody_counts_no_approval_in_either_way(alices_key, second_officer, officer):
    found = open_for(alices_key.certificate, second_officer)
    recovery.recovery_approve(recovery=found, officer=officer)
    idle = Group.objects.create(name="Idle officers")
    OfficerScope.objects.filter(name="Sales").update(officers=idle)
    OfficerScope.objects.create(name="Nobody", officers=Group.objects.get(name="Sales officers"))

    (listed,) = ra_selectors.open_recoveries().filter(pk=found.pk)

    assert listed.approval_count == len(recovery.quorum(found).counted) == 0


# --- perform --------------------------------------------------------------------------


def test_only_an_agent_whose_scope_covers_the_owner_carries_it_out(
    bobs_approved, scoped_agent, kra
):
    before = snapshot(bobs_approved)

    with pytest.raises(NotPermitted, match=OUT):
        perform(bobs_approved, kra, scoped_agent)
    with pytest.raises(NotPermitted, match=OUT):
        recovery.recovery_archive_export(recovery=bobs_approved, agent_user=scoped_agent)

    assert snapshot(bobs_approved) == before
    assert len(failures("recovery.perform")) == 1
    assert len(failures("recovery.export")) == 1


def test_an_unscoped_agent_carries_it_out(bobs_approved, agent_user, kra):
    assert perform(bobs_approved, kra, agent_user)[0].state == State.READY


# --- notices ----------------------------------------------------------------------------


def recipients() -> set[str]:
    return {address for message in mail.outbox for address in message.to}


def test_officers_are_mailed_only_of_recoveries_in_their_scope(
    bobs_key, alices_key, officer, second_officer, colleague, django_capture_on_commit_callbacks
):
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        recovery.recovery_ask(
            certificate=bobs_key.certificate, holder=colleague, reason=HOLDER_REASON
        )
    asked = recipients()
    mail.outbox.clear()
    admin = UserFactory(username="root2", is_superuser=True)
    with django_capture_on_commit_callbacks(execute=True):
        open_for(alices_key.certificate, admin)
    alices = recipients()

    assert second_officer.email in asked
    assert officer.email not in asked
    assert {officer.email, second_officer.email} <= alices


def test_agents_are_mailed_only_of_recoveries_in_their_scope(
    bobs_opened,
    alices_key,
    scoped_agent,
    admin_user,
    second_officer,
    django_capture_on_commit_callbacks,
):
    other = UserFactory(username="kim")
    other.groups.add(Group.objects.get(name="Key recovery agents"))
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        recovery.recovery_approve(recovery=bobs_opened, officer=admin_user)

    assert other.email in recipients()
    assert scoped_agent.email not in recipients()


def test_a_notice_reads_the_officers_scopes_at_once(
    bobs_key, second_officer, sales_scope, colleague
):
    """Whether each officer's scope covers the holder: no query per officer."""
    officers = Group.objects.get(name="RA officers")

    def ask_and_count() -> int:
        found = KeyRecoveryRequest.objects.filter(state=State.REQUESTED).first()
        if found is not None:
            recovery.recovery_withdraw(recovery=found, holder=colleague)
        certificate = Certificate.objects.get(pk=bobs_key.certificate.pk)  # nothing cached
        with CaptureQueriesContext(connection) as queries:
            recovery.recovery_ask(certificate=certificate, holder=colleague, reason=HOLDER_REASON)
        return len(queries.captured_queries)

    few = ask_and_count()
    for n in range(5):
        more = UserFactory(username=f"scoped{n}")
        more.groups.add(officers, sales_scope.officers)
    many = ask_and_count()

    assert many == few
