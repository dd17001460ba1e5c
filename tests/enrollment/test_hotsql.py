"""The enrolment path's hand-written statements agree with the ORM they stand in for.

Run on SQLite by default and on PostgreSQL in CI (DATABASE_URL), so both dialects of each
statement are checked against what the ORM itself reads and writes.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from knox.models import AuthToken

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import SynchronousOnlyOperation
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction
from django.db.transaction import TransactionManagementError
from django.utils import timezone
from django.utils.translation import gettext_lazy

from enrollment import hotsql, keystore, services
from enrollment.models import (
    ApiToken,
    AuditChainHead,
    AuditEvent,
    Certificate,
    CertificateAuthority,
    CertificateRequest,
    CertificateTemplate,
    MintedWith,
)
from enrollment.permissions import may_use_template
from enrollment.x509.keys import KeyAlgorithm
from tests.enrollment.tools import issue
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def field_values(instance) -> dict:
    return {f.attname: getattr(instance, f.attname) for f in instance._meta.concrete_fields}


def orm_counts(requester, template, *, excluding=None) -> tuple[int, int, int]:
    since = timezone.now() - timedelta(hours=1)
    mine = CertificateRequest.objects.filter(requester=requester)
    valid = Certificate.objects.held().filter(owner=requester, template=template)
    if excluding is not None:
        valid = valid.exclude(pk=excluding.pk)
    return (
        mine.filter(created_at__gte=since).count(),
        # A delegate's requests for a shared mailbox count against the mailbox's cap.
        mine.filter(
            template=template, state__in=["pending", "approved"], mailbox__isnull=True
        ).count(),
        valid.count(),
    )


def hot_counts(requester, template, *, excluding=None) -> tuple[int, int, int]:
    now = timezone.now()
    counts = hotsql.enrolment_counts(
        requester_id=requester.pk,
        template_id=template.pk,
        since=now - timedelta(hours=1),
        now=now,
        excluding_certificate_id=excluding.pk if excluding is not None else None,
    )
    return counts.recent_requests, counts.open_requests, counts.valid_certificates


def test_the_limit_counts_match_the_orm(hierarchy, template, employee, colleague, ec_p256_key):
    signing, dual_use = template("smime-signing"), template("smime-dual-use")
    now = timezone.now()
    kept = issue(employee, signing, ec_p256_key)
    revoked = issue(employee, signing, ec_p256_key)
    services.certificate_revoke(certificate=revoked, reason="superseded", actor=employee)
    expired = issue(employee, signing, ec_p256_key)
    Certificate.objects.filter(pk=expired.pk).update(not_after=now - timedelta(seconds=1))
    future = issue(employee, signing, ec_p256_key)
    Certificate.objects.filter(pk=future.pk).update(not_before=now + timedelta(hours=1))
    issue(employee, dual_use, ec_p256_key)
    issue(colleague, signing, ec_p256_key)
    for state, age in [("pending", 0), ("approved", 0), ("rejected", 0), ("pending", 2)]:
        made = CertificateRequest.objects.create(
            requester=employee,
            template=signing,
            state=state,
            key_algorithm="ec-p256",
            key_source="server",
        )
        CertificateRequest.objects.filter(pk=made.pk).update(created_at=now - timedelta(hours=age))
    CertificateRequest.objects.create(
        requester=employee,
        template=dual_use,
        state="pending",
        key_algorithm="ec-p256",
        key_source="server",
    )

    # The certificate dated ahead counts: it is held (Certificate.objects.held()).
    assert hot_counts(employee, signing) == orm_counts(employee, signing) == (4, 3, 2)
    assert hot_counts(employee, signing, excluding=kept) == orm_counts(
        employee, signing, excluding=kept
    )
    assert hot_counts(employee, dual_use) == orm_counts(employee, dual_use)
    assert hot_counts(colleague, signing) == orm_counts(colleague, signing) == (0, 0, 1)


def test_the_default_issuing_ca_is_the_one_marked_default(hierarchy):
    orm = CertificateAuthority.objects.filter(is_default=True).first()
    hot = hotsql.default_issuing_ca()

    assert field_values(hot) == field_values(orm)
    assert hot.certificate == hierarchy.issuing.certificate
    assert hot.crl_failed_at is None

    CertificateAuthority.objects.filter(pk=hierarchy.issuing.pk).update(is_default=False)
    assert hotsql.default_issuing_ca() is None
    assert CertificateAuthority.objects.filter(is_default=True).first() is None


def test_a_second_issuing_ca_never_becomes_the_default_by_its_name(hierarchy, settings):
    """Before the flag, the first online issuing CA by name was the default: a successor
    named "A..." would have taken every template over the moment it was created."""
    CertificateAuthority.objects.create(
        name="A Successor CA",
        slug="a-successor",
        parent=hierarchy.root,
        key_reference="a-successor.key.pem",
        crl_url="http://pki.example.com/pki/a-successor.crl",
        ca_issuers_url="http://pki.example.com/pki/a-successor.crt",
        der=b"0",
        fingerprint_sha256="ab" * 32,
        subject="CN=A Successor CA",
        not_before=hierarchy.issuing.not_before,
        not_after=hierarchy.issuing.not_after,
    )

    assert hotsql.default_issuing_ca().pk == hierarchy.issuing.pk
    assert hotsql.claim_key("cc" * 32, default_ca=True)[1].pk == hierarchy.issuing.pk


def test_the_key_claim_reads_the_same_default_ca_and_refuses_nothing_itself(hierarchy):
    """claim_key(default_ca=True): one statement on PostgreSQL, the CA as default_issuing_ca."""
    from enrollment.models import KeyIdentity

    compromised, ca = hotsql.claim_key("aa" * 32, default_ca=True)

    assert compromised is False
    assert field_values(ca) == field_values(hotsql.default_issuing_ca())
    assert KeyIdentity.objects.filter(spki_sha256="aa" * 32, compromised=False).exists()

    KeyIdentity.objects.filter(spki_sha256="aa" * 32).update(compromised=True)
    CertificateAuthority.objects.filter(pk=hierarchy.issuing.pk).update(is_default=False)
    assert hotsql.claim_key("aa" * 32, default_ca=True) == (True, None)
    assert hotsql.claim_key("bb" * 32) == (False, None)
    assert KeyIdentity.objects.count() == 2


def test_a_ca_read_by_hand_converts_its_values_as_the_orm_does(hierarchy):
    failed = timezone.now().replace(microsecond=123456)
    CertificateAuthority.objects.filter(pk=hierarchy.issuing.pk).update(crl_failed_at=failed)

    hot = hotsql.default_issuing_ca()

    assert hot.crl_failed_at == failed  # aware, in UTC, on SQLite too
    assert hot.is_online is True
    assert field_values(hot) == field_values(CertificateAuthority.objects.get(pk=hot.pk))


def test_a_template_by_slug_is_the_orms_template(db):
    for slug in CertificateTemplate.objects.values_list("slug", flat=True):
        assert field_values(hotsql.template_by_slug(slug)) == field_values(
            CertificateTemplate.objects.get(slug=slug)
        )
    assert hotsql.template_by_slug("no-such-template") is None


def test_who_may_use_a_template_matches_its_groups(template, employee, colleague):
    signing = template("smime-signing")
    assert hotsql.template_open_to(signing.pk, employee.pk)  # no groups: everyone

    finance, legal = Group.objects.create(name="Finance"), Group.objects.create(name="Legal")
    signing.allowed_groups.set([finance, legal])
    employee.groups.add(legal)
    colleague.groups.add(Group.objects.create(name="Sales"))

    assert hotsql.template_open_to(signing.pk, employee.pk)
    assert not hotsql.template_open_to(signing.pk, colleague.pk)
    now = timezone.now()
    for user in (employee, colleague):  # asked again with the limits, in one statement
        counts = hotsql.enrolment_counts(
            requester_id=user.pk, template_id=signing.pk, since=now, now=now
        )
        assert counts.open_to_requester == hotsql.template_open_to(signing.pk, user.pk)
    prefetched = CertificateTemplate.objects.prefetch_related("allowed_groups").get(pk=signing.pk)
    for user in (employee, colleague):
        assert may_use_template(user, signing) == may_use_template(user, prefetched)


def test_tokens_with_their_user_match_select_related(employee, colleague):
    token, _ = AuthToken.objects.create(user=employee)
    AuthToken.objects.create(user=colleague)

    [hot] = hotsql.tokens_with_user(token.token_key)
    orm = AuthToken.objects.select_related("user").get(token_key=token.token_key)

    assert field_values(hot) == field_values(orm)
    assert field_values(hot.user) == field_values(orm.user)
    assert hotsql.tokens_with_user("0" * len(token.token_key)) == []


def test_tokens_come_with_how_they_were_minted(employee):
    """What the role checks read (enrollment.permissions): the token's ApiToken row."""
    token, _ = AuthToken.objects.create(user=employee)
    ApiToken.objects.filter(auth_token=token).update(
        second_factor=True, second_factor_kind="attested_key", second_factor_key_model="ab-cd"
    )
    [hot] = hotsql.tokens_with_user(token.token_key)
    assert hot._pkiportal_minted_with == ApiToken.objects.get(auth_token=token).minted_with
    assert hot._pkiportal_minted_with == MintedWith(True, "attested_key", "ab-cd")

    ApiToken.objects.filter(auth_token=token).delete()  # a token from before the rows
    [rowless] = hotsql.tokens_with_user(token.token_key)
    assert rowless._pkiportal_minted_with == MintedWith()


