"""The admin's "deactivate" of shared mailboxes asks first (open requests are withdrawn at
once, certificates revoked after the grace period), for RA officers and superusers only."""

from __future__ import annotations

import pytest

from django.contrib.messages import get_messages

from enrollment import mailboxes
from enrollment.models import AuditEvent, Certificate, SharedMailbox
from tests.conftest import client_for
from tests.enrollment.tools import as_staff, issue, new_key
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

MAILBOXES = "/admin/enrollment/sharedmailbox/"
ADDRESS = "192.0.2.47"


def staff_with_view(user):
    """Staff who may open the list (the admin shows no list without it)."""
    return as_staff(user, "view_sharedmailbox")


@pytest.fixture(autouse=True)
def _grace(settings):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 72


@pytest.fixture
def admin_officer(officer):
    return staff_with_view(officer)


@pytest.fixture
def viewer(db):
    return staff_with_view(UserFactory(username="viewer"))


@pytest.fixture
def finance(hierarchy, template, employee):
    """An active shared mailbox holding one valid certificate."""
    mailbox = mailboxes.mailbox_create(email="finance@example.com", display_name="Finance")
    certificate = issue(employee, template("smime-signing"), new_key())
    Certificate.objects.filter(pk=certificate.pk).update(owner=None, mailbox=mailbox)
    return mailbox


def act(client, action: str, pks, **extra):
    data = {"action": action, "_selected_action": [str(pk) for pk in pks], **extra}
    return client.post(MAILBOXES, data, REMOTE_ADDR=ADDRESS)


def offered(client) -> set[str]:
    form = client.get(MAILBOXES).context["action_form"]
    return set() if form is None else {value for value, _ in form.fields["action"].choices}


def active(mailbox) -> bool:
    return SharedMailbox.objects.get(pk=mailbox.pk).is_active


def shown(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


@pytest.mark.parametrize("who", ["admin_officer", "admin_user"])
def test_officers_and_superusers_deactivate_after_confirming(request, who, finance):
    user = request.getfixturevalue(who)
    client = client_for(user)

    assert "deactivate" in offered(client)
    response = act(client, "deactivate", [finance.pk], post="yes", confirm="on")

    assert response.status_code == 302
    assert not active(finance)
    event = AuditEvent.objects.get(action="mailbox.deactivate")
    assert (event.actor, event.source_address) == (user, ADDRESS)
    assert shown(response)[0].startswith(
        "Deactivated 1 shared mailbox: finance@example.com. Their certificates are due for "
        "revocation (cessation of operation) 72 hours from now"
    )


def test_staff_who_may_only_view_mailboxes_are_not_offered_it(viewer, finance):
    client = client_for(viewer)

    assert "deactivate" not in offered(client)
    response = act(client, "deactivate", [finance.pk], post="yes", confirm="on")

    assert response.status_code == 200
    assert active(finance)


def test_choosing_it_asks_first_and_changes_nothing(admin_officer, finance):
    response = act(client_for(admin_officer), "deactivate", [finance.pk])

    assert response.status_code == 200
    assert active(finance)
    text = response.content.decode()
    row = text.split('id="deactivate-selection"', 1)[1].split("</table>", 1)[0]
    assert "finance@example.com" in row
    assert '<td data-label="Valid certificates">1</td>' in row  # the certificate it holds
    assert "open requests are withdrawn at once" in text
    assert "72 hours from now" in text


def test_a_delay_of_one_hour_is_one_hour(admin_officer, finance, settings):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 1

    text = act(client_for(admin_officer), "deactivate", [finance.pk]).content.decode()

    assert "1 hour from now" in text
    assert "1 hours" not in text


def test_without_the_tick_nothing_changes(admin_officer, finance):
    response = act(client_for(admin_officer), "deactivate", [finance.pk], post="yes")

    assert response.status_code == 400
    assert response.context["form"].errors["confirm"] == ["Tick the box to confirm."]
    assert active(finance)
    assert not AuditEvent.objects.filter(action="mailbox.deactivate").exists()


def test_reactivating_says_so(admin_officer, finance, officer):
    mailboxes.mailbox_set_active(mailbox=finance, active=False, actor=officer)

    response = act(client_for(admin_officer), "reactivate", [finance.pk])

    assert response.status_code == 302
    assert active(finance)
    assert shown(response) == ["Reactivated finance@example.com."]
