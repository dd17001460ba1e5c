"""A privileged action refused to someone holding a role, for who they are (outside their
officer scope, their own request, not an approver, not an officer or agent), leaves one
``access.refused`` audit event (services.access_refusal_record): what was attempted, on
which object, why, from where. It is written apart from the refused action, which changes
nothing, so that action's rollback (or the request's, under ATOMIC_REQUESTS) keeps it.
Permitted actions, reads and the refusals of people without a role write none.

Olivia (``officer``) acts for Sales, where Alice (``employee``) works; Bob (``colleague``)
is in Engineering; Oscar (``second_officer``) acts for everyone; Karl (``agent_user``) is
a key recovery agent and no officer."""

from __future__ import annotations

import pytest

from django.contrib.auth.models import Group
from django.db import connection, transaction
from django.urls import reverse

from enrollment import audit, leavers, rollouts, services
from enrollment.exceptions import NotPermitted
from enrollment.models import (
    AuditEvent,
    Certificate,
    CertificateRequest,
    CertificateTemplate,
    KeyRecoveryRequest,
    Rollout,
    SharedMailbox,
)
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for
from tests.enrollment.api_tools import certificate_url, request_url, token_client
from tests.enrollment.ra_fixtures import snapshot
from tests.enrollment.tools import issue, new_key
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_pkcs12")]

REFUSED = "access.refused"
CLIENT = "127.0.0.1"  # the test client's address


@pytest.fixture
def kra(quick_kra):
    return quick_kra


def submit(who, template) -> CertificateRequest:
    return services.request_submit(
        requester=who, template=template, key_algorithm=KeyAlgorithm.EC_P256, channel="web"
    )


@pytest.fixture
def needs_approval(hierarchy, approval) -> CertificateTemplate:
    return approval("smime-signing")


@pytest.fixture
def bobs(needs_approval, colleague, sales_scope) -> CertificateRequest:
    """Bob's request: outside Olivia's scope."""
    return submit(colleague, needs_approval)


@pytest.fixture
def alices(needs_approval, employee, sales_scope) -> CertificateRequest:
    """Alice's request: inside Olivia's scope."""
    return submit(employee, needs_approval)


def refusals() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=REFUSED).order_by("pk"))


def the_refusal(actor, target, attempted: str, reason: str, *, address=CLIENT) -> AuditEvent:
    """The one access.refused event there is, and that it says all it should."""
    (event,) = refusals()
    assert event.actor == actor
    assert event.actor_name == actor.get_username()
    assert (event.object_type, event.object_id) == (target._meta.label, str(target.pk))
    assert event.outcome == AuditEvent.Outcome.FAILURE
    assert event.source_address == address
    assert event.detail == {"attempted": attempted, "reason": reason}
    return event


def undecided(request: CertificateRequest) -> bool:
    fresh = CertificateRequest.objects.get(pk=request.pk)
    return (
        fresh.state == CertificateRequest.State.PENDING
        and fresh.decided_by_id is None
        and not AuditEvent.objects.filter(
            action__in=["request.approve", "request.reject"], object_id=str(request.pk)
        ).exists()
    )


def decide_on_page(client, request: CertificateRequest, verb: str):
    return client.post(
        reverse("enrollment:ra-decide", args=[request.pk]), {"decision": verb, "reason": "ok"}
    )


# --- deciding a request -------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_a_decision_outside_the_scope_on_the_page_is_recorded(bobs, officer, verb):
    response = decide_on_page(client_for(officer), bobs, verb)

    assert response.status_code == 403
    assert undecided(bobs)
    the_refusal(officer, bobs, f"request.{verb}", "out_of_scope")


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_a_decision_outside_the_scope_by_api_is_recorded(bobs, officer, verb):
    response = token_client(officer).post(
        request_url(bobs.pk, verb), {"reason": "ok"}, format="json"
    )

    assert response.status_code == 403
    assert undecided(bobs)
    the_refusal(officer, bobs, f"request.{verb}", "out_of_scope")


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_deciding_ones_own_request_is_recorded(needs_approval, second_officer, verb):
    own = submit(second_officer, needs_approval)

    response = decide_on_page(client_for(second_officer), own, verb)

    assert response.status_code == 403
    assert undecided(own)
    the_refusal(second_officer, own, f"request.{verb}", "own_request")


