"""Statements on the enrolment path, written once instead of compiled on every request.

Building and compiling an ORM query costs 0.3-0.6 ms of CPU here, against ~0.08 ms for
running the same SQL through a cursor; an enrolment ran a dozen of them, which made the
ORM the largest cost of issuing a certificate (docs/benchmarks.md). The few statements
every enrolment runs are therefore plain SQL, valid on PostgreSQL and SQLite, with table
and column names taken from the models. Each has a test showing it agrees with the ORM
definition it stands in for (tests/enrollment/test_hotsql.py): change both together.
"""

from __future__ import annotations

from asyncio import _get_running_loop
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from knox.models import AuthToken
from psycopg import RawCursor

from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, models
from django.db.backends.base.base import BaseDatabaseWrapper

from enrollment.models import (
    ApiToken,
    AuditChainHead,
    AuditEvent,
    Certificate,
    CertificateAuthority,
    CertificateRequest,
    CertificateTemplate,
    KeyIdentity,
    MintedWith,
    SharedMailbox,
)


def _db() -> BaseDatabaseWrapper:
    """The default connection itself: ``django.db.connection`` is a proxy that looks the
    connection up again on every attribute, dozens of times per enrolment."""
    return connections[DEFAULT_DB_ALIAS]


class _cursor:
    """``with _cursor(db) as cursor``: what ``db.cursor()`` gives, cheaper on PostgreSQL.

    Django's cursor wraps a new psycopg cursor for every statement: 80-100 us each here,
    against ~50 us for the same prepared statement through one psycopg cursor kept per
    connection (docs/benchmarks.md), and an enrolment runs a dozen. On PostgreSQL this
    keeps that cursor and does what Django's wrapper does around it: refuse work in a
    transaction that must roll back, and turn driver errors into ``django.db`` errors.
    Where queries are being logged (DEBUG, tests that count them) or wrapped
    (``execute_wrapper``), and on SQLite (which needs Django's ``?`` placeholders), it is
    Django's own cursor, so nothing goes unseen.
    """

    __slots__ = ("db", "django", "raw")

    def __init__(self, db: BaseDatabaseWrapper, *, raw: bool = False) -> None:
        """``raw``: ask for a psycopg RawCursor, which takes PostgreSQL's own $1, $2 ...
        placeholders (_numbered()). Once entered, ``self.raw`` says whether it was given:
        not where Django's own cursor is (SQLite, queries logged or wrapped)."""
        self.db = db
        self.django: Any = None
        self.raw = raw

    def __enter__(self) -> Any:
        db = self.db
        if db.vendor != "postgresql" or db.queries_logged or db.execute_wrappers:
            self.django = db.cursor()
            self.raw = False
            return self.django
        db.close_if_health_check_failed()
        if db.connection is None or _get_running_loop() is not None:
            # Connects, or refuses in an event loop (SynchronousOnlyOperation). Not asked
            # when connected in plain sync code: its async guard raises and catches a
            # RuntimeError to find no loop, seven times an enrolment.
            db.ensure_connection()
        db.validate_no_broken_transaction()
        connection = db.connection
        kept = "_hotsql_raw_cursor" if self.raw else "_hotsql_cursor"
        cursor = getattr(db, kept, None)
        if cursor is None or cursor.closed or cursor.connection is not connection:
            cursor = RawCursor(connection) if self.raw else connection.cursor()
            setattr(db, kept, cursor)
        db.wrap_database_errors.__enter__()
        return cursor

    def __exit__(self, *exc: Any) -> None:
        if self.django is not None:
            self.django.close()
        else:
            self.db.wrap_database_errors.__exit__(*exc)  # raises the django.db error


@cache
def _numbered(sql: str) -> str:
    """A statement's %s placeholders as PostgreSQL's $1, $2 ..., for a raw cursor.

    psycopg parses a statement for its placeholders on every execution once it is longer
    than 4 kB or has more than 50 of them (it caches the parse only below that): ~0.2 ms
    for the enrolment's one statement, which is both. A raw cursor sends it as it is.
    Only for statements written here, which hold no other % sign.
    """
    parts = sql.split("%s")
    if any("%" in part for part in parts):
        raise ValueError("a statement with a % sign other than its placeholders")
    numbered = [parts[0]]
    for n, part in enumerate(parts[1:], start=1):
        numbered += [f"${n}", part]
    return "".join(numbered)


def _table(model: type[models.Model]) -> str:
    return _db().ops.quote_name(model._meta.db_table)


def _quoted(field: Any) -> str:
    """A concrete field's column, quoted for this database."""
    column = field.column
    if not isinstance(column, str):
        raise TypeError(f"{field!r} has no column")
    return _db().ops.quote_name(column)


def _column(model: type[models.Model], name: str) -> str:
    return _quoted(model._meta.get_field(name))


@cache
def _all_columns(model: type[models.Model]) -> str:
    """Every concrete column, qualified by the table, in field order (what _instance reads)."""
    return ", ".join(f"{_table(model)}.{_quoted(f)}" for f in model._meta.concrete_fields)


@cache
def _all_columns_sql(model: type[models.Model]) -> str:
    """Every row of the model's table, as _instance() reads it."""
    return f"SELECT {_all_columns(model)} FROM {_table(model)}"


@cache
def _select_all_sql(model: type[models.Model], where: str) -> str:
    """The rows whose ``where`` field equals the parameter, as _instance() reads them."""
    return f"{_all_columns_sql(model)} WHERE {_column(model, where)} = %s"


def _when(db: BaseDatabaseWrapper, moment: datetime) -> Any:
    """A datetime as the ORM would pass it (SQLite stores text in UTC)."""
    return db.ops.adapt_datetimefield_value(moment)


