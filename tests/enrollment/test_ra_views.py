"""The RA pages: who may and who may not, the console, find-and-revoke, the audit trail."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from cryptography.hazmat.primitives.serialization import Encoding

from django.core.cache import cache
from django.core.files.uploadedfile import InMemoryUploadedFile, SimpleUploadedFile
from django.db import OperationalError, connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from enrollment import ra_views, recovery
from enrollment.audit import audit_record
from enrollment.models import AuditEvent, Certificate, KeyRecoveryAgent, KeyRecoveryRequest
from enrollment.ra_views import AUDIT_COLUMNS
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for
from tests.enrollment.ra_fixtures import REASON, agent_upload, snapshot
from tests.enrollment.tools import error_report
from tests.factories import UserFactory
from tests.second_factor import verified_login

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_pkcs12")]


@pytest.fixture
def kra(quick_kra):
    return quick_kra


ROLES = ["officer", "second_officer", "agent", "owner", "colleague", "anonymous"]


@pytest.fixture
def people(officer, second_officer, agent_user, employee, colleague) -> dict[str, Client]:
    """Olivia (officer, opened the recovery), Oscar (officer), Karl (agent), Alice (owner)."""
    users = {
        "officer": officer,
        "second_officer": second_officer,
        "agent": agent_user,
        "owner": employee,
        "colleague": colleague,
        "anonymous": None,
    }
    return {role: client_for(user) for role, user in users.items()}


@dataclass(frozen=True)
class Case:
    """One page or action and the status each role gets."""

    name: str
    method: str
    path: str
    state: str  # the recovery the case needs: pending, approved, ready or "" for none
    expected: dict[str, int]
    data: str = ""  # "open", "reject", "agent", "revoke" or ""


def allowed(*roles: str, ok: int = 200, denied: int = 403, hidden: tuple[str, ...] = ()):
    """Roles given get ``ok``; signed-in others ``denied`` (or 404 if hidden); anonymous 302."""
    statuses = {}
    for role in ROLES:
        if role == "anonymous":
            statuses[role] = 302
        elif role in roles:
            statuses[role] = ok
        elif role in hidden:
            statuses[role] = 404
        else:
            statuses[role] = denied
    return statuses


OFFICERS = ("officer", "second_officer")
CASES = [
    Case("console", "get", "/ra/", "", allowed(*OFFICERS)),
    Case("recovery list", "get", "/ra/recovery/", "", allowed(*OFFICERS, "agent")),
    Case("recovery form", "get", "/ra/recovery/new/", "", allowed(*OFFICERS)),
    Case("open a recovery", "post", "/ra/recovery/new/", "", allowed(*OFFICERS, ok=302), "open"),
    Case(
        "recovery page",
        "get",
        "/ra/recovery/{pk}/",
        "pending",
        allowed(*OFFICERS, "agent", "owner", hidden=("colleague",)),
    ),
    Case(
        "approve",
        "post",
        "/ra/recovery/{pk}/approve/",
        "pending",
        # Olivia opened it; Alice owns the key (and is not an officer anyway).
        allowed("second_officer", ok=302, hidden=("colleague",)),
    ),
    Case(
        "reject",
        "post",
        "/ra/recovery/{pk}/reject/",
        "pending",
        allowed(*OFFICERS, ok=302, hidden=("colleague",)),
        "reject",
    ),
    Case(
        "perform form",
        "get",
        "/ra/recovery/{pk}/perform/",
        "approved",
        allowed("agent", hidden=("colleague",)),
    ),
    Case(
        "perform",
        "post",
        "/ra/recovery/{pk}/perform/",
        "approved",
        allowed("agent", hidden=("colleague",)),
        "agent",
    ),
    Case(
        "download",
        "post",
        "/ra/recovery/{pk}/download/",
        "ready",
        allowed("owner", hidden=("colleague",)),
    ),
    Case("find certificates", "get", "/ra/certificates/?q=alice", "", allowed(*OFFICERS)),
    Case(
        "revoke",
        "post",
        "/ra/certificates/{cert}/revoke/",
        "",
        allowed(*OFFICERS, ok=302),
        "revoke",
    ),
    Case("audit trail", "get", "/ra/audit/", "", allowed(*OFFICERS)),
    Case("audit CSV", "get", "/ra/audit/export.csv", "", allowed(*OFFICERS)),
    Case("audit JSON lines", "get", "/ra/audit/export.jsonl", "", allowed(*OFFICERS)),
    Case("recovery agents", "get", "/ra/agents/", "", allowed(*OFFICERS)),
    Case("request history", "get", "/ra/requests/history/", "", allowed(*OFFICERS)),
]


@pytest.fixture
def setup_for(request, archived, officer, second_officer, kra, agent_user):
    """The recovery in the state a case needs."""

    def make(state: str) -> KeyRecoveryRequest | None:
        if not state:
            return None
        found = recovery.recovery_open(
            certificate=archived.certificate, officer=officer, reason=REASON
        )
        if state in ("approved", "ready"):
            recovery.recovery_approve(recovery=found, officer=second_officer)
        if state == "ready":
            recovery.recovery_perform(
                recovery=found, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
                agent_password=kra.password,
            )  # fmt: skip
        return found

    return make


def form_data(kind: str, archived, kra) -> dict[str, object]:
    if kind == "open":
        return {
            "certificate": archived.certificate.pk,
            "reason": REASON,
            "deliver_to": "owner",
            "pkcs12_format": "modern",
        }
    if kind == "reject":
        return {"reason": "Not justified."}
    if kind == "agent":
        return agent_upload(kra.pkcs12, kra.password)
    if kind == "revoke":
        return {"reason": "keyCompromise", "confirm": "on"}
    return {}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_who_may_and_who_may_not(case, role, people, setup_for, archived, kra):
    found = setup_for(case.state)
    path = case.path.format(pk=found.pk if found else 0, cert=archived.certificate.pk)
    client = people[role]

    if case.method == "get":
        response = client.get(path)
    else:
        response = client.post(path, form_data(case.data, archived, kra))

    assert response.status_code == case.expected[role], response.content[:500]
    if role == "anonymous":
        assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("role", ["colleague", "owner", "agent"])
def test_who_may_not_changes_nothing(role, people, setup_for, archived, kra):
    """A refused approval, rejection or perform leaves the recovery as it was."""
    found = setup_for("approved" if role == "owner" else "pending")
    before = snapshot(found)
    client = people[role]

    client.post(f"/ra/recovery/{found.pk}/approve/")
    client.post(f"/ra/recovery/{found.pk}/reject/", {"reason": "no"})
    if role != "agent":
        client.post(f"/ra/recovery/{found.pk}/perform/", agent_upload(kra.pkcs12, kra.password))

    assert snapshot(found) == before


def test_the_navigation_shows_the_ra_pages_to_whom_they_are_for(people):
    assert 'href="/ra/"' in people["officer"].get("/").content.decode()
    agent_home = people["agent"].get("/").content.decode()
    assert 'href="/ra/recovery/"' in agent_home
    assert 'href="/ra/"' not in agent_home
    assert "/ra/" not in people["colleague"].get("/").content.decode()


# --- the console ----------------------------------------------------------------------


def test_the_console_shows_requests_crls_services_and_agents(people, opened, hierarchy):
    page = people["officer"].get("/ra/")
    text = page.content.decode()

    assert page.context["pending_count"] == 0
    assert [r.pk for r in page.context["recoveries"]] == [opened.pk]
    crls = {row.status.slug: row for row in page.context["crls"]}
    issuing = crls["issuing"]
    assert issuing.status.number is not None
    assert issuing.size == len(bytes(hierarchy.issuing.revocation_lists.first().der))
    assert issuing.age is not None
    assert page.context["services"]["broker"]["mode"] == "inline"
    assert page.context["agents"].valid == 1
    assert "Revocation lists" in text
    assert f"/ra/recovery/{opened.pk}/" in text
    assert "Key archival has stopped" not in text


def test_the_console_says_loudly_when_no_agent_is_valid(officer_client, hierarchy):
    text = officer_client.get("/ra/").content.decode()

    assert "Key archival has stopped" in text
    assert "cannot issue" in text


def test_the_console_warns_a_month_before_the_last_agent_expires(officer, kra):
    soon = kra.agent.not_after - timedelta(days=20)

    with time_machine.travel(soon, tick=False):
        text = client_for(officer).get("/ra/").content.decode()

    assert "Key recovery agent certificate expiring" in text
    assert "Test KRA" in text


def test_the_console_warns_when_a_crl_nears_its_next_update(officer, hierarchy):
    crl = hierarchy.issuing.revocation_lists.first()

    with time_machine.travel(crl.next_update - timedelta(hours=1), tick=False):
        page = client_for(officer).get("/ra/")  # signed in then: sessions last 8 hours

    issuing = next(row for row in page.context["crls"] if row.status.slug == "issuing")
    assert issuing.status.status == "fail"
    assert "are the worker and beat running?" in page.content.decode()


def test_the_console_says_beat_is_not_used_without_a_broker(officer, hierarchy):
    page = client_for(officer).get("/ra/")

    assert page.context["services"]["scheduler"]["mode"] == "not used"
    text = page.content.decode()
    assert "Celery beat" in text
    assert "Not used" in text
    assert "no broker configured, so no beat" in text


def test_the_console_shows_a_stopped_beat_with_the_time_of_its_last_run(
    officer, hierarchy, settings
):
    from enrollment import tasks

    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens: beat is the point
    settings.TIME_ZONE = "Europe/Berlin"
    with time_machine.travel(datetime(2026, 3, 6, 17, 0, tzinfo=UTC), tick=False):
        tasks.crl_watchdog_task()

    with time_machine.travel(datetime(2026, 3, 6, 17, 40, tzinfo=UTC), tick=False):
        page = client_for(officer).get("/ra/")

    beat = page.context["services"]["scheduler"]
    assert beat["status"] == "fail"
    text = page.content.decode()
    assert "last ran the CRL watchdog at 2026-03-06 18:00 CET (40 minutes ago" in text
    assert "40 minutes ago; beat runs it every 5 minutes" in text


def test_the_console_counts_pending_enrolment_requests(people, template, employee, hierarchy):
    from enrollment import services

    dual_use = template("smime-dual-use")
    dual_use.requires_approval = True
    dual_use.save()
    services.request_submit(
        requester=employee,
        template=dual_use,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )

    page = people["officer"].get("/ra/")

    assert page.context["pending_count"] == 1
    assert 'href="/ra/requests/"' in page.content.decode()


# --- find and revoke ------------------------------------------------------------------


@pytest.mark.parametrize("query", ["Alice", "ALICE@example", "alice", "serial", "SERIAL:", "sha1"])
def test_officers_find_any_certificate(query, people, archived):
    certificate = archived.certificate
    if query.startswith("serial"):
        query = certificate.serial.upper()
    elif query.startswith("SERIAL"):
        query = ":".join(
            certificate.serial[i : i + 2] for i in range(0, len(certificate.serial), 2)
        )
    elif query == "sha1":
        query = certificate.fingerprint_sha1

    results = people["officer"].get("/ra/certificates/", {"q": query}).context["results"]

    assert certificate in results


def test_an_officer_revokes_with_a_reason(people, archived, officer):
    response = people["officer"].post(
        f"/ra/certificates/{archived.certificate.pk}/revoke/",
        {"reason": "privilegeWithdrawn", "confirm": "on", "q": "alice"},
    )

    assert response.status_code == 302
    assert response["Location"] == "/ra/certificates/?q=alice"
    revoked = Certificate.objects.get(pk=archived.certificate.pk)
    assert (revoked.status, revoked.revocation_reason) == ("revoked", "privilegeWithdrawn")
    event = AuditEvent.objects.get(action="certificate.revoke")
    assert event.actor == officer


def test_an_officer_records_since_when_a_reported_key_was_exposed(people, archived):
    certificate = archived.certificate
    page = people["officer"].get("/ra/certificates/", {"q": "alice"}).content.decode()
    assert f'id="since-{certificate.pk}"' in page
    since = timezone.localtime(certificate.not_before).replace(second=0, microsecond=0)

    response = people["officer"].post(
        f"/ra/certificates/{certificate.pk}/revoke/",
        {"reason": "keyCompromise", "confirm": "on", "q": "alice",
         "invalidity_date": since.strftime("%Y-%m-%dT%H:%M")},
    )  # fmt: skip

    assert response.status_code == 302
    certificate.refresh_from_db()
    assert (certificate.revocation_reason, certificate.invalidity_date) == ("keyCompromise", since)


def test_an_impossible_exposure_date_is_refused_and_kept_for_correction(people, archived):
    certificate = archived.certificate

    response = people["officer"].post(
        f"/ra/certificates/{certificate.pk}/revoke/",
        {"reason": "keyCompromise", "confirm": "on", "invalidity_date": "2999-01-01T00:00"},
    )

    assert response.status_code == 400
    page = response.content.decode()
    assert "cannot be in the future" in page
    assert 'value="2999-01-01T00:00" aria-invalid="true"' in page
    certificate.refresh_from_db()
    assert certificate.status == Certificate.Status.VALID


def test_a_revocation_without_confirmation_changes_nothing(people, archived):
    response = people["officer"].post(
        f"/ra/certificates/{archived.certificate.pk}/revoke/", {"reason": "keyCompromise"}
    )

    assert response.status_code == 400
    assert Certificate.objects.get(pk=archived.certificate.pk).status == "valid"


def test_a_revocation_without_a_reason_ties_the_error_to_the_reason_list(people, archived):
    pk = archived.certificate.pk

    page = people["officer"].post(f"/ra/certificates/{pk}/revoke/", {"confirm": "on"})

    assert page.status_code == 400
    (field,) = re.findall(rf'<select id="reason-{pk}"[^>]*>', page.content.decode())
    assert f'aria-describedby="revoke-errors-{pk}"' in field
    assert 'aria-invalid="true"' in field


def test_a_refused_revocation_focuses_its_row_s_reason_list(people, archived):
    """The row may be far down the results on a phone: its first control is autofocused,
    so the browser scrolls to it and its errors."""
    pk = archived.certificate.pk

    page = people["officer"].post(f"/ra/certificates/{pk}/revoke/", {"reason": "superseded"})

    (focused,) = re.findall(r"<(?:input|select)[^>]*autofocus[^>]*>", page.content.decode())
    assert f'id="reason-{pk}"' in focused


def test_a_refused_revocation_keeps_the_reason_chosen(people, archived):
    pk = archived.certificate.pk

    page = people["officer"].post(f"/ra/certificates/{pk}/revoke/", {"reason": "superseded"})

    assert page.status_code == 400  # not confirmed
    assert '<option value="superseded" selected>' in page.content.decode()


def test_revoking_twice_says_why_it_cannot(people, archived):
    data = {"reason": "keyCompromise", "confirm": "on"}
    people["officer"].post(f"/ra/certificates/{archived.certificate.pk}/revoke/", data)

    response = people["officer"].post(f"/ra/certificates/{archived.certificate.pk}/revoke/", data)

    assert response.status_code == 400
    assert "already revoked" in response.content.decode()


# --- the recovery pages ---------------------------------------------------------------


def test_the_recovery_form_lists_only_archived_keys(people, archived, template, employee):
    from enrollment import services

    services.certificate_issue_with_server_key(
        template=template("smime-signing"),
        owner=employee,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password="Signing-Key-Lantern-90",
    )

    results = people["officer"].get("/ra/recovery/new/", {"q": "alice"}).context["results"]

    assert results == [archived.certificate]


@pytest.mark.parametrize(
    ("approvals", "words"), [(1, "1 other officer,"), (2, "2 other officers,")]
)
def test_opening_a_recovery_says_how_many_approvals_it_needs(
    approvals, words, people, archived, kra, settings
):
    settings.PKIPORTAL_RECOVERY_APPROVALS = approvals

    response = people["officer"].post(
        "/ra/recovery/new/", form_data("open", archived, kra), follow=True
    )

    (message,) = [str(m) for m in response.context["messages"]]
    assert f"the approval of {words} then a key recovery agent" in message
    assert "(s)" not in message


def test_the_open_form_offers_to_close_a_holders_ask_only_when_there_is_one(
    people, archived, kra, employee
):
    path = f"/ra/recovery/new/?certificate={archived.certificate.pk}"
    plain = people["officer"].get(path).content.decode()
    assert 'type="checkbox" name="close_holder_ask"' not in plain
    asked = recovery.recovery_ask(certificate=archived.certificate, holder=employee, reason="x")

    page = people["officer"].get(path).content.decode()

    assert f'type="checkbox" name="close_holder_ask" value="{asked.pk}"' in page
    assert f'href="/ra/recovery/{asked.pk}/"' in page


def test_an_officer_closes_the_holders_ask_from_the_open_form(people, archived, kra, employee):
    asked = recovery.recovery_ask(certificate=archived.certificate, holder=employee, reason="x")
    data = {**form_data("open", archived, kra), "deliver_to": "requester"}

    refused = people["officer"].post("/ra/recovery/new/", data)
    assert refused.status_code == 400
    assert "close it and open yours" in refused.content.decode()
    asked.refresh_from_db()
    assert asked.state == KeyRecoveryRequest.State.REQUESTED

    response = people["officer"].post(
        "/ra/recovery/new/", {**data, "close_holder_ask": str(asked.pk)}
    )

    opened = KeyRecoveryRequest.objects.exclude(pk=asked.pk).get()
    assert response.status_code == 302
    assert response["Location"] == f"/ra/recovery/{opened.pk}/"
    asked.refresh_from_db()
    assert asked.state == KeyRecoveryRequest.State.REJECTED
    assert opened.deliver_to == KeyRecoveryRequest.Recipient.REQUESTER


@pytest.mark.parametrize("value", ["on", "²", "9" * 30, "-1", "0", "1\x00"])
def test_a_close_request_that_is_no_request_id_is_refused(people, archived, kra, value):
    data = {**form_data("open", archived, kra), "close_holder_ask": value}

    response = people["officer"].post("/ra/recovery/new/", data)

    assert response.status_code == 400
    assert not KeyRecoveryRequest.objects.exists()


def test_the_requester_sees_no_approve_button_and_a_refusal_if_they_try(people, opened):
    page = people["officer"].get(f"/ra/recovery/{opened.pk}/")
    assert not page.context["can_approve"]

    response = people["officer"].post(f"/ra/recovery/{opened.pk}/approve/")

    assert response.status_code == 403
    assert "another officer must approve" in response.content.decode()


def test_an_officer_who_approved_is_not_offered_the_perform_step_and_is_refused(
    people, opened, officer, agent_user, kra
):
    agent_user.groups.add(*officer.groups.all())
    people["agent"] = client_for(agent_user)  # gaining the role signed them out
    recovery.recovery_approve(recovery=opened, officer=agent_user)
    before = snapshot(opened)

    page = people["agent"].get(f"/ra/recovery/{opened.pk}/")
    assert not page.context["can_perform"]
    assert "Carry it out" not in page.content.decode()
    assert "other than you (you approved it)" in page.content.decode()

    response = people["agent"].post(
        f"/ra/recovery/{opened.pk}/perform/", agent_upload(kra.pkcs12, kra.password)
    )

    assert response.status_code == 403
    assert "You approved this recovery" in response.content.decode()
    assert snapshot(opened) == before


def test_the_officer_who_opened_it_is_not_offered_the_perform_step(
    people, archived, officer, second_officer, agent_user
):
    officer.groups.add(*agent_user.groups.all())
    people["officer"] = client_for(officer)  # gaining the role signed them out
    opened = recovery.recovery_open(
        certificate=archived.certificate, officer=officer, reason=REASON
    )
    recovery.recovery_approve(recovery=opened, officer=second_officer)

    page = people["officer"].get(f"/ra/recovery/{opened.pk}/")
    assert not page.context["can_perform"]
    assert "other than you (you opened it)" in page.content.decode()
    assert people["agent"].get(f"/ra/recovery/{opened.pk}/").context["can_perform"]


def test_a_wrong_agent_password_in_the_browser_shows_the_error_and_changes_nothing(
    people, approved, kra
):
    before = snapshot(approved)

    response = people["agent"].post(
        f"/ra/recovery/{approved.pk}/perform/", agent_upload(kra.pkcs12, "not the password")
    )

    assert response.status_code == 400
    assert "password is wrong" in response.content.decode()
    assert "one_time_password" not in response.context
    assert snapshot(approved) == before


def test_an_unapproved_recovery_cannot_be_carried_out_in_the_browser(people, opened, kra):
    response = people["agent"].post(
        f"/ra/recovery/{opened.pk}/perform/", agent_upload(kra.pkcs12, kra.password)
    )

    assert response.status_code == 400
    assert "not approved yet" in response.content.decode()


def test_the_agent_password_is_kept_out_of_error_reports(people, approved, kra):
    response = people["agent"].post(
        f"/ra/recovery/{approved.pk}/perform/", agent_upload(kra.pkcs12, kra.password)
    )

    assert response.wsgi_request.sensitive_post_parameters == ("agent_password",)


@pytest.mark.parametrize("where", ["recovering", "showing the one-time password"])
def test_a_server_error_report_shows_neither_password(where, people, approved, kra, monkeypatch):
    one_time = recovery.one_time_password()  # not a literal: those show as source lines
    monkeypatch.setattr(recovery, "one_time_password", lambda: one_time)

    def fail(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    if where == "recovering":
        monkeypatch.setattr(recovery, "_lock", fail)
    else:
        monkeypatch.setattr(ra_views, "render", fail)  # its context holds the password

    with error_report(OperationalError) as report:
        people["agent"].post(
            f"/ra/recovery/{approved.pk}/perform/", agent_upload(kra.pkcs12, kra.password)
        )

    assert "_recovery_perform" in report.text
    assert kra.password not in report.text
    assert one_time not in report.text


def test_the_agent_pkcs12_never_touches_the_disk(people, approved, kra, settings):
    """Even past FILE_UPLOAD_MAX_MEMORY_SIZE it stays an in-memory upload."""
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 100

    response = people["agent"].post(
        f"/ra/recovery/{approved.pk}/perform/", agent_upload(kra.pkcs12, kra.password)
    )

    upload = response.wsgi_request.FILES["agent_pkcs12"]
    assert isinstance(upload, InMemoryUploadedFile)
    assert response.status_code == 200


def test_a_huge_upload_is_refused_without_being_kept(people, approved):
    big = SimpleUploadedFile("big.p12", b"\0" * (recovery.MAX_AGENT_PKCS12_BYTES + 10))

    response = people["agent"].post(
        f"/ra/recovery/{approved.pk}/perform/", {"agent_pkcs12": big, "agent_password": "x"}
    )

    assert response.status_code == 400
    assert "far larger" in response.content.decode()


def test_the_perform_form_checks_the_csrf_token(agent_user, approved, kra):
    """The view is csrf_exempt only to install its upload handler; the token still counts."""
    client = Client(enforce_csrf_checks=True)
    verified_login(client, agent_user)

    response = client.post(
        f"/ra/recovery/{approved.pk}/perform/", agent_upload(kra.pkcs12, kra.password)
    )

    assert response.status_code == 403
    assert snapshot(approved)["state"] == KeyRecoveryRequest.State.APPROVED


def test_the_one_time_password_is_not_kept_in_the_session(people, approved, kra):
    from accounts.models import AccountSession as Session

    response = people["agent"].post(
        f"/ra/recovery/{approved.pk}/perform/", agent_upload(kra.pkcs12, kra.password)
    )
    password = response.context["one_time_password"]

    for session in Session.objects.all():
        assert password not in str(session.get_decoded())
    assert password not in str([str(m) for m in response.context["messages"]])


def test_a_second_download_in_the_browser_fails(people, performed):
    first = people["owner"].post(f"/ra/recovery/{performed.recovery.pk}/download/")
    assert first.status_code == 200

    second = people["owner"].post(f"/ra/recovery/{performed.recovery.pk}/download/")

    assert second.status_code == 400
    assert "already downloaded" in second.content.decode()


def test_a_former_officer_gets_no_download_and_a_reason(
    people, archived, officer, second_officer, agent_user, kra
):
    opened = recovery.recovery_open(
        certificate=archived.certificate, officer=officer, reason=REASON, deliver_to="requester"
    )
    recovery.recovery_approve(recovery=opened, officer=second_officer)
    recovery.recovery_perform(
        recovery=opened, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
        agent_password=kra.password,
    )  # fmt: skip
    officer.groups.clear()

    page = people["officer"].get(f"/ra/recovery/{opened.pk}/")
    assert not page.context["is_recipient"]
    assert "Download the .p12 file" not in page.content.decode()
    assert "you no longer are one" in page.content.decode()

    response = people["officer"].post(f"/ra/recovery/{opened.pk}/download/")

    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/html")
    assert "no longer are one" in response.content.decode()
    assert snapshot(opened)["state"] == KeyRecoveryRequest.State.READY
    refused = AuditEvent.objects.get(action="recovery.download")
    assert refused.outcome == AuditEvent.Outcome.FAILURE


def test_the_owner_sees_the_download_button_only_while_it_is_open(people, performed):
    page = people["owner"].get(f"/ra/recovery/{performed.recovery.pk}/")
    assert page.context["download_open"]
    assert "Download the .p12 file" in page.content.decode()

    later = performed.recovery.download_expires_at + timedelta(minutes=1)
    with time_machine.travel(later, tick=False):
        page = people["owner"].get(f"/ra/recovery/{performed.recovery.pk}/")
    assert not page.context["download_open"]


def test_the_owner_finds_a_recovery_of_their_key_on_the_start_page(people, opened):
    """The e-mail is not the only way back to a download that closes within the hour."""
    link = f'href="/ra/recovery/{opened.pk}/"'

    waiting = people["owner"].get("/").content.decode()
    assert link in waiting
    assert "waiting for approval" in waiting
    assert link not in people["colleague"].get("/").content.decode()
    # Olivia opened it for Alice: not hers to download, so not on her start page.
    assert link not in people["officer"].get("/").content.decode()


def test_an_agent_finds_approved_recoveries_waiting_on_the_start_page(people, opened, approved):
    """Agents rarely visit /ra/: the start page says when a recovery waits for one."""
    waiting = people["agent"].get("/").content.decode()

    assert 'href="/ra/recovery/">1 key recovery waiting for an agent</a>' in waiting
    for role in ("owner", "colleague", "officer"):
        assert "waiting for an agent</a>" not in people[role].get("/").content.decode()


def test_an_agent_is_not_called_for_a_recovery_still_waiting_for_approval(people, opened):
    assert "waiting for an agent</a>" not in people["agent"].get("/").content.decode()


def test_the_start_page_says_when_a_recovered_key_is_ready(people, performed):
    page = people["owner"].get("/").content.decode()

    assert f'href="/ra/recovery/{performed.recovery.pk}/">Download it now' in page
    assert "one-time password" in page


def test_the_requesting_officer_finds_a_key_recovered_for_them_on_the_start_page(
    people, archived, officer
):
    opened = recovery.recovery_open(
        certificate=archived.certificate, officer=officer, reason=REASON, deliver_to="requester"
    )

    assert f'href="/ra/recovery/{opened.pk}/"' in people["officer"].get("/").content.decode()
    assert f'href="/ra/recovery/{opened.pk}/"' not in people["owner"].get("/").content.decode()


def test_the_owner_is_told_what_happens_next_while_the_recovery_waits(people, opened):
    page = people["owner"].get(f"/ra/recovery/{opened.pk}/").content.decode()

    assert "This key will be recovered for you" in page
    assert "one-time password in person or by phone" in page


def test_a_rejection_without_a_reason_is_tied_to_its_field(people, opened):
    response = people["officer"].post(f"/ra/recovery/{opened.pk}/reject/", {"reason": ""})

    assert response.status_code == 400
    page = response.content.decode()
    (field,) = [line for line in page.splitlines() if 'id="id_reason"' in line]
    assert 'aria-describedby="reject-errors"' in field
    assert 'aria-invalid="true"' in field


def test_an_agent_is_told_what_a_pending_recovery_waits_for(people, opened):
    page = people["agent"].get(f"/ra/recovery/{opened.pk}/").content.decode()

    assert "Waiting for 1 RA officer approval." in page
    assert "Carry it out" not in page


def test_the_recovery_list_shows_open_and_closed_recoveries(people, performed, archived):
    page = people["agent"].get("/ra/recovery/")

    assert [r.pk for r in page.context["open"]] == [performed.recovery.pk]
    assert list(page.context["recent"]) == []


# --- the audit trail ------------------------------------------------------------------


TRAIL = ["recovery.open", "recovery.perform", "kra.register"]


@pytest.fixture
def trail(hierarchy, officer):
    """Three events on three days in March, one a failure by someone named like a formula."""
    days = [datetime(2026, 3, d, 12, 0, tzinfo=UTC) for d in (1, 2, 3)]
    formula = UserFactory(username="=SUM(A1)")
    with time_machine.travel(days[0], tick=False):
        audit_record(action="recovery.open", actor=officer, detail={"reason": "lost laptop"})
    with time_machine.travel(days[1], tick=False):
        audit_record(
            action="recovery.perform",
            actor=formula,
            outcome=AuditEvent.Outcome.FAILURE,
            detail={"error": "wrong password"},
        )
    with time_machine.travel(days[2], tick=False):
        audit_record(action="kra.register", actor=officer, detail={"name": "Team KRA"})
    return days


def export(client: Client, fmt: str, **filters: str) -> str:
    response = client.get(f"/ra/audit/export.{fmt}", filters)
    assert response.status_code == 200
    assert response.streaming
    assert response["Cache-Control"] == "no-store"
    return b"".join(response.streaming_content).decode()


def test_the_csv_export_parses_and_carries_the_hashes(people, trail):
    rows = list(csv.DictReader(io.StringIO(export(people["officer"], "csv"))))

    assert list(rows[0]) == AUDIT_COLUMNS
    stored = {e.pk: e for e in AuditEvent.objects.all()}
    assert len(rows) == len(stored)
    for row in rows:
        event = stored[int(row["id"])]
        assert (row["hash"], row["previous_hash"]) == (event.hash, event.previous_hash)
    assert [int(r["id"]) for r in rows] == sorted(stored)  # oldest first: the chain's order
    assert rows[-1]["action"] == "audit.export"
    assert json.loads(rows[-1]["detail"]) == {"format": "csv", "filters": {}}


def test_the_csv_export_defuses_spreadsheet_formulas_and_json_lines_keep_them(people, trail):
    (row,) = csv.DictReader(io.StringIO(export(people["officer"], "csv", outcome="failure")))
    (line,) = export(people["officer"], "jsonl", outcome="failure").splitlines()

    assert row["actor_name"] == "'=SUM(A1)"
    assert json.loads(line)["actor_name"] == "=SUM(A1)"


def test_the_json_lines_export_parses(people, trail):
    rows = [json.loads(line) for line in export(people["officer"], "jsonl").splitlines()]

    assert set(rows[0]) == set(AUDIT_COLUMNS)
    perform = next(r for r in rows if r["action"] == "recovery.perform")
    assert perform["detail"] == {"error": "wrong password"}
    assert perform["outcome"] == "failure"
    assert len(perform["hash"]) == 64
    assert [r["previous_hash"] for r in rows[1:]] == [r["hash"] for r in rows[:-1]]


@pytest.mark.parametrize(
    ("filters", "actions"),
    [
        ({"actor": "OLIV"}, ["recovery.open", "kra.register"]),
        ({"action": "recovery"}, ["recovery.open", "recovery.perform"]),
        ({"action": "recovery.open"}, ["recovery.open"]),
        ({"outcome": "failure"}, ["recovery.perform"]),
        ({"object": "nothing-like-this"}, []),
        ({"since": "2026-03-02", "until": "2026-03-02"}, ["recovery.perform"]),
        ({"since": "2026-03-02", "until": "2026-03-31"}, ["recovery.perform", "kra.register"]),
        ({"until": "2026-03-01"}, ["recovery.open"]),
    ],
)
def test_the_filters_narrow_the_list_and_the_exports(people, trail, filters, actions):
    listed = [e.action for e in people["officer"].get("/ra/audit/", filters).context["events"]]
    lines = export(people["officer"], "jsonl", **filters).splitlines()
    exported = [json.loads(line)["action"] for line in lines]

    assert listed == list(reversed(actions))  # newest first
    assert [a for a in exported if a != "audit.export"] == actions  # oldest first


def test_the_object_filter_finds_by_name_or_id(people, opened):
    by_id = people["officer"].get(
        "/ra/audit/", {"object": str(opened.pk), "action": "recovery.open"}
    )

    assert [e.object_id for e in by_id.context["events"]] == [str(opened.pk)]


def test_an_export_is_itself_audited(people, trail, officer):
    export(people["officer"], "csv", actor="olivia")

    event = AuditEvent.objects.filter(action="audit.export").get()
    assert event.actor == officer
    assert event.detail == {"format": "csv", "filters": {"actor": "olivia"}}


def test_bad_filters_say_what_is_wrong(people, trail):
    page = people["officer"].get("/ra/audit/", {"since": "2026-03-03", "until": "2026-03-01"})

    assert "The end date is before the start date." in page.content.decode()
    assert page.context["events"] == []


def test_the_audit_filter_suggests_the_actions_without_rescanning_the_trail(people, trail):
    first = people["officer"].get("/ra/audit/")
    audit_record(action="certificate.new-kind")
    with CaptureQueriesContext(connection) as queries:
        second = people["officer"].get("/ra/audit/")

    assert {"kra.register", "recovery.open", "recovery.perform"} <= set(first.context["actions"])
    assert "certificate.new-kind" not in first.context["actions"]
    assert second.context["actions"] == first.context["actions"]  # remembered five minutes
    assert not [q for q in queries.captured_queries if "DISTINCT" in q["sql"].upper()]
    cache.clear()
    assert "certificate.new-kind" in people["officer"].get("/ra/audit/").context["actions"]


def test_the_audit_list_pages_by_id(people, trail, settings):
    from enrollment import ra_views

    original = ra_views.AUDIT_PAGE_SIZE
    ra_views.AUDIT_PAGE_SIZE = 2
    try:
        first = people["officer"].get("/ra/audit/")
        older = first.context["older"]
        second = people["officer"].get(f"/ra/audit/?{older}")
    finally:
        ra_views.AUDIT_PAGE_SIZE = original

    ids = [e.pk for e in first.context["events"]] + [e.pk for e in second.context["events"]]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 4


def test_an_unknown_export_format_is_404(people):
    assert people["officer"].get("/ra/audit/export.xml").status_code == 404


def test_an_export_with_a_bad_filter_shows_the_error_and_exports_nothing(people, trail):
    """Not a 404 "nothing here": the trail page again, the error beside the bad filter."""
    before = AuditEvent.objects.count()

    response = people["officer"].get("/ra/audit/export.csv", {"since": "2026-13-01"})

    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")
    assert "since" in response.context["form"].errors
    assert "Correct the filters above" in response.content.decode()
    assert AuditEvent.objects.count() == before  # no audit.export: nothing left


# --- agents and the admin's registration ----------------------------------------------


def test_the_agents_page_lists_each_agent_certificate(people, kra, archived):
    page = people["officer"].get("/ra/agents/")

    (row,) = page.context["agents"].rows
    assert (row.agent, row.state, row.archives) == (kra.agent, "valid", 1)


def test_the_agents_page_names_subject_attributes_as_openssl_does(people, kra):
    """SN=Keeper, not 2.5.4.4=Keeper: officers compare these with openssl's output."""
    page = people["officer"].get("/ra/agents/").content.decode()

    assert "SN=Keeper" in page
    assert "GN=Karl" in page
    assert "2.5.4." not in page


