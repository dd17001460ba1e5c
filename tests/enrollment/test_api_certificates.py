"""/api/v1/certificates/: list, fetch, revoke and renew, as each role."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest

from enrollment import services
from enrollment.exceptions import PolicyViolation
from enrollment.models import AuditEvent, Certificate, RevocationList
from enrollment.x509 import pkcs12
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.api_tools import (
    CERTIFICATES,
    PASSWORD,
    certificate_url,
    csr_body,
    csr_pem,
    request_url,
    server_key_body,
    session_client,
    stored_counts,
    token_client,
)
from tests.enrollment.tools import issue

pytestmark = pytest.mark.django_db

HOLDER_REASONS = ["keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation"]
OFFICER_ONLY_REASONS = ["privilegeWithdrawn"]


@pytest.fixture
def mine(hierarchy, template, employee, ec_p256_key) -> Certificate:
    return issue(employee, template("smime-signing"), ec_p256_key)


@pytest.fixture
def theirs(hierarchy, template, colleague, ec_p256_key) -> Certificate:
    return issue(colleague, template("smime-dual-use"), ec_p256_key)


@pytest.fixture
def clients(employee, colleague, officer):
    return {
        "employee": token_client(employee),
        "colleague": token_client(colleague),
        "officer": token_client(officer),
        "anonymous": token_client(None),
    }


def serials(response) -> list[str]:
    return [item["serial"] for item in response.json()["results"]]


# --- list -----------------------------------------------------------------------------


def test_i_list_my_certificates_and_not_my_colleagues(clients, mine, theirs):
    assert serials(clients["employee"].get(CERTIFICATES)) == [mine.serial]
    assert serials(clients["colleague"].get(CERTIFICATES)) == [theirs.serial]


def test_officers_list_everyones_certificates(clients, mine, theirs):
    assert sorted(serials(clients["officer"].get(CERTIFICATES))) == sorted(
        [mine.serial, theirs.serial]
    )


def test_anonymous_may_not_list(clients, mine):
    assert clients["anonymous"].get(CERTIFICATES).status_code == 401


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("owner=alice", ["mine"]),
        ("owner=bob", ["theirs"]),
        ("email=ALICE@example.com", ["mine"]),
        ("template=smime-dual-use", ["theirs"]),
        ("status=revoked", ["theirs"]),
        ("status=valid", ["mine"]),
        ("status=expired", []),
    ],
)
def test_officers_filter_by_owner_email_status_and_template(clients, mine, theirs, query, expected):
    services.certificate_revoke(certificate=theirs, reason="superseded")
    named = {"mine": mine.serial, "theirs": theirs.serial}

    response = clients["officer"].get(f"{CERTIFICATES}?{query}")

    assert response.status_code == 200
    assert serials(response) == [named[name] for name in expected]


def test_officers_filter_by_serial_in_any_spelling(clients, mine, theirs):
    spelled = ":".join(mine.serial[i : i + 2] for i in range(0, len(mine.serial), 2)).upper()

    response = clients["officer"].get(f"{CERTIFICATES}?serial=00{spelled}")

    assert serials(response) == [mine.serial]


def test_an_employee_filtering_by_a_colleague_sees_nothing(clients, mine, theirs):
    assert serials(clients["employee"].get(f"{CERTIFICATES}?owner=bob")) == []


def test_an_unknown_status_filter_is_400_naming_it(clients, mine):
    response = clients["officer"].get(f"{CERTIFICATES}?status=lost")

    assert response.status_code == 400
    assert "status" in response.json()


def test_the_expired_state_is_reported(employee, mine, time_machine):
    time_machine.move_to(mine.not_after)

    item = token_client(employee).get(CERTIFICATES).json()["results"][0]

    assert item["status"] == "expired"


# --- fetch ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "status"),
    [("employee", 200), ("colleague", 404), ("officer", 200), ("anonymous", 401)],
)
def test_who_may_fetch_a_certificate(clients, mine, who, status):
    assert clients[who].get(certificate_url(mine.serial)).status_code == status


def test_a_certificate_comes_with_its_pem_and_chain(clients, mine, hierarchy):
    body = clients["employee"].get(certificate_url(mine.serial)).json()

    assert body["certificate"].startswith("-----BEGIN CERTIFICATE-----")
    assert len(body["chain"]) == 2
    assert body["issuer"] == hierarchy.issuing.slug
    assert body["status"] == "valid"
    assert body["owner"] == "alice"


def test_a_serial_may_be_upper_case_with_colons(clients, mine):
    spelled = ":".join(mine.serial[i : i + 2] for i in range(0, len(mine.serial), 2)).upper()

    assert clients["employee"].get(certificate_url(spelled)).status_code == 200


@pytest.mark.parametrize("serial", ["zz", "abc;", "-1"])
def test_a_serial_that_is_not_hex_is_404(clients, mine, serial):
    assert clients["employee"].get(certificate_url(serial)).status_code == 404


# --- revoke ---------------------------------------------------------------------------


@pytest.mark.parametrize("reason", HOLDER_REASONS)
def test_i_revoke_my_certificate_with_a_holders_reason(
    clients, mine, reason, django_capture_on_commit_callbacks
):
    crls = RevocationList.objects.count()

    with django_capture_on_commit_callbacks(execute=True):
        response = clients["employee"].post(
            f"{certificate_url(mine.serial)}revoke/", {"reason": reason}, format="json"
        )

    assert response.status_code == 200
    assert response.json()["status"] == "revoked"
    assert response.json()["revocation_reason"] == reason
    mine.refresh_from_db()
    assert mine.status == Certificate.Status.REVOKED
    assert RevocationList.objects.count() == crls + 1  # published after the commit
    assert AuditEvent.objects.filter(action="certificate.revoke").exists()


@pytest.mark.parametrize("reason", OFFICER_ONLY_REASONS)
def test_a_holder_may_not_give_an_officers_reason(clients, mine, reason):
    response = clients["employee"].post(
        f"{certificate_url(mine.serial)}revoke/", {"reason": reason}, format="json"
    )

    assert response.status_code == 400
    assert "RA officers" in response.json()["reason"][0]
    mine.refresh_from_db()
    assert mine.status == Certificate.Status.VALID


@pytest.mark.parametrize("reason", HOLDER_REASONS + OFFICER_ONLY_REASONS)
def test_an_officer_revokes_anyones_certificate_with_any_reason(clients, theirs, reason):
    response = clients["officer"].post(
        f"{certificate_url(theirs.serial)}revoke/", {"reason": reason}, format="json"
    )

    assert response.status_code == 200
    theirs.refresh_from_db()
    assert theirs.revocation_reason == reason


def test_not_even_an_officer_revokes_a_subscriber_certificate_for_ca_compromise(clients, theirs):
    """cACompromise names a CA's key; CRL linters refuse it on a subscriber's entry."""
    response = clients["officer"].post(
        f"{certificate_url(theirs.serial)}revoke/", {"reason": "cACompromise"}, format="json"
    )

    assert response.status_code == 400
    assert "reason" in response.json()
    theirs.refresh_from_db()
    assert theirs.status == Certificate.Status.VALID
    with pytest.raises(PolicyViolation, match="not a revocation reason"):
        services.certificate_revoke(certificate=theirs, reason="cACompromise")


@pytest.mark.parametrize(("who", "status"), [("colleague", 404), ("anonymous", 401)])
def test_who_may_not_revoke(clients, mine, who, status):
    response = clients[who].post(
        f"{certificate_url(mine.serial)}revoke/", {"reason": "keyCompromise"}, format="json"
    )

    assert response.status_code == status
    mine.refresh_from_db()
    assert mine.status == Certificate.Status.VALID


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"reason": ""},
        {"reason": "unspecified"},
        {"reason": "certificateHold"},
        {"reason": 7},
    ],
)
def test_a_revocation_needs_a_known_reason(clients, mine, body):
    response = clients["employee"].post(
        f"{certificate_url(mine.serial)}revoke/", body, format="json"
    )

    assert response.status_code == 400
    assert "reason" in response.json()


@pytest.mark.parametrize(
    ("when", "message"),
    [("2999-01-01T00:00:00Z", "in the future"), ("0001-01-01T00:00:00Z", "825 days before")],
)
def test_an_invalidity_date_outside_the_certificates_life_is_400_naming_it(
    clients, mine, when, message
):
    response = clients["employee"].post(
        f"{certificate_url(mine.serial)}revoke/",
        {"reason": "keyCompromise", "invalidity_date": when},
        format="json",
    )

    assert response.status_code == 400
    assert message in response.json()["invalidity_date"][0]
    mine.refresh_from_db()
    assert mine.status == Certificate.Status.VALID


@pytest.mark.parametrize("days_before", [0, 2, 825])
def test_an_invalidity_date_up_to_a_lifetime_before_the_certificate_is_kept(
    clients, mine, days_before
):
    """A key may have leaked before its certificate was issued (a CSR's key is older)."""
    when = mine.not_before - timedelta(days=days_before)

    response = clients["employee"].post(
        f"{certificate_url(mine.serial)}revoke/",
        {"reason": "keyCompromise", "invalidity_date": when.isoformat()},
        format="json",
    )

    assert response.status_code == 200
    mine.refresh_from_db()
    assert mine.invalidity_date == when


def test_revoking_twice_is_409(clients, mine):
    url = f"{certificate_url(mine.serial)}revoke/"
    clients["employee"].post(url, {"reason": "superseded"}, format="json")

    response = clients["employee"].post(url, {"reason": "superseded"}, format="json")

    assert response.status_code == 409
    assert "already revoked" in response.json()["detail"]


# --- renew ----------------------------------------------------------------------------


def test_i_renew_with_a_csr_and_the_old_certificate_is_superseded(
    clients, mine, key_pool, employee
):
    new_key = key_pool.get(KeyAlgorithm.EC_P256, slot=1)

    response = clients["employee"].post(
        f"{certificate_url(mine.serial)}renew/", {"csr": csr_pem(new_key)}, format="json"
    )

    assert response.status_code == 201, response.json()
    renewed = Certificate.objects.get(serial=response.json()["serial"])
    assert renewed.template == mine.template
    assert renewed.owner == employee
    mine.refresh_from_db()
    assert mine.status == Certificate.Status.REVOKED
    assert mine.revocation_reason == "superseded"


def test_i_renew_with_a_portal_key_and_get_a_pkcs12(clients, theirs):
    response = clients["colleague"].post(
        f"{certificate_url(theirs.serial)}renew/",
        {"key_algorithm": "ec-p256", "pkcs12_password": PASSWORD},
        format="json",
    )

    assert response.status_code == 201
    _key, certificate, _chain = pkcs12.load_pkcs12(
        base64.b64decode(response.json()["pkcs12"]), PASSWORD
    )
    assert format(certificate.serial_number, "x") == response.json()["serial"]


def test_a_renewal_needing_approval_keeps_the_old_certificate_until_issued(
    clients, mine, key_pool, officer
):
    mine.template.requires_approval = True
    mine.template.save()
    new_key = key_pool.get(KeyAlgorithm.EC_P256, slot=1)

    response = clients["employee"].post(
        f"{certificate_url(mine.serial)}renew/", {"csr": csr_pem(new_key)}, format="json"
    )

    assert response.status_code == 202
    mine.refresh_from_db()
    assert mine.status == Certificate.Status.VALID
    clients["officer"].post(request_url(response.json()["id"], "approve"), {}, format="json")
    mine.refresh_from_db()
    assert mine.revocation_reason == "superseded"


@pytest.mark.parametrize(
    ("who", "status"), [("colleague", 404), ("officer", 403), ("anonymous", 401)]
)
def test_only_the_holder_may_renew(clients, mine, ec_p256_key, who, status):
    before = stored_counts()

    response = clients[who].post(
        f"{certificate_url(mine.serial)}renew/", {"csr": csr_pem(ec_p256_key)}, format="json"
    )

    assert response.status_code == status
    assert stored_counts() == before


def test_a_revoked_certificate_cannot_be_renewed(clients, mine, ec_p256_key):
    services.certificate_revoke(certificate=mine, reason="keyCompromise")

    response = clients["employee"].post(
        f"{certificate_url(mine.serial)}renew/", {"csr": csr_pem(ec_p256_key)}, format="json"
    )

    assert response.status_code == 409


def test_a_renewal_uses_the_certificates_template_whatever_the_body_says(clients, mine, key_pool):
    body = {**csr_body(key_pool.get(KeyAlgorithm.EC_P256, slot=1), "smime-dual-use")}

    response = clients["employee"].post(
        f"{certificate_url(mine.serial)}renew/", body, format="json"
    )

    assert response.status_code == 201
    assert Certificate.objects.get(serial=response.json()["serial"]).template == mine.template


def test_a_renewal_with_a_weak_password_stores_nothing(clients, theirs):
    before = stored_counts()

    response = clients["colleague"].post(
        f"{certificate_url(theirs.serial)}renew/",
        {**server_key_body(), "pkcs12_password": "password"},
        format="json",
    )

    assert response.status_code == 400
    assert "pkcs12_password" in response.json()
    assert stored_counts() == before


@pytest.mark.parametrize("make_client", [token_client, session_client])
def test_session_and_token_authentication_answer_alike(employee, colleague, mine, make_client):
    own, other = make_client(employee), make_client(colleague)

    assert serials(own.get(CERTIFICATES)) == [mine.serial]
    assert own.get(certificate_url(mine.serial)).status_code == 200
    assert other.get(certificate_url(mine.serial)).status_code == 404
    revoked = own.post(
        f"{certificate_url(mine.serial)}revoke/", {"reason": "superseded"}, format="json"
    )
    assert revoked.status_code == 200
