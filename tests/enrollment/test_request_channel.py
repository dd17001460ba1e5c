"""CertificateRequest.channel: each way in records its own, the audit's "channel" reads the
column (not EST's key prefix), the officer's pages and the API show it, migrations 0032
and 0033 add and backfill it, and EST's repeat lookup reads its index."""

from __future__ import annotations

import base64
import importlib
from typing import Any
from unittest import mock

import pytest

from cryptography.hazmat.primitives.serialization import Encoding

from django.db import IntegrityError, connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.utils import timezone

from enrollment import est, rollouts, services
from enrollment.models import AuditEvent, CertificateRequest
from enrollment.x509.keys import KeyAlgorithm
from tests.conftest import client_for
from tests.enrollment.api_tools import (
    ENROLLMENTS,
    certificate_url,
    csr_body,
    csr_pem,
    enrollment_url,
    server_key_body,
    token_client,
)
from tests.enrollment.tools import cryptography_csr, new_key
from tests.enrollment.web import enrol_with_csr, enrol_with_portal_key
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

Channel = CertificateRequest.Channel
EST = "/.well-known/est"
EST_PASSWORD = "correct horse battery staple"  # tests/factories.py


@pytest.fixture
def est_on(settings):
    settings.PKIPORTAL_EST_ENABLED = True
    settings.PKIPORTAL_EST_DEFAULT_TEMPLATE = "smime-signing"


def est_post(operation: str, der: bytes, user: str = "alice", *, label: str = "") -> Any:
    credentials = base64.b64encode(f"{user}:{EST_PASSWORD}".encode()).decode()
    path = f"{EST}/{label}/{operation}" if label else f"{EST}/{operation}"
    return Client().post(
        path,
        base64.encodebytes(der),
        content_type="application/pkcs10",
        HTTP_AUTHORIZATION=f"Basic {credentials}",
        secure=True,
    )


def der_csr(key=None, subject=None) -> bytes:
    if subject is None:
        return cryptography_csr(key or new_key()).public_bytes(Encoding.DER)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(Encoding.DER)


def newest() -> CertificateRequest:
    return CertificateRequest.objects.order_by("-pk").first()


# --- each way in records its channel ----------------------------------------------------


def test_the_web_records_web_for_a_csr_and_for_a_portal_key(hierarchy, employee, fast_pkcs12):
    browser = client_for(employee)

    with_csr = enrol_with_csr(browser, csr=csr_pem(new_key()))
    assert with_csr.status_code == 302
    assert newest().channel == Channel.WEB
    portal_key = enrol_with_portal_key(browser, "smime-signing")
    assert portal_key.status_code == 200, portal_key.content[:300]
    assert newest().key_source == CertificateRequest.KeySource.SERVER

    assert list(CertificateRequest.objects.values_list("channel", flat=True)) == ["web", "web"]


def test_the_api_records_api_for_a_csr_a_portal_key_and_a_renewal(hierarchy, employee, fast_pkcs12):
    api = token_client(employee)

    first = api.post(ENROLLMENTS, csr_body(new_key()), format="json")
    portal_key = api.post(ENROLLMENTS, server_key_body("smime-signing"), format="json")
    renewal = api.post(
        f"{certificate_url(first.json()['serial'])}renew/",
        {"csr": csr_pem(new_key())},
        format="json",
        HTTP_IDEMPOTENCY_KEY="renew-1",
    )

    assert [first.status_code, portal_key.status_code, renewal.status_code] == [201] * 3
    assert sorted(CertificateRequest.objects.values_list("channel", flat=True)) == ["api"] * 3
    assert CertificateRequest.objects.filter(renewal_of__isnull=False, channel="api").exists()


def test_est_records_est_for_enrol_and_reenrol(hierarchy, employee, est_on):
    from cryptography import x509

    first = est_post("simpleenroll", der_csr())
    assert first.status_code == 200, first.content
    old = CertificateRequest.objects.get().certificate
    again = est_post("simplereenroll", der_csr(new_key(), old.certificate.subject))

    assert again.status_code == 200, again.content
    rows = CertificateRequest.objects.order_by("pk")
    assert [(r.channel, r.renewal_of_id) for r in rows] == [("est", None), ("est", old.pk)]
    assert isinstance(old.certificate, x509.Certificate)