# --- limits ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrolmentCounts:
    recent_requests: int  # by the requester since `since`, any template
    open_requests: int  # pending or approved for this template, not for a shared mailbox
    valid_certificates: int  # Certificate.objects.held() of this owner and template
    open_to_requester: bool  # template_open_to(): no allowed groups, or one of theirs
    # An active shared mailbox or another active account has the requester's address
    # (services.address_taken).
    address_taken: bool = False


@cache
def _lock_sql() -> str | None:
    """Lock the requester's row until the transaction ends, where the database locks rows.

    It must be its own statement: in READ COMMITTED a statement reads with the snapshot
    it started with, so counts read in the same statement as a lock that had to wait
    would still miss the rows committed by the transaction it waited for. SQLite's
    IMMEDIATE transactions (settings) serialise every writer already: None there. (The
    portal is built and tested on these two databases only; another would need its own
    lock here.)

    On PostgreSQL the lock is an update that changes nothing but the row's version
    (``xmin``): it takes the same FOR NO KEY UPDATE lock as a locking read (rows that
    merely refer to the person, audit events and tokens, are not blocked), and an
    enrolment that counted without the lock (enrolment_check) sees that someone counted
    and wrote since, and does not issue on its stale counts (issue_checked).
    """
    if _db().vendor != "postgresql":
        return None
    user = get_user_model()
    pk = _quoted(user._meta.pk)
    # In id order, as every locker of several people takes them: no deadlock.
    return (
        f"UPDATE {_table(user)} SET {pk} = {pk} WHERE {pk} IN (SELECT {pk} FROM "
        f"{_table(user)} WHERE {pk} = ANY(%s) ORDER BY {pk} FOR NO KEY UPDATE)"
    )


def lock_people(user_ids: list[int]) -> None:
    """Take the enrolment lock (_lock_sql) of these people until the transaction ends:
    whatever they are counted for (limits, roll-out eligibility) stays true to the commit."""
    lock = _lock_sql()
    if lock is None or not user_ids:
        return
    with _cursor(_db()) as cursor:
        cursor.execute(lock, [sorted(user_ids)])


@cache
def _counts_sql() -> str:
    return f"SELECT {_counts_columns()}"


@cache
def _counts_columns(template: str = "%s") -> str:
    """The counts of EnrolmentCounts, in its order (parameters: _counts_params(); with
    ``template``, an SQL expression of the template's id, without the template's id)."""
    request, certificate, user = CertificateRequest, Certificate, get_user_model()
    r = {
        name: _column(request, name)
        for name in ("requester", "template", "created_at", "state", "mailbox")
    }
    c = {
        name: _column(certificate, name)
        for name in ("id", "owner", "template", "status", "not_after")
    }
    return (
        f"(SELECT COUNT(*) FROM {_table(request)} WHERE {r['requester']} = %s "
        f"AND {r['created_at']} >= %s), "
        f"(SELECT COUNT(*) FROM {_table(request)} WHERE {r['requester']} = %s "
        f"AND {r['template']} = {template} AND {r['state']} IN (%s, %s) "
        f"AND {r['mailbox']} IS NULL), "
        f"(SELECT COUNT(*) FROM {_table(certificate)} WHERE {c['owner']} = %s "
        f"AND {c['template']} = {template} AND {c['status']} = %s "
        f"AND {c['not_after']} > %s AND {c['id']} <> %s), "
        f"({_permits_expression(template)}), "
        f"EXISTS (SELECT 1 FROM {_table(SharedMailbox)} WHERE {_column(SharedMailbox, 'email')} "
        f"= %s AND {_column(SharedMailbox, 'is_active')} = %s) "
        # On accounts.User's index of LOWER(TRIM(email)) (user_email_idx).
        f"OR EXISTS (SELECT 1 FROM {_table(user)} WHERE LOWER(TRIM({_column(user, 'email')})) "
        f"= %s AND {_column(user, 'is_active')} = %s AND {_quoted(user._meta.pk)} <> %s)"
    )


def _counts_params(
    db: BaseDatabaseWrapper,
    *,
    requester_id: int,
    template_id: int | None,
    since: datetime,
    now: datetime,
    excluding_certificate_id: int | None,
    address: str,
) -> list[Any]:
    """The parameters of _counts_columns(); with ``template_id`` None, of
    _counts_columns(an expression of the template's id)."""
    template = [] if template_id is None else [template_id]
    # .value: psycopg dumps a plain str at once, but searches an enum's MRO for a dumper.
    return [
        requester_id,
        _when(db, since),
        requester_id,
        *template,
        CertificateRequest.State.PENDING.value,
        CertificateRequest.State.APPROVED.value,
        requester_id,
        *template,
        Certificate.Status.VALID.value,
        _when(db, now),
        excluding_certificate_id or 0,  # ids start at 1
        *template,
        *template,
        requester_id,
        address,
        True,
        address,
        True,
        requester_id,
    ]


def _counts(row: tuple[Any, ...]) -> EnrolmentCounts:
    recent, open_, valid, permitted, mailbox = row
    return EnrolmentCounts(int(recent), int(open_), int(valid), bool(permitted), bool(mailbox))


def enrolment_counts(
    *,
    requester_id: int,
    template_id: int,
    since: datetime,
    now: datetime,
    excluding_certificate_id: int | None = None,
    address: str = "",
) -> EnrolmentCounts:
    """The three counts the per-person limits need, and template_open_to(): one statement,
    after one that locks the requester's row until the transaction ends (_lock_sql), so
    concurrent enrolments of one person count one after the other."""
    db = _db()
    params = _counts_params(
        db,
        requester_id=requester_id,
        template_id=template_id,
        since=since,
        now=now,
        excluding_certificate_id=excluding_certificate_id,
        address=address,
    )
    lock_people([requester_id])
    with _cursor(db) as cursor:
        cursor.execute(_counts_sql(), params)
        return _counts(cursor.fetchone())


# --- keys certified, and compromised --------------------------------------------------