def test_insert_writes_what_the_orm_reads_back(employee, template):
    made = [
        CertificateRequest(
            requester=employee,
            template=template("smime-signing"),
            state="approved",
            key_source="csr",
            csr=b"\x30\x03\x02\x01\x00",
            requested_emails=["a@example.com", "é@example.com"],
            requested_subject="CN=Somebody",
            source_address="2001:db8::1",
        )
        for _ in range(2)
    ]

    hotsql.insert(*made)

    assert made[0].pk is not None
    assert made[1].pk > made[0].pk
    for instance in made:
        stored = CertificateRequest.objects.get(pk=instance.pk)
        assert field_values(stored) == field_values(instance) | {"csr": stored.csr}
        assert bytes(stored.csr) == b"\x30\x03\x02\x01\x00"
        assert stored.created_at is not None
        assert not instance._state.adding


def an_unstored_copy(certificate: Certificate, serial: str) -> Certificate:
    """Another row of the same content, but for its serial and fingerprints (unique)."""
    copy = Certificate(
        **{
            f.attname: getattr(certificate, f.attname)
            for f in Certificate._meta.concrete_fields
            if not f.primary_key
        }
    )
    copy.serial = serial
    copy.fingerprint_sha256 = serial.rjust(64, "0")
    copy.fingerprint_sha1 = serial.rjust(40, "0")
    return copy


