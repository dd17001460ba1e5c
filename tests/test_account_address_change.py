"""An account records when its e-mail address changed, however it was changed, and the
change is audited with the old and the new address.

The moment starts the grace period after which certificates naming the old address are
revoked (enrollment.outdated). A change of case alone is not a change of mailbox.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from django.contrib.auth import get_user_model

from accounts.sso import update_account_from_claims
from enrollment.models import AuditEvent
from tests.conftest import client_for
from tests.enrollment.test_change_audit import ADDRESS, admin_post, form_data
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

MONDAY = datetime(2027, 3, 1, 9, 30, tzinfo=UTC)


def stored(user) -> datetime | None:
    return get_user_model().objects.values_list("email_changed_at", flat=True).get(pk=user.pk)


def address_changes(user) -> list[tuple[str, list[str], str]]:
    found = AuditEvent.objects.filter(action="account.change", object_id=str(user.pk))
    return [
        (e.actor_name, e.detail["changes"]["email"], e.detail["source"])
        for e in found.order_by("id")
        if "email" in e.detail["changes"]
    ]


def test_a_new_account_has_no_change_and_none_is_audited():
    user = UserFactory(username="newbie")

    assert stored(user) is None
    assert address_changes(user) == []


def test_code_changing_the_address_records_the_moment_and_audits_old_and_new(employee):
    employee.email = "alice.smith@example.com"
    with time_machine.travel(MONDAY, tick=False):
        employee.save()

    assert stored(employee) == MONDAY
    assert address_changes(employee) == [
        ("system", ["alice@example.com", "alice.smith@example.com"], "other")
    ]


def test_a_save_of_the_address_alone_records_it_too(employee):
    employee.email = "alice.smith@example.com"
    with time_machine.travel(MONDAY, tick=False):
        employee.save(update_fields=["email"])

    assert stored(employee) == MONDAY


def test_a_change_of_case_alone_is_not_a_change_of_address(employee):
    employee.email = "Alice@Example.COM"
    employee.save()

    assert stored(employee) is None
    # The audit trail still says what was written.
    assert address_changes(employee) == [
        ("system", ["alice@example.com", "Alice@Example.COM"], "other")
    ]


def test_saving_other_fields_keeps_the_moment(employee):
    employee.email = "alice.smith@example.com"
    with time_machine.travel(MONDAY, tick=False):
        employee.save()
    with time_machine.travel(MONDAY + timedelta(days=2), tick=False):
        employee.last_name = "Smith"
        employee.save()
        get_user_model().objects.get(pk=employee.pk).save()

    assert stored(employee) == MONDAY
    assert len(address_changes(employee)) == 1


def test_an_address_set_but_not_saved_is_neither_recorded_nor_audited(employee):
    employee.email = "alice.smith@example.com"
    employee.save(update_fields=["last_login"])

    assert stored(employee) is None
    assert address_changes(employee) == []


def test_a_stale_instance_is_compared_with_the_stored_address(employee):
    """Another process changed the address; this instance still holds the first one and
    saves it back: that is a change too (back to the old address)."""
    stale = get_user_model().objects.get(pk=employee.pk)
    get_user_model().objects.filter(pk=employee.pk).update(email="alice.smith@example.com")

    with time_machine.travel(MONDAY, tick=False):
        stale.save()

    assert stored(employee) == MONDAY


def test_a_single_sign_on_sync_changing_the_address_records_it_as_sso(employee):
    with time_machine.travel(MONDAY, tick=False):
        update_account_from_claims(
            employee,
            {
                "given_name": "Alice",
                "family_name": "Smith",
                "email": "alice.smith@example.com",
                "email_verified": True,
            },
        )

    assert stored(employee) == MONDAY
    assert address_changes(employee) == [
        ("system", ["alice@example.com", "alice.smith@example.com"], "sso")
    ]


def test_the_admin_changing_the_address_records_it_as_the_admins(admin_user, employee):
    url = f"/admin/accounts/user/{employee.pk}/change/"
    with time_machine.travel(MONDAY, tick=False):
        admin = client_for(admin_user)
        admin_post(admin, url, email="alice.smith@example.com")
        page = admin.get(url).content.decode()

    assert stored(employee) == MONDAY
    assert "Email changed at" in page
    (event,) = AuditEvent.objects.filter(action="account.change", object_id=str(employee.pk))
    assert event.actor_name == admin_user.username
    assert event.source_address == ADDRESS
    assert event.detail == {
        "changes": {"email": ["alice@example.com", "alice.smith@example.com"]},
        "source": "admin",
    }


def test_the_admin_cannot_edit_the_moment_itself(admin_user, employee):
    url = f"/admin/accounts/user/{employee.pk}/change/"
    admin_post(client_for(admin_user), url, email_changed_at="2020-01-01 00:00:00")

    assert stored(employee) is None


def test_the_admin_says_what_changing_the_address_does_to_certificates(
    admin_client_, employee, settings
):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 48

    page = admin_client_.get(f"/admin/accounts/user/{employee.pk}/change/").content.decode()

    assert "certificates for the old address are revoked 48 hours later" in page


def test_a_bulk_update_records_no_moment(employee):
    """QuerySet.update() skips User.save(): the hourly run finds such certificates by
    comparing addresses and starts their grace period itself (tests/enrollment/
    test_outdated.py)."""
    get_user_model().objects.filter(pk=employee.pk).update(email="alice.smith@example.com")

    assert stored(employee) is None


def test_the_admin_refuses_an_address_another_active_account_has(admin_user, employee, colleague):
    url = f"/admin/accounts/user/{colleague.pk}/change/"
    admin = client_for(admin_user)
    data = form_data(admin.get(url))
    data["email"] = f" {employee.email.upper()}"

    refused = admin.post(url, data)

    assert refused.status_code == 200
    assert "has this address" in str(refused.context["adminform"].form.errors["email"])
    colleague.refresh_from_db()
    assert colleague.email != employee.email
    # Once Alice's account is deactivated, her address may go to someone else.
    employee.is_active = False
    employee.save()
    admin_post(admin, url, email=employee.email)
    colleague.refresh_from_db()
    assert colleague.email == employee.email