@cache
def _claim_sql() -> str:
    table, key = _table(KeyIdentity), _column(KeyIdentity, "spki_sha256")
    compromised = _column(KeyIdentity, "compromised")
    return (
        f"INSERT INTO {table} ({key}, {compromised}) VALUES (%s, %s) "
        f"ON CONFLICT ({key}) DO UPDATE SET {key} = EXCLUDED.{key} RETURNING {compromised}"
    )


def claim_key(
    spki_sha256: str, *, default_ca: bool = False
) -> tuple[bool, CertificateAuthority | None]:
    """Record the key as certified here and say whether it was reported compromised; with
    ``default_ca``, also read the default issuing CA (as default_issuing_ca()).

    An upsert: it locks the key's row until the transaction ends and returns the latest
    committed flag, even one committed while it waited. A keyCompromise revocation sets
    the flag under the same lock (services._revoke_same_key), so one waits for the other.
    On PostgreSQL the CA is read in the same statement (the upsert as a data-modifying
    CTE): one round trip fewer per issuance. SQLite has no such CTE: two statements.
    """
    db = _db()
    with _cursor(db) as cursor:
        if default_ca and db.vendor == "postgresql":
            cursor.execute(_claim_with_default_ca_sql(), [spki_sha256, False, True])
            compromised, *ca_row = cursor.fetchone()
            found = _instance(db, CertificateAuthority, ca_row) if ca_row[0] is not None else None
            return bool(compromised), found
        cursor.execute(_claim_sql(), [spki_sha256, False])
        compromised = bool(cursor.fetchone()[0])
    return compromised, (default_issuing_ca() if default_ca else None)


@cache
def _claim_with_default_ca_sql() -> str:
    """PostgreSQL: the claim beside the default CA's row (all NULL when there is none)."""
    compromised = _column(KeyIdentity, "compromised")
    ca = ", ".join(f"ca.{_quoted(f)}" for f in CertificateAuthority._meta.concrete_fields)
    return (
        f"WITH claim AS ({_claim_sql()}) SELECT claim.{compromised}, {ca} "
        f"FROM claim LEFT JOIN ({_default_ca_sql()}) AS ca ON TRUE"
    )


# --- the issuing CA -------------------------------------------------------------------


@cache
def _default_ca_sql() -> str:
    """The CA marked default; one_default_issuing_ca makes it the only one (an index scan)."""
    return _select_all_sql(CertificateAuthority, "is_default")


@cache
def _reader(model: type[models.Model]) -> tuple[list[str], list[tuple[Any, list[Any]]]]:
    """The attribute names, and per column the converters the ORM applies to what the
    driver returns."""
    table = model._meta.db_table
    names, columns = [], []
    for field in model._meta.concrete_fields:
        column = field.get_col(table)
        converters = _db().ops.get_db_converters(column)
        names.append(field.attname)
        columns.append((column, converters + column.get_db_converters(_db())))
    return names, columns


def _instance(db: BaseDatabaseWrapper, model: type[models.Model], row: tuple[Any, ...]) -> Any:
    """A model instance from a row of _all_columns(model), as a queryset builds it."""
    names, columns = _reader(model)
    values: list[Any] = []
    for value, (column, converters) in zip(row, columns, strict=True):
        for converter in converters:
            value = converter(value, column, db)
        values.append(value)
    return model.from_db(db.alias, names, values)


def default_issuing_ca() -> CertificateAuthority | None:
    """``CertificateAuthority.objects.filter(is_default=True).first()``: the CA of templates
    that name none."""
    db = _db()
    with _cursor(db) as cursor:
        cursor.execute(_default_ca_sql(), [True])
        row = cursor.fetchone()
    return _instance(db, CertificateAuthority, row) if row is not None else None


# --- the OCSP responder -----------------------------------------------------------------


@cache
def _authorities_sql() -> str:
    return (
        f"{_all_columns_sql(CertificateAuthority)} ORDER BY {_column(CertificateAuthority, 'id')}"
    )


def authorities() -> list[CertificateAuthority]:
    """Every CA, DER included, as ``CertificateAuthority.objects.order_by("pk")`` gives.

    A handful of rows, read on every OCSP request: the request names its CA by hashes.
    """
    db = _db()
    with _cursor(db) as cursor:
        cursor.execute(_authorities_sql())
        rows = cursor.fetchall()
    return [_instance(db, CertificateAuthority, row) for row in rows]


_STATUS_FIELDS = ("status", "revoked_at", "revocation_reason")


@cache
def _status_sql() -> str:
    cert = Certificate
    columns = ", ".join(_column(cert, name) for name in _STATUS_FIELDS)
    return (
        f"SELECT {columns} FROM {_table(cert)} "
        f"WHERE {_column(cert, 'ca')} = %s AND {_column(cert, 'serial')} = %s"
    )


@cache
def _status_converters() -> list[tuple[Any, list[Any]]]:
    table = Certificate._meta.db_table
    converters = []
    for name in _STATUS_FIELDS:
        field = Certificate._meta.get_field(name)
        if not isinstance(field, models.Field):
            raise TypeError(f"Certificate.{name} is not a concrete field")
        column = field.get_col(table)
        converters.append(
            (column, _db().ops.get_db_converters(column) + column.get_db_converters(_db()))
        )
    return converters


def certificate_status(ca_id: int, serial: str) -> tuple[str, datetime | None, str] | None:
    """(status, revoked_at, revocation_reason) of a CA's certificate by serial, or None.

    The unique (ca, serial) index answers it: Certificate.objects.filter(ca=..., serial=...)
    .values_list(*_STATUS_FIELDS).
    """
    db = _db()
    with _cursor(db) as cursor:
        cursor.execute(_status_sql(), [ca_id, serial])
        row = cursor.fetchone()
    if row is None:
        return None
    values = []
    for value, (column, converters) in zip(row, _status_converters(), strict=True):
        for converter in converters:
            value = converter(value, column, db)
        values.append(value)
    status, revoked_at, reason = values
    return status, revoked_at, reason


