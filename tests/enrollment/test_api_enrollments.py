"""POST/GET /api/v1/enrollments/: both kinds of enrolment, approval, who may and may not."""

from __future__ import annotations

import base64
import secrets
from urllib.parse import urlencode

import pytest

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from django.contrib.auth.models import Group
from django.db import connection

from enrollment import services
from enrollment.models import ArchivedKey, AuditEvent, Certificate, CertificateRequest
from enrollment.x509 import pkcs12
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for
from tests.enrollment.api_tools import (
    ENROLLMENTS,
    PASSWORD,
    PENDING,
    csr_base64_der,
    csr_body,
    csr_pem,
    enrollment_url,
    request_url,
    server_key_body,
    session_client,
    stored_counts,
    token_client,
)
from tests.enrollment.tools import (
    CLAIMED_EMAIL,
    CLAIMED_NAME,
    EC_P256,
    csr_with_a_bad_signature,
    error_report,
    openssl_csr,
    row_counts,
)

pytestmark = pytest.mark.django_db


def load_pem(text: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(text.encode("ascii"))


def rfc822_names(certificate: x509.Certificate) -> list[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.RFC822Name)


# --- from a CSR -----------------------------------------------------------------------


@pytest.mark.parametrize("way", ["as it comes", "the locked way"])
def test_a_csr_from_openssl_for_someone_else_yields_a_certificate_in_my_own_name(
    hierarchy, employee, openssl, monkeypatch, way
):
    if way == "the locked way":  # on PostgreSQL the unlocked way issues unless it declines
        monkeypatch.setattr(services, "_csr_issued_unlocked", lambda **kwargs: (None, None))
    csr = openssl_csr(openssl, "mallory", *EC_P256).read_text()

    response = token_client(employee).post(
        ENROLLMENTS, {"template": "smime-signing", "csr": csr}, format="json"
    )

    assert response.status_code == 201, response.json()
    body = response.json()
    issued = load_pem(body["certificate"])
    assert issued.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "Alice Andersson"
    )
    assert rfc822_names(issued) == ["alice@example.com"]
    assert CLAIMED_NAME not in body["subject"]
    assert CLAIMED_EMAIL not in body["emails"]
    # ...and says so, since the request asked for something else.
    assert CLAIMED_EMAIL in body["notice"]
    assert "Alice Andersson" in body["notice"]


def test_a_csr_whose_signature_does_not_verify_is_refused_naming_the_field(hierarchy, employee):
    """Proof of possession: the request's signature must verify with its own key."""
    before = {**row_counts(), "requests": CertificateRequest.objects.count()}

    response = token_client(employee).post(
        ENROLLMENTS, {"template": "smime-signing", "csr": csr_with_a_bad_signature()}, format="json"
    )

    assert response.status_code == 400
    assert "does not prove possession" in response.json()["csr"][0]
    assert {**row_counts(), "requests": CertificateRequest.objects.count()} == before


def test_a_csr_enrolment_answers_certificate_chain_serial_fingerprint_and_status_url(
    hierarchy, employee, ec_p256_key, openssl
):
    response = token_client(employee).post(ENROLLMENTS, csr_body(ec_p256_key), format="json")

    assert response.status_code == 201
    body = response.json()
    stored = Certificate.objects.get()
    issued = load_pem(body["certificate"])
    chain = [load_pem(pem) for pem in body["chain"]]
    assert body["serial"] == stored.serial == format(issued.serial_number, "x")
    assert body["fingerprint"] == stored.fingerprint_sha256
    assert [c.subject for c in chain] == [
        hierarchy.issuing.certificate.subject,
        hierarchy.root.certificate.subject,
    ]
    assert body["url"].endswith(enrollment_url(body["id"]))
    assert body["certificate_url"].endswith(f"/api/v1/certificates/{stored.serial}/")
    assert body["pkcs12"] is None
    # The chain verifies with openssl, up to the root we returned last.
    root = openssl.write("root.pem", body["chain"][-1].encode())
    intermediate = openssl.write("issuing.pem", body["chain"][0].encode())
    leaf = openssl.write("leaf.pem", body["certificate"].encode())
    openssl.run("verify", "-CAfile", root, "-untrusted", intermediate, leaf)


