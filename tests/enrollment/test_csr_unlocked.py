"""A CSR issued at once on PostgreSQL without the requester's lock (services._csr_issued_unlocked).

It reads without a lock, signs, and writes everything in one statement only if nobody
took the requester's lock since: these tests change the world between its read and its
write (inside the signing, which sits exactly there, or from another connection that
has not committed yet) and show the locked way then decides, as if the unlocked way had
never run. Production runs it outside a transaction; so do these tests
(transaction=True), except where a caller's transaction is the point. ``ways`` records
which way each enrolment took and what the one statement did, so a test cannot pass by
the locked way alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from cryptography.hazmat.primitives.serialization import Encoding

from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Q

from enrollment import hotsql, keystore, services
from enrollment.audit import audit_chain_breaks
from enrollment.exceptions import PolicyViolation
from enrollment.models import (
    AuditChainHead,
    AuditEvent,
    Certificate,
    CertificateRequest,
    KeyIdentity,
)
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.api_tools import ENROLLMENTS, csr_body, token_client
from tests.enrollment.test_compromise_concurrency import overlap
from tests.enrollment.tools import cryptography_csr, issue, new_key
from tests.markers import needs_row_locks

pytestmark = [needs_row_locks]
transactional = pytest.mark.django_db(transaction=True, serialized_rollback=True)

WRITTEN, NOT_WRITTEN, FAILED, LOCKED = "written", "not written", "failed", "locked"


def csr(key=None) -> bytes:
    return cryptography_csr(key or new_key()).public_bytes(Encoding.PEM)


@pytest.fixture
def ways(monkeypatch) -> list[str]:
    """In order: what each run of the one statement did, and each run of the locked way."""
    seen: list[str] = []
    one_statement, locked = hotsql.issue_checked, services._request_submit_locked

    def spied_statement(**kwargs: Any) -> None:
        try:
            one_statement(**kwargs)
        except hotsql.NotIssued:
            seen.append(NOT_WRITTEN)
            raise
        except DatabaseError:
            seen.append(FAILED)
            raise
        seen.append(WRITTEN)

    def spied_locked(**kwargs: Any) -> CertificateRequest:
        seen.append(LOCKED)
        return locked(**kwargs)

    monkeypatch.setattr(hotsql, "issue_checked", spied_statement)
    monkeypatch.setattr(services, "_request_submit_locked", spied_locked)
    return seen


@pytest.fixture
def meanwhile(monkeypatch) -> Callable[[Callable[[], Any]], None]:
    """Run ``action`` once, inside the first signing: after the unlocked way's read,
    before its write."""

    def arrange(action: Callable[[], Any]) -> None:
        done: list[bool] = []
        original = keystore.issue_end_entity

        def signing(*args: Any, **kwargs: Any) -> Any:
            if not done:
                done.append(True)
                action()
            return original(*args, **kwargs)

        monkeypatch.setattr(keystore, "issue_end_entity", signing)

    return arrange


def waiting_request(person, template, idempotency_key: str) -> None:
    """A request stored without the person's lock, as no enrolment stores one: only so
    that its unique key is taken."""
    services._new_request(
        requester=person,
        template=template,
        parsed=None,
        key_algorithm=KeyAlgorithm.EC_P256,
        approved=False,
        renewal_of=None,
        mailbox=None,
        source_address=None,
        idempotency_key=idempotency_key,
        channel="api",
    ).save()


def version(person) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT xmin::text FROM accounts_user WHERE id = %s", [person.pk])
        return cursor.fetchone()[0]


def enrol(person, signing, key=None, **kwargs: Any) -> CertificateRequest:
    return services.request_submit(
        requester=person, template=signing, csr=csr(key), channel="api", **kwargs
    )


@transactional
def test_outside_a_transaction_an_api_enrolment_costs_three_statements(
    hierarchy, employee, ways, django_assert_num_queries
):
    """Token with its user; the check (the template the body names, the limits, the row's
    version, the key, the CA, two keys); the one statement that writes everything. No
    BEGIN, no COMMIT."""
    client = token_client(employee)
    assert client.post(ENROLLMENTS, csr_body(new_key()), format="json").status_code == 201

    with django_assert_num_queries(3):
        response = client.post(ENROLLMENTS, csr_body(new_key()), format="json")

    assert response.status_code == 201
    assert ways == [WRITTEN, WRITTEN]
    assert Certificate.objects.filter(owner=employee).count() == 2
    assert list(audit_chain_breaks()) == []


@transactional
def test_the_first_event_ever_is_chained_by_the_locked_way(hierarchy, template, employee, ways):
    """No chain head yet (a new database): the one statement writes nothing; the locked way
    makes the head and issues."""
    with connection.cursor() as cursor:  # the models refuse it: events are append-only
        for model in (AuditChainHead, AuditEvent):
            cursor.execute(f"DELETE FROM {model._meta.db_table}")

    request = enrol(employee, template("smime-signing"))

    assert ways == [NOT_WRITTEN, LOCKED]
    assert request.state == CertificateRequest.State.ISSUED
    assert Certificate.objects.count() == CertificateRequest.objects.count() == 1
    assert AuditEvent.objects.count() == 2
    assert list(audit_chain_breaks()) == []


@transactional
def test_it_writes_what_the_locked_way_writes(hierarchy, template, employee, ways, monkeypatch):
    signing = template("smime-signing")
    enrol(employee, signing)  # the chain head exists from here on
    fast = enrol(employee, signing, source_address="192.0.2.7", idempotency_key="k-1")
    monkeypatch.setattr(services, "_csr_issued_unlocked", lambda **kwargs: (None, None))
    slow = enrol(employee, signing, source_address="192.0.2.7", idempotency_key="k-2")
    assert ways == [WRITTEN, WRITTEN, LOCKED]

    def row(model, pk: int, *varying: str) -> dict[str, Any]:
        stored = model.objects.filter(pk=pk).values().get()
        return {k: v for k, v in stored.items() if k not in {"id", *varying}}

    varying = ("serial", "der", "fingerprint_sha256", "fingerprint_sha1", "spki_sha256",
               "not_before", "not_after", "created_at", "updated_at")  # fmt: skip
    assert fast.certificate is not None
    assert slow.certificate is not None
    assert row(Certificate, fast.certificate.pk, *varying) == row(
        Certificate, slow.certificate.pk, *varying
    )
    varying_request = ("certificate_id", "csr", "idempotency_key", "created_at", "updated_at")
    assert row(CertificateRequest, fast.pk, *varying_request) == row(
        CertificateRequest, slow.pk, *varying_request
    )

    def events(request: CertificateRequest) -> list[tuple[Any, ...]]:
        assert request.certificate is not None
        found = []
        for target, label in ((request, "enrollment.CertificateRequest"),
                              (request.certificate, "enrollment.Certificate")):  # fmt: skip
            event = AuditEvent.objects.get(object_type=label, object_id=str(target.pk))
            detail = {k: v for k, v in event.detail.items() if k != "serial"}
            found.append((event.action, event.actor_id, event.source_address, event.outcome,
                          detail, event.object_repr.split(" ")[0]))  # fmt: skip
        return found

    assert events(fast) == events(slow)
    fast_events = AuditEvent.objects.filter(
        Q(object_type="enrollment.CertificateRequest", object_id=str(fast.pk))
        | Q(object_type="enrollment.Certificate", object_id=str(fast.certificate.pk))
    ).order_by("id")
    assert [e.action for e in fast_events] == ["request.submit", "certificate.issue"]
    assert list(audit_chain_breaks()) == []


@transactional
def test_a_lock_taken_meanwhile_sends_it_the_locked_way(
    hierarchy, template, employee, ways, meanwhile, caplog
):
    meanwhile(lambda: hotsql.lock_people([employee.pk]))  # committed at once

    with caplog.at_level("INFO", logger="enrollment.services"):
        request = enrol(employee, template("smime-signing"))

    assert ways == [NOT_WRITTEN, LOCKED]
    assert request.state == CertificateRequest.State.ISSUED
    assert Certificate.objects.filter(owner=employee).count() == 1  # the locked way's only
    assert CertificateRequest.objects.count() == 1
    assert list(audit_chain_breaks()) == []
    discarded = [r.getMessage() for r in caplog.records if "signed and not stored" in r.message]
    assert len(discarded) == 1
    assert request.certificate is not None
    assert request.certificate.serial not in discarded[0]  # the first signature's serial


@transactional
def test_an_enrolment_meanwhile_that_reaches_the_cap_refuses_this_one(
    hierarchy, template, employee, ways, meanwhile, settings
):
    """The check saw room for one more; another request of the person's took it. The cap
    holds: the certificate signed on the stale counts is never stored."""
    settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE = 1
    signing = template("smime-signing")
    meanwhile(lambda: enrol(employee, signing))

    with pytest.raises(PolicyViolation, match="already have 1 valid certificates"):
        enrol(employee, signing)

    assert ways == [WRITTEN, NOT_WRITTEN, LOCKED]  # the one meanwhile, then this one's
    assert Certificate.objects.filter(owner=employee).count() == 1
    assert CertificateRequest.objects.count() == 1
    assert list(audit_chain_breaks()) == []


@transactional
def test_a_key_reported_compromised_meanwhile_is_refused(
    hierarchy, template, employee, ways, meanwhile
):
    key = new_key()
    from enrollment.x509 import keys

    spki = keys.spki_sha256(key.public_key())
    meanwhile(
        lambda: KeyIdentity.objects.update_or_create(
            spki_sha256=spki, defaults={"compromised": True}
        )
    )

    with pytest.raises(PolicyViolation, match="compromised"):
        enrol(employee, template("smime-signing"), key)

    assert ways == [NOT_WRITTEN, LOCKED]
    assert Certificate.objects.count() == CertificateRequest.objects.count() == 0
    assert KeyIdentity.objects.get(spki_sha256=spki).compromised


@transactional
def test_a_key_taken_meanwhile_fails_the_one_statement_whole(
    hierarchy, template, employee, ways, meanwhile
):
    """A unique key stored meanwhile (a retry with the same Idempotency-Key): the
    statement fails as a whole, writing nothing, and the caller hears of it."""
    signing = template("smime-signing")
    enrol(employee, signing)
    before = (Certificate.objects.count(), AuditEvent.objects.count(), version(employee))
    meanwhile(lambda: waiting_request(employee, signing, "same"))

    with pytest.raises(IntegrityError):
        enrol(employee, signing, idempotency_key="same")

    assert ways == [WRITTEN, FAILED]
    assert (Certificate.objects.count(), AuditEvent.objects.count()) == before[:2]
    assert version(employee) == before[2]  # the row's move was undone with the rest
    assert list(audit_chain_breaks()) == []


@transactional
def test_a_head_moved_without_its_certificate_fails_the_statement_whole(
    hierarchy, template, employee, ways
):
    """A trigger (or a later edit) that drops the certificate's row: the head must not move
    to events whose certificate is missing. Outside a transaction nothing could undo it
    after the statement, so the statement fails itself."""
    signing = template("smime-signing")
    enrol(employee, signing)
    head = AuditChainHead.objects.get().last_hash
    table = Certificate._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_drop_row() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RETURN NULL; END $$"
        )
        cursor.execute(
            f"CREATE TRIGGER test_drop_certificate BEFORE INSERT ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION test_drop_row()"
        )
    try:
        with pytest.raises(DatabaseError, match="head moved"):
            enrol(employee, signing)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER test_drop_certificate ON {table}")
            cursor.execute("DROP FUNCTION test_drop_row()")

    assert ways == [WRITTEN, FAILED]
    assert AuditChainHead.objects.get().last_hash == head
    assert list(audit_chain_breaks()) == []


@transactional
def test_a_lock_held_meanwhile_is_waited_for_then_counted(
    hierarchy, template, employee, ways, settings
):
    """The locked way of another request, not yet committed, holds the row: the one
    statement waits for it, finds the row moved and writes nothing; the locked way then
    counts that request's certificate and refuses at the cap."""
    settings.PKIPORTAL_MAX_VALID_PER_TEMPLATE = 1
    signing = template("smime-signing")
    holding, release = threading.Event(), threading.Event()

    def locked_and_held() -> None:
        with transaction.atomic():
            services._request_submit_locked(
                requester=employee, template=signing, csr=csr(), key_algorithm=None,
                renewal_of=None, source_address=None, idempotency_key="", mailbox=None,
                channel="api",
            )  # fmt: skip
            holding.set()
            release.wait(timeout=30)

    first, second, waited = overlap(
        locked_and_held, holding, release, lambda: enrol(employee, signing)
    )  # waited on the row the locked way holds

    assert "error" not in first, first
    assert waited
    assert isinstance(second.get("error"), PolicyViolation), second
    assert ways == [LOCKED, NOT_WRITTEN, LOCKED]
    assert Certificate.objects.filter(owner=employee).count() == 1
    assert list(audit_chain_breaks()) == []