# --- the audit chain head -------------------------------------------------------------


@cache
def _head_columns() -> tuple[str, str, str]:
    """The chain head's last hash, last event and key columns, quoted."""
    head = AuditChainHead
    return _column(head, "last_hash"), _column(head, "last_event_id"), _column(head, "id")


@cache
def _head_sql() -> tuple[str, str, str]:
    head = _table(AuditChainHead)
    last_hash, last_event, pk = _head_columns()
    lock = " FOR UPDATE" if _db().features.has_select_for_update else ""
    return (
        f"SELECT {last_hash} FROM {head} WHERE {pk} = %s{lock}",
        f"INSERT INTO {head} ({pk}, {last_hash}, {last_event}) VALUES (%s, %s, NULL) "
        f"ON CONFLICT DO NOTHING",
        f"UPDATE {head} SET {last_hash} = %s, {last_event} = %s WHERE {pk} = %s",
    )


def audit_head_lock(pk: int = 1) -> str:
    """Lock the chain head row (creating it the first time) and return the last hash."""
    select, insert, _update = _head_sql()
    with _cursor(_db()) as cursor:
        cursor.execute(select, [pk])
        row = cursor.fetchone()
        if row is None:  # the first event ever; two first events wait for each other here
            cursor.execute(insert, [pk, ""])
            cursor.execute(select, [pk])
            row = cursor.fetchone()
    return str(row[0])


def audit_head_move(last_hash: str, last_event_id: int, pk: int = 1) -> None:
    _select, _insert, update = _head_sql()
    with _cursor(_db()) as cursor:
        cursor.execute(update, [last_hash, last_event_id, pk])


def audit_append(events: list[AuditEvent], last_hash: str, pk: int = 1) -> None:
    """Insert chained events and move the head (locked by audit_head_lock) to the last.

    One statement on PostgreSQL, the insert as a data-modifying CTE of the head's update;
    on SQLite, insert() then audit_head_move().
    """
    db = _db()
    if db.vendor != "postgresql":
        insert(*events)
        audit_head_move(last_hash, events[-1].pk, pk)
        return
    with _cursor(db) as cursor:
        cursor.execute(
            _append_sql(len(events)), [*_values(db, AuditEvent, tuple(events)), last_hash, pk]
        )
        keys = cursor.fetchone()[0]
    for event, key in zip(events, keys, strict=True):
        _stored(db, event, key)


@cache
def _append_sql(rows: int) -> str:
    head = _table(AuditChainHead)
    last_hash, last_event, pk = _head_columns()
    event_pk = _quoted(AuditEvent._meta.pk)
    return (
        f"WITH inserted AS ({_insert_sql(AuditEvent, rows)}) "
        f"UPDATE {head} SET {last_hash} = %s, "
        f"{last_event} = (SELECT MAX({event_pk}) FROM inserted) WHERE {pk} = %s "
        f"RETURNING (SELECT ARRAY_AGG({event_pk} ORDER BY {event_pk}) FROM inserted)"
    )


# Events one statement chains at most: each is a lateral join and a UNION ALL branch of
# its own, and planning grows faster than the block: 0.39 ms for 1 event, 0.40 ms for
# 4, 1.15 ms for 8 (more than the round trip saved, where a rare size is not yet a
# prepared statement), and hundreds (a roll-out's invitations, one block) took a
# PostgreSQL backend past 20 GB. Larger blocks take the head's lock first (audit._append).
CHAINED_IN_SQL = 4


def audit_chain_append(
    events: list[AuditEvent], parts: list[tuple[bytes, bytes]], pk: int = 1
) -> bool:
    """PostgreSQL: lock the chain head, chain the events to its hash, insert them and move
    the head, in one statement; set each event's key and hashes. False, having written
    nothing, on other databases, for more than CHAINED_IN_SQL events and while the head
    row does not exist yet (the caller then takes audit_head_lock() and audit_append()).

    ``parts``: per event, audit.chain_parts(), the bytes its hash covers before and after
    its previous hash. PostgreSQL computes the same SHA-256 as audit.event_digest(). The
    head is locked before the events' keys are drawn, so the chain's order is the keys'
    order (audit_chain_breaks() walks it by key), and it is held from this statement to
    the commit only: the statement that read the hash, and the wait for its answer while
    holding the lock every audited transaction needs, are gone.
    """
    db = _db()
    if db.vendor != "postgresql" or len(events) > CHAINED_IN_SQL:
        return False
    params = [pk, *_chain_params(events, parts), pk]
    with _cursor(db) as cursor:
        cursor.execute(_chain_sql(len(events)), params)
        keys, moved, hashes = cursor.fetchone()
    if not keys and not moved:
        return False  # no head row: nothing locked, chained or written
    if len(keys or ()) != len(events) or moved != 1:
        # The insert (a CTE runs whatever the rest finds) and the head's move disagreed:
        # fail the transaction rather than let the caller chain the events a second time.
        raise DatabaseError(f"audit chain: {len(keys or ())} events written, head moved {moved}")
    for event, key, previous, digest in zip(events, keys, hashes, hashes[1:], strict=False):
        event.previous_hash, event.hash = previous, digest
        _stored(db, event, key)
    return True


@cache
def _chain_columns() -> frozenset[int]:
    """Where previous_hash and hash sit among the columns an insert writes."""
    fields = _fields(AuditEvent)
    return frozenset(fields.index(AuditEvent._meta.get_field(n)) for n in ("previous_hash", "hash"))