def test_a_csr_may_be_given_as_base64_der(hierarchy, employee, ec_p256_key):
    response = token_client(employee).post(
        ENROLLMENTS,
        {"template": "smime-signing", "csr": csr_base64_der(ec_p256_key)},
        format="json",
    )

    assert response.status_code == 201


def test_a_csr_is_refused_for_a_template_that_archives_keys(hierarchy, employee, ec_p256_key):
    before = stored_counts()

    response = token_client(employee).post(
        ENROLLMENTS, csr_body(ec_p256_key, "smime-encryption"), format="json"
    )

    assert response.status_code == 400
    assert "csr" in response.json()
    assert stored_counts() == before


# --- with a portal-generated key ------------------------------------------------------


def test_a_portal_key_enrolment_returns_a_modern_pkcs12_openssl_opens_without_legacy(
    hierarchy, employee, openssl
):
    response = token_client(employee).post(ENROLLMENTS, server_key_body(), format="json")

    assert response.status_code == 201, response.json()
    assert response["Cache-Control"] == "no-store"  # the key's one way out: never cached
    body = response.json()
    assert body["pkcs12_format"] == "modern"
    bundle = openssl.write("me.p12", base64.b64decode(body["pkcs12"]))
    info = openssl.run("pkcs12", "-info", "-noout", "-in", bundle, "-passin", f"pass:{PASSWORD}")
    assert b"AES-256-CBC" in info.stderr + info.stdout
    key, certificate, chain = pkcs12.load_pkcs12(base64.b64decode(body["pkcs12"]), PASSWORD)
    assert certificate == load_pem(body["certificate"])
    assert len(chain) == 2


def test_the_compatible_pkcs12_opens_with_legacy_and_carries_3des(hierarchy, employee, openssl):
    response = token_client(employee).post(
        ENROLLMENTS, server_key_body(fmt="compatible"), format="json"
    )

    assert response.status_code == 201
    bundle = openssl.write("old.p12", base64.b64decode(response.json()["pkcs12"]))
    info = openssl.run(
        "pkcs12", "-legacy", "-info", "-noout", "-in", bundle, "-passin", f"pass:{PASSWORD}"
    )
    assert b"3-KeyTripleDES" in info.stderr + info.stdout


def test_the_pkcs12_password_is_never_echoed_stored_or_logged(hierarchy, employee, caplog):
    caplog.set_level("DEBUG")

    response = token_client(employee).post(ENROLLMENTS, server_key_body(), format="json")

    assert response.status_code == 201
    assert PASSWORD not in response.content.decode()
    assert PASSWORD not in caplog.text
    for event in AuditEvent.objects.all():
        assert PASSWORD not in str(event.detail)
    assert PASSWORD not in str(list(CertificateRequest.objects.values()))


@pytest.mark.parametrize("encoding", ["json", "multipart", "urlencoded"])
def test_a_server_error_report_hides_the_pkcs12_password_and_the_token(
    hierarchy, employee, monkeypatch, encoding
):
    """In every body the API parses: DRF hands a form's fields to Django's request.POST,
    which the report lists, though no view marked them sensitive."""

    def wrapping_fails(*args, **kwargs):
        raise RuntimeError("out of memory while wrapping the key")

    monkeypatch.setattr(pkcs12.pkcs12, "serialize_key_and_certificates", wrapping_fails)
    password = f"Hidden-{secrets.token_urlsafe()}"  # not a literal: those show as source lines
    client = token_client(employee)
    token = client._credentials["HTTP_AUTHORIZATION"].removeprefix("Token ")
    body = {**server_key_body(), "pkcs12_password": password}

    with error_report(RuntimeError) as report:
        if encoding == "urlencoded":
            form = "application/x-www-form-urlencoded"
            client.post(ENROLLMENTS, urlencode(body), content_type=form)
        else:
            client.post(ENROLLMENTS, body, format=encoding)

    assert "_enrol" in report.text
    assert "pkcs12_format" in report.text  # the body's other fields are shown
    assert password not in report.text
    assert token not in report.text


