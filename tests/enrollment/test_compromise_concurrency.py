"""An issuance and a keyCompromise revocation of the same key at once, on PostgreSQL.

Both meet at the key's KeyIdentity row: whichever comes second waits for the first to
commit. A certificate of the key is then either refused or revoked with the others;
none stays valid.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from django.db import connection, transaction

from enrollment import hotsql, services
from enrollment.exceptions import InvalidState, PolicyViolation
from enrollment.models import Certificate
from tests.enrollment.tools import issue, new_key
from tests.markers import needs_row_locks

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    needs_row_locks,
]


def in_thread(work, outcome: dict) -> threading.Thread:
    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def overlap(
    first: Callable[[], object],
    reached: threading.Event,
    release: threading.Event,
    second: Callable[[], object],
    *,
    waits: float = 0.5,
) -> tuple[dict, dict, bool]:
    """Run ``first`` until it sets ``reached`` (holding what it has locked until
    ``release``), then ``second`` for ``waits`` seconds; then let both end. Both outcomes,
    and whether ``second`` was still waiting when ``first`` went on."""
    first_outcome: dict = {}
    second_outcome: dict = {}
    one = in_thread(first, first_outcome)
    assert reached.wait(timeout=30), first_outcome
    two = in_thread(second, second_outcome)
    two.join(timeout=waits)
    waited = two.is_alive()
    release.set()
    one.join(timeout=30)
    two.join(timeout=30)
    return first_outcome, second_outcome, waited


def test_an_issuance_waiting_on_a_compromise_is_refused(hierarchy, template, employee):
    key = new_key()
    reported = issue(employee, template("smime-signing"), key)
    marked, release = threading.Event(), threading.Event()

    def revoke() -> None:
        with transaction.atomic():
            services.certificate_revoke(certificate=reported, reason="keyCompromise")
            marked.set()
            release.wait(timeout=30)  # the compromise is marked, not yet committed

    revoking, issuing, waited = overlap(
        revoke, marked, release, lambda: issue(employee, template("smime-dual-use"), key)
    )
    assert waited  # on the key's row

    assert "error" not in revoking
    assert isinstance(issuing.get("error"), PolicyViolation)
    assert "compromised" in issuing["error"].message
    assert list(Certificate.objects.values_list("status", flat=True)) == ["revoked"]


def test_a_compromise_waiting_on_an_issuance_revokes_its_certificate(
    hierarchy, template, employee, monkeypatch
):
    key = new_key()
    reported = issue(employee, template("smime-signing"), key)
    claimed, release = threading.Event(), threading.Event()
    claim = hotsql.claim_key

    def claim_then_hold(spki: str, **options: bool):
        claimed_key = claim(spki, **options)
        if threading.current_thread().name == "issuer":
            claimed.set()
            release.wait(timeout=30)  # the key's row is locked, the certificate not yet in
        return claimed_key

    monkeypatch.setattr(hotsql, "claim_key", claim_then_hold)

    def issue_as_issuer() -> object:
        threading.current_thread().name = "issuer"
        return issue(employee, template("smime-dual-use"), key)

    issuing, revoking, waited = overlap(
        issue_as_issuer,
        claimed,
        release,
        lambda: services.certificate_revoke(certificate=reported, reason="keyCompromise"),
    )
    assert waited  # on the key's row

    assert "error" not in issuing
    assert "error" not in revoking
    latecomer = Certificate.objects.get(pk=issuing["value"].pk)
    assert (latecomer.status, latecomer.revocation_reason) == ("revoked", "keyCompromise")


def test_approving_a_csr_while_its_key_is_reported_compromised_does_not_deadlock(
    hierarchy, template, approval, employee, officer, monkeypatch
):
    """The approval issues in its own transaction: it must take the key's row before the
    audit chain head, as a keyCompromise revocation does, or PostgreSQL aborts one."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from enrollment.models import CertificateRequest
    from tests.enrollment.tools import cryptography_csr

    key = new_key()
    reported = issue(employee, template("smime-dual-use"), key)
    pending = services.request_submit(
        requester=employee,
        template=approval("smime-signing"),
        csr=cryptography_csr(key).public_bytes(Encoding.PEM),
        channel="web",
    )
    at_claim, go = threading.Event(), threading.Event()
    claim = hotsql.claim_key

    def claim_after_a_pause(spki: str, **kwargs):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "approver" and not go.is_set():
            at_claim.set()  # the approver holds the request's row, and nothing else yet
            go.wait(timeout=30)
        return claim(spki, **kwargs)

    monkeypatch.setattr(hotsql, "claim_key", claim_after_a_pause)

    def approve() -> CertificateRequest:
        threading.current_thread().name = "approver"
        return services.request_approve(request=pending, officer=officer)

    approving, revoking, _waited = overlap(
        approve,
        at_claim,
        go,
        lambda: services.certificate_revoke(
            certificate=reported, reason="keyCompromise", actor=employee
        ),
        waits=1.0,
    )

    assert "error" not in approving, approving.get("error")
    assert "error" not in revoking, revoking.get("error")
    pending.refresh_from_db()
    assert pending.state == CertificateRequest.State.FAILED  # its key is compromised
    assert not Certificate.objects.valid().filter(spki_sha256=reported.spki_sha256).exists()


