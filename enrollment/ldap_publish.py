"""Publishing issued certificates to the organisation's LDAP directory (Active Directory,
OpenLDAP), as Windows Certificate Services does: Outlook (the GAL), Exchange and
Thunderbird's LDAP address books find colleagues' encryption certificates there.

Optional: off unless PKIPORTAL_LDAP_PUBLISH_URI is set, and ldap3 is imported only then.
What a person's entry should hold is computed from the database alone (person_sync):
their certificates that are valid now, not revoked, of an encryption or dual-use template
(or every template) and for the address the account has now (as the directory's
to_encrypt_to: one for an old address stays valid for a grace period, enrollment.outdated,
but is no longer theirs to receive mail at), while their account is active. The entry is
found by a search (base + filter with the user name and/or address), and only the
difference is written.

The portal removes only values it put there itself: a userCertificate value is ours when
its exact DER is a certificate this portal issued; a userSMIMECertificate value when it is
a certs-only PKCS#7 (no signer) whose one end-entity certificate this portal issued, beside
at most our own CA certificates. Certificates of other CAs, blobs Outlook's "Publish to
GAL" wrote (signed), and bundles mixing ours with anyone else's are never touched.

Issuance, revocation and an address change saved on the account (User.save) queue one
task per holder and transaction once it commits (publish_on_commit). Each person_sync
notes what it published (LdapPublishedCertificate), so beat's reconciliation is a database
diff: it visits only people whose wanted set differs from what was last published (a lost
message, a directory that was down, expiry, a deactivated account, an address changed or
changed back by a bulk update() or SQL: nothing queues on those), plus
a bounded slice of a slow full sweep that resumes where it stopped and catches entries
edited by hand. How it went is kept on one LdapPublication row for /health/ and the RA
console.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from celery.exceptions import SoftTimeLimitExceeded

from cryptography.hazmat.primitives.serialization import pkcs7 as crypto_pkcs7

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection as db_connection
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext_lazy

from enrollment import health
from enrollment.audit import audit_record
from enrollment.models import (
    Certificate,
    CertificateAuthority,
    LdapMissingEntry,
    LdapPublication,
    LdapPublishedCertificate,
)
from enrollment.outdated import names_other_address
from enrollment.x509 import pkcs7
from pkiportal import plurals
from pkiportal.i18n import worded

if TYPE_CHECKING:
    from accounts.models import User

logger = logging.getLogger(__name__)

# Active Directory and OpenLDAP both honour it: adding a value that is there already, or
# deleting one that is gone, succeeds instead of failing the whole modify. Not critical: a
# server without it fails such a modify, and the task retries.
PERMISSIVE_MODIFY = ("1.2.840.113556.1.4.1413", False, None)
# The full sweep visits the holders of certificates that expired at most this long ago
# (and everyone with a later one); the diff finds everyone whose published certificate
# expired, however long ago.
EXPIRED_LOOKBACK = timedelta(days=30)
# How many user names without an entry /health/ shows (the count is complete).
NOT_FOUND_SHOWN = 20
SMIME_ATTRIBUTE = "usersmimecertificate"
# One reconciliation run: it stops taking people after RUN_SECONDS (the rest waits for the
# next run; the diff is remembered in the database and the sweep's cursor is saved), its
# task is ended at the soft limit, and the lease outlives the hard one. All under the
# broker's one-hour visibility timeout, so Redis never hands a running run to a second
# worker, and beat's next run finds the lease free.
RUN_SECONDS = 1200
RUN_SOFT_TIME_LIMIT = 1500
RUN_TIME_LIMIT = 1560
RUN_LEASE = timedelta(seconds=1800)
# The sweep saves its cursor this often, so a killed run loses little.
CURSOR_EVERY = 200
# pg_advisory_xact_lock's first key: person_sync holds (this, owner id) while it reads the
# database, reads the entry and writes it.
PERSON_LOCK_NAMESPACE = 0x4C444150  # "LDAP"


class DirectoryError(Exception):
    """The directory could not be reached, bound to or written; the message names no
    secret (ldap3's messages carry the DN, never the password)."""

    def __init__(self, message: str, *, connection_lost: bool = False) -> None:
        super().__init__(message)
        self.connection_lost = connection_lost


class PersonNotFound(Exception):
    """The search finds no entry, or more than one, for a person: nothing is written."""


class RunInProgress(Exception):
    """Another reconciliation run holds the lease."""


def enabled() -> bool:
    """Is publication configured? A settings read, no SQL: cheap on any path."""
    return bool(settings.PKIPORTAL_LDAP_PUBLISH_URI)


class _Send:
    """The on_commit callback of one transaction: queues one task per holder, however
    many certificates of theirs the transaction issued or revoked (a renewal issues one
    and revokes another; a compromised key revokes all its certificates)."""

    def __init__(self) -> None:
        self.owners: set[int] = set()

    def __call__(self) -> None:
        from enrollment.tasks import ldap_publish_task

        for owner_id in sorted(self.owners):
            try:
                ldap_publish_task.delay(owner_id)
            except Exception:
                logger.exception(
                    "Could not queue publishing user %s's certificates; reconciliation will.",
                    owner_id,
                )


def publish_on_commit(owner_id: int | None) -> None:
    """Queue the holder's publication for after the current transaction commits.

    Costs the issuing or revoking request at most one on_commit registration per
    transaction and, after the commit, one broker push per holder: no SQL and no directory
    traffic. Without a broker (the embedded default runs tasks inline) nothing is queued,
    so no request ever waits for the directory there: `manage.py ldap_publish` from cron
    catches up instead.
    """
    if owner_id is None or not enabled() or settings.CELERY_TASK_ALWAYS_EAGER:
        return
    if db_connection.in_atomic_block:
        # The transaction's own callback, if it is still registered (a rolled-back
        # savepoint drops it, and with it the owners it collected: right, they rolled back).
        # (savepoint ids, callback, robust); django-stubs still lists no robust.
        for entry in db_connection.run_on_commit:
            callback = entry[1]
            if isinstance(callback, _Send):
                callback.owners.add(owner_id)
                return
    send = _Send()
    send.owners.add(owner_id)
    transaction.on_commit(send, robust=True)


# --- what an entry should hold --------------------------------------------------------


def _base_name(attribute: str) -> str:
    return attribute.split(";", 1)[0].lower()


def _wanted(now: datetime) -> Any:
    """Every certificate that should be published now (all holders): certificates_to_publish
    in SQL, so the diff finds an address changed (or changed back) by any path."""
    wanted = (
        Certificate.objects.valid(now).filter(owner__is_active=True).exclude(names_other_address())
    )
    if settings.PKIPORTAL_LDAP_PUBLISH_CERTIFICATES != "all":
        wanted = wanted.encryption_capable()
    return wanted


def certificates_to_publish(user: User, now: datetime | None = None) -> list[Certificate]:
    """The certificates a person's entry should hold: none once the account is off, nor
    one naming an address the account no longer has (Outlook would encrypt to it; it is
    published again if the address changes back). `now` and the address are read here, per
    person: a run that started an hour ago must not withdraw what was issued since, nor
    miss a change."""
    if not user.is_active:
        return []
    wanted = (
        Certificate.objects.owned_by(user)
        .valid(now or timezone.now())
        .select_related("ca", "owner")  # the owner as stored now, for the address
    )
    if settings.PKIPORTAL_LDAP_PUBLISH_CERTIFICATES != "all":
        wanted = wanted.encryption_capable()
    return [c for c in wanted.order_by("not_before", "pk") if c.names_current_address]


def value_for(attribute: str, certificate: Certificate) -> bytes:
    """The attribute value that publishes a certificate: its DER for userCertificate; for
    userSMIMECertificate a certs-only PKCS#7 holding that certificate alone (RFC 2798).
    Alone, because Outlook takes the first valid certificate of a blob it did not write,
    and a PKCS#7's SET OF certificates is sorted by DER, which can put a CA first."""
    if _base_name(attribute) == SMIME_ATTRIBUTE:
        return pkcs7.certificates_to_p7b([certificate.certificate])
    return bytes(certificate.der)


def _der_children(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) elements of a DER constructed value's content; ValueError if it
    is not well-formed DER."""
    items = []
    index = 0
    while index < len(data):
        if index + 2 > len(data):
            raise ValueError("truncated")
        tag, length = data[index], data[index + 1]
        index += 2
        if length & 0x80:
            count = length & 0x7F
            if count == 0 or count > 4 or index + count > len(data):
                raise ValueError("bad length")
            length = int.from_bytes(data[index : index + count], "big")
            index += count
        if index + length > len(data):
            raise ValueError("truncated")
        items.append((tag, data[index : index + length]))
        index += length
    return items


def _has_signers(blob: bytes) -> bool:
    """Does this PKCS#7 SignedData carry signerInfos (Outlook's blobs do; ours never)?
    True when it cannot tell: an unreadable blob is nobody's to remove."""
    try:
        ((_, content_info),) = _der_children(blob)
        _oid, (_, explicit) = _der_children(content_info)
        ((_, signed_data),) = _der_children(explicit)
        parts = _der_children(signed_data)
    except ValueError:
        return True
    return not parts or parts[-1][0] != 0x31 or bool(parts[-1][1])


def _certificates_inside(attribute: str, value: bytes) -> list[bytes] | None:
    """The DER certificates a value of ours could carry; None when it cannot be ours (not
    a certificate, not a certs-only PKCS#7)."""
    if _base_name(attribute) != SMIME_ATTRIBUTE:
        return [value]
    if _has_signers(value):
        return None
    try:
        return [pkcs7.certificate_der(c) for c in crypto_pkcs7.load_der_pkcs7_certificates(value)]
    except ValueError:
        return None


def _sha256(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _ours(attribute: str, values: list[bytes]) -> dict[bytes, Certificate]:
    """Which of these values this portal wrote, and the certificate each publishes.

    A DER value: a certificate this portal issued. A PKCS#7: certs-only, with exactly one
    certificate this portal issued and otherwise only our CAs' certificates (the chain the
    first release put there), recognised by what it holds, not by its bytes, so a change
    of encoding does not orphan it. Anything else is foreign and stays."""
    inside = {value: _certificates_inside(attribute, value) for value in values}
    fingerprints = {_sha256(der) for ders in inside.values() if ders for der in ders}
    if not fingerprints:
        return {}
    issued = {
        c.fingerprint_sha256: c
        for c in Certificate.objects.filter(fingerprint_sha256__in=fingerprints).select_related(
            "ca"
        )
    }
    cas: set[str] = set()
    if _base_name(attribute) == SMIME_ATTRIBUTE and len(fingerprints) > len(issued):
        cas = {
            _sha256(bytes(der))
            for der in CertificateAuthority.objects.values_list("der", flat=True)
        }
    ours: dict[bytes, Certificate] = {}
    for value, ders in inside.items():
        if not ders:
            continue
        leaves = [issued[_sha256(der)] for der in ders if _sha256(der) in issued]
        others = [der for der in ders if _sha256(der) not in issued]
        if len(leaves) == 1 and all(_sha256(der) in cas for der in others):
            ours[value] = leaves[0]
    return ours


# --- the directory --------------------------------------------------------------------


@dataclass
class Entry:
    dn: str
    values: dict[str, list[bytes]]  # by configured attribute, as the directory holds them


def _connection_lost(exc: Exception) -> bool:
    from ldap3.core.exceptions import LDAPCommunicationError

    return isinstance(exc, LDAPCommunicationError)


class Directory:
    """One bound connection, opened by connect(); find people and change their entries.
    reopen() replaces a connection the directory (or a load balancer) dropped."""

    def __init__(self, opener: Callable[[], Any]) -> None:
        self._opener = opener
        self._connection = opener()

    def reopen(self) -> None:
        self.close()
        self._connection = self._opener()

    def close(self) -> None:
        from ldap3.core.exceptions import LDAPException

        with suppress(LDAPException, OSError):
            self._connection.unbind()

    def find(self, user: User) -> Entry:
        from ldap3 import SUBTREE
        from ldap3.core.exceptions import LDAPException, LDAPSizeLimitExceededResult
        from ldap3.utils.conv import escape_filter_chars

        if "%(email)s" in settings.PKIPORTAL_LDAP_PUBLISH_FILTER and not user.email:
            raise PersonNotFound(f"{user.get_username()} has no e-mail address to search by")
        search = settings.PKIPORTAL_LDAP_PUBLISH_FILTER % {
            "user": escape_filter_chars(user.get_username()),
            "email": escape_filter_chars(user.email or ""),
        }
        attributes = settings.PKIPORTAL_LDAP_PUBLISH_ATTRIBUTES
        try:
            self._connection.search(
                settings.PKIPORTAL_LDAP_PUBLISH_SEARCH_BASE,
                search,
                SUBTREE,
                attributes=list(attributes),
                size_limit=2,
            )
        except LDAPSizeLimitExceededResult:
            raise PersonNotFound(f"{search} matches more than one entry") from None
        except LDAPException as exc:
            raise DirectoryError(
                f"searching for {search} failed: {describe(exc)}",
                connection_lost=_connection_lost(exc),
            ) from exc
        found = [r for r in self._connection.response or [] if r.get("type") == "searchResEntry"]
        if not found:
            raise PersonNotFound(f"{search} matches no entry")
        if len(found) > 1:
            raise PersonNotFound(f"{search} matches more than one entry")
        raw = {key.lower(): value for key, value in found[0]["raw_attributes"].items()}
        values = {}
        for attribute in attributes:
            # A server may answer "userCertificate;binary" for "userCertificate" or the
            # other way round; the option changes the transfer, not the values.
            base = _base_name(attribute)
            values[attribute] = [
                bytes(v) for key, held in raw.items() if _base_name(key) == base for v in held
            ]
        return Entry(dn=found[0]["dn"], values=values)

    def change(self, dn: str, changes: dict[str, list[tuple[str, list[bytes]]]]) -> None:
        from ldap3.core.exceptions import LDAPException

        try:
            self._connection.modify(dn, changes, controls=[PERMISSIVE_MODIFY])
        except LDAPException as exc:
            raise DirectoryError(
                f"changing {dn} failed: {describe(exc)}", connection_lost=_connection_lost(exc)
            ) from exc


def describe(exc: Exception, password: str | None = None) -> str:
    """A short, secret-free description of an ldap3 error for logs and /health/. ldap3
    does not put the password in its messages; this is a second line should a server or a
    later ldap3 echo it. ``password``: the one to hide, by default the publication's."""
    text = str(exc) or type(exc).__name__
    password = settings.PKIPORTAL_LDAP_PUBLISH_BIND_PASSWORD if password is None else password
    if password:
        text = text.replace(password, "********")
    return f"{type(exc).__name__}: {text}"[:300]


def open_bound(
    *,
    uris: list[str],
    bind_dn: str,
    password: str,
    start_tls: bool,
    ca_file: str,
    timeout: int,
) -> Any:
    """An ldap3 connection bound as a service account (StartTLS first if asked), TLS
    always verified; several URIs are tried in turn, as python-ldap does with a list.
    DirectoryError, naming no secret, when it cannot connect or bind. Shared with the
    leavers' sync (enrollment.ldap_sync), which binds with AUTH_LDAP_BIND_DN."""
    from ldap3 import FIRST, NONE, Connection, Server, ServerPool, Tls
    from ldap3.core.exceptions import LDAPException

    tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=ca_file or None)
    servers = [
        Server(
            uri,
            use_ssl=uri.lower().startswith("ldaps://"),
            tls=tls,
            connect_timeout=timeout,
            get_info=NONE,
        )
        for uri in uris
    ]
    connection = Connection(
        servers[0] if len(servers) == 1 else ServerPool(servers, FIRST, active=1),
        user=bind_dn or None,
        password=password or None,
        receive_timeout=timeout,
        raise_exceptions=True,
        auto_referrals=False,
    )
    try:
        connection.open()
        if start_tls:
            connection.start_tls()
        connection.bind()
    except LDAPException as exc:
        with suppress(LDAPException, OSError):  # a failed TLS handshake leaves no socket
            connection.unbind()
        raise DirectoryError(
            f"{' '.join(uris)}: could not connect and bind: {describe(exc, password)}"
        ) from exc
    return connection


def _open() -> Any:
    """A connection bound as the publication's service account."""
    return open_bound(
        uris=[settings.PKIPORTAL_LDAP_PUBLISH_URI],
        bind_dn=settings.PKIPORTAL_LDAP_PUBLISH_BIND_DN,
        password=settings.PKIPORTAL_LDAP_PUBLISH_BIND_PASSWORD or "",
        start_tls=settings.PKIPORTAL_LDAP_PUBLISH_START_TLS,
        ca_file=settings.PKIPORTAL_LDAP_PUBLISH_CA_FILE,
        timeout=settings.PKIPORTAL_LDAP_PUBLISH_TIMEOUT,
    )


@contextmanager
def connect() -> Iterator[Directory]:
    """A bound connection to the directory, closed after."""
    directory = Directory(_open)
    try:
        yield directory
    finally:
        directory.close()


# --- making one person's entry right --------------------------------------------------


@dataclass
class PersonResult:
    username: str
    dn: str = ""
    added: list[str] = field(default_factory=list)  # serials
    removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


def _lock_person(user_id: int) -> None:
    """Serialise the person's publications until the transaction ends (PostgreSQL).

    Without it, a revocation's task could read, diff and write between this run's database
    read and its directory write, and this run would then put the revoked certificate
    back. With it, the later task waits, reads the database after this one wrote, and is
    right. SQLite (the embedded default) runs one writer at a time and no worker: nothing
    to do there."""
    if db_connection.vendor == "postgresql":
        with db_connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)",
                [PERSON_LOCK_NAMESPACE, user_id % 2**31],
            )