@pytest.mark.parametrize(
    ("password", "message"),
    [("tiny-pw", "at least 12"), ("123456789012345", "entirely numeric"), ("alice-andersson", "")],
)
def test_a_weak_pkcs12_password_is_refused_naming_the_field(hierarchy, employee, password, message):
    before = stored_counts()

    response = token_client(employee).post(
        ENROLLMENTS, {**server_key_body(), "pkcs12_password": password}, format="json"
    )

    assert response.status_code == 400
    errors = response.json()["pkcs12_password"]
    assert message in " ".join(errors)
    assert password not in response.content.decode()
    assert stored_counts() == before


def test_a_portal_key_enrolment_without_approval_needs_the_password_now(hierarchy, employee):
    body = server_key_body()
    del body["pkcs12_password"]

    response = token_client(employee).post(ENROLLMENTS, body, format="json")

    assert response.status_code == 400
    assert "pkcs12_password" in response.json()
    assert stored_counts() == (0, 0)


def test_an_algorithm_the_template_forbids_is_refused_naming_the_field(
    hierarchy, employee, template
):
    dual_use = template("smime-dual-use")
    dual_use.allowed_key_algorithms = [KeyAlgorithm.RSA_3072.value]
    dual_use.save()

    response = token_client(employee).post(ENROLLMENTS, server_key_body(), format="json")

    assert response.status_code == 400
    assert "key_algorithm" in response.json()


def test_an_archiving_template_archives_the_key_with_the_certificate(hierarchy, kra, employee):
    response = token_client(employee).post(
        ENROLLMENTS, server_key_body("smime-encryption"), format="json"
    )

    assert response.status_code == 201
    certificate = Certificate.objects.get(serial=response.json()["serial"])
    assert ArchivedKey.objects.filter(certificate=certificate).exists()


def test_an_archiving_template_without_a_recovery_agent_issues_nothing(hierarchy, employee):
    before = stored_counts()

    response = token_client(employee).post(
        ENROLLMENTS, server_key_body("smime-encryption"), format="json"
    )

    assert response.status_code == 503
    assert "key recovery agent" in response.json()["detail"]
    assert stored_counts() == before


# --- approval -------------------------------------------------------------------------


def test_a_csr_needing_approval_is_202_then_issued_when_an_officer_approves(
    hierarchy, approval, employee, officer, ec_p256_key
):
    approval("smime-signing")
    requester = token_client(employee)

    submitted = requester.post(ENROLLMENTS, csr_body(ec_p256_key), format="json")

    assert submitted.status_code == 202
    body = submitted.json()
    assert body["state"] == "pending"
    assert submitted["Location"] == body["url"]
    assert Certificate.objects.count() == 0

    decided = token_client(officer).post(request_url(body["id"], "approve"), {}, format="json")

    assert decided.status_code == 200
    assert decided.json()["state"] == "issued"
    status = requester.get(enrollment_url(body["id"])).json()
    assert status["state"] == "issued"
    assert status["serial"] == Certificate.objects.get().serial
    assert requester.get(status["certificate_url"]).status_code == 200
    # The CSR claimed Mallory's name and address; an approval changes nothing to that.
    issued = Certificate.objects.get().certificate
    assert issued.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "Alice Andersson"
    )
    assert rfc822_names(issued) == ["alice@example.com"]