def test_a_compromise_and_a_single_revocation_of_the_keys_other_certificate_never_deadlock(
    hierarchy, template, employee
):
    """One revocation takes its certificate's row, then the audit chain's head. A
    keyCompromise revokes several: it once took the head with the first and then the
    next row, which a single revocation of that row held while it waited for the head.
    PostgreSQL then aborted one of them."""
    key = new_key()
    reported = issue(employee, template("smime-signing"), key)
    other = issue(employee, template("smime-dual-use"), key)
    holding, go = threading.Event(), threading.Event()

    def supersede_other() -> None:
        with transaction.atomic():
            Certificate.objects.select_for_update().get(pk=other.pk)  # as _revoke does
            holding.set()
            go.wait(timeout=30)
            services.certificate_revoke(certificate=other, reason="superseded")

    single, compromise, waited = overlap(
        supersede_other,
        holding,
        go,
        lambda: services.certificate_revoke(certificate=reported, reason="keyCompromise"),
    )
    assert waited  # on the other certificate's row

    assert "error" not in single, single
    assert "error" not in compromise, compromise
    states = dict(Certificate.objects.values_list("pk", "revocation_reason"))
    # Superseded first, then upgraded with the rest of the key's certificates.
    assert states == {reported.pk: "keyCompromise", other.pk: "keyCompromise"}


def revoked_beside(template: Any, employee: Any) -> tuple[Certificate, Certificate]:
    """Two certificates of one key: the earlier revoked as superseded, the other valid, to
    be reported compromised. (Called after any patch of the CRL task: where it is patched,
    the earlier one's entry is on no CRL yet.)"""
    key = new_key()
    earlier = issue(employee, template("smime-dual-use"), key)
    reported = issue(employee, template("smime-signing"), key)
    services.certificate_revoke(certificate=earlier, reason="superseded")
    return earlier, reported


def publish_as_publisher(ca: Any) -> object:
    """crl_publish in a thread named "publisher", which the tests' pauses look for."""
    threading.current_thread().name = "publisher"
    return services.crl_publish(ca=ca)


def test_a_compromise_upgrading_a_revoked_certificate_never_deadlocks_with_its_holder(
    hierarchy, template, employee
):
    """The key's already-revoked certificates are locked with its valid ones, in id order,
    before the audit chain's head. Taken as they are upgraded, after the head, one of them
    held by a transaction that then writes an audit event (a restore correcting it, an
    officer's page) made PostgreSQL abort one of the two."""
    from enrollment.audit import audit_record

    earlier, reported = revoked_beside(template, employee)
    holding, go = threading.Event(), threading.Event()

    def hold_then_audit() -> None:
        with transaction.atomic():
            Certificate.objects.select_for_update().get(pk=earlier.pk)
            holding.set()
            go.wait(timeout=30)
            audit_record(action="certificate.note", target=earlier)

    single, compromise, waited = overlap(
        hold_then_audit,
        holding,
        go,
        lambda: services.certificate_revoke(certificate=reported, reason="keyCompromise"),
    )
    assert waited  # on the earlier certificate's row

    assert "error" not in single, single
    assert "error" not in compromise, compromise
    states = dict(Certificate.objects.values_list("pk", "revocation_reason"))
    assert states == {reported.pk: "keyCompromise", earlier.pk: "keyCompromise"}


def test_a_compromise_upgrading_an_entry_a_publisher_is_marking_never_deadlocks(
    hierarchy, template, employee, monkeypatch
):
    """A publisher marks the entries its CRL lists (their rows), then writes its audit
    event (the head). The compromise upgrades the key's revoked certificates' entries:
    taken after the head it wrote for the reported certificate, it deadlocked with one."""
    from enrollment import tasks
    from enrollment.audit import audit_record

    monkeypatch.setattr(tasks, "_send_crl_publish", lambda ca_id: None)  # as with a broker
    earlier, reported = revoked_beside(template, employee)
    marked, go = threading.Event(), threading.Event()

    def audit_after_a_pause(**kwargs):  # type: ignore[no-untyped-def]
        if kwargs["action"] == "crl.publish" and threading.current_thread().name == "publisher":
            marked.set()  # the entries are marked: their rows are held
            go.wait(timeout=30)
        return audit_record(**kwargs)

    monkeypatch.setattr(services, "audit_record", audit_after_a_pause)

    publishing, compromise, _waited = overlap(
        lambda: publish_as_publisher(hierarchy.issuing),
        marked,
        go,
        lambda: services.certificate_revoke(certificate=reported, reason="keyCompromise"),
        waits=1.0,
    )

    assert "error" not in publishing, publishing.get("error")
    assert "error" not in compromise, compromise.get("error")
    states = dict(Certificate.objects.values_list("pk", "revocation_reason"))
    assert states == {reported.pk: "keyCompromise", earlier.pk: "keyCompromise"}