def test_deciding_ones_own_request_by_api_is_recorded(needs_approval, second_officer):
    own = submit(second_officer, needs_approval)

    response = token_client(second_officer).post(
        request_url(own.pk, "approve"), {"reason": ""}, format="json"
    )

    assert response.status_code == 403
    assert undecided(own)
    the_refusal(second_officer, own, "request.approve", "own_request")


def test_a_delegate_deciding_their_mailboxs_request_is_recorded(
    needs_approval, employee, second_officer
):
    box = SharedMailbox.objects.create(email="finance@example.com", display_name="Finance")
    box.delegates.add(second_officer)
    boxed = submit(employee, needs_approval)
    CertificateRequest.objects.filter(pk=boxed.pk).update(mailbox=box)
    boxed.refresh_from_db()

    with pytest.raises(NotPermitted, match="delegate"):
        services.request_approve(request=boxed, officer=second_officer)

    assert undecided(boxed)
    the_refusal(second_officer, boxed, "request.approve", "mailbox_delegate", address=None)


def test_an_officer_outside_the_approvers_group_is_recorded(needs_approval, alices, officer):
    needs_approval.approver_group = Group.objects.create(name="HR approvers")
    needs_approval.save()
    alices.refresh_from_db()

    with pytest.raises(NotPermitted, match="HR approvers"):
        services.request_reject(request=alices, officer=officer, reason="no")

    assert undecided(alices)
    the_refusal(officer, alices, "request.reject", "not_an_approver", address=None)


def test_an_agent_who_is_no_officer_deciding_is_recorded(alices, agent_user):
    with pytest.raises(NotPermitted, match="Only RA officers"):
        services.request_approve(request=alices, officer=agent_user)

    assert undecided(alices)
    the_refusal(agent_user, alices, "request.approve", "not_an_officer", address=None)


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_an_agent_who_is_no_officer_deciding_on_the_page_or_by_api_is_recorded(
    alices, agent_user, verb
):
    """As the service records it, and the recovery pages an agent at an officer's step:
    the page's and the API's officer check refuse before the service, and record it too."""
    assert decide_on_page(client_for(agent_user), alices, verb).status_code == 403
    response = token_client(agent_user).post(
        request_url(alices.pk, verb), {"reason": "ok"}, format="json"
    )

    assert response.status_code == 403
    assert undecided(alices)
    assert [(e.actor, e.object_id, e.detail, e.source_address) for e in refusals()] == [
        (agent_user, str(alices.pk), {"attempted": f"request.{verb}", "reason": "not_an_officer"},
         CLIENT),
    ] * 2  # fmt: skip


def test_an_employee_deciding_a_request_that_does_not_exist_records_nothing(
    alices, agent_user, employee
):
    for who in (agent_user, employee):
        response = client_for(who).post(
            reverse("enrollment:ra-decide", args=[alices.pk + 1000]), {"decision": "approve"}
        )
        assert response.status_code in (403, 404)
    assert decide_on_page(client_for(employee), alices, "approve").status_code == 403
    assert refusals() == []


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_a_permitted_decision_records_no_refusal(alices, bobs, officer, second_officer, verb):
    assert decide_on_page(client_for(officer), alices, verb).status_code == 302
    response = token_client(second_officer).post(
        request_url(bobs.pk, verb), {"reason": "ok"}, format="json"
    )

    assert response.status_code == 200
    assert refusals() == []
    decided = AuditEvent.objects.get(action=f"request.{verb}", object_id=str(alices.pk))
    assert decided.source_address == CLIENT  # the decision says where it came from too


