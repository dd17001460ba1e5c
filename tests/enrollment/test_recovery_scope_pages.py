"""Key recovery's pages, queues and API under officer scopes: an officer or agent sees
and is offered only the recoveries of key owners their scope covers; any other is a 403 that
names nobody, and a step posted to it is refused, audited and changes nothing. The key
owner's own pages are untouched, and a page says when scopes leave nobody to finish.

The people, scopes, keys and recoveries are test_recovery_scopes.py's and
tests/enrollment/conftest.py's."""

from __future__ import annotations

import pytest

from django.contrib.auth.models import Group

from enrollment import recovery, scopes
from enrollment.exceptions import NotPermitted
from enrollment.models import KeyRecoveryRequest, OfficerScope
from tests.conftest import client_for
from tests.enrollment.api_tools import API, token_client
from tests.enrollment.ra_fixtures import ACCEPT_NOTE, HOLDER_REASON, REASON, agent_upload, snapshot
from tests.enrollment.test_recovery_scopes import (
    LAPSED,
    OUT,
    failures,
    names_nobody,
    narrow,
    open_for,
    perform,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_pkcs12")]

State = KeyRecoveryRequest.State


@pytest.fixture
def kra(quick_kra):
    return quick_kra


# --- open -------------------------------------------------------------------------------


def test_the_certificate_picker_offers_only_keys_in_the_scope(officer, alices_key, bobs_key):
    page = client_for(officer).get("/ra/recovery/new/", {"q": "example.com"})

    assert [c.pk for c in page.context["results"]] == [alices_key.certificate.pk]


def test_opening_an_out_of_scope_key_on_the_web_is_a_403_naming_nobody(officer, bobs_key):
    client = client_for(officer)
    certificate = bobs_key.certificate

    shown = client.get("/ra/recovery/new/", {"certificate": certificate.pk})
    posted = client.post(
        "/ra/recovery/new/",
        {"certificate": certificate.pk, "reason": REASON, "deliver_to": "owner",
         "pkcs12_format": "modern"},
    )  # fmt: skip

    for response in (shown, posted):
        assert response.status_code == 403
        assert OUT in response.content.decode()
        assert names_nobody(response.content.decode())
    assert not KeyRecoveryRequest.objects.exists()
    assert len(failures("recovery.open")) == 1  # the attempt, as any refused open


# --- accept -----------------------------------------------------------------------------


def test_accepting_out_of_scope_on_the_web_is_a_403_audited(bob_asks, officer):
    before = snapshot(bob_asks)

    response = client_for(officer).post(
        f"/ra/recovery/{bob_asks.pk}/accept/", {"note": ACCEPT_NOTE}
    )

    assert response.status_code == 403
    assert names_nobody(response.content.decode())
    assert snapshot(bob_asks) == before
    (event,) = failures("recovery.accept")
    assert (event.actor, event.detail) == (
        officer,
        {"attempted": "recovery.accept", "reason": "out_of_scope"},
    )


def test_the_asks_waiting_are_only_those_in_the_scope(
    officer, second_officer, bob_asks, alices_key, employee
):
    alices = recovery.recovery_ask(
        certificate=alices_key.certificate, holder=employee, reason=HOLDER_REASON
    )
    olivia, oscar = client_for(officer), client_for(second_officer)

    listed = {r.pk for r in olivia.get("/ra/recovery/").context["open"]}
    console = olivia.get("/ra/").context
    home = olivia.get("/").context

    assert listed == {alices.pk}
    assert [r.pk for r in console["recoveries"]] == [alices.pk]
    assert console["recovery_asks"] == 1
    assert home["recovery_asks"] == 1
    assert oscar.get("/").context["recovery_asks"] == 2
    assert {r.pk for r in oscar.get("/ra/recovery/").context["open"]} == {alices.pk, bob_asks.pk}


# --- approve and reject -----------------------------------------------------------------


@pytest.mark.parametrize("step", ["approve", "reject"])
def test_deciding_out_of_scope_on_the_web_is_a_403_that_changes_nothing(step, bobs_opened, officer):
    before = snapshot(bobs_opened)

    response = client_for(officer).post(
        f"/ra/recovery/{bobs_opened.pk}/{step}/", {"reason": "Not needed."}
    )

    assert response.status_code == 403
    assert OUT in response.content.decode()
    assert names_nobody(response.content.decode())
    assert snapshot(bobs_opened) == before
    assert len(failures(f"recovery.{step}")) == 1


def test_the_page_of_an_out_of_scope_recovery_is_a_403_naming_nobody(bobs_opened, officer):
    response = client_for(officer).get(f"/ra/recovery/{bobs_opened.pk}/")

    assert response.status_code == 403
    assert OUT in response.content.decode()
    assert names_nobody(response.content.decode())


def test_an_in_scope_officer_is_offered_every_step(alices_key, second_officer, officer):
    found = open_for(alices_key.certificate, second_officer)

    page = client_for(officer).get(f"/ra/recovery/{found.pk}/")

    assert page.status_code == 200
    assert page.context["can_approve"]
    assert page.context["can_reject"]
    assert page.context["stranded"] is None


# --- an approval counts only while the officer's scope covers the owner -------------------


def test_the_page_says_whose_approval_no_longer_counts_and_why(
    olivia_approved, sales_scope, second_officer, agent_user
):
    narrow(sales_scope)

    text = client_for(agent_user).get(f"/ra/recovery/{olivia_approved.pk}/").content.decode()

    assert f"does not count: {LAPSED}" in text
    assert "It cannot be carried out" in text
    assert "Carry it out" not in text
    assert "(or the approver's scope back)" in text


# --- perform --------------------------------------------------------------------------


def test_an_out_of_scope_agent_is_refused_on_every_page_and_nothing_changes(
    bobs_approved, scoped_agent, kra
):
    agent = client_for(scoped_agent)
    base = f"/ra/recovery/{bobs_approved.pk}"
    before = snapshot(bobs_approved)

    responses = {
        "page": agent.get(f"{base}/"),
        "perform page": agent.get(f"{base}/perform/"),
        "perform": agent.post(f"{base}/perform/", agent_upload(kra.pkcs12, kra.password)),
        "archive": agent.post(f"{base}/archive/"),
        "offline": agent.post(f"{base}/perform/offline/", {"key_passphrase": ""}),
    }

    for name, response in responses.items():
        assert response.status_code == 403, name
        assert OUT in response.content.decode(), name
        assert names_nobody(response.content.decode()), name
    assert snapshot(bobs_approved) == before
    assert len(failures("recovery.perform")) == 2  # online and offline
    assert len(failures("recovery.export")) == 1


def test_an_in_scope_agent_is_offered_carry_it_out(olivia_approved, scoped_agent):
    page = client_for(scoped_agent).get(f"/ra/recovery/{olivia_approved.pk}/")

    assert page.context["can_perform"]
    assert "Carry it out" in page.content.decode()


def test_the_agents_start_page_counts_only_recoveries_in_their_scope(
    bobs_approved, olivia_approved, scoped_agent, agent_user
):
    text = client_for(scoped_agent).get("/").content.decode()
    listed = client_for(scoped_agent).get("/ra/recovery/").context["open"]

    assert "1 key recovery waiting for an agent" in text
    assert {r.pk for r in listed} == {olivia_approved.pk}
    sales = Group.objects.get(name="Sales officers")
    sales.user_set.remove(agent_user)
    assert (
        "2 key recoveries waiting for an agent" in client_for(agent_user).get("/").content.decode()
    )


# --- the API ----------------------------------------------------------------------------


def test_the_api_shows_an_officer_only_recoveries_in_their_scope(
    bobs_opened, olivia_approved, officer, colleague
):
    olivia = token_client(officer)

    out = olivia.get(f"{API}/recoveries/{bobs_opened.pk}/")
    inside = olivia.get(f"{API}/recoveries/{olivia_approved.pk}/")

    assert out.status_code == 403
    assert OUT in out.json()["detail"]
    assert names_nobody(out.json()["detail"])
    assert inside.status_code == 200
    # The holder follows their own, scopes or not.
    assert token_client(colleague).get(f"{API}/recoveries/{bobs_opened.pk}/").status_code == 200


# --- the key owner's own steps ------------------------------------------------------------


def test_the_owners_own_steps_ignore_scopes(
    alices_key, employee, second_officer, admin_user, kra, agent_user
):
    """Alice is herself an officer scoped to Engineering: she still asks for her own key,
    follows it and downloads it."""
    engineering = Group.objects.create(name="Engineering officers")
    engineering.user_set.add(employee)
    employee.groups.add(Group.objects.get(name="RA officers"))
    OfficerScope.objects.create(
        name="Engineering", officers=engineering, organizational_units="Engineering"
    )
    scopes.forget_reach(employee)
    alice = client_for(employee)

    asked = recovery.recovery_ask(
        certificate=alices_key.certificate, holder=employee, reason=HOLDER_REASON
    )
    assert alice.get(f"/ra/recovery/{asked.pk}/").status_code == 200
    recovery.recovery_accept(recovery=asked, officer=second_officer, note=ACCEPT_NOTE)
    recovery.recovery_approve(recovery=asked, officer=admin_user)
    perform(asked, kra, agent_user)

    assert alice.get(f"/ra/recovery/{asked.pk}/").context["is_recipient"]
    assert alice.post(f"/ra/recovery/{asked.pk}/download/").status_code == 200
    assert token_client(employee).get(f"{API}/recoveries/{asked.pk}/").status_code == 200


def test_an_officer_does_not_receive_a_key_once_its_owner_left_their_scope(
    alices_key, officer, second_officer, sales_scope, kra, agent_user
):
    found = open_for(
        alices_key.certificate, officer, deliver_to=KeyRecoveryRequest.Recipient.REQUESTER
    )
    recovery.recovery_approve(recovery=found, officer=second_officer)
    done, _password = perform(found, kra, agent_user)
    narrow(sales_scope)
    scopes.forget_reach(officer)

    with pytest.raises(NotPermitted, match="its owner is now outside the people your officer"):
        recovery.recovery_download(recovery=done, user=officer)
    page = client_for(officer).get(f"/ra/recovery/{found.pk}/")

    assert page.status_code == 200  # it is theirs to see, not to take
    assert "its owner is now outside the people your officer scope covers" in (
        page.content.decode()
    )
    assert not page.context["can_reject"]
    assert not page.context["is_recipient"]


# --- nobody left to finish it -------------------------------------------------------------


def test_the_page_says_when_scopes_leave_no_agent_to_carry_it_out(
    bobs_approved, scoped_agent, second_officer
):
    page = client_for(second_officer).get(f"/ra/recovery/{bobs_approved.pk}/")

    assert (
        "key recovery agent whose scope covers the key's owner to carry it out"
        in (page.context["stranded"])
    )
    assert page.context["stranded"] in page.content.decode().replace("&#x27;", "'")
    Group.objects.get(name="Sales officers").user_set.remove(scoped_agent)
    assert (
        client_for(second_officer).get(f"/ra/recovery/{bobs_approved.pk}/").context["stranded"]
        is None
    )


def test_the_page_says_when_scopes_leave_too_few_approvers(
    bobs_opened, officer, second_officer, admin_user
):
    """Oscar opened it; the admin may still approve: only once the admin is gone too is
    nobody left (Olivia's scope leaves Bob out)."""
    olivia = client_for(officer)
    assert (
        client_for(second_officer).get(f"/ra/recovery/{bobs_opened.pk}/").context["stranded"]
        is None
    )

    admin_user.is_active = False
    admin_user.save()
    page = client_for(second_officer).get(f"/ra/recovery/{bobs_opened.pk}/")

    assert "RA officer whose scope covers the key's owner to approve it" in page.context["stranded"]
    assert olivia.get(f"/ra/recovery/{bobs_opened.pk}/").status_code == 403


def test_nothing_is_said_when_no_scope_is_the_cause(approved, officer, agent_user):
    """Without scopes the page says nothing new, even where nobody is left (Karl approved)."""
    page = client_for(officer).get(f"/ra/recovery/{approved.pk}/")

    assert page.context["stranded"] is None