def test_a_certificate_and_its_request_are_written_together_as_the_orm_reads_them(
    hierarchy, employee, template, ec_p256_key
):
    stored = issue(employee, template("smime-signing"), ec_p256_key)
    certificate = an_unstored_copy(stored, "1abc")
    request = CertificateRequest(
        requester=employee,
        template=certificate.template,
        state="issued",
        key_source="csr",
        csr=b"\x30\x03\x02\x01\x00",
        requested_emails=["é@example.com"],
        source_address="192.0.2.7",
        channel="api",
    )

    hotsql.insert_issued(certificate, request)

    assert certificate.pk is not None
    assert request.pk is not None
    assert request.certificate_id == certificate.pk
    assert not certificate._state.adding
    assert not request._state.adding
    read = CertificateRequest.objects.select_related("certificate").get(pk=request.pk)
    assert read.certificate == certificate
    assert field_values(read) == field_values(request) | {"csr": read.csr}
    assert field_values(read.certificate) == field_values(certificate) | {
        "der": read.certificate.der
    }
    assert bytes(read.certificate.der) == bytes(stored.der)


def test_a_request_is_not_written_when_its_certificate_is_refused(
    hierarchy, employee, template, ec_p256_key
):
    stored = issue(employee, template("smime-signing"), ec_p256_key)
    clash = an_unstored_copy(stored, stored.serial)  # (CA, serial) is unique
    requests = CertificateRequest.objects.count()

    with pytest.raises(IntegrityError), transaction.atomic():
        hotsql.insert_issued(
            clash,
            CertificateRequest(
                requester=employee, template=stored.template, state="issued", key_source="csr"
            ),
        )

    assert CertificateRequest.objects.count() == requests
    assert Certificate.objects.count() == 1