def test_reading_a_request_outside_the_scope_records_nothing(bobs, officer):
    """A 403 for a page or a GET is a read, not an attempt at a privileged action."""
    assert client_for(officer).get(f"/enroll/requests/{bobs.pk}/").status_code == 403
    assert token_client(officer).get(f"/api/v1/enrollments/{bobs.pk}/").status_code == 403

    assert refusals() == []


def test_an_employee_at_an_officers_url_gets_the_usual_403_unrecorded(bobs, employee):
    """Without a role: refused as anyone is, before any service, and not recorded."""
    assert decide_on_page(client_for(employee), bobs, "approve").status_code == 403
    response = token_client(employee).post(request_url(bobs.pk, "approve"), {}, format="json")
    assert response.status_code == 403
    with pytest.raises(NotPermitted, match="Only RA officers"):
        services.request_approve(request=bobs, officer=employee)

    assert undecided(bobs)
    assert refusals() == []


# --- revoking a certificate ---------------------------------------------------------------


@pytest.fixture
def bobs_certificate(hierarchy, colleague, template, sales_scope) -> Certificate:
    return issue(colleague, template("smime-signing"), new_key())


def still_valid(certificate: Certificate) -> bool:
    fresh = Certificate.objects.get(pk=certificate.pk)
    return (
        fresh.status == Certificate.Status.VALID
        and not (
            AuditEvent.objects.filter(action="certificate.revoke", object_id=str(certificate.pk))
        ).exists()
    )


def test_revoking_outside_the_scope_on_the_page_is_recorded(bobs_certificate, officer):
    response = client_for(officer).post(
        reverse("ra:certificate-revoke", args=[bobs_certificate.pk]),
        {"reason": "superseded", "confirm": "on"},
    )

    assert response.status_code == 403
    assert still_valid(bobs_certificate)
    the_refusal(officer, bobs_certificate, "certificate.revoke", "out_of_scope")


def test_revoking_outside_the_scope_by_api_is_recorded(bobs_certificate, officer):
    response = token_client(officer).post(
        certificate_url(bobs_certificate.serial) + "revoke/",
        {"reason": "superseded"},
        format="json",
    )

    assert response.status_code == 403
    assert still_valid(bobs_certificate)
    the_refusal(officer, bobs_certificate, "certificate.revoke", "out_of_scope")


def test_an_agent_revoking_anothers_certificate_is_recorded(bobs_certificate, agent_user):
    with pytest.raises(NotPermitted, match="only revoke your own"):
        services.certificate_revoke(
            certificate=bobs_certificate, reason="superseded", actor=agent_user
        )

    assert still_valid(bobs_certificate)
    the_refusal(agent_user, bobs_certificate, "certificate.revoke", "not_an_officer", address=None)


def test_an_agent_revoking_anothers_certificate_on_the_page_is_recorded(
    bobs_certificate, agent_user
):
    response = client_for(agent_user).post(
        reverse("ra:certificate-revoke", args=[bobs_certificate.pk]), {"reason": "superseded"}
    )

    assert response.status_code == 403
    assert still_valid(bobs_certificate)
    the_refusal(agent_user, bobs_certificate, "certificate.revoke", "not_an_officer")


def test_an_employee_revoking_anothers_certificate_is_not_recorded(bobs_certificate, employee):
    with pytest.raises(NotPermitted, match="only revoke your own"):
        services.certificate_revoke(
            certificate=bobs_certificate, reason="superseded", actor=employee
        )
    response = token_client(employee).post(
        certificate_url(bobs_certificate.serial) + "revoke/", {"reason": "superseded"}
    )

    assert response.status_code == 404  # not theirs to see
    assert still_valid(bobs_certificate)
    assert refusals() == []


def test_a_permitted_revocation_records_no_refusal(bobs_certificate, second_officer, officer):
    alices = issue(UserFactory(organizational_unit="Sales"), bobs_certificate.template, new_key())
    response = client_for(officer).post(
        reverse("ra:certificate-revoke", args=[alices.pk]),
        {"reason": "superseded", "confirm": "on"},
    )
    assert response.status_code == 302
    response = token_client(second_officer).post(
        certificate_url(bobs_certificate.serial) + "revoke/",
        {"reason": "superseded"},
        format="json",
    )

    assert response.status_code == 200
    assert refusals() == []


