"""The holder's side of key recovery in the browser: ask, follow, withdraw, download;
and the officers' queue, where holders' requests are accepted or rejected."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
import time_machine
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django.core import mail
from django.test import Client

from enrollment import recovery, services
from enrollment.models import AuditEvent, Certificate, KeyRecoveryRequest
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for
from tests.enrollment.ra_fixtures import ACCEPT_NOTE, HOLDER_REASON, agent_upload, snapshot
from tests.second_factor import verified_login

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_pkcs12")]
State = KeyRecoveryRequest.State
ROLES = ["holder", "colleague", "officer", "agent", "anonymous"]
MESSAGE = b"Content-Type: text/plain\r\n\r\nLast year's budget, for your eyes only.\r\n"


@pytest.fixture
def kra(quick_kra):
    return quick_kra


@pytest.fixture
def people(employee, colleague, officer, agent_user) -> dict[str, Client]:
    """Alice holds the key; Bob is a colleague; Olivia an RA officer; Karl an agent."""
    users = {
        "holder": employee,
        "colleague": colleague,
        "officer": officer,
        "agent": agent_user,
        "anonymous": None,
    }
    return {role: client_for(user) for role, user in users.items()}


@pytest.fixture
def signing(hierarchy, template, employee) -> Certificate:
    """Alice's signing certificate: its key was never archived."""
    certificate, _bundle = services.certificate_issue_with_server_key(
        template=template("smime-signing"),
        owner=employee,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password="Signing-Key-Lantern-90",
    )
    return certificate


def ask_form(reason: str = HOLDER_REASON, fmt: str = "modern") -> dict[str, str]:
    return {"reason": reason, "pkcs12_format": fmt}


def success_events(action: str) -> int:
    return AuditEvent.objects.filter(action=action, outcome="success").count()


# --- who may and who may not ----------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    path: str  # {cert}: Alice's encryption certificate; {pk}: her recovery
    state: str  # the recovery the case needs: "" (none), requested or accepted
    expected: dict[str, int]
    data: dict[str, str]


def statuses(**given: int) -> dict[str, int]:
    return {"anonymous": 302, **given}


