"""An issuing CA's end: /health/ and the RA console warn long before it, and issuance says
when a certificate is cut short by it and refuses one cut absurdly short.

The test hierarchy's issuing CA lasts 1825 days and the seeded templates 365.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from django.core.exceptions import ImproperlyConfigured

from enrollment import health, keystore, services
from enrollment.models import (
    Certificate,
    CertificateAuthority,
    CertificateRequest,
    CertificateTemplate,
)
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import ROOT_PASSPHRASE, client_for
from tests.enrollment.api_tools import ENROLLMENTS, csr_body, token_client
from tests.enrollment.tools import new_key, row_counts
from tests.enrollment.web import enrol_url, enrol_with_portal_key

pytestmark = pytest.mark.django_db


def days_before_end(hierarchy, days: float):
    return hierarchy.issuing.not_after - timedelta(days=days)


@pytest.fixture
def at(time_machine):
    """Stop the clock at a moment: the day counts in messages are then exact."""
    return lambda moment: time_machine.move_to(moment, tick=False)


def issuing_check(ca_slug: str = "issuing") -> dict:
    return health.issuing_ca_status().as_dict()["authorities"][ca_slug]


@pytest.fixture
def successor(hierarchy) -> CertificateAuthority:
    return services.issuing_ca_create(
        spec=services.CaSpec("Test Issuing CA G2", "issuing-g2", KeyAlgorithm.EC_P256, 1825),
        root=hierarchy.root,
        root_key=keystore.OfflineKey(hierarchy.root_key_path, ROOT_PASSPHRASE),
        base_url="http://pki.example.com",
        organization_name="Example Org",
        country_name="GB",
    )


# --- the verdict ----------------------------------------------------------------------


def test_an_issuing_ca_far_from_its_end_is_ok(hierarchy):
    check = health.issuing_ca_status()

    assert check.status == "ok"
    issuing = check.as_dict()["authorities"]["issuing"]
    assert issuing["default"] is True
    assert issuing["templates"] == ["smime-dual-use", "smime-encryption", "smime-signing"]
    assert issuing["longest_validity_days"] == 365
    assert "root" not in check.as_dict()["authorities"]


def test_it_warns_once_a_certificate_issued_today_would_be_cut_short(hierarchy, at):
    at(days_before_end(hierarchy, 366))
    assert issuing_check()["status"] == "ok"

    at(days_before_end(hierarchy, 364))
    issuing = issuing_check()

    assert issuing["status"] == "warn"
    assert (
        "in 364 days: certificates from S/MIME Dual-use (365 days) issued now are cut short"
        in (issuing["warnings"][0])
    )
    assert "manage.py create_issuing_ca" in issuing["warnings"][0]


def test_with_short_templates_it_warns_the_configured_lead_time_ahead(hierarchy, at, settings):
    CertificateTemplate.objects.update(validity_days=30)
    at(days_before_end(hierarchy, 181))
    assert issuing_check()["status"] == "ok"

    at(days_before_end(hierarchy, 179))
    issuing = issuing_check()
    assert issuing["status"] == "warn"
    assert "(PKIPORTAL_CA_EXPIRY_WARNING_DAYS is 180)" in issuing["warnings"][0]

    settings.PKIPORTAL_CA_EXPIRY_WARNING_DAYS = 90
    assert issuing_check()["status"] == "ok"


def test_it_fails_once_certificates_would_be_refused_and_when_it_has_expired(hierarchy, at):
    at(days_before_end(hierarchy, 31))
    assert issuing_check()["status"] == "warn"

    at(days_before_end(hierarchy, 29))
    issuing = issuing_check()
    assert issuing["status"] == "fail"
    assert (
        "S/MIME Dual-use, S/MIME Encryption, S/MIME Signing no longer issue"
        in (issuing["problems"][0])
    )

    at(hierarchy.issuing.not_after + timedelta(seconds=1))
    issuing = issuing_check()
    assert issuing["status"] == "fail"
    assert issuing["problems"][0].startswith("Test Issuing CA expired on ")


def test_a_ca_no_template_uses_any_more_is_no_news_near_its_end(hierarchy, successor, at, template):
    services.issuing_ca_switch(to=successor)
    at(days_before_end(hierarchy, 10))

    check = health.issuing_ca_status()

    old = check.as_dict()["authorities"]["issuing"]
    assert (old["status"], old["templates"]) == ("ok", [])
    # Both were made the same day: the successor ends then too, and it is in use.
    assert check.as_dict()["authorities"]["issuing-g2"]["status"] == "fail"


def test_a_template_kept_on_the_old_ca_keeps_it_in_the_verdict(hierarchy, successor, at, template):
    services.issuing_ca_switch(to=successor)
    kept = template("smime-signing")
    kept.issuing_ca = hierarchy.issuing  # in the admin, after the switch
    kept.save()
    at(days_before_end(hierarchy, 100))

    old = issuing_check()

    assert old["templates"] == ["smime-signing"]
    assert old["status"] == "warn"


def test_an_inactive_template_does_not_hold_a_ca_in_use(hierarchy, at):
    CertificateTemplate.objects.update(is_active=False)
    at(days_before_end(hierarchy, 10))

    issuing = issuing_check()

    assert (issuing["status"], issuing["templates"], issuing["warnings"]) == ("ok", [], [])


def test_templates_without_a_default_ca_cannot_issue(hierarchy):
    CertificateAuthority.objects.update(is_default=False)

    check = health.issuing_ca_status()

    assert check.status == "fail"
    assert check.problems == [
        "No issuing CA is the default, so smime-dual-use, smime-encryption, smime-signing "
        "cannot issue: make one the default with `manage.py switch_issuing_ca`."
    ]


def fresh_crls(hierarchy) -> None:
    """Sign every CRL now, so that /health/ judges the issuing CA alone."""
    services.crl_publish(
        ca=hierarchy.root,
        offline_key=keystore.OfflineKey(hierarchy.root_key_path, ROOT_PASSPHRASE),
    )
    services.crl_publish(ca=hierarchy.issuing)


def test_health_answers_warn_then_fail_and_only_staff_see_why(hierarchy, at, officer, employee):
    at(days_before_end(hierarchy, 100))
    fresh_crls(hierarchy)

    response = client_for(officer).get("/health/")
    assert (response.status_code, response.json()["status"]) == (200, "warn")
    assert response.json()["checks"]["issuing_ca"]["status"] == "warn"
    assert client_for(employee).get("/health/").json() == {"status": "warn"}

    at(days_before_end(hierarchy, 20))
    fresh_crls(hierarchy)

    response = client_for(officer).get("/health/")
    assert (response.status_code, response.json()["status"]) == (503, "fail")
    assert response.json()["checks"]["issuing_ca"]["authorities"]["issuing"]["problems"]
    assert client_for(None).get("/health/").json() == {"status": "fail"}


def test_the_ra_console_shows_the_end_to_officers_only(hierarchy, at, officer, employee):
    at(days_before_end(hierarchy, 100))

    page = client_for(officer).get("/ra/").content.decode()

    assert "An issuing CA nears its end." in page
    assert "certificates from S/MIME Dual-use (365 days) issued now are cut short" in page
    assert "Replace soon" in page
    # The templates it issues for, by the names people know them by (slugs are /health/'s).
    assert "S/MIME Dual-use, S/MIME Encryption, S/MIME Signing" in page
    assert client_for(employee).get("/ra/").status_code == 403

    at(days_before_end(hierarchy, 20))
    page = client_for(officer).get("/ra/").content.decode()
    assert "Templates cannot issue: an issuing CA has reached its end." in page
    assert "Cannot issue" in page


# --- issuing near the end -------------------------------------------------------------


def test_a_certificate_cut_short_by_the_ca_says_so(hierarchy, at, employee):
    at(days_before_end(hierarchy, 100))

    response = token_client(employee).post(ENROLLMENTS, csr_body(new_key()), format="json")

    assert response.status_code == 201
    body = response.json()
    certificate = Certificate.objects.get(serial=body["serial"])
    assert certificate.not_after == hierarchy.issuing.not_after
    assert (
        f"Valid until {certificate.not_after:%Y-%m-%d %H:%M} UTC (100 days), shorter than the "
        "template's 365 days, because the issuing CA Test Issuing CA ends then."
    ) in body["notice"]
    page = client_for(employee).get(f"/certificates/{certificate.pk}/").content.decode()
    assert "100 days, shorter than the template's 365 days, because the issuing CA" in page


def test_the_enrolment_page_says_so_before_and_the_next_page_after_a_download(
    hierarchy, at, employee
):
    at(days_before_end(hierarchy, 100))
    me = client_for(employee)

    before = me.get(enrol_url("smime-signing")).content.decode()
    assert "Shorter than 365 days." in before
    assert "because the issuing CA Test Issuing CA ends then" in before

    download = enrol_with_portal_key(me, "smime-signing")
    assert download["Content-Type"] == "application/x-pkcs12"
    after = me.get("/certificates/").content.decode()
    assert "Your new certificate: Valid until" in after
    assert "(100 days), shorter than the template&#x27;s 365 days" in after


def test_an_ordinary_certificate_says_nothing(hierarchy, employee):
    response = token_client(employee).post(ENROLLMENTS, csr_body(new_key()), format="json")
    certificate = Certificate.objects.get(serial=response.json()["serial"])

    assert "shorter than" not in response.json()["notice"]
    # Nor after its template was given a longer validity.
    CertificateTemplate.objects.update(validity_days=730)
    page = client_for(employee).get(f"/certificates/{certificate.pk}/").content.decode()
    assert "shorter than the template" not in page
    assert (
        "Shorter than" not in client_for(employee).get(enrol_url("smime-signing")).content.decode()
    )


def test_a_certificate_that_would_last_under_30_days_is_refused_and_nothing_is_stored(
    hierarchy, at, employee
):
    at(days_before_end(hierarchy, 29))
    before = row_counts()

    response = token_client(employee).post(ENROLLMENTS, csr_body(new_key()), format="json")

    assert response.status_code == 503
    assert "would last 29 days instead of 365 days: it is not issued" in response.json()["detail"]
    assert row_counts() == before
    assert not CertificateRequest.objects.exists()
    page = client_for(employee).get(enrol_url("smime-signing")).content.decode()
    assert "This template cannot issue right now." in page
    refused = enrol_with_portal_key(client_for(employee), "smime-signing")
    assert refused.status_code == 503
    assert "would last 29 days instead of 365 days" in refused.content.decode()


def test_with_no_minimum_it_issues_until_the_cas_last_day(hierarchy, at, employee, settings):
    settings.PKIPORTAL_MIN_CERTIFICATE_DAYS = 0
    at(days_before_end(hierarchy, 2))

    response = token_client(employee).post(ENROLLMENTS, csr_body(new_key()), format="json")

    assert response.status_code == 201
    assert "(2 days), shorter than the template's 365 days" in response.json()["notice"]


def test_a_template_asking_for_fewer_days_than_are_left_is_not_refused(
    hierarchy, at, employee, template
):
    short = template("smime-signing")
    short.validity_days = 7
    short.save()
    at(days_before_end(hierarchy, 10))

    response = token_client(employee).post(ENROLLMENTS, csr_body(new_key()), format="json")

    assert response.status_code == 201
    certificate = Certificate.objects.get(serial=response.json()["serial"])
    assert certificate.not_after - certificate.not_before == timedelta(days=7, seconds=-1)
    assert "shorter than" not in response.json()["notice"]


def test_an_expired_issuing_ca_refuses_with_a_503_that_names_it(hierarchy, at, employee):
    at(hierarchy.issuing.not_after + timedelta(minutes=1))

    response = token_client(employee).post(ENROLLMENTS, csr_body(new_key()), format="json")

    assert response.status_code == 503
    assert response.json()["detail"].startswith("The issuing CA Test Issuing CA expired on ")


# --- settings ---------------------------------------------------------


def test_the_settings_have_sensible_defaults_and_refuse_nonsense(load_settings):
    loaded = load_settings()
    assert loaded["PKIPORTAL_CA_EXPIRY_WARNING_DAYS"] == 180
    assert loaded["PKIPORTAL_MIN_CERTIFICATE_DAYS"] == 30

    with pytest.raises(ImproperlyConfigured, match="PKIPORTAL_CA_EXPIRY_WARNING_DAYS"):
        load_settings(PKIPORTAL_CA_EXPIRY_WARNING_DAYS="0")
    with pytest.raises(ImproperlyConfigured, match="PKIPORTAL_MIN_CERTIFICATE_DAYS"):
        load_settings(PKIPORTAL_CA_EXPIRY_WARNING_DAYS="180", PKIPORTAL_MIN_CERTIFICATE_DAYS="900")