def _remember(user: User, published: Iterable[Certificate]) -> None:
    """Note what the person's entry now holds of ours, for the next diff."""
    keep = {c.pk for c in published}
    noted = set(LdapPublishedCertificate.objects.filter(owner=user).values_list("pk", flat=True))
    if noted == keep:  # the sweep's usual case: one read, no write
        return
    if noted - keep:
        LdapPublishedCertificate.objects.filter(pk__in=noted - keep).delete()
    now = timezone.now()
    LdapPublishedCertificate.objects.bulk_create(
        [
            LdapPublishedCertificate(certificate_id=pk, owner=user, published_at=now)
            for pk in keep - noted
        ],
        ignore_conflicts=True,
    )


def person_sync(*, user: User, directory: Directory, now: datetime | None = None) -> PersonResult:
    """Make one person's entry hold exactly their publishable certificates among the
    values this portal wrote; audited when something changed. Raises PersonNotFound
    (nothing noted) and DirectoryError (nothing noted: the next diff comes back)."""
    with transaction.atomic():
        _lock_person(user.pk)
        wanted = certificates_to_publish(user, now)
        entry = directory.find(user)
        result = PersonResult(username=user.get_username(), dn=entry.dn)
        changes: dict[str, list[tuple[str, list[bytes]]]] = {}
        added: set[str] = set()
        removed: set[str] = set()
        for attribute, held in entry.values.items():
            desired = {value_for(attribute, c): c for c in wanted}
            to_add = [value for value in desired if value not in held]
            ours = _ours(attribute, held)
            # Ours and unwanted, or an older form of a wanted one (the first release's
            # chain): replaced by what value_for writes now.
            to_remove = [value for value in ours if value not in desired]
            operations: list[tuple[str, list[bytes]]] = []
            if (to_add or to_remove) and _base_name(attribute) == SMIME_ATTRIBUTE:
                # OpenLDAP gives userSMIMECertificate no equality rule, so its values can be
                # neither deleted one by one nor added beside others: the whole set is
                # replaced, foreign values (read just now) kept as they are.
                kept = [value for value in held if value not in to_remove]
                operations.append(("MODIFY_REPLACE", kept + to_add))
            else:
                if to_remove:
                    operations.append(("MODIFY_DELETE", to_remove))
                if to_add:
                    operations.append(("MODIFY_ADD", to_add))
            if operations:
                changes[attribute] = operations
            wanted_pks = {c.pk for c in wanted}
            added.update(desired[value].serial for value in to_add)
            removed.update(
                ours[value].serial for value in to_remove if ours[value].pk not in wanted_pks
            )
        if changes:
            directory.change(entry.dn, changes)
            result.added, result.removed = sorted(added), sorted(removed)
            audit_record(
                action="ldap.publish",
                target=user,
                detail={"dn": entry.dn, "added": result.added, "removed": result.removed},
            )
            logger.info(
                "Directory entry %s: published %s, removed %s.",
                entry.dn,
                result.added or "nothing",
                result.removed or "nothing",
            )
        _remember(user, wanted)
        LdapMissingEntry.objects.filter(user=user).delete()
    return result


