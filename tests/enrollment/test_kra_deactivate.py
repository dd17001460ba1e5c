"""Deactivating a key recovery agent: new archives leave it out, old ones still name it."""

from __future__ import annotations

import re
from io import StringIO

import pytest

from django.contrib.messages import get_messages
from django.core.management import call_command
from django.core.management.base import CommandError

from enrollment import services
from enrollment.exceptions import ConfigurationError, InvalidState, PolicyViolation
from enrollment.models import ArchivedKey, AuditEvent, Certificate, KeyRecoveryAgent
from enrollment.ra_selectors import archives_only_agent_opens, usable_agents
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_pkcs12")]

CHANGELIST = "/admin/enrollment/keyrecoveryagent/"
REASON = "Karl left the security team."


@pytest.fixture
def kra(quick_kra):
    return quick_kra


@pytest.fixture
def second_agent(kra, template, key_pool) -> KeyRecoveryAgent:
    holder = UserFactory(username="kim")
    key = key_pool.get(KeyAlgorithm.RSA_2048, slot=301)
    certificate = services.certificate_issue(
        template=template("smime-dual-use"), owner=holder, public_key=key.public_key()
    )
    return services.kra_register(
        certificate=certificate.certificate, name="Second KRA", user=holder
    )


def archive_for(owner, template) -> ArchivedKey:
    certificate, _bundle = services.certificate_issue_with_server_key(
        template=template("smime-encryption"),
        owner=owner,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password="Owner-Archive-Lantern-31",
    )
    return ArchivedKey.objects.get(certificate=certificate)


def envelope_recipient_serials(openssl, archived: ArchivedKey) -> set[int]:
    """The serial numbers of the recipients openssl finds in the CMS envelope itself."""
    path = openssl.write("envelope.der", bytes(archived.envelope))
    printed = openssl.run("cms", "-cmsout", "-print", "-inform", "DER", "-in", path).stdout
    return {int(serial, 16) for serial in re.findall(rb"serialNumber: 0x([0-9A-Fa-f]+)", printed)}


# --- the service -----------------------------------------------------------------------


def test_a_deactivated_agent_is_left_out_of_new_archives(
    kra, second_agent, template, employee, colleague, openssl
):
    before = archive_for(employee, template)

    services.kra_deactivate(agent=kra.agent, reason=REASON)
    after = archive_for(colleague, template)

    first, second = kra.agent.certificate.serial_number, second_agent.certificate.serial_number
    assert envelope_recipient_serials(openssl, before) == {first, second}
    assert envelope_recipient_serials(openssl, after) == {second}
    assert set(after.recipients.all()) == {second_agent}
    assert set(before.recipients.all()) == {kra.agent, second_agent}  # old archives keep it


def test_deactivation_is_audited_with_the_reason_and_what_only_it_opens(kra, template, employee):
    archive_for(employee, template)

    outcome = services.kra_deactivate(agent=kra.agent, reason=f"  {REASON}\n", actor=employee)

    agent = outcome.agent
    assert not agent.is_active
    assert (outcome.archives_only_it_opens, outcome.usable_agents_left) == (1, 0)
    assert not KeyRecoveryAgent.objects.get(pk=kra.agent.pk).is_active
    event = AuditEvent.objects.get(action="kra.deactivate")
    assert event.object_id == str(kra.agent.pk)
    assert event.actor == employee
    assert event.detail == {
        "reason": REASON,
        "archives_only_it_opens": 1,
        "usable_agents_left": 0,
    }


def test_without_a_usable_agent_an_archiving_template_issues_nothing(kra, template, employee):
    services.kra_deactivate(agent=kra.agent, reason=REASON)
    certificates = Certificate.objects.count()

    with pytest.raises(ConfigurationError, match="key recovery agent"):
        archive_for(employee, template)

    assert Certificate.objects.count() == certificates
    assert not ArchivedKey.objects.filter(certificate__owner=employee).exists()


def test_a_reason_is_required_and_an_inactive_agent_stays_as_it_is(kra):
    with pytest.raises(PolicyViolation, match="why"):
        services.kra_deactivate(agent=kra.agent, reason=" \n ")
    assert KeyRecoveryAgent.objects.get(pk=kra.agent.pk).is_active

    services.kra_deactivate(agent=kra.agent, reason=REASON)
    with pytest.raises(InvalidState, match="already inactive"):
        services.kra_deactivate(agent=kra.agent, reason=REASON)

    assert AuditEvent.objects.filter(action="kra.deactivate").count() == 1


def test_archives_only_an_agent_opens_count_archives_with_no_other_recipient(
    kra, second_agent, template, employee, colleague
):
    shared = archive_for(employee, template)  # to both agents
    services.kra_deactivate(agent=second_agent, reason=REASON)
    archive_for(colleague, template)  # to the first agent only

    assert shared.recipients.count() == 2
    assert archives_only_agent_opens(kra.agent) == 1
    assert archives_only_agent_opens(second_agent) == 0
    assert list(usable_agents()) == [kra.agent]


def test_the_agents_page_shows_a_deactivated_agent_as_inactive(kra, officer):
    services.kra_deactivate(agent=kra.agent, reason=REASON)

    page = client_for(officer).get("/ra/agents/")

    (row,) = page.context["agents"].rows
    assert row.state == "inactive"
    assert page.context["agents"].valid == 0