INSERTED = (Certificate, CertificateRequest, AuditEvent)
SAMPLES = {
    str: st.text(max_size=40) | st.sampled_from(["", "0a1b", "CN=x"]),
    int: st.integers(min_value=-(2**63), max_value=2**63 - 1),
    bool: st.booleans(),
}


def passed_through_fields():
    return [
        (model, field, kind)
        for model in INSERTED
        for field, _attname, kind, _nullable in hotsql._preparers(model)
        if kind is not None
    ]


def test_the_insert_asks_every_field_that_converts_its_values():
    by_name = {(m.__name__, f.name): kind for m, f, kind in passed_through_fields()}

    # Plain text, numbers, flags and foreign keys are read as they are...
    assert by_name[("Certificate", "serial")] is str
    assert by_name[("Certificate", "owner")] is int
    assert by_name[("CertificateRequest", "state")] is str
    # ...dates, JSON, bytes and addresses always go through the field.
    for model, name in [
        ("Certificate", "not_after"),
        ("Certificate", "emails"),
        ("Certificate", "der"),
        ("CertificateRequest", "created_at"),
        ("CertificateRequest", "source_address"),
        ("AuditEvent", "detail"),
    ]:
        assert (model, name) not in by_name


@given(data=st.data())
@settings(max_examples=40, deadline=None)
def test_a_value_read_as_it_is_is_what_the_field_would_have_given(data):
    db = connections[DEFAULT_DB_ALIAS]
    for _model, field, kind in passed_through_fields():
        value = data.draw(SAMPLES[kind], label=field.name)
        prepared = field.get_db_prep_save(value, db)
        assert prepared == value, field
        assert type(prepared) is kind, field
        if field.null:
            assert field.get_db_prep_save(None, db) is None


def test_a_value_of_another_type_goes_through_the_field(employee, template):
    request = CertificateRequest(
        requester=employee,
        template=template("smime-signing"),
        state=CertificateRequest.State.APPROVED,  # a str subclass: asked, not read
        key_source="csr",
        requested_subject=gettext_lazy("CN=lazy"),  # a lazy string: made a str
    )
    db = connections[DEFAULT_DB_ALIAS]
    fields = hotsql._fields(CertificateRequest)

    prepared = hotsql._values(db, CertificateRequest, (request,))
    values = dict(zip((f.attname for f in fields), prepared, strict=True))

    assert values["requested_subject"] == "CN=lazy"
    assert type(values["requested_subject"]) is str
    assert values["state"] == "approved"
    # Its plain text, not the enum: psycopg has no dumper for the member's class and
    # would search its MRO, raising and catching a KeyError per class, for every row.
    assert type(values["state"]) is str
    assert values["requester_id"] == employee.pk


