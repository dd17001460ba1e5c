"""The admin's "revoke selected certificates": a confirmation page (reason, "I am sure",
the number typed for more than one) before anything is revoked, for RA officers and
superusers only, each revocation through the service, audited with the address."""

from __future__ import annotations

from datetime import timedelta

import pytest

from django.contrib.messages import get_messages
from django.utils import timezone

from enrollment import ra_admin
from enrollment.models import AuditEvent, Certificate
from tests.conftest import client_for
from tests.enrollment.tools import as_staff, issue, new_key
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

CERTIFICATES = "/admin/enrollment/certificate/"
ADDRESS = "192.0.2.45"


def staff_with_view(user):
    """Staff who may open the certificate list (the admin shows no list without it)."""
    return as_staff(user, "view_certificate")


@pytest.fixture
def admin_officer(officer):
    return staff_with_view(officer)


@pytest.fixture
def viewer(db):
    return staff_with_view(UserFactory(username="viewer"))


@pytest.fixture
def three(hierarchy, template, employee, colleague):
    """Three valid certificates of two people."""
    return [
        issue(employee, template("smime-signing"), new_key()),
        issue(employee, template("smime-dual-use"), new_key()),
        issue(colleague, template("smime-signing"), new_key()),
    ]


def ask(client, pks, *, query: str = "", **extra):
    """The changelist's action form, or the confirmation page's form with ``post``."""
    data = {"action": "revoke", "_selected_action": [str(pk) for pk in pks], **extra}
    return client.post(CERTIFICATES + query, data, REMOTE_ADDR=ADDRESS)


def confirm(client, pks, **fields):
    data = {"post": "yes", "reason": "superseded", "confirm": "on", **fields}
    return ask(client, pks, **data)


def offered(client) -> set[str]:
    form = client.get(CERTIFICATES).context["action_form"]
    return set() if form is None else {value for value, _ in form.fields["action"].choices}


def statuses(certificates) -> list[str]:
    return [Certificate.objects.get(pk=c.pk).status for c in certificates]


