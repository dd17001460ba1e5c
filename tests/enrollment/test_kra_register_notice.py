"""Registering a key recovery agent is told to the other agents and the administrators:
its key opens every key archived from then on."""

from __future__ import annotations

from io import StringIO

import pytest

from cryptography.hazmat.primitives.serialization import Encoding

from django.contrib.auth.models import Group
from django.core import mail
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.utils import timezone
from django.utils.dateformat import format as date_format

from enrollment import services
from enrollment.exceptions import InvalidState
from enrollment.models import KeyRecoveryAgent
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.pkcs7 import format_fingerprint
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_pkcs12")]

ADDRESS = "192.0.2.45"
SUBJECT = "A key recovery agent certificate was registered"


@pytest.fixture
def kra(quick_kra):
    """Karl's agent certificate, registered before the test looks at the mail."""
    return quick_kra


@pytest.fixture
def people(kra, admin_user, employee, officer, settings):
    """Who should hear of a new agent, and who should not."""
    settings.ADMINS = [("Operations", "ops@example.com")]
    agents = Group.objects.get_or_create(name="Key recovery agents")[0]
    kim = UserFactory(username="kim")  # an agent by role, with no certificate yet
    kim.groups.add(agents)
    gone = UserFactory(username="gus", is_active=False)  # a deactivated agent
    gone.groups.add(agents)
    return {"karl": kra.agent.user, "kim": kim, "admin": admin_user}


@pytest.fixture
def new_certificate(hierarchy, template, key_pool):
    holder = UserFactory(username="kate", first_name="Kate", last_name="Keyholder")
    key = key_pool.get(KeyAlgorithm.RSA_2048, slot=303)
    return services.certificate_issue(
        template=template("smime-dual-use"), owner=holder, public_key=key.public_key()
    )


def sent() -> dict[str, str]:
    """The notice's body by recipient (one message per address)."""
    notices = [m for m in mail.outbox if m.subject == SUBJECT]
    assert all(len(m.to) == 1 for m in notices)
    return {m.to[0]: m.body for m in notices}


def test_an_agent_registered_in_the_admin_is_told_to_agents_and_administrators(
    people, admin_client_, new_certificate, django_capture_on_commit_callbacks
):
    pem = new_certificate.certificate.public_bytes(Encoding.PEM)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client_.post(
            "/admin/enrollment/keyrecoveryagent/add/",
            {
                "name": "Kate's KRA",
                "certificate": SimpleUploadedFile("kate.pem", pem),
                "user": new_certificate.owner.pk,
            },
            REMOTE_ADDR=ADDRESS,
        )

    assert response.status_code == 302
    agent = KeyRecoveryAgent.objects.get(name="Kate's KRA")
    bodies = sent()
    # The other agents (by certificate and by role) and the administrators; not a
    # deactivated agent, not officers or employees.
    assert set(bodies) == {
        "karl@example.com",
        "kim@example.com",
        "root-admin@example.com",
        "ops@example.com",
    }
    body = bodies["karl@example.com"]
    assert "Kate's KRA" in body
    assert format_fingerprint(agent.fingerprint_sha256) in body
    assert f"By:           {people['admin'].get_full_name()} (account root-admin)" in body
    assert f"From address: {ADDRESS}" in body
    when = date_format(timezone.localtime(agent.created_at), "Y-m-d H:i T")
    assert f"Registered:   {when}" in body
    assert "Holder:       Kate Keyholder" in body
    assert "PRIVATE KEY" not in body


def test_an_agent_registered_on_the_command_line_is_told_too(
    people, new_certificate, tmp_path, django_capture_on_commit_callbacks
):
    path = tmp_path / "kate.pem"
    path.write_bytes(new_certificate.certificate.public_bytes(Encoding.PEM))

    with django_capture_on_commit_callbacks(execute=True):
        call_command("register_kra", str(path), name="Kate's KRA", stdout=StringIO())

    body = sent()["kim@example.com"]
    assert "By:           the system (a management command" in body
    assert "From address: none (not through the web)" in body


def test_a_line_break_in_the_name_does_not_stop_the_notice(
    people, new_certificate, django_capture_on_commit_callbacks
):
    """The subject never carries the name: a header with a line break is not sent."""
    with django_capture_on_commit_callbacks(execute=True):
        services.kra_register(
            certificate=new_certificate.certificate,
            name="Quiet KRA\nBcc: someone@example.net",
            actor=people["admin"],
            source_address=ADDRESS,
        )

    assert "ops@example.com" in sent()


def test_a_refused_registration_tells_nobody(people, kra, django_capture_on_commit_callbacks):
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(InvalidState, match="already registered"),
    ):
        services.kra_register(certificate=kra.agent.certificate, name="Again")

    assert sent() == {}
