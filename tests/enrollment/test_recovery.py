"""Key recovery under dual control: open, approve, perform with the agent PKCS#12, download."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import time_machine

from django.core import mail
from django.db import OperationalError
from django.utils import timezone

from enrollment import recovery, services
from enrollment.exceptions import InvalidState, NotPermitted, PolicyViolation
from enrollment.models import ArchivedKey, AuditEvent, KeyRecoveryApproval, KeyRecoveryRequest
from enrollment.x509 import pkcs12
from enrollment.x509.errors import X509Error
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for
from tests.enrollment.ra_fixtures import (
    OWNER_PKCS12_PASSWORD,
    REASON,
    agent_upload,
    refused,
    snapshot,
)
from tests.enrollment.test_no_private_keys import key_needles, scan
from tests.enrollment.tools import error_report
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_pkcs12")]


@pytest.fixture
def kra(quick_kra):
    return quick_kra


MESSAGE = b"Content-Type: text/plain\r\n\r\nLast year's budget, for your eyes only.\r\n"
OTP = re.compile(r"^[A-HJ-KMNP-Z2-9]{4}(-[A-HJ-KMNP-Z2-9]{4}){5}$")
State = KeyRecoveryRequest.State


# --- the whole way, as people do it in the browser --------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("fmt", ["modern", "compatible"])
def test_a_recovered_key_decrypts_mail_encrypted_to_the_lost_certificate(
    fmt, archived, officer, second_officer, kra, agent_user, employee, openssl
):
    # Mail someone encrypted to Alice's certificate, with openssl.
    openssl.write_pem("alice.pem", archived.certificate.certificate)
    openssl.write("message.txt", MESSAGE)
    openssl.run(
        "cms", "-encrypt", "-aes256", "-in", "message.txt", "-out", "message.p7m",
        "alice.pem",
    )  # fmt: skip

    # Olivia opens the recovery for Alice; Oscar approves.
    response = client_for(officer).post(
        "/ra/recovery/new/",
        {
            "certificate": archived.certificate.pk,
            "reason": REASON,
            "deliver_to": "owner",
            "pkcs12_format": fmt,
        },
    )
    found = KeyRecoveryRequest.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/ra/recovery/{found.pk}/"
    response = client_for(second_officer).post(f"/ra/recovery/{found.pk}/approve/")
    assert response.status_code == 302
    found.refresh_from_db()
    assert found.state == State.APPROVED

    # Karl, a key recovery agent, carries it out with his agent PKCS#12.
    response = client_for(agent_user).post(
        f"/ra/recovery/{found.pk}/perform/", agent_upload(kra.pkcs12, kra.password)
    )
    assert response.status_code == 200
    password = response.context["one_time_password"]
    assert OTP.match(password)
    assert password in response.content.decode()
    assert "no-store" in response["Cache-Control"]

    # Alice downloads it, once, and opens it with the password Karl tells her.
    response = client_for(employee).post(f"/ra/recovery/{found.pk}/download/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-pkcs12"
    openssl.write("recovered.p12", response.content)
    openssl.run(
        "pkcs12", "-in", "recovered.p12", "-passin", f"pass:{password}", "-nodes",
        "-out", "recovered.pem",
    )  # fmt: skip
    openssl.run(
        "cms", "-decrypt", "-in", "message.p7m", "-recip", "alice.pem",
        "-inkey", "recovered.pem", "-out", "decrypted.txt",
    )  # fmt: skip

    assert openssl.path("decrypted.txt").read_bytes().replace(b"\r\n", b"\n") == MESSAGE.replace(
        b"\r\n", b"\n"
    )
    found.refresh_from_db()
    assert found.state == State.DOWNLOADED
    assert found.bundle is None


def test_the_recovered_file_holds_the_key_certificate_and_chain(performed, archived, employee):
    _found, bundle = recovery.recovery_download(recovery=performed.recovery, user=employee)

    key, certificate, chain = pkcs12.load_pkcs12(bundle, performed.password)

    assert certificate == archived.certificate.certificate
    assert key.public_key() == archived.key.public_key()
    assert [c.subject.rfc4514_string() for c in chain] == [
        ca.subject for ca in archived.certificate.ca.chain()
    ]


# --- dual control ---------------------------------------------------------------------


def test_the_requester_cannot_approve_their_own_request(opened, officer):
    with pytest.raises(NotPermitted, match="another officer must approve"):
        recovery.recovery_approve(recovery=opened, officer=officer)

    opened.refresh_from_db()
    assert opened.state == State.PENDING
    assert not KeyRecoveryApproval.objects.exists()
    assert refused("recovery.approve", "dual_control").actor == officer


def test_the_key_owner_cannot_approve_the_recovery_of_their_own_key(opened, employee):
    employee.groups.add(*type(employee).objects.get(username="olivia").groups.all())

    with pytest.raises(NotPermitted, match="your own key"):
        recovery.recovery_approve(recovery=opened, officer=employee)


def test_an_officer_approves_only_once(opened, second_officer, settings):
    settings.PKIPORTAL_RECOVERY_APPROVALS = 2
    recovery.recovery_approve(recovery=opened, officer=second_officer)

    with pytest.raises(InvalidState, match="already approved"):
        recovery.recovery_approve(recovery=opened, officer=second_officer)
    opened.refresh_from_db()
    assert opened.state == State.PENDING


def test_it_needs_as_many_other_officers_as_configured(opened, second_officer, settings):
    settings.PKIPORTAL_RECOVERY_APPROVALS = 2
    third = UserFactory(username="tina")
    third.groups.add(*second_officer.groups.all())

    assert recovery.recovery_approve(recovery=opened, officer=second_officer).state == State.PENDING
    assert recovery.recovery_approve(recovery=opened, officer=third).state == State.APPROVED


def test_an_employee_cannot_open_or_approve_a_recovery(archived, employee, colleague, opened):
    with pytest.raises(NotPermitted):
        recovery.recovery_open(certificate=archived.certificate, officer=colleague, reason="x")
    with pytest.raises(NotPermitted):
        recovery.recovery_approve(recovery=opened, officer=colleague)
    assert KeyRecoveryRequest.objects.count() == 1


def test_an_unapproved_recovery_cannot_be_carried_out(opened, kra, agent_user):
    before = snapshot(opened)

    with pytest.raises(InvalidState, match="needs 1 more approval"):
        recovery.recovery_perform(
            recovery=opened,
            agent_user=agent_user,
            agent_pkcs12=kra.pkcs12,
            agent_password=kra.password,
        )

    assert snapshot(opened) == before


def test_only_a_key_recovery_agent_carries_it_out(approved, kra, officer):
    with pytest.raises(NotPermitted, match="Only key recovery agents"):
        recovery.recovery_perform(
            recovery=approved, agent_user=officer, agent_pkcs12=kra.pkcs12,
            agent_password=kra.password,
        )  # fmt: skip


def test_the_agent_cannot_recover_a_key_they_will_receive(
    archived, kra, agent_user, second_officer
):
    """The requesting officer receives it, and is the agent: nobody holds file and password."""
    agent_user.groups.add(*second_officer.groups.all())
    opened = recovery.recovery_open(
        certificate=archived.certificate, officer=agent_user, reason=REASON,
        deliver_to="requester",
    )  # fmt: skip
    recovery.recovery_approve(recovery=opened, officer=second_officer)

    with pytest.raises(NotPermitted, match="another key recovery agent"):
        recovery.recovery_perform(
            recovery=opened, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
            agent_password=kra.password,
        )  # fmt: skip


def test_an_officer_who_approved_cannot_carry_it_out(archived, officer, kra, agent_user):
    """Karl, agent and officer, approves Olivia's request for herself: two people, refused."""
    agent_user.groups.add(*officer.groups.all())
    opened = recovery.recovery_open(
        certificate=archived.certificate, officer=officer, reason=REASON, deliver_to="requester"
    )
    recovery.recovery_approve(recovery=opened, officer=agent_user)
    before = snapshot(opened)

    with pytest.raises(NotPermitted, match="You approved this recovery"):
        recovery.recovery_perform(
            recovery=opened, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
            agent_password=kra.password,
        )  # fmt: skip

    assert snapshot(opened) == before
    assert refused("recovery.perform", "dual_control").object_id == str(opened.pk)