def test_a_portal_key_needing_approval_is_collected_once_after_approval(
    hierarchy, approval, employee, officer, openssl
):
    approval("smime-dual-use")
    requester = token_client(employee)
    body = server_key_body()
    del body["pkcs12_password"]  # not needed until the download

    submitted = requester.post(ENROLLMENTS, body, format="json")

    assert submitted.status_code == 202
    pk = submitted.json()["id"]
    assert submitted.json()["collect_url"] is None
    early = requester.post(
        f"{enrollment_url(pk)}collect/", {"pkcs12_password": PASSWORD}, format="json"
    )
    assert early.status_code == 409

    token_client(officer).post(request_url(pk, "approve"), {"reason": "ok"}, format="json")
    status = requester.get(enrollment_url(pk)).json()
    assert status["state"] == "approved"
    assert status["collect_url"].endswith(f"{enrollment_url(pk)}collect/")

    collected = requester.post(
        status["collect_url"],
        {"pkcs12_password": PASSWORD, "pkcs12_format": "compatible"},
        format="json",
    )

    assert collected.status_code == 201
    bundle = openssl.write("late.p12", base64.b64decode(collected.json()["pkcs12"]))
    openssl.run(
        "pkcs12", "-legacy", "-info", "-noout", "-in", bundle, "-passin", f"pass:{PASSWORD}"
    )
    again = requester.post(status["collect_url"], {"pkcs12_password": PASSWORD}, format="json")
    assert again.status_code == 409
    assert "already downloaded" in again.json()["detail"]
    assert AuditEvent.objects.filter(action="pkcs12.download").count() == 1


def test_collect_checks_the_password_before_generating_anything(
    hierarchy, approval, employee, officer
):
    approval("smime-dual-use")
    requester = token_client(employee)
    body = server_key_body()
    pk = requester.post(ENROLLMENTS, body, format="json").json()["id"]
    token_client(officer).post(request_url(pk, "approve"), {}, format="json")

    response = requester.post(
        f"{enrollment_url(pk)}collect/", {"pkcs12_password": "weak"}, format="json"
    )

    assert response.status_code == 400
    assert "pkcs12_password" in response.json()
    assert Certificate.objects.count() == 0
    assert CertificateRequest.objects.get(pk=pk).state == "approved"


# --- who may and who may not ----------------------------------------------------------


def test_anonymous_may_not_enrol_or_list(hierarchy, ec_p256_key):
    anonymous = token_client(None)

    assert anonymous.post(ENROLLMENTS, csr_body(ec_p256_key), format="json").status_code == 401
    assert anonymous.get(ENROLLMENTS).status_code == 401
    assert stored_counts() == (0, 0)


def test_a_bad_token_is_401(hierarchy):
    client = token_client(None)
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    assert client.get(ENROLLMENTS).status_code == 401


def test_a_template_limited_to_a_group_is_403_for_others(
    hierarchy, template, employee, ec_p256_key
):
    signing = template("smime-signing")
    signing.allowed_groups.add(Group.objects.create(name="Finance"))

    response = token_client(employee).post(ENROLLMENTS, csr_body(ec_p256_key), format="json")

    assert response.status_code == 403
    assert "template" in response.json()
    assert stored_counts() == (0, 0)


def test_a_well_formed_csr_for_a_template_that_is_not_there_or_not_active_is_refused(
    hierarchy, template, employee, ec_p256_key
):
    """The CSR path reads the template with its check (services.csr_submit_named): a CSR
    that would be issued still gets the answers the template's own lookup gave."""
    client = token_client(employee)

    unknown = client.post(ENROLLMENTS, csr_body(ec_p256_key, "no-such"), format="json")
    signing = template("smime-signing")
    signing.is_active = False
    signing.save()
    inactive = client.post(ENROLLMENTS, csr_body(ec_p256_key), format="json")

    assert unknown.status_code == 400
    assert unknown.json() == {"template": ["There is no certificate template 'no-such'."]}
    assert inactive.status_code == 403
    assert list(inactive.json()) == ["template"]
    assert stored_counts() == (0, 0)


def test_i_list_my_enrolments_and_not_my_colleagues(
    hierarchy, employee, colleague, officer, ec_p256_key
):
    mine = token_client(employee).post(ENROLLMENTS, csr_body(ec_p256_key), format="json")
    token_client(colleague).post(ENROLLMENTS, csr_body(ec_p256_key), format="json")

    for user, expected in ((employee, [mine.json()["id"]]), (officer, [])):
        listed = token_client(user).get(ENROLLMENTS).json()
        assert [item["id"] for item in listed["results"]] == expected


