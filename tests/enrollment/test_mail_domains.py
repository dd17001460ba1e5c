"""PKIPORTAL_MAIL_DOMAINS: every path that issues refuses an address outside the
organisation's mail domains, says so up front, and stores nothing (S/MIME BR 3.2.2.1)."""

from __future__ import annotations

import html
from io import StringIO

import pytest

from cryptography import x509

from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from enrollment import keystore, services
from enrollment.checks import mail_domains_are_set
from enrollment.exceptions import PolicyViolation
from enrollment.models import AuditEvent, Certificate, CertificateAuthority, CertificateRequest
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for
from tests.enrollment.api_tools import (
    CERTIFICATES,
    ENROLLMENTS,
    PASSWORD,
    csr_body,
    enrollment_url,
    request_url,
    server_key_body,
    token_client,
)
from tests.enrollment.tools import issue, new_key, row_counts
from tests.enrollment.web import PASSWORD as WEB_PASSWORD
from tests.enrollment.web import enrol_url, enrol_with_csr, enrol_with_portal_key
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

OUTSIDE = "eve@partner.example.org"


@pytest.fixture
def restricted(settings):
    """The organisation controls example.com and the hosts below corp.example.com."""
    settings.PKIPORTAL_MAIL_DOMAINS = ("example.com", ".corp.example.com")
    return settings


@pytest.fixture
def outsider(db):
    """An account whose address (set by an admin or a directory sync) is elsewhere."""
    return UserFactory(username="eve", first_name="Eve", last_name="Outside", email=OUTSIDE)


def nothing_stored_since(before: dict[str, int], requests: int) -> bool:
    return row_counts() == before and CertificateRequest.objects.count() == requests


def assert_names_the_address(text: str, address: str = OUTSIDE) -> None:
    text = html.unescape(text)  # pages escape the apostrophe
    assert address in text
    assert "outside the organisation's mail domains (example.com, .corp.example.com)" in text
    assert "An administrator must correct" in text


# --- the rule, once, in services.subject_for ------------------------------------------


@pytest.mark.parametrize(
    "email",
    ["alice@example.com", "Alice@EXAMPLE.COM", "bob@mail.corp.example.com"],
)
def test_addresses_within_the_domains_are_issued(restricted, hierarchy, template, email):
    owner = UserFactory(email=email)

    certificate = issue(owner, template("smime-signing"), new_key())

    assert certificate.email == email.lower()


@pytest.mark.parametrize(
    "email",
    [
        OUTSIDE,
        "alice@corp.example.com",  # ".corp.example.com" is the hosts below it, not itself
        "alice@example.com.evil.org",
        "alice@notexample.com",
        "alice@example.com.",
    ],
)
def test_addresses_outside_the_domains_are_refused_naming_the_field(
    restricted, hierarchy, template, email
):
    owner = UserFactory(email=email)
    before = row_counts()

    with pytest.raises(PolicyViolation) as refused:
        issue(owner, template("smime-signing"), new_key())

    assert refused.value.field == "email"
    assert email.lower() in refused.value.message
    assert row_counts() == before


def test_without_domains_every_address_is_issued_as_before(settings, hierarchy, template, outsider):
    settings.PKIPORTAL_MAIL_DOMAINS = ()

    assert issue(outsider, template("smime-signing"), new_key()).email == OUTSIDE