CASES = [
    Case(
        "ask",
        "/certificates/{cert}/recover/",
        "",
        # Officers may see the certificate, so it is a 403 for them, not a 404.
        statuses(holder=302, colleague=404, officer=403, agent=404),
        ask_form(),
    ),
    Case(
        "accept",
        "/ra/recovery/{pk}/accept/",
        "requested",
        statuses(holder=403, colleague=404, officer=302, agent=403),
        {"note": ACCEPT_NOTE},
    ),
    Case(
        "withdraw",
        "/ra/recovery/{pk}/withdraw/",
        "requested",
        statuses(holder=302, colleague=404, officer=403, agent=403),
        {"confirm": "on"},
    ),
    Case(
        "reject a holder's request",
        "/ra/recovery/{pk}/reject/",
        "requested",
        statuses(holder=403, colleague=404, officer=302, agent=403),
        {"reason": "Could not reach you to confirm."},
    ),
    Case(
        "approve a holder's request before anyone accepts it",
        "/ra/recovery/{pk}/approve/",
        "requested",
        statuses(holder=403, colleague=404, officer=400, agent=403),
        {},
    ),
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_who_may_and_who_may_not(case, role, people, archived, employee):
    found = None
    if case.state:
        found = recovery.recovery_ask(
            certificate=archived.certificate, holder=employee, reason=HOLDER_REASON
        )
    before = snapshot(found) if found else None
    path = case.path.format(cert=archived.certificate.pk, pk=found.pk if found else 0)

    response = people[role].post(path, case.data)

    assert response.status_code == case.expected[role], response.content[:400]
    if role == "anonymous":
        assert response["Location"].startswith("/accounts/login/")
    if case.expected[role] != 302 and found is not None:
        assert snapshot(found) == before
    if case.expected[role] != 302 and not case.state:
        assert not KeyRecoveryRequest.objects.exists()


@pytest.mark.parametrize("role", ROLES)
def test_who_sees_a_holders_request(role, people, asked):
    expected = statuses(holder=200, colleague=404, officer=200, agent=200)

    assert people[role].get(f"/ra/recovery/{asked.pk}/").status_code == expected[role]


def test_asking_is_a_post(people, archived):
    assert (
        people["holder"].get(f"/certificates/{archived.certificate.pk}/recover/").status_code == 405
    )


def test_asking_needs_the_csrf_token(employee, archived):
    client = Client(enforce_csrf_checks=True)
    verified_login(client, employee)

    response = client.post(f"/certificates/{archived.certificate.pk}/recover/", ask_form())

    assert response.status_code == 403
    assert not KeyRecoveryRequest.objects.exists()


def test_a_deactivated_account_cannot_ask(people, archived, employee):
    """Signed in before the account was switched off: the session no longer counts."""
    employee.is_active = False
    employee.save()

    response = people["holder"].post(
        f"/certificates/{archived.certificate.pk}/recover/", ask_form()
    )

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert not KeyRecoveryRequest.objects.exists()


# --- asking from my certificates ------------------------------------------------------


def test_my_certificates_offer_to_recover_archived_keys_only(people, archived, signing):
    page = people["holder"].get("/certificates/").content.decode()

    assert f'href="/certificates/{archived.certificate.pk}/#recover">Recover this key' in page
    assert f'href="/certificates/{signing.pk}/#recover"' not in page
    assert "not archived" in page


def test_the_certificate_page_offers_the_form_for_an_archived_key_only(people, archived, signing):
    archived_page = people["holder"].get(f"/certificates/{archived.certificate.pk}/")
    signing_page = people["holder"].get(f"/certificates/{signing.pk}/")

    assert (
        f'action="/certificates/{archived.certificate.pk}/recover/"'
        in archived_page.content.decode()
    )
    assert "/recover/" not in signing_page.content.decode()
    assert 'id="recover"' not in signing_page.content.decode()


@pytest.mark.parametrize("status", ["expired", "revoked"])
def test_expired_and_revoked_certificates_keys_are_offered_too(status, archived, employee):
    """Old mail needs exactly these keys."""
    later = archived.certificate.not_after + timedelta(days=1)
    if status == "revoked":
        services.certificate_revoke(certificate=archived.certificate, reason="superseded")
        later = archived.certificate.not_before + timedelta(days=1)
    path = f"/certificates/{archived.certificate.pk}/"

    with time_machine.travel(later, tick=False):
        holder = client_for(employee)  # signed in then: sessions last hours, not a year
        page = holder.get(path).content.decode()
        assert f"status-{status}" in page
        assert f'action="{path}recover/"' in page
        response = holder.post(f"{path}recover/", ask_form())

    assert response.status_code == 302
    assert KeyRecoveryRequest.objects.get().state == State.REQUESTED


def test_asking_leads_to_the_recovery_page_where_the_holder_follows_it(people, archived, employee):
    response = people["holder"].post(
        f"/certificates/{archived.certificate.pk}/recover/", ask_form(fmt="compatible"),
        follow=True,
    )  # fmt: skip

    found = KeyRecoveryRequest.objects.get()
    assert response.redirect_chain == [(f"/ra/recovery/{found.pk}/", 302)]
    assert (found.asked_by, found.requested_by, found.pkcs12_format) == (
        employee,
        None,
        "compatible",
    )
    page = response.content.decode()
    assert "You asked for this key back" in page
    assert "waiting for an RA officer" in page
    assert f'action="/ra/recovery/{found.pk}/withdraw/"' in page
    assert "/accept/" not in page  # the holder is not offered to accept it
    assert success_events("recovery.ask") == 1


def test_my_pages_show_the_request_and_its_state(people, asked, archived):
    listing = people["holder"].get("/certificates/").content.decode()
    detail = people["holder"].get(f"/certificates/{archived.certificate.pk}/").content.decode()
    home = people["holder"].get("/").content.decode()

    for page in (listing, detail, home):
        assert f'href="/ra/recovery/{asked.pk}/"' in page
        assert "waiting for an officer to accept it" in page.lower()
    assert "My key recoveries" in listing
    assert f'action="/certificates/{archived.certificate.pk}/recover/"' not in detail


def test_a_second_ask_shows_the_one_in_progress_and_stores_nothing(people, asked, archived):
    before = AuditEvent.objects.filter(action="recovery.ask", outcome="success").count()

    response = people["holder"].post(
        f"/certificates/{archived.certificate.pk}/recover/", ask_form()
    )

    assert response.status_code == 400
    page = response.content.decode()
    assert f"Recovery #{asked.pk} of this key is already in progress" in page
    assert f'href="/ra/recovery/{asked.pk}/">Recovery #{asked.pk}</a>' in page
    assert KeyRecoveryRequest.objects.count() == 1
    assert success_events("recovery.ask") == before


def test_a_signing_key_cannot_be_asked_for(people, signing):
    response = people["holder"].post(f"/certificates/{signing.pk}/recover/", ask_form())

    assert response.status_code == 400
    assert "was not archived" in response.content.decode()
    assert not KeyRecoveryRequest.objects.exists()


def test_asking_too_often_is_a_429(people, archived, employee, settings):
    settings.PKIPORTAL_RECOVERY_ASKS_PER_DAY = 1
    found = recovery.recovery_ask(
        certificate=archived.certificate, holder=employee, reason=HOLDER_REASON
    )
    recovery.recovery_withdraw(recovery=found, holder=employee)

    response = people["holder"].post(
        f"/certificates/{archived.certificate.pk}/recover/", ask_form()
    )

    assert response.status_code == 429
    assert "in the last 24 hours" in response.content.decode()
    assert KeyRecoveryRequest.objects.count() == 1


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"pkcs12_format": "modern"}, "Say why you need the key back."),
        (ask_form(reason="   "), "Say why you need the key back."),
        (ask_form(reason="x" * 1001), "at most 1000 characters"),
        (ask_form(reason="lost \u202eit"), "U+202E"),
        (ask_form(fmt="pkcs7"), "Select a valid choice"),
    ],
)
def test_a_bad_form_names_what_was_wrong_and_stores_nothing(people, archived, data, problem):
    before = AuditEvent.objects.count()

    response = people["holder"].post(f"/certificates/{archived.certificate.pk}/recover/", data)

    assert response.status_code == 400
    assert problem in response.content.decode()
    assert not KeyRecoveryRequest.objects.exists()
    assert AuditEvent.objects.count() == before  # refused by the form, before any service


