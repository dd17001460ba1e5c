"""Key recovery offline: the agent decrypts the exported archive on their own machine with
OpenSSL and hands in only the recovered key, so their agent key never reaches the server."""

from __future__ import annotations

import pytest

from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from enrollment import recovery
from enrollment.exceptions import InvalidState, NotPermitted
from enrollment.models import AuditEvent, KeyRecoveryRequest
from enrollment.recovery import MAX_AGENT_PKCS12_BYTES
from enrollment.x509 import pkcs12
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for
from tests.enrollment.ra_fixtures import snapshot
from tests.enrollment.test_no_private_keys import key_needles, scan

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_pkcs12")]

State = KeyRecoveryRequest.State
PASSPHRASE = "Offline-Lantern-Passphrase-2026"


@pytest.fixture
def kra(quick_kra):
    return quick_kra


def key_upload(data: bytes, passphrase: str = PASSPHRASE) -> dict[str, object]:
    """The offline form as a browser posts it."""
    return {
        "recovered_key": SimpleUploadedFile("recovered-key.pem", data, "application/octet-stream"),
        "key_passphrase": passphrase,
    }


def encrypted_pem(key, passphrase: str = PASSPHRASE) -> bytes:
    return key.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(passphrase.encode())
    )


def archive(client: Client, found: KeyRecoveryRequest):
    return client.post(f"/ra/recovery/{found.pk}/archive/")


def hand_in(client: Client, found: KeyRecoveryRequest, data: bytes, passphrase: str = PASSPHRASE):
    return client.post(f"/ra/recovery/{found.pk}/perform/offline/", key_upload(data, passphrase))


# --- the whole way, with openssl on the agent's side ------------------------------------


@pytest.mark.interop
def test_an_agent_recovers_offline_with_openssl_and_the_holder_opens_the_file(
    approved, archived, kra, agent_user, employee, openssl
):
    agent = client_for(agent_user)
    page = agent.get(f"/ra/recovery/{approved.pk}/perform/")
    assert page.status_code == 200
    assert "Download the archive" in page.content.decode()

    response = archive(agent, approved)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pkcs7-mime"
    name = f"recovery-{approved.pk}-{archived.certificate.serial[:12]}.p7m"
    assert name in response["Content-Disposition"]
    openssl.write(name, response.content)

    # On the agent's machine, the commands the page gives, without prompts.
    openssl.write("agent.p12", kra.pkcs12)
    openssl.run(
        "pkcs12", "-in", "agent.p12", "-passin", f"pass:{kra.password}", "-nocerts",
        "-passout", "pass:agent-key-pass", "-out", "agent-key.pem",
    )  # fmt: skip
    openssl.run(
        "pkcs12", "-in", "agent.p12", "-passin", f"pass:{kra.password}", "-clcerts",
        "-nokeys", "-out", "agent.crt",
    )  # fmt: skip
    decrypted = openssl.run(
        "cms", "-decrypt", "-inform", "DER", "-in", name, "-recip", "agent.crt",
        "-inkey", "agent-key.pem", "-passin", "pass:agent-key-pass",
    ).stdout  # fmt: skip
    openssl.run(
        "pkey", "-inform", "DER", "-aes256", "-passout", f"pass:{PASSPHRASE}",
        "-out", "recovered-key.pem", input=decrypted,
    )  # fmt: skip
    recovered = openssl.path("recovered-key.pem").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in recovered

    response = hand_in(agent, approved, recovered)
    assert response.status_code == 200, response.content.decode()
    password = response.context["one_time_password"]
    assert "no-store" in response["Cache-Control"]

    # The holder downloads it once and opens it with openssl.
    response = client_for(employee).post(f"/ra/recovery/{approved.pk}/download/")
    assert response.status_code == 200
    openssl.write("recovered.p12", response.content)
    openssl.run(
        "pkcs12", "-in", "recovered.p12", "-passin", f"pass:{password}", "-nodes",
        "-out", "recovered.pem",
    )  # fmt: skip
    opened_key = openssl.run("pkey", "-in", "recovered.pem", "-pubout").stdout
    certificate_key = openssl.run(
        "x509", "-in", openssl.write_pem("holder.pem", archived.certificate.certificate),
        "-noout", "-pubkey",
    ).stdout  # fmt: skip
    assert opened_key == certificate_key

    performed = AuditEvent.objects.get(action="recovery.perform")
    assert performed.detail["offline"] is True
    assert performed.detail["agent"] == kra.agent.name
    assert AuditEvent.objects.filter(action="recovery.export", outcome="success").count() == 1


def test_an_unencrypted_der_key_is_taken_too(approved, archived, agent_user, employee):
    der = archived.key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())

    done, password = recovery.recovery_perform_offline(
        recovery=approved, agent_user=agent_user, key_file=der, key_passphrase=""
    )

    assert done.state == State.READY
    _found, bundle = recovery.recovery_download(recovery=done, user=employee)
    key, certificate, _chain = pkcs12.load_pkcs12(bundle, password)
    assert certificate == archived.certificate.certificate
    assert key.public_key() == archived.key.public_key()


# --- who may, and who may not ------------------------------------------------------------


def test_anonymous_callers_are_sent_to_sign_in(approved, archived):
    for response in (
        archive(Client(), approved),
        hand_in(Client(), approved, encrypted_pem(archived.key)),
    ):
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")
    assert AuditEvent.objects.filter(action="recovery.export").count() == 0


