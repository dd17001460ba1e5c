"""Officer scopes and roll-outs: a scoped officer invites only the people their scope covers
and is told how many it left out, never whom; reminds or cancels only a roll-out whose
waiting people it covers; and sees, on a roll-out's page and in the API, only the people
it covers.

Olivia (``officer``) acts for Sales (``sales_scope``): Alice (``employee``) is in Sales, Bob
(``colleague``) in Engineering; Oscar (``second_officer``) is in no scope."""

from __future__ import annotations

import pytest

from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext

from enrollment import rollouts
from enrollment.exceptions import NotPermitted, PolicyViolation
from enrollment.models import AuditEvent, CertificateRequest, Rollout, RolloutInvitation
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for
from tests.enrollment.api_tools import API, token_client
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

FORM = "/ra/rollouts/new/"
LEFT_OUT = "1 person named is outside your officer scope (Sales) and would not be invited"


@pytest.fixture
def everyone(employee, colleague, sales_scope) -> Group:
    """A group holding Alice (Sales), Bob (Engineering) and Mia, an engineer in the group
    Sales people (so in the scope whatever her unit)."""
    mia = UserFactory(username="mia", organizational_unit="Engineering")
    mia.groups.add(sales_scope.people)
    group = Group.objects.create(name="All staff")
    group.user_set.add(employee, colleague, mia)
    return group


def create(officer, template, **kwargs) -> Rollout:
    return rollouts.rollout_create(
        officer=officer, template=template, key_algorithm=KeyAlgorithm.EC_P256, **kwargs
    )


def invited(rollout) -> set[str]:
    return {
        i.request.requester.username
        for i in RolloutInvitation.objects.filter(rollout=rollout).select_related(
            "request__requester"
        )
    }


# --- inviting ----------------------------------------------------------------------------


def test_a_scoped_officer_invites_only_the_people_the_scope_covers(officer, signing, everyone):
    rollout = create(officer, signing, group=everyone)

    assert invited(rollout) == {"alice", "mia"}
    assert not CertificateRequest.objects.filter(requester__username="bob").exists()
    assert rollout.skipped == [{"entry": "", "reason": "outside_scope", "count": 1}]
    assert rollout.skipped_count == 1
    event = AuditEvent.objects.get(action="rollout.create")
    assert event.detail["skipped"] == {"outside_scope": 1}


@pytest.mark.parametrize("who", ["second_officer", "admin_user"])
def test_an_officer_in_no_scope_and_a_superuser_invite_everyone(
    request, signing, everyone, sales_scope, who
):
    user = request.getfixturevalue(who)
    if user.is_superuser:
        sales_scope.officers.user_set.add(user)  # a superuser is never limited

    rollout = create(user, signing, group=everyone)

    assert invited(rollout) == {"alice", "bob", "mia"}
    assert rollout.skipped == []


def test_someone_outside_the_scope_is_counted_before_any_other_reason(
    officer, signing, everyone, colleague
):
    """Why Bob would not be invited (he is deactivated) is as much his as who he is."""
    colleague.is_active = False
    colleague.save()

    resolution = rollouts.rollout_resolve(officer=officer, template=signing, group=everyone)

    assert [u.username for u in resolution.eligible] == ["alice", "mia"]
    assert resolution.skipped == []
    assert (resolution.outside_scope, resolution.scope) == (1, "Sales")
    assert resolution.counts() == {"outside_scope": 1}


def test_named_entries_outside_the_scope_are_counted_not_listed(officer, signing, sales_scope):
    resolution = rollouts.rollout_resolve(
        officer=officer, template=signing, people="alice bob nosuchperson"
    )

    assert [u.username for u in resolution.eligible] == ["alice"]
    assert [(s.entry, s.reason) for s in resolution.skipped] == [("nosuchperson", "unknown")]
    assert resolution.outside_scope == 1


def test_a_roll_out_of_only_people_outside_the_scope_is_refused(officer, signing, sales_scope):
    with pytest.raises(PolicyViolation) as refused:
        create(officer, signing, people="bob")

    assert refused.value.message == "Nobody here can be invited: 1 outside your officer scope."
    assert not Rollout.objects.exists()
    assert not CertificateRequest.objects.exists()


