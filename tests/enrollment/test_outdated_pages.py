"""Certificates for an old address on the pages: the holder's list and certificate page
say so and offer renewal; /ra/leavers/ lists them for RA officers only, with due times and
a "Revoke now" link that chooses affiliationChanged; the console counts them."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine

from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from enrollment import leavers
from enrollment.models import Certificate
from tests.conftest import client_for
from tests.enrollment.tools import issue, new_key
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

GRACE = timedelta(hours=72)
NEW = "alice.smith@example.com"


@pytest.fixture(autouse=True)
def _grace(settings):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 72
    settings.PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN = 50


@pytest.fixture
def changed(employee, hierarchy, template):
    """Alice's address changed an hour ago, after the hourly run found her certificate."""
    certificate = issue(employee, template("smime-signing"), new_key())
    moment = timezone.now() - timedelta(hours=1)
    # Issued before the change (a CA cannot sign in the past, so the row says so).
    Certificate.objects.filter(pk=certificate.pk).update(created_at=moment - timedelta(hours=1))
    with time_machine.travel(moment, tick=False):
        employee.email = NEW
        employee.save()
    with time_machine.travel(moment + timedelta(minutes=10), tick=False):
        leavers.leavers_revoke()
    return certificate, moment


# --- the holder -------------------------------------------------------------------------


def test_my_certificates_say_which_is_for_my_old_address_and_when_it_is_revoked(
    employee_client, changed, employee, template
):
    certificate, moment = changed
    current = issue(employee, template("smime-signing"), new_key())

    page = employee_client.get("/certificates/").content.decode()

    assert page.count("outdated-notice") == 1
    assert f"your address is now {NEW}" in page
    assert f"It is revoked on {moment + GRACE:%Y-%m-%d %H:%M} UTC" in page
    assert f'href="/certificates/{certificate.pk}/#renew"' in page
    assert f'href="/certificates/{current.pk}/#renew"' not in page


def test_the_list_reads_the_notice_without_a_query_per_certificate(
    employee_client, changed, employee, template
):
    employee_client.get("/certificates/")  # warm the session and caches
    with CaptureQueriesContext(connection) as one:
        employee_client.get("/certificates/")
    for _ in range(3):
        issue(employee, template("smime-signing"), new_key())
    with CaptureQueriesContext(connection) as four:
        employee_client.get("/certificates/")

    assert len(four) == len(one)


def test_the_certificate_page_tells_the_holder_and_offers_renewal(employee_client, changed):
    certificate, moment = changed

    page = employee_client.get(f"/certificates/{certificate.pk}/").content.decode()

    assert "This certificate is for your old address, alice@example.com" in page
    assert f"your address is now {NEW}" in page
    assert f"on {moment + GRACE:%Y-%m-%d %H:%M} UTC" in page
    assert 'href="#renew"' in page
    assert 'id="renew"' in page


def test_an_officer_sees_the_notice_on_the_certificate_page_too(officer_client, changed):
    certificate, _moment = changed

    page = officer_client.get(f"/certificates/{certificate.pk}/").content.decode()

    assert "an address its holder no longer has" in page


def test_no_notice_before_the_address_changes(employee_client, employee, hierarchy, template):
    certificate = issue(employee, template("smime-signing"), new_key())

    assert "outdated-notice" not in employee_client.get("/certificates/").content.decode()
    page = employee_client.get(f"/certificates/{certificate.pk}/").content.decode()
    assert "outdated-notice" not in page


def test_the_notice_shows_at_once_even_before_the_hourly_run(
    employee_client, employee, hierarchy, template
):
    certificate = issue(employee, template("smime-signing"), new_key())
    employee.email = NEW
    employee.save()

    page = employee_client.get(f"/certificates/{certificate.pk}/").content.decode()

    assert "This certificate is for your old address" in page
    assert "a grace period after the address changed" in page


# --- /ra/leavers/ -----------------------------------------------------------------------


@pytest.fixture
def agent(db):
    user = UserFactory(username="karl")
    user.groups.add(Group.objects.get_or_create(name="Key recovery agents")[0])
    return user


@pytest.mark.parametrize(
    ("who", "status"),
    [
        ("officer", 200),
        ("admin_user", 200),
        ("employee", 403),  # the holder herself
        ("colleague", 403),
        ("agent", 403),
        (None, 302),
    ],
)
def test_only_ra_officers_see_the_certificates_for_old_addresses(request, changed, who, status):
    user = request.getfixturevalue(who) if who else None

    response = client_for(user).get("/ra/leavers/")

    assert response.status_code == status
    if status == 302:
        assert response["Location"].startswith("/accounts/login/")
    if status == 403:
        assert NEW.encode() not in response.content


@pytest.mark.parametrize("who", ["officer", "employee", None])
def test_the_page_still_takes_no_post(request, changed, who):
    user = request.getfixturevalue(who) if who else None

    response = client_for(user).post("/ra/leavers/")

    assert response.status_code in (302, 403, 405)


def test_it_lists_holder_old_and_new_address_since_due_and_a_revoke_link(officer_client, changed):
    certificate, moment = changed

    page = officer_client.get("/ra/leavers/").content.decode()

    row = page.split(f'id="outdated-{certificate.pk}"')[1].split("</tr>")[0]
    assert "Alice Andersson" in row
    assert '<td data-label="User name">alice</td>' in row
    assert "alice@example.com" in row
    assert NEW in row
    assert f"{moment:%Y-%m-%d %H:%M} UTC" in row
    assert f"{moment + GRACE:%Y-%m-%d %H:%M} UTC" in row
    link = f"/ra/certificates/?owner={certificate.owner_id}&amp;reason=affiliationChanged"
    assert f'href="{link}#certificate-{certificate.pk}"' in row


def test_the_revoke_link_chooses_affiliation_changed_for_the_outdated_certificate(
    officer_client, changed, employee, template
):
    """The link lists the holder's certificates by account; only the outdated one has the
    reason chosen in advance, not one for the new address."""
    certificate, _moment = changed
    current = issue(employee, template("smime-signing"), new_key())

    page = officer_client.get(
        "/ra/certificates/", {"owner": certificate.owner_id, "reason": "affiliationChanged"}
    ).content.decode()

    assert f'id="reason-{current.pk}"' in page
    assert page.count('<option value="affiliationChanged" selected>') == 1
    outdated_row = page.split(f'id="reason-{certificate.pk}"', 1)[1].split("</select>", 1)[0]
    assert '<option value="affiliationChanged" selected>' in outdated_row


def test_a_current_certificate_gets_no_preset_reason(officer_client, employee, hierarchy, template):
    current = issue(employee, template("smime-signing"), new_key())

    page = officer_client.get(
        "/ra/certificates/", {"q": current.serial, "reason": "affiliationChanged"}
    ).content.decode()

    assert f'id="reason-{current.pk}"' in page
    assert " selected>" not in page.split("<footer", 1)[0]  # the language form's aside


def test_the_page_says_when_none_is_outdated(officer_client, employee):
    page = officer_client.get("/ra/leavers/").content.decode()

    assert "No valid certificate names an address its holder no longer has." in page


def test_the_console_counts_them(officer_client, changed):
    page = officer_client.get("/ra/").content.decode()

    assert 'href="/ra/leavers/#outdated"' in page
    assert "1</span> certificate for an address its holder no longer has" in page