def test_an_admin_registers_an_agent_certificate_by_upload(admin_client_, template, hierarchy):
    from enrollment import services

    holder = UserFactory(username="kate")
    certificate, _bundle = services.certificate_issue_with_server_key(
        template=template("smime-dual-use"),
        owner=holder,
        key_algorithm=KeyAlgorithm.RSA_2048,
        pkcs12_password="Kate-Agent-Lantern-77",
    )
    pem = certificate.certificate.public_bytes(Encoding.PEM)

    assert admin_client_.get("/admin/enrollment/keyrecoveryagent/add/").status_code == 200
    response = admin_client_.post(
        "/admin/enrollment/keyrecoveryagent/add/",
        {
            "name": "Kate's KRA",
            "certificate": SimpleUploadedFile("kate.pem", pem),
            "user": holder.pk,
        },
    )

    assert response.status_code == 302
    agent = KeyRecoveryAgent.objects.get(name="Kate's KRA")
    assert agent.user == holder
    assert AuditEvent.objects.filter(action="kra.register").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n", "holds a private key"),
        (b"not a certificate", "not a PEM or DER certificate"),
        ("ec", "RSA certificate"),
    ],
)
def test_the_admin_refuses_what_is_not_an_agent_certificate(
    admin_client_, hierarchy, template, employee, content, message
):
    if content == "ec":
        from enrollment import services

        certificate, _ = services.certificate_issue_with_server_key(
            template=template("smime-dual-use"),
            owner=employee,
            key_algorithm=KeyAlgorithm.EC_P256,
            pkcs12_password="An-EC-Key-Lantern-42",
        )
        content = certificate.certificate.public_bytes(Encoding.DER)

    response = admin_client_.post(
        "/admin/enrollment/keyrecoveryagent/add/",
        {"name": "Wrong", "certificate": SimpleUploadedFile("x.cer", content)},
    )

    assert response.status_code == 400
    assert message in response.content.decode()
    assert not KeyRecoveryAgent.objects.filter(name="Wrong").exists()