@pytest.mark.parametrize(
    ("who", "status"),
    [("employee", 200), ("colleague", 404), ("officer", 200), ("anonymous", 401)],
)
def test_who_may_see_an_enrolment(
    hierarchy, employee, colleague, officer, ec_p256_key, who, status
):
    pk = token_client(employee).post(ENROLLMENTS, csr_body(ec_p256_key), format="json").json()["id"]
    user = {"employee": employee, "colleague": colleague, "officer": officer, "anonymous": None}

    assert token_client(user[who]).get(enrollment_url(pk)).status_code == status


@pytest.mark.parametrize(
    ("who", "status"),
    [("colleague", 404), ("officer", 403), ("anonymous", 401)],
)
def test_only_the_requester_may_collect(
    hierarchy, approval, employee, colleague, officer, who, status
):
    approval("smime-dual-use")
    pk = token_client(employee).post(ENROLLMENTS, server_key_body(), format="json").json()["id"]
    token_client(officer).post(request_url(pk, "approve"), {}, format="json")
    user = {"colleague": colleague, "officer": officer, "anonymous": None}

    response = token_client(user[who]).post(
        f"{enrollment_url(pk)}collect/", {"pkcs12_password": PASSWORD}, format="json"
    )

    assert response.status_code == status
    assert Certificate.objects.count() == 0


# --- session authentication and CSRF --------------------------------------------------


def test_a_session_post_without_csrf_token_is_refused(hierarchy, employee, ec_p256_key):
    client = session_client(employee, enforce_csrf=True)

    response = client.post(ENROLLMENTS, csr_body(ec_p256_key), format="json")

    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert stored_counts() == (0, 0)


def test_a_session_post_with_csrf_token_enrols(hierarchy, employee, ec_p256_key):
    client = client_for(employee)
    client.handler.enforce_csrf_checks = True
    client.get("/")  # the home page sets the CSRF cookie
    token = client.cookies["csrftoken"].value

    response = client.post(
        ENROLLMENTS,
        csr_body(ec_p256_key),
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )

    assert response.status_code == 201


def test_a_session_may_read_without_csrf(hierarchy, employee):
    assert session_client(employee, enforce_csrf=True).get(ENROLLMENTS).status_code == 200


def test_token_posts_need_no_csrf_token(hierarchy, employee, ec_p256_key):
    client = token_client(employee)
    client.handler.enforce_csrf_checks = True

    assert client.post(ENROLLMENTS, csr_body(ec_p256_key), format="json").status_code == 201


# --- limits ---------------------------------------------------------------------------


def test_the_rate_limit_is_429_with_retry_after(hierarchy, employee, ec_p256_key, settings):
    settings.PKIPORTAL_ENROLL_RATE_PER_HOUR = 1
    client = token_client(employee)
    assert client.post(ENROLLMENTS, csr_body(ec_p256_key), format="json").status_code == 201
    before = stored_counts()

    response = client.post(ENROLLMENTS, csr_body(ec_p256_key), format="json")

    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert "You have made 1 request in the last hour" in response.json()["detail"]
    assert "try again later" in response.json()["detail"]
    assert stored_counts() == before


def test_the_per_template_cap_names_the_template(hierarchy, employee, ec_p256_key, settings):
    settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE = 1
    client = token_client(employee)
    client.post(ENROLLMENTS, csr_body(ec_p256_key), format="json")

    response = client.post(ENROLLMENTS, csr_body(ec_p256_key), format="json")

    assert response.status_code == 400
    assert "renew or revoke" in response.json()["template"][0]


def test_a_body_over_the_upload_limit_is_413(hierarchy, employee, ec_p256_key, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    body = {**csr_body(ec_p256_key), "padding": "x" * 5000}

    response = token_client(employee).post(ENROLLMENTS, body, format="json")

    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]
    assert stored_counts() == (0, 0)


def test_a_csr_over_64_kib_is_400_naming_the_field(hierarchy, employee, ec_p256_key):
    body = {"template": "smime-signing", "csr": csr_pem(ec_p256_key) + "A" * 70_000}

    response = token_client(employee).post(ENROLLMENTS, body, format="json")

    assert response.status_code == 400
    assert "64 KiB" in response.json()["csr"][0]


