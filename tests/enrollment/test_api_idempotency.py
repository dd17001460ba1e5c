"""Idempotency-Key on API enrolment: a client retrying after a lost answer gets the first
answer again, never a second certificate; the same key for something else is refused."""

from __future__ import annotations

import threading
import uuid

import pytest

from django.db import connection

from enrollment.models import AuditEvent, Certificate, CertificateRequest
from tests.enrollment.api_tools import (
    ENROLLMENTS,
    csr_body,
    server_key_body,
    stored_counts,
    token_client,
)
from tests.enrollment.tools import new_key
from tests.markers import needs_row_locks

pytestmark = pytest.mark.django_db


def post(client, body, key: str | None):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(ENROLLMENTS, body, format="json", **headers)


def test_a_retried_csr_enrolment_gets_the_same_certificate(hierarchy, employee):
    client, body, key = token_client(employee), csr_body(new_key()), str(uuid.uuid4())

    first = post(client, body, key)
    again = post(client, body, key)

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert stored_counts() == (1, 1)
    assert AuditEvent.objects.filter(action="certificate.issue").count() == 1


def test_without_a_key_each_post_is_a_new_enrolment(hierarchy, employee):
    client, key_pair = token_client(employee), new_key()

    post(client, csr_body(key_pair), None)
    post(client, csr_body(key_pair), None)

    assert Certificate.objects.count() == 2


def test_the_same_key_for_a_different_request_is_422_and_changes_nothing(hierarchy, employee):
    client, key = token_client(employee), "retry-me"
    post(client, csr_body(new_key()), key)

    for other in (
        csr_body(new_key()),  # another CSR
        csr_body(new_key(), template="smime-dual-use"),
        server_key_body(),
        ["not", "an", "object"],
    ):
        response = post(client, other, key)
        assert response.status_code == 422, other
        assert "different request" in response.json()["detail"]
    assert stored_counts() == (1, 1)


def test_keys_are_per_person(hierarchy, employee, colleague):
    post(token_client(employee), csr_body(new_key()), "shared-key")

    theirs = post(token_client(colleague), csr_body(new_key()), "shared-key")

    assert theirs.status_code == 201  # their own enrolment, not a view of Alice's
    assert Certificate.objects.filter(owner=colleague).count() == 1


def test_a_pending_request_is_answered_again_with_its_url(hierarchy, approval, employee):
    approval("smime-signing")
    client, body = token_client(employee), csr_body(new_key())

    first, again = post(client, body, "k1"), post(client, body, "k1")

    assert (first.status_code, again.status_code) == (202, 202)
    assert again["Location"] == first["Location"]
    assert CertificateRequest.objects.count() == 1


def test_a_portal_key_is_never_handed_out_twice(hierarchy, employee):
    client, body = token_client(employee), server_key_body()

    first = post(client, body, "p12-once")
    again = post(client, body, "p12-once")

    assert first.status_code == 201
    assert "pkcs12" in first.json()
    assert again.status_code == 409
    assert "pkcs12" not in again.json()
    assert "not keep keys" in again.json()["detail"]
    assert again.json()["serial"] == first.json()["serial"]
    assert Certificate.objects.count() == 1


@pytest.mark.parametrize("key", ["", "x" * 65, "with space", "caf\u00e9"])
def test_a_malformed_key_is_a_400_naming_the_header(hierarchy, employee, key):
    response = post(token_client(employee), csr_body(new_key()), key)

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()
    assert stored_counts() == (0, 0)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@needs_row_locks
def test_two_retries_racing_each_other_make_one_certificate(hierarchy, employee):
    body, key, answers = csr_body(new_key()), str(uuid.uuid4()), []
    start = threading.Barrier(2)

    def send() -> None:
        try:
            start.wait(timeout=10)
            answers.append(post(token_client(employee), body, key))
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(a.status_code for a in answers) == [201, 201]
    assert len({a.json()["serial"] for a in answers}) == 1
    assert Certificate.objects.count() == 1
