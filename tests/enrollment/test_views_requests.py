"""Approval: requests wait for an RA officer at /ra/requests/; the requester downloads after."""

from __future__ import annotations

import re

import pytest

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from django.core import mail

from enrollment.models import AuditEvent, Certificate, CertificateRequest
from enrollment.x509 import pkcs12
from tests.conftest import client_for
from tests.enrollment.tools import CLAIMED_EMAIL, cryptography_csr
from tests.enrollment.web import PASSWORD, enrol_with_csr
from tests.factories import UserFactory
from tests.second_factor import verified_login

pytestmark = pytest.mark.django_db

COLLECT = {
    "pkcs12_password": PASSWORD,
    "pkcs12_password_confirm": PASSWORD,
    "pkcs12_format": "modern",
}


@pytest.fixture
def needs_approval(approval):
    return approval("smime-dual-use")


@pytest.fixture
def pending(needs_approval, employee, employee_client, hierarchy) -> CertificateRequest:
    """Alice asked for a portal-generated dual-use key; an officer must approve it."""
    response = employee_client.post(
        "/enroll/smime-dual-use/", {"method": "server", "key_algorithm": "ec-p256"}
    )
    request = CertificateRequest.objects.get(requester=employee)
    assert response.status_code == 302
    assert response["Location"] == f"/enroll/requests/{request.pk}/"
    return request


def decide(client, request, decision: str, reason: str = ""):
    return client.post(
        f"/ra/requests/{request.pk}/decide/", {"decision": decision, "reason": reason}
    )


# --- the request page ------------------------------------------------------------------


def test_an_approval_template_asks_no_password_up_front(needs_approval, employee_client, hierarchy):
    form = employee_client.get("/enroll/smime-dual-use/").context["key_form"]

    assert "pkcs12_password" not in form.fields
    assert not Certificate.objects.exists()


def test_the_requester_sees_the_pending_request(pending, employee_client):
    response = employee_client.get(f"/enroll/requests/{pending.pk}/")

    page = response.content.decode()
    assert response.status_code == 200
    assert "Waiting for approval" in page
    assert response.context["form"] is None
    assert not Certificate.objects.exists()


def test_it_checks_ownership_of_the_request_page(pending, colleague):
    response = client_for(colleague).get(f"/enroll/requests/{pending.pk}/")

    assert response.status_code == 404


def test_officers_see_the_request_read_only(pending, officer_client):
    response = officer_client.get(f"/enroll/requests/{pending.pk}/")

    assert response.status_code == 200
    assert response.context["form"] is None
    assert "only Alice Andersson can download" in response.content.decode()