# --- bad input names the field --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"csr": "x"}, "template"),
        ({"template": "no-such-template", "csr": "x"}, "template"),
        ({"template": "smime-signing", "csr": "not a csr"}, "csr"),
        ({"template": "smime-signing", "csr": ""}, "csr"),
        ({"template": "smime-signing", "csr": "abc\x00def"}, "csr"),
        ({"template": "smime-signing", "csr": "x", "key_algorithm": "ec-p256"}, "key_algorithm"),
        ({"template": "smime-signing", "key_algorithm": "dsa-1024"}, "key_algorithm"),
        (
            {
                "template": "smime-signing",
                "key_algorithm": "ec-p256",
                "pkcs12_password": PASSWORD,
                "pkcs12_format": "rc2",
            },
            "pkcs12_format",
        ),  # fmt: skip
        ({"template": ["smime-signing"], "csr": "x"}, "template"),
        ({"template": "smime-signing", "csr": {"nested": "junk"}}, "csr"),
        ({}, "template"),
    ],
)
def test_bad_input_is_400_naming_the_field(hierarchy, employee, body, field):
    response = token_client(employee).post(ENROLLMENTS, body, format="json")

    assert response.status_code == 400
    assert field in response.json(), response.json()
    assert stored_counts() == (0, 0)


def test_a_lone_surrogate_in_the_csr_is_400_naming_its_code_point(hierarchy, employee):
    raw = '{"template": "smime-signing", "csr": "MIIB\\udc80AAA"}'

    response = token_client(employee).post(ENROLLMENTS, raw, content_type="application/json")

    assert response.status_code == 400
    assert "U+DC80" in response.json()["csr"][0]
    assert stored_counts() == (0, 0)


@pytest.mark.parametrize(
    "text",
    ["MIIBx", "caf\u00e9", "\U0001f600", "a\ud800", "\udfff", "x\ud7ff\ue000", "\ud83d\ude00"],
)
def test_the_csr_field_refuses_the_surrogates_drfs_own_check_refuses(text):
    from rest_framework.exceptions import ValidationError
    from rest_framework.validators import ProhibitSurrogateCharactersValidator

    from enrollment.api.serializers import LongTextField

    def refusal(check) -> str | None:
        try:
            check(text)
        except ValidationError as exc:
            return str(exc.detail[0])
        return None

    ours = [
        v for v in LongTextField().validators if isinstance(v, ProhibitSurrogateCharactersValidator)
    ]
    assert len(ours) == 1
    assert type(ours[0]) is not ProhibitSurrogateCharactersValidator
    assert refusal(ours[0]) == refusal(ProhibitSurrogateCharactersValidator())


def test_a_body_that_is_not_json_is_400(hierarchy, employee):
    response = token_client(employee).post(
        ENROLLMENTS, b"{not json", content_type="application/json"
    )

    assert response.status_code == 400
    assert "JSON" in response.json()["detail"]


def test_a_form_encoded_body_works_like_json(hierarchy, employee, ec_p256_key):
    response = token_client(employee).post(ENROLLMENTS, csr_body(ec_p256_key))

    assert response.status_code == 201