def test_the_keys_owner_cannot_carry_out_its_recovery_for_an_officer(
    kra, agent_user, template, officer, second_officer, people_client_for_agent
):
    """Karl, an agent, holds an archived key; Olivia opens its recovery for herself (a legal
    hold) and Oscar approves. Karl is neither recipient, opener nor approver, yet it is his
    own key: refused, and the page does not offer it to him."""
    certificate, _bundle = services.certificate_issue_with_server_key(
        template=template("smime-encryption"),
        owner=agent_user,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password="karl's own pkcs12 password",
    )
    opened = recovery.recovery_open(
        certificate=certificate, officer=officer, reason=REASON, deliver_to="requester"
    )
    recovery.recovery_approve(recovery=opened, officer=second_officer)
    before = snapshot(opened)

    page = people_client_for_agent.get(f"/ra/recovery/{opened.pk}/")
    with pytest.raises(NotPermitted, match="your own key"):
        recovery.recovery_perform(
            recovery=opened, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
            agent_password=kra.password,
        )  # fmt: skip

    assert not page.context["can_perform"]
    assert "it is your own key" in page.content.decode()
    assert snapshot(opened) == before
    assert refused("recovery.perform", "own_key").actor == agent_user


@pytest.fixture
def people_client_for_agent(agent_user):
    return client_for(agent_user)