# --- the admin action -----------------------------------------------------------------


def action(client, agents, **extra):
    data = {"action": "deactivate", "_selected_action": [a.pk for a in agents], **extra}
    return client.post(CHANGELIST, data)


def test_the_admin_confirms_with_what_is_at_stake_before_deactivating(
    admin_client_, kra, template, employee
):
    archive_for(employee, template)

    page = action(admin_client_, [kra.agent])

    assert page.status_code == 200
    assert page.context["rows"] == [(kra.agent, 1)]
    assert page.context["remaining"] == 0
    assert "No usable agent will be left" in page.content.decode()
    assert KeyRecoveryAgent.objects.get(pk=kra.agent.pk).is_active


def test_the_admin_deactivates_with_a_reason(admin_client_, admin_user, kra, second_agent):
    response = action(admin_client_, [kra.agent], confirm="yes", reason=REASON)

    assert response.status_code == 302
    assert not KeyRecoveryAgent.objects.get(pk=kra.agent.pk).is_active
    assert KeyRecoveryAgent.objects.get(pk=second_agent.pk).is_active
    event = AuditEvent.objects.get(action="kra.deactivate")
    assert event.actor == admin_user
    assert event.detail["reason"] == REASON
    assert event.detail["usable_agents_left"] == 1
    shown = [str(m) for m in get_messages(response.wsgi_request)]
    assert shown == ["Deactivated Test KRA: keys archived from now on are not encrypted to it."]


def test_the_admin_warns_when_no_usable_agent_is_left(admin_client_, kra, second_agent):
    response = action(admin_client_, [kra.agent, second_agent], confirm="yes", reason=REASON)

    assert response.status_code == 302
    shown = [str(m) for m in get_messages(response.wsgi_request)]
    assert services.NO_USABLE_AGENT_LEFT in shown
    assert len([m for m in shown if m.startswith("Deactivated ")]) == 2


def test_the_admin_must_say_why(admin_client_, kra):
    response = action(admin_client_, [kra.agent], confirm="yes", reason="   ")

    assert response.status_code == 400
    assert KeyRecoveryAgent.objects.get(pk=kra.agent.pk).is_active
    assert not AuditEvent.objects.filter(action="kra.deactivate").exists()


def test_staff_without_the_change_permission_cannot_deactivate(kra):
    staff = UserFactory(username="sam", is_staff=True)
    staff.user_permissions.add(*_view_permission())
    client = client_for(staff)

    listing = client.get(CHANGELIST)
    response = action(client, [kra.agent], confirm="yes", reason=REASON)

    assert listing.status_code == 200
    assert listing.context["action_form"] is None  # no action is offered to them
    assert 'value="deactivate"' not in listing.content.decode()
    assert response.status_code == 200  # the list again: no action exists for them
    assert KeyRecoveryAgent.objects.get(pk=kra.agent.pk).is_active
    assert not AuditEvent.objects.filter(action="kra.deactivate").exists()


def test_employees_and_anonymous_never_reach_the_action(kra, employee, anonymous_client):
    for client in (client_for(employee), anonymous_client):
        response = action(client, [kra.agent], confirm="yes", reason=REASON)
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]
    assert KeyRecoveryAgent.objects.get(pk=kra.agent.pk).is_active


def _view_permission():
    from django.contrib.auth.models import Permission

    return Permission.objects.filter(codename="view_keyrecoveryagent")


# --- the command ----------------------------------------------------------------------


def deactivate_kra(*args: str) -> str:
    out = StringIO()
    call_command("deactivate_kra", *args, stdout=out)
    return out.getvalue()


def test_the_command_finds_the_agent_by_fingerprint_with_colons(kra, template, employee):
    archive_for(employee, template)
    fingerprint = kra.agent.fingerprint_sha256.upper()
    with_colons = ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2))

    output = deactivate_kra(with_colons, "--reason", REASON)

    assert not KeyRecoveryAgent.objects.get(pk=kra.agent.pk).is_active
    assert "Deactivated key recovery agent Test KRA" in output
    assert "1 archived key(s) can be recovered only with this agent's private key" in output
    assert "No usable key recovery agent is left" in output


def test_the_command_finds_the_agent_by_name(kra, second_agent):
    output = deactivate_kra("Second KRA", "--reason", REASON)

    assert not KeyRecoveryAgent.objects.get(pk=second_agent.pk).is_active
    assert KeyRecoveryAgent.objects.get(pk=kra.agent.pk).is_active
    assert "No usable key recovery agent is left" not in output


def test_the_command_names_what_it_cannot_do(kra):
    with pytest.raises(CommandError, match="No key recovery agent 'Nobody'"):
        deactivate_kra("Nobody", "--reason", REASON)
    deactivate_kra("Test KRA", "--reason", REASON)
    with pytest.raises(CommandError, match="already inactive"):
        deactivate_kra("Test KRA", "--reason", REASON)
    with pytest.raises(CommandError, match="why"):
        deactivate_kra(kra.agent.fingerprint_sha256, "--reason", " ")
