"""A withdrawal at the same moment as an approval, a rejection or a download, on PostgreSQL.

All four take the request's row lock: whichever comes second waits for the first to
commit, then sees its outcome and is refused. Never both: no certificate for a withdrawn
request, no withdrawal of one already issued or rejected.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from cryptography.hazmat.primitives.serialization import Encoding

from django.db import transaction

from enrollment import services
from enrollment.exceptions import InvalidState
from enrollment.models import AuditEvent, Certificate, CertificateRequest
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.test_compromise_concurrency import overlap
from tests.enrollment.tools import cryptography_csr, new_key
from tests.markers import needs_row_locks

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    needs_row_locks,
]

PASSWORD = "a long pkcs12 password xyz"


def holding(work: Callable[[], object], done: threading.Event, release: threading.Event):
    """Do the work in a transaction left open (its locks held) until released."""

    def run() -> object:
        with transaction.atomic():
            result = work()
            done.set()
            release.wait(timeout=30)
        return result

    return run


def race(first: Callable[[], object], second: Callable[[], object]) -> tuple[dict, dict]:
    """Run `first` up to its commit, start `second`, show it waits, then let both end."""
    done, release = threading.Event(), threading.Event()
    first_outcome, second_outcome, waited = overlap(
        holding(first, done, release), done, release, second
    )  # waited on the request's row
    assert "error" not in first_outcome, first_outcome
    assert waited
    return first_outcome, second_outcome


@pytest.fixture
def csr_request(hierarchy, approval, employee) -> CertificateRequest:
    """Pending: approving it issues at once."""
    csr = cryptography_csr(new_key()).public_bytes(Encoding.PEM)
    return services.request_submit(
        requester=employee, template=approval("smime-signing"), csr=csr, channel="web"
    )


@pytest.fixture
def key_request(hierarchy, approval, employee) -> CertificateRequest:
    """Pending, for a key the portal generates when the requester downloads it."""
    return services.request_submit(
        requester=employee,
        template=approval("smime-signing"),
        key_algorithm=KeyAlgorithm.EC_P256,
        channel="web",
    )


def withdraw(request: CertificateRequest, employee) -> Callable[[], object]:
    return lambda: services.request_withdraw(request=request, actor=employee)


def decide(request: CertificateRequest, officer, verb: str) -> Callable[[], object]:
    if verb == "approve":
        return lambda: services.request_approve(request=request, officer=officer)
    return lambda: services.request_reject(request=request, officer=officer, reason="No.")


def collect(request: CertificateRequest, employee) -> Callable[[], object]:
    return lambda: services.request_collect(
        request=request, actor=employee, pkcs12_password=PASSWORD
    )


def state_of(request: CertificateRequest) -> str:
    return CertificateRequest.objects.get(pk=request.pk).state


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_a_decision_waiting_on_a_withdrawal_is_refused(csr_request, employee, officer, verb):
    _withdrawn, deciding = race(withdraw(csr_request, employee), decide(csr_request, officer, verb))

    assert isinstance(deciding.get("error"), InvalidState)
    assert "already withdrawn" in deciding["error"].message
    assert state_of(csr_request) == CertificateRequest.State.WITHDRAWN
    assert not Certificate.objects.exists()
    assert not AuditEvent.objects.filter(action=f"request.{verb}").exists()


@pytest.mark.parametrize(("verb", "end"), [("approve", "issued"), ("reject", "rejected")])
def test_a_withdrawal_waiting_on_a_decision_is_refused(csr_request, employee, officer, verb, end):
    _decided, withdrawing = race(
        decide(csr_request, officer, verb), withdraw(csr_request, employee)
    )

    assert isinstance(withdrawing.get("error"), InvalidState)
    assert f"already {end}" in withdrawing["error"].message
    assert state_of(csr_request) == end
    assert Certificate.objects.count() == (1 if end == "issued" else 0)
    assert not AuditEvent.objects.filter(action="request.withdraw").exists()


def test_a_download_waiting_on_a_withdrawal_is_refused(key_request, employee, officer):
    services.request_approve(request=key_request, officer=officer)

    _withdrawn, collecting = race(withdraw(key_request, employee), collect(key_request, employee))

    assert isinstance(collecting.get("error"), InvalidState)
    assert "nothing to download" in collecting["error"].message
    assert state_of(key_request) == CertificateRequest.State.WITHDRAWN
    assert not Certificate.objects.exists()
    assert not AuditEvent.objects.filter(action="pkcs12.download").exists()


def test_a_withdrawal_waiting_on_a_download_is_refused(key_request, employee, officer):
    services.request_approve(request=key_request, officer=officer)

    collected, withdrawing = race(collect(key_request, employee), withdraw(key_request, employee))

    assert isinstance(withdrawing.get("error"), InvalidState)
    assert "already issued" in withdrawing["error"].message
    assert state_of(key_request) == CertificateRequest.State.ISSUED
    certificate, _bundle = collected["value"]
    assert list(Certificate.objects.all()) == [certificate]
    assert not AuditEvent.objects.filter(action="request.withdraw").exists()


@pytest.fixture
def old_certificate(hierarchy, template, employee) -> Certificate:
    """A valid certificate of the employee's, to renew."""
    from tests.enrollment.tools import issue

    return issue(employee, template("smime-signing"), new_key())