def _cast(field: Any) -> str:
    """The type a parameter is read as in an INSERT ... SELECT, where no column gives it:
    text for strings (the column's varchar(n) then refuses what is too long, where a cast
    to varchar(n) would cut it), the column's own type for the rest."""
    if field.get_internal_type() in ("CharField", "TextField", "SlugField", "EmailField"):
        return "text"
    return str(field.db_type(_db()))


def _chain_links(rows: int) -> str:
    """Lateral joins on the head's hash h0 making h1..h<rows>: each event's hash covers
    the one before (parameters: each event's chain_parts)."""
    return " ".join(
        f"CROSS JOIN LATERAL (SELECT encode(sha256(%s::bytea || convert_to(h{n - 1}, 'UTF8') "
        f"|| %s::bytea), 'hex') AS h{n}) AS link{n}"
        for n in range(1, rows + 1)
    )


def _event_rows(rows: int, source: str, keyed: bool = False) -> str:
    """The events' rows for an INSERT ... SELECT from ``source``: each event's columns as
    parameters but its two hashes, read from chain (with ``keyed``, its key chain.k<n>
    first)."""
    hashes = ("previous_hash", "hash")
    selects = []
    for n in range(1, rows + 1):
        chained = {"previous_hash": f"chain.h{n - 1}", "hash": f"chain.h{n}"}
        row = ", ".join(
            chained[f.name] if f.name in hashes else f"%s::{_cast(f)}" for f in _fields(AuditEvent)
        )
        selects.append(f"SELECT {f'chain.k{n}, ' if keyed else ''}{row} FROM {source}")
    return " UNION ALL ".join(selects)


@cache
def _chain_sql(rows: int) -> str:
    head = _table(AuditChainHead)
    last_hash, last_event, pk = _head_columns()
    event_pk = _quoted(AuditEvent._meta.pk)
    columns = ", ".join(_quoted(f) for f in _fields(AuditEvent))
    every_hash = ", ".join(f"h{n}" for n in range(rows + 1))
    return (
        f"WITH locked AS (SELECT {last_hash} AS h0 FROM {head} WHERE {pk} = %s FOR UPDATE), "
        f"chain AS (SELECT * FROM locked {_chain_links(rows)}), "
        f"inserted AS (INSERT INTO {_table(AuditEvent)} ({columns}) "
        f"{_event_rows(rows, 'chain')} RETURNING {event_pk}), "
        f"moved AS (UPDATE {head} SET {last_hash} = (SELECT h{rows} FROM chain), "
        f"{last_event} = (SELECT MAX({event_pk}) FROM inserted) WHERE {pk} = %s RETURNING 1) "
        f"SELECT (SELECT ARRAY_AGG({event_pk} ORDER BY {event_pk}) FROM inserted), "
        f"(SELECT COUNT(*) FROM moved), (SELECT ARRAY[{every_hash}] FROM chain)"
    )


def _chain_params(events: list[AuditEvent], parts: list[tuple[bytes, bytes]]) -> list[Any]:
    """The parameters of _chain_links(), then of _event_rows(), for these events."""
    params: list[Any] = []
    for before, after in parts:
        params += [before, after]
    skipped = _chain_columns()
    values = _values(_db(), AuditEvent, tuple(events))
    width = len(values) // len(events)
    for row in range(len(events)):
        params += [
            v for i, v in enumerate(values[row * width : (row + 1) * width]) if i not in skipped
        ]
    return params


# --- inserts --------------------------------------------------------------------------


def _fields(model: type[models.Model]) -> list[Any]:
    """The columns an insert writes: every concrete field but an auto primary key."""
    return [
        field
        for field in model._meta.concrete_fields
        if not (field.primary_key and isinstance(field, models.AutoField))
    ]


@cache
def _insert_sql(model: type[models.Model], rows: int) -> str:
    columns = ", ".join(_quoted(field) for field in _fields(model))
    row = "(" + ", ".join(["%s"] * len(_fields(model))) + ")"
    pk = _quoted(model._meta.pk)
    return (
        f"INSERT INTO {_table(model)} ({columns}) VALUES {', '.join([row] * rows)} RETURNING {pk}"
    )


# Field kinds whose get_db_prep_save() returns a value of this exact type unchanged, on
# every backend (to_python of a str is the str, int() of an int the int, ...). For them the
# insert reads the attribute and skips the call: preparing an enrolment's four rows went
# from ~95 to ~33 us (timeit), about 1.5 % of the enrolment.
_PASSED_THROUGH: tuple[tuple[tuple[type[models.Field[Any, Any]], ...], type], ...] = (
    ((models.CharField, models.TextField), str),
    ((models.IntegerField, models.AutoField), int),
    ((models.BooleanField,), bool),
)


def _passed_through(field: Any) -> type | None:
    """The value type field passes through unchanged, or None when it must be asked."""
    if type(field).pre_save is not models.Field.pre_save:  # auto_now, files, ...
        return None
    if field.db_default is not models.NOT_PROVIDED:
        return None
    if field.is_relation:  # a foreign key's value is its target's
        field = field.target_field
        if field.is_relation or type(field).get_db_prep_save is not models.Field.get_db_prep_save:
            return None
    for kinds, kind in _PASSED_THROUGH:
        if isinstance(field, kinds):
            return kind
    return None


@cache
def _preparers(model: type[models.Model]) -> list[tuple[Any, str, type | None, bool]]:
    """Per inserted column: the field, its attribute, the type it passes through, and
    whether None passes through too (only where the column is nullable)."""
    return [(f, f.attname, _passed_through(f), f.null) for f in _fields(model)]


def _values(
    db: BaseDatabaseWrapper, model: type[models.Model], instances: tuple[models.Model, ...]
) -> list[Any]:
    """Each instance's column values in the database's form, row after row."""
    values: list[Any] = []
    for instance in instances:
        for field, attname, kind, nullable in _preparers(model):
            if kind is not None:
                value = getattr(instance, attname)
                if type(value) is kind or (value is None and nullable):
                    values.append(value)
                    continue
                if kind is str and isinstance(value, str):
                    # A TextChoices member (a state, a status): its plain text, which is
                    # what the field would store. psycopg knows no dumper for the enum
                    # and walks its MRO, raising and catching a KeyError per class.
                    values.append(str.__str__(value))
                    continue
            values.append(field.get_db_prep_save(field.pre_save(instance, True), db))
    return values