@transactional
def test_a_compromise_being_committed_meanwhile_is_waited_for_and_refuses(
    hierarchy, template, employee, colleague, ways
):
    """A keyCompromise revocation of the key, not yet committed, holds the key's row: the
    one statement waits at its claim, reads the flag as committed and writes nothing; the
    locked way refuses the key."""
    key = new_key()
    reported = issue(colleague, template("smime-signing"), key)
    marked, release = threading.Event(), threading.Event()

    def revoke() -> None:
        with transaction.atomic():
            services.certificate_revoke(certificate=reported, reason="keyCompromise")
            marked.set()
            release.wait(timeout=30)

    revoking, enrolling, waited = overlap(
        revoke, marked, release, lambda: enrol(employee, template("smime-signing"), key)
    )

    assert "error" not in revoking, revoking
    assert waited
    assert isinstance(enrolling.get("error"), PolicyViolation), enrolling
    assert "compromised" in enrolling["error"].message
    assert ways == [NOT_WRITTEN, LOCKED]
    assert not Certificate.objects.filter(owner=employee).exists()


@pytest.mark.django_db
def test_inside_a_callers_transaction_a_failed_statement_leaves_it_usable(
    hierarchy, template, employee, ways, meanwhile
):
    signing = template("smime-signing")
    enrol(employee, signing)
    meanwhile(lambda: waiting_request(employee, signing, "same"))

    with pytest.raises(IntegrityError):
        enrol(employee, signing, idempotency_key="same")

    assert ways == [WRITTEN, FAILED]
    # The caller's transaction (the test's) goes on.
    assert CertificateRequest.objects.filter(idempotency_key="same").count() == 1


@pytest.mark.django_db
def test_request_submit_checks_unlocked_only_what_it_may_issue_at_once(
    hierarchy, template, employee, approval, ways, monkeypatch
):
    checks: list[int] = []
    original = hotsql.enrolment_check
    monkeypatch.setattr(hotsql, "enrolment_check", lambda **kw: checks.append(1) or original(**kw))
    issued = enrol(employee, template("smime-signing"))
    assert checks == [1]

    renewed = enrol(employee, template("smime-signing"), renewal_of=issued.certificate)
    approval("smime-signing")
    waiting = enrol(employee, template("smime-signing"))

    assert checks == [1]  # the renewal and the request that waits for approval: locked
    assert ways == [WRITTEN, LOCKED, LOCKED]
    assert renewed.state == CertificateRequest.State.ISSUED
    assert waiting.state == CertificateRequest.State.PENDING