def test_the_officer_who_opened_it_cannot_carry_it_out(archived, kra, agent_user, second_officer):
    """Karl, agent and officer, opens a recovery for Alice and Oscar approves: still refused."""
    agent_user.groups.add(*second_officer.groups.all())
    opened = recovery.recovery_open(
        certificate=archived.certificate, officer=agent_user, reason=REASON
    )
    recovery.recovery_approve(recovery=opened, officer=second_officer)
    before = snapshot(opened)

    with pytest.raises(NotPermitted, match="You opened this recovery"):
        recovery.recovery_perform(
            recovery=opened, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
            agent_password=kra.password,
        )  # fmt: skip

    assert snapshot(opened) == before


def test_the_agent_is_checked_again_under_the_row_lock(approved, kra, agent_user, monkeypatch):
    """An approval by the agent that lands while the archive is being decrypted still counts."""
    open_agent_pkcs12 = recovery._open_agent_pkcs12

    def approval_lands_meanwhile(*args, **kwargs):
        KeyRecoveryApproval.objects.create(request=approved, officer=agent_user)
        return open_agent_pkcs12(*args, **kwargs)

    monkeypatch.setattr(recovery, "_open_agent_pkcs12", approval_lands_meanwhile)

    with pytest.raises(NotPermitted, match="You approved this recovery"):
        recovery.recovery_perform(
            recovery=approved, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
            agent_password=kra.password,
        )  # fmt: skip

    approved.refresh_from_db()
    assert (approved.state, approved.bundle) == (State.APPROVED, None)


