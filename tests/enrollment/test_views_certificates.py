"""/certificates/: my certificates, their downloads, renewal and revoking my own."""

from __future__ import annotations

from datetime import UTC, timedelta
from zoneinfo import ZoneInfo

import pytest

from cryptography.hazmat.primitives.serialization import Encoding

from django.test import Client
from django.utils import timezone

from enrollment import services
from enrollment.models import AuditEvent, Certificate, CertificateRequest
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.pkcs7 import format_fingerprint
from tests.conftest import client_for
from tests.enrollment.web import PASSWORD, enrol_with_portal_key
from tests.second_factor import verified_login

pytestmark = pytest.mark.django_db

DOWNLOADS = ["cer", "pem", "p7b", "chain"]


def issue_to(owner, template, slug: str = "smime-signing") -> Certificate:
    certificate, _bundle = services.certificate_issue_with_server_key(
        template=template(slug),
        owner=owner,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password=PASSWORD,
    )
    return certificate


@pytest.fixture
def mine(employee, template, hierarchy) -> Certificate:
    return issue_to(employee, template)


@pytest.fixture
def theirs(colleague, template, hierarchy) -> Certificate:
    return issue_to(colleague, template)


def cryptography_csr_pem(key) -> bytes:
    from tests.enrollment.tools import cryptography_csr

    return cryptography_csr(key).public_bytes(Encoding.PEM)


def revoke(
    client, certificate, reason: str = "keyCompromise", confirm: bool = True, since: str = ""
):
    data = {"reason": reason, "invalidity_date": since}
    if confirm:
        data["confirm"] = "on"
    return client.post(f"/certificates/{certificate.pk}/revoke/", data)


# --- the list -------------------------------------------------------------------------


def test_it_lists_my_certificates_with_both_fingerprints(employee_client, mine, theirs):
    response = employee_client.get("/certificates/")

    page = response.content.decode()
    assert response.status_code == 200
    assert list(response.context["certificates"]) == [mine]
    assert format_fingerprint(mine.fingerprint_sha256) in page
    assert format_fingerprint(mine.fingerprint_sha1) in page
    assert format_fingerprint(theirs.fingerprint_sha256) not in page
    assert "S/MIME Signing" in page
    assert "Valid" in page


def test_it_lists_my_open_requests(employee, employee_client, template, hierarchy):
    dual_use = template("smime-dual-use")
    dual_use.requires_approval = True
    dual_use.save()
    employee_client.post(
        "/enroll/smime-dual-use/", {"method": "server", "key_algorithm": "ec-p256"}
    )

    response = employee_client.get("/certificates/")

    request = CertificateRequest.objects.get(requester=employee)
    assert list(response.context["requests"]) == [request]
    assert "Waiting for approval" in response.content.decode()


def test_the_list_shows_revoked_and_expired_states(employee, mine, template, time_machine):
    services.certificate_revoke(certificate=mine, reason="superseded")
    time_machine.move_to(mine.not_after + timedelta(days=1))
    expired = issue_to(employee, template, "smime-dual-use")
    time_machine.move_to(expired.not_after + timedelta(days=1))

    response = client_for(employee).get("/certificates/")

    states = {cert.pk: cert.state for cert in response.context["certificates"]}
    assert states == {mine.pk: "revoked", expired.pk: "expired"}
    assert "Revoked" in response.content.decode()
    assert "Expired" in response.content.decode()


