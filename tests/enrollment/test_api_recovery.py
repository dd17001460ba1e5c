"""/api/v1/certificates/{serial}/recover/ and /api/v1/recoveries/: the holder asks for
their archived key back and follows it; accepting, approving, carrying out and the one
download stay on the web pages."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from enrollment import recovery, services
from enrollment.models import AuditEvent, KeyRecoveryRequest
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.api_tools import API, certificate_url, session_client, token_client
from tests.enrollment.ra_fixtures import HOLDER_REASON

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_pkcs12")]
RECOVERIES = f"{API}/recoveries/"
State = KeyRecoveryRequest.State


@pytest.fixture
def kra(quick_kra):
    return quick_kra


@pytest.fixture
def clients(employee, colleague, officer, agent_user):
    return {
        "holder": token_client(employee),
        "colleague": token_client(colleague),
        "officer": token_client(officer),
        "agent": token_client(agent_user),
        "anonymous": token_client(None),
    }


def recover_url(certificate) -> str:
    return f"{certificate_url(certificate.serial)}recover/"


def body(reason: str = HOLDER_REASON, **extra) -> dict[str, str]:
    return {"reason": reason, **extra}


# --- asking ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "expected"),
    [("holder", 201), ("colleague", 404), ("officer", 403), ("agent", 404), ("anonymous", 401)],
)
def test_who_may_ask_for_a_key(role, expected, clients, archived):
    response = clients[role].post(recover_url(archived.certificate), body(), format="json")

    assert response.status_code == expected, response.content
    assert KeyRecoveryRequest.objects.count() == (1 if expected == 201 else 0)


def test_asking_answers_the_request_to_follow(clients, archived, employee):
    response = clients["holder"].post(
        recover_url(archived.certificate), body(pkcs12_format="compatible"), format="json"
    )

    found = KeyRecoveryRequest.objects.get()
    data = response.json()
    assert response["Location"] == data["url"] == f"http://testserver{RECOVERIES}{found.pk}/"
    assert data["state"] == "requested"
    assert data["asked_by_holder"] is True
    assert data["serial"] == archived.certificate.serial
    assert data["pkcs12_format"] == "compatible"
    assert (data["approvals"], data["approvals_required"]) == (0, 1)
    assert data["page_url"] == f"http://testserver/ra/recovery/{found.pk}/"
    assert data["withdraw_url"] == f"http://testserver{RECOVERIES}{found.pk}/withdraw/"
    assert data["download_until"] is None
    assert (found.asked_by, found.state) == (employee, State.REQUESTED)
    event = AuditEvent.objects.get(action="recovery.ask")
    assert (event.actor, event.outcome) == (employee, "success")


def test_a_browser_session_needs_the_csrf_token(employee, archived):
    response = session_client(employee, enforce_csrf=True).post(
        recover_url(archived.certificate), body(), format="json"
    )

    assert response.status_code == 403
    assert not KeyRecoveryRequest.objects.exists()


def test_a_deactivated_accounts_token_is_refused(clients, archived, employee):
    employee.is_active = False
    employee.save()

    response = clients["holder"].post(recover_url(archived.certificate), body(), format="json")

    assert response.status_code == 401
    assert not KeyRecoveryRequest.objects.exists()


def test_a_signing_key_cannot_be_asked_for(clients, hierarchy, template, employee, kra):
    signing, _bundle = services.certificate_issue_with_server_key(
        template=template("smime-signing"),
        owner=employee,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password="Signing-Key-Lantern-90",
    )

    response = clients["holder"].post(recover_url(signing), body(), format="json")

    assert response.status_code == 400
    assert "was not archived" in response.json()["certificate"][0]
    assert not KeyRecoveryRequest.objects.exists()


def test_a_second_ask_is_a_409_naming_the_one_in_progress(clients, asked, archived):
    response = clients["holder"].post(recover_url(archived.certificate), body(), format="json")

    assert response.status_code == 409
    assert response.json() == {
        "detail": f"Recovery #{asked.pk} of this key is already in progress (asked: waiting "
        "for an officer to accept it); there can be one at a time.",
        "recovery": f"http://testserver{RECOVERIES}{asked.pk}/",
    }
    assert KeyRecoveryRequest.objects.count() == 1


def test_an_officers_recovery_for_themselves_is_not_shown_to_the_holder(clients, archived, officer):
    recovery.recovery_open(
        certificate=archived.certificate, officer=officer, reason="Legal hold.",
        deliver_to="requester",
    )  # fmt: skip

    response = clients["holder"].post(recover_url(archived.certificate), body(), format="json")

    assert response.status_code == 409
    assert response.json()["recovery"] is None


def test_asking_too_often_is_a_429_with_retry_after(clients, archived, employee, settings):
    settings.PKIPORTAL_RECOVERY_ASKS_PER_DAY = 1
    found = recovery.recovery_ask(
        certificate=archived.certificate, holder=employee, reason=HOLDER_REASON
    )
    recovery.recovery_withdraw(recovery=found, holder=employee)

    response = clients["holder"].post(recover_url(archived.certificate), body(), format="json")

    assert response.status_code == 429
    assert 23 * 3600 < int(response["Retry-After"]) <= 24 * 3600
    assert KeyRecoveryRequest.objects.count() == 1


@pytest.mark.parametrize(
    ("data", "field", "problem"),
    [
        ({}, "reason", "This field is required."),
        (body("  "), "reason", "Say why you need the key back."),
        (body("x" * 1001), "reason", "no more than 1000 characters"),
        (body("a\x00b"), "reason", "Null characters are not allowed."),
        (body("a\u2066b"), "reason", "U+2066"),
        (body(pkcs12_format="pkcs7"), "pkcs12_format", "not a valid choice"),
        ({"reason": ["a list"]}, "reason", "Not a valid string."),
    ],
)
def test_bad_bodies_name_the_field_and_store_nothing(clients, archived, data, field, problem):
    before = AuditEvent.objects.count()

    response = clients["holder"].post(recover_url(archived.certificate), data, format="json")

    assert response.status_code == 400
    assert problem in response.json()[field][0]
    assert not KeyRecoveryRequest.objects.exists()
    assert AuditEvent.objects.count() == before


def test_a_lone_surrogate_in_the_json_is_a_400(clients, archived):
    raw = '{"reason": "lost \\ud800 it"}'

    response = clients["holder"].post(
        recover_url(archived.certificate), raw, content_type="application/json"
    )

    assert response.status_code == 400
    assert "U+D800" in response.json()["reason"][0]
    assert not KeyRecoveryRequest.objects.exists()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=60),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=8,
)


@hypothesis_settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    reason=json_values | st.text(max_size=1200),
    fmt=json_values | st.sampled_from(["modern", "compatible"]),
    extra=st.dictionaries(st.text(max_size=10), json_values, max_size=2),
)
def test_hostile_bodies_get_a_4xx_or_a_request_never_a_500(
    clients, archived, settings, reason, fmt, extra
):
    settings.PKIPORTAL_RECOVERY_ASKS_PER_DAY = 1000
    payload = json.dumps({**extra, "reason": reason, "pkcs12_format": fmt})
    before = AuditEvent.objects.count()

    response = clients["holder"].post(
        recover_url(archived.certificate), payload, content_type="application/json"
    )

    if response.status_code == 201:
        KeyRecoveryRequest.objects.all().delete()  # the next example starts afresh
    else:
        assert response.status_code == 400, response.content[:300]
        assert not KeyRecoveryRequest.objects.exists()
        assert AuditEvent.objects.count() == before


# --- following and withdrawing --------------------------------------------------------


def test_the_holder_lists_only_recoveries_that_come_to_them(clients, asked, colleague):
    mine = clients["holder"].get(RECOVERIES).json()
    theirs = clients["colleague"].get(RECOVERIES).json()
    officers = clients["officer"].get(RECOVERIES).json()

    assert [r["id"] for r in mine["results"]] == [asked.pk]
    assert theirs["results"] == []
    assert officers["results"] == []  # "mine" for everyone; officers fetch by id
    assert clients["anonymous"].get(RECOVERIES).status_code == 401


@pytest.mark.parametrize(
    ("role", "expected"),
    [("holder", 200), ("colleague", 404), ("officer", 200), ("agent", 200), ("anonymous", 401)],
)
def test_who_may_see_a_recovery(role, expected, clients, asked):
    assert clients[role].get(f"{RECOVERIES}{asked.pk}/").status_code == expected


def test_withdraw_url_is_only_for_the_holder_who_asked(clients, asked):
    assert clients["officer"].get(f"{RECOVERIES}{asked.pk}/").json()["withdraw_url"] is None


def test_the_holder_follows_it_to_the_download(clients, accepted, second_officer, kra, agent_user):
    recovery.recovery_approve(recovery=accepted, officer=second_officer)
    recovery.recovery_perform(
        recovery=accepted, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
        agent_password=kra.password,
    )  # fmt: skip

    data = clients["holder"].get(f"{RECOVERIES}{accepted.pk}/").json()

    assert data["state"] == "ready"
    assert data["approvals"] == 1
    assert data["download_until"] is not None
    assert data["withdraw_url"] is None
    assert "pkcs12" not in json.dumps(data).replace("pkcs12_format", "")  # no key here


@pytest.mark.parametrize(
    ("role", "expected"),
    [("holder", 200), ("colleague", 404), ("officer", 403), ("agent", 403), ("anonymous", 401)],
)
def test_who_may_withdraw(role, expected, clients, asked):
    response = clients[role].post(f"{RECOVERIES}{asked.pk}/withdraw/")

    assert response.status_code == expected
    asked.refresh_from_db()
    assert asked.state == (State.WITHDRAWN if expected == 200 else State.REQUESTED)


def test_withdrawing_twice_is_a_409(clients, asked):
    first = clients["holder"].post(f"{RECOVERIES}{asked.pk}/withdraw/")
    second = clients["holder"].post(f"{RECOVERIES}{asked.pk}/withdraw/")

    assert first.json()["state"] == "withdrawn"
    assert second.status_code == 409
    assert "can no longer be withdrawn" in second.json()["detail"]
    assert AuditEvent.objects.filter(action="recovery.withdraw", outcome="success").count() == 1


def test_the_api_offers_no_way_to_accept_approve_or_download(clients, asked):
    for verb in ("accept", "approve", "perform", "download"):
        response = clients["officer"].post(f"{RECOVERIES}{asked.pk}/{verb}/", {}, format="json")
        assert response.status_code in (404, 405)
    asked.refresh_from_db()
    assert asked.state == State.REQUESTED