# --- withdrawing ----------------------------------------------------------------------


def test_the_holder_withdraws_from_the_recovery_page(people, asked, employee):
    unticked = people["holder"].post(f"/ra/recovery/{asked.pk}/withdraw/", {})
    assert unticked.status_code == 400
    assert "Tick the box to confirm." in unticked.content.decode()
    assert snapshot(asked)["state"] == State.REQUESTED

    response = people["holder"].post(
        f"/ra/recovery/{asked.pk}/withdraw/", {"confirm": "on"}, follow=True
    )

    assert response.status_code == 200
    assert f"You withdrew recovery #{asked.pk}" in response.content.decode()
    asked.refresh_from_db()
    assert (asked.state, asked.decided_by) == (State.WITHDRAWN, employee)
    event = AuditEvent.objects.get(action="recovery.withdraw")
    assert (event.actor, event.outcome) == (employee, "success")


def test_my_certificates_offer_to_withdraw_while_it_waits(people, asked):
    page = people["holder"].get("/certificates/").content.decode()

    assert f'action="/ra/recovery/{asked.pk}/withdraw/"' in page
    assert f'id="withdraw-recovery-{asked.pk}-confirm"' in page


def test_a_recovered_key_is_no_longer_withdrawn(people, accepted, second_officer, kra, agent_user):
    recovery.recovery_approve(recovery=accepted, officer=second_officer)
    recovery.recovery_perform(
        recovery=accepted, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
        agent_password=kra.password,
    )  # fmt: skip
    before = snapshot(accepted)

    response = people["holder"].post(f"/ra/recovery/{accepted.pk}/withdraw/", {"confirm": "on"})

    assert response.status_code == 400
    assert "can no longer be withdrawn" in response.content.decode()
    assert snapshot(accepted) == before