def _stored(db: BaseDatabaseWrapper, instance: models.Model, key: Any) -> None:
    """Mark a new instance as the row just written with ``key``, as save() leaves it."""
    instance.pk = key
    instance._state.adding = False
    instance._state.db = db.alias


def insert(*instances: models.Model) -> None:
    """INSERT new instances of one model in one statement and set their primary keys.

    What ``save(force_insert=True)`` and ``bulk_create`` do (defaults, ``auto_now``, the
    database's form of each value) without compiling a query each time. No model signals
    are sent: the models written here have no receivers.
    """
    model = type(instances[0])
    db = _db()
    with _cursor(db) as cursor:
        cursor.execute(_insert_sql(model, len(instances)), _values(db, model, instances))
        keys = [row[0] for row in cursor.fetchall()]
    for instance, key in zip(instances, keys, strict=True):
        _stored(db, instance, key)


def insert_issued(certificate: Certificate, request: CertificateRequest) -> None:
    """INSERT a new certificate and the new request it fulfils, pointing at it; set both
    primary keys.

    One statement on PostgreSQL (the certificate's insert as a data-modifying CTE whose
    key the request's row takes), where a CSR enrolment otherwise wrote the certificate,
    waited for its key, then wrote the request: one round trip fewer per enrolment. On
    SQLite, which has no such CTE, insert() twice.
    """
    db = _db()
    if db.vendor != "postgresql":
        insert(certificate)
        request.certificate = certificate
        insert(request)
        return
    values = _values(db, CertificateRequest, (request,))
    del values[_request_certificate_index()]  # the CTE's key takes its place
    with _cursor(db) as cursor:
        cursor.execute(_issued_sql(), [*_values(db, Certificate, (certificate,)), *values])
        request_pk, certificate_pk = cursor.fetchone()
    _stored(db, certificate, certificate_pk)
    request.certificate = certificate  # its key, and the row cached as the ORM would
    _stored(db, request, request_pk)


@cache
def _request_certificate_index() -> int:
    """Where the request's certificate column sits among the columns insert() writes."""
    certificate = CertificateRequest._meta.get_field("certificate")
    return _fields(CertificateRequest).index(certificate)


@cache
def _issued_sql() -> str:
    """PostgreSQL: the certificate's insert, then the request's with the new key."""
    fields = _fields(CertificateRequest)
    issued_pk = f"(SELECT {_quoted(Certificate._meta.pk)} FROM issued)"
    row = ", ".join(
        issued_pk if index == _request_certificate_index() else "%s" for index in range(len(fields))
    )
    columns = ", ".join(_quoted(field) for field in fields)
    return (
        f"WITH issued AS ({_insert_sql(Certificate, 1)}) "
        f"INSERT INTO {_table(CertificateRequest)} ({columns}) VALUES ({row}) "
        f"RETURNING {_quoted(CertificateRequest._meta.pk)}, {issued_pk}"
    )


# --- the template, and who may use it -------------------------------------------------


def template_by_slug(slug: str) -> CertificateTemplate | None:
    """``CertificateTemplate.objects.filter(slug=slug).first()``."""
    db = _db()
    with _cursor(db) as cursor:
        cursor.execute(_select_all_sql(CertificateTemplate, "slug"), [slug])
        row = cursor.fetchone()
    return _instance(db, CertificateTemplate, row) if row is not None else None


@cache
def _permits_expression(template: str = "%s") -> str:
    """True when the template has no allowed groups or the user is in one; parameters:
    template id, template id, user id (``template``: an SQL expression of the template's
    id in their place, and the parameters but the user id)."""
    allowed = CertificateTemplate.allowed_groups.through
    memberships = get_user_model().groups.through
    a_table, m_table = _table(allowed), _table(memberships)
    a_template = _column(allowed, "certificatetemplate")
    a_group, m_group = _column(allowed, "group"), _column(memberships, "group")
    m_user = _column(memberships, "user")
    return (
        f"NOT EXISTS (SELECT 1 FROM {a_table} WHERE {a_template} = {template}) "
        f"OR EXISTS (SELECT 1 FROM {a_table} INNER JOIN {m_table} "
        f"ON {a_table}.{a_group} = {m_table}.{m_group} "
        f"WHERE {a_table}.{a_template} = {template} AND {m_table}.{m_user} = %s)"
    )


def template_open_to(template_id: int, user_id: int) -> bool:
    """The template has no allowed groups, or the user is in one of them."""
    with _cursor(_db()) as cursor:
        cursor.execute(f"SELECT {_permits_expression()}", [template_id, template_id, user_id])
        return bool(cursor.fetchone()[0])


# --- API tokens -----------------------------------------------------------------------


# How a token was minted (ApiToken), read with it: the role checks ask it on every call
# of someone holding a role (enrollment.permissions), and a join costs no round trip.
_MINTED_WITH = ("second_factor", "second_factor_kind", "second_factor_key_model")


@cache
def _tokens_sql() -> str:
    user_model = get_user_model()
    tokens, users, named = _table(AuthToken), _table(user_model), _table(ApiToken)
    minted = ", ".join(f"{named}.{_column(ApiToken, name)}" for name in _MINTED_WITH)
    return (
        f"SELECT {_all_columns(AuthToken)}, {minted}, {_all_columns(user_model)} FROM {tokens} "
        f"INNER JOIN {users} ON {tokens}.{_column(AuthToken, 'user')} "
        f"= {users}.{_quoted(user_model._meta.pk)} "
        f"LEFT JOIN {named} ON {named}.{_column(ApiToken, 'auth_token')} "
        f"= {tokens}.{_quoted(AuthToken._meta.pk)} "
        f"WHERE {tokens}.{_column(AuthToken, 'token_key')} = %s"
    )


