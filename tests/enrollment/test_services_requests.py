"""Certificate requests: who may, limits, approval, one-time collection, renewal."""

from __future__ import annotations

import pytest

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from django.contrib.auth.models import Group

from enrollment import services
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
        requester=employee, template=template("smime-signing"), csr=csr_pem(ec_p256_key)
    )

    assert request.state == CertificateRequest.State.ISSUED
    assert request.certificate.owner == employee
    assert AuditEvent.objects.filter(action="request.submit", object_id=str(request.pk)).exists()


def test_a_portal_key_request_is_collected_once(hierarchy, template, employee):
    request = services.request_submit(
        requester=employee, template=template("smime-signing"), key_algorithm=KeyAlgorithm.EC_P256
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
        requester=employee, template=template("smime-signing"), key_algorithm=KeyAlgorithm.EC_P256
    )

    with pytest.raises(NotPermitted):
        services.request_collect(request=request, actor=colleague, pkcs12_password=PASSWORD)

    assert not Certificate.objects.exists()


def test_approval_is_for_officers_and_never_for_ones_own_request(
    hierarchy, needs_approval, employee, colleague, officer, ec_p256_key
):
    request = services.request_submit(
        requester=employee, template=needs_approval, csr=csr_pem(ec_p256_key)
    )
    assert request.state == CertificateRequest.State.PENDING
    assert not Certificate.objects.exists()

    with pytest.raises(NotPermitted):
        services.request_approve(request=request, officer=colleague)
    own = services.request_submit(
        requester=officer, template=needs_approval, key_algorithm=KeyAlgorithm.EC_P256
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
        requester=employee, template=needs_approval, key_algorithm=KeyAlgorithm.EC_P256
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
        requester=employee, template=needs_approval, key_algorithm=KeyAlgorithm.EC_P256
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
        requester=employee, template=signing, key_algorithm=KeyAlgorithm.EC_P256
    )
    with pytest.raises(NotPermitted):
        services.request_submit(
            requester=colleague, template=signing, key_algorithm=KeyAlgorithm.EC_P256
        )


def test_the_per_template_cap_counts_valid_certificates_and_open_requests(
    hierarchy, template, employee, settings
):
    settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE = 2
    signing = template("smime-signing")
    first = services.request_submit(
        requester=employee, template=signing, key_algorithm=KeyAlgorithm.EC_P256
    )
    services.request_collect(request=first, actor=employee, pkcs12_password=PASSWORD)
    services.request_submit(
        requester=employee, template=signing, key_algorithm=KeyAlgorithm.EC_P256
    )

    with pytest.raises(PolicyViolation, match="already have 2"):
        services.request_submit(
            requester=employee, template=signing, key_algorithm=KeyAlgorithm.EC_P256
        )
    # Another template has its own allowance.
    services.request_submit(
        requester=employee, template=template("smime-dual-use"), key_algorithm=KeyAlgorithm.EC_P256
    )


def test_requests_per_hour_are_limited(hierarchy, template, employee, settings):
    settings.PKIPORTAL_ENROLL_RATE_PER_HOUR = 2
    settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE = 10
    for _ in range(2):
        services.request_submit(
            requester=employee,
            template=template("smime-signing"),
            key_algorithm=KeyAlgorithm.EC_P256,
        )

    with pytest.raises(RateLimited):
        services.request_submit(
            requester=employee,
            template=template("smime-signing"),
            key_algorithm=KeyAlgorithm.EC_P256,
        )
    assert CertificateRequest.objects.count() == 2


def test_renewal_supersedes_the_old_certificate_when_the_new_one_is_issued(
    hierarchy, template, employee, settings
):
    settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE = 1
    signing = template("smime-signing")
    first = services.request_submit(
        requester=employee, template=signing, key_algorithm=KeyAlgorithm.EC_P256
    )
    old, _ = services.request_collect(request=first, actor=employee, pkcs12_password=PASSWORD)

    renewal = services.request_submit(
        requester=employee, template=signing, key_algorithm=KeyAlgorithm.EC_P256, renewal_of=old
    )
    old.refresh_from_db()
    assert old.status == Certificate.Status.VALID  # not yet: only when the new one exists
    new, _ = services.request_collect(request=renewal, actor=employee, pkcs12_password=PASSWORD)

    old.refresh_from_db()
    assert old.status == Certificate.Status.REVOKED
    assert old.revocation_reason == "superseded"
    assert new.status == Certificate.Status.VALID
    assert new.certificate.public_key() != old.certificate.public_key()


def test_only_ones_own_valid_certificate_can_be_renewed(hierarchy, template, employee, colleague):
    signing = template("smime-signing")
    request = services.request_submit(
        requester=employee, template=signing, key_algorithm=KeyAlgorithm.EC_P256
    )
    mine, _ = services.request_collect(request=request, actor=employee, pkcs12_password=PASSWORD)

    with pytest.raises(NotPermitted):
        services.request_submit(
            requester=colleague,
            template=signing,
            key_algorithm=KeyAlgorithm.EC_P256,
            renewal_of=mine,
        )
    services.certificate_revoke(certificate=mine, reason="keyCompromise")
    with pytest.raises(InvalidState):
        services.request_submit(
            requester=employee,
            template=signing,
            key_algorithm=KeyAlgorithm.EC_P256,
            renewal_of=mine,
        )


def test_an_archiving_template_refuses_up_front_without_an_agent(hierarchy, template, employee):
    with pytest.raises(ConfigurationError, match="key recovery agent"):
        services.request_submit(
            requester=employee,
            template=template("smime-encryption"),
            key_algorithm=KeyAlgorithm.EC_P256,
        )

    assert not CertificateRequest.objects.exists()


def test_the_csr_subject_is_recorded_but_the_certificate_names_the_account(
    hierarchy, template, employee, ec_p256_key
):
    request = services.request_submit(
        requester=employee, template=template("smime-signing"), csr=csr_pem(ec_p256_key)
    )

    assert "Mallory" in request.requested_subject
    names = request.certificate.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert names[0].value == "Alice Andersson"
    san = request.certificate.certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert san.get_values_for_type(x509.RFC822Name) == [employee.email]