# --- the officers' side ---------------------------------------------------------------


def test_officers_see_holders_requests_marked_with_the_reason(people, asked, officer):
    queue = people["officer"].get("/ra/recovery/").content.decode()
    console = people["officer"].get("/ra/").content.decode()
    home = people["officer"].get("/").content.decode()

    assert "Asked by the holder" in queue
    assert "My laptop was stolen; I need to read last year&#x27;s encrypted mail." in queue
    assert "1 asked by a key holder and waiting for an officer to accept it" in console
    assert "1 key recovery request to accept" in home


def test_an_officer_accepts_after_saying_how_they_checked(people, asked, officer):
    page = people["officer"].get(f"/ra/recovery/{asked.pk}/").content.decode()
    assert f'action="/ra/recovery/{asked.pk}/accept/"' in page
    assert f'action="/ra/recovery/{asked.pk}/approve/"' not in page

    blank = people["officer"].post(f"/ra/recovery/{asked.pk}/accept/", {"note": "  "})
    assert blank.status_code == 400
    assert "Say how you confirmed" in blank.content.decode()
    assert snapshot(asked)["state"] == State.REQUESTED

    response = people["officer"].post(
        f"/ra/recovery/{asked.pk}/accept/", {"note": ACCEPT_NOTE}, follow=True
    )

    text = response.content.decode()
    assert "You accepted recovery" in text
    assert ACCEPT_NOTE in text
    asked.refresh_from_db()
    assert (asked.state, asked.requested_by) == (State.PENDING, officer)
    # Olivia opened it now: another officer approves.
    assert f'action="/ra/recovery/{asked.pk}/approve/"' not in text


def test_an_officer_who_asked_for_their_own_key_is_not_offered_to_accept_it(
    people, archived, employee, officer
):
    employee.groups.add(officer.groups.get())
    verified_login(people["holder"], employee)  # an officer now: with a second factor
    found = recovery.recovery_ask(
        certificate=archived.certificate, holder=employee, reason=HOLDER_REASON
    )

    page = people["holder"].get(f"/ra/recovery/{found.pk}/").content.decode()
    response = people["holder"].post(f"/ra/recovery/{found.pk}/accept/", {"note": ACCEPT_NOTE})

    assert f'action="/ra/recovery/{found.pk}/accept/"' not in page
    assert "other than the key's holder" in page
    assert response.status_code == 403
    assert snapshot(found)["state"] == State.REQUESTED


def test_a_rejection_shows_its_reason_to_the_holder(people, asked):
    people["officer"].post(f"/ra/recovery/{asked.pk}/reject/", {"reason": "Call the desk first."})

    page = people["holder"].get(f"/ra/recovery/{asked.pk}/").content.decode()

    assert "Call the desk first." in page
    assert "Rejected" in page
    assert "/withdraw/" not in page


def test_the_holder_may_not_approve_their_own_request_even_as_an_officer(
    people, accepted, employee, officer
):
    employee.groups.add(officer.groups.get())
    verified_login(people["holder"], employee)  # an officer now: with a second factor
    before = snapshot(accepted)

    page = people["holder"].get(f"/ra/recovery/{accepted.pk}/").content.decode()
    response = people["holder"].post(f"/ra/recovery/{accepted.pk}/approve/")

    assert f'action="/ra/recovery/{accepted.pk}/approve/"' not in page
    assert response.status_code == 403
    assert snapshot(accepted) == before