def test_a_signed_csr_claiming_control_characters_is_stored_escaped(hierarchy, employee):
    """PostgreSQL refuses NUL in text and JSON: what the CSR asked for is kept escaped."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Mal\x00lory")]))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name("m\x00@evil.example")]), False)
        .sign(key, hashes.SHA256())
    )

    response = token_client(employee).post(
        ENROLLMENTS,
        {"template": "smime-signing", "csr": csr.public_bytes(Encoding.PEM).decode()},
        format="json",
    )

    assert response.status_code == 201
    stored = CertificateRequest.objects.get()
    assert stored.requested_emails == ["m\\x00@evil.example"]
    assert "\x00" not in stored.requested_subject


def test_an_issuance_failure_after_the_csr_was_accepted_leaves_nothing_behind(
    hierarchy, employee, ec_p256_key, settings
):
    (settings.PKIPORTAL_KEY_DIR / hierarchy.issuing.key_reference).unlink()

    response = token_client(employee).post(ENROLLMENTS, csr_body(ec_p256_key), format="json")

    assert response.status_code == 503
    assert response.json() == {
        "detail": "The CA cannot sign right now; please tell your administrator."
    }  # the key file's path is for the operator's log
    assert stored_counts() == (0, 0)


# --- the answer -----------------------------------------------------------------------


def test_the_answer_built_by_hand_is_what_issuedout_documents(hierarchy, employee, openssl):
    """_answer skips DRF's per-answer field copies; IssuedOut stays the documented shape."""
    from rest_framework.request import Request
    from rest_framework.test import APIRequestFactory

    from enrollment import services
    from enrollment.api import serializers as s
    from enrollment.models import CertificateTemplate

    http = Request(APIRequestFactory().post(ENROLLMENTS))
    with_notice = services.request_submit(
        requester=employee,
        template=CertificateTemplate.objects.get(slug="smime-signing"),
        csr=openssl_csr(openssl, "mallory", *EC_P256).read_bytes(),
        channel="web",
    )
    bundle_request = services.request_submit(
        requester=employee,
        template=CertificateTemplate.objects.get(slug="smime-dual-use"),
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    certificate, bundle = services.request_collect(
        request=bundle_request, actor=employee, pkcs12_password=PASSWORD
    )
    answers = [
        s.Issued(with_notice, with_notice.certificate),
        s.Issued(bundle_request, certificate, bundle, pkcs12.Pkcs12Format.MODERN),
    ]

    for issued in answers:
        documented = dict(s.IssuedOut(issued, context={"request": http}).data)
        assert s.issued_body(issued, http) == documented
    assert answers[0].certificate.emails == ["alice@example.com"]
    assert "mallory" in s.issued_body(answers[0], http)["notice"]
    assert s.issued_body(answers[1], http)["pkcs12"]


def test_a_csr_enrolment_costs_five_statements_on_postgresql_and_twelve_on_sqlite(
    hierarchy, employee, ec_p256_key, django_assert_num_queries
):
    """The throughput of the API rests on this (docs/benchmarks.md): keep it from creeping.

    Here inside the test's transaction. PostgreSQL: token with its user; the unlocked
    check, which reads the template the body names (services.csr_submit_named);
    savepoint; the one statement that writes everything; release (outside a transaction,
    as in production, three: tests/enrollment/test_csr_unlocked.py). SQLite, the locked
    way: token with its user; template; savepoint; permission and limits; is the key
    compromised and the issuing CA (two); certificate with its request (two); the audit
    events and the head's move (three); release.
    """
    client = token_client(employee)
    body = csr_body(ec_p256_key)
    client.post(ENROLLMENTS, body, format="json")  # warm: the chain head exists

    with django_assert_num_queries(5 if connection.vendor == "postgresql" else 12):
        response = client.post(ENROLLMENTS, body, format="json")

    assert response.status_code == 201


# --- withdrawing ----------------------------------------------------------------------


def withdraw_url(pk: int) -> str:
    return f"{enrollment_url(pk)}withdraw/"


@pytest.fixture
def waiting(hierarchy, approval, employee) -> int:
    """Alice's portal-key request for a template that needs approval: its id."""
    approval("smime-dual-use")
    body = server_key_body()
    del body["pkcs12_password"]
    response = token_client(employee).post(ENROLLMENTS, body, format="json")
    assert response.status_code == 202
    return response.json()["id"]


def test_the_requester_is_handed_the_withdraw_url_while_it_can_be_used(waiting, employee, officer):
    mine = token_client(employee).get(enrollment_url(waiting)).json()
    assert mine["withdraw_url"] == f"http://testserver{withdraw_url(waiting)}"
    # The officer decides instead: no URL they could only get a 403 from.
    assert token_client(officer).get(enrollment_url(waiting)).json()["withdraw_url"] is None

    token_client(employee).post(mine["withdraw_url"])

    assert token_client(employee).get(enrollment_url(waiting)).json()["withdraw_url"] is None


def test_the_requester_withdraws_a_pending_enrolment_and_it_leaves_the_queue(
    waiting, employee, officer
):
    response = token_client(employee).post(withdraw_url(waiting))

    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["state"], body["collect_url"]) == (waiting, "withdrawn", None)
    assert CertificateRequest.objects.get(pk=waiting).state == "withdrawn"
    event = AuditEvent.objects.get(action="request.withdraw")
    assert (event.actor, event.object_id, event.source_address) == (
        employee,
        str(waiting),
        "127.0.0.1",
    )
    assert token_client(officer).get(PENDING).json()["results"] == []
    seen = token_client(officer).get(enrollment_url(waiting)).json()
    assert seen["state"] == "withdrawn"