def _not_found(user: User, exc: PersonNotFound, now: datetime | None = None) -> bool:
    """Note a person without an entry, if they have something to publish (True then)."""
    LdapPublishedCertificate.objects.filter(owner=user).delete()  # nothing is there
    if not certificates_to_publish(user, now):
        LdapMissingEntry.objects.filter(user=user).delete()
        return False
    logger.warning("Not publishing %s's certificates: %s.", user.get_username(), exc)
    LdapMissingEntry.objects.update_or_create(
        user=user,
        defaults={"reason": str(exc)[:300]},
        create_defaults={"since": timezone.now(), "reason": str(exc)[:300]},
    )
    return True


def person_publish(*, user_id: int) -> PersonResult | None:
    """The task's body: connect, make one person's entry right, note how it went. A
    directory failure is recorded and raised (the task retries); a person without an
    entry is a warning, not a failure. None if the account is gone."""
    user = get_user_model().objects.filter(pk=user_id).first()
    if user is None:
        return None
    try:
        with connect() as directory:
            result = person_sync(user=user, directory=directory)
    except PersonNotFound as exc:
        _not_found(user, exc)
        _record()
        return PersonResult(username=user.get_username())
    except DirectoryError as exc:
        logger.warning("Publishing %s's certificates failed: %s", user.get_username(), exc)
        _record(error=str(exc))
        raise
    _record()
    return result