def test_the_holder_may_not_reject_a_recovery_of_their_own_key_even_as_an_officer(
    people, archived, employee, officer
):
    hold = recovery.recovery_open(
        certificate=archived.certificate,
        officer=officer,
        reason="Legal hold",
        deliver_to=KeyRecoveryRequest.Recipient.REQUESTER,
    )
    employee.groups.add(officer.groups.get())
    verified_login(people["holder"], employee)  # an officer now: with a second factor
    before = snapshot(hold)

    page = people["holder"].get(f"/ra/recovery/{hold.pk}/").content.decode()
    response = people["holder"].post(f"/ra/recovery/{hold.pk}/reject/", {"reason": "No"})

    assert f'action="/ra/recovery/{hold.pk}/reject/"' not in page
    assert f'action="/ra/recovery/{hold.pk}/reject/"' in (
        people["officer"].get(f"/ra/recovery/{hold.pk}/").content.decode()
    )
    assert response.status_code == 403
    assert snapshot(hold) == before


def test_the_open_form_tells_an_officer_holder_to_ask_instead(people, archived, employee, officer):
    employee.groups.add(officer.groups.get())
    verified_login(people["holder"], employee)  # an officer now: with a second factor
    url = f"/ra/recovery/new/?certificate={archived.certificate.pk}"

    own = people["holder"].get(url).content.decode()
    theirs = people["officer"].get(url).content.decode()

    assert "This is your own key" in own
    assert "Open the recovery" not in own
    assert "Open the recovery" in theirs


@pytest.mark.parametrize("text", ["ok \u202e evil", "bell \x07"])
def test_the_officers_forms_refuse_what_does_not_read_as_written(
    people, archived, officer, second_officer, text
):
    opened = recovery.recovery_open(
        certificate=archived.certificate, officer=officer, reason="Legal hold"
    )
    before = snapshot(opened)
    opening = people["officer"].post(
        "/ra/recovery/new/",
        {"certificate": archived.certificate.pk, "reason": text, "deliver_to": "owner",
         "pkcs12_format": "modern"},
    )  # fmt: skip
    rejecting = client_for(second_officer).post(
        f"/ra/recovery/{opened.pk}/reject/", {"reason": text}
    )

    for answer in (opening, rejecting):
        assert answer.status_code == 400
        assert "control character" in answer.content.decode()
    assert KeyRecoveryRequest.objects.count() == 1
    assert snapshot(opened) == before