@pytest.mark.parametrize("approvals", [1, 2])
@pytest.mark.parametrize("deliver_to", ["owner", "requester"])
def test_it_takes_approvals_plus_two_people_whoever_receives_the_key(
    deliver_to, approvals, archived, officer, kra, agent_user, employee, settings
):
    """README: the opener, the approvers and an agent who is none of them, all different."""
    settings.PKIPORTAL_RECOVERY_APPROVALS = approvals
    officers, agents = officer.groups.get(), agent_user.groups.get()
    approvers = [UserFactory(username=f"approver{n}") for n in range(approvals)]
    for person in (officer, *approvers):
        person.groups.add(agents)  # every officer involved is an agent too
    opened = recovery.recovery_open(
        certificate=archived.certificate, officer=officer, reason=REASON, deliver_to=deliver_to
    )
    for approver in approvers:
        approver.groups.add(officers)
        recovery.recovery_approve(recovery=opened, officer=approver)

    for involved in (officer, *approvers):
        with pytest.raises(NotPermitted, match="another key recovery agent"):
            recovery.recovery_perform(
                recovery=opened, agent_user=involved, agent_pkcs12=kra.pkcs12,
                agent_password=kra.password,
            )  # fmt: skip
    done, _password = recovery.recovery_perform(
        recovery=opened, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
        agent_password=kra.password,
    )  # fmt: skip

    people = {done.requested_by_id, *(a.pk for a in approvers), done.performed_by_id}
    assert len(people) == approvals + 2
    assert done.recipient_id in (officer.pk, employee.pk)


# --- a wrong agent credential changes nothing -----------------------------------------


def test_a_wrong_agent_password_changes_nothing(approved, kra, agent_user, archived):
    before = snapshot(approved)
    envelope = bytes(ArchivedKey.objects.get().envelope)

    with pytest.raises(PolicyViolation, match="password is wrong") as refused:
        recovery.recovery_perform(
            recovery=approved,
            agent_user=agent_user,
            agent_pkcs12=kra.pkcs12,
            agent_password=kra.password + "x",
        )

    assert refused.value.field == "agent_password"
    assert snapshot(approved) == before
    assert bytes(ArchivedKey.objects.get().envelope) == envelope
    # Only the attempt is on the record, without the password.
    failure = AuditEvent.objects.get(action="recovery.perform")
    assert failure.outcome == AuditEvent.Outcome.FAILURE
    assert kra.password not in str(failure.detail)


def test_the_wrong_agents_pkcs12_changes_nothing(approved, agent_user, template):
    """Registered after Alice's key was archived: it is not among the archive's recipients."""
    late_password = "Late-Agent-Lantern-55"
    late_cert, late_bundle = services.certificate_issue_with_server_key(
        template=template("smime-dual-use"),
        owner=agent_user,
        key_algorithm=KeyAlgorithm.RSA_2048,
        pkcs12_password=late_password,
    )
    services.kra_register(certificate=late_cert.certificate, name="Late KRA", user=agent_user)
    before = snapshot(approved)

    with pytest.raises(PolicyViolation, match="not archived to Late KRA.*Test KRA"):
        recovery.recovery_perform(
            recovery=approved,
            agent_user=agent_user,
            agent_pkcs12=late_bundle,
            agent_password=late_password,
        )

    assert snapshot(approved) == before


def test_a_pkcs12_that_is_no_agents_is_refused(approved, agent_user, template):
    bundle = services.certificate_issue_with_server_key(
        template=template("smime-signing"),
        owner=agent_user,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password="Just-My-Own-Lantern-12",
    )[1]
    before = snapshot(approved)

    with pytest.raises(PolicyViolation, match="not a registered key recovery agent"):
        recovery.recovery_perform(
            recovery=approved, agent_user=agent_user, agent_pkcs12=bundle,
            agent_password="Just-My-Own-Lantern-12",
        )  # fmt: skip

    assert snapshot(approved) == before


def test_an_agent_certificate_is_used_only_by_its_holder(approved, kra, second_officer):
    """Another member of the agents' group who got hold of Karl's file and password."""
    other_agent = UserFactory(username="kim")
    other_agent.groups.create(name="Key recovery agents")
    before = snapshot(approved)

    with pytest.raises(NotPermitted, match="belongs to another account"):
        recovery.recovery_perform(
            recovery=approved, agent_user=other_agent, agent_pkcs12=kra.pkcs12,
            agent_password=kra.password,
        )  # fmt: skip

    assert snapshot(approved) == before