def test_anonymous_visitors_are_sent_to_sign_in(pending, anonymous_client):
    response = anonymous_client.get(f"/enroll/requests/{pending.pk}/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_an_unknown_request_is_a_404(employee_client, hierarchy):
    assert employee_client.get("/enroll/requests/999999/").status_code == 404


# --- the officers' list ----------------------------------------------------------------


def test_officers_see_pending_requests_with_what_they_asked_for(
    needs_approval, employee, employee_client, officer_client, hierarchy, ec_p256_key
):
    enrol_with_csr(
        employee_client,
        "smime-dual-use",
        csr=cryptography_csr(ec_p256_key).public_bytes(Encoding.PEM),
    )

    response = officer_client.get("/ra/requests/")

    page = response.content.decode()
    assert response.status_code == 200
    assert "Alice Andersson" in page
    assert "S/MIME Dual-use" in page
    assert CLAIMED_EMAIL in page  # what the CSR asked for …
    assert "Gets: Alice Andersson, alice@example.com" in page  # … next to what it will get


def matching_csr(key):
    """A CSR that asks for exactly what Alice's account gives: her name and address."""
    from cryptography.hazmat.primitives import hashes

    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Alice Andersson")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name("alice@example.com")]), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def row_of(page: str, request) -> str:
    return page.split(f'id="request-{request.pk}"')[1].split("</tr>")[0]


def test_a_csr_row_says_the_keys_type_and_size(
    needs_approval, employee, employee_client, officer_client, hierarchy, rsa_2048_key
):
    enrol_with_csr(
        employee_client,
        "smime-dual-use",
        csr=cryptography_csr(rsa_2048_key).public_bytes(Encoding.PEM),
    )
    request = CertificateRequest.objects.get(requester=employee)

    row = row_of(officer_client.get("/ra/requests/").content.decode(), request)
    detail = officer_client.get(f"/enroll/requests/{request.pk}/").content.decode()

    assert f'The requester\'s own key (CSR), <span id="csr-key-{request.pk}">RSA 2048</span>' in row
    assert "<dd>Your own key (CSR), RSA 2048</dd>" in detail


def test_a_row_says_whether_the_requester_already_holds_one_of_the_template(
    pending, needs_approval, employee, colleague, officer_client, ec_p384_key
):
    from enrollment import services

    page = officer_client.get("/ra/requests/").content.decode()
    assert "holds no valid S/MIME Dual-use certificate yet" in row_of(page, pending)

    held = services.certificate_issue(
        template=needs_approval, owner=employee, public_key=ec_p384_key.public_key()
    )
    page = officer_client.get("/ra/requests/").content.decode()

    row = row_of(page, pending)
    assert "already holds a valid one: serial" in row
    assert f"<code>{held.serial[:12]}…</code>, until {held.not_after:%Y-%m-%d}" in row


def test_the_certificate_a_renewal_replaces_is_not_counted_as_another(
    needs_approval, employee, officer_client, hierarchy, ec_p384_key
):
    from enrollment import services
    from enrollment.x509.keys import KeyAlgorithm

    held = services.certificate_issue(
        template=needs_approval, owner=employee, public_key=ec_p384_key.public_key()
    )
    renewal = services.request_submit(
        requester=employee,
        template=needs_approval,
        key_algorithm=KeyAlgorithm.EC_P256,
        renewal_of=held,
        channel="web",
    )

    row = row_of(officer_client.get("/ra/requests/").content.decode(), renewal)

    assert "renewal" in row
    assert "no other valid S/MIME Dual-use certificate" in row
    assert "already holds" not in row


def test_an_empty_recently_decided_list_has_no_heading(pending, officer_client):
    empty = officer_client.get("/ra/requests/").content.decode()
    decide(officer_client, pending, "reject", "Use the signing template instead")
    decided = officer_client.get("/ra/requests/").content.decode()

    assert "Recently decided" not in empty
    assert 'href="/ra/requests/history/"' in empty
    assert "<h2>Recently decided</h2>" in decided


def test_a_matching_csr_is_not_said_to_be_issued_for_other_names(
    needs_approval, employee, employee_client, officer_client, hierarchy, ec_p256_key, rsa_2048_key
):
    enrol_with_csr(
        employee_client,
        "smime-dual-use",
        csr=matching_csr(ec_p256_key).public_bytes(Encoding.PEM),
    )
    enrol_with_csr(
        employee_client,
        "smime-dual-use",
        csr=cryptography_csr(rsa_2048_key).public_bytes(Encoding.PEM),
    )
    matching, claiming = CertificateRequest.objects.filter(requester=employee).order_by("pk")

    same = officer_client.get(f"/enroll/requests/{matching.pk}/").content.decode()
    other = officer_client.get(f"/enroll/requests/{claiming.pk}/").content.decode()
    decide(officer_client, matching, "approve")
    issued = officer_client.get(f"/enroll/requests/{matching.pk}/").content.decode()

    assert "The CSR asked for" in same
    assert "issued for the account's name and address instead" not in same
    assert "issued for the account's name and address instead" in other
    assert "issued for the account's name and address instead" not in issued


def test_a_rejected_requests_page_leads_back_to_enrolment(pending, officer_client, employee_client):
    decide(officer_client, pending, "reject", "Use the signing template instead")

    mine = employee_client.get(f"/enroll/requests/{pending.pk}/").content.decode()
    officers = officer_client.get(f"/enroll/requests/{pending.pk}/").content.decode()

    again = mine.split('id="again"')[1].split("</p>")[0]
    assert '<a href="/enroll/">Get a certificate</a>' in again
    assert 'id="again"' not in officers


def test_employees_may_not_see_the_ra_page(employee_client, hierarchy):
    assert employee_client.get("/ra/requests/").status_code == 403


def test_anonymous_visitors_are_sent_to_sign_in_from_the_ra_page(anonymous_client, hierarchy):
    response = anonymous_client.get("/ra/requests/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_the_requests_page_carries_the_ra_pages_navigation(officer_client):
    """Like every other RA page: the way back to the console, recoveries and the audit."""
    page = officer_client.get("/ra/requests/").content.decode()

    assert 'aria-label="RA pages"' in page
    assert 'href="/ra/requests/" aria-current="page"' in page
    assert 'href="/ra/audit/"' in page


def test_the_navigation_shows_ra_requests_to_officers_only(
    officer_client, employee_client, hierarchy
):
    assert "/ra/requests/" in officer_client.get("/").content.decode()
    assert "/ra/requests/" not in employee_client.get("/").content.decode()


# --- deciding -------------------------------------------------------------------------


def test_the_whole_approval_flow(
    pending, officer, officer_client, employee_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = decide(officer_client, pending, "approve", "Finance needs encrypted mail")

    assert response.status_code == 302
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.APPROVED
    assert pending.decided_by == officer
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["alice@example.com"]
    assert "approved" in mail.outbox[0].subject
    assert f"/enroll/requests/{pending.pk}/" in mail.outbox[0].body

    page = employee_client.get(f"/enroll/requests/{pending.pk}/")
    assert page.context["form"] is not None
    assert "Finance needs encrypted mail" in page.content.decode()

    download = employee_client.post(f"/enroll/requests/{pending.pk}/", COLLECT)

    assert download.status_code == 200
    assert download["Content-Type"] == "application/x-pkcs12"
    _key, certificate, _chain = pkcs12.load_pkcs12(download.content, PASSWORD)
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.ISSUED
    assert pending.certificate.certificate == certificate
    assert AuditEvent.objects.filter(action="request.approve").exists()
    assert AuditEvent.objects.filter(action="pkcs12.download").exists()


def test_a_weak_password_at_collection_changes_nothing(pending, officer_client, employee_client):
    decide(officer_client, pending, "approve")

    response = employee_client.post(
        f"/enroll/requests/{pending.pk}/",
        {"pkcs12_password": "short", "pkcs12_password_confirm": "short"},
    )

    assert response.status_code == 400
    pending.refresh_from_db()
    assert pending.awaits_download
    assert not Certificate.objects.exists()


def test_an_officer_cannot_download_someone_elses_approved_request(
    pending, officer_client, officer
):
    decide(officer_client, pending, "approve")
    other_officer = UserFactory(username="oscar")
    other_officer.groups.add(*officer.groups.all())

    for client in (officer_client, client_for(other_officer)):
        response = client.post(f"/enroll/requests/{pending.pk}/", COLLECT)

        assert response.status_code == 403
    assert not Certificate.objects.exists()


def test_a_colleague_cannot_download_an_approved_request(pending, officer_client, colleague):
    decide(officer_client, pending, "approve")

    response = client_for(colleague).post(f"/enroll/requests/{pending.pk}/", COLLECT)

    assert response.status_code == 404
    assert not Certificate.objects.exists()


def test_a_rejection_needs_a_reason(pending, officer_client):
    response = decide(officer_client, pending, "reject", "   ")

    assert response.status_code == 400
    assert "Say why the request is rejected." in response.content.decode()
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.PENDING


def test_the_missing_reason_is_tied_to_its_field_for_screen_readers(pending, officer_client):
    page = decide(officer_client, pending, "reject", "").content.decode()

    (field,) = re.findall(rf'<input id="reason-{pending.pk}"[^>]*>', page)
    assert f'aria-describedby="decide-errors-{pending.pk}"' in field
    assert 'aria-invalid="true"' in field
    assert f'<div id="decide-errors-{pending.pk}"><p class="error" role="alert">Say why' in page


def test_the_refused_decision_s_reason_is_focused_where_a_phone_shows_it(
    pending, officer_client, employee_client
):
    """On a phone the request's card may be far down the queue: its reason field is
    autofocused, so the browser scrolls to it and its error. No other field is."""
    employee_client.post(
        "/enroll/smime-dual-use/", {"method": "server", "key_algorithm": "ec-p256"}
    )

    page = decide(officer_client, pending, "reject", "").content.decode()

    (focused,) = re.findall(r"<input[^>]*autofocus[^>]*>", page)
    assert f'id="reason-{pending.pk}"' in focused
    assert "autofocus" not in officer_client.get("/ra/requests/").content.decode()


def test_a_rejection_with_a_reason_is_mailed_and_shown(
    pending, officer_client, employee_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        decide(officer_client, pending, "reject", "Use the signing template instead")

    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.REJECTED
    assert "rejected" in mail.outbox[0].subject
    assert "Use the signing template instead" in mail.outbox[0].body
    page = employee_client.get(f"/enroll/requests/{pending.pk}/").content.decode()
    assert "Use the signing template instead" in page
    assert employee_client.post(f"/enroll/requests/{pending.pk}/", COLLECT).status_code == 400
    assert not Certificate.objects.exists()


def test_an_officer_cannot_approve_their_own_request(
    needs_approval, officer, officer_client, hierarchy
):
    officer_client.post("/enroll/smime-dual-use/", {"method": "server", "key_algorithm": "ec-p256"})
    own = CertificateRequest.objects.get(requester=officer)

    listing = officer_client.get("/ra/requests/").content.decode()
    response = decide(officer_client, own, "approve")

    assert "Your own request: another officer decides." in listing
    assert response.status_code == 403
    assert "You cannot decide on your own request." in response.content.decode()
    own.refresh_from_db()
    assert own.state == CertificateRequest.State.PENDING


def test_employees_may_not_decide(pending, employee_client, colleague):
    for client in (employee_client, client_for(colleague)):
        assert decide(client, pending, "approve").status_code == 403
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.PENDING


def test_anonymous_visitors_may_not_decide(pending, anonymous_client):
    response = decide(anonymous_client, pending, "approve")

    assert response.status_code == 302
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.PENDING


def test_deciding_twice_says_it_is_already_decided(pending, officer_client):
    decide(officer_client, pending, "approve")

    response = decide(officer_client, pending, "reject", "changed my mind")

    assert response.status_code == 400
    assert f"Request #{pending.pk}: This request is already approved" in (response.content.decode())
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.APPROVED


def test_deciding_takes_a_post(pending, officer_client):
    assert officer_client.get(f"/ra/requests/{pending.pk}/decide/").status_code == 405


def test_an_approved_csr_request_is_issued_at_once(
    needs_approval, employee, employee_client, officer_client, hierarchy, ec_p256_key
):
    enrol_with_csr(
        employee_client,
        "smime-dual-use",
        csr=cryptography_csr(ec_p256_key).public_bytes(Encoding.PEM),
    )
    request = CertificateRequest.objects.get(requester=employee)
    assert request.state == CertificateRequest.State.PENDING

    decide(officer_client, request, "approve")

    request.refresh_from_db()
    assert request.state == CertificateRequest.State.ISSUED
    assert request.certificate.owner == employee
    # The CSR claimed Mallory's name and address: the certificate names the account.
    issued = request.certificate.certificate
    assert issued.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "Alice Andersson"
    )
    san = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["alice@example.com"]
    assert CLAIMED_EMAIL not in request.certificate.subject


def test_deciding_is_csrf_protected(pending, officer):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    verified_login(client, officer)

    assert decide(client, pending, "approve").status_code == 403
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.PENDING


def test_collecting_is_csrf_protected(pending, officer_client, employee):
    from django.test import Client

    decide(officer_client, pending, "approve")
    client = Client(enforce_csrf_checks=True)
    verified_login(client, employee)

    assert client.post(f"/enroll/requests/{pending.pk}/", COLLECT).status_code == 403
    assert not Certificate.objects.exists()


# --- withdrawing ----------------------------------------------------------------------

WITHDRAW = {"confirm": "on"}


def withdraw(client, request, data=WITHDRAW):
    return client.post(f"/enroll/requests/{request.pk}/withdraw/", data)


def withdraw_action(request) -> str:
    return f'action="/enroll/requests/{request.pk}/withdraw/"'


def withdraw_form_in(page: str, request) -> str:
    """The page's withdrawal form for one request, or "" when it offers none."""
    found = re.search(rf"<form method=\"post\" {withdraw_action(request)}.*?</form>", page, re.S)
    return found.group(0) if found else ""


def test_the_requester_withdraws_a_pending_request_from_its_page(
    pending, employee, employee_client, officer_client
):
    page = employee_client.get(f"/enroll/requests/{pending.pk}/").content.decode()
    assert withdraw_action(pending) in page
    assert "Withdraw this request" in page
    assert "cannot be reopened" in page  # the tick's label

    response = withdraw(employee_client, pending)

    assert response.status_code == 302
    assert response["Location"] == f"/enroll/requests/{pending.pk}/"
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.WITHDRAWN
    event = AuditEvent.objects.get(action="request.withdraw")
    assert (event.actor, event.source_address) == (employee, "127.0.0.1")
    after = employee_client.get(response["Location"]).content.decode()
    assert f"You withdrew request #{pending.pk} for S/MIME Dual-use." in after
    assert "Withdrawn" in after
    assert withdraw_action(pending) not in after
    queue = officer_client.get("/ra/requests/")
    assert queue.context["pending"] == []
    assert "No request is waiting." in queue.content.decode()
    assert officer_client.get("/").context["pending_count"] == 0


def test_withdrawing_needs_the_tick(pending, employee_client):
    response = withdraw(employee_client, pending, {})

    assert response.status_code == 400
    page = response.content.decode()
    assert "Tick the box to confirm." in page
    assert re.search(r'<details class="card" id="withdraw" open[ >]', page)
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.PENDING
    assert not AuditEvent.objects.filter(action="request.withdraw").exists()


def test_an_approved_request_is_withdrawn_before_its_download(
    pending, officer_client, employee_client
):
    decide(officer_client, pending, "approve")
    refused = withdraw(employee_client, pending, {})
    assert refused.context["form"] is not None  # the download stays on offer beside the error

    response = withdraw(employee_client, pending)

    assert response.status_code == 302
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.WITHDRAWN
    page = employee_client.get(f"/enroll/requests/{pending.pk}/")
    assert page.context["form"] is None
    assert employee_client.post(f"/enroll/requests/{pending.pk}/", COLLECT).status_code == 400
    assert not Certificate.objects.exists()


def test_a_request_no_longer_open_is_not_withdrawn_and_the_page_says_why(
    pending, officer_client, employee_client
):
    page = employee_client.get(f"/enroll/requests/{pending.pk}/")  # the form is on offer …
    assert page.context["can_withdraw"]
    decide(officer_client, pending, "reject", "Use the signing template")  # … then this

    response = withdraw(employee_client, pending)

    assert response.status_code == 400
    assert "This request is already rejected: there is nothing to withdraw." in (
        response.content.decode()
    )
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.REJECTED


def test_an_officer_sees_the_request_was_withdrawn_and_cannot_decide_it(
    pending, employee_client, officer_client
):
    withdraw(employee_client, pending)

    page = officer_client.get(f"/enroll/requests/{pending.pk}/").content.decode()
    response = decide(officer_client, pending, "approve")

    assert "Alice Andersson withdrew this request on" in page
    assert "there is nothing to decide" in page
    assert withdraw_action(pending) not in page
    assert response.status_code == 400
    assert f"Request #{pending.pk}: This request is already withdrawn." in (
        response.content.decode()
    )
    pending.refresh_from_db()
    assert (pending.state, pending.decided_by) == (CertificateRequest.State.WITHDRAWN, None)


def test_an_officer_may_not_withdraw_someone_elses_request_and_is_not_offered_to(
    pending, officer, officer_client
):
    other_officer = UserFactory(username="oscar")
    other_officer.groups.add(*officer.groups.all())
    page = officer_client.get(f"/enroll/requests/{pending.pk}/").content.decode()

    for client in (officer_client, client_for(other_officer)):
        assert withdraw(client, pending).status_code == 403

    assert withdraw_action(pending) not in page
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.PENDING


def test_a_colleague_may_not_withdraw_a_request(pending, colleague):
    assert withdraw(client_for(colleague), pending).status_code == 404
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.PENDING


def test_anonymous_visitors_may_not_withdraw_a_request(pending, anonymous_client):
    response = withdraw(anonymous_client, pending)

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.PENDING


def test_withdrawing_takes_a_post(pending, employee_client):
    assert employee_client.get(f"/enroll/requests/{pending.pk}/withdraw/").status_code == 405


def test_withdrawing_is_csrf_protected(pending, employee):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    verified_login(client, employee)

    assert withdraw(client, pending).status_code == 403
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.PENDING


def test_withdrawing_an_unknown_request_is_a_404(employee_client, hierarchy):
    assert employee_client.post("/enroll/requests/999999/withdraw/", WITHDRAW).status_code == 404


def test_my_certificates_and_the_home_page_offer_to_withdraw_open_requests_only(
    pending, employee, employee_client, officer_client
):
    rejected = CertificateRequest.objects.create(
        requester=employee, template=pending.template, key_source="server",
        key_algorithm="ec-p256", state=CertificateRequest.State.REJECTED,
    )  # fmt: skip

    for path in ("/certificates/", "/"):
        page = employee_client.get(path).content.decode()
        form = withdraw_form_in(page, pending)
        assert 'name="csrfmiddlewaretoken"' in form, path
        assert f'id="withdraw-{pending.pk}-confirm"' in form  # a list: ids per request
        assert "Withdraw this request</button>" in form
        assert not withdraw_form_in(page, rejected), path

    response = withdraw(employee_client, pending)
    assert response.status_code == 302
    listing = employee_client.get("/certificates/").content.decode()
    assert withdraw_action(pending) not in listing
    assert '<span class="badge state-withdrawn">Withdrawn</span>' in listing
    assert withdraw_action(pending) not in employee_client.get("/").content.decode()