def test_a_rollout_records_rollout(hierarchy, template, officer):
    people = [UserFactory(username=f"ro{n}") for n in range(2)]

    rollouts.rollout_create(
        officer=officer,
        template=template("smime-signing"),
        people=" ".join(p.username for p in people),
        key_algorithm=KeyAlgorithm.EC_P256,
    )

    assert list(CertificateRequest.objects.values_list("channel", flat=True)) == ["rollout"] * 2


def test_the_service_takes_no_request_without_a_channel_nor_a_made_up_one(
    hierarchy, template, employee
):
    """A way in that forgot to say its channel would store its requests as 'unknown',
    which reads as "made before the portal kept it": the argument is required."""
    with pytest.raises(TypeError, match="channel"):
        services.request_submit(  # type: ignore[call-arg]
            requester=employee, template=template("smime-signing"), csr=der_csr()
        )
    with pytest.raises(ValueError, match="Unknown request channel 'EST'"):
        services.request_submit(
            requester=employee, template=template("smime-signing"), csr=der_csr(), channel="EST"
        )
    assert CertificateRequest.objects.count() == 0


# --- the audit's "channel" comes from the column -------------------------------------------


def test_the_issuance_after_approval_names_the_channel_stored_not_the_key_prefix(
    hierarchy, approval, employee, officer
):
    """A request stored as EST's is audited as EST's whatever its key; one stored as the
    API's is not, even with a key that looks like EST's (which the API refuses to make)."""
    template = approval("smime-signing")
    common = {"requester": employee, "template": template}
    as_est = services.request_submit(
        **common, csr=der_csr(), idempotency_key="plain", channel=Channel.EST
    )
    as_api = services.request_submit(
        **common, csr=der_csr(), idempotency_key="est:looks-like", channel=Channel.API
    )

    for waiting in (as_est, as_api):
        services.request_approve(request=waiting, officer=officer)

    issued = {
        e.object_id: e.detail.get("channel")
        for e in AuditEvent.objects.filter(action="certificate.issue")
    }
    as_est.refresh_from_db()
    as_api.refresh_from_db()
    assert issued == {str(as_est.certificate_id): "est", str(as_api.certificate_id): None}
    submits = AuditEvent.objects.filter(action="request.submit").order_by("pk")
    assert [e.detail.get("channel") for e in submits] == ["est", None]


# --- shown to officers and in the API ---------------------------------------------------


def test_the_officers_pages_and_the_api_show_the_channel(
    hierarchy, approval, employee, colleague, officer, est_on
):
    approval("smime-signing")
    assert est_post("simpleenroll", der_csr()).status_code == 202
    waiting = CertificateRequest.objects.get()

    detail = client_for(officer).get(f"/enroll/requests/{waiting.pk}/")
    queue = client_for(officer).get("/ra/requests/")
    mine = token_client(employee).get(enrollment_url(waiting.pk))
    theirs = token_client(colleague).get(enrollment_url(waiting.pk))

    assert detail.status_code == 200
    assert '<dd id="channel">EST (RFC 7030)</dd>' in detail.content.decode()
    assert f'<span id="channel-{waiting.pk}">EST (RFC 7030)</span>' in queue.content.decode()
    assert mine.status_code == 200
    assert mine.json()["channel"] == "est"
    assert theirs.status_code == 404  # nobody else learns how someone's request came


def test_an_unrecorded_channel_reads_as_such_on_the_request_page(hierarchy, template, employee):
    made = services.request_submit(
        requester=employee,
        template=template("smime-signing"),
        key_algorithm=KeyAlgorithm.EC_P256,
        channel=Channel.UNKNOWN,  # as the rows made before the column was added
    )

    page = client_for(employee).get(f"/enroll/requests/{made.pk}/").content.decode()

    assert "not recorded (made before the portal kept it)" in page


def test_the_schema_documents_the_channel_of_an_enrolment(db):
    schema = Client().get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    document = schema.json()

    channel = document["components"]["schemas"]["EnrollmentOut"]["properties"]["channel"]

    assert channel["readOnly"] is True
    assert "roll-out" in channel["description"]
    enum = document["components"]["schemas"][channel["allOf"][0]["$ref"].rsplit("/", 1)[1]]
    assert enum["enum"] == ["web", "api", "est", "rollout", "unknown"]