def test_revoking_a_leaver_outside_the_scope_is_recorded(bobs_certificate, colleague, officer):
    colleague.is_active = False
    colleague.save()

    response = client_for(officer).post(
        reverse("ra:leaver-revoke", args=[colleague.pk]), {"confirm": "on"}
    )

    assert response.status_code == 403
    assert still_valid(bobs_certificate)
    the_refusal(officer, colleague, "leaver.revoke", "out_of_scope")
    with pytest.raises(NotPermitted):  # the service refuses alike, and records it alike
        leavers.leaver_revoke(user=colleague, actor=officer)
    assert len(refusals()) == 2


# --- key recovery: the pages' own checks of the role --------------------------------------


def test_an_agent_who_is_no_officer_approving_on_the_page_is_recorded(bobs_opened, agent_user):
    before = snapshot(bobs_opened)

    response = client_for(agent_user).post(reverse("ra:recovery-approve", args=[bobs_opened.pk]))

    assert response.status_code == 403
    assert snapshot(bobs_opened) == before
    the_refusal(agent_user, bobs_opened, "recovery.approve", "not_an_officer")
    assert not AuditEvent.objects.filter(
        action="recovery.approve", outcome=AuditEvent.Outcome.FAILURE
    ).exists()


def test_an_officer_who_is_no_agent_carrying_it_out_is_recorded(bobs_approved, second_officer):
    before = snapshot(bobs_approved)
    client = client_for(second_officer)

    assert client.get(reverse("ra:recovery-perform", args=[bobs_approved.pk])).status_code == 403
    assert refusals() == []  # seeing the page is no attempt
    response = client.post(reverse("ra:recovery-perform", args=[bobs_approved.pk]))

    assert response.status_code == 403
    assert snapshot(bobs_approved) == before
    the_refusal(second_officer, bobs_approved, "recovery.perform", "not_an_agent")


def test_a_permitted_recovery_step_records_no_refusal(bobs_opened, admin_user):
    response = client_for(admin_user).post(reverse("ra:recovery-approve", args=[bobs_opened.pk]))

    assert response.status_code == 302
    assert KeyRecoveryRequest.objects.get(pk=bobs_opened.pk).state == (
        KeyRecoveryRequest.State.APPROVED
    )
    assert refusals() == []


# --- roll-outs: they approve the requests they make ----------------------------------------


@pytest.fixture
def hr_signing(signing, officer) -> CertificateTemplate:
    """The signing template, approved by HR approvers: Olivia only."""
    hr = Group.objects.create(name="HR approvers")
    hr.user_set.add(officer)
    signing.approver_group = hr
    signing.save()
    return signing


def test_a_roll_out_of_a_template_one_does_not_approve_by_api_is_recorded(
    hr_signing, second_officer, employee
):
    response = token_client(second_officer).post(
        "/api/v1/rollouts/", {"template": hr_signing.slug, "people": ["alice"]}, format="json"
    )

    assert response.status_code == 403
    assert not Rollout.objects.exists()
    the_refusal(second_officer, hr_signing, "rollout.create", "not_an_approver")


@pytest.mark.parametrize("verb", ["remind", "cancel"])
def test_ending_a_roll_out_one_may_not_on_the_page_is_recorded(
    hr_signing, officer, second_officer, employee, verb
):
    rollout = rollouts.rollout_create(officer=officer, template=hr_signing, people="alice")

    response = client_for(second_officer).post(f"/ra/rollouts/{rollout.pk}/{verb}/")

    assert response.status_code == 403
    rollout.refresh_from_db()
    assert (rollout.state, rollout.last_reminded_at) == ("open", None)
    the_refusal(second_officer, rollout, f"rollout.{verb}", "not_an_approver")


