"""/api/v1/requests/: the RA officer's queue and decisions; nobody else's business."""

from __future__ import annotations

import pytest

from django.core import mail

from enrollment.models import AuditEvent, Certificate, CertificateRequest
from tests.enrollment.api_tools import (
    ENROLLMENTS,
    PENDING,
    csr_body,
    request_url,
    server_key_body,
    token_client,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def pending(hierarchy, template, employee, ec_p256_key) -> CertificateRequest:
    """Alice's CSR request for a template that needs approval."""
    signing = template("smime-signing")
    signing.requires_approval = True
    signing.save()
    response = token_client(employee).post(ENROLLMENTS, csr_body(ec_p256_key), format="json")
    assert response.status_code == 202
    return CertificateRequest.objects.get(pk=response.json()["id"])


@pytest.fixture
def clients(employee, colleague, officer):
    return {
        "employee": token_client(employee),
        "colleague": token_client(colleague),
        "officer": token_client(officer),
        "anonymous": token_client(None),
    }


# --- the queue ------------------------------------------------------------------------


def test_officers_see_pending_requests_oldest_first(clients, pending, template, colleague):
    later = token_client(colleague).post(
        ENROLLMENTS, server_key_body("smime-signing"), format="json"
    )

    response = clients["officer"].get(PENDING)

    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["id"] for r in results] == [pending.pk, later.json()["id"]]
    assert results[0]["requester"] == "alice"
    assert results[0]["requester_name"] == "Alice Andersson"
    assert results[0]["requested_emails"] == ["mallory@evil.example"]


def test_decided_requests_leave_the_queue(clients, pending):
    clients["officer"].post(request_url(pending.pk, "approve"), {}, format="json")

    assert clients["officer"].get(PENDING).json()["results"] == []


@pytest.mark.parametrize(
    ("who", "status"), [("employee", 403), ("colleague", 403), ("anonymous", 401)]
)
def test_only_officers_see_the_queue(clients, pending, who, status):
    assert clients[who].get(PENDING).status_code == status


# --- approve --------------------------------------------------------------------------


def test_an_officer_approves_and_the_csr_is_issued_audited_and_mailed(
    clients, pending, officer, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = clients["officer"].post(
            request_url(pending.pk, "approve"), {"reason": "Known person"}, format="json"
        )

    assert response.status_code == 200
    body = response.json()
    assert body["state"] == "issued"
    assert body["decision_reason"] == "Known person"
    assert body["serial"] == Certificate.objects.get().serial
    assert AuditEvent.objects.filter(action="request.approve", actor=officer).exists()
    assert len(mail.outbox) == 1


@pytest.mark.parametrize(
    ("who", "status"), [("employee", 403), ("colleague", 403), ("anonymous", 401)]
)
@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_only_officers_decide(clients, pending, who, status, verb):
    response = clients[who].post(request_url(pending.pk, verb), {"reason": "x"}, format="json")

    assert response.status_code == status
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.PENDING


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_an_officer_may_not_decide_their_own_request(
    hierarchy, template, officer, ec_p256_key, verb
):
    signing = template("smime-signing")
    signing.requires_approval = True
    signing.save()
    client = token_client(officer)
    pk = client.post(ENROLLMENTS, csr_body(ec_p256_key), format="json").json()["id"]

    response = client.post(request_url(pk, verb), {"reason": "mine"}, format="json")

    assert response.status_code == 403
    assert "own request" in response.json()["detail"]
    assert CertificateRequest.objects.get(pk=pk).state == CertificateRequest.State.PENDING


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_a_request_is_decided_once(clients, pending, verb):
    clients["officer"].post(request_url(pending.pk, "reject"), {"reason": "no"}, format="json")

    response = clients["officer"].post(
        request_url(pending.pk, verb), {"reason": "x"}, format="json"
    )

    assert response.status_code == 409
    assert "already rejected" in response.json()["detail"]


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_an_unknown_request_is_404(clients, pending, verb):
    assert clients["officer"].post(request_url(999_999, verb), {}, format="json").status_code == 404


# --- reject ---------------------------------------------------------------------------


def test_an_officer_rejects_with_a_reason_and_nothing_is_issued(clients, pending, employee):
    response = clients["officer"].post(
        request_url(pending.pk, "reject"), {"reason": "Not an employee any more"}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["state"] == "rejected"
    assert Certificate.objects.count() == 0
    seen = token_client(employee).get(f"{ENROLLMENTS}{pending.pk}/").json()
    assert seen["state"] == "rejected"
    assert seen["decision_reason"] == "Not an employee any more"


@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": "   "}, {"reason": "x" * 1001}])
def test_a_rejection_must_say_why(clients, pending, body):
    response = clients["officer"].post(request_url(pending.pk, "reject"), body, format="json")

    assert response.status_code == 400
    assert "reason" in response.json()
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.PENDING


# --- every request, filtered ------------------------------------------------------------

REQUESTS = "/api/v1/requests/"


@pytest.fixture
def decided(clients, pending, template, colleague):
    """Alice's request rejected by Olivia; Bob's signing certificate issued at once."""
    clients["officer"].post(
        f"{REQUESTS}{pending.pk}/reject/", {"reason": "not in the pilot"}, format="json"
    )
    signing = template("smime-signing")
    signing.requires_approval = False
    signing.save()
    issued = token_client(colleague).post(
        ENROLLMENTS, server_key_body("smime-signing"), format="json"
    )
    assert issued.status_code == 201
    return {"rejected": pending.pk, "issued": issued.json()["id"]}


@pytest.mark.parametrize(
    ("who", "status"), [("officer", 200), ("employee", 403), ("colleague", 403), ("anonymous", 401)]
)
def test_only_officers_list_every_request(clients, decided, who, status):
    response = clients[who].get(REQUESTS)

    assert response.status_code == status
    if status != 200:
        assert "results" not in response.json()


def test_every_request_comes_newest_first(clients, decided):
    results = clients["officer"].get(REQUESTS).json()["results"]

    assert [r["id"] for r in results] == [decided["issued"], decided["rejected"]]
    assert results[1]["decision_reason"] == "not in the pilot"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("requester=alice", ["rejected"]),
        ("state=issued", ["issued"]),
        ("decided_by=olivia", ["rejected"]),
        ("template=smime-dual-use", []),
        ("created_after=2000-01-01T00:00:00Z", ["issued", "rejected"]),
        ("created_before=2000-01-01T00:00:00Z", []),
    ],
)
def test_officers_filter_every_request(clients, decided, query, expected):
    results = clients["officer"].get(f"{REQUESTS}?{query}").json()["results"]

    assert [r["id"] for r in results] == [decided[name] for name in expected]


@pytest.mark.parametrize(
    ("query", "field"), [("state=lost", "state"), ("created_after=yesterday", "created_after")]
)
def test_a_bad_filter_is_a_400_naming_it(clients, decided, query, field):
    response = clients["officer"].get(f"{REQUESTS}?{query}")

    assert response.status_code == 400
    assert field in response.json()


def test_the_pending_queue_ignores_the_lists_filters(clients, pending):
    response = clients["officer"].get(f"{PENDING}?state=issued")

    assert [r["id"] for r in response.json()["results"]] == [pending.pk]
