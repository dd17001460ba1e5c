"""Admin actions are offered only to whom may act: viewing a list is not enough."""

from __future__ import annotations

import pytest

from django.contrib.auth.models import Permission

from enrollment.models import Certificate, RevocationList
from tests.conftest import client_for
from tests.enrollment.tools import issue
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

CAS = "/admin/enrollment/certificateauthority/"
CERTIFICATES = "/admin/enrollment/certificate/"


def staff(*codenames: str, **fields):
    user = UserFactory(username=f"staff-{'-'.join(codenames)}", is_staff=True, **fields)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def run_action(client, changelist: str, action: str, pks: list[int]):
    return client.post(changelist, {"action": action, "_selected_action": pks})


def offered(client, changelist: str) -> set[str]:
    page = client.get(changelist)
    assert page.status_code == 200
    form = page.context["action_form"]
    return set() if form is None else {value for value, _label in form.fields["action"].choices}


def test_staff_who_may_only_view_cas_cannot_publish_a_crl(hierarchy):
    viewer = client_for(staff("view_certificateauthority"))
    before = RevocationList.objects.count()

    response = run_action(viewer, CAS, "publish_crl", [hierarchy.issuing.pk])

    assert "publish_crl" not in offered(viewer, CAS)
    assert response.status_code == 200  # the list again, "No action selected"
    assert RevocationList.objects.count() == before


def test_staff_with_the_change_permission_publish_a_crl(hierarchy):
    publisher = client_for(staff("view_certificateauthority", "change_certificateauthority"))
    numbers = set(
        RevocationList.objects.filter(ca=hierarchy.issuing).values_list("number", flat=True)
    )

    response = run_action(publisher, CAS, "publish_crl", [hierarchy.issuing.pk])

    assert "publish_crl" in offered(publisher, CAS)
    assert response.status_code == 302
    latest = RevocationList.objects.filter(ca=hierarchy.issuing).newest_first().first()
    assert latest.number == max(numbers) + 1


def test_only_officers_are_offered_revocation_in_the_admin(
    hierarchy, template, employee, officer, ec_p256_key
):
    certificate = issue(employee, template("smime-signing"), ec_p256_key)
    viewer = client_for(staff("view_certificate"))
    officer.is_staff = True
    officer.save(update_fields=["is_staff"])
    officer.user_permissions.add(*Permission.objects.filter(codename="view_certificate"))
    officer.refresh_from_db()  # gaining privilege bumps session_generation
    officer_client = client_for(officer)

    confirmed = {"post": "yes", "reason": "superseded", "confirm": "on"}
    refused = viewer.post(
        CERTIFICATES, {"action": "revoke", "_selected_action": [certificate.pk], **confirmed}
    )
    assert "revoke" not in offered(viewer, CERTIFICATES)
    assert refused.status_code == 200
    assert Certificate.objects.get(pk=certificate.pk).status == "valid"

    done = officer_client.post(
        CERTIFICATES, {"action": "revoke", "_selected_action": [certificate.pk], **confirmed}
    )
    assert "revoke" in offered(officer_client, CERTIFICATES)
    assert done.status_code == 302
    revoked = Certificate.objects.get(pk=certificate.pk)
    assert (revoked.status, revoked.revocation_reason) == ("revoked", "superseded")
