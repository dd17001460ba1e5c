"""Requests decided or collected later still obey who may have what, and never get stuck.

An approval or a download comes after the request: by then the account may be
deactivated, the person out of the template's groups, the template changed or the
renewed certificate revoked. Such a request is refused or fails for good (audited, out of
the person's cap), never left approved forever; a renewal is one per certificate and
needs a new key; the requester's mail says how it ended.
"""

from __future__ import annotations

import pytest

from cryptography.hazmat.primitives.serialization import Encoding

from django.contrib.auth.models import Group
from django.core import mail

from enrollment import services
from enrollment.exceptions import ConfigurationError, InvalidState, NotPermitted, PolicyViolation
from enrollment.models import AuditEvent, CertificateRequest
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.api_tools import CERTIFICATES, ENROLLMENTS, request_url, token_client
from tests.enrollment.tools import cryptography_csr, new_key

pytestmark = pytest.mark.django_db

PASSWORD = "a long pkcs12 password xyz"


def csr(key) -> bytes:
    return cryptography_csr(key).public_bytes(Encoding.PEM)


def issued_now(template, employee):
    submitted = services.request_submit(
        requester=employee,
        template=template,
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )
    certificate, _bundle = services.request_collect(
        request=submitted, actor=employee, pkcs12_password=PASSWORD
    )
    return certificate


def test_a_renewal_whose_certificate_was_revoked_meanwhile_fails_and_frees_the_cap(
    hierarchy, template, approval, employee, officer, settings
):
    settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE = 1
    old = issued_now(template("smime-signing"), employee)
    approval("smime-signing")
    me = token_client(employee)
    renewal = me.post(
        f"{CERTIFICATES}{old.serial}/renew/", {"key_algorithm": "ec-p256"}, format="json"
    )
    pk = renewal.json()["id"]
    assert (
        token_client(officer).post(request_url(pk, "approve"), {}, format="json").status_code == 200
    )
    me.post(
        f"{CERTIFICATES}{old.serial}/revoke/", {"reason": "cessationOfOperation"}, format="json"
    )

    collected = me.post(f"{ENROLLMENTS}{pk}/collect/", {"pkcs12_password": PASSWORD}, format="json")

    assert collected.status_code == 409
    assert "no longer valid" in collected.json()["detail"]
    stored = CertificateRequest.objects.get(pk=pk)
    assert (stored.state, stored.awaits_download) == (CertificateRequest.State.FAILED, False)
    assert AuditEvent.objects.filter(action="request.fail", object_id=str(pk)).count() == 1
    fresh = me.post(
        ENROLLMENTS, {"template": "smime-signing", "key_algorithm": "ec-p256"}, format="json"
    )
    assert fresh.status_code == 202  # the failed request no longer holds the only slot


def test_a_certificate_has_one_renewal_waiting_at_most(hierarchy, template, approval, employee):
    old = issued_now(template("smime-signing"), employee)
    chosen = approval("smime-signing")
    services.request_submit(
        requester=employee,
        template=chosen,
        key_algorithm=KeyAlgorithm.EC_P256,
        renewal_of=old,
        channel="web",
    )

    with pytest.raises(InvalidState, match="already has a renewal waiting"):
        services.request_submit(
            requester=employee,
            template=chosen,
            key_algorithm=KeyAlgorithm.EC_P256,
            renewal_of=old,
            channel="web",
        )


def test_a_renewal_needs_a_new_key(hierarchy, template, employee):
    key = new_key()
    old = services.request_submit(
        requester=employee,
        template=template("smime-signing"),
        csr=csr(key),
        channel="web",
    ).certificate

    with pytest.raises(PolicyViolation, match="A renewal needs a new key"):
        services.request_submit(
            requester=employee,
            template=template("smime-signing"),
            csr=csr(key),
            renewal_of=old,
            channel="web",
        )
    renewed = services.request_submit(
        requester=employee,
        template=template("smime-signing"),
        csr=csr(new_key()),
        renewal_of=old,
        channel="web",
    )
    assert renewed.state == CertificateRequest.State.ISSUED


@pytest.mark.parametrize("change", ["deactivated", "left_the_group", "template_off"])
def test_an_officer_cannot_approve_what_the_requester_may_no_longer_have(
    hierarchy, template, approval, employee, officer, change
):
    chosen = approval("smime-signing")
    finance = Group.objects.create(name="Finance")
    employee.groups.add(finance)
    chosen.allowed_groups.add(finance)
    pending = services.request_submit(
        requester=employee, template=chosen, csr=csr(new_key()), channel="web"
    )
    if change == "deactivated":
        employee.is_active = False
        employee.save()
    elif change == "left_the_group":
        employee.groups.remove(finance)
    else:
        chosen.is_active = False
        chosen.save()

    with pytest.raises(NotPermitted, match="Reject the request instead"):
        services.request_approve(request=pending, officer=officer)

    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.PENDING
    assert services.request_reject(request=pending, officer=officer, reason="left").state == (
        CertificateRequest.State.REJECTED
    )