def test_staff_without_the_add_permission_cannot_register_an_agent(hierarchy):
    staff = UserFactory(username="sam", is_staff=True)

    response = client_for(staff).get("/admin/enrollment/keyrecoveryagent/add/")

    assert response.status_code == 403


def test_the_admin_lists_recoveries_without_the_recovered_bundle(admin_client_, performed):
    listing = admin_client_.get("/admin/enrollment/keyrecoveryrequest/")
    page = admin_client_.get(
        f"/admin/enrollment/keyrecoveryrequest/{performed.recovery.pk}/change/"
    )

    assert listing.status_code == page.status_code == 200
    assert "bundle" not in page.context["adminform"].form.fields


def test_the_console_shows_a_dead_broker_and_worker(officer_client, hierarchy, monkeypatch):
    import pkiportal.health

    monkeypatch.setattr(
        pkiportal.health,
        "checks",
        lambda: {
            "broker": {"status": "fail", "error": "ConnectionRefusedError: [Errno 111]"},
            "worker": {"status": "fail", "error": "The broker is unreachable."},
        },
    )

    text = officer_client.get("/ra/").content.decode()

    assert "ConnectionRefusedError" in text
    assert "The broker is unreachable." in text
    assert text.count(">Down<") == 2


def test_the_audit_trail_links_requests_to_their_pages(people, employee, template, hierarchy):
    from cryptography.hazmat.primitives.serialization import Encoding

    from enrollment import services
    from tests.enrollment.tools import cryptography_csr, new_key

    submitted = services.request_submit(
        requester=employee,
        template=template("smime-signing"),
        csr=cryptography_csr(new_key()).public_bytes(Encoding.PEM),
        channel="web",
    )

    page = people["officer"].get("/ra/audit/", {"action": "request"}).content.decode()

    assert f'href="/enroll/requests/{submitted.pk}/"' in page
    assert people["officer"].get(f"/enroll/requests/{submitted.pk}/").status_code == 200