def test_an_entry_queued_again_while_a_crl_is_built_waits_for_the_next_crl(
    hierarchy, template, employee, monkeypatch
):
    """A publisher reads the unpublished entries' bytes, signs, then marks them published.
    A reason made keyCompromise in between was marked published by a CRL that listed the
    old reason, and no CRL was due for it: relying parties saw superseded until the next
    scheduled one. Every entry marked with a CRL's number is as that CRL lists it."""
    from cryptography import x509

    from enrollment import keystore, tasks
    from enrollment.models import CrlEntry, RevocationList

    monkeypatch.setattr(tasks, "_send_crl_publish", lambda ca_id: None)  # as with a broker
    earlier, reported = revoked_beside(template, employee)
    read, go = threading.Event(), threading.Event()
    signer = keystore.crl_signer

    def sign_after_a_pause(ca, **options):  # type: ignore[no-untyped-def]
        sign = signer(ca, **options)
        if threading.current_thread().name != "publisher":
            return sign

        def paused(**kwargs):  # type: ignore[no-untyped-def]
            read.set()  # the entries' bytes are read, not yet marked
            go.wait(timeout=30)
            return sign(**kwargs)

        return paused

    monkeypatch.setattr(keystore, "crl_signer", sign_after_a_pause)

    publishing, compromise, _waited = overlap(
        lambda: publish_as_publisher(hierarchy.issuing),
        read,
        go,
        lambda: services.certificate_revoke(certificate=reported, reason="keyCompromise"),
        waits=1.0,
    )

    assert "error" not in publishing, publishing.get("error")
    assert "error" not in compromise, compromise.get("error")
    entry = CrlEntry.objects.get(certificate=earlier)
    if entry.first_crl_number is not None:  # marked: its CRL must list keyCompromise
        crl = RevocationList.objects.get(ca=hierarchy.issuing, number=entry.first_crl_number)
        listed = crl.crl.get_revoked_certificate_by_serial_number(int(earlier.serial, 16))
        reason = listed.extensions.get_extension_for_class(x509.CRLReason).value.reason
        assert reason == x509.ReasonFlags.key_compromise
    assert services.crl_publish_if_due(ca=hierarchy.issuing) is not None  # it is due


def test_a_bulk_compromise_batch_and_a_single_compromise_of_one_of_its_keys_never_deadlock(
    hierarchy, template, employee, colleague, officer, monkeypatch
):
    """The admin's bulk revocation revokes a batch in one transaction, which holds the
    audit chain's head from its first revocation. It takes every key's row, the keys'
    certificates and their CRL entries first: taken as each is revoked, after the head,
    the second key's row was held by a single compromise of that key waiting for the
    batch's certificate row, and PostgreSQL aborted one of them."""
    from enrollment import bulk_revoke, notifications
    from tests.enrollment.tools import as_staff

    first = issue(employee, template("smime-signing"), new_key())
    key = new_key()
    second = issue(colleague, template("smime-signing"), key)
    reported = issue(colleague, template("smime-dual-use"), key)  # the key's, not in the batch
    as_staff(officer, "view_certificate")
    revoked_one, go = threading.Event(), threading.Event()
    tell = notifications.certificate_revoked

    def tell_after_a_pause(certificate, **kwargs):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "bulk" and not go.is_set():
            revoked_one.set()  # the first is revoked: the batch holds the head
            go.wait(timeout=30)
        return tell(certificate, **kwargs)

    monkeypatch.setattr(notifications, "certificate_revoked", tell_after_a_pause)
    run = bulk_revoke.bulk_revoke_start(
        ids=[first.pk, second.pk], reason="keyCompromise", actor=officer
    )

    def bulk() -> None:
        threading.current_thread().name = "bulk"
        bulk_revoke.bulk_revoke_work(run.pk, claim=run.claim)

    batch, single, _waited = overlap(
        bulk,
        revoked_one,
        go,
        lambda: services.certificate_revoke(certificate=reported, reason="keyCompromise"),
        waits=1.5,
    )

    assert "error" not in batch, batch.get("error")
    run.refresh_from_db()
    assert (run.state, run.error) == ("done", "")
    assert (run.revoked, run.failed) == (2, 0)
    # Revoked with the batch's second certificate: the single one finds it done.
    assert "error" not in single or isinstance(single["error"], InvalidState), single
    states = dict(Certificate.objects.values_list("pk", "revocation_reason"))
    assert states == {pk: "keyCompromise" for pk in (first.pk, second.pk, reported.pk)}