# --- secrets stay out of error reports ------------------------------------------------


def _raise(*args, **kwargs):
    raise OperationalError("server closed the connection unexpectedly")


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("where", ["opening the agent file", "the final step"])
def test_an_error_while_recovering_keeps_the_passwords_out_of_the_report(
    where, debug, approved, kra, agent_user, monkeypatch, settings
):
    """Every frame from recovery_perform down, the x509 code's included, is masked.

    (Secrets made at run time: a literal would show in the report's source lines.)"""
    settings.DEBUG = debug
    one_time = recovery.one_time_password()
    monkeypatch.setattr(recovery, "one_time_password", lambda: one_time)
    if where == "the final step":
        monkeypatch.setattr(recovery, "_lock", _raise)  # the key and the OTP are in memory
    else:
        monkeypatch.setattr(pkcs12.pkcs12, "load_key_and_certificates", _raise)

    with error_report(OperationalError) as report:
        recovery.recovery_perform(
            recovery=approved, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
            agent_password=kra.password,
        )  # fmt: skip

    assert "recovery_perform" in report.text
    assert "agent_password" in report.text  # the frame is there, its value is not
    assert kra.password not in report.text
    assert one_time not in report.text


# --- the one download -----------------------------------------------------------------


def test_a_second_download_fails(performed, employee):
    recovery.recovery_download(recovery=performed.recovery, user=employee)

    with pytest.raises(InvalidState, match="already downloaded"):
        recovery.recovery_download(recovery=performed.recovery, user=employee)


def test_a_download_after_the_window_fails_and_wipes_the_copy(performed, employee, settings):
    later = performed.recovery.download_expires_at + timedelta(seconds=1)

    with time_machine.travel(later, tick=False), pytest.raises(InvalidState, match="window closed"):
        recovery.recovery_download(recovery=performed.recovery, user=employee)

    performed.recovery.refresh_from_db()
    assert performed.recovery.state == State.EXPIRED
    assert performed.recovery.bundle is None
    assert AuditEvent.objects.filter(action="recovery.expire").exists()


def test_the_window_is_the_configured_one(approved, kra, agent_user, settings):
    settings.PKIPORTAL_RECOVERY_DOWNLOAD_MINUTES = 15
    start = timezone.now()

    done, _password = recovery.recovery_perform(
        recovery=approved, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
        agent_password=kra.password,
    )  # fmt: skip

    assert start + timedelta(minutes=15) <= done.download_expires_at
    assert done.download_expires_at <= timezone.now() + timedelta(minutes=15)


def test_the_cleanup_wipes_recovered_keys_nobody_downloaded(performed):
    assert recovery.recovery_expire_due() == 0
    later = performed.recovery.download_expires_at + timedelta(minutes=1)

    with time_machine.travel(later, tick=False):
        assert recovery.recovery_expire_due() == 1
        assert recovery.recovery_expire_due() == 0

    performed.recovery.refresh_from_db()
    assert (performed.recovery.state, performed.recovery.bundle) == (State.EXPIRED, None)


def test_only_the_person_the_request_names_downloads(performed, officer, second_officer, colleague):
    for person in (officer, second_officer, colleague):
        with pytest.raises(NotPermitted, match="Only Alice"):
            recovery.recovery_download(recovery=performed.recovery, user=person)

    performed.recovery.refresh_from_db()
    assert performed.recovery.state == State.READY