def shown(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


# --- who may --------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["admin_officer", "admin_user"])
def test_officers_and_superusers_are_offered_it_and_revoke(request, who, three):
    client = client_for(request.getfixturevalue(who))

    assert "revoke" in offered(client)
    response = confirm(client, [three[0].pk])

    assert response.status_code == 302
    assert statuses(three) == ["revoked", "valid", "valid"]


def test_staff_who_may_only_view_certificates_are_not_offered_it(viewer, three):
    client = client_for(viewer)

    assert "revoke" not in offered(client)
    response = confirm(client, [c.pk for c in three], count="3")

    assert response.status_code == 200  # the list again: "No action selected"
    assert statuses(three) == ["valid"] * 3
    assert not AuditEvent.objects.filter(action="certificate.revoke").exists()


def test_an_officer_who_is_not_staff_never_reaches_the_admin(officer, three):
    response = confirm(client_for(officer), [three[0].pk])

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert statuses(three) == ["valid"] * 3


def test_the_old_one_click_superseded_action_is_gone(admin_officer, three):
    client = client_for(admin_officer)

    assert "revoke_superseded" not in offered(client)
    response = client.post(
        CERTIFICATES, {"action": "revoke_superseded", "_selected_action": [three[0].pk]}
    )

    assert response.status_code == 302
    assert shown(response) == ["No action selected."]
    assert statuses(three) == ["valid"] * 3


# --- the confirmation page ------------------------------------------------------------


def test_choosing_the_action_asks_first_and_revokes_nothing(admin_officer, three):
    response = ask(client_for(admin_officer), [c.pk for c in three])

    assert response.status_code == 200
    assert statuses(three) == ["valid"] * 3
    text = response.content.decode()
    assert "Revoke <strong>3 certificates</strong>?" in text
    first = three[0]
    for shown_text in (
        first.common_name,
        first.email,
        "alice",
        first.template.name,
        first.serial,
        f"{first.not_before:%Y-%m-%d} to {first.not_after:%Y-%m-%d}",
    ):
        assert shown_text in text
    assert 'name="count"' in text  # more than one: type the number
    assert 'name="confirm"' in text
    # The reasons are the RA page's, none chosen in advance.
    reasons = response.context["form"].fields["reason"].choices
    assert reasons[0] == ("", "Choose a reason…")
    assert reasons[1:] == list(Certificate.RevocationReasonChoice.choices)
    select = text.split('name="reason"', 1)[1].split("</select>", 1)[0]
    assert select.count(" selected>") == 1
    assert '<option value="" selected>' in select


def test_it_revokes_each_with_the_reason_given_audited_with_the_address(admin_officer, three):
    response = confirm(
        client_for(admin_officer), [c.pk for c in three], reason="privilegeWithdrawn", count="3"
    )

    assert response.status_code == 302
    assert response["Location"] == CERTIFICATES
    revoked = Certificate.objects.filter(pk__in=[c.pk for c in three])
    assert {(c.status, c.revocation_reason) for c in revoked} == {("revoked", "privilegeWithdrawn")}
    events = AuditEvent.objects.filter(action="certificate.revoke")
    assert events.count() == 3
    assert {(e.actor, e.source_address) for e in events} == {(admin_officer, ADDRESS)}
    assert shown(response) == [
        "Revoked 3 certificates (privilege withdrawn); skipped 0 (already revoked or "
        "expired). Their holders (a shared mailbox's delegates) were told by e-mail; the "
        "next CRL lists them."
    ]


def test_already_revoked_and_expired_ones_are_skipped_and_counted(admin_officer, three):
    Certificate.objects.filter(pk=three[0].pk).update(
        status="revoked", revoked_at=timezone.now(), revocation_reason="superseded"
    )
    Certificate.objects.filter(pk=three[1].pk).update(not_after=timezone.now() - timedelta(days=1))
    client = client_for(admin_officer)

    page = ask(client, [c.pk for c in three])
    assert "Revoke <strong>1 certificate</strong>?" in page.content.decode()
    assert "2 of the selected certificates are already revoked or expired" in (
        page.content.decode()
    )
    assert "count" not in page.context["form"].fields  # one to revoke: nothing to type
    response = confirm(client, [c.pk for c in three], reason="keyCompromise")

    assert response.status_code == 302
    assert statuses(three) == ["revoked", "valid", "revoked"]
    assert Certificate.objects.get(pk=three[0].pk).revocation_reason == "superseded"
    assert shown(response)[0].startswith(
        "Revoked 1 certificate (key compromise); skipped 2 (already revoked or expired)."
    )


def test_when_none_can_be_revoked_it_says_so_and_asks_nothing(admin_officer, three):
    Certificate.objects.filter(pk=three[0].pk).update(
        status="revoked", revoked_at=timezone.now(), revocation_reason="superseded"
    )

    response = ask(client_for(admin_officer), [three[0].pk])

    assert response.status_code == 302
    assert shown(response) == [
        "No certificate revoked: the 1 selected certificate is already revoked or expired."
    ]


@pytest.mark.parametrize(
    ("missing", "fields", "error"),
    [
        ("reason", {"reason": ""}, "Choose a reason."),
        ("confirm", {"confirm": ""}, "This field is required."),
        ("count", {"count": ""}, "Type the number of certificates to revoke."),
        ("count", {"count": "2"}, "2 is not the number of certificates that would be revoked"),
        ("invalidity_date", {"invalidity_date": "yesterday"}, "Give a date and time"),
    ],
)
def test_without_each_confirmation_nothing_is_revoked(admin_officer, three, missing, fields, error):
    response = confirm(client_for(admin_officer), [c.pk for c in three], **{"count": "3", **fields})

    assert response.status_code == 400
    assert error in " ".join(response.context["form"].errors[missing])
    assert statuses(three) == ["valid"] * 3
    assert not AuditEvent.objects.filter(action="certificate.revoke").exists()


def test_an_invalidity_date_the_service_refuses_is_shown_on_the_form(admin_officer, three):
    later = timezone.localtime() + timedelta(days=2)

    response = confirm(
        client_for(admin_officer),
        [c.pk for c in three],
        reason="keyCompromise",
        count="3",
        invalidity_date=f"{later:%Y-%m-%dT%H:%M}",
    )

    assert response.status_code == 400
    assert "cannot be in the future" in " ".join(response.context["form"].errors["invalidity_date"])
    assert statuses(three) == ["valid"] * 3


def test_a_large_selection_lists_the_first_and_counts_the_rest(admin_officer, three, monkeypatch):
    monkeypatch.setattr(ra_admin, "REVOKE_SHOWN", 2)

    response = ask(client_for(admin_officer), [c.pk for c in three])

    assert len(response.context["rows"]) == 2
    assert "… and 1 more (the first 2 of 3 are listed)." in response.content.decode()
    assert three[2].serial not in response.content.decode()


def test_select_all_is_checked_against_the_selection_as_it_is_when_confirmed(
    admin_officer, three, template, colleague
):
    """Every certificate the filters match; one issued after the page was shown makes the
    number typed wrong, and nothing is revoked."""
    client = client_for(admin_officer)
    across = {"select_across": "1"}
    query = "?status__exact=valid"

    page = ask(client, [three[0].pk], query=query, **across)
    assert page.context["count"] == 3
    assert 'name="select_across" value="1"' in page.content.decode()
    late = issue(colleague, template("smime-dual-use"), new_key())

    stale = confirm(client, [three[0].pk], query=query, count="3", **across)
    assert stale.status_code == 400
    assert statuses([*three, late]) == ["valid"] * 4

    done = confirm(client, [three[0].pk], query=query, count="4", **across)
    assert done.status_code == 302
    assert done["Location"] == CERTIFICATES + query
    assert statuses([*three, late]) == ["revoked"] * 4