def test_an_approved_enrolment_is_withdrawn_before_its_download(waiting, employee, officer):
    token_client(officer).post(request_url(waiting, "approve"), {}, format="json")
    me = token_client(employee)

    response = me.post(withdraw_url(waiting))

    assert response.status_code == 200
    assert response.json()["state"] == "withdrawn"
    collect = me.post(
        f"{enrollment_url(waiting)}collect/", {"pkcs12_password": PASSWORD}, format="json"
    )
    assert collect.status_code == 409
    assert Certificate.objects.count() == 0


@pytest.mark.parametrize(
    ("end", "said"),
    [
        ("withdrawn", "already withdrawn"),
        ("rejected", "already rejected"),
        ("issued", "already issued: there is nothing to withdraw. Revoke"),
    ],
)
def test_an_enrolment_no_longer_open_is_409(waiting, employee, officer, end, said):
    me, ra = token_client(employee), token_client(officer)
    if end == "withdrawn":
        me.post(withdraw_url(waiting))
    elif end == "rejected":
        ra.post(request_url(waiting, "reject"), {"reason": "no"}, format="json")
    else:
        ra.post(request_url(waiting, "approve"), {}, format="json")
        me.post(f"{enrollment_url(waiting)}collect/", {"pkcs12_password": PASSWORD}, format="json")
    events = AuditEvent.objects.filter(action="request.withdraw").count()

    response = me.post(withdraw_url(waiting))

    assert response.status_code == 409
    assert said in response.json()["detail"]
    assert CertificateRequest.objects.get(pk=waiting).state == end
    assert AuditEvent.objects.filter(action="request.withdraw").count() == events


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_an_officer_deciding_a_withdrawn_enrolment_is_told_409(waiting, employee, officer, verb):
    token_client(employee).post(withdraw_url(waiting))

    response = token_client(officer).post(
        request_url(waiting, verb), {"reason": "x"}, format="json"
    )

    assert response.status_code == 409
    assert response.json()["detail"] == "This request is already withdrawn."


@pytest.mark.parametrize(
    ("who", "status"),
    [("colleague", 404), ("officer", 403), ("anonymous", 401)],
)
def test_only_the_requester_may_withdraw(waiting, colleague, officer, who, status):
    user = {"colleague": colleague, "officer": officer, "anonymous": None}

    response = token_client(user[who]).post(withdraw_url(waiting))

    assert response.status_code == status
    if who == "officer":
        assert "an RA officer rejects it instead" in response.json()["detail"]
    assert CertificateRequest.objects.get(pk=waiting).state == "pending"
    assert not AuditEvent.objects.filter(action="request.withdraw").exists()


def test_withdrawing_an_unknown_enrolment_is_404(hierarchy, employee):
    assert token_client(employee).post(withdraw_url(999_999)).status_code == 404


def test_withdrawing_takes_a_post(waiting, employee):
    assert token_client(employee).get(withdraw_url(waiting)).status_code == 405


def test_a_session_withdrawal_needs_the_csrf_token(waiting, employee):
    client = client_for(employee)
    client.handler.enforce_csrf_checks = True
    client.get("/")  # the home page sets the CSRF cookie

    refused = client.post(withdraw_url(waiting))
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
    assert CertificateRequest.objects.get(pk=waiting).state == "pending"

    token = client.cookies["csrftoken"].value
    accepted = client.post(withdraw_url(waiting), headers={"X-CSRFToken": token})
    assert accepted.status_code == 200