def test_the_csr_hot_path_gains_no_sql_statement(
    restricted, hierarchy, template, employee, django_assert_max_num_queries
):
    """request_submit checks the address it already holds: an enrolment costs what it did
    with the setting empty (counted first, then with the restriction)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def enrol() -> int:
        with CaptureQueriesContext(connection) as queries:
            services.request_submit(
                requester=employee,
                template=template("smime-signing"),
                csr=csr_body(new_key())["csr"],
                channel="web",
            )
        return len(queries)

    restricted.PKIPORTAL_MAIL_DOMAINS = ()
    enrol()  # warm: the first enrolment of a process loads what later ones reuse
    unrestricted = enrol()
    restricted.PKIPORTAL_MAIL_DOMAINS = ("example.com",)

    assert enrol() == unrestricted


# --- web /enroll/ ----------------------------------------------------------------------


def test_the_enrolment_pages_say_so_before_anything_is_submitted(restricted, hierarchy, outsider):
    client = client_for(outsider)

    for url in (reverse("enrollment:enroll-index"), enrol_url("smime-signing")):
        response = client.get(url)

        assert response.status_code == 200
        assert_names_the_address(response.content.decode())


def test_the_enrolment_pages_say_nothing_for_an_address_within(restricted, hierarchy, employee):
    client = client_for(employee)

    for url in (reverse("enrollment:enroll-index"), enrol_url("smime-signing")):
        assert 'id="address-problem"' not in client.get(url).content.decode()


def test_web_enrolment_with_a_portal_key_is_refused_and_stores_nothing(
    restricted, hierarchy, outsider
):
    before, requests = row_counts(), CertificateRequest.objects.count()

    response = enrol_with_portal_key(client_for(outsider))

    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")
    assert_names_the_address(response.content.decode())
    assert nothing_stored_since(before, requests)


def test_web_enrolment_with_a_csr_is_refused_and_stores_nothing(restricted, hierarchy, outsider):
    before, requests = row_counts(), CertificateRequest.objects.count()

    response = enrol_with_csr(client_for(outsider), csr=csr_body(new_key())["csr"])

    assert response.status_code == 400
    assert_names_the_address(response.content.decode())
    assert nothing_stored_since(before, requests)


def test_web_renewal_is_refused_once_the_address_left_the_domains(
    restricted, hierarchy, template, employee
):
    certificate = issue(employee, template("smime-signing"), new_key())
    employee.email = "alice@new-employer.example.net"
    employee.save()
    before, requests = row_counts(), CertificateRequest.objects.count()

    response = enrol_with_portal_key(client_for(employee), renewal_of=certificate.pk)

    assert response.status_code == 400
    assert_names_the_address(response.content.decode(), "alice@new-employer.example.net")
    assert nothing_stored_since(before, requests)
    assert Certificate.objects.valid().filter(pk=certificate.pk).exists()


# --- API -------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["csr", "server_key"])
def test_api_enrolment_is_refused_with_the_email_field_named(restricted, hierarchy, outsider, body):
    data = csr_body(new_key()) if body == "csr" else server_key_body("smime-signing")
    before, requests = row_counts(), CertificateRequest.objects.count()

    response = token_client(outsider).post(ENROLLMENTS, data, format="json")

    assert response.status_code == 400
    (message,) = response.json()["email"]
    assert_names_the_address(message)
    assert nothing_stored_since(before, requests)


def test_api_renewal_is_refused_once_the_address_left_the_domains(
    restricted, hierarchy, template, employee
):
    certificate = issue(employee, template("smime-signing"), new_key())
    employee.email = OUTSIDE
    employee.save()
    before, requests = row_counts(), CertificateRequest.objects.count()

    response = token_client(employee).post(
        f"{CERTIFICATES}{certificate.serial}/renew/",
        {"csr": csr_body(new_key())["csr"]},
        format="json",
    )

    assert response.status_code == 400
    assert_names_the_address(response.json()["email"][0])
    assert nothing_stored_since(before, requests)


@pytest.mark.parametrize("who", ["employee", "colleague"])
def test_people_within_the_domains_enrol_through_the_api_as_before(
    request, restricted, hierarchy, who
):
    response = token_client(request.getfixturevalue(who)).post(
        ENROLLMENTS, csr_body(new_key()), format="json"
    )

    assert response.status_code == 201


def test_anonymous_callers_are_still_refused_before_any_address_is_looked_at(restricted, hierarchy):
    from rest_framework.test import APIClient

    response = APIClient().post(ENROLLMENTS, csr_body(new_key()), format="json")

    assert response.status_code == 401


# --- approvals and later downloads ------------------------------------------------------


@pytest.fixture
def pending_csr(restricted, hierarchy, approval, employee):
    """A CSR request made while the address was within; then a sync moved it out."""
    approval("smime-signing")
    response = token_client(employee).post(ENROLLMENTS, csr_body(new_key()), format="json")
    assert response.status_code == 202
    employee.email = OUTSIDE
    employee.save()
    return CertificateRequest.objects.get(pk=response.json()["id"])


@pytest.fixture
def approved_portal_key(restricted, hierarchy, approval, employee, officer):
    """A portal-key request approved while the address was within, then moved out."""
    approval("smime-dual-use")
    response = token_client(employee).post(
        ENROLLMENTS, server_key_body("smime-dual-use"), format="json"
    )
    assert response.status_code == 202
    request = CertificateRequest.objects.get(pk=response.json()["id"])
    services.request_approve(request=request, officer=officer, reason="Known person")
    employee.email = OUTSIDE
    employee.save()
    return request


def test_an_officer_approving_is_told_the_address_is_out_of_domain(pending_csr, officer):
    before = row_counts()

    response = token_client(officer).post(
        request_url(pending_csr.pk, "approve"), {"reason": "Known"}, format="json"
    )

    assert response.status_code == 400
    (message,) = response.json()["email"]
    assert_names_the_address(message)
    assert "the request stays pending" in message
    pending_csr.refresh_from_db()
    assert pending_csr.state == CertificateRequest.State.PENDING
    assert row_counts() == before  # no certificate, no approval event


def test_the_ra_page_approval_says_so_too(pending_csr, officer):
    response = client_for(officer).post(
        reverse("enrollment:ra-decide", args=[pending_csr.pk]),
        {"decision": "approve", "reason": "Known"},
    )

    assert response.status_code == 400
    assert_names_the_address(response.content.decode())
    pending_csr.refresh_from_db()
    assert pending_csr.state == CertificateRequest.State.PENDING


def test_rejecting_such_a_request_still_works(pending_csr, officer):
    response = token_client(officer).post(
        request_url(pending_csr.pk, "reject"), {"reason": "Left us"}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["state"] == "rejected"


def test_the_approved_download_is_refused_on_the_web_and_the_request_waits(
    approved_portal_key, employee
):
    before = row_counts()

    response = client_for(employee).post(
        reverse("enrollment:request-detail", args=[approved_portal_key.pk]),
        {
            "pkcs12_password": WEB_PASSWORD,
            "pkcs12_password_confirm": WEB_PASSWORD,
            "pkcs12_format": "modern",
        },
    )

    assert response.status_code == 400
    assert_names_the_address(response.content.decode())
    approved_portal_key.refresh_from_db()
    assert approved_portal_key.state == CertificateRequest.State.APPROVED
    assert row_counts() == before


def test_the_approved_download_is_refused_by_the_api(approved_portal_key, employee):
    before = row_counts()

    response = token_client(employee).post(
        f"{enrollment_url(approved_portal_key.pk)}collect/",
        {"pkcs12_password": PASSWORD, "pkcs12_format": "modern"},
        format="json",
    )

    assert response.status_code == 400
    assert_names_the_address(response.json()["email"][0])
    assert row_counts() == before


def test_the_download_works_once_an_administrator_corrects_the_address(
    approved_portal_key, employee
):
    employee.email = "alice@example.com"
    employee.save()

    response = token_client(employee).post(
        f"{enrollment_url(approved_portal_key.pk)}collect/",
        {"pkcs12_password": PASSWORD, "pkcs12_format": "modern"},
        format="json",
    )

    assert response.status_code == 201


# --- deployment check and health ---------------------------------------------------------


def test_check_deploy_warns_while_the_domains_are_empty(settings):
    settings.PKIPORTAL_MAIL_DOMAINS = ()
    out = StringIO()

    (warning,) = mail_domains_are_set()
    call_command("check", "--deploy", stdout=out, stderr=out)

    assert warning.id == "pkiportal.W002"
    assert "pkiportal.W002" in out.getvalue()


def test_check_deploy_is_quiet_once_they_are_set(restricted):
    assert mail_domains_are_set() == []


def test_health_names_the_domains_without_turning_red(restricted, hierarchy, officer):
    body = client_for(officer).get("/health/").json()

    assert body["checks"]["mail_domains"] == {
        "status": "ok",
        "restricted": True,
        "domains": ["example.com", ".corp.example.com"],
    }


def test_health_says_when_every_domain_is_issued_for(settings, hierarchy, officer):
    settings.PKIPORTAL_MAIL_DOMAINS = ()

    check = client_for(officer).get("/health/").json()["checks"]["mail_domains"]

    assert check["status"] == "ok"
    assert check["restricted"] is False
    assert "PKIPORTAL_MAIL_DOMAINS is empty" in check["detail"]


# --- the settings variable ---------------------------------------------------------------


def test_the_setting_is_read_canonical(load_settings):
    loaded = load_settings(PKIPORTAL_MAIL_DOMAINS=" Example.COM, .Corp.Example.com ,bücher.example")

    assert loaded["PKIPORTAL_MAIL_DOMAINS"] == (
        "example.com",
        ".corp.example.com",
        "xn--bcher-kva.example",
    )


def test_the_setting_is_empty_by_default(load_settings):
    assert load_settings()["PKIPORTAL_MAIL_DOMAINS"] == ()


@pytest.mark.parametrize(
    "value", ["alice@example.com", "example.com.", "localhost", "*.example.com", "exa mple.com"]
)
def test_a_bad_setting_stops_the_portal_naming_it(load_settings, value):
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="PKIPORTAL_MAIL_DOMAINS"):
        load_settings(PKIPORTAL_MAIL_DOMAINS=value)


# --- name-constrained issuing CAs from the commands ---------------------------------------


def permitted(ca: CertificateAuthority) -> tuple[bool, list[str]] | None:
    try:
        extension = ca.certificate.extensions.get_extension_for_class(x509.NameConstraints)
    except x509.ExtensionNotFound:
        return None
    subtrees = extension.value.permitted_subtrees or []
    assert extension.value.excluded_subtrees is None
    return extension.critical, [name.value for name in subtrees]


def create_pki(tmp_path, *args: str) -> str:
    out = StringIO()
    call_command(
        "create_pki",
        "--country", "GB",
        "--root-key-out", str(tmp_path / "root.pem"),
        "--root-passphrase-file", str(tmp_path / "passphrase"),
        "--root-key-algorithm", "ec-p384",
        "--issuing-key-algorithm", "ec-p256",
        *args,
        stdout=out,
    )  # fmt: skip
    return out.getvalue()


def test_create_pki_constrains_the_issuing_ca_to_the_setting_and_not_the_root(restricted, tmp_path):
    out = create_pki(tmp_path)

    root = CertificateAuthority.objects.roots().get()
    issuing = CertificateAuthority.objects.get(is_default=True)
    assert permitted(issuing) == (True, ["example.com", ".corp.example.com"])
    assert permitted(root) is None
    assert "name-constrained to example.com, .corp.example.com" in out
    event = AuditEvent.objects.get(action="ca.create", object_id=str(issuing.pk))
    assert event.detail["name_constraints"] == ["example.com", ".corp.example.com"]


def test_create_pki_takes_explicit_domains_and_says_they_differ(restricted, tmp_path):
    out = create_pki(tmp_path, "--mail-domains", "Example.ORG")

    issuing = CertificateAuthority.objects.get(is_default=True)
    assert permitted(issuing) == (True, ["example.org"])
    assert "enrolment refuses by it, relying parties by the CA's constraint" in out


def test_create_pki_leaves_it_unconstrained_on_request(restricted, tmp_path):
    out = create_pki(tmp_path, "--no-name-constraints")

    assert permitted(CertificateAuthority.objects.get(is_default=True)) is None
    assert "not name-constrained" in out


def test_create_pki_leaves_it_unconstrained_without_domains(settings, tmp_path):
    settings.PKIPORTAL_MAIL_DOMAINS = ()

    create_pki(tmp_path)

    assert permitted(CertificateAuthority.objects.get(is_default=True)) is None


@pytest.mark.parametrize("value", ["alice@example.com", "", "not a domain"])
def test_create_pki_refuses_bad_domains_before_any_key_is_made(restricted, tmp_path, value):
    with pytest.raises(CommandError, match="--mail-domains"):
        create_pki(tmp_path, "--mail-domains", value)

    assert not CertificateAuthority.objects.exists()
    assert not (tmp_path / "root.pem").exists()


def test_create_issuing_ca_makes_a_constrained_successor_that_issues_within(
    restricted, hierarchy, template, employee, tmp_path
):
    passphrase = tmp_path / "root-passphrase"
    passphrase.write_bytes(hierarchy.root_passphrase)
    out = StringIO()

    call_command(
        "create_issuing_ca",
        "--root-key-file", str(hierarchy.root_key_path),
        "--root-passphrase-file", str(passphrase),
        "--slug", "issuing-constrained",
        "--name", "Example Org Constrained Issuing CA",
        "--make-default",
        stdout=out,
    )  # fmt: skip

    successor = CertificateAuthority.objects.get(slug="issuing-constrained")
    assert permitted(successor) == (True, ["example.com", ".corp.example.com"])
    assert permitted(hierarchy.issuing) is None  # the existing CA is unchanged
    certificate = issue(employee, template("smime-signing"), new_key())
    assert certificate.ca == successor


def test_create_issuing_ca_refuses_bad_domains_before_the_root_key_is_read(
    restricted, hierarchy, tmp_path
):
    with pytest.raises(CommandError, match="is a mailbox"):
        call_command(
            "create_issuing_ca",
            "--root-key-file", str(hierarchy.root_key_path),
            "--root-passphrase-file", str(tmp_path / "missing"),
            "--mail-domains", "alice@example.com",
        )  # fmt: skip

    assert CertificateAuthority.objects.count() == 2


def test_demo_data_refuses_a_domain_the_setting_excludes(restricted):
    with pytest.raises(CommandError, match="outside PKIPORTAL_MAIL_DOMAINS"):
        call_command("create_demo_data", "--domain", "example.net", "--key-algorithm", "ec-p256")

    assert not CertificateAuthority.objects.exists()


@pytest.mark.parametrize(
    ("domains", "demo_domain"),
    [
        ((), "example.com"),
        (("example.com", ".corp.example.com"), "example.com"),
        (("corp.example",), "corp.example"),
        ((".corp.example", "corp.example"), "demo.corp.example"),
        ((".example.com",), "demo.example.com"),  # subdomains only: not example.com itself
    ],
)
def test_demo_accounts_take_a_domain_the_setting_allows(domains, demo_domain):
    """`PKIPORTAL_MAIL_DOMAINS=corp.example make run` must not stop at the demo data."""
    from enrollment.management.commands.create_demo_data import _default_domain
    from enrollment.x509.mail_domains import address_permitted

    assert _default_domain(domains) == demo_domain
    assert not domains or address_permitted(f"alice@{demo_domain}", domains)


def test_server_keys_are_refused_by_the_service_too(restricted, hierarchy, template, outsider):
    with pytest.raises(PolicyViolation, match="outside the organisation's mail domains"):
        services.certificate_issue_with_server_key(
            template=template("smime-signing"),
            owner=outsider,
            key_algorithm=KeyAlgorithm.EC_P256,
            pkcs12_password="a long enough password",
        )


# --- a CA constrained more narrowly than the setting ------------------------------------------


@pytest.fixture
def constrained_successor(hierarchy):
    """A successor issuing CA constrained to example.com only; every template moves to it."""
    ca = services.issuing_ca_create(
        spec=services.CaSpec(
            "Constrained Issuing CA", "issuing-constrained", KeyAlgorithm.EC_P256, 1825
        ),
        root=hierarchy.root,
        root_key=keystore.OfflineKey(hierarchy.root_key_path, hierarchy.root_passphrase),
        base_url="http://pki.example.com",
        organization_name="Example Org",
        country_name="GB",
        mail_domains=("example.com",),
    )
    services.issuing_ca_switch(to=ca)
    return ca


def test_an_address_the_ca_constraint_excludes_is_refused_as_the_operators_problem(
    settings, constrained_successor
):
    """The setting was widened after the CA was made: the portal would issue a certificate
    that relying parties reject, so it refuses, 503, saying what the operator must do."""
    settings.PKIPORTAL_MAIL_DOMAINS = ("example.com", "example.org")
    dora = UserFactory(username="dora", email="dora@example.org")
    before, requests = row_counts(), CertificateRequest.objects.count()

    response = token_client(dora).post(ENROLLMENTS, csr_body(new_key()), format="json")

    assert response.status_code == 503
    detail = response.json()["detail"]
    assert "Constrained Issuing CA is name-constrained to example.com" in detail
    assert "cannot certify dora@example.org" in detail
    assert nothing_stored_since(before, requests)


def test_addresses_the_ca_constraint_permits_are_issued_from_it(
    settings, constrained_successor, employee
):
    settings.PKIPORTAL_MAIL_DOMAINS = ("example.com",)

    response = token_client(employee).post(ENROLLMENTS, csr_body(new_key()), format="json")

    assert response.status_code == 201
    assert Certificate.objects.get().ca == constrained_successor


def test_approval_is_refused_when_the_ca_cannot_certify_the_address(
    settings, constrained_successor, approval, officer
):
    """Refused at approval, not at each download after it: the request stays pending."""
    settings.PKIPORTAL_MAIL_DOMAINS = ("example.com", "example.org")
    approval("smime-dual-use")
    dora = UserFactory(username="dora", email="dora@example.org")
    response = token_client(dora).post(
        ENROLLMENTS, server_key_body("smime-dual-use"), format="json"
    )
    assert response.status_code == 202
    request = CertificateRequest.objects.get(pk=response.json()["id"])

    answer = token_client(officer).post(
        request_url(request.pk, "approve"), {"reason": "Known"}, format="json"
    )

    assert answer.status_code == 503
    assert "cannot certify dora@example.org" in answer.json()["detail"]
    request.refresh_from_db()
    assert request.state == CertificateRequest.State.PENDING


@pytest.mark.parametrize(
    ("domains", "missing"),
    [(("example.com", "example.org"), "example.org"), ((), "any other domain")],
)
def test_health_warns_of_a_ca_constrained_more_narrowly_than_the_setting(
    settings, constrained_successor, officer, domains, missing
):
    settings.PKIPORTAL_MAIL_DOMAINS = domains

    response = client_for(officer).get("/health/")

    check = response.json()["checks"]["mail_domains"]
    assert check["status"] == "warn"  # a warning, never a failure
    (warning,) = check["warnings"]
    assert f"Constrained Issuing CA is name-constrained to example.com: addresses in {missing}" in (
        warning
    )


def test_health_is_quiet_when_the_ca_covers_the_setting(settings, constrained_successor, officer):
    settings.PKIPORTAL_MAIL_DOMAINS = ("example.com",)

    check = client_for(officer).get("/health/").json()["checks"]["mail_domains"]

    assert check == {"status": "ok", "restricted": True, "domains": ["example.com"]}


def test_the_ra_queue_marks_a_request_whose_address_left_the_domains(pending_csr, officer):
    response = client_for(officer).get(reverse("enrollment:ra-requests"))

    page = response.content.decode()
    assert f'id="address-outside-{pending_csr.pk}"' in page
    assert_names_the_address(page)


def test_the_ra_queue_marks_nothing_for_addresses_within(
    restricted, hierarchy, approval, employee, officer
):
    approval("smime-signing")
    token_client(employee).post(ENROLLMENTS, csr_body(new_key()), format="json")

    page = client_for(officer).get(reverse("enrollment:ra-requests")).content.decode()

    assert "address-outside-" not in page
    assert "Alice Andersson" in page