def test_a_download_after_leaving_the_templates_group_fails_for_good(
    hierarchy, template, approval, employee, officer
):
    chosen = approval("smime-dual-use")
    finance = Group.objects.create(name="Finance")
    employee.groups.add(finance)
    chosen.allowed_groups.add(finance)
    approved = services.request_approve(
        request=services.request_submit(
            requester=employee,
            template=chosen,
            key_algorithm=KeyAlgorithm.EC_P256,
            channel="web",
        ),
        officer=officer,
    )
    employee.groups.remove(finance)

    with pytest.raises(NotPermitted, match="may no longer use"):
        services.request_collect(request=approved, actor=employee, pkcs12_password=PASSWORD)

    approved.refresh_from_db()
    assert approved.state == CertificateRequest.State.FAILED
    assert not employee.certificates.exists()


def test_the_requester_is_told_when_an_approved_csr_could_not_be_issued(
    hierarchy, template, approval, employee, colleague, officer,
    django_capture_on_commit_callbacks,
):  # fmt: skip
    key = new_key()
    pending = services.request_submit(
        requester=employee,
        template=approval("smime-signing"),
        csr=csr(key),
        channel="web",
    )
    reported = services.request_submit(
        requester=colleague,
        template=template("smime-dual-use"),
        csr=csr(key),
        channel="web",
    ).certificate
    services.certificate_revoke(certificate=reported, reason="keyCompromise")
    mail.outbox.clear()

    with django_capture_on_commit_callbacks(execute=True):
        decided = services.request_approve(request=pending, officer=officer)

    assert decided.state == CertificateRequest.State.FAILED
    (message,) = [m for m in mail.outbox if employee.email in m.to]
    assert "could not be issued" in message.subject
    assert "compromised" in message.body
    assert "is ready" not in message.body
    failed = AuditEvent.objects.get(action="request.fail", object_id=str(pending.pk))
    assert failed.outcome == AuditEvent.Outcome.FAILURE


# --- a CA that cannot sign right now ----------------------------------------------------


@pytest.fixture
def unreadable_ca_key(hierarchy, settings):
    """The issuing CA's key file gone (a failed mount, say); put back by restore()."""
    path = settings.PKIPORTAL_KEY_DIR / hierarchy.issuing.key_reference
    kept = path.read_bytes()
    path.unlink()

    class Key:
        location = str(path)

        @staticmethod
        def restore() -> None:
            path.write_bytes(kept)

    yield Key
    if not path.exists():
        Key.restore()


def test_an_approval_the_ca_cannot_sign_leaves_the_request_pending_for_another_try(
    approval, employee, officer, unreadable_ca_key, django_capture_on_commit_callbacks
):
    pending = services.request_submit(
        requester=employee,
        template=approval("smime-signing"),
        csr=csr(new_key()),
        channel="web",
    )
    mail.outbox.clear()

    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(ConfigurationError, match="stays pending") as refused,
    ):
        services.request_approve(request=pending, officer=officer, reason="known person")

    assert "cannot sign right now" in refused.value.message
    assert unreadable_ca_key.location not in refused.value.message
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.PENDING
    assert pending.decided_by is None
    assert pending.certificate is None
    assert not employee.certificates.exists()
    assert mail.outbox == []  # nothing was decided: the requester hears nothing yet
    (attempt,) = AuditEvent.objects.filter(action="request.approve", object_id=str(pending.pk))
    assert attempt.outcome == AuditEvent.Outcome.FAILURE
    assert attempt.detail == {"error_code": "KeyStoreError", "reason": "known person"}

    unreadable_ca_key.restore()
    decided = services.request_approve(request=pending, officer=officer)
    assert decided.state == CertificateRequest.State.ISSUED
    assert employee.certificates.count() == 1


def test_the_officer_sees_why_in_the_console_without_the_key_files_path(
    approval, employee, officer, unreadable_ca_key
):
    from tests.conftest import client_for

    pending = services.request_submit(
        requester=employee,
        template=approval("smime-signing"),
        csr=csr(new_key()),
        channel="web",
    )

    response = client_for(officer).post(
        f"/ra/requests/{pending.pk}/decide/", {"decision": "approve", "reason": ""}
    )

    assert response.status_code == 503
    page = response.content.decode()
    assert "The CA cannot sign right now" in page
    assert "stays pending" in page
    assert unreadable_ca_key.location not in page
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.PENDING


def test_the_api_answers_503_and_the_request_stays_pending(
    approval, employee, officer, unreadable_ca_key
):
    pending = services.request_submit(
        requester=employee,
        template=approval("smime-signing"),
        csr=csr(new_key()),
        channel="web",
    )

    response = token_client(officer).post(request_url(pending.pk, "approve"), {}, format="json")

    assert response.status_code == 503
    assert "stays pending" in response.json()["detail"]
    assert unreadable_ca_key.location not in response.content.decode()
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.PENDING


def test_web_enrolment_the_ca_cannot_sign_is_a_503_without_the_key_files_path(
    employee, unreadable_ca_key
):
    from tests.conftest import client_for
    from tests.enrollment.web import enrol_with_csr

    response = enrol_with_csr(client_for(employee), csr=csr(new_key()))

    assert response.status_code == 503
    page = response.content.decode()
    assert "The CA cannot sign right now; please tell your administrator." in page
    assert unreadable_ca_key.location not in page
    assert not employee.certificates.exists()
