"""Fixtures and helpers of the RA tests (recovery, console, audit, expiry).

Loaded for every test as a plugin (tests/conftest.py ``pytest_plugins``); the helpers are
imported by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from enrollment import recovery, services
from enrollment.models import AuditEvent, Certificate, KeyRecoveryRequest
from enrollment.x509 import pkcs12
from enrollment.x509.keys import KeyAlgorithm, PrivateKey
from enrollment.x509.pkcs12 import load_pkcs12
from tests.conftest import Agent, client_for
from tests.factories import UserFactory

OWNER_PKCS12_PASSWORD = "Owner-Original-Lantern-27"
REASON = "Alice's laptop was stolen; she needs last year's encrypted mail."
HOLDER_REASON = "My laptop was stolen; I need to read last year's encrypted mail."
ACCEPT_NOTE = "Called Alice back on her directory number; she confirmed it."


@dataclass
class Archived:
    """An employee's encryption certificate whose key is archived to the test agent."""

    certificate: Certificate
    key: PrivateKey


@pytest.fixture
def fast_pkcs12(monkeypatch):
    """Few PBKDF2 rounds: each test opens and writes several PKCS#12 files (~0.1 s each).

    Same algorithms (openssl still opens them); only the iteration count is lower.
    """
    monkeypatch.setattr(pkcs12, "MODERN_KDF_ROUNDS", 1000)
    monkeypatch.setattr(pkcs12, "COMPATIBLE_KDF_ROUNDS", 1000)


@pytest.fixture
def quick_kra(hierarchy, template, key_pool, fast_pkcs12) -> Agent:
    """Like conftest's ``kra``, with a session-generated RSA key: RSA key generation is
    most of a test's setup. Modules that want it override ``kra`` with this."""
    holder = UserFactory(username="karl", first_name="Karl", last_name="Keeper")
    key = key_pool.get(KeyAlgorithm.RSA_2048, slot=300)
    certificate = services.certificate_issue(
        template=template("smime-dual-use"), owner=holder, public_key=key.public_key()
    )
    agent = services.kra_register(certificate=certificate.certificate, name="Test KRA", user=holder)
    password = "Agent-Own-Lantern-2026"
    bundle = pkcs12.export_pkcs12(
        key=key, certificate=certificate.certificate, chain=[], password=password
    )
    return Agent(agent, key, bundle, password)


@pytest.fixture
def agent_user(kra: Agent):
    """The test agent's holder (karl), in the key recovery agents' group."""
    holder = kra.agent.user
    holder.groups.add(Group.objects.get_or_create(name="Key recovery agents")[0])
    return holder


@pytest.fixture
def second_officer(db):
    user = UserFactory(username="oscar", first_name="Oscar", last_name="Second")
    user.groups.add(Group.objects.get_or_create(name="RA officers")[0])
    return user


@pytest.fixture
def archived(kra: Agent, template, employee) -> Archived:
    """Alice's S/MIME Encryption certificate (EC P-256: fast); the key is archived."""
    certificate, bundle = services.certificate_issue_with_server_key(
        template=template("smime-encryption"),
        owner=employee,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password=OWNER_PKCS12_PASSWORD,
    )
    key, _certificate, _chain = load_pkcs12(bundle, OWNER_PKCS12_PASSWORD)
    return Archived(certificate, key)


@pytest.fixture
def opened(archived: Archived, officer) -> KeyRecoveryRequest:
    """Olivia asked for Alice's key back, for Alice."""
    return recovery.recovery_open(certificate=archived.certificate, officer=officer, reason=REASON)


@pytest.fixture
def asked(archived: Archived, employee) -> KeyRecoveryRequest:
    """Alice asked for her own key back; no officer has accepted it yet."""
    return recovery.recovery_ask(
        certificate=archived.certificate, holder=employee, reason=HOLDER_REASON
    )


@pytest.fixture
def accepted(asked: KeyRecoveryRequest, officer) -> KeyRecoveryRequest:
    """Olivia confirmed Alice's request and accepted it: it is open, waiting for approval."""
    return recovery.recovery_accept(recovery=asked, officer=officer, note=ACCEPT_NOTE)


@pytest.fixture
def approved(opened: KeyRecoveryRequest, second_officer) -> KeyRecoveryRequest:
    return recovery.recovery_approve(recovery=opened, officer=second_officer)


@dataclass
class Performed:
    recovery: KeyRecoveryRequest
    password: str


@pytest.fixture
def performed(approved: KeyRecoveryRequest, kra: Agent, agent_user) -> Performed:
    done, password = recovery.recovery_perform(
        recovery=approved,
        agent_user=agent_user,
        agent_pkcs12=kra.pkcs12,
        agent_password=kra.password,
    )
    return Performed(done, password)


def agent_upload(data: bytes, password: str) -> dict[str, object]:
    """The perform form as a browser posts it (multipart: the PKCS#12 is a file)."""
    return {
        "agent_pkcs12": SimpleUploadedFile("agent.p12", data, "application/x-pkcs12"),
        "agent_password": password,
    }


def snapshot(found: KeyRecoveryRequest) -> dict[str, object]:
    """Everything a refused step must leave as it was."""
    found.refresh_from_db()
    return {
        "state": found.state,
        "requested_by": found.requested_by_id,
        "decided_by": found.decided_by_id,
        "acceptance_note": found.acceptance_note,
        "bundle": found.bundle,
        "agent": found.agent_id,
        "performed_by": found.performed_by_id,
        "download_expires_at": found.download_expires_at,
        "approvals": list(found.approvals.values_list("officer_id", flat=True)),
        "updated_at": found.updated_at,
    }


def clients(**users) -> dict[str, Client]:
    return {name: client_for(user) for name, user in users.items()}


def refused(attempted: str, reason: str) -> AuditEvent:
    """The one access.refused event of a refused attempt at ``attempted`` (a recovery step:
    no failure event of the step's own beside it), for ``reason``."""
    assert not AuditEvent.objects.filter(
        action=attempted, outcome=AuditEvent.Outcome.FAILURE
    ).exists()
    (event,) = AuditEvent.objects.filter(action="access.refused")
    assert event.outcome == AuditEvent.Outcome.FAILURE
    assert event.detail == {"attempted": attempted, "reason": reason}
    return event