def test_the_requesting_officer_downloads_when_named(
    archived, officer, second_officer, kra, agent_user, employee
):
    opened = recovery.recovery_open(
        certificate=archived.certificate, officer=officer, reason=REASON, deliver_to="requester"
    )
    recovery.recovery_approve(recovery=opened, officer=second_officer)
    recovery.recovery_perform(
        recovery=opened, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
        agent_password=kra.password,
    )  # fmt: skip

    with pytest.raises(NotPermitted):
        recovery.recovery_download(recovery=opened, user=employee)
    _found, bundle = recovery.recovery_download(recovery=opened, user=officer)
    assert bundle


@pytest.fixture
def for_the_officer(archived, officer, second_officer) -> KeyRecoveryRequest:
    """Olivia asked for Alice's key for herself; Oscar approved."""
    opened = recovery.recovery_open(
        certificate=archived.certificate, officer=officer, reason=REASON, deliver_to="requester"
    )
    return recovery.recovery_approve(recovery=opened, officer=second_officer)


def test_a_former_officer_cannot_download_a_key_recovered_for_them(
    for_the_officer, officer, kra, agent_user
):
    recovery.recovery_perform(
        recovery=for_the_officer, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
        agent_password=kra.password,
    )  # fmt: skip
    officer.groups.clear()  # the role is withdrawn (directory sync)
    before = snapshot(for_the_officer)

    with pytest.raises(NotPermitted, match="no longer are one"):
        recovery.recovery_download(recovery=for_the_officer, user=officer)

    assert snapshot(for_the_officer) == before
    assert before["state"] == State.READY
    refused = AuditEvent.objects.get(action="recovery.download")
    assert (refused.actor, refused.outcome) == (officer, AuditEvent.Outcome.FAILURE)
    assert "no longer are one" in refused.detail["error"]


def test_a_recovery_for_a_former_officer_cannot_be_carried_out(
    for_the_officer, officer, kra, agent_user
):
    officer.groups.clear()
    before = snapshot(for_the_officer)

    with pytest.raises(InvalidState, match="no longer is one"):
        recovery.recovery_perform(
            recovery=for_the_officer, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
            agent_password=kra.password,
        )  # fmt: skip

    assert snapshot(for_the_officer) == before
    refused = AuditEvent.objects.get(action="recovery.perform")
    assert (refused.actor, refused.outcome) == (agent_user, AuditEvent.Outcome.FAILURE)


def test_the_officer_is_checked_again_under_the_row_lock(
    for_the_officer, officer, kra, agent_user, monkeypatch
):
    """The role withdrawn while the archive is being decrypted still counts."""
    open_agent_pkcs12 = recovery._open_agent_pkcs12

    def role_withdrawn_meanwhile(*args, **kwargs):
        officer.groups.clear()
        return open_agent_pkcs12(*args, **kwargs)

    monkeypatch.setattr(recovery, "_open_agent_pkcs12", role_withdrawn_meanwhile)

    with pytest.raises(InvalidState, match="no longer is one"):
        recovery.recovery_perform(
            recovery=for_the_officer, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
            agent_password=kra.password,
        )  # fmt: skip

    for_the_officer.refresh_from_db()
    assert (for_the_officer.state, for_the_officer.bundle) == (State.APPROVED, None)


def test_the_key_owner_downloads_without_being_an_officer(performed, employee):
    """The officer rule is for keys delivered to an officer; Alice is just the owner."""
    assert not employee.groups.exists()

    _found, bundle = recovery.recovery_download(recovery=performed.recovery, user=employee)

    assert bundle


# --- opening, rejecting ---------------------------------------------------------------


def test_only_archived_keys_can_be_recovered(hierarchy, template, employee, officer, kra):
    signing, _bundle = services.certificate_issue_with_server_key(
        template=template("smime-signing"),
        owner=employee,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password="Signing-Key-Lantern-90",
    )

    with pytest.raises(PolicyViolation, match="was not archived"):
        recovery.recovery_open(certificate=signing, officer=officer, reason=REASON)


def test_one_recovery_per_key_at_a_time(opened, archived, second_officer):
    with pytest.raises(InvalidState, match=f"#{opened.pk} of this key is already open"):
        recovery.recovery_open(
            certificate=archived.certificate, officer=second_officer, reason="again"
        )


