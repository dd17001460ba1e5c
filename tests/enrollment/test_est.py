"""EST (RFC 7030) at /.well-known/est/: who may do what, the answers' shapes, the approval
round trip, re-enrolment, and hostile bodies (never a 500, nothing stored)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from axes.models import AccessAttempt
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509.oid import NameOID

from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from enrollment import services
from enrollment.checks import est_is_behind_https
from enrollment.est import csr_attributes
from enrollment.models import ApiToken, AuditEvent, Certificate, CertificateRequest
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for
from tests.enrollment.api_tools import ENROLLMENTS, token_client
from tests.enrollment.tools import CLAIMED_EMAIL, CLAIMED_NAME, cryptography_csr, new_key
from tests.enrollment.web import enrol_with_csr
from tests.second_factor import authenticator, code

pytestmark = pytest.mark.django_db

EST = "/.well-known/est"
PASSWORD = "correct horse battery staple"  # tests/factories.py
OPERATIONS = ["cacerts", "simpleenroll", "simplereenroll", "csrattrs"]


@pytest.fixture(autouse=True)
def est_on(settings):
    settings.PKIPORTAL_EST_ENABLED = True
    settings.PKIPORTAL_EST_DEFAULT_TEMPLATE = "smime-signing"


def basic(username: str, password: str = PASSWORD, **headers: Any) -> dict[str, Any]:
    """HTTP basic, over HTTPS (as EST demands)."""
    credentials = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {credentials}", "secure": True, **headers}


def body(csr: x509.CertificateSigningRequest) -> bytes:
    return base64.encodebytes(csr.public_bytes(Encoding.DER))


def post(client, operation: str, data: bytes, *, label: str = "", **headers: Any):
    path = f"{EST}/{label}/{operation}" if label else f"{EST}/{operation}"
    headers.setdefault("secure", True)
    return client.post(path, data, content_type="application/pkcs10", **headers)


def enrol(client, key=None, *, label: str = "", **headers: Any):
    return post(client, "simpleenroll", body(cryptography_csr(key or new_key())), label=label,
                **headers)  # fmt: skip


def certificates(response) -> list[x509.Certificate]:
    assert response["Content-Type"].startswith("application/pkcs7-mime"), response.content
    return pkcs7.load_der_pkcs7_certificates(base64.b64decode(response.content))


def issued(response) -> Certificate:
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/pkcs7-mime; smime-type=certs-only"
    (leaf,) = certificates(response)
    return Certificate.objects.get(serial=format(leaf.serial_number, "x"))


def stored() -> tuple[int, int]:
    return Certificate.objects.count(), CertificateRequest.objects.count()


def subject_csr(subject: x509.Name, key) -> x509.CertificateSigningRequest:
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())


# --- switched off, labels, cacerts --------------------------------------------------------


@pytest.mark.parametrize("operation", OPERATIONS)
def test_everything_is_404_while_est_is_off(settings, hierarchy, employee, operation):
    settings.PKIPORTAL_EST_ENABLED = False
    client = Client()

    answers = [client.get(f"{EST}/{operation}", **basic("alice")),
               post(client, operation, b"MIIB", **basic("alice"))]  # fmt: skip

    assert [a.status_code for a in answers] == [404, 404]
    assert answers[0]["Content-Type"] == "text/plain; charset=utf-8"


def test_cacerts_serves_the_chain_to_anyone_as_base64_certs_only(hierarchy):
    response = Client().get(f"{EST}/cacerts")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/pkcs7-mime"
    assert response["Content-Transfer-Encoding"] == "base64"
    # A SET OF in DER: in the order of their encodings, not of the chain.
    assert set(certificates(response)) == {
        hierarchy.issuing.certificate,
        hierarchy.root.certificate,
    }
    labelled = Client().get(f"{EST}/smime-dual-use/cacerts")
    assert certificates(labelled) == certificates(response)


def test_no_default_template_and_unknown_or_inactive_labels_are_404(settings, hierarchy, template):
    settings.PKIPORTAL_EST_DEFAULT_TEMPLATE = ""
    inactive = template("smime-dual-use")
    inactive.is_active = False
    inactive.save()
    client = Client()

    assert client.get(f"{EST}/cacerts").status_code == 404
    assert "default EST template" in client.get(f"{EST}/cacerts").content.decode()
    assert client.get(f"{EST}/no-such-template/cacerts").status_code == 404
    assert client.get(f"{EST}/smime-dual-use/cacerts").status_code == 404
    assert client.get(f"{EST}/smime-signing/cacerts").status_code == 200


def test_cacerts_takes_no_post_and_without_a_ca_is_503(db):
    assert Client().post(f"{EST}/cacerts").status_code == 405
    response = Client().get(f"{EST}/cacerts")
    assert response.status_code == 503
    assert "create_pki" in response.content.decode()


# --- simpleenroll: who may ----------------------------------------------------------------


def test_anonymous_and_wrong_passwords_are_401_asking_for_basic(hierarchy, employee):
    anonymous = enrol(Client())
    wrong = enrol(Client(), **basic("alice", "wrong"))

    assert anonymous.status_code == wrong.status_code == 401
    assert anonymous["WWW-Authenticate"] == 'Basic realm="est"'
    assert anonymous["Content-Type"] == "text/plain; charset=utf-8"
    assert stored() == (0, 0)


def test_an_employee_enrols_by_password_with_the_account_s_name_not_the_csr_s(hierarchy, employee):
    key = new_key()
    certificate = issued(enrol(Client(), key, **basic("alice")))

    assert certificate.owner == employee
    assert certificate.template.slug == "smime-signing"
    assert certificate.common_name == "Alice Andersson"
    assert CLAIMED_NAME not in certificate.certificate.subject.rfc4514_string()
    assert certificate.emails == ["alice@example.com"] != [CLAIMED_EMAIL]
    assert certificate.spki_sha256 == services.keys.spki_sha256(key.public_key())


def test_a_token_enrols_like_the_api_and_the_label_chooses_the_template(hierarchy, employee):
    certificate = issued(enrol(token_client(employee), label="smime-dual-use"))

    assert certificate.owner == employee
    assert certificate.template.slug == "smime-dual-use"


def test_a_browser_session_is_never_enough(hierarchy, employee):
    """EST takes no session (and so needs no CSRF token): a signed-in browser is 401."""
    session = client_for(employee)
    session_csrf = Client(enforce_csrf_checks=True)
    session_csrf.force_login(employee)

    assert enrol(session).status_code == 401
    assert enrol(session_csrf).status_code == 401
    assert session.get(f"{EST}/csrattrs", secure=True).status_code == 401
    assert stored() == (0, 0)


def test_a_deactivated_account_is_401_by_password_and_by_token(hierarchy, employee):
    client = token_client(employee)
    employee.is_active = False
    employee.save()

    assert enrol(Client(), **basic("alice")).status_code == 401
    assert enrol(client).status_code == 401
    assert stored() == (0, 0)


def test_a_template_closed_to_the_caller_is_403_and_open_to_its_group(
    hierarchy, template, employee, colleague
):
    finance = Group.objects.create(name="Finance")
    template("smime-signing").allowed_groups.add(finance)
    colleague.groups.add(finance)

    refused = enrol(Client(), **basic("alice"))
    assert refused.status_code == 403
    assert "may not use the template" in refused.content.decode()
    assert stored() == (0, 0)
    assert Client().get(f"{EST}/csrattrs", **basic("alice")).status_code == 403
    assert issued(enrol(Client(), **basic("bob"))).owner == colleague


def test_an_officer_needs_a_code_with_a_password_and_enrols_only_for_herself(
    hierarchy, officer, employee
):
    _device, seed = authenticator(officer)

    missing = enrol(Client(), **basic("olivia"))
    assert missing.status_code == 401
    assert missing["X-OTP-Code"] == "required"
    assert missing["WWW-Authenticate"] == 'Basic realm="est"'
    assert "X-OTP-Code" in missing.content.decode()
    wrong = enrol(Client(), **basic("olivia", HTTP_X_OTP_CODE="000000x"))
    assert wrong.status_code == 401
    assert wrong["WWW-Authenticate"] == 'Basic realm="est"'
    assert stored() == (0, 0)

    certificate = issued(enrol(Client(), **basic("olivia", HTTP_X_OTP_CODE=code(seed))))
    assert certificate.owner == officer
    wrong_codes = AuditEvent.objects.filter(action="mfa.verify")
    assert [(e.outcome, e.detail["via"]) for e in wrong_codes] == [("failure", "est")]
    assert certificate.common_name == "Olivia Officer"


def test_a_code_sent_again_is_refused_without_counting_as_a_wrong_code(hierarchy, officer):
    """A client resending the same X-OTP-Code must not lock the officer's sign-in."""
    device, seed = authenticator(officer)
    used = code(seed)
    issued(enrol(Client(), **basic("olivia", HTTP_X_OTP_CODE=used)))

    answers = [enrol(Client(), **basic("olivia", HTTP_X_OTP_CODE=used)) for _ in range(3)]

    assert [a.status_code for a in answers] == [401] * 3
    assert "used already" in answers[0].content.decode()
    assert answers[0]["X-OTP-Code"] == "required"
    device.refresh_from_db()
    assert device.throttling_failure_count == 0
    assert not AuditEvent.objects.filter(action__in=["mfa.verify", "mfa.lockout"]).exists()
    assert stored() == (1, 1)
    wrong = f"{(int(used) + 1) % 1_000_000:06d}"
    assert enrol(Client(), **basic("olivia", HTTP_X_OTP_CODE=wrong)).status_code == 401
    device.refresh_from_db()
    assert device.throttling_failure_count == 1  # a wrong code still counts


