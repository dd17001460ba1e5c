"""Shared mailboxes through the services: who manages them, who enrols for them, what is
issued, how the key reaches the other delegates, and how a closed mailbox is revoked."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cryptography import x509
from cryptography.x509.oid import NameOID

from django.contrib.auth.models import Group
from django.utils import timezone

from enrollment import leavers, mailboxes, recovery, services
from enrollment.exceptions import InvalidState, NotPermitted, PolicyViolation
from enrollment.models import (
    AuditEvent,
    Certificate,
    CertificateRequest,
    KeyRecoveryRequest,
    SharedMailbox,
)
from enrollment.x509.keys import KeyAlgorithm
from enrollment.x509.pkcs12 import load_pkcs12
from enrollment.x509.policy import ORGANIZATION_VALIDATED_STRICT
from tests.conftest import Agent
from tests.enrollment.ra_fixtures import ACCEPT_NOTE
from tests.factories import UserFactory

PASSWORD = "Mailbox-Shared-Lantern-27"


@pytest.fixture
def kra(quick_kra: Agent) -> Agent:
    return quick_kra


@pytest.fixture
def finance(officer, employee) -> SharedMailbox:
    """finance@example.com, read by Alice (the employee)."""
    return mailboxes.mailbox_create(
        email="Finance@Example.com", display_name="Finance", delegates=[employee], actor=officer
    )


def enrol(mailbox, delegate, template, *, slug="smime-encryption"):
    with_request = services.request_submit(
        requester=delegate,
        template=template(slug),
        key_algorithm=KeyAlgorithm.EC_P256,
        mailbox=mailbox,
        channel="web",
    )
    return services.request_collect(request=with_request, actor=delegate, pkcs12_password=PASSWORD)


def test_an_officer_creates_a_mailbox_lower_cased_and_audited(finance, officer, employee):
    assert finance.email == "finance@example.com"
    assert list(finance.delegates.all()) == [employee]
    event = AuditEvent.objects.get(action="mailbox.create")
    assert event.actor == officer
    assert event.detail == {
        "email": "finance@example.com",
        "display_name": "Finance",
        "delegates": ["alice"],
    }


def test_only_officers_manage_mailboxes(db, employee, colleague):
    with pytest.raises(NotPermitted):
        mailboxes.mailbox_create(email="hr@example.com", display_name="HR", actor=employee)
    assert not SharedMailbox.objects.exists()


@pytest.mark.parametrize(
    ("email", "problem"),
    [
        ("not an address", "not a valid e-mail address"),
        ("finance@elsewhere.test", "outside the organisation's mail domains"),
        ("poststelle-der-verwaltung-und-der-buchhaltung-ab@very.example.com", "at most 64"),
        ("bücher@example.com", "ASCII"),
    ],
)
def test_an_address_the_ca_cannot_certify_is_refused(db, officer, settings, email, problem):
    settings.PKIPORTAL_MAIL_DOMAINS = ("example.com", ".example.com")
    with pytest.raises(PolicyViolation, match=problem):
        mailboxes.mailbox_create(email=email, display_name="X", actor=officer)
    assert not SharedMailbox.objects.exists()


def test_a_persons_address_cannot_be_a_mailbox(db, officer, employee):
    with pytest.raises(PolicyViolation, match="person's account address"):
        mailboxes.mailbox_create(email=employee.email.upper(), display_name="X", actor=officer)


def test_a_delegate_enrols_and_the_certificate_names_the_mailbox_not_the_person(
    hierarchy, kra, template, finance, employee
):
    certificate, bundle = enrol(finance, employee, template)

    assert certificate.owner is None
    assert certificate.mailbox == finance
    assert certificate.emails == ["finance@example.com"]
    subject = certificate.certificate.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "finance@example.com"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Example Org"
    assert not subject.get_attributes_for_oid(NameOID.GIVEN_NAME)
    assert not subject.get_attributes_for_oid(NameOID.SURNAME)
    policies = certificate.certificate.extensions.get_extension_for_class(
        x509.CertificatePolicies
    ).value
    assert [p.policy_identifier for p in policies] == [ORGANIZATION_VALIDATED_STRICT]
    assert hasattr(certificate, "archived_key")  # never a mailbox certificate without it
    key, _cert, _chain = load_pkcs12(bundle, PASSWORD)
    assert key.public_key() == certificate.certificate.public_key()
    issued = AuditEvent.objects.get(action="certificate.issue", object_id=str(certificate.pk))
    assert issued.actor == employee
    assert issued.detail["mailbox"] == "finance@example.com"
    assert issued.detail["delegate"] == "alice"


def test_a_colleague_who_is_not_a_delegate_cannot_enrol(
    hierarchy, kra, template, finance, colleague
):
    with pytest.raises(NotPermitted, match="not a delegate"):
        enrol(finance, colleague, template)
    assert not CertificateRequest.objects.exists()


def test_a_mailbox_takes_no_csr(hierarchy, kra, template, finance, employee, ec_p256_key):
    from cryptography.hazmat.primitives.serialization import Encoding

    from tests.enrollment.tools import cryptography_csr

    with pytest.raises(PolicyViolation, match="CSR cannot be used"):
        services.request_submit(
            requester=employee,
            template=template("smime-encryption"),
            csr=cryptography_csr(ec_p256_key).public_bytes(Encoding.PEM),
            mailbox=finance,
            channel="web",
        )


@pytest.mark.parametrize("slug", ["smime-signing", "smime-dual-use"])
def test_only_an_archiving_template_issues_for_a_mailbox(
    hierarchy, kra, template, finance, employee, slug
):
    with pytest.raises(PolicyViolation, match="cannot issue for a shared mailbox"):
        enrol(finance, employee, template, slug=slug)
    assert not Certificate.objects.filter(mailbox=finance).exists()


def test_the_cap_counts_the_mailbox_not_the_delegate(
    hierarchy, kra, template, finance, employee, colleague, officer, settings
):
    settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE = 1
    finance = mailboxes.mailbox_update(
        mailbox=finance, display_name="Finance", delegates=[employee, colleague], actor=officer
    )
    enrol(finance, employee, template)
    with pytest.raises(PolicyViolation, match="finance@example.com already has 1"):
        enrol(finance, colleague, template)
    # Alice's own slot for the template is untouched by the mailbox's certificate.
    services.certificate_issue_with_server_key(
        template=template("smime-encryption"),
        owner=employee,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password=PASSWORD,
    )
    personal = services.request_submit(
        requester=colleague,
        template=template("smime-encryption"),
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    assert personal.state == CertificateRequest.State.APPROVED


def test_an_officer_who_is_a_delegate_cannot_approve_a_request_for_the_mailbox(
    hierarchy, kra, approval, finance, employee, officer, second_officer
):
    finance.delegates.add(officer)
    waiting = services.request_submit(
        requester=employee,
        template=approval("smime-encryption"),
        key_algorithm=KeyAlgorithm.EC_P256,
        mailbox=finance,
        channel="web",
    )
    assert waiting.state == CertificateRequest.State.PENDING
    with pytest.raises(NotPermitted, match="delegate"):
        services.request_approve(request=waiting, officer=officer)
    approved = services.request_approve(request=waiting, officer=second_officer)
    assert approved.state == CertificateRequest.State.APPROVED
    certificate, _bundle = services.request_collect(
        request=approved, actor=employee, pkcs12_password=PASSWORD
    )
    assert certificate.mailbox == finance


def test_a_delegate_removed_after_approval_cannot_collect(
    hierarchy, kra, approval, finance, employee, officer, second_officer
):
    waiting = services.request_submit(
        requester=employee,
        template=approval("smime-encryption"),
        key_algorithm=KeyAlgorithm.EC_P256,
        mailbox=finance,
        channel="web",
    )
    services.request_approve(request=waiting, officer=second_officer)
    mailboxes.mailbox_update(mailbox=finance, display_name="Finance", delegates=[], actor=officer)
    with pytest.raises(NotPermitted, match="no longer a delegate"):
        services.request_collect(request=waiting, actor=employee, pkcs12_password=PASSWORD)
    assert not Certificate.objects.filter(mailbox=finance).exists()


def test_delegates_renew_and_revoke_colleagues_do_not(
    hierarchy, kra, template, finance, employee, colleague, officer
):
    certificate, _bundle = enrol(finance, employee, template)
    with pytest.raises(NotPermitted):
        services.certificate_revoke(certificate=certificate, reason="superseded", actor=colleague)
    finance.delegates.add(colleague)
    renewal = services.request_submit(
        requester=colleague,
        template=template("smime-encryption"),
        key_algorithm=KeyAlgorithm.EC_P256,
        mailbox=finance,
        renewal_of=certificate,
        channel="web",
    )
    renewed, _bundle = services.request_collect(
        request=renewal, actor=colleague, pkcs12_password=PASSWORD
    )
    certificate.refresh_from_db()
    assert certificate.status == Certificate.Status.REVOKED
    assert certificate.revocation_reason == "superseded"
    services.certificate_revoke(certificate=renewed, reason="keyCompromise", actor=employee)
    renewed.refresh_from_db()
    assert renewed.status == Certificate.Status.REVOKED


def test_a_person_cannot_renew_a_mailbox_certificate_as_their_own(
    hierarchy, kra, template, finance, employee
):
    certificate, _bundle = enrol(finance, employee, template)
    with pytest.raises(NotPermitted, match="your own"):
        services.request_submit(
            requester=employee,
            template=template("smime-encryption"),
            key_algorithm=KeyAlgorithm.EC_P256,
            renewal_of=certificate,
            channel="web",
        )


def test_a_deactivated_mailbox_is_revoked_after_the_leavers_grace_period(
    hierarchy, kra, template, finance, employee, officer, settings
):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 72
    certificate, _bundle = enrol(finance, employee, template)
    mailboxes.mailbox_set_active(mailbox=finance, active=False, actor=officer)

    leavers.leavers_revoke(now=timezone.now() + timedelta(hours=71))
    certificate.refresh_from_db()
    assert certificate.status == Certificate.Status.VALID

    outcome = leavers.leavers_revoke(now=timezone.now() + timedelta(hours=73))
    certificate.refresh_from_db()
    assert certificate.status == Certificate.Status.REVOKED
    assert certificate.revocation_reason == "cessationOfOperation"
    assert outcome.revoked_certificates == 1
    event = AuditEvent.objects.get(action="mailbox.revoke")
    assert event.detail["serials"] == [certificate.serial]


def test_a_mailbox_reactivated_within_the_grace_period_keeps_its_certificates(
    hierarchy, kra, template, finance, employee, officer, settings
):
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 72
    certificate, _bundle = enrol(finance, employee, template)
    mailboxes.mailbox_set_active(mailbox=finance, active=False, actor=officer)
    mailboxes.mailbox_set_active(mailbox=finance, active=True, actor=officer)
    leavers.leavers_revoke(now=timezone.now() + timedelta(hours=100))
    certificate.refresh_from_db()
    assert certificate.status == Certificate.Status.VALID


def test_deactivating_withdraws_open_requests_and_stops_enrolment(
    hierarchy, kra, approval, template, finance, employee, officer
):
    waiting = services.request_submit(
        requester=employee,
        template=approval("smime-encryption"),
        key_algorithm=KeyAlgorithm.EC_P256,
        mailbox=finance,
        channel="web",
    )
    mailboxes.mailbox_set_active(mailbox=finance, active=False, actor=officer)
    waiting.refresh_from_db()
    assert waiting.state == CertificateRequest.State.WITHDRAWN
    with pytest.raises(NotPermitted, match="no longer active"):
        enrol(finance, employee, template)
    with pytest.raises(InvalidState):
        mailboxes.mailbox_set_active(mailbox=finance, active=False, actor=officer)


def test_a_leaving_delegate_does_not_take_the_mailbox_certificate_with_them(
    hierarchy, kra, template, finance, employee, settings
):
    """The certificate has no owner: the leavers' run never revokes it for a delegate."""
    settings.PKIPORTAL_REVOKE_DEACTIVATED_AFTER_HOURS = 0
    certificate, _bundle = enrol(finance, employee, template)
    employee.is_active = False
    employee.save()
    leavers.leavers_revoke(now=timezone.now() + timedelta(hours=1))
    certificate.refresh_from_db()
    assert certificate.status == Certificate.Status.VALID