# --- everyone -------------------------------------------------------------------------


@dataclass
class ReconcileResult:
    people: int = 0  # distinct people visited: the diff's and the sweep's
    differing: int = 0  # of them, found by the database diff
    swept: int = 0  # of them, by the full sweep
    sweep_finished: bool = False  # the sweep reached the last person this run
    changed: int = 0
    added: int = 0
    removed: int = 0
    not_found: list[str] = field(default_factory=list)  # distinct user names
    failed: int = 0
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["not_found"] = len(self.not_found)
        return data


def settings_digest() -> str:
    """What decides where and what is published; when it changes, everything published
    before is forgotten and the next runs publish everyone again."""
    parts = [
        settings.PKIPORTAL_LDAP_PUBLISH_URI,
        settings.PKIPORTAL_LDAP_PUBLISH_SEARCH_BASE,
        settings.PKIPORTAL_LDAP_PUBLISH_FILTER,
        ",".join(sorted(a.lower() for a in settings.PKIPORTAL_LDAP_PUBLISH_ATTRIBUTES)),
        settings.PKIPORTAL_LDAP_PUBLISH_CERTIFICATES,
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def differing_people(now: datetime | None = None) -> list[int]:
    """The ids of people whose entry should hold something other than what was last
    published there, in SQL (one query each way): certificates due that were never
    published (a lost task, a directory that was down, a new setting, a person without
    an entry), and published ones no longer due (expired, revoked, account off)."""
    now = now or timezone.now()
    due = _wanted(now)
    missing = due.filter(ldap_published__isnull=True).order_by().values_list("owner_id", flat=True)
    stale_published = LdapPublishedCertificate.objects.exclude(
        pk__in=due.order_by().values("pk")
    ).values_list("owner_id", flat=True)
    return sorted(set(missing.distinct()) | set(stale_published.distinct()))


def _sweep_people(after: int, now: datetime) -> Any:
    """Everyone whose entry may hold a value of ours, from the cursor on: holders of a
    certificate that has not expired or expired within EXPIRED_LOOKBACK
    (cert_owner_template_idx, not_after)."""
    owners = (
        Certificate.objects.filter(not_after__gt=now - EXPIRED_LOOKBACK)
        .order_by()  # not the model's -not_before: it would join the DISTINCT
        .values("owner_id")
        .distinct()
    )
    return get_user_model().objects.filter(pk__in=owners, pk__gt=after).order_by("pk")


@contextmanager
def _lease() -> Iterator[LdapPublication]:
    """Hold the run lease: one reconciliation at a time, on every database. A conditional
    UPDATE rather than a lock held for the run: no transaction stays open for minutes, and
    a run killed with its worker frees it after RUN_LEASE."""
    now = timezone.now()
    _state()
    taken = (
        LdapPublication.objects.filter(pk=1)
        .filter(Q(running_until__isnull=True) | Q(running_until__lt=now))
        .update(running_until=now + RUN_LEASE)
    )
    if not taken:
        raise RunInProgress("another reconciliation run is in progress")
    try:
        yield LdapPublication.objects.get(pk=1)
    finally:
        LdapPublication.objects.filter(pk=1).update(running_until=None)


class _Run:
    """One reconciliation run's bookkeeping around person_sync."""

    def __init__(self, directory: Directory, result: ReconcileResult) -> None:
        self.directory = directory
        self.result = result
        self.visited: set[int] = set()

    def visit(self, user: User) -> None:
        if user.pk in self.visited:
            return
        self.visited.add(user.pk)
        self.result.people += 1
        try:
            try:
                person = person_sync(user=user, directory=self.directory)
            except DirectoryError as exc:
                if not exc.connection_lost:
                    raise
                # A dropped connection (a DC restarted, an idle timeout on a load
                # balancer) is reopened once; failing that, the run ends.
                logger.warning("The directory connection was lost (%s); reopening it.", exc)
                self.directory.reopen()
                person = person_sync(user=user, directory=self.directory)
        except PersonNotFound as exc:
            if _not_found(user, exc) and user.get_username() not in self.result.not_found:
                self.result.not_found.append(user.get_username())
            return
        except DirectoryError as exc:
            if exc.connection_lost:
                raise
            self.result.failed += 1
            self.result.error = self.result.error or str(exc)
            logger.warning("Reconciling %s failed: %s", user.get_username(), exc)
            return
        if person.changed:
            self.result.changed += 1
            self.result.added += len(person.added)
            self.result.removed += len(person.removed)


def reconcile(*, sweep: int | None = None, seconds: float | None = None) -> ReconcileResult:
    """One reconciliation run: first everyone the database diff finds, then up to `sweep`
    people (PKIPORTAL_LDAP_SWEEP_BATCH) of the full sweep from where the last run stopped,
    within `seconds` (RUN_SECONDS; None in both: the command's --all). A directory that
    cannot be reached or bound to ends the run (recorded, raised); a person it cannot find
    or change is counted and the run goes on. RunInProgress if another run holds the
    lease."""
    result = ReconcileResult()
    started = time.monotonic()

    def out_of_time() -> bool:
        return seconds is not None and time.monotonic() - started > seconds

    User = get_user_model()
    try:
        with _lease() as state, connect() as directory:
            run = _Run(directory, result)
            digest = settings_digest()
            if state.settings_digest != digest:
                # Published where, or what: what the table says is no longer known.
                LdapPublishedCertificate.objects.all().delete()
                LdapMissingEntry.objects.all().delete()
                state.settings_digest, state.sweep_after = digest, 0
                state.save(update_fields=["settings_digest", "sweep_after"])
            # What is left when time runs out is still different next run: nothing lost.
            for pks in _chunks(differing_people(), 500):
                if out_of_time():
                    break
                for user in User.objects.filter(pk__in=pks).order_by("pk"):
                    if out_of_time():
                        break
                    run.visit(user)
                    result.differing += 1
            cursor = state.sweep_after
            try:
                while sweep is None or result.swept < sweep:
                    if out_of_time():
                        break
                    limit = 500 if sweep is None else min(500, sweep - result.swept)
                    batch = list(_sweep_people(cursor, timezone.now())[:limit])
                    if not batch:
                        cursor = 0
                        result.sweep_finished = True
                        break
                    for user in batch:
                        if out_of_time() or (sweep is not None and result.swept >= sweep):
                            break
                        run.visit(user)
                        result.swept += 1
                        cursor = user.pk
                        if result.swept % CURSOR_EVERY == 0:
                            LdapPublication.objects.filter(pk=1).update(sweep_after=cursor)
            finally:
                fields: dict[str, Any] = {"sweep_after": cursor}
                if result.sweep_finished:
                    fields["swept_at"] = timezone.now()
                LdapPublication.objects.filter(pk=1).update(**fields)
    except DirectoryError as exc:
        logger.error("Reconciling the directory failed: %s", exc)
        _record(error=str(exc))
        raise
    except SoftTimeLimitExceeded:
        message = (
            f"reconciliation stopped at the task time limit, after {result.people} people; "
            "the next run goes on from there"
        )
        logger.error("%s.", message)
        _record(error=message)
        raise
    error = ""
    if result.failed:
        entries = "entry" if result.failed == 1 else "entries"
        error = f"{result.failed} {entries} could not be changed: {result.error}"
    _record(error=error, reconciled=True)
    if result.changed or result.not_found or result.failed:
        logger.info("Directory reconciled: %s", result.as_dict())
    return result


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for index in range(0, len(items), size):
        yield items[index : index + size]


# --- how it went ----------------------------------------------------------------------


def _state() -> LdapPublication:
    """The one state row; created, with when publication was first seen on, if missing."""
    state, _ = LdapPublication.objects.get_or_create(pk=1, defaults={"enabled_at": timezone.now()})
    if state.enabled_at is None:
        state.enabled_at = timezone.now()
        state.save(update_fields=["enabled_at"])
    return state


def _record(*, error: str = "", reconciled: bool = False) -> None:
    """Note a success or a failure on the one state row (not audited: it changes nothing
    anyone did; the entries' changes are audited by person_sync)."""
    now = timezone.now()
    _state()
    fields: dict[str, Any] = (
        {"failed_at": now, "error": error[:500]} if error else {"succeeded_at": now}
    )
    if reconciled:
        fields["reconciled_at"] = now
    LdapPublication.objects.filter(pk=1).update(**fields)


def _not_reconciled(state: LdapPublication, inline: bool) -> str:
    """The reconciliation is overdue: since when, and what runs it. Worded when read."""
    every = plurals.minutes_when_read(settings.PKIPORTAL_LDAP_RECONCILE_MINUTES)
    if state.reconciled_at is not None:
        time = f"{state.reconciled_at:%Y-%m-%d %H:%M}"
        if inline:
            message = _(
                "The directory was last reconciled at %(time)s UTC; without a broker, run "
                "`manage.py ldap_publish` from cron."
            )
        else:
            message = _(
                "The directory was last reconciled at %(time)s UTC; beat runs it every "
                "%(every)s: see the worker's log."
            )
    else:
        time = f"{state.enabled_at:%Y-%m-%d %H:%M}"
        if inline:
            message = _(
                "The directory has not been reconciled since publication was turned on "
                "(%(time)s UTC); without a broker, run `manage.py ldap_publish` from cron."
            )
        else:
            message = _(
                "The directory has not been reconciled since publication was turned on "
                "(%(time)s UTC); beat runs it every %(every)s: see the worker's log."
            )
    return worded(message, time=time, every=every)


def ldap_check(now: datetime | None = None) -> dict[str, Any]:
    """The verdict for /health/: "warn" (never "fail": mail still flows) while the last
    attempt failed, people have no entry, or no reconciliation run has finished within
    three periods (since publication was turned on, if none ever did), however well the
    per-person tasks go; "ok" otherwise."""
    if not enabled():
        return {"status": health.OK, "mode": "off"}
    now = now or timezone.now()
    state = _state()
    inline = health.no_scheduler()

    def when(moment: datetime | None) -> str | None:
        return moment.isoformat() if moment is not None else None

    missing = LdapMissingEntry.objects.count()
    result: dict[str, Any] = {
        "status": health.OK,
        "mode": "cron" if inline else "worker",
        "last_success": when(state.succeeded_at),
        "last_failure": when(state.failed_at),
        "last_error": state.error,
        "last_reconcile": when(state.reconciled_at),
        "last_full_sweep": when(state.swept_at),
        "not_found": missing,
        "problems": [],
    }
    if inline:
        result["note"] = (
            "No broker: nothing is published on its own. Run `manage.py ldap_publish` "
            f"from cron every {plurals.minutes(settings.PKIPORTAL_LDAP_RECONCILE_MINUTES)}."
        )
    if state.failed_at is not None and (
        state.succeeded_at is None or state.failed_at >= state.succeeded_at
    ):
        result["problems"].append(
            worded(
                _("Publishing certificates to the directory failed at %(time)s UTC: %(error)s"),
                time=f"{state.failed_at:%Y-%m-%d %H:%M}",
                error=state.error,
            )
        )
    if missing:
        names = LdapMissingEntry.objects.order_by("since", "user_id").values_list(
            "user__username", flat=True
        )[:5]
        result["problems"].append(
            worded(
                ngettext_lazy(
                    "%(count)d people with certificates to publish have no directory entry "
                    "that PKIPORTAL_LDAP_PUBLISH_FILTER finds, e.g. %(names)s.",
                    "%(count)d people with certificates to publish have no directory entry "
                    "that PKIPORTAL_LDAP_PUBLISH_FILTER finds, e.g. %(names)s.",
                    missing,
                ),
                count=missing,
                names=", ".join(names),
            )
        )
    period = timedelta(minutes=settings.PKIPORTAL_LDAP_RECONCILE_MINUTES)
    since = state.reconciled_at or state.enabled_at
    if since is not None and now - since > 3 * period:
        result["problems"].append(_not_reconciled(state, inline))
    if result["problems"]:
        result["status"] = health.WARN
    return result