def test_the_preview_says_how_many_the_scope_leaves_out_and_names_none(officer, signing, everyone):
    response = client_for(officer).post(
        FORM, {"template": signing.pk, "group": everyone.pk, "preview": "1"}
    )

    assert response.status_code == 200
    text = response.content.decode()
    assert LEFT_OUT in text
    assert "bob" not in text.lower()
    assert "Invite 2 people" in text


def test_the_preview_of_an_officer_in_no_scope_says_nothing_of_scopes(
    second_officer, signing, everyone
):
    response = client_for(second_officer).post(
        FORM, {"template": signing.pk, "group": everyone.pk, "preview": "1"}
    )

    assert 'id="outside-scope"' not in response.content.decode()
    assert "Invite 3 people" in response.content.decode()


def test_the_form_tells_a_scoped_officer_whom_they_invite(officer, second_officer, sales_scope):
    help_text = "Only the people your officer scope (Sales) covers are invited"

    assert help_text in client_for(officer).get(FORM).content.decode()
    assert help_text not in client_for(second_officer).get(FORM).content.decode()


def test_resolving_makes_no_more_queries_for_more_people_under_a_scope(
    officer, signing, sales_scope
):
    """Their groups are read once for the roll-out, not once per person."""
    group = Group.objects.create(name="Many")

    def add(count: int) -> None:
        for n in range(count):
            person = UserFactory(organizational_unit="Engineering" if n % 2 else "Finance")
            if n % 2:
                person.groups.add(sales_scope.people)
            group.user_set.add(person)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            rollouts.rollout_resolve(officer=officer, template=signing, group=group)
        return len(captured.captured_queries)

    add(3)
    few = queries()
    add(9)

    assert queries() == few


# --- reminding and cancelling -------------------------------------------------------------


@pytest.fixture
def oscars(second_officer, signing, everyone) -> Rollout:
    """Oscar (in no scope) invited Alice, Bob and Mia, and named someone unknown."""
    return create(second_officer, signing, group=everyone, people="nosuchperson")


def ending(verb: str, rollout, officer) -> int:
    if verb == "remind":
        return rollouts.rollout_remind(rollout=rollout, officer=officer)
    return rollouts.rollout_cancel(rollout=rollout, officer=officer)


@pytest.mark.parametrize("verb", ["remind", "cancel"])
def test_a_scoped_officer_may_not_remind_or_cancel_people_outside_the_scope(oscars, officer, verb):
    start = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()

    with pytest.raises(NotPermitted) as refused:
        ending(verb, oscars, officer)

    assert refused.value.message == (
        "1 of the people this roll-out still waits for is outside your officer scope "
        "(Sales): only an officer whose scope covers them all reminds them or cancels it."
    )
    oscars.refresh_from_db()
    assert (oscars.state, oscars.last_reminded_at) == ("open", None)
    # The attempt is recorded, nothing else: no rollout.remind or .cancel, no withdrawal.
    (refusal,) = AuditEvent.objects.filter(id__gt=start)
    assert (refusal.action, refusal.actor, refusal.object_id, refusal.detail) == (
        "access.refused",
        officer,
        str(oscars.pk),
        {"attempted": f"rollout.{verb}", "reason": "out_of_scope"},
    )
    assert not RolloutInvitation.objects.filter(reminded_at__isnull=False).exists()
    assert set(
        CertificateRequest.objects.filter(invitation__rollout=oscars).values_list(
            "state", flat=True
        )
    ) == {CertificateRequest.State.APPROVED}


@pytest.mark.parametrize("verb", ["remind", "cancel"])
def test_a_forged_remind_or_cancel_from_a_scoped_officer_is_a_403(oscars, officer, verb):
    response = client_for(officer).post(f"/ra/rollouts/{oscars.pk}/{verb}/")

    assert response.status_code == 403
    assert "outside your officer scope (Sales)" in response.content.decode()
    assert not AuditEvent.objects.filter(action=f"rollout.{verb}").exists()


@pytest.mark.parametrize("verb", ["remind", "cancel"])
def test_once_the_people_outside_have_gone_a_scoped_officer_may_end_it(oscars, officer, verb):
    """Bob declined: everyone still waited for is in Olivia's scope."""
    CertificateRequest.objects.filter(invitation__rollout=oscars, requester__username="bob").update(
        state=CertificateRequest.State.WITHDRAWN
    )

    assert ending(verb, oscars, officer) == 2


@pytest.mark.parametrize("verb", ["remind", "cancel"])
def test_a_scoped_officer_reminds_and_cancels_their_own_roll_out(officer, signing, everyone, verb):
    rollout = create(officer, signing, group=everyone)

    assert ending(verb, rollout, officer) == 2