def test_a_permitted_roll_out_records_no_refusal(hr_signing, officer, employee):
    rollout = rollouts.rollout_create(officer=officer, template=hr_signing, people="alice")
    rollouts.rollout_remind(rollout=rollout, officer=officer)

    assert refusals() == []


# --- written apart from the refused action ------------------------------------------------


def test_the_record_outlives_the_requests_rollback_under_atomic_requests(
    bobs, bobs_certificate, officer, monkeypatch
):
    """With ATOMIC_REQUESTS the 403 rolls the request's transaction back; the refusal is
    written after it, by the middleware, and the chain holds."""
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)

    assert decide_on_page(client_for(officer), bobs, "approve").status_code == 403
    response = token_client(officer).post(
        certificate_url(bobs_certificate.serial) + "revoke/",
        {"reason": "superseded"},
        format="json",
    )

    assert response.status_code == 403
    assert [(e.detail["attempted"], e.object_id) for e in refusals()] == [
        ("request.approve", str(bobs.pk)),
        ("certificate.revoke", str(bobs_certificate.pk)),
    ]
    assert undecided(bobs)
    assert still_valid(bobs_certificate)
    assert list(audit.audit_chain_breaks()) == []


def test_inside_a_transaction_it_waits_for_its_end_and_survives_its_rollback(bobs, officer):
    with pytest.raises(NotPermitted), transaction.atomic():
        services.request_approve(request=bobs, officer=officer)
    assert refusals() == []  # held back while the transaction was open

    audit.write_apart()  # as the middleware does once the request has ended

    the_refusal(officer, bobs, "request.approve", "out_of_scope", address=None)
    assert list(audit.audit_chain_breaks()) == []


def test_outside_a_transaction_it_is_chained_at_once_after_the_others(bobs, officer):
    services.request_approve(
        request=submit(UserFactory(organizational_unit="Sales"), bobs.template), officer=officer
    )
    with pytest.raises(NotPermitted):
        services.request_reject(request=bobs, officer=officer, reason="no")

    event = the_refusal(officer, bobs, "request.reject", "out_of_scope", address=None)
    assert event.previous_hash == AuditEvent.objects.filter(pk__lt=event.pk).latest("pk").hash
    assert list(audit.audit_chain_breaks()) == []


def test_a_refusal_in_a_workers_transaction_is_written_when_its_task_ends(
    bobs_certificate, officer, monkeypatch
):
    """A worker has no request whose end writes what was held back: a bulk revocation
    whose officer lost everyone's reach after the run's check is refused each certificate
    inside the batch's transaction, and the refusal is chained once the task has run,
    not left in the worker's memory for a later task (or never)."""
    from enrollment import bulk_revoke, tasks
    from tests.enrollment.tools import as_staff

    staff = as_staff(officer, "view_certificate")
    # The run's check passed (the scope was widened then); Olivia acts for Sales now.
    monkeypatch.setattr(bulk_revoke, "may_revoke_in_bulk", lambda user: True)
    run = bulk_revoke.bulk_revoke_start(ids=[bobs_certificate.pk], reason="superseded", actor=staff)

    tasks.certificates_revoke_task.apply((run.pk,), task_id=run.claim)

    run.refresh_from_db()
    assert (run.state, run.failed) == ("failed", 1)
    assert still_valid(bobs_certificate)
    the_refusal(staff, bobs_certificate, "certificate.revoke", "out_of_scope", address=None)
    assert list(audit.audit_chain_breaks()) == []


# --- on the audit trail --------------------------------------------------------------------


def test_the_trail_shows_a_refusal_with_what_was_attempted_and_why(bobs, officer, second_officer):
    decide_on_page(client_for(officer), bobs, "approve")

    page = client_for(second_officer).get(reverse("ra:audit"), {"action": "access"})

    assert page.status_code == 200
    assert [e.action for e in page.context["events"]] == [REFUSED]
    text = page.content.decode()
    assert "Refused: request.approve, outside their officer scope" in text
    failed = client_for(second_officer).get(reverse("ra:audit"), {"outcome": "failure"})
    assert [e.action for e in failed.context["events"]] == [REFUSED]