def test_an_officer_without_a_second_factor_is_told_in_est_s_words(hierarchy, officer):
    refused = enrol(Client(), **basic("olivia"))

    assert refused.status_code == 403
    text = refused.content.decode()
    assert "enrolling over EST" in text
    assert "API token" in text
    assert "minting a token" not in text
    assert stored() == (0, 0)


def test_an_officer_s_token_enrols_for_herself_only(hierarchy, officer):
    authenticator(officer)

    certificate = issued(enrol(token_client(officer)))

    assert certificate.owner == officer


def test_an_officer_s_token_made_without_a_second_factor_still_enrols_only_for_herself(
    hierarchy, officer
):
    """As the REST API: such a token carries no officer power, and EST asks for none."""
    client = token_client(officer)
    ApiToken.objects.update(second_factor=False)  # minted before the policy asked for one
    authenticator(officer)

    assert issued(enrol(client)).owner == officer
    assert client.get("/api/v1/requests/pending/").status_code == 403


def test_axes_locks_basic_auth_out_with_a_429(hierarchy, employee, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        enrol(Client(), **basic("alice", "wrong"))

    locked = enrol(Client(), **basic("alice"))

    assert locked.status_code == 429
    assert "Too many failed sign-ins" in locked.content.decode()
    assert stored() == (0, 0)


# --- approval, audit ----------------------------------------------------------------------


def test_approval_answers_202_then_the_same_csr_gets_the_certificate(
    hierarchy, approval, employee, officer
):
    approval("smime-signing")
    csr = body(cryptography_csr(new_key()))

    waiting = post(Client(), "simpleenroll", csr, **basic("alice"))
    again = post(Client(), "simpleenroll", csr, **basic("alice"))

    assert waiting.status_code == again.status_code == 202
    assert waiting["Retry-After"] == "600"
    request = CertificateRequest.objects.get()  # the repeat made no second one
    assert request.state == CertificateRequest.State.PENDING
    services.request_approve(request=request, officer=officer)

    certificate = issued(post(Client(), "simpleenroll", csr, **basic("alice")))
    assert certificate == CertificateRequest.objects.get().certificate
    assert stored() == (1, 1)
    submit = AuditEvent.objects.get(action="request.submit")
    issue = AuditEvent.objects.get(action="certificate.issue")
    assert submit.detail["channel"] == issue.detail["channel"] == "est"
    assert issue.actor == officer


def test_the_same_csr_again_gets_its_certificate_only_while_it_is_valid(hierarchy, employee):
    csr = body(cryptography_csr(new_key()))
    certificate = issued(post(Client(), "simpleenroll", csr, **basic("alice")))
    assert issued(post(Client(), "simpleenroll", csr, **basic("alice"))) == certificate

    Certificate.objects.filter(pk=certificate.pk).update(not_after=timezone.now())
    expired = post(Client(), "simpleenroll", csr, **basic("alice"))
    assert expired.status_code == 409
    assert expired["Content-Type"] == "text/plain; charset=utf-8"
    assert "certificate for this CSR is expired" in expired.content.decode()
    assert "new CSR" in expired.content.decode()

    Certificate.objects.filter(pk=certificate.pk).update(not_after=certificate.not_after)
    services.certificate_revoke(certificate=certificate, reason="superseded", actor=None)
    revoked = post(Client(), "simpleenroll", csr, **basic("alice"))
    assert revoked.status_code == 409
    assert "certificate for this CSR is revoked" in revoked.content.decode()
    assert stored() == (1, 1)


def test_a_repeat_is_answered_only_while_the_caller_may_use_the_template(
    hierarchy, approval, template, employee, officer
):
    approval("smime-signing")
    first, second = body(cryptography_csr(new_key())), body(cryptography_csr(new_key()))
    assert post(Client(), "simpleenroll", first, **basic("alice")).status_code == 202
    services.request_approve(request=CertificateRequest.objects.get(), officer=officer)
    assert post(Client(), "simpleenroll", second, **basic("alice")).status_code == 202
    template("smime-signing").allowed_groups.add(Group.objects.create(name="Finance"))

    done = post(Client(), "simpleenroll", first, **basic("alice"))
    waiting = post(Client(), "simpleenroll", second, **basic("alice"))

    assert done.status_code == waiting.status_code == 403
    assert "may not use the template" in done.content.decode()
    assert done["Content-Type"] == "text/plain; charset=utf-8"


def test_a_waiting_csr_is_found_again_after_the_default_template_changed(
    hierarchy, approval, settings, employee, officer
):
    approval("smime-signing")
    approval("smime-dual-use")
    csr = body(cryptography_csr(new_key()))
    assert post(Client(), "simpleenroll", csr, **basic("alice")).status_code == 202
    settings.PKIPORTAL_EST_DEFAULT_TEMPLATE = "smime-dual-use"

    again = post(Client(), "simpleenroll", csr, **basic("alice"))

    assert again.status_code == 202
    request = CertificateRequest.objects.get()  # no second request
    assert request.template.slug == "smime-signing"
    services.request_approve(request=request, officer=officer)
    assert issued(post(Client(), "simpleenroll", csr, **basic("alice"))).template.slug == (
        "smime-signing"
    )
    assert stored() == (1, 1)


def test_a_csr_issued_at_once_is_not_taken_for_another_template_s_request(hierarchy, employee):
    """Only requests that answered 202 are looked for under other templates: a labelled
    request never gets a certificate of another template back."""
    csr = body(cryptography_csr(new_key()))
    first = issued(post(Client(), "simpleenroll", csr, **basic("alice")))

    other = post(Client(), "simpleenroll", csr, label="smime-dual-use", **basic("alice"))

    assert other.status_code == 200, other.content
    assert issued(other) != first
    assert issued(other).template.slug == "smime-dual-use"


def test_a_rejected_request_is_403_with_the_reason(hierarchy, approval, employee, officer):
    approval("smime-signing")
    csr = body(cryptography_csr(new_key()))
    assert post(Client(), "simpleenroll", csr, **basic("alice")).status_code == 202
    services.request_reject(
        request=CertificateRequest.objects.get(), officer=officer, reason="Not yours"
    )

    refused = post(Client(), "simpleenroll", csr, **basic("alice"))

    assert refused.status_code == 403
    assert "Not yours" in refused.content.decode()


def test_issued_at_once_is_audited_as_est(hierarchy, employee):
    issued(enrol(Client(), **basic("alice")))

    events = AuditEvent.objects.filter(action__in=["request.submit", "certificate.issue"])
    assert sorted(e.action for e in events) == ["certificate.issue", "request.submit"]
    assert {e.detail.get("channel") for e in events} == {"est"}
    assert all(e.actor == employee for e in events)


def test_the_api_and_the_web_audit_no_channel_also_when_approved_later(
    hierarchy, approval, employee, officer
):
    """Only EST names a channel: the API's and the web's events carry none, also for the
    issuance an officer's approval makes later (audited_channel reads the stored request)."""
    approval("smime-dual-use")
    api = token_client(employee)
    pem = [cryptography_csr(new_key()).public_bytes(Encoding.PEM).decode() for _ in range(3)]

    at_once = api.post(ENROLLMENTS, {"template": "smime-signing", "csr": pem[0]}, format="json",
                       HTTP_IDEMPOTENCY_KEY="script-1")  # fmt: skip
    later = api.post(ENROLLMENTS, {"template": "smime-dual-use", "csr": pem[1]}, format="json")
    web = enrol_with_csr(client_for(employee), csr=pem[2])
    assert (at_once.status_code, later.status_code) == (201, 202), (at_once.content, later.content)
    assert web.status_code == 302
    waiting = CertificateRequest.objects.get(state=CertificateRequest.State.PENDING)
    services.request_approve(request=waiting, officer=officer)

    events = AuditEvent.objects.filter(action__in=["request.submit", "certificate.issue"])
    assert sorted(e.action for e in events) == ["certificate.issue"] * 3 + ["request.submit"] * 3
    assert [e.detail for e in events if "channel" in e.detail] == []
    assert Certificate.objects.count() == 3


def test_the_api_refuses_idempotency_keys_that_would_pass_for_est(hierarchy, employee):
    response = token_client(employee).post(
        ENROLLMENTS,
        {"template": "smime-signing", "csr": cryptography_csr(new_key()).public_bytes(
            Encoding.PEM).decode()},
        format="json",
        HTTP_IDEMPOTENCY_KEY="est:abc",
    )  # fmt: skip

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()


# --- simplereenroll -----------------------------------------------------------------------


def test_reenrol_renews_the_certificate_with_the_csr_s_subject_and_key_type(hierarchy, employee):
    old = issued(enrol(Client(), **basic("alice")))
    new_csr = subject_csr(old.certificate.subject, new_key())

    renewed = issued(post(Client(), "simplereenroll", body(new_csr), **basic("alice")))

    assert renewed.owner == employee
    assert renewed != old
    old.refresh_from_db()
    assert old.status == Certificate.Status.REVOKED
    assert old.revocation_reason == "superseded"
    assert CertificateRequest.objects.get(certificate=renewed).renewal_of == old


def test_reenrol_without_a_valid_certificate_is_403(hierarchy, employee, colleague):
    old = issued(enrol(Client(), **basic("alice")))
    new_csr = body(subject_csr(old.certificate.subject, new_key()))

    nothing = post(Client(), "simplereenroll", new_csr, **basic("bob"))

    assert nothing.status_code == 403
    assert "no valid certificate" in nothing.content.decode()
    services.certificate_revoke(certificate=old, reason="keyCompromise", actor=None)
    assert post(Client(), "simplereenroll", new_csr, **basic("alice")).status_code == 403


def test_reenrol_refuses_another_subject_another_key_type_and_the_same_key(hierarchy, employee):
    key = new_key()
    old = issued(enrol(Client(), key, **basic("alice")))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    subject = post(Client(), "simplereenroll", body(cryptography_csr(new_key())), **basic("alice"))
    key_type = post(Client(), "simplereenroll", body(subject_csr(old.certificate.subject, rsa_key)),
                    **basic("alice"))  # fmt: skip
    same_key = post(Client(), "simplereenroll", body(subject_csr(old.certificate.subject, key)),
                    **basic("alice"))  # fmt: skip

    assert subject.status_code == 400
    assert "subject" in subject.content.decode()
    assert key_type.status_code == 400
    assert "key type" in key_type.content.decode()
    assert same_key.status_code == 400
    assert "new key" in same_key.content.decode()
    assert stored() == (1, 1)


# --- csrattrs -----------------------------------------------------------------------------


def test_csrattrs_needs_a_caller_and_names_the_key_types(hierarchy, template, employee):
    ec_only = template("smime-dual-use")
    ec_only.allowed_key_algorithms = ["ec-p256", "ec-p384"]
    ec_only.save()

    assert Client().get(f"{EST}/csrattrs", secure=True).status_code == 401
    assert Client().get(f"{EST}/csrattrs", **basic("alice")).status_code == 204  # any key
    answer = Client().get(f"{EST}/smime-dual-use/csrattrs", **basic("alice"))
    assert answer.status_code == 200
    assert answer["Content-Type"] == "application/csrattrs"
    # SEQUENCE { SEQUENCE { id-ecPublicKey, SET { secp384r1, prime256v1 } } }
    assert base64.b64decode(answer.content) == bytes.fromhex(
        "301e" "301c" "06072a8648ce3d0201" "3111" "06052b81040022" "06082a8648ce3d030107"
    )  # fmt: skip


def test_csr_attributes_are_der_attributes_as_rfc_9908_writes_them():
    """The key type as an Attribute with its curves or RSA key sizes (RFC 9908 clarifying
    RFC 7030 4.5.2), each SET OF in DER order; no bare id-ecPublicKey beside its Attribute."""
    assert csr_attributes(frozenset(KeyAlgorithm)) is None
    # SEQUENCE { SEQUENCE { id-ecPublicKey, SET { prime256v1 } } }
    assert csr_attributes(frozenset({KeyAlgorithm.EC_P256})) == bytes.fromhex(
        "3017" "3015" "06072a8648ce3d0201" "310a" "06082a8648ce3d030107"
    )  # fmt: skip
    # SEQUENCE { SEQUENCE { rsaEncryption, SET { INTEGER 3072 } } }
    assert csr_attributes(frozenset({KeyAlgorithm.RSA_3072})) == bytes.fromhex(
        "3013" "3011" "06092a864886f70d010101" "3104" "02020c00"
    )  # fmt: skip
    # RSA 4096 and 2048 (sorted: 2048 first), then P-384 and P-256 (sorted: P-384 first).
    mixed = frozenset(
        {KeyAlgorithm.RSA_4096, KeyAlgorithm.RSA_2048, KeyAlgorithm.EC_P384, KeyAlgorithm.EC_P256}
    )
    assert csr_attributes(mixed) == bytes.fromhex(
        "3035"
        "3015" "06092a864886f70d010101" "3108" "02020800" "02021000"
        "301c" "06072a8648ce3d0201" "3111" "06052b81040022" "06082a8648ce3d030107"
    )  # fmt: skip


# --- hostile bodies -----------------------------------------------------------------------


def test_bad_media_types_and_bodies_are_clean_4xx(hierarchy, employee):
    csr = body(cryptography_csr(new_key()))
    client = Client()

    wrong_type = client.post(f"{EST}/simpleenroll", csr, content_type="application/json",
                             **basic("alice"))  # fmt: skip
    no_type = client.generic("POST", f"{EST}/simpleenroll", csr, **basic("alice"))
    assert wrong_type.status_code == no_type.status_code == 415
    # Django's test client drops the Content-Type of an empty body; a real client sends it.
    empty = post(client, "simpleenroll", b"", CONTENT_TYPE="application/pkcs10", **basic("alice"))
    assert empty.status_code == 400
    assert "empty" in empty.content.decode()
    assert post(client, "simpleenroll", b"not base64!", **basic("alice")).status_code == 400
    junk = post(client, "simpleenroll", base64.b64encode(b"junk"), **basic("alice"))
    assert junk.status_code == 400
    assert "certificate request" in junk.content.decode()
    encryption = enrol(client, label="smime-encryption", **basic("alice"))
    assert encryption.status_code == 400
    assert "CSR" in encryption.content.decode()
    assert stored() == (0, 0)


def test_pem_and_bare_der_bodies_are_tolerated(hierarchy, employee):
    pem = cryptography_csr(new_key()).public_bytes(Encoding.PEM)
    der = cryptography_csr(new_key()).public_bytes(Encoding.DER)

    assert issued(post(Client(), "simpleenroll", pem, **basic("alice"))).owner == employee
    assert issued(post(Client(), "simpleenroll", der, **basic("alice"))).owner == employee


FUZZ = hypothesis_settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
VALID_DER = cryptography_csr(ec.generate_private_key(ec.SECP256R1())).public_bytes(Encoding.DER)


@st.composite
def damaged(draw) -> bytes:
    der = bytearray(VALID_DER)
    if draw(st.booleans()):
        der = der[: draw(st.integers(min_value=0, max_value=len(der) - 1))]
    else:
        for _ in range(draw(st.integers(min_value=1, max_value=4))):
            position = draw(st.integers(min_value=0, max_value=len(der) - 1))
            der[position] ^= draw(st.integers(min_value=1, max_value=255))
    # Two flips of the same byte by the same value undo each other: no damage at all.
    assume(bytes(der) != VALID_DER)
    return bytes(der) if draw(st.booleans()) else base64.encodebytes(bytes(der))


bodies = st.one_of(
    st.binary(max_size=400),
    st.binary(max_size=400).map(base64.b64encode),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.text(alphabet="ABCD=+/-_ \n\x00", max_size=120).map(str.encode),
    st.integers(min_value=1, max_value=300_000).map(lambda n: b"A" * n),
    damaged(),
)


@FUZZ
@given(
    data=bodies,
    operation=st.sampled_from(["simpleenroll", "simplereenroll"]),
    content_type=st.sampled_from(["application/pkcs10", "application/pkcs10; x=y", "text/x"]),
)
def test_hostile_bodies_never_500_and_store_nothing(
    hierarchy, employee, data, operation, content_type
):
    before = stored()

    response = Client().post(f"{EST}/{operation}", data, content_type=content_type,
                             **basic("alice"))  # fmt: skip

    assert 400 <= response.status_code < 500, response.content[:300]
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content.strip()
    assert stored() == before


@FUZZ
@given(common_name=st.text(min_size=1, max_size=64), renew=st.booleans())
def test_validly_signed_csrs_with_hostile_subjects_never_500(
    hierarchy, employee, ec_p256_key, settings, common_name, renew
):
    """Proof of possession passes, so the claimed subject reaches the re-enrolment's
    comparison and its error message."""
    settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE = 1000
    settings.PKIPORTAL_ENROLL_RATE_PER_HOUR = 1000
    if not Certificate.objects.exists():
        issued(enrol(Client(), **basic("alice")))  # something to re-enrol
    try:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        csr = subject_csr(name, ec_p256_key)
    except ValueError:
        assume(False)  # cryptography will not even encode it; neither would a client

    response = post(Client(), "simplereenroll" if renew else "simpleenroll", body(csr),
                    **basic("alice"))  # fmt: skip

    assert response.status_code in (200, 400), response.content[:300]
    if response.status_code == 400:
        assert "subject" in response.content.decode()


# --- deployment -----------------------------------------------------------------------------


def test_w007_and_w009_warn_of_est_without_https(settings):
    """Two warnings, two ids: a deployment can silence one and still hear the other."""
    settings.SECURE_SSL_REDIRECT = False
    (warning,) = est_is_behind_https()
    assert warning.id == "pkiportal.W009"
    assert "SECURE_SSL_REDIRECT" in warning.msg

    settings.SECURE_SSL_REDIRECT = True
    assert est_is_behind_https() == []
    settings.PKIPORTAL_EST_ALLOW_HTTP = True
    (allowed,) = est_is_behind_https()
    assert allowed.id == "pkiportal.W007"
    assert "PKIPORTAL_EST_ALLOW_HTTP" in allowed.msg
    settings.SECURE_SSL_REDIRECT = False
    settings.PKIPORTAL_EST_ENABLED = False
    assert est_is_behind_https() == []
    call_command("check")  # registered, loads


def test_signed_in_calls_over_plain_http_are_refused_before_the_password_is_checked(
    hierarchy, employee, settings
):
    plain = {"secure": False}
    answers = [
        enrol(Client(), **basic("alice", **plain)),
        enrol(Client(), **basic("alice", "wrong", **plain)),
        enrol(token_client(employee), secure=False),
        enrol(Client(), secure=False),
        Client().get(f"{EST}/csrattrs", **basic("alice", **plain)),
    ]

    assert [a.status_code for a in answers] == [403] * 5
    assert "HTTPS" in answers[0].content.decode()
    assert "WWW-Authenticate" not in answers[3]  # no invitation to send a password
    assert stored() == (0, 0)
    assert not AccessAttempt.objects.exists()  # the wrong password was never tried
    employee.refresh_from_db()
    assert employee.last_login is None  # nor the right one
    assert Client().get(f"{EST}/cacerts").status_code == 200  # public, as /pki/ is
    # Behind a proxy that ends TLS and says so, or in a lab that allows plain HTTP:
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    issued(enrol(Client(), **basic("alice", HTTP_X_FORWARDED_PROTO="https", **plain)))
    settings.SECURE_PROXY_SSL_HEADER = None
    settings.PKIPORTAL_EST_ALLOW_HTTP = True
    issued(enrol(Client(), **basic("alice", **plain)))


def test_a_session_halfway_through_its_second_factor_is_not_sent_to_the_code_page(
    hierarchy, officer
):
    """EST is a machine protocol: the second-factor redirect of the pages never applies."""
    authenticator(officer)
    halfway = Client()
    halfway.force_login(officer)  # password given, code not yet

    assert halfway.get("/").status_code == 302
    assert halfway.get(f"{EST}/cacerts").status_code == 200
    assert enrol(halfway).status_code == 401


@pytest.mark.parametrize("operation", OPERATIONS)
def test_options_is_405_and_tells_nothing_of_the_views(hierarchy, employee, operation):
    response = Client().options(f"{EST}/{operation}", **basic("alice"))

    assert response.status_code == 405
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert "RFC 7030" not in response.content.decode()
    assert "renders" not in response.content.decode()


def test_a_label_that_is_no_template_is_404_for_every_operation(hierarchy, employee):
    client = Client()

    answers = [
        client.get(f"{EST}/nope/cacerts"),
        client.get(f"{EST}/nope/csrattrs", **basic("alice")),
        enrol(client, label="nope", **basic("alice")),
        post(client, "simplereenroll", b"MIIB", label="nope", **basic("alice")),
    ]

    assert [a.status_code for a in answers] == [404] * 4
    assert client.get(f"{EST}/serverkeygen", **basic("alice")).status_code == 404
    assert stored() == (0, 0)
