"""/ra/leavers/: deactivated accounts still holding certificates, for RA officers only;
the console's tile and warning; revoking all of a leaver's certificates from there, or one
at a time with the reason chosen in advance; what it says when nothing runs on a schedule."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import time_machine

from django.contrib.auth.models import Group
from django.contrib.messages import get_messages
from django.test import Client
from django.utils import timezone

from enrollment import leavers, mailboxes, outdated
from enrollment.models import AuditEvent, Certificate
from tests.conftest import client_for
from tests.enrollment.tools import issue, new_key
from tests.factories import UserFactory
from tests.second_factor import verified_login

pytestmark = pytest.mark.django_db

GRACE = timedelta(hours=72)


@pytest.fixture(autouse=True)
def _grace_and_cap(settings):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 72
    settings.PKIPORTAL_REVOKE_DEACTIVATED_MAX_PER_RUN = 2


@pytest.fixture
def leaver(hierarchy, template):
    """Dora left an hour ago; she still holds two certificates."""
    dora = UserFactory(username="dora", first_name="Dora", last_name="Departed")
    for slug in ("smime-signing", "smime-dual-use"):
        issue(dora, template(slug), new_key())
    dora.is_active = False
    with time_machine.travel(timezone.now() - timedelta(hours=1), tick=False):
        dora.save()
    dora.refresh_from_db()
    return dora


@pytest.fixture
def agent(db):
    user = UserFactory(username="karl")
    user.groups.add(Group.objects.get_or_create(name="Key recovery agents")[0])
    return user


@pytest.mark.parametrize(
    ("who", "status"),
    [
        ("officer", 200),
        ("admin_user", 200),  # superusers count as officers
        ("employee", 403),
        ("colleague", 403),
        ("agent", 403),
        ("leaver", 302),  # an inactive account is not signed in at all
        (None, 302),
    ],
)
def test_only_ra_officers_see_who_has_left(request, leaver, who, status):
    user = request.getfixturevalue(who) if who else None

    response = client_for(user).get("/ra/leavers/")

    assert response.status_code == status
    if status == 302:
        assert response["Location"].startswith("/accounts/login/")
    if status == 403:
        assert b"dora" not in response.content


@pytest.mark.parametrize("who", ["officer", "employee", None])
def test_the_page_takes_no_post(request, leaver, who):
    user = request.getfixturevalue(who) if who else None

    response = client_for(user).post("/ra/leavers/")

    assert response.status_code in (302, 403, 405)
    assert leaver.certificates.filter(status="valid").count() == 2


def test_it_lists_name_user_name_when_deactivated_and_due_and_how_many(
    officer_client, leaver, employee
):
    page = officer_client.get("/ra/leavers/").content.decode()

    row = page.split('id="leaver-')[1]
    assert "Dora Departed" in row
    assert '<td data-label="User name">dora</td>' in row
    assert f"{leaver.deactivated_at:%Y-%m-%d %H:%M} UTC" in row
    assert f"{leaver.deactivated_at + GRACE:%Y-%m-%d %H:%M} UTC" in row
    assert '<td data-label="Certificates">2</td>' in row
    assert "Revoke all 2 certificates" in row
    assert f'action="/ra/leavers/{leaver.pk}/revoke/"' in row
    assert f'href="/ra/certificates/?owner={leaver.pk}&amp;reason=affiliationChanged"' in row
    assert "?q=" not in row  # no name search: it also finds namesakes
    assert "alice" not in page  # still here


def test_accounts_without_valid_certificates_are_not_listed(officer_client, leaver):
    for certificate in leaver.certificates.all():
        Certificate.objects.filter(pk=certificate.pk).update(
            status="revoked", revoked_at=timezone.now(), revocation_reason="affiliationChanged"
        )

    page = officer_client.get("/ra/leavers/").content.decode()

    assert "dora" not in page
    assert "No deactivated account holds a valid certificate." in page


def test_with_automatic_revocation_off_the_page_says_so(officer_client, leaver, settings):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = None

    page = officer_client.get("/ra/leavers/").content.decode()

    assert "automatic revocation is off" in page
    assert "Dora Departed" in page


def test_the_link_opens_the_officer_revocation_page_with_the_reason_chosen(officer_client, leaver):
    page = officer_client.get(
        "/ra/certificates/", {"q": "dora", "reason": "affiliationChanged"}
    ).content.decode()

    assert page.count('<option value="affiliationChanged" selected>') == 2
    assert page.count('name="preset_reason" value="affiliationChanged"') == 2


def test_the_reason_is_chosen_only_for_people_who_left(officer_client, leaver, template):
    """The search also finds an active doraine: her certificate is listed, its reason not
    chosen in advance."""
    doraine = UserFactory(username="doraine", first_name="Doraine", last_name="Active")
    staying = issue(doraine, template("smime-signing"), new_key())

    page = officer_client.get(
        "/ra/certificates/", {"q": "dora", "reason": "affiliationChanged"}
    ).content.decode()

    assert f'id="reason-{staying.pk}"' in page
    row = page.split(f'id="reason-{staying.pk}"', 1)[1].split("</select>", 1)[0]
    assert " selected" not in row
    assert page.count('<option value="affiliationChanged" selected>') == 2  # Dora's two


def test_an_unknown_preset_reason_is_ignored(officer_client, leaver):
    page = officer_client.get(
        "/ra/certificates/", {"q": "dora", "reason": "certificateHold"}
    ).content.decode()

    main = page.split("<footer", 1)[0]  # the footer's language form has its own choice
    assert " selected>" not in main
    assert "preset_reason" not in page


def test_revoking_from_there_keeps_the_reason_for_the_holders_next_certificate(
    officer_client, leaver, officer
):
    certificate = leaver.certificates.order_by("pk").first()

    response = officer_client.post(
        f"/ra/certificates/{certificate.pk}/revoke/",
        {
            "reason": "affiliationChanged",
            "confirm": "on",
            "q": "dora",
            "preset_reason": "affiliationChanged",
        },
    )

    assert response.status_code == 302
    assert response["Location"] == "/ra/certificates/?q=dora&reason=affiliationChanged"
    certificate.refresh_from_db()
    assert (certificate.status, certificate.revocation_reason) == ("revoked", "affiliationChanged")
    page = officer_client.get("/ra/leavers/").content.decode()
    assert '<td data-label="Certificates">1</td>' in page


def test_the_console_counts_them(officer_client, leaver):
    page = officer_client.get("/ra/").content.decode()

    assert 'href="/ra/leavers/"' in page
    assert "deactivated account still holding certificates" in page


@pytest.fixture
def held_back(hierarchy, template):
    """Three accounts deactivated at once and due, with a cap of two: the run held back."""
    gone = timezone.now() - GRACE
    for n in range(3):
        person = UserFactory(username=f"leaver{n}")
        issue(person, template("smime-signing"), new_key())
        person.is_active = False
        with time_machine.travel(gone, tick=False):
            person.save()
    return leavers.leavers_revoke()


@pytest.mark.parametrize("path", ["/ra/", "/ra/leavers/"])
def test_the_console_warns_while_the_cap_holds_revocations_back(officer_client, held_back, path):
    assert held_back.held_back == 3

    page = officer_client.get(path).content.decode()

    assert "Leavers' certificates not revoked." in page
    assert "3 deactivated accounts are due for certificate revocation" in page
    assert "revoke_deactivated --confirm" in page
    assert "overdue" in page or path == "/ra/"


def test_no_warning_when_nothing_is_held_back(officer_client, leaver):
    page = officer_client.get("/ra/").content.decode()

    assert "certificates not revoked" not in page


# --- nothing on a schedule (no broker, so no beat) -------------------------------------


def leaver_row(page: str) -> str:
    return page.split('id="leaver-', 1)[1].split("</tr>", 1)[0]


def test_without_a_scheduler_the_page_says_nothing_is_revoked_on_its_own(
    officer_client, leaver, settings
):
    settings.CELERY_TASK_ALWAYS_EAGER = True  # the embedded default

    page = officer_client.get("/ra/leavers/").content.decode()

    assert 'id="no-scheduler"' in page
    assert "Nothing runs on a schedule here, so nothing is revoked on its own." in page
    assert "run `manage.py revoke_deactivated --confirm` from cron every hour" in page
    assert "by a task that runs hourly" not in page
    row = leaver_row(page)
    assert f"{leaver.deactivated_at + GRACE:%Y-%m-%d %H:%M} UTC" in row
    assert "not on its own: nothing runs on a schedule" in row
    assert "in 2\xa0days" not in row


def test_with_beat_the_page_says_when_the_hourly_run_revokes(officer_client, leaver, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = False  # a broker, so beat runs the hourly task

    page = officer_client.get("/ra/leavers/").content.decode()

    assert 'id="no-scheduler"' not in page
    assert "by a task that runs hourly" in page
    assert "in 2\xa0days" in leaver_row(page)


def test_with_automatic_revocation_off_there_is_no_schedule_to_miss(
    officer_client, leaver, settings
):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = None

    page = officer_client.get("/ra/leavers/").content.decode()

    assert 'id="no-scheduler"' not in page
    assert "automatic revocation is off" in leaver_row(page)


def test_the_consoles_beat_badge_warns_while_leavers_wait_for_a_run_that_never_comes(
    officer_client, leaver, settings
):
    settings.CELERY_TASK_ALWAYS_EAGER = True

    page = officer_client.get("/ra/").content.decode()

    assert '<span class="badge health-warn">Not used</span>' in page
    waiting = page.split('id="unscheduled-work">', 1)[1].split("</span>", 1)[0]
    assert "1 deactivated account(s) still holding certificates" in waiting
    assert "`manage.py revoke_deactivated --confirm` from cron every hour" in waiting


def test_the_consoles_beat_badge_stays_grey_when_nothing_waits(officer_client, hierarchy, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True

    page = officer_client.get("/ra/").content.decode()

    assert '<span class="badge">Not used</span>' in page
    assert "unscheduled-work" not in page


def test_what_waits_counts_leavers_old_addresses_and_closed_mailboxes(
    leaver, employee, officer, template, settings
):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    # Alice's address changed (and a run noticed: the RA page's list); a shared mailbox
    # holding a certificate was closed.
    moved = issue(employee, template("smime-signing"), new_key())
    Certificate.objects.filter(pk=moved.pk).update(created_at=timezone.now() - GRACE)
    employee.email = "alice.new@example.com"
    employee.save()
    outdated.outdated_sync(now=timezone.now(), delay=GRACE)
    finance = mailboxes.mailbox_create(email="finance@example.com", display_name="Finance")
    shared = issue(employee, template("smime-signing"), new_key())
    Certificate.objects.filter(pk=shared.pk).update(owner=None, mailbox=finance)
    mailboxes.mailbox_set_active(mailbox=finance, active=False, actor=officer)

    assert leavers.waiting_without_scheduler() == [
        "1 deactivated account(s) still holding certificates",
        "1 certificate(s) for an address their holder no longer has",
        "1 deactivated shared mailbox(es) still holding certificates",
    ]
    settings.CELERY_TASK_ALWAYS_EAGER = False
    assert leavers.waiting_without_scheduler() == []  # beat runs: nothing waits in vain
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = None
    assert leavers.waiting_without_scheduler() == []  # nothing is revoked on its own anyway


# --- revoke all of a leaver's certificates ---------------------------------------------

ADDRESS = "192.0.2.46"


def revoke_all(client, leaver, **data):
    return client.post(
        f"/ra/leavers/{leaver.pk}/revoke/", {"confirm": "on", **data}, REMOTE_ADDR=ADDRESS
    )


def held(user) -> int:
    return user.certificates.filter(status="valid").count()


@pytest.mark.parametrize(
    ("who", "status"),
    [
        ("officer", 302),
        ("admin_user", 302),  # superusers count as officers, as on the RA pages
        ("employee", 403),
        ("colleague", 403),
        ("agent", 403),
        (None, 302),  # to the sign-in page
    ],
)
def test_only_officers_revoke_all_of_a_leavers_certificates(request, leaver, who, status):
    user = request.getfixturevalue(who) if who else None

    response = revoke_all(client_for(user), leaver)

    assert response.status_code == status
    if user is None:
        assert response["Location"].startswith("/accounts/login/")
    officer_like = who in ("officer", "admin_user")
    assert held(leaver) == (0 if officer_like else 2)
    if officer_like:
        assert response["Location"] == "/ra/leavers/"


@pytest.mark.parametrize("method", ["get", "head", "put"])
def test_revoking_all_takes_only_a_post(officer_client, leaver, method):
    response = getattr(officer_client, method)(f"/ra/leavers/{leaver.pk}/revoke/")

    assert response.status_code == 405
    assert held(leaver) == 2


def test_revoking_all_needs_the_csrf_token(officer, leaver):
    client = verified_login(Client(enforce_csrf_checks=True), officer)

    response = revoke_all(client, leaver)

    assert response.status_code == 403
    assert held(leaver) == 2


def test_revoking_all_needs_i_am_sure(officer_client, leaver):
    response = officer_client.post(f"/ra/leavers/{leaver.pk}/revoke/", {})

    assert response.status_code == 400
    row = leaver_row(response.content.decode())
    assert "Tick “I am sure” to revoke them." in row
    assert held(leaver) == 2
    assert not AuditEvent.objects.filter(action__in=["certificate.revoke", "leaver.revoke"])


def test_revoking_all_without_i_am_sure_focuses_the_box(officer_client, leaver):
    """On a phone the leaver's card may be below the fold: its box is autofocused, so
    the browser scrolls to it and its error."""
    page = officer_client.post(f"/ra/leavers/{leaver.pk}/revoke/", {}).content.decode()

    (focused,) = re.findall(r"<input[^>]*autofocus[^>]*>", page)
    assert 'name="confirm"' in focused
    assert "autofocus" in leaver_row(page)


def test_it_revokes_every_certificate_the_leaver_holds_audited_as_the_hourly_run(
    officer_client, officer, leaver, template
):
    """Within the grace period too: the officer has checked that Dora left. Doraine, whom
    a name search for "dora" also finds, keeps hers."""
    doraine = UserFactory(username="doraine", first_name="Doraine", last_name="Active")
    staying = issue(doraine, template("smime-signing"), new_key())
    serials = sorted(leaver.certificates.values_list("serial", flat=True))

    response = revoke_all(officer_client, leaver)

    assert response.status_code == 302
    assert {(c.status, c.revocation_reason) for c in leaver.certificates.all()} == {
        ("revoked", "affiliationChanged")
    }
    assert Certificate.objects.get(pk=staying.pk).status == "valid"
    revocations = AuditEvent.objects.filter(action="certificate.revoke")
    assert revocations.count() == 2
    assert {(e.actor, e.source_address) for e in revocations} == {(officer, ADDRESS)}
    event = AuditEvent.objects.get(action="leaver.revoke")
    assert (event.actor, event.source_address, event.object_id) == (
        officer,
        ADDRESS,
        str(leaver.pk),
    )
    assert event.detail["source"] == "ra"
    assert sorted(event.detail["serials"]) == serials
    assert [str(m) for m in get_messages(response.wsgi_request)] == [
        "Revoked 2 certificates of Dora Departed (dora) (affiliation changed). The holder "
        "was told by e-mail; the next CRL lists them."
    ]
    assert 'id="leaver-' not in officer_client.get("/ra/leavers/").content.decode()


def test_an_account_active_again_keeps_its_certificates(officer_client, leaver):
    leaver.is_active = True
    leaver.save()

    response = revoke_all(officer_client, leaver)

    assert response.status_code == 400
    refused = response.content.decode().split('id="revoke-refused">', 1)[1].split("</div>")[0]
    assert "dora&#x27;s account is active again: its certificates were not revoked." in refused
    assert held(leaver) == 2


def test_nothing_left_to_revoke_is_said_plainly(officer_client, leaver):
    leaver.certificates.update(
        status="revoked", revoked_at=timezone.now(), revocation_reason="superseded"
    )

    response = revoke_all(officer_client, leaver)

    assert response.status_code == 302
    assert [str(m) for m in get_messages(response.wsgi_request)] == [
        "Dora Departed (dora) holds no valid certificate any more: nothing to revoke."
    ]


def test_an_unknown_account_is_not_found(officer_client, leaver):
    response = officer_client.post("/ra/leavers/999999/revoke/", {"confirm": "on"})

    assert response.status_code == 404
    assert held(leaver) == 2


def test_the_service_refuses_who_is_not_an_officer(leaver, employee):
    from enrollment.exceptions import NotPermitted

    with pytest.raises(NotPermitted):
        leavers.leaver_revoke(user=leaver, actor=employee)
    assert held(leaver) == 2


# --- one at a time, by the account's id ------------------------------------------------


def test_one_at_a_time_lists_the_leavers_certificates_only(officer_client, leaver, template):
    doraine = UserFactory(username="doraine", first_name="Doraine", last_name="Active")
    staying = issue(doraine, template("smime-signing"), new_key())

    page = officer_client.get(
        "/ra/certificates/", {"owner": leaver.pk, "reason": "affiliationChanged"}
    ).content.decode()

    assert "Certificates of Dora Departed (user name dora, deactivated)." in page
    assert f'id="certificate-{staying.pk}"' not in page
    for certificate in leaver.certificates.all():
        assert f'id="certificate-{certificate.pk}"' in page
    assert page.count('<option value="affiliationChanged" selected>') == 2
    assert page.count(f'name="owner" value="{leaver.pk}"') == 2


def test_one_at_a_time_comes_back_to_the_same_account(officer_client, leaver):
    certificate = leaver.certificates.order_by("pk").first()

    response = officer_client.post(
        f"/ra/certificates/{certificate.pk}/revoke/",
        {
            "reason": "affiliationChanged",
            "confirm": "on",
            "owner": str(leaver.pk),
            "preset_reason": "affiliationChanged",
        },
    )

    assert response.status_code == 302
    assert response["Location"] == (
        f"/ra/certificates/?owner={leaver.pk}&reason=affiliationChanged"
    )


@pytest.mark.parametrize(("who", "status"), [("employee", 403), ("agent", 403), (None, 302)])
def test_only_officers_list_an_accounts_certificates(request, leaver, who, status):
    user = request.getfixturevalue(who) if who else None

    response = client_for(user).get("/ra/certificates/", {"owner": leaver.pk})

    assert response.status_code == status
    assert b"Dora" not in response.content
