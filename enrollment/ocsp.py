"""The OCSP responder: which CA a request names, what the database says, a signed answer.

One responder for every online CA (RFC 6960, RFC 5019's profile). The request's
issuerNameHash and issuerKeyHash pick the CA; the status is read from the certificate's
row at the moment of the request, so a revocation is answered as soon as it commits; the
CA signs the response itself with the key the keystore already holds for issuance.

Signed responses are kept in this process, never in a shared cache, keyed by the status
they attest: a repeated question costs a database read instead of a signature, and a
changed status finds no entry. Each is reused only until S/MIME BR 4.9.10 wants a newer
one. Signing is not an audit event: the audit chain takes a row lock per event, which
anonymous requests must not be able to queue on; each signature is logged instead.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.x509 import ocsp as x509_ocsp

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from enrollment import hotsql, keystore
from enrollment.exceptions import KeyStoreError
from enrollment.models import Certificate, CertificateAuthority
from enrollment.x509 import ocsp
from enrollment.x509.crl import RevocationReason

logger = logging.getLogger(__name__)

# Signed responses kept per process: ~0.5-1 KB each, so a few MB at most.
SIGNED_RESPONSES_KEPT = 10_000


class Outcome(enum.StrEnum):
    """What an answer says: a certificate status, or why there is none (RFC 6960 4.2.1)."""

    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"
    MALFORMED_REQUEST = "malformedRequest"
    UNAUTHORIZED = "unauthorized"
    TRY_LATER = "tryLater"
    INTERNAL_ERROR = "internalError"


_UNSUCCESSFUL = {
    Outcome.MALFORMED_REQUEST: x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
    Outcome.UNAUTHORIZED: x509_ocsp.OCSPResponseStatus.UNAUTHORIZED,
    Outcome.TRY_LATER: x509_ocsp.OCSPResponseStatus.TRY_LATER,
    Outcome.INTERNAL_ERROR: x509_ocsp.OCSPResponseStatus.INTERNAL_ERROR,
}
_STATUS_OUTCOMES = {
    ocsp.Status.GOOD: Outcome.GOOD,
    ocsp.Status.REVOKED: Outcome.REVOKED,
    ocsp.Status.UNKNOWN: Outcome.UNKNOWN,
}


@dataclass(frozen=True)
class OcspAnswer:
    """A DER OCSPResponse and what the HTTP edge needs to know to send it.

    Signed answers carry their thisUpdate and nextUpdate, and ``fresh_until``: when a
    newer response is due (S/MIME BR 4.9.10), so no cache should hand this one out after.
    """

    der: bytes
    outcome: Outcome
    this_update: datetime | None = None
    next_update: datetime | None = None
    fresh_until: datetime | None = None
    nonce: bool = False

    @property
    def etag(self) -> str:
        return hashlib.sha256(self.der).hexdigest()[:32]


def unsuccessful(outcome: Outcome) -> OcspAnswer:
    """An unsigned error answer: malformedRequest, unauthorized, tryLater, internalError."""
    return OcspAnswer(ocsp.unsuccessful(_UNSUCCESSFUL[outcome]), outcome)


def answer(der: bytes, *, now: datetime | None = None) -> OcspAnswer:
    """The answer to one DER OCSPRequest; never raises for what a client sends.

    A database or key store that fails gives tryLater: the client asks again, or falls
    back to the CRL, rather than taking a server error for a verdict.
    """
    try:
        query = ocsp.parse_request(der)
    except ocsp.OcspRequestError:
        return unsuccessful(Outcome.MALFORMED_REQUEST)
    try:
        return _answer(query, now or timezone.now())
    except KeyStoreError as exc:
        logger.error("OCSP: cannot sign: %s", exc.message)
    except DatabaseError:
        logger.exception("OCSP: the database did not answer")
    return unsuccessful(Outcome.TRY_LATER)


def validity() -> timedelta:
    """nextUpdate − thisUpdate, one second short of the setting: the BR count both ends."""
    return timedelta(hours=settings.PKIPORTAL_OCSP_VALIDITY_HOURS) - timedelta(seconds=1)


def reuse_limit(span: timedelta) -> timedelta:
    """How long after its thisUpdate a response may still be handed out (S/MIME BR 4.9.10).

    Below sixteen hours of validity, a newer response is due before half of it has gone;
    from sixteen hours on, eight hours before nextUpdate and at most four days after.
    """
    span += timedelta(seconds=1)
    if span < timedelta(hours=16):
        return span / 2
    return min(span - timedelta(hours=8), timedelta(days=4))


def _answer(query: ocsp.OcspQuery, now: datetime) -> OcspAnswer:
    ca = _issuer(query.cert_id)
    if ca is None:
        return unsuccessful(Outcome.UNAUTHORIZED)
    status = _status(ca, query.cert_id.serial_number)
    span = validity()
    key = (ca.pk, ca.fingerprint_sha256, query.cert_id, status, span)
    # An "unknown" is not kept: anyone can ask about endless made-up serials, and keeping
    # their answers would push out the "good" ones that real clients ask for again.
    keep = query.nonce is None and status.status is not ocsp.Status.UNKNOWN
    if keep:
        kept = _kept(key, now)
        if kept is not None:
            return kept
    this_update = now.replace(microsecond=0)
    der = keystore.sign_ocsp_response(
        ca,
        cert_id=query.cert_id,
        status=status,
        this_update=this_update,
        next_update=this_update + span,
        nonce=query.nonce,
    )
    signed = OcspAnswer(
        der,
        _STATUS_OUTCOMES[status.status],
        this_update=this_update,
        next_update=this_update + span,
        fresh_until=this_update + reuse_limit(span),
        nonce=query.nonce is not None,
    )
    # S/MIME BR 5.4.1 (aligned with the TLS BRs by SMC07) asks CAs to record the signing of
    # OCSP responses: INFO, and README says to keep these logs. Kept answers sign nothing.
    logger.info(
        "OCSP: %s signed %s for serial %s (%s CertID)",
        ca.slug,
        signed.outcome,
        _serial(query.cert_id.serial_number),
        query.cert_id.algorithm,
    )
    if keep:
        _keep(key, signed)
    return signed


# --- which CA ---------------------------------------------------------------------------

# (hash name, issuerNameHash, issuerKeyHash) of each CA certificate, by its fingerprint:
# public values, computed once per process per certificate.
_CERT_IDS: dict[str, frozenset[tuple[str, bytes, bytes]]] = {}
_WARNED: set[str] = set()


def _issuer(cert_id: ocsp.CertId) -> CertificateAuthority | None:
    """The CA a CertID names, if this portal may answer for it; None means unauthorized.

    The offline root's key never reaches the portal: statuses of what it issued (the
    subordinate CA certificates) are on its CRL only. An online CA answers only when its
    certificate lets its key sign responses (ocsp.may_sign_responses).
    """
    if not cert_id.algorithm:
        return None
    for ca in hotsql.authorities():
        ids = _CERT_IDS.get(ca.fingerprint_sha256)
        if ids is None:
            ids = _CERT_IDS[ca.fingerprint_sha256] = ocsp.issuer_cert_ids(ca.certificate)
        if cert_id.issuer not in ids:
            continue
        if not ca.is_online or not ca.key_reference:
            return None
        if not ocsp.may_sign_responses(ca.certificate):
            if ca.fingerprint_sha256 not in _WARNED:
                _WARNED.add(ca.fingerprint_sha256)
                logger.warning(
                    "OCSP: %s's certificate does not assert digitalSignature, so its key "
                    "may not sign OCSP responses (S/MIME BR 7.1.2.2 e): answering unauthorized.",
                    ca.slug,
                )
            return None
        return ca
    return None


# --- what the database says -------------------------------------------------------------

# Serials never issued are logged as a warning at most once a minute per process, with how
# many were asked about meanwhile: a flood of made-up serials must not flood the log too.
UNKNOWN_LOG_INTERVAL = timedelta(minutes=1)
_unknown_log: dict[str, Any] = {"at": None, "unlogged": 0}
_UNKNOWN_LOG_LOCK = threading.Lock()


def _log_unknown(ca: CertificateAuthority, serial_number: int) -> None:
    now = timezone.now()
    with _UNKNOWN_LOG_LOCK:
        last = _unknown_log["at"]
        if last is not None and timedelta(0) <= now - last < UNKNOWN_LOG_INTERVAL:
            _unknown_log["unlogged"] += 1
            return
        unlogged, _unknown_log["unlogged"], _unknown_log["at"] = _unknown_log["unlogged"], 0, now
    logger.warning(
        "OCSP: %s was asked about serial %s, which it never issued%s",
        ca.slug,
        _serial(serial_number),
        f" (and about {unlogged} more unknown serials since the last such warning)"
        if unlogged
        else "",
    )


def _status(ca: CertificateAuthority, serial_number: int) -> ocsp.CertificateStatus:
    """good, revoked (time and reason as on the CRL) or unknown for a serial never issued.

    Unknown rather than RFC 6960 2.2's "revoked" for non-issued serials: that needs
    certificateHold, which S/MIME BR 7.2.2 keeps out of strict certificates' status, and
    the BR ask only that such a serial is never "good" (4.9.10). Each is logged, as the BR
    ask CAs to watch for them: 159 random bits are not guessed by chance.
    """
    row = hotsql.certificate_status(ca.pk, format(serial_number, "x"))
    if row is None:
        _log_unknown(ca, serial_number)
        return ocsp.CertificateStatus(ocsp.Status.UNKNOWN)
    status, revoked_at, reason = row
    if status != Certificate.Status.REVOKED:
        return ocsp.CertificateStatus(ocsp.Status.GOOD)
    return ocsp.CertificateStatus(
        ocsp.Status.REVOKED,
        revocation_time=revoked_at,
        revocation_reason=RevocationReason(reason).flag if reason else None,
    )


def _serial(serial_number: int) -> str:
    """A serial for the log, bounded: it comes from whoever sent the request."""
    text = format(serial_number, "x")
    return text if len(text) <= 48 else f"{text[:48]}…"


# --- signed responses kept in this process ----------------------------------------------

_KEPT: OrderedDict[tuple[object, ...], OcspAnswer] = OrderedDict()
_KEPT_LOCK = threading.Lock()  # gthread workers share the module


def _kept(key: tuple[object, ...], now: datetime) -> OcspAnswer | None:
    with _KEPT_LOCK:
        kept = _KEPT.get(key)
        if kept is None:
            return None
        if kept.fresh_until is None or kept.fresh_until <= now:
            del _KEPT[key]
            return None
        _KEPT.move_to_end(key)
        return kept


def _keep(key: tuple[object, ...], signed: OcspAnswer) -> None:
    with _KEPT_LOCK:
        _KEPT[key] = signed
        _KEPT.move_to_end(key)
        while len(_KEPT) > SIGNED_RESPONSES_KEPT:
            _KEPT.popitem(last=False)


def forget_signed_responses() -> None:
    """Drop what this process kept (tests, and the benchmark's cold runs)."""
    with _KEPT_LOCK:
        _KEPT.clear()
    with _UNKNOWN_LOG_LOCK:
        _unknown_log.update(at=None, unlogged=0)