# --- EST unchanged: the API still refuses its keys ------------------------------------------


def test_the_api_still_refuses_est_keys_so_it_cannot_answer_for_est(hierarchy, employee, est_on):
    """An EST request's key is computable from its CSR; a client that could take it would
    meet EST's own request in the shared unique index."""
    der = der_csr()
    template = services.hotsql.template_by_slug("smime-signing")
    key = est.request_key(template, der, renew=False)

    refused = token_client(employee).post(
        ENROLLMENTS,
        {"template": "smime-signing", "csr": base64.b64encode(der).decode()},
        format="json",
        HTTP_IDEMPOTENCY_KEY=key,
    )

    assert refused.status_code == 400
    assert "Idempotency-Key" in refused.json()
    assert CertificateRequest.objects.count() == 0
    assert est_post("simpleenroll", der).status_code == 200
    assert CertificateRequest.objects.get().channel == "est"


# --- EST's repeat lookup reads its index -------------------------------------------------


def _plan(sql: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the index is PostgreSQL's")
@pytest.mark.parametrize("renew", [False, True])
def test_est_finds_a_repeated_csr_by_its_index_also_in_a_generic_plan(
    hierarchy, template, employee, renew
):
    """A device account's many requests: the lookup reads one index entry, with the values
    in the plan (custom) and without them (a prepared statement's generic plan)."""
    signing = template("smime-signing")
    wanted = der_csr()
    CertificateRequest.objects.bulk_create(
        [
            CertificateRequest(
                requester=employee,
                template=signing,
                key_source="csr",
                csr=der_csr(),
                channel=Channel.EST if n % 2 else Channel.API,
                idempotency_key=f"k{n}",
            )
            for n in range(60)
        ]
        + [
            CertificateRequest(
                requester=employee,
                template=signing,
                key_source="csr",
                csr=wanted,
                channel=Channel.EST,
                idempotency_key="wanted",
            )
        ]  # fmt: skip
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE enrollment_certificaterequest")
        cursor.execute("SET LOCAL enable_seqscan = off")  # a test's table is tiny
    queryset = est._waiting_queryset(employee, wanted, renew=renew)
    sql, params = queryset.query.sql_with_params()

    custom = _plan("EXPLAIN " + connection.ops.compose_sql(sql, params))
    numbered = sql
    for n in range(1, len(params) + 1):
        numbered = numbered.replace("%s", f"${n}", 1)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute(f"PREPARE est_repeat AS {numbered}")
    arguments = connection.ops.compose_sql(", ".join(["%s"] * len(params)), params)
    generic = _plan(f"EXPLAIN EXECUTE est_repeat({arguments})")
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE est_repeat")

    assert "request_est_csr_idx" in custom, custom
    assert "request_est_csr_idx" in generic, generic
    assert "$" in generic  # it was a generic plan indeed
    found = queryset.first()
    assert (found is not None) == (not renew)


def test_the_repeat_of_a_waiting_csr_still_makes_no_second_request(
    hierarchy, approval, employee, officer, est_on, django_assert_max_num_queries
):
    approval("smime-signing")
    der = der_csr()
    assert est_post("simpleenroll", der).status_code == 202

    with django_assert_max_num_queries(30):
        again = est_post("simpleenroll", der)

    assert again.status_code == 202
    assert CertificateRequest.objects.get().channel == "est"
    assert again["Retry-After"] == str(est.RETRY_AFTER_SECONDS)


# --- migration 0032 -------------------------------------------------------------------------

BEFORE = [("enrollment", "0031_imported_ca")]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_migration_backfills_what_the_stored_columns_tell(employee, officer):
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    Request = old.get_model("enrollment", "CertificateRequest")
    Template = old.get_model("enrollment", "CertificateTemplate")
    Rollout = old.get_model("enrollment", "Rollout")
    Invitation = old.get_model("enrollment", "RolloutInvitation")
    template = Template.objects.get(slug="smime-signing")

    def made(key: str = "", **extra: Any) -> int:
        return Request.objects.create(
            requester_id=employee.pk, template=template, key_source="server",
            key_algorithm="ec-p256", idempotency_key=key, **extra,
        ).pk  # fmt: skip

    by_est = made("est:" + "a" * 60)
    by_api_key = made("client-key-1")
    no_key = made()
    now = timezone.now()
    rollout = Rollout.objects.create(template=template, key_algorithm="ec-p256",
                                     created_by_id=officer.pk, expires_at=now)  # fmt: skip
    invited = made(state="approved")
    Invitation.objects.create(rollout=rollout, request_id=invited)

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    channels = dict(CertificateRequest.objects.values_list("pk", "channel"))
    assert channels == {by_est: "est", by_api_key: "api", no_key: "unknown", invited: "rollout"}
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'request_est_csr_idx'"
            )
            (definition,) = cursor.fetchone()
        assert "sha256(csr)" in definition
        assert "'est'" in definition


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_rows_the_old_code_writes_during_the_deployment_get_unknown(employee):
    """The column's database default: an INSERT that does not name it still succeeds."""
    template_id = services.hotsql.template_by_slug("smime-signing").pk
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO enrollment_certificaterequest (requester_id, template_id, state, "
            "key_source, key_algorithm, requested_subject, requested_emails, "
            "decision_reason, error_code, error, idempotency_key, created_at, updated_at) "
            "VALUES (%s, %s, 'pending', 'server', 'ec-p256', '', '[]', '', '', '', '', "
            "%s, %s)",
            [employee.pk, template_id, timezone.now(), timezone.now()],
        )

    assert CertificateRequest.objects.get().channel == "unknown"


class Interrupted(Exception):
    """A migrate stopped from outside (Ctrl-C, a deploy's time limit, a lost connection)."""


def _index_state() -> tuple[str, bool] | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'request_est_csr_idx'"
        )
        return cursor.fetchone()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_an_interrupted_backfill_and_index_build_complete_when_migrate_runs_again(
    employee, monkeypatch
):
    """The README's "can be run again if interrupted": a run stopped in the middle of the
    backfill (after a committed batch) and an index build that failed half-way (leaving an
    INVALID index of that name, as an interrupted CREATE INDEX CONCURRENTLY does) are
    finished by a second migrate. With the column added in the same non-atomic migration,
    the second run failed at once: "column channel already exists"."""
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    Request = old.get_model("enrollment", "CertificateRequest")
    template = old.get_model("enrollment", "CertificateTemplate").objects.get(slug="smime-signing")
    made = [
        Request.objects.create(
            requester_id=employee.pk, template=template, key_source="server",
            key_algorithm="ec-p256", idempotency_key=f"est:{n}",
        ).pk
        for n in range(3)
    ]  # fmt: skip
    backfill = importlib.import_module(
        "enrollment.migrations.0033_certificaterequest_channel_backfill"
    )
    monkeypatch.setattr(backfill, "BATCH", 1)
    real_batch = backfill.backfill_batch
    batches: list[int] = []

    def stopped_at_the_second_batch(requests: Any, invitations: Any, low: int, high: int) -> None:
        batches.append(low)
        real_batch(requests, invitations, low, high)
        if len(batches) == 2:
            raise Interrupted  # after the UPDATEs, before the batch's commit

    monkeypatch.setattr(backfill, "backfill_batch", stopped_at_the_second_batch)
    executor = MigrationExecutor(connection)
    with pytest.raises(Interrupted):
        executor.migrate(executor.loader.graph.leaf_nodes())

    channels = dict(CertificateRequest.objects.values_list("pk", "channel"))
    assert channels == {made[0]: "est", made[1]: "unknown", made[2]: "unknown"}
    if connection.vendor == "postgresql":
        assert _index_state() is None
        # A build that fails half-way: a unique index over one person's three requests.
        with pytest.raises(IntegrityError), connection.cursor() as cursor:
            cursor.execute(
                "CREATE UNIQUE INDEX CONCURRENTLY request_est_csr_idx "
                "ON enrollment_certificaterequest (requester_id)"
            )
        assert _index_state() == (mock.ANY, False)  # left INVALID

    monkeypatch.setattr(backfill, "backfill_batch", real_batch)
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    channels = dict(CertificateRequest.objects.values_list("pk", "channel"))
    assert channels == dict.fromkeys(made, "est")
    done = MigrationExecutor(connection)  # reads what is recorded as applied afresh
    assert done.migration_plan(done.loader.graph.leaf_nodes()) == []
    if connection.vendor == "postgresql":
        definition, valid = _index_state()
        assert valid
        assert "(requester_id, sha256(csr)) WHERE" in definition