def test_a_recovery_needs_a_reason(archived, officer):
    with pytest.raises(PolicyViolation, match="Say why") as refused:
        recovery.recovery_open(certificate=archived.certificate, officer=officer, reason="  ")
    assert refused.value.field == "reason"


def test_a_rejected_recovery_cannot_be_carried_out(approved, second_officer, kra, agent_user):
    recovery.recovery_reject(recovery=approved, officer=second_officer, reason="Not justified.")

    with pytest.raises(InvalidState, match="rejected"):
        recovery.recovery_perform(
            recovery=approved, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
            agent_password=kra.password,
        )  # fmt: skip


def test_an_expired_or_revoked_certificates_key_can_still_be_recovered(archived, officer, employee):
    """Old mail is the point of recovery: a revoked certificate's key is what is needed."""
    services.certificate_revoke(certificate=archived.certificate, reason="keyCompromise")

    found = recovery.recovery_open(certificate=archived.certificate, officer=officer, reason=REASON)

    assert found.state == State.PENDING


# --- what is stored, mailed and audited -----------------------------------------------


def test_no_private_key_is_in_the_database_while_the_recovered_key_waits(performed, archived, kra):
    needles = key_needles("Alice's key", archived.key) | key_needles("KRA key", kra.key)
    needles["one-time password"] = performed.password.encode()
    needles["agent password"] = kra.password.encode()

    assert scan(needles) == []
    # The scan did see the stored bundle: it is in the database, encrypted.
    performed.recovery.refresh_from_db()
    assert performed.recovery.bundle is not None


def test_every_step_is_audited_without_secrets(performed, employee, kra):
    recovery.recovery_download(recovery=performed.recovery, user=employee)

    actions = list(
        AuditEvent.objects.filter(object_type="enrollment.KeyRecoveryRequest")
        .order_by("id")
        .values_list("action", "outcome")
    )
    assert actions == [
        ("recovery.open", "success"),
        ("recovery.approve", "success"),
        ("recovery.perform", "success"),
        ("recovery.download", "success"),
    ]
    text = " ".join(str(e.detail) + e.object_repr for e in AuditEvent.objects.all())
    assert performed.password not in text
    assert kra.password not in text


def test_the_key_owner_is_mailed_at_each_step(
    archived, officer, second_officer, kra, agent_user, employee,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        found = recovery.recovery_open(
            certificate=archived.certificate, officer=officer, reason=REASON
        )
        recovery.recovery_approve(recovery=found, officer=second_officer)
        _done, password = recovery.recovery_perform(
            recovery=found, agent_user=agent_user, agent_pkcs12=kra.pkcs12,
            agent_password=kra.password,
        )  # fmt: skip
        recovery.recovery_download(recovery=found, user=employee)

    to_alice = [m for m in mail.outbox if m.to == [employee.email]]
    assert [m.subject for m in to_alice] == [
        "A recovery of your archived encryption key was requested",
        "The recovery of your encryption key is approved",
        "Your encryption key was recovered",
        "Your recovered encryption key was downloaded",
    ]
    assert REASON in to_alice[0].body
    assert f"/ra/recovery/{found.pk}/" in to_alice[2].body
    # The agents heard that an approved recovery waits for one of them.
    assert any(m.to == [agent_user.email] for m in mail.outbox)
    for message in mail.outbox:
        assert password not in message.body
        assert kra.password not in message.body


def test_the_recovered_file_is_new_and_under_the_one_time_password_only(performed, employee):
    _found, bundle = recovery.recovery_download(recovery=performed.recovery, user=employee)

    with pytest.raises(X509Error, match="password is wrong"):
        pkcs12.load_pkcs12(bundle, OWNER_PKCS12_PASSWORD)
    assert pkcs12.load_pkcs12(bundle, performed.password)
