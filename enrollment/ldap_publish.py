"""Publishing issued certificates to the organisation's LDAP directory (Active Directory,
OpenLDAP), as Windows Certificate Services does: Outlook (the GAL), Exchange and
Thunderbird's LDAP address books find colleagues' encryption certificates there.

Optional: off unless PKIPORTAL_LDAP_PUBLISH_URI is set, and ldap3 is imported only then.
What a person's entry should hold is computed from the database alone (person_sync):
their certificates that are valid now, not revoked, of an encryption or dual-use template
(or every template), while their account is active. The entry is found by a search
(base + filter with the user name and/or address), and only the difference is written.

The portal removes only values it put there itself: a userCertificate value is ours when
its exact DER is a certificate this portal issued; a userSMIMECertificate value when it
is byte for byte the certs-only PKCS#7 we write for one of them. Certificates of other CAs,
and blobs Outlook's "Publish to GAL" wrote, are never touched.

Issuance and revocation queue a task for the holder once their transaction commits
(publish_on_commit); beat reconciles everyone hourly, which catches a lost message, a
directory that was down, an entry edited by hand, expiry, and a newly enabled setting.
How it went is kept on one LdapPublication row for /health/ and the RA console.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from celery.exceptions import SoftTimeLimitExceeded

from cryptography.hazmat.primitives.serialization import pkcs7 as crypto_pkcs7

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from enrollment import health
from enrollment.audit import audit_record
from enrollment.models import Certificate, LdapPublication
from enrollment.x509 import pkcs7

if TYPE_CHECKING:
    from accounts.models import User

logger = logging.getLogger(__name__)

# Active Directory and OpenLDAP both honour it: adding a value that is there already, or
# deleting one that is gone, succeeds instead of failing the whole modify. Two tasks for
# one person racing each other then both succeed. Not critical: a server without it fails
# such a modify, and the task retries.
PERMISSIVE_MODIFY = ("1.2.840.113556.1.4.1413", False, None)
# Reconciliation visits the holders of certificates that expired at most this long ago
# (and everyone with a later one): expired values are removed within the first run after
# expiry; older ones, left only by a directory down for a month, Outlook ignores anyway.
EXPIRED_LOOKBACK = timedelta(days=30)
# How many user names without an entry the state row keeps (the count is complete).
NOT_FOUND_KEPT = 20
SMIME_ATTRIBUTE = "usersmimecertificate"


class DirectoryError(Exception):
    """The directory could not be reached, bound to or written; the message names no
    secret (ldap3's messages carry the DN, never the password)."""


class PersonNotFound(Exception):
    """The search finds no entry, or more than one, for a person: nothing is written."""


def enabled() -> bool:
    """Is publication configured? A settings read, no SQL: cheap on any path."""
    return bool(settings.PKIPORTAL_LDAP_PUBLISH_URI)


def publish_on_commit(owner_id: int | None) -> None:
    """Queue the holder's publication for after the current transaction commits.

    Costs the issuing or revoking request one on_commit registration and, after the
    commit, one broker push: no SQL and no directory traffic. Without a broker (the
    embedded default runs tasks inline) nothing is queued, so no request ever waits for
    the directory there: `manage.py ldap_publish` from cron catches up instead.
    """
    if owner_id is None or not enabled() or settings.CELERY_TASK_ALWAYS_EAGER:
        return

    def send() -> None:
        from enrollment.tasks import ldap_publish_task

        try:
            ldap_publish_task.delay(owner_id)
        except Exception:
            logger.exception(
                "Could not queue publishing user %s's certificates; the next reconciliation will.",
                owner_id,
            )

    transaction.on_commit(send, robust=True)


# --- what an entry should hold --------------------------------------------------------


def _base_name(attribute: str) -> str:
    return attribute.split(";", 1)[0].lower()


def certificates_to_publish(user: User, now: datetime | None = None) -> list[Certificate]:
    """The certificates a person's entry should hold: none once the account is off."""
    if not user.is_active:
        return []
    wanted = Certificate.objects.owned_by(user).valid(now).select_related("ca")
    if settings.PKIPORTAL_LDAP_PUBLISH_CERTIFICATES != "all":
        wanted = wanted.encryption_capable()
    return list(wanted.order_by("not_before", "pk"))


def value_for(attribute: str, certificate: Certificate) -> bytes:
    """The attribute value that publishes a certificate: its DER for userCertificate, a
    certs-only PKCS#7 with its chain for userSMIMECertificate (RFC 2798)."""
    if _base_name(attribute) == SMIME_ATTRIBUTE:
        chain = [ca.certificate for ca in certificate.ca.chain()]
        return pkcs7.certificates_to_p7b([certificate.certificate, *chain])
    return bytes(certificate.der)


def _certificates_inside(attribute: str, value: bytes) -> list[bytes]:
    """The DER certificates a directory value carries (none if it does not parse)."""
    if _base_name(attribute) != SMIME_ATTRIBUTE:
        return [value]
    try:
        return [pkcs7.certificate_der(c) for c in crypto_pkcs7.load_der_pkcs7_certificates(value)]
    except ValueError:
        return []


def _ours(attribute: str, values: list[bytes]) -> dict[bytes, Certificate]:
    """Which of these values this portal wrote: exact bytes of what value_for gives for a
    certificate it issued. Anything else (other CAs, Outlook's signed blobs) is foreign."""
    inside = {value: _certificates_inside(attribute, value) for value in values}
    fingerprints = {hashlib.sha256(der).hexdigest() for ders in inside.values() for der in ders}
    if not fingerprints:
        return {}
    issued = {
        c.fingerprint_sha256: c
        for c in Certificate.objects.filter(fingerprint_sha256__in=fingerprints).select_related(
            "ca"
        )
    }
    ours: dict[bytes, Certificate] = {}
    for value, ders in inside.items():
        for der in ders:
            candidate = issued.get(hashlib.sha256(der).hexdigest())
            if candidate is not None and value_for(attribute, candidate) == value:
                ours[value] = candidate
                break
    return ours


# --- the directory --------------------------------------------------------------------


@dataclass
class Entry:
    dn: str
    values: dict[str, list[bytes]]  # by configured attribute, as the directory holds them


class Directory:
    """One bound connection, opened by connect(); find people and change their entries."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

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
            raise DirectoryError(f"searching for {search} failed: {_describe(exc)}") from exc
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
            raise DirectoryError(f"changing {dn} failed: {_describe(exc)}") from exc


def _describe(exc: Exception) -> str:
    """A short, secret-free description of an ldap3 error for logs and /health/."""
    text = str(exc) or type(exc).__name__
    password = settings.PKIPORTAL_LDAP_PUBLISH_BIND_PASSWORD
    if password:
        text = text.replace(password, "********")
    return f"{type(exc).__name__}: {text}"[:300]


@contextmanager
def connect() -> Iterator[Directory]:
    """A connection bound as the service account (StartTLS first if asked), closed after."""
    from ldap3 import NONE, Connection, Server, Tls
    from ldap3.core.exceptions import LDAPException

    uri = settings.PKIPORTAL_LDAP_PUBLISH_URI
    timeout = settings.PKIPORTAL_LDAP_PUBLISH_TIMEOUT
    tls = Tls(
        validate=ssl.CERT_REQUIRED,
        ca_certs_file=settings.PKIPORTAL_LDAP_PUBLISH_CA_FILE or None,
    )
    server = Server(
        uri,
        use_ssl=uri.lower().startswith("ldaps://"),
        tls=tls,
        connect_timeout=timeout,
        get_info=NONE,
    )
    connection = Connection(
        server,
        user=settings.PKIPORTAL_LDAP_PUBLISH_BIND_DN or None,
        password=settings.PKIPORTAL_LDAP_PUBLISH_BIND_PASSWORD or None,
        receive_timeout=timeout,
        raise_exceptions=True,
        auto_referrals=False,
    )
    try:
        connection.open()
        if settings.PKIPORTAL_LDAP_PUBLISH_START_TLS:
            connection.start_tls()
        connection.bind()
    except LDAPException as exc:
        with suppress(LDAPException, OSError):  # a failed TLS handshake leaves no socket
            connection.unbind()
        raise DirectoryError(f"{uri}: could not connect and bind: {_describe(exc)}") from exc
    try:
        yield Directory(connection)
    finally:
        with suppress(LDAPException, OSError):
            connection.unbind()


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


def person_sync(*, user: User, directory: Directory, now: datetime | None = None) -> PersonResult:
    """Make one person's entry hold exactly their publishable certificates among the
    values this portal wrote; audited when something changed."""
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
        added.update(desired[value].serial for value in to_add)
        removed.update(ours[value].serial for value in to_remove)
    if not changes:
        return result
    directory.change(entry.dn, changes)
    result.added, result.removed = sorted(added), sorted(removed)
    with transaction.atomic():
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
    return result


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
        if not certificates_to_publish(user):
            return PersonResult(username=user.get_username())
        logger.warning("Not publishing %s's certificates: %s.", user.get_username(), exc)
        _record(not_found_add=[user.get_username()])
        return PersonResult(username=user.get_username())
    except DirectoryError as exc:
        logger.warning("Publishing %s's certificates failed: %s", user.get_username(), exc)
        _record(error=str(exc))
        raise
    _record(not_found_remove=[user.get_username()])
    return result


# --- everyone -------------------------------------------------------------------------


@dataclass
class ReconcileResult:
    people: int = 0
    changed: int = 0
    added: int = 0
    removed: int = 0
    not_found: list[str] = field(default_factory=list)
    failed: int = 0
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["not_found"] = len(self.not_found)
        return data


def _people(now: datetime) -> Any:
    """Everyone whose entry may need a change: holders of a certificate that has not
    expired, or expired within EXPIRED_LOOKBACK (cert_owner_template_idx, not_after)."""
    owners = (
        Certificate.objects.filter(not_after__gt=now - EXPIRED_LOOKBACK)
        .order_by()  # not the model's -not_before: it would join the DISTINCT
        .values("owner_id")
        .distinct()
    )
    return get_user_model().objects.filter(pk__in=owners).order_by("pk")


def reconcile(now: datetime | None = None) -> ReconcileResult:
    """Make every entry match the database. A directory that cannot be reached or bound
    to ends the run (recorded, raised); a person it cannot find or change is counted and
    the run goes on."""
    now = now or timezone.now()
    result = ReconcileResult()
    try:
        with connect() as directory:
            for user in _people(now).iterator(chunk_size=500):
                result.people += 1
                try:
                    person = person_sync(user=user, directory=directory, now=now)
                except PersonNotFound as exc:
                    if certificates_to_publish(user, now):
                        logger.warning(
                            "Not publishing %s's certificates: %s.", user.get_username(), exc
                        )
                        result.not_found.append(user.get_username())
                    continue
                except DirectoryError as exc:
                    result.failed += 1
                    result.error = result.error or str(exc)
                    logger.warning("Reconciling %s failed: %s", user.get_username(), exc)
                    continue
                if person.changed:
                    result.changed += 1
                    result.added += len(person.added)
                    result.removed += len(person.removed)
    except DirectoryError as exc:
        logger.error("Reconciling the directory failed: %s", exc)
        _record(error=str(exc))
        raise
    except SoftTimeLimitExceeded:
        # The next run starts over; raise CELERY_TASK_SOFT_TIME_LIMIT for a large directory.
        message = f"reconciliation stopped at the task time limit, after {result.people} people"
        logger.error("%s.", message)
        _record(error=message)
        raise
    error = ""
    if result.failed:
        entries = "entry" if result.failed == 1 else "entries"
        error = f"{result.failed} {entries} could not be changed: {result.error}"
    _record(error=error, reconciled=True, not_found=result.not_found)
    if result.changed or result.not_found or result.failed:
        logger.info("Directory reconciled: %s", result.as_dict())
    return result


# --- how it went ----------------------------------------------------------------------


def _record(
    *,
    error: str = "",
    reconciled: bool = False,
    not_found: list[str] | None = None,
    not_found_add: list[str] | None = None,
    not_found_remove: list[str] | None = None,
) -> None:
    """Note a success or a failure on the one state row (not audited: it changes nothing
    anyone did; the entries' changes are audited by person_sync)."""
    now = timezone.now()
    with transaction.atomic():
        state, _ = LdapPublication.objects.select_for_update().get_or_create(pk=1)
        if error:
            state.failed_at, state.error = now, error[:500]
        else:
            state.succeeded_at = now
        if reconciled:
            state.reconciled_at = now
        if not_found is not None:
            state.not_found = not_found[:NOT_FOUND_KEPT]
            state.not_found_count = len(not_found)
        names = list(state.not_found)
        for name in not_found_add or []:
            if name not in names:
                names.append(name)
                state.not_found_count += 1
        for name in not_found_remove or []:
            if name in names:
                names.remove(name)
                state.not_found_count = max(0, state.not_found_count - 1)
        state.not_found = names[:NOT_FOUND_KEPT]
        state.save()


def ldap_check(now: datetime | None = None) -> dict[str, Any]:
    """The verdict for /health/: "warn" (never "fail": mail still flows) while the last
    attempt failed, people have no entry, or reconciliation stopped; "ok" otherwise."""
    if not enabled():
        return {"status": health.OK, "mode": "off"}
    now = now or timezone.now()
    state = LdapPublication.objects.filter(pk=1).first()

    def when(moment: datetime | None) -> str | None:
        return moment.isoformat() if moment is not None else None

    result: dict[str, Any] = {
        "status": health.OK,
        "last_success": when(state.succeeded_at) if state else None,
        "last_failure": when(state.failed_at) if state else None,
        "last_error": state.error if state else "",
        "last_reconcile": when(state.reconciled_at) if state else None,
        "not_found": state.not_found_count if state else 0,
        "problems": [],
    }
    if state is None:
        return result
    if state.failed_at is not None and (
        state.succeeded_at is None or state.failed_at >= state.succeeded_at
    ):
        result["problems"].append(
            f"Publishing certificates to the directory failed at "
            f"{state.failed_at:%Y-%m-%d %H:%M} UTC: {state.error}"
        )
    if state.not_found_count:
        result["problems"].append(
            f"{state.not_found_count} people with certificates to publish have no directory "
            f"entry that PKIPORTAL_LDAP_PUBLISH_FILTER finds, e.g. "
            f"{', '.join(state.not_found[:5])}."
        )
    period = timedelta(minutes=settings.PKIPORTAL_LDAP_RECONCILE_MINUTES)
    if (
        not settings.CELERY_TASK_ALWAYS_EAGER
        and state.reconciled_at is not None
        and now - state.reconciled_at > 3 * period
    ):
        result["problems"].append(
            f"The directory was last reconciled at {state.reconciled_at:%Y-%m-%d %H:%M} UTC; "
            "beat runs it every "
            f"{settings.PKIPORTAL_LDAP_RECONCILE_MINUTES} minutes: see the worker's log."
        )
    if result["problems"]:
        result["status"] = health.WARN
    return result
