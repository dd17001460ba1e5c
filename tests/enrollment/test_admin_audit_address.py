"""What an administrator changes in the admin is audited with the address it came from,
as role changes and the RA pages are: CRLs, agents, revocations."""

from __future__ import annotations

import pytest

from cryptography.hazmat.primitives.serialization import Encoding

from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile

from enrollment import services
from enrollment.models import AuditEvent, KeyRecoveryAgent
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for
from tests.enrollment.tools import issue
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_pkcs12")]

ADDRESS = "192.0.2.44"


@pytest.fixture
def kra(quick_kra):
    return quick_kra


def action(client, changelist: str, name: str, pks: list[int], **extra):
    data = {"action": name, "_selected_action": pks, **extra}
    return client.post(changelist, data, REMOTE_ADDR=ADDRESS)


def test_a_crl_published_in_the_admin_records_the_address(admin_client_, admin_user, hierarchy):
    response = action(
        admin_client_, "/admin/enrollment/certificateauthority/", "publish_crl",
        [hierarchy.issuing.pk],
    )  # fmt: skip

    assert response.status_code == 302
    event = AuditEvent.objects.filter(action="crl.publish").latest("pk")
    assert (event.actor, event.source_address) == (admin_user, ADDRESS)


def test_an_agent_registered_in_the_admin_records_the_address(
    admin_client_, admin_user, hierarchy, template, key_pool
):
    holder = UserFactory(username="kate")
    key = key_pool.get(KeyAlgorithm.RSA_2048, slot=302)
    certificate = services.certificate_issue(
        template=template("smime-dual-use"), owner=holder, public_key=key.public_key()
    )

    response = admin_client_.post(
        "/admin/enrollment/keyrecoveryagent/add/",
        {
            "name": "Kate's KRA",
            "certificate": SimpleUploadedFile(
                "kate.pem", certificate.certificate.public_bytes(Encoding.PEM)
            ),
            "user": holder.pk,
        },
        REMOTE_ADDR=ADDRESS,
    )

    assert response.status_code == 302
    agent = KeyRecoveryAgent.objects.get(name="Kate's KRA")
    event = AuditEvent.objects.get(action="kra.register", object_id=str(agent.pk))
    assert (event.actor, event.source_address) == (admin_user, ADDRESS)


def test_an_agent_deactivated_in_the_admin_records_the_address(admin_client_, admin_user, kra):
    response = action(
        admin_client_, "/admin/enrollment/keyrecoveryagent/", "deactivate", [kra.agent.pk],
        confirm="yes", reason="Karl left the security team.",
    )  # fmt: skip

    assert response.status_code == 302
    event = AuditEvent.objects.get(action="kra.deactivate")
    assert (event.actor, event.source_address) == (admin_user, ADDRESS)


def test_a_revocation_in_the_admin_records_the_address(
    hierarchy, template, employee, officer, ec_p256_key
):
    certificate = issue(employee, template("smime-signing"), ec_p256_key)
    officer.is_staff = True
    officer.save(update_fields=["is_staff"])
    officer.user_permissions.add(*Permission.objects.filter(codename="view_certificate"))
    officer.refresh_from_db()  # gaining privilege bumps session_generation

    response = action(
        client_for(officer), "/admin/enrollment/certificate/", "revoke", [certificate.pk],
        post="yes", reason="superseded", confirm="on",
    )  # fmt: skip

    assert response.status_code == 302
    event = AuditEvent.objects.get(action="certificate.revoke")
    assert (event.actor, event.source_address) == (officer, ADDRESS)