def renew_with_csr(old: Certificate, employee) -> Callable[[], CertificateRequest]:
    """Issued at once (no approval), as the web and the API do with a CSR."""
    csr = cryptography_csr(new_key()).public_bytes(Encoding.PEM)
    return lambda: services.request_submit(
        requester=employee, template=old.template, csr=csr, renewal_of=old, channel="web"
    )


def renew_with_download(old: Certificate, employee) -> Callable[[], object]:
    """The portal's key: checked, then generated and issued at the download."""
    renewal = services.request_submit(
        requester=employee,
        template=old.template,
        key_algorithm=KeyAlgorithm.EC_P256,
        renewal_of=old,
        channel="web",
    )
    return collect(renewal, employee)


@pytest.mark.parametrize("renew", [renew_with_csr, renew_with_download])
def test_a_renewal_waiting_on_a_revocation_of_the_old_certificate_still_issues(
    old_certificate, employee, renew
):
    """The holder reports the old key compromised while the renewal runs: the renewal
    passed its checks, then waited at its supersede step for the revocation's row. It
    used to fail there with "already revoked"; now it issues, and the old certificate
    keeps keyCompromise."""
    renewing_work = renew(old_certificate, employee)
    _revoked, renewing = race(
        lambda: services.certificate_revoke(
            certificate=old_certificate, reason="keyCompromise", actor=employee
        ),
        renewing_work,
    )

    assert "error" not in renewing, renewing
    old = Certificate.objects.get(pk=old_certificate.pk)
    assert (old.status, old.revocation_reason) == ("revoked", "keyCompromise")
    new = Certificate.objects.exclude(pk=old.pk).get()
    assert new.status == "valid"
    request = CertificateRequest.objects.get(renewal_of=old)
    assert (request.state, request.certificate_id) == ("issued", new.pk)
    revocations = AuditEvent.objects.filter(action="certificate.revoke", object_id=str(old.pk))
    assert [event.detail["reason"] for event in revocations] == ["keyCompromise"]
    issued = AuditEvent.objects.get(action="certificate.issue", object_id=str(new.pk))
    assert issued.detail["renews"] == old.serial
    assert issued.detail["renewed_revoked"] == "keyCompromise"


def test_approving_a_renewal_while_its_old_certificate_is_revoked_does_not_deadlock(
    old_certificate, approval, employee, officer, monkeypatch
):
    """The approval writes its audit event (the chain's head) before it issues; a
    revocation takes the certificate's row, then the head. Taking the old certificate's
    row only at the supersede step, after the head, PostgreSQL aborted one of the two."""
    from enrollment import keystore

    csr = cryptography_csr(new_key()).public_bytes(Encoding.PEM)
    renewal = services.request_submit(
        requester=employee,
        template=approval("smime-signing"),
        csr=csr,
        renewal_of=old_certificate,
        channel="web",
    )
    signing, go = threading.Event(), threading.Event()
    sign = keystore.issue_end_entity

    def sign_after_a_pause(*args, **kwargs):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "approver":
            signing.set()  # the approval's event is written: the head is held
            go.wait(timeout=30)
        return sign(*args, **kwargs)

    monkeypatch.setattr(keystore, "issue_end_entity", sign_after_a_pause)

    def approve() -> CertificateRequest:
        threading.current_thread().name = "approver"
        return services.request_approve(request=renewal, officer=officer)

    approving, revoking, _waited = overlap(
        approve,
        signing,
        go,
        lambda: services.certificate_revoke(
            certificate=old_certificate, reason="keyCompromise", actor=employee
        ),
        waits=1.0,
    )

    assert "error" not in approving, approving.get("error")
    assert "error" not in revoking, revoking.get("error")
    assert CertificateRequest.objects.get(pk=renewal.pk).state == CertificateRequest.State.ISSUED
    old = Certificate.objects.get(pk=old_certificate.pk)
    assert old.status == Certificate.Status.REVOKED