def test_the_list_needs_a_sign_in(anonymous_client, hierarchy):
    response = anonymous_client.get("/certificates/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


# --- the detail page and downloads ----------------------------------------------------


def test_the_owner_sees_the_certificate_and_its_downloads(employee_client, mine):
    response = employee_client.get(f"/certificates/{mine.pk}/")

    page = response.content.decode()
    assert response.status_code == 200
    assert mine.serial in page
    assert format_fingerprint(mine.fingerprint_sha1) in page
    for kind in DOWNLOADS:
        assert f"/certificates/{mine.pk}/download/{kind}/" in page
    assert response.context["can_renew"]
    assert response.context["can_revoke"]
    assert "PRIVATE KEY" not in page


def test_it_checks_ownership(colleague, mine):
    client = client_for(colleague)

    assert client.get(f"/certificates/{mine.pk}/").status_code == 404
    for kind in DOWNLOADS:
        assert client.get(f"/certificates/{mine.pk}/download/{kind}/").status_code == 404


def test_officers_may_view_any_certificate_but_not_act_on_it(officer_client, mine):
    response = officer_client.get(f"/certificates/{mine.pk}/")

    assert response.status_code == 200
    assert not response.context["can_renew"]
    assert not response.context["can_revoke"]
    assert officer_client.get(f"/certificates/{mine.pk}/download/cer/").status_code == 200


def test_officers_are_led_to_where_they_act_and_not_told_it_is_their_key(officer_client, mine):
    page = officer_client.get(f"/certificates/{mine.pk}/").content.decode()

    assert f'href="/ra/certificates/?q={mine.serial}"' in page
    assert "Your key is only in" not in page


def test_the_owner_sees_no_officer_actions(employee_client, mine):
    page = employee_client.get(f"/certificates/{mine.pk}/").content.decode()

    assert "RA officer actions" not in page
    assert "Your key is only in" in page


def test_an_archived_key_offers_its_holder_to_ask_for_it_and_officers_its_recovery(
    employee, employee_client, officer_client, template, kra
):
    archived = issue_to(employee, template, "smime-encryption")

    owner_page = employee_client.get(f"/certificates/{archived.pk}/").content.decode()
    assert 'href="#recover">ask for it back</a>' in owner_page
    assert f'action="/certificates/{archived.pk}/recover/"' in owner_page
    officer_page = officer_client.get(f"/certificates/{archived.pk}/").content.decode()
    assert f'href="/ra/recovery/new/?certificate={archived.pk}"' in officer_page


def test_anonymous_visitors_are_sent_to_sign_in(anonymous_client, mine):
    for path in (f"/certificates/{mine.pk}/", f"/certificates/{mine.pk}/download/cer/"):
        response = anonymous_client.get(path)

        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


def test_an_unknown_download_kind_is_a_404(employee_client, mine):
    assert employee_client.get(f"/certificates/{mine.pk}/download/key/").status_code == 404


def test_the_cer_download_is_der_that_openssl_reads(employee_client, mine, openssl):
    response = employee_client.get(f"/certificates/{mine.pk}/download/cer/")
    openssl.write("mine.cer", response.content)

    text = openssl.run("x509", "-inform", "DER", "-in", "mine.cer", "-noout", "-subject").stdout

    assert response["Content-Type"] == "application/pkix-cert"
    assert response["Content-Disposition"].startswith('attachment; filename="alice-andersson-')
    assert b"Alice Andersson" in text
    assert response.content == bytes(mine.der)


def test_the_pem_download_is_the_certificate(employee_client, mine):
    response = employee_client.get(f"/certificates/{mine.pk}/download/pem/")

    assert response["Content-Type"] == "application/x-pem-file"
    assert response.content == mine.certificate.public_bytes(Encoding.PEM)


def test_the_p7b_holds_the_whole_chain(employee_client, mine, hierarchy, openssl):
    response = employee_client.get(f"/certificates/{mine.pk}/download/p7b/")
    openssl.write("chain.p7b", response.content)

    text = openssl.run(
        "pkcs7", "-inform", "DER", "-in", "chain.p7b", "-print_certs", "-noout"
    ).stdout.decode()

    assert response["Content-Type"] == "application/pkcs7-mime"
    assert text.count("subject=") == 3
    assert "Alice Andersson" in text
    assert "Test Issuing CA" in text
    assert "Test Root CA" in text


def test_the_chain_pem_verifies_against_the_root(employee_client, mine, hierarchy, openssl):
    response = employee_client.get(f"/certificates/{mine.pk}/download/chain/")
    openssl.write("chain.pem", response.content)
    openssl.write_pem("root.pem", hierarchy.root.certificate)
    openssl.write_pem("leaf.pem", mine.certificate)

    result = openssl.run(
        "verify", "-CAfile", "root.pem", "-untrusted", "chain.pem", "-purpose", "smimesign",
        "leaf.pem",
    )  # fmt: skip

    assert response.content.count(b"BEGIN CERTIFICATE") == 3
    assert b"leaf.pem: OK" in result.stdout


def test_no_page_offers_a_private_key(employee_client, mine):
    for path in ["/certificates/", f"/certificates/{mine.pk}/"] + [
        f"/certificates/{mine.pk}/download/{kind}/" for kind in DOWNLOADS
    ]:
        response = employee_client.get(path)

        assert b"PRIVATE KEY" not in response.content
        assert response["Content-Type"] != "application/x-pkcs12"


# --- where the key is: next steps by how it was asked for -----------------------------


def next_steps(page: str) -> str:
    return page.split('id="key-next-steps"')[1].split("</section>")[0]


def test_a_csrs_page_says_how_to_put_the_certificate_next_to_the_key(
    employee, employee_client, hierarchy, ec_p256_key
):
    from tests.enrollment.tools import cryptography_csr
    from tests.enrollment.web import enrol_with_csr

    response = enrol_with_csr(
        employee_client, csr=cryptography_csr(ec_p256_key).public_bytes(Encoding.PEM)
    )
    certificate = Certificate.objects.get(owner=employee)
    stem = f"alice-andersson-{certificate.serial[:12]}"

    steps = next_steps(employee_client.get(response["Location"]).content.decode())

    assert "stayed where you made the certificate request" in steps
    assert f"openssl pkcs12 -export -inkey key.pem -in {stem}-chain.pem -out me.p12" in steps
    assert f"certreq -accept {stem}.cer" in steps
    assert f"gpgsm --import {stem}-chain.pem" in steps
    assert ".p12 file you downloaded" not in steps
    # The file names it gives are the downloads' names.
    for kind, suffix in (("chain", "-chain.pem"), ("cer", ".cer")):
        download = employee_client.get(f"/certificates/{certificate.pk}/download/{kind}/")
        assert download["Content-Disposition"] == f'attachment; filename="{stem}{suffix}"'


def test_a_csr_sent_by_est_names_the_est_client(
    employee, employee_client, template, hierarchy, ec_p256_key
):
    made = services.request_submit(
        requester=employee,
        template=template("smime-signing"),
        csr=cryptography_csr_pem(ec_p256_key),
        channel="est",
    )

    steps = next_steps(
        employee_client.get(f"/certificates/{made.certificate_id}/").content.decode()
    )

    assert "(your EST client)" in steps
    assert "certreq -accept" in steps


def test_a_portal_keys_page_says_the_key_is_in_the_p12_downloaded_once(
    employee, employee_client, hierarchy
):
    enrol_with_portal_key(employee_client)
    certificate = Certificate.objects.get(owner=employee)

    steps = next_steps(employee_client.get(f"/certificates/{certificate.pk}/").content.decode())

    assert "once, in the .p12 file you downloaded" in " ".join(steps.split())
    assert '<a href="/help/mail-clients/">' in steps
    assert "Lost the file?" in steps
    assert "openssl pkcs12" not in steps
    assert "certreq" not in steps


def test_an_archived_portal_keys_page_offers_to_ask_for_it_back(
    employee, employee_client, hierarchy, kra
):
    enrol_with_portal_key(employee_client, "smime-encryption")
    certificate = Certificate.objects.get(owner=employee)

    steps = next_steps(employee_client.get(f"/certificates/{certificate.pk}/").content.decode())

    assert 'href="#recover">ask for it back</a>' in steps
    assert "Lost the file?" not in steps


def test_officers_are_not_given_the_holders_next_steps(employee, officer_client, hierarchy):
    enrol_with_portal_key(client_for(employee))
    certificate = Certificate.objects.get(owner=employee)

    page = officer_client.get(f"/certificates/{certificate.pk}/").content.decode()

    assert "key-next-steps" not in page
    assert "it is only with Alice Andersson" in page


# --- renewal --------------------------------------------------------------------------


def test_renewal_leads_to_the_enrolment_form_for_the_same_template(employee_client, mine):
    response = employee_client.post(f"/certificates/{mine.pk}/renew/")

    assert response.status_code == 302
    assert response["Location"] == f"/enroll/smime-signing/?renew={mine.pk}"
    page = employee_client.get(response["Location"])
    assert page.context["renewal"] == mine
    assert page.context["key_form"]["renewal_of"].value() == mine.pk
    assert "revoked as <em>superseded</em>" in page.content.decode()


def test_renewal_supersedes_the_old_certificate(employee, employee_client, mine):
    response = enrol_with_portal_key(employee_client, renewal_of=mine.pk)

    assert response["Content-Type"] == "application/x-pkcs12"
    mine.refresh_from_db()
    new = Certificate.objects.exclude(pk=mine.pk).get(owner=employee)
    assert mine.status == Certificate.Status.REVOKED
    assert mine.revocation_reason == "superseded"
    assert new.request.renewal_of == mine
    page = employee_client.get(f"/certificates/{mine.pk}/").content.decode()
    assert f"/certificates/{new.pk}/" in page


def test_renewal_by_csr_supersedes_too(employee, employee_client, mine, ec_p256_key):
    from tests.enrollment.tools import cryptography_csr
    from tests.enrollment.web import enrol_with_csr

    response = enrol_with_csr(
        employee_client,
        csr=cryptography_csr(ec_p256_key).public_bytes(Encoding.PEM),
        renewal_of=mine.pk,
    )

    assert response.status_code == 302
    mine.refresh_from_db()
    assert mine.revocation_reason == "superseded"


def test_it_checks_ownership_of_renewal(colleague, officer_client, mine):
    assert client_for(colleague).post(f"/certificates/{mine.pk}/renew/").status_code == 404
    assert officer_client.post(f"/certificates/{mine.pk}/renew/").status_code == 403
    # Nor can the enrolment form be pointed at someone else's certificate.
    response = enrol_with_portal_key(client_for(colleague), renewal_of=mine.pk)
    assert response.status_code == 404
    assert client_for(colleague).get(f"/enroll/smime-signing/?renew={mine.pk}").status_code == 404
    mine.refresh_from_db()
    assert mine.status == Certificate.Status.VALID
    assert Certificate.objects.count() == 1


def test_renewal_for_another_template_is_refused(employee_client, mine):
    response = enrol_with_portal_key(employee_client, "smime-dual-use", renewal_of=mine.pk)

    assert response.status_code == 400
    assert "A renewal uses the same template." in response.content.decode()
    mine.refresh_from_db()
    assert mine.status == Certificate.Status.VALID


def test_renewal_needs_a_post_and_a_sign_in(employee_client, anonymous_client, mine):
    assert employee_client.get(f"/certificates/{mine.pk}/renew/").status_code == 405
    response = anonymous_client.post(f"/certificates/{mine.pk}/renew/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


# --- revoking -------------------------------------------------------------------------


def test_i_can_revoke_my_own_certificate(employee_client, mine, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = revoke(employee_client, mine, "keyCompromise")

    assert response.status_code == 302
    mine.refresh_from_db()
    assert mine.status == Certificate.Status.REVOKED
    assert mine.revocation_reason == "keyCompromise"
    assert AuditEvent.objects.filter(action="certificate.revoke", object_id=str(mine.pk)).exists()
    # The CRL published after the commit lists it.
    crl = mine.ca.latest_crl().crl
    assert crl.get_revoked_certificate_by_serial_number(int(mine.serial, 16)) is not None
    assert "is revoked" in employee_client.get(response["Location"]).content.decode()


def test_i_can_say_since_when_my_key_may_be_exposed_and_the_crl_says_so(
    employee_client, mine, settings, openssl, django_capture_on_commit_callbacks
):
    settings.TIME_ZONE = "Europe/Berlin"  # the form's times are the portal's zone
    page = employee_client.get(f"/certificates/{mine.pk}/").content.decode()
    assert 'type="datetime-local"' in page
    since = timezone.localtime(mine.not_before, ZoneInfo("Europe/Berlin")) - timedelta(hours=2)

    with django_capture_on_commit_callbacks(execute=True):
        response = revoke(employee_client, mine, since=since.strftime("%Y-%m-%dT%H:%M"))

    assert response.status_code == 302
    mine.refresh_from_db()
    assert mine.invalidity_date == since.replace(second=0, microsecond=0)
    der = openssl.write("issuing.crl", mine.ca.latest_crl().der)
    text = openssl.run("crl", "-inform", "DER", "-in", der, "-noout", "-text").stdout.decode()
    utc = mine.invalidity_date.astimezone(UTC)
    assert "Invalidity Date" in text
    assert utc.strftime("%b %e %H:%M:00 %Y GMT") in text


@pytest.mark.parametrize(
    ("since", "message"),
    [
        ("next week", "Give a date and time"),
        ("2999-01-01T00:00", "cannot be in the future"),
        ("1990-01-01T00:00", "days before"),
    ],
)
def test_an_impossible_invalidity_date_is_refused_beside_the_field(
    employee_client, mine, since, message
):
    response = revoke(employee_client, mine, since=since)

    assert response.status_code == 400
    assert message in str(response.context["revoke_form"].errors["invalidity_date"])
    mine.refresh_from_db()
    assert mine.status == Certificate.Status.VALID


@pytest.mark.parametrize("reason", ["affiliationChanged", "superseded", "cessationOfOperation"])
def test_a_date_the_key_left_my_hands_is_refused_with_another_reason(employee_client, mine, reason):
    """Without JavaScript the date field stays on the page: a date with another reason would
    be published on every CRL as if the key had leaked, so it is refused, not dropped."""
    since = timezone.localtime(mine.not_before).strftime("%Y-%m-%dT%H:%M")

    response = revoke(employee_client, mine, reason, since=since)

    assert response.status_code == 400
    errors = str(response.context["revoke_form"].errors["invalidity_date"])
    assert "Only a key compromise has a date" in errors
    mine.refresh_from_db()
    assert (mine.status, mine.invalidity_date) == (Certificate.Status.VALID, None)
    # Shown with its error even where the page's script would hide the field.
    page = response.content.decode()
    assert "data-only-for-reason" not in page
    assert "Only a key compromise has a date" in page


def test_the_date_field_is_for_key_compromise_and_names_its_time_zone(
    employee_client, mine, settings
):
    page = employee_client.get(f"/certificates/{mine.pk}/").content.decode()
    settings.TIME_ZONE = "Europe/Berlin"
    berlin = employee_client.get(f"/certificates/{mine.pk}/").content.decode()

    field = page.split('data-only-for-reason="keyCompromise"')[1].split('<label class="check">')[0]
    assert 'name="invalidity_date"' in field
    assert "other hands? (optional, UTC)" in field
    assert "A date and time in UTC, the portal's time zone." in field
    assert "/static/js/revoke.js" in page
    assert "other hands? (optional, Europe/Berlin)" in berlin


@pytest.mark.parametrize(
    "reason", ["keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation"]
)
def test_the_four_subscriber_reasons_are_accepted(employee_client, mine, reason):
    assert revoke(employee_client, mine, reason).status_code == 302
    mine.refresh_from_db()
    assert mine.revocation_reason == reason


@pytest.mark.parametrize("reason", ["cACompromise", "privilegeWithdrawn", "certificateHold", ""])
def test_other_reasons_are_not_mine_to_give(employee_client, mine, reason):
    response = revoke(employee_client, mine, reason)

    assert response.status_code == 400
    mine.refresh_from_db()
    assert mine.status == Certificate.Status.VALID


def test_revoking_needs_a_confirmation(employee_client, mine):
    response = revoke(employee_client, mine, confirm=False)

    assert response.status_code == 400
    mine.refresh_from_db()
    assert mine.status == Certificate.Status.VALID


def test_revoking_twice_says_it_is_revoked_already(employee_client, mine):
    revoke(employee_client, mine)

    response = revoke(employee_client, mine)

    assert response.status_code == 400
    assert "already revoked" in response.content.decode()


def test_i_cannot_revoke_a_colleagues_certificate(employee_client, officer_client, theirs):
    assert revoke(employee_client, theirs).status_code == 404
    assert revoke(officer_client, theirs).status_code == 403
    theirs.refresh_from_db()
    assert theirs.status == Certificate.Status.VALID


def test_anonymous_visitors_cannot_revoke(anonymous_client, mine):
    response = revoke(anonymous_client, mine)

    assert response.status_code == 302
    mine.refresh_from_db()
    assert mine.status == Certificate.Status.VALID


def test_revoking_is_csrf_protected(employee, mine):
    client = Client(enforce_csrf_checks=True)
    verified_login(client, employee)

    assert revoke(client, mine).status_code == 403
    mine.refresh_from_db()
    assert mine.status == Certificate.Status.VALID