# --- the key to the other delegates: the key recovery flow ---------------------------


@pytest.fixture
def mailbox_key(hierarchy, kra, template, finance, employee, colleague, officer):
    finance.delegates.add(colleague)
    certificate, _bundle = enrol(finance, employee, template)
    return certificate


def test_another_delegate_gets_the_key_through_dual_controlled_recovery(
    mailbox_key, colleague, officer, second_officer, kra, agent_user
):
    asked = recovery.recovery_ask(
        certificate=mailbox_key, holder=colleague, reason="I read finance@ too and need its key."
    )
    assert asked.recipient_id == colleague.pk
    accepted = recovery.recovery_accept(recovery=asked, officer=officer, note=ACCEPT_NOTE)
    approved = recovery.recovery_approve(recovery=accepted, officer=second_officer)
    performed, password = recovery.recovery_perform(
        recovery=approved,
        agent_user=agent_user,
        agent_pkcs12=kra.pkcs12,
        agent_password=kra.password,
    )
    done, bundle = recovery.recovery_download(recovery=performed, user=colleague)
    assert done.state == KeyRecoveryRequest.State.DOWNLOADED
    key, certificate, _chain = load_pkcs12(bundle, password)
    assert certificate == mailbox_key.certificate
    assert key.public_key() == mailbox_key.certificate.public_key()