@pytest.mark.parametrize("who", ["employee", "officer", "colleague"])
def test_only_key_recovery_agents_get_the_archive_or_hand_in_a_key(
    who, approved, archived, request
):
    user = request.getfixturevalue(who)
    before = snapshot(approved)
    client = client_for(user)

    assert archive(client, approved).status_code in (403, 404)
    assert hand_in(client, approved, encrypted_pem(archived.key)).status_code in (403, 404)
    assert snapshot(approved) == before


def test_the_archive_waits_for_the_approvals(opened, agent_user):
    response = archive(client_for(agent_user), opened)

    assert response.status_code == 400  # as the other steps' InvalidState
    assert "approval" in response.content.decode()
    failure = AuditEvent.objects.get(action="recovery.export")
    assert failure.outcome == AuditEvent.Outcome.FAILURE


def test_an_agent_who_approved_gets_neither_the_archive_nor_a_say(
    archived, officer, agent_user, second_officer
):
    agent_user.groups.add(*second_officer.groups.all())
    opened = recovery.recovery_open(certificate=archived.certificate, officer=officer, reason="x")
    recovery.recovery_approve(recovery=opened, officer=agent_user)

    with pytest.raises(NotPermitted, match="another key recovery agent"):
        recovery.recovery_archive_export(recovery=opened, agent_user=agent_user)
    with pytest.raises(NotPermitted, match="another key recovery agent"):
        recovery.recovery_perform_offline(
            recovery=opened,
            agent_user=agent_user,
            key_file=encrypted_pem(archived.key),
            key_passphrase=PASSPHRASE,
        )


def test_an_agent_whose_certificates_are_not_recipients_gets_no_archive(approved, kra, officer):
    """The archive's only recipient is registered for karl: another agent cannot open it."""
    from django.contrib.auth.models import Group

    from tests.factories import UserFactory

    other = UserFactory(username="kim")
    other.groups.add(Group.objects.get_or_create(name="Key recovery agents")[0])

    response = archive(client_for(other), approved)

    assert response.status_code == 403
    assert "archived only to agent certificates of other accounts" in response.content.decode()
    page = client_for(other).get(f"/ra/recovery/{approved.pk}/perform/")
    assert "Download the archive" not in page.content.decode()


# --- what is refused changes nothing -----------------------------------------------------


def test_another_key_is_refused_and_changes_nothing(approved, agent_user, key_pool):
    before = snapshot(approved)
    stranger = key_pool.get(KeyAlgorithm.EC_P256, slot=301)

    response = hand_in(client_for(agent_user), approved, encrypted_pem(stranger))

    assert response.status_code == 400
    assert "is not the key of certificate" in response.content.decode()
    assert snapshot(approved) == before
    failure = AuditEvent.objects.get(action="recovery.perform")
    assert failure.outcome == AuditEvent.Outcome.FAILURE


@pytest.mark.parametrize(
    ("data", "passphrase", "message"),
    [
        (None, PASSPHRASE + "x", "wrong passphrase"),
        (None, "", "a passphrase is required"),
        (b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n", "", "PEM"),
        (b"\x30\x03\x02\x01\x00", "", "DER"),
        (b"", "", "empty"),
    ],
)
def test_an_unreadable_key_is_refused(approved, archived, agent_user, data, passphrase, message):
    before = snapshot(approved)
    data = encrypted_pem(archived.key) if data is None else data

    response = hand_in(client_for(agent_user), approved, data, passphrase)

    assert response.status_code == 400
    assert message.lower() in response.content.decode().lower()
    assert snapshot(approved) == before
    assert PASSPHRASE not in response.content.decode()


def test_an_oversized_file_is_refused(approved, agent_user):
    before = snapshot(approved)

    response = hand_in(client_for(agent_user), approved, b"A" * (MAX_AGENT_PKCS12_BYTES + 10))

    assert response.status_code == 400
    assert "far larger than a private key" in response.content.decode()
    assert snapshot(approved) == before


def test_a_performed_recovery_takes_no_second_key(approved, archived, agent_user):
    recovery.recovery_perform_offline(
        recovery=approved, agent_user=agent_user, key_file=encrypted_pem(archived.key),
        key_passphrase=PASSPHRASE,
    )  # fmt: skip

    with pytest.raises(InvalidState):
        recovery.recovery_perform_offline(
            recovery=approved, agent_user=agent_user, key_file=encrypted_pem(archived.key),
            key_passphrase=PASSPHRASE,
        )  # fmt: skip
    with pytest.raises(InvalidState):
        recovery.recovery_archive_export(recovery=approved, agent_user=agent_user)


def test_no_key_or_passphrase_is_kept(approved, archived, kra, agent_user, caplog):
    response = hand_in(client_for(agent_user), approved, encrypted_pem(archived.key))
    assert response.status_code == 200
    password = response.context["one_time_password"]

    needles = key_needles("Alice's key", archived.key) | key_needles("KRA key", kra.key)
    needles["passphrase"] = PASSPHRASE.encode()
    needles["one-time password"] = password.encode()
    assert scan(needles) == []
    assert PASSPHRASE not in caplog.text
    text = " ".join(str(e.detail) for e in AuditEvent.objects.all())
    assert PASSPHRASE not in text
    assert password not in text


def test_the_service_refuses_someone_who_is_no_agent(approved, archived, officer):
    with pytest.raises(NotPermitted, match="Only key recovery agents"):
        recovery.recovery_archive_export(recovery=approved, agent_user=officer)
    with pytest.raises(NotPermitted, match="Only key recovery agents"):
        recovery.recovery_perform_offline(
            recovery=approved, agent_user=officer, key_file=encrypted_pem(archived.key),
            key_passphrase=PASSPHRASE,
        )  # fmt: skip