def generic_plan_indexes(sql: str, params: list) -> set[str]:
    """The indexes PostgreSQL's generic plan of a statement reads (what a prepared
    statement runs after its first five executions)."""
    numbered = iter(range(1, len(params) + 1))
    prepared = re.sub(r"%s", lambda _match: f"${next(numbered)}", sql)
    literals = ", ".join(
        "NULL" if value is None else "'" + str(value).replace("'", "''") + "'" for value in params
    )
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute(f"PREPARE limit_counts AS {prepared}")
        try:
            cursor.execute(f"EXPLAIN (FORMAT JSON) EXECUTE limit_counts({literals})")
            plan = cursor.fetchone()[0]
        finally:
            cursor.execute("DEALLOCATE limit_counts")
    if isinstance(plan, str):
        plan = json.loads(plan)
    found, nodes = set(), [plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        if "Index Name" in node:
            found.add(node["Index Name"])
        assert node["Node Type"] != "Seq Scan" or node["Relation Name"].endswith("groups"), node
        nodes.extend(node.get("Plans", []))
    return found


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the plan is PostgreSQL's")
def test_the_limit_counts_read_only_the_persons_rows(hierarchy, template, employee, colleague):
    """Without fresh statistics PostgreSQL once ANDed the owner's index with the template's,
    whose scan grows with every certificate of the template: 4 ms per enrolment at 5,000."""
    signing = template("smime-signing")
    now = timezone.now()
    Certificate.objects.bulk_create(
        Certificate(
            ca=hierarchy.issuing,
            owner=colleague,
            template=signing,
            purpose="signing",
            common_name="Colleague",
            email="colleague@example.com",
            emails=["colleague@example.com"],
            fingerprint_sha1="0" * 40,
            key_algorithm="EC P-256",
            der=b"\x30\x00",
            serial=f"{i:040x}",
            fingerprint_sha256=f"{i:064x}",
            subject="CN=Colleague",
            not_before=now - timedelta(days=1),
            not_after=now + timedelta(days=365),
        )
        for i in range(1, 2001)
    )
    # Requests too: on an empty table whose statistics say so (autovacuum analysed it
    # after an earlier test emptied it), a sequential scan is the right plan, and the
    # question is which index a real table's count takes.
    CertificateRequest.objects.bulk_create(
        CertificateRequest(
            requester=colleague,
            template=signing,
            state=CertificateRequest.State.REJECTED,
            key_source=CertificateRequest.KeySource.CSR,
            csr=b"\x30\x00",
        )
        for _ in range(2000)
    )
    counts = hotsql._counts_sql()
    params = [employee.pk, now, employee.pk, signing.pk, "pending", "approved", employee.pk]
    params += [signing.pk, "valid", now, 0, signing.pk, signing.pk, employee.pk]
    params += [employee.email, True]  # an active shared mailbox with the address?
    params += [employee.email, True, employee.pk]  # another active account with it?
    # A directory's worth of accounts: the address is looked up, not scanned for.
    get_user_model().objects.bulk_create(
        get_user_model()(username=f"person{i}", email=f"person{i}@example.com") for i in range(2000)
    )

    indexes = generic_plan_indexes(counts, params)

    assert "cert_owner_template_idx" in indexes
    assert "request_requester_template_idx" in indexes
    assert "user_email_idx" in indexes
    template_only = ("enrollment_certificate_template_id", "enrollment_certificaterequest_template")
    assert not [name for name in indexes if name.startswith(template_only)], indexes


def test_the_chain_head_is_created_by_the_first_event(db):
    assert not AuditChainHead.objects.exists()

    assert hotsql.audit_head_lock() == ""
    hotsql.audit_head_move("ab" * 32, 7)

    head = AuditChainHead.objects.get(pk=1)
    assert (head.last_hash, head.last_event_id) == ("ab" * 32, 7)
    assert hotsql.audit_head_lock() == "ab" * 32
    assert AuditChainHead.objects.count() == 1
    assert not AuditEvent.objects.exists()


def test_appending_events_sets_their_keys_in_order_and_moves_the_head(db):
    """audit_append: one statement on PostgreSQL (insert, then the head's update)."""
    hotsql.audit_head_lock()
    events = [
        AuditEvent(action=f"test.{n}", actor_name="system", hash=f"{n:064x}") for n in range(3)
    ]

    hotsql.audit_append(events, "ef" * 32)

    stored = list(AuditEvent.objects.order_by("id").values_list("id", "action"))
    assert stored == [(event.pk, event.action) for event in events]
    assert all(not event._state.adding for event in events)
    head = AuditChainHead.objects.get(pk=1)
    assert (head.last_hash, head.last_event_id) == ("ef" * 32, events[-1].pk)


def test_statements_fail_as_through_djangos_cursor(db):
    """The kept psycopg cursor (PostgreSQL, queries not logged) raises django.db errors and
    refuses to run in a transaction that must roll back, as Django's cursor does."""
    from enrollment.models import KeyIdentity

    assert not connection.queries_logged  # so PostgreSQL takes the kept cursor
    hotsql.insert(KeyIdentity(spki_sha256="aa" * 32))

    with pytest.raises(IntegrityError), transaction.atomic():
        hotsql.insert(KeyIdentity(spki_sha256="aa" * 32))

    with transaction.atomic():
        with pytest.raises(IntegrityError), transaction.atomic(savepoint=False):
            hotsql.insert(KeyIdentity(spki_sha256="aa" * 32))
        with pytest.raises(TransactionManagementError):
            hotsql.claim_key("bb" * 32)
    assert hotsql.claim_key("aa" * 32) == (False, None)  # the next transaction is served


def test_statements_refuse_to_run_in_an_event_loop(db):
    """As Django's own cursor does (SynchronousOnlyOperation), though the kept cursor skips
    ensure_connection() when connected: the connection is not safe across a loop's tasks."""
    assert hotsql.template_by_slug("smime-signing") is not None  # connected, sync: served
    db = connections[DEFAULT_DB_ALIAS]
    assert db.connection is not None

    async def from_a_coroutine() -> None:
        with hotsql._cursor(db) as cursor:  # this thread's connection, inside a loop
            cursor.execute("SELECT 1")

    with pytest.raises(SynchronousOnlyOperation):
        asyncio.run(from_a_coroutine())


def test_an_account_with_many_groups_is_counted_once(template):
    user = UserFactory()
    signing = template("smime-signing")
    groups = [Group.objects.create(name=f"g{n}") for n in range(5)]
    signing.allowed_groups.set(groups)
    user.groups.set(groups)

    assert hotsql.template_open_to(signing.pk, user.pk) is True


def test_a_ca_certificate_is_parsed_once_per_process_and_per_fingerprint(hierarchy):
    first = CertificateAuthority.objects.get(pk=hierarchy.issuing.pk).certificate
    again = hotsql.default_issuing_ca().certificate

    assert again is first  # the issuer's extensions and key are parsed once
    assert first == hierarchy.issuing.certificate
    assert hierarchy.root.certificate is not first
    renamed = CertificateAuthority.objects.get(pk=hierarchy.issuing.pk)
    renamed.fingerprint_sha256 = "0" * 64  # another certificate under the same row
    renamed.der = hierarchy.root.der
    assert renamed.certificate == hierarchy.root.certificate


def test_the_responders_authorities_are_the_orms_in_id_order(hierarchy):
    hot = hotsql.authorities()
    orm = list(CertificateAuthority.objects.order_by("pk"))

    assert [field_values(ca) for ca in hot] == [field_values(ca) for ca in orm]
    assert [ca.certificate for ca in hot] == [
        hierarchy.root.certificate,
        hierarchy.issuing.certificate,
    ]


def test_a_certificate_status_read_by_hand_is_the_orms(hierarchy, template, employee, ec_p256_key):
    """Valid, revoked (the time aware, in UTC, on SQLite too) and missing serials."""
    fields = ("status", "revoked_at", "revocation_reason")
    valid = issue(employee, template("smime-signing"), ec_p256_key)
    revoked = issue(employee, template("smime-signing"), ec_p256_key)
    services.certificate_revoke(certificate=revoked, reason="superseded")

    for certificate in (valid, revoked):
        orm = Certificate.objects.filter(ca=hierarchy.issuing, serial=certificate.serial)
        assert hotsql.certificate_status(hierarchy.issuing.pk, certificate.serial) == (
            orm.values_list(*fields).get()
        )
    status, revoked_at, reason = hotsql.certificate_status(hierarchy.issuing.pk, revoked.serial)
    assert (status, reason) == ("revoked", "superseded")
    assert revoked_at.utcoffset() == timedelta(0)
    assert hotsql.certificate_status(hierarchy.issuing.pk, "abc123") is None
    assert hotsql.certificate_status(hierarchy.root.pk, valid.serial) is None  # another CA's


def test_numbered_placeholders_are_postgresqls_own_in_order():
    assert hotsql._numbered("SELECT %s, (%s)::int FROM t WHERE a = %s") == (
        "SELECT $1, ($2)::int FROM t WHERE a = $3"
    )
    for other in ("SELECT 'a%' LIKE %s", "SELECT %s %% 2"):
        with pytest.raises(ValueError, match="% sign"):
            hotsql._numbered(other)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's own placeholders")
def test_the_check_reads_what_the_locked_counts_read(
    hierarchy, template, employee, colleague, ec_p256_key
):
    signing, dual_use = template("smime-signing"), template("smime-dual-use")
    issue(employee, signing, ec_p256_key)
    issue(colleague, signing, ec_p256_key)
    # Permission read from the template's row: Alice is in a group that may use another
    # template only, so this one, limited to a group of its own, is closed to her.
    theirs, others = Group.objects.create(name="theirs"), Group.objects.create(name="others")
    employee.groups.add(others)
    dual_use.allowed_groups.add(others)
    now = timezone.now()
    common = {
        "requester_id": employee.pk,
        "since": now - timedelta(hours=1),
        "now": now,
        "address": employee.email,
    }

    def check(named):
        found = hotsql.enrolment_check(**common, template=named, spki_sha256="0" * 64)
        assert found is not None
        return found

    for limited in (False, True):
        if limited:
            signing.allowed_groups.add(theirs)
        counts = hotsql.enrolment_counts(**common, template_id=signing.pk)
        assert counts.open_to_requester is not limited
        for named in (signing.pk, signing.slug):
            found = check(named)
            assert found.counts == counts
            assert (found.template.pk, found.template.name) == (signing.pk, signing.name)
            assert found.ca is not None
            assert found.ca.pk == hierarchy.issuing.pk  # the default
            assert not found.compromised
    assert check(dual_use.slug).counts.open_to_requester  # her group's template
    first, second = check(signing.pk), check(signing.slug)
    assert second.certificate_id > first.certificate_id  # drawn, never handed out twice
    # A template that names a CA gets that CA only, never the default as well: one made
    # after the default (a join that also took the default would find that one first).
    later = services.issuing_ca_create(
        spec=services.CaSpec("Test Issuing CA G2", "issuing-g2", KeyAlgorithm.EC_P256, 1825),
        root=hierarchy.root,
        root_key=keystore.OfflineKey(hierarchy.root_key_path, hierarchy.root_passphrase),
        base_url="http://pki.example.com",
        organization_name="Example Org",
        country_name="GB",
    )
    signing.issuing_ca = later
    signing.save()
    with connection.cursor() as cursor:  # the statement itself: one row, the named CA's
        cursor.execute(hotsql._check_sql("slug"), check_params(signing.slug, common))
        rows = cursor.fetchall()
    assert len(rows) == 1
    assert check(signing.slug).ca.pk == later.pk
    assert hotsql.enrolment_check(**common, template="no-such", spki_sha256="0" * 64) is None
    assert hotsql.enrolment_check(**{**common, "requester_id": 10**9}, template=signing.pk,
                                  spki_sha256="0" * 64) is None  # fmt: skip


def check_params(named, common) -> list:
    """enrolment_check()'s parameters, to run its statement by hand."""
    params = [named]
    params += hotsql._counts_params(
        connection, template_id=None, excluding_certificate_id=None, **common
    )
    params += [common["requester_id"], "0" * 64]
    params += hotsql._serial_sequence(Certificate) + hotsql._serial_sequence(CertificateRequest)
    return [*params, True]