def test_a_colleague_who_is_not_a_delegate_cannot_ask_for_the_key(mailbox_key, db):
    outsider = UserFactory(username="mallory")
    with pytest.raises(NotPermitted, match="delegates"):
        recovery.recovery_ask(certificate=mailbox_key, holder=outsider, reason="I want it.")


def test_a_delegate_cannot_accept_approve_or_perform_the_recovery_of_the_mailbox_key(
    mailbox_key, employee, colleague, officer, second_officer, kra, agent_user
):
    for person in (employee, agent_user):
        person.groups.add(Group.objects.get_or_create(name="RA officers")[0])
    asked = recovery.recovery_ask(certificate=mailbox_key, holder=colleague, reason="Need it.")
    # Alice reads finance@: an interested party.
    with pytest.raises(NotPermitted, match="recovery of your own key; another RA officer"):
        recovery.recovery_accept(recovery=asked, officer=employee, note=ACCEPT_NOTE)
    accepted = recovery.recovery_accept(recovery=asked, officer=officer, note=ACCEPT_NOTE)
    with pytest.raises(NotPermitted, match="cannot approve the recovery of your own key"):
        recovery.recovery_approve(recovery=accepted, officer=employee)
    approved = recovery.recovery_approve(recovery=accepted, officer=second_officer)
    mailbox_key.mailbox.delegates.add(agent_user)
    with pytest.raises(NotPermitted, match="This is your own key, so another key recovery agent"):
        recovery.recovery_perform(
            recovery=approved,
            agent_user=agent_user,
            agent_pkcs12=kra.pkcs12,
            agent_password=kra.password,
        )


def test_a_delegate_removed_before_download_gets_nothing(
    mailbox_key, colleague, employee, officer, second_officer, kra, agent_user
):
    asked = recovery.recovery_ask(certificate=mailbox_key, holder=colleague, reason="Need it.")
    accepted = recovery.recovery_accept(recovery=asked, officer=officer, note=ACCEPT_NOTE)
    approved = recovery.recovery_approve(recovery=accepted, officer=second_officer)
    performed, _password = recovery.recovery_perform(
        recovery=approved,
        agent_user=agent_user,
        agent_pkcs12=kra.pkcs12,
        agent_password=kra.password,
    )
    mailboxes.mailbox_update(
        mailbox=mailbox_key.mailbox, display_name="Finance", delegates=[employee], actor=officer
    )
    with pytest.raises(NotPermitted, match="no longer one of its delegates"):
        recovery.recovery_download(recovery=performed, user=colleague)
    performed.refresh_from_db()
    assert performed.state == KeyRecoveryRequest.State.READY