def tokens_with_user(token_key: str) -> list[AuthToken]:
    """``AuthToken.objects.filter(token_key=...).select_related("user")``, each token with
    ``_pkiportal_minted_with``: its ApiToken row's ``minted_with`` (a token without a row,
    from before there were rows, as one minted without a second factor)."""
    user_model = get_user_model()
    split = len(AuthToken._meta.concrete_fields)
    user_starts = split + len(_MINTED_WITH)
    db = _db()
    with _cursor(db) as cursor:
        cursor.execute(_tokens_sql(), [token_key])
        rows = cursor.fetchall()
    tokens = []
    for row in rows:
        token = _instance(db, AuthToken, row[:split])
        second_factor, kind, key_model = row[split:user_starts]
        token._pkiportal_minted_with = MintedWith(
            second_factor=bool(second_factor), kind=kind or "", key_model=key_model or ""
        )
        token.user = _instance(db, user_model, row[user_starts:])
        tokens.append(token)
    return tokens


# --- a CSR enrolment without the lock's round trips (PostgreSQL) ----------------------
#
# An enrolment that locks its requester, counts, claims the key, stores the certificate
# and its request and chains their events runs seven statements in a transaction of its
# own (BEGIN and COMMIT included). These two do the same work: enrolment_check() reads
# everything the decision needs without a lock, and issue_checked() writes it all in one
# statement, provided the requester's row is the version the check read. Whoever counted
# a person's requests since (under _lock_sql, which moves that version) makes it fail,
# and the caller then takes the locked way, which counts again.


@dataclass(frozen=True)
class EnrolmentCheck:
    template: CertificateTemplate  # as the check read it
    counts: EnrolmentCounts
    version: str  # the requester's row version (xmin) these counts go with
    compromised: bool  # the key was reported compromised (KeyIdentity)
    ca: CertificateAuthority | None  # the template's CA, or the default; None: none
    certificate_id: int  # keys drawn for the rows issue_checked() writes
    request_id: int


@cache
def _check_sql(by: str) -> str:
    """The check, the template found by its ``by`` ("id" or "slug")."""
    user, key = get_user_model(), KeyIdentity
    user_pk, ca, template = _quoted(user._meta.pk), CertificateAuthority, CertificateTemplate
    ca_columns = ", ".join(f"ca.{_quoted(f)}" for f in ca._meta.concrete_fields)
    template_columns = ", ".join(f"t.{_quoted(f)}" for f in template._meta.concrete_fields)
    template_ca = f"t.{_column(template, 'issuing_ca')}"
    return (
        f"WITH t AS ({_select_all_sql(template, by)}) "
        f"SELECT {_counts_columns(f't.{_quoted(template._meta.pk)}')}, "
        f"(SELECT xmin::text FROM {_table(user)} WHERE {user_pk} = %s), "
        f"(SELECT {_column(key, 'compromised')} FROM {_table(key)} "
        f"WHERE {_column(key, 'spki_sha256')} = %s), "
        f"nextval(pg_get_serial_sequence(%s, %s)), nextval(pg_get_serial_sequence(%s, %s)), "
        f"{ca_columns}, {template_columns} FROM t LEFT JOIN ({_all_columns_sql(ca)}) AS ca "
        f"ON ca.{_column(ca, 'id')} = {template_ca} "
        f"OR ({template_ca} IS NULL AND ca.{_column(ca, 'is_default')} = %s)"
    )


def _serial_sequence(model: type[models.Model]) -> list[str]:
    return [model._meta.db_table, str(model._meta.pk.column)]


def enrolment_check(
    *,
    requester_id: int,
    template: int | str,
    since: datetime,
    now: datetime,
    address: str,
    spki_sha256: str,
) -> EnrolmentCheck | None:
    """PostgreSQL: in one statement and without a lock, the template (by its id, or by its
    slug when a str), what enrolment_counts() reads for it, the requester row's version,
    whether the key was reported compromised, the issuing CA (the template's, or the
    default) and keys for a certificate and a request. None when no template has that
    id or slug, or the requester has no row."""
    db = _db()
    params: list[Any] = [template]
    params += _counts_params(
        db,
        requester_id=requester_id,
        template_id=None,
        since=since,
        now=now,
        excluding_certificate_id=None,
        address=address,
    )
    params += [requester_id, spki_sha256]
    params += [*_serial_sequence(Certificate), *_serial_sequence(CertificateRequest), True]
    with _cursor(db) as cursor:
        cursor.execute(_check_sql("slug" if isinstance(template, str) else "id"), params)
        row = cursor.fetchone()
    if row is None:
        return None
    version, compromised, certificate_id, request_id = row[5:9]
    if version is None:
        return None
    width = len(CertificateAuthority._meta.concrete_fields)
    ca_row, template_row = row[9 : 9 + width], row[9 + width :]
    return EnrolmentCheck(
        template=_instance(db, CertificateTemplate, template_row),
        counts=_counts(row[:5]),
        version=version,
        compromised=bool(compromised),
        ca=_instance(db, CertificateAuthority, ca_row) if ca_row[0] is not None else None,
        certificate_id=int(certificate_id),
        request_id=int(request_id),
    )