def test_the_officers_are_mailed_when_a_holder_asks(
    people, archived, officer, second_officer, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        people["holder"].post(f"/certificates/{archived.certificate.pk}/recover/", ask_form())

    found = KeyRecoveryRequest.objects.get()
    to_officers = {m.to[0] for m in mail.outbox if "asks for their encryption key" in m.subject}
    assert to_officers == {officer.email, second_officer.email}
    assert all(f"/ra/recovery/{found.pk}/" in m.body for m in mail.outbox)


# --- after the one download ----------------------------------------------------------


def download_section(page: str) -> str:
    return page.split('id="download"')[1].split("</section>")[0]


def test_the_download_tells_the_page_it_arrived_as_the_enrolment_page_does(people, performed):
    found = performed.recovery
    page = people["holder"].get(f"/ra/recovery/{found.pk}/").content.decode()

    response = people["holder"].post(
        f"/ra/recovery/{found.pk}/download/", {"download_token": "abcdef0123456789"}
    )

    section = download_section(page)
    assert "data-long-operation" in section
    assert 'name="download_token"' in section
    assert "/static/js/enrol.js" in page
    # Ready for the script to show once the file has arrived: import help, and revocation.
    done = section.split("data-done")[1]
    assert '<a href="/help/mail-clients/">' in done
    assert f'href="/certificates/{found.certificate_id}/#revoke"' in done
    assert response["Content-Type"] == "application/x-pkcs12"
    assert response.cookies["pkiportal_download"].value == "abcdef0123456789"


def test_a_hostile_download_token_is_not_echoed(people, performed):
    response = people["holder"].post(
        f"/ra/recovery/{performed.recovery.pk}/download/", {"download_token": "x; Path=/; evil"}
    )

    assert response.status_code == 200
    assert "pkiportal_download" not in response.cookies


def test_after_the_download_the_page_says_what_next_and_offers_no_download(people, performed):
    found = performed.recovery
    people["holder"].post(f"/ra/recovery/{found.pk}/download/")

    page = people["holder"].get(f"/ra/recovery/{found.pk}/").content.decode()

    assert f'action="/ra/recovery/{found.pk}/download/"' not in page
    assert "Recovered: waiting for download" not in page
    assert '<span class="badge recovery-downloaded">Downloaded</span>' in page
    steps = page.split('id="downloaded"')[1].split("</section>")[0]
    assert '<a href="/help/mail-clients/">' in steps
    assert "The certificate is still valid." in steps
    assert f'href="/certificates/{found.certificate_id}/#revoke"' in steps


def test_a_revoked_certificate_is_not_offered_for_revocation_again(people, performed, employee):
    found = performed.recovery
    people["holder"].post(f"/ra/recovery/{found.pk}/download/")
    services.certificate_revoke(
        certificate=found.certificate, reason="keyCompromise", actor=employee
    )

    page = people["holder"].get(f"/ra/recovery/{found.pk}/").content.decode()

    steps = page.split('id="downloaded"')[1].split("</section>")[0]
    assert '<a href="/help/mail-clients/">' in steps
    assert "#revoke" not in steps
    assert "still valid" not in steps


def test_only_the_one_it_was_recovered_for_is_told_what_next(people, performed):
    found = performed.recovery
    people["holder"].post(f"/ra/recovery/{found.pk}/download/")

    statuses = {role: people[role].get(f"/ra/recovery/{found.pk}/") for role in ROLES}

    assert statuses["colleague"].status_code == 404
    assert statuses["anonymous"].status_code == 302
    for role in ("officer", "agent"):
        assert statuses[role].status_code == 200
        assert 'id="downloaded"' not in statuses[role].content.decode()
    assert 'id="downloaded"' in statuses["holder"].content.decode()


def test_an_officer_it_was_delivered_to_revokes_through_find_and_revoke(
    archived, officer, second_officer, kra, agent_user
):
    opened = recovery.recovery_open(
        certificate=archived.certificate,
        officer=officer,
        reason="Legal hold on Alice's mail.",
        deliver_to="requester",
    )
    recovery.recovery_approve(recovery=opened, officer=second_officer)
    recovery.recovery_perform(
        recovery=opened, agent_user=agent_user, agent_pkcs12=kra.pkcs12, agent_password=kra.password
    )
    olivia = client_for(officer)
    olivia.post(f"/ra/recovery/{opened.pk}/download/")

    page = olivia.get(f"/ra/recovery/{opened.pk}/").content.decode()

    steps = page.split('id="downloaded"')[1].split("</section>")[0]
    assert f'href="/ra/certificates/?q={archived.certificate.serial}"' in steps


# --- the whole way, with a real agent PKCS#12 and openssl -----------------------------


@pytest.mark.interop
def test_from_the_holders_ask_to_their_one_download_in_the_browser(
    people, archived, employee, second_officer, kra, openssl
):
    openssl.write_pem("alice.pem", archived.certificate.certificate)
    openssl.write("message.txt", MESSAGE)
    openssl.run(
        "cms", "-encrypt", "-aes256", "-in", "message.txt", "-out", "message.p7m", "alice.pem"
    )
    oscar = client_for(second_officer)

    # Alice asks; Olivia confirms it with her and accepts; Oscar approves.
    response = people["holder"].post(
        f"/certificates/{archived.certificate.pk}/recover/", ask_form()
    )
    found = KeyRecoveryRequest.objects.get()
    assert response["Location"] == f"/ra/recovery/{found.pk}/"
    assert (
        people["officer"]
        .post(f"/ra/recovery/{found.pk}/accept/", {"note": ACCEPT_NOTE})
        .status_code
        == 302
    )
    assert oscar.post(f"/ra/recovery/{found.pk}/approve/").status_code == 302

    # Karl carries it out with his own agent PKCS#12.
    response = people["agent"].post(
        f"/ra/recovery/{found.pk}/perform/", agent_upload(kra.pkcs12, kra.password)
    )
    assert response.status_code == 200
    password = response.context["one_time_password"]

    # Nobody but Alice downloads it; Alice does, once.
    for role in ("officer", "agent", "colleague"):
        assert people[role].post(f"/ra/recovery/{found.pk}/download/").status_code in (403, 404)
    response = people["holder"].post(f"/ra/recovery/{found.pk}/download/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-pkcs12"
    assert people["holder"].post(f"/ra/recovery/{found.pk}/download/").status_code == 400

    openssl.write("recovered.p12", response.content)
    openssl.run(
        "pkcs12", "-in", "recovered.p12", "-passin", f"pass:{password}", "-nodes",
        "-out", "recovered.pem",
    )  # fmt: skip
    openssl.run(
        "cms", "-decrypt", "-in", "message.p7m", "-recip", "alice.pem",
        "-inkey", "recovered.pem", "-out", "decrypted.txt",
    )  # fmt: skip
    decrypted = openssl.path("decrypted.txt").read_bytes().replace(b"\r\n", b"\n")
    assert decrypted == MESSAGE.replace(b"\r\n", b"\n")
    found.refresh_from_db()
    assert (found.state, found.bundle) == (State.DOWNLOADED, None)
    people_who_acted = {found.asked_by_id, found.requested_by_id, found.performed_by_id,
                        *found.approvals.values_list("officer_id", flat=True)}  # fmt: skip
    assert len(people_who_acted) == 4


# --- hostile input --------------------------------------------------------------------

FUZZ = hypothesis_settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
hostile_text = st.one_of(
    st.text(max_size=300),
    st.text(max_size=50).map(lambda t: t + "\x00"),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zl", "Zp"]), max_size=30),
    st.integers(min_value=990, max_value=20_000).map(lambda n: "é" * n),
    st.sampled_from(["", " ", "\r\n", "modern", "compatible", "<script>x</script>"]),
)


@FUZZ
@given(reason=hostile_text, fmt=hostile_text)
def test_hostile_ask_forms_get_a_4xx_or_a_request_never_a_500(
    people, archived, settings, reason, fmt
):
    settings.PKIPORTAL_RECOVERY_ASKS_PER_DAY = 1000
    before = AuditEvent.objects.count()

    response = people["holder"].post(
        f"/certificates/{archived.certificate.pk}/recover/",
        {"reason": reason, "pkcs12_format": fmt},
    )

    if response.status_code == 302:
        found = KeyRecoveryRequest.objects.get()
        assert found.reason == reason.strip()
        assert found.pkcs12_format in ("modern", "compatible")
        found.delete()  # the next example starts with no recovery in progress
    else:
        assert response.status_code == 400, response.content[:300]
        assert not KeyRecoveryRequest.objects.exists()
        assert AuditEvent.objects.count() == before


@FUZZ
@given(note=hostile_text)
def test_hostile_acceptance_notes_get_a_4xx_or_an_acceptance_never_a_500(people, asked, note):
    before = snapshot(asked)

    response = people["officer"].post(f"/ra/recovery/{asked.pk}/accept/", {"note": note})

    if response.status_code == 302:
        asked.refresh_from_db()
        assert asked.acceptance_note == note.strip()
        KeyRecoveryRequest.objects.filter(pk=asked.pk).update(
            state=State.REQUESTED, requested_by=None, accepted_at=None, acceptance_note=""
        )
    else:
        assert response.status_code == 400, response.content[:300]
        assert snapshot(asked) == before


def test_a_step_refused_because_the_recovery_moved_on_says_why(people, asked, second_officer):
    """Oscar accepted it meanwhile; Olivia's page was older: she is told, nothing changes."""
    recovery.recovery_accept(recovery=asked, officer=second_officer, note=ACCEPT_NOTE)
    before = snapshot(asked)

    response = people["officer"].post(f"/ra/recovery/{asked.pk}/accept/", {"note": ACCEPT_NOTE})

    assert response.status_code == 400
    assert "no longer waiting to be accepted: it is waiting for approval" in (
        response.content.decode()
    )
    assert snapshot(asked) == before
