"""Who may and who may not, for every view the foundation has."""

from __future__ import annotations

import pytest

from django.test import Client

from enrollment import services
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

PUBLIC_REPOSITORY = ["/pki/", "/pki/issuing.crt", "/pki/issuing.crl", "/pki/issuing-chain.p7b"]


@pytest.mark.parametrize("path", PUBLIC_REPOSITORY)
def test_the_public_repository_needs_no_login(anonymous_client, hierarchy, path):
    assert anonymous_client.get(path).status_code == 200


def test_home_is_open_and_offers_sign_in_to_anonymous(anonymous_client, hierarchy):
    response = anonymous_client.get("/")

    assert response.status_code == 200
    assert b"/accounts/login/" in response.content


def test_home_shows_my_certificates_and_not_my_colleagues(hierarchy, template, employee, colleague):
    for owner in (employee, colleague):
        services.certificate_issue_with_server_key(
            template=template("smime-signing"),
            owner=owner,
            key_algorithm=KeyAlgorithm.EC_P256,
            pkcs12_password="a long pkcs12 password",
        )

    page = client_for(employee).get("/").content.decode()

    assert employee.email in page
    assert colleague.email not in page


@pytest.mark.parametrize("who", ["anonymous", "employee", "officer"])
def test_the_admin_is_closed_to_non_staff(who, employee, officer):
    client = {
        "anonymous": Client(),
        "employee": client_for(employee),
        "officer": client_for(officer),
    }[who]

    response = client.get("/admin/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_the_admin_is_open_to_administrators(admin_client_, hierarchy):
    assert admin_client_.get("/admin/").status_code == 200
    assert admin_client_.get("/admin/enrollment/certificateauthority/").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/admin/enrollment/certificate/add/",
        "/admin/enrollment/auditevent/add/",
        "/admin/enrollment/revocationlist/add/",
    ],
)
def test_not_even_administrators_add_certificates_crls_or_audit_events_by_hand(admin_client_, path):
    assert admin_client_.get(path).status_code == 403


def test_audit_events_cannot_be_deleted_in_the_admin(admin_client_, hierarchy):
    from enrollment.models import AuditEvent

    event = AuditEvent.objects.first()

    response = admin_client_.post(
        f"/admin/enrollment/auditevent/{event.pk}/delete/", {"post": "yes"}
    )

    assert response.status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_the_api_schema_is_published(anonymous_client):
    response = anonymous_client.get("/api/v1/schema/")

    assert response.status_code == 200
    assert b"openapi" in response.content


def test_login_refuses_a_post_without_csrf_token(employee):
    client = Client(enforce_csrf_checks=True)

    response = client.post(
        "/accounts/login/",
        {"username": employee.username, "password": "correct horse battery staple"},
    )

    assert response.status_code == 403
    assert "_auth_user_id" not in client.session


def test_login_works_with_the_form(employee):
    client = Client()

    response = client.post(
        "/accounts/login/",
        {"username": employee.username, "password": "correct horse battery staple"},
    )

    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(employee.pk)