@cache
def _checked_sql(rows: int) -> str:
    user, key = get_user_model(), KeyIdentity
    user_pk = _quoted(user._meta.pk)
    spki, compromised = _column(key, "spki_sha256"), _column(key, "compromised")
    head = _table(AuditChainHead)
    last_hash, last_event, head_pk = _head_columns()
    event_columns = ", ".join(_quoted(f) for f in _fields(AuditEvent))
    keys = ", ".join(f"nextval(pg_get_serial_sequence(%s, %s)) AS k{n}" for n in range(1, rows + 1))

    def keyed_insert(model: type[models.Model], source: str) -> str:
        fields = _fields(model)
        columns = ", ".join(_quoted(f) for f in [model._meta.pk, *fields])
        row = ", ".join(f"%s::{_cast(f)}" for f in [model._meta.pk, *fields])
        pk = _quoted(model._meta.pk)
        return f"INSERT INTO {_table(model)} ({columns}) SELECT {row} FROM {source} RETURNING {pk}"

    every_hash = ", ".join(f"h{n}" for n in range(rows + 1))
    every_key = ", ".join(f"k{n}" for n in range(1, rows + 1))
    written = f"(SELECT COUNT(*) AS n FROM chained) AS written WHERE written.n = {rows}"
    return (
        # The version the check read, or nothing at all is written.
        f"WITH bumped AS (UPDATE {_table(user)} SET {user_pk} = {user_pk} "
        f"WHERE {user_pk} = %s AND xmin = %s::xid RETURNING 1), "
        f"claim AS (INSERT INTO {_table(key)} ({spki}, {compromised}) SELECT %s, FALSE "
        f"FROM bumped ON CONFLICT ({spki}) DO UPDATE SET {spki} = EXCLUDED.{spki} "
        f"RETURNING {compromised} AS compromised), "
        # The head is locked before the events' keys are drawn: the chain's order is the
        # keys' order (audit_chain_append).
        f"locked AS (SELECT {last_hash} AS h0 FROM {head} WHERE {head_pk} = %s "
        f"AND EXISTS (SELECT 1 FROM claim WHERE NOT claim.compromised) FOR UPDATE), "
        f"chain AS (SELECT *, {keys} FROM locked {_chain_links(rows)}), "
        f"moved AS (UPDATE {head} SET {last_hash} = chain.h{rows}, {last_event} = chain.k{rows} "
        f"FROM chain WHERE {head}.{head_pk} = %s RETURNING 1), "
        # Each write reads the one before: where one writes nothing, none after it does.
        f"chained AS (INSERT INTO {_table(AuditEvent)} ({_quoted(AuditEvent._meta.pk)}, "
        f"{event_columns}) {_event_rows(rows, 'chain, moved', keyed=True)} "
        f"RETURNING {_quoted(AuditEvent._meta.pk)}), "
        f"issued AS ({keyed_insert(Certificate, written)}), "
        f"requested AS ({keyed_insert(CertificateRequest, 'issued')}) "
        f"SELECT (SELECT COUNT(*) FROM bumped), (SELECT compromised FROM claim), "
        f"(SELECT ARRAY[{every_key}] FROM chain), (SELECT ARRAY[{every_hash}] FROM chain), "
        f"(SELECT COUNT(*) FROM requested), "
        # Outside a transaction nothing could undo a half write after the statement: the
        # head moved but the certificate not written (a trigger, a later edit) fails it
        # whole. A cast of a text that no integer reads raises; read from the rows, not a
        # constant, so the planner does not raise it while folding.
        f"(SELECT CASE WHEN m.n > 0 AND r.n <> 1 THEN CAST('audit chain: ' || m.n || "
        f"' head moved, ' || r.n || ' requests written' AS integer) END "
        f"FROM (SELECT COUNT(*) AS n FROM moved) AS m, (SELECT COUNT(*) AS n FROM requested) AS r)"
    )


class NotIssued(Exception):
    """issue_checked() wrote no certificate: why, for the caller's fallback."""


def issue_checked(
    *,
    check: EnrolmentCheck,
    requester_id: int,
    certificate: Certificate,
    request: CertificateRequest,
    events: list[AuditEvent],
    parts: list[tuple[bytes, bytes]],
    head: int = 1,
) -> None:
    """PostgreSQL, one statement: if the requester's row is still the version ``check``
    read, move it (as _lock_sql does), claim the key (as claim_key does), chain the events
    (as audit_chain_append does) and insert the certificate and its request with the keys
    the check drew. Raises NotIssued, having written nothing but perhaps the version's
    move and the claim (which change nothing a later enrolment reads), when the version
    moved, the key was reported compromised or the chain's head is missing. A write
    that would leave the head moved without the certificate fails the statement whole
    (DatabaseError).

    ``certificate`` and ``request`` carry the drawn keys already (the events name them);
    on success they and the events are marked stored, as insert() leaves its rows.
    """
    db = _db()
    if len(events) > CHAINED_IN_SQL:
        raise NotIssued("too many events for one statement")
    chained = _chain_params(events, parts)  # the links' parameters, then the events'
    links = 2 * len(parts)
    params: list[Any] = [requester_id, check.version, certificate.spki_sha256, head]
    params += _serial_sequence(AuditEvent) * len(events)
    params += [*chained[:links], head, *chained[links:]]
    params += [check.certificate_id, *_values(db, Certificate, (certificate,))]
    params += [check.request_id, *_values(db, CertificateRequest, (request,))]
    statement = _cursor(db, raw=True)
    with statement as cursor:
        sql = _checked_sql(len(events))
        cursor.execute(_numbered(sql) if statement.raw else sql, params)
        bumped, compromised, keys, hashes, requested, _whole = cursor.fetchone()
    if not bumped:
        raise NotIssued("the requester's row changed since the check")
    if compromised:
        raise NotIssued("the key was reported compromised")
    if requested != 1:
        raise NotIssued("the audit chain's head is missing")
    for event, event_key, previous, digest in zip(events, keys, hashes, hashes[1:], strict=False):
        event.previous_hash, event.hash = previous, digest
        _stored(db, event, event_key)
    _stored(db, certificate, check.certificate_id)
    _stored(db, request, check.request_id)