# --- a roll-out's page --------------------------------------------------------------------


def test_a_scoped_officer_sees_only_the_people_the_scope_covers(oscars, officer):
    response = client_for(officer).get(f"/ra/rollouts/{oscars.pk}/")

    assert response.status_code == 200
    assert [i.request.requester.username for i in response.context["page"]] == ["alice", "mia"]
    assert response.context["counts"]["invited"] == 2
    text = response.content.decode()
    assert (
        "1 person of this roll-out is outside your officer scope (Sales) and not shown or "
        "counted here."
    ) in text
    assert "bob" not in text.lower()
    # Oscar's list of whom he named may name people outside her scope.
    assert response.context["skipped"] is None
    assert "nosuchperson" not in text
    assert 'id="skipped-hidden"' in text
    # Remind and cancel would act on Bob too.
    assert f"/ra/rollouts/{oscars.pk}/remind/" not in text
    assert 'id="not-all-in-scope"' in text


def test_an_officer_in_no_scope_sees_everyone_and_the_count_left_out(
    officer, second_officer, signing, everyone
):
    rollout = create(officer, signing, group=everyone, people="nosuchperson")

    response = client_for(second_officer).get(f"/ra/rollouts/{rollout.pk}/")

    assert [i.request.requester.username for i in response.context["page"]] == ["alice", "mia"]
    text = response.content.decode()
    assert 'id="outside-scope"' not in text
    assert [(r.entry, r.named) for r in response.context["skipped"]] == [
        ("1 person", False),
        ("nosuchperson", True),
    ]
    assert "outside the officer scope of the officer who invited (not named)" in text
    assert "The first" not in text  # both kept: the one row stands for one person
    assert f"/ra/rollouts/{rollout.pk}/remind/" in text


def test_the_officer_who_invited_sees_whom_they_named(officer, signing, everyone):
    rollout = create(officer, signing, group=everyone, people="nosuchperson")

    response = client_for(officer).get(f"/ra/rollouts/{rollout.pk}/")

    assert [r.entry for r in response.context["skipped"]] == ["1 person", "nosuchperson"]
    assert f"/ra/rollouts/{rollout.pk}/remind/" in response.content.decode()


@pytest.mark.parametrize(("who", "status"), [("employee", 403), ("colleague", 403)])
def test_a_roll_outs_page_is_for_officers_only(request, oscars, who, status):
    response = client_for(request.getfixturevalue(who)).get(f"/ra/rollouts/{oscars.pk}/")

    assert response.status_code == status


# --- the API --------------------------------------------------------------------------------


def test_the_api_shows_a_scoped_officer_only_the_people_the_scope_covers(
    oscars, officer, second_officer
):
    url = f"{API}/rollouts/{oscars.pk}/"

    to_olivia = token_client(officer).get(url).json()
    to_oscar = token_client(second_officer).get(url).json()

    assert [p["username"] for p in to_olivia["people"]] == ["alice", "mia"]
    assert to_olivia["counts"]["invited"] == 2
    assert to_olivia["skipped"] is None
    assert [p["username"] for p in to_oscar["people"]] == ["alice", "bob", "mia"]
    assert to_oscar["counts"]["invited"] == 3
    assert to_oscar["skipped"] == [{"entry": "nosuchperson", "reason": "unknown"}]
    listed = token_client(officer).get(f"{API}/rollouts/").json()["results"]
    assert [r["counts"]["invited"] for r in listed] == [2]


def test_the_api_creates_a_scoped_roll_out_and_counts_those_left_out(officer, signing, everyone):
    response = token_client(officer).post(
        f"{API}/rollouts/",
        {"template": signing.slug, "group": everyone.name, "key_algorithm": "ec-p256"},
        format="json",
    )

    assert response.status_code == 201
    body = response.json()
    assert [p["username"] for p in body["people"]] == ["alice", "mia"]
    assert body["skipped"] == [{"entry": "", "reason": "outside_scope", "count": 1}]
    assert body["skipped_count"] == 1


@pytest.mark.parametrize(("who", "status"), [("employee", 403), (None, 401)])
def test_the_roll_out_api_is_for_officers_only(request, oscars, who, status):
    user = request.getfixturevalue(who) if who else None

    assert token_client(user).get(f"{API}/rollouts/{oscars.pk}/").status_code == status
