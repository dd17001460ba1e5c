"""Certificate requests: who may, limits, approval, one-time collection, renewal."""

from __future__ import annotations

import pytest

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from django.contrib.auth.models import Group

from enrollment import keystore, services
from enrollment.exceptions import (
    ConfigurationError,
    InvalidState,
    NotPermitted,
    PolicyViolation,
    RateLimited,
)
from enrollment.models import AuditEvent, Certificate, CertificateRequest
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.tools import cryptography_csr

pytestmark = pytest.mark.django_db

PASSWORD = "a long pkcs12 password"


def csr_pem(key) -> bytes:
    return cryptography_csr(key).public_bytes(Encoding.PEM)


@pytest.fixture
def needs_approval(approval):
    return approval("smime-signing")


def test_a_csr_request_without_approval_is_issued_at_once(
    hierarchy, template, employee, ec_p256_key
):
    request = services.request_submit(
        requester=employee,
        template=template("smime-signing"),
        csr=csr_pem(ec_p256_key),
        channel="web",
    )

    assert request.state == CertificateRequest.State.ISSUED
    assert request.certificate.owner == employee
    assert AuditEvent.objects.filter(action="request.submit", object_id=str(request.pk)).exists()


def test_a_portal_key_request_is_collected_once(hierarchy, template, employee):
    request = services.request_submit(
        requester=employee,
        template=template("smime-signing"),
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    assert request.awaits_download

    certificate, bundle = services.request_collect(
        request=request, actor=employee, pkcs12_password=PASSWORD
    )

    assert bundle
    assert request.state == CertificateRequest.State.ISSUED
    assert AuditEvent.objects.filter(action="pkcs12.download").count() == 1
    with pytest.raises(InvalidState, match="nothing to download"):
        services.request_collect(request=request, actor=employee, pkcs12_password=PASSWORD)
    assert Certificate.objects.filter(owner=employee).count() == 1


def test_only_the_requester_collects(hierarchy, template, employee, colleague):
    request = services.request_submit(
        requester=employee,
        template=template("smime-signing"),
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )

    with pytest.raises(NotPermitted):
        services.request_collect(request=request, actor=colleague, pkcs12_password=PASSWORD)

    assert not Certificate.objects.exists()


def test_approval_is_for_officers_and_never_for_ones_own_request(
    hierarchy, needs_approval, employee, colleague, officer, ec_p256_key
):
    request = services.request_submit(
        requester=employee,
        template=needs_approval,
        csr=csr_pem(ec_p256_key),
        channel="web",
    )
    assert request.state == CertificateRequest.State.PENDING
    assert not Certificate.objects.exists()

    with pytest.raises(NotPermitted):
        services.request_approve(request=request, officer=colleague)
    own = services.request_submit(
        requester=officer,
        template=needs_approval,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    with pytest.raises(NotPermitted, match="your own request"):
        services.request_approve(request=own, officer=officer)

    approved = services.request_approve(request=request, officer=officer, reason="ok")

    assert approved.state == CertificateRequest.State.ISSUED
    assert approved.decided_by == officer
    with pytest.raises(InvalidState):
        services.request_reject(request=request, officer=officer, reason="too late")


def test_a_rejection_needs_a_reason_and_issues_nothing(
    hierarchy, needs_approval, employee, officer
):
    request = services.request_submit(
        requester=employee,
        template=needs_approval,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )

    with pytest.raises(PolicyViolation, match="why"):
        services.request_reject(request=request, officer=officer, reason="  ")
    rejected = services.request_reject(request=request, officer=officer, reason="not employed")

    assert rejected.state == CertificateRequest.State.REJECTED
    with pytest.raises(InvalidState):
        services.request_collect(request=request, actor=employee, pkcs12_password=PASSWORD)
    assert not Certificate.objects.exists()


def test_the_approver_is_mailed_to_the_requester(
    hierarchy, needs_approval, employee, officer, mailoutbox, django_capture_on_commit_callbacks
):
    request = services.request_submit(
        requester=employee,
        template=needs_approval,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )

    with django_capture_on_commit_callbacks(execute=True):
        services.request_approve(request=request, officer=officer)

    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == [employee.email]
    assert "approved" in mailoutbox[0].subject
    assert f"/enroll/requests/{request.pk}/" in mailoutbox[0].body


def test_templates_limited_to_groups_refuse_others(hierarchy, template, employee, colleague):
    signing = template("smime-signing")
    finance = Group.objects.create(name="Finance")
    signing.allowed_groups.add(finance)
    employee.groups.add(finance)

    services.request_submit(
        requester=employee,
        template=signing,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    with pytest.raises(NotPermitted):
        services.request_submit(
            requester=colleague,
            template=signing,
            key_algorithm=KeyAlgorithm.EC_P256,
            channel="web",
        )


def test_the_per_template_cap_counts_valid_certificates_and_open_requests(
    hierarchy, template, employee, settings
):
    settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE = 2
    signing = template("smime-signing")
    first = services.request_submit(
        requester=employee,
        template=signing,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    services.request_collect(request=first, actor=employee, pkcs12_password=PASSWORD)
    services.request_submit(
        requester=employee,
        template=signing,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )

    with pytest.raises(PolicyViolation, match="already have 2"):
        services.request_submit(
            requester=employee,
            template=signing,
            key_algorithm=KeyAlgorithm.EC_P256,
            channel="web",
        )
    # Another template has its own allowance.
    services.request_submit(
        requester=employee,
        template=template("smime-dual-use"),
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )


def test_requests_per_hour_are_limited(hierarchy, template, employee, settings):
    settings.PKIPORTAL_ENROLL_RATE_PER_HOUR = 2
    settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE = 10
    for _ in range(2):
        services.request_submit(
            requester=employee,
            template=template("smime-signing"),
            key_algorithm=KeyAlgorithm.EC_P256,
            channel="web",
        )

    with pytest.raises(RateLimited):
        services.request_submit(
            requester=employee,
            template=template("smime-signing"),
            key_algorithm=KeyAlgorithm.EC_P256,
            channel="web",
        )
    assert CertificateRequest.objects.count() == 2


def issued_and_renewing(requester, template):
    """A certificate collected by ``requester`` and a renewal of it, submitted, not collected."""
    first = services.request_submit(
        requester=requester, template=template, key_algorithm=KeyAlgorithm.EC_P256, channel="web"
    )
    old, _ = services.request_collect(request=first, actor=requester, pkcs12_password=PASSWORD)
    renewal = services.request_submit(
        requester=requester,
        template=template,
        key_algorithm=KeyAlgorithm.EC_P256,
        renewal_of=old,
        channel="web",
    )
    return old, renewal


def test_renewal_supersedes_the_old_certificate_when_the_new_one_is_issued(
    hierarchy, template, employee, settings
):
    settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE = 1
    old, renewal = issued_and_renewing(employee, template("smime-signing"))
    old.refresh_from_db()
    assert old.status == Certificate.Status.VALID  # not yet: only when the new one exists
    new, _ = services.request_collect(request=renewal, actor=employee, pkcs12_password=PASSWORD)

    old.refresh_from_db()
    assert old.status == Certificate.Status.REVOKED
    assert old.revocation_reason == "superseded"
    assert new.status == Certificate.Status.VALID
    assert new.certificate.public_key() != old.certificate.public_key()
    issued = AuditEvent.objects.get(action="certificate.issue", object_id=str(new.pk))
    assert issued.detail["renews"] == old.serial
    assert "renewed_revoked" not in issued.detail


def test_a_renewal_whose_old_certificate_is_revoked_before_its_supersede_step_still_issues(
    hierarchy, template, employee, officer, monkeypatch
):
    """Revoked after the renewal's checks (here: while it signs), the old certificate keeps
    the officer's reason, not superseded; the new one is issued, and its issue event says
    what the renewal found in place of a revocation of its own."""
    old, renewal = issued_and_renewing(employee, template("smime-signing"))
    sign = keystore.issue_end_entity

    def revoked_meanwhile(*args, **kwargs):
        services.certificate_revoke(certificate=old, reason="privilegeWithdrawn", actor=officer)
        return sign(*args, **kwargs)

    monkeypatch.setattr(keystore, "issue_end_entity", revoked_meanwhile)

    new, _ = services.request_collect(request=renewal, actor=employee, pkcs12_password=PASSWORD)

    old.refresh_from_db()
    assert (old.status, old.revocation_reason) == ("revoked", "privilegeWithdrawn")
    assert new.status == Certificate.Status.VALID
    revocations = AuditEvent.objects.filter(action="certificate.revoke", object_id=str(old.pk))
    assert [(e.detail["reason"], e.actor) for e in revocations] == [("privilegeWithdrawn", officer)]
    issued = AuditEvent.objects.get(action="certificate.issue", object_id=str(new.pk))
    assert issued.detail["renews"] == old.serial
    assert issued.detail["renewed_revoked"] == "privilegeWithdrawn"


def test_only_ones_own_valid_certificate_can_be_renewed(hierarchy, template, employee, colleague):
    signing = template("smime-signing")
    request = services.request_submit(
        requester=employee,
        template=signing,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    mine, _ = services.request_collect(request=request, actor=employee, pkcs12_password=PASSWORD)

    with pytest.raises(NotPermitted):
        services.request_submit(
            requester=colleague,
            template=signing,
            key_algorithm=KeyAlgorithm.EC_P256,
            renewal_of=mine,
            channel="web",
        )
    services.certificate_revoke(certificate=mine, reason="keyCompromise")
    with pytest.raises(InvalidState):
        services.request_submit(
            requester=employee,
            template=signing,
            key_algorithm=KeyAlgorithm.EC_P256,
            renewal_of=mine,
            channel="web",
        )


def test_an_archiving_template_refuses_up_front_without_an_agent(hierarchy, template, employee):
    with pytest.raises(ConfigurationError, match="key recovery agent"):
        services.request_submit(
            requester=employee,
            template=template("smime-encryption"),
            key_algorithm=KeyAlgorithm.EC_P256,
            channel="web",
        )

    assert not CertificateRequest.objects.exists()


def test_the_csr_subject_is_recorded_but_the_certificate_names_the_account(
    hierarchy, template, employee, ec_p256_key
):
    request = services.request_submit(
        requester=employee,
        template=template("smime-signing"),
        csr=csr_pem(ec_p256_key),
        channel="web",
    )

    assert "Mallory" in request.requested_subject
    names = request.certificate.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert names[0].value == "Alice Andersson"
    san = request.certificate.certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert san.get_values_for_type(x509.RFC822Name) == [employee.email]


# --- withdrawing ----------------------------------------------------------------------


def test_the_requester_withdraws_a_pending_request_audited_with_the_address(
    hierarchy, needs_approval, employee
):
    request = services.request_submit(
        requester=employee,
        template=needs_approval,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )

    withdrawn = services.request_withdraw(
        request=request, actor=employee, source_address="192.0.2.7"
    )

    assert withdrawn.state == CertificateRequest.State.WITHDRAWN
    assert request.state == CertificateRequest.State.WITHDRAWN  # the caller's copy too
    event = AuditEvent.objects.get(action="request.withdraw")
    assert (event.actor, event.object_id, event.source_address) == (
        employee,
        str(request.pk),
        "192.0.2.7",
    )
    assert event.detail == {"template": "smime-signing", "state": "pending"}
    assert not Certificate.objects.exists()


def test_an_approved_portal_key_request_is_withdrawn_before_its_download(
    hierarchy, needs_approval, employee, officer
):
    approved = services.request_approve(
        request=services.request_submit(
            requester=employee,
            template=needs_approval,
            key_algorithm=KeyAlgorithm.EC_P256,
            channel="web",
        ),
        officer=officer,
    )
    assert approved.awaits_download

    services.request_withdraw(request=approved, actor=employee)

    with pytest.raises(InvalidState, match="nothing to download"):
        services.request_collect(request=approved, actor=employee, pkcs12_password=PASSWORD)
    assert not Certificate.objects.exists()
    assert AuditEvent.objects.get(action="request.withdraw").detail["state"] == "approved"


def test_a_withdrawal_whose_audit_event_cannot_be_written_changes_nothing(
    hierarchy, needs_approval, employee, monkeypatch
):
    request = services.request_submit(
        requester=employee,
        template=needs_approval,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )

    def audit_down(**kwargs):
        raise RuntimeError("audit trail unavailable")

    monkeypatch.setattr(services, "audit_record", audit_down)

    with pytest.raises(RuntimeError):
        services.request_withdraw(request=request, actor=employee)

    request.refresh_from_db()
    assert request.state == CertificateRequest.State.PENDING


@pytest.mark.parametrize("who", ["colleague", "officer"])
def test_only_the_requester_withdraws(hierarchy, needs_approval, employee, colleague, officer, who):
    request = services.request_submit(
        requester=employee,
        template=needs_approval,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    actor = {"colleague": colleague, "officer": officer}[who]

    with pytest.raises(NotPermitted, match="an RA officer rejects it instead"):
        services.request_withdraw(request=request, actor=actor)

    request.refresh_from_db()
    assert request.state == CertificateRequest.State.PENDING
    assert not AuditEvent.objects.filter(action="request.withdraw").exists()


def test_an_officer_withdraws_their_own_request(hierarchy, needs_approval, officer):
    own = services.request_submit(
        requester=officer,
        template=needs_approval,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )

    assert services.request_withdraw(request=own, actor=officer).state == "withdrawn"


def test_an_issued_request_cannot_be_withdrawn_only_its_certificate_revoked(
    hierarchy, template, employee, ec_p256_key
):
    issued = services.request_submit(
        requester=employee,
        template=template("smime-signing"),
        csr=csr_pem(ec_p256_key),
        channel="web",
    )

    with pytest.raises(InvalidState, match="already issued: there is nothing to withdraw. Revoke"):
        services.request_withdraw(request=issued, actor=employee)

    issued.refresh_from_db()
    assert issued.state == CertificateRequest.State.ISSUED
    assert not AuditEvent.objects.filter(action="request.withdraw").exists()


@pytest.mark.parametrize("end", ["rejected", "withdrawn", "failed"])
def test_a_request_that_is_no_longer_open_cannot_be_withdrawn(
    hierarchy, needs_approval, employee, officer, end
):
    request = services.request_submit(
        requester=employee,
        template=needs_approval,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    if end == "rejected":
        services.request_reject(request=request, officer=officer, reason="no")
    elif end == "withdrawn":
        services.request_withdraw(request=request, actor=employee)
    else:
        services.request_approve(request=request, officer=officer)
        employee.is_active = False
        employee.save()
        with pytest.raises(NotPermitted):
            services.request_collect(request=request, actor=employee, pkcs12_password=PASSWORD)
    events = AuditEvent.objects.filter(action="request.withdraw").count()

    with pytest.raises(InvalidState, match=f"already {end}: there is nothing to withdraw"):
        services.request_withdraw(request=request, actor=employee)

    request.refresh_from_db()
    assert request.state == end
    assert AuditEvent.objects.filter(action="request.withdraw").count() == events


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_an_officer_deciding_after_the_withdrawal_is_told_it_is_already_withdrawn(
    hierarchy, needs_approval, employee, officer, verb
):
    request = services.request_submit(
        requester=employee,
        template=needs_approval,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    services.request_withdraw(request=request, actor=employee)
    decide = services.request_approve if verb == "approve" else services.request_reject

    with pytest.raises(InvalidState, match="This request is already withdrawn."):
        decide(request=request, officer=officer, reason="x")

    request.refresh_from_db()
    assert (request.state, request.decided_by) == (CertificateRequest.State.WITHDRAWN, None)


def test_a_withdrawn_request_no_longer_counts_against_the_cap(
    hierarchy, needs_approval, employee, settings
):
    settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE = 1
    first = services.request_submit(
        requester=employee,
        template=needs_approval,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    with pytest.raises(PolicyViolation, match="already have 1"):
        services.request_submit(
            requester=employee,
            template=needs_approval,
            key_algorithm=KeyAlgorithm.EC_P256,
            channel="web",
        )

    services.request_withdraw(request=first, actor=employee)

    again = services.request_submit(
        requester=employee,
        template=needs_approval,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    assert again.state == CertificateRequest.State.PENDING


def test_a_withdrawn_renewal_supersedes_nothing_and_another_may_follow(
    hierarchy, template, approval, employee, officer
):
    signing = template("smime-signing")
    first = services.request_submit(
        requester=employee,
        template=signing,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    old, _ = services.request_collect(request=first, actor=employee, pkcs12_password=PASSWORD)
    signing = approval("smime-signing")
    renewal = services.request_approve(
        request=services.request_submit(
            requester=employee,
            template=signing,
            key_algorithm=KeyAlgorithm.EC_P256,
            renewal_of=old,
            channel="web",
        ),
        officer=officer,
    )

    services.request_withdraw(request=renewal, actor=employee)

    old.refresh_from_db()
    assert old.status == Certificate.Status.VALID
    assert list(Certificate.objects.filter(owner=employee)) == [old]
    # No longer "a renewal waiting": the same certificate may be renewed again.
    again = services.request_submit(
        requester=employee,
        template=signing,
        key_algorithm=KeyAlgorithm.EC_P256,
        renewal_of=old,
        channel="web",
    )
    assert again.state == CertificateRequest.State.PENDING
