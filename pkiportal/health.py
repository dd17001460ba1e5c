"""/health/: database, broker, worker, beat, CRL freshness, the issuing CAs' ends and
keys, the revocation of leavers' certificates and the mail domains issued for, as JSON, 503 when
something is wrong.

Anyone (a load balancer, a monitoring probe) gets the overall verdict and the status code;
staff and RA officers also get each check's details, which name CAs, errors and hosts, and
so does a monitoring system presenting PKIPORTAL_HEALTH_TOKEN as a bearer token, over
HTTPS only (403 over plain HTTP, unless PKIPORTAL_MONITORING_ALLOW_HTTP). The token
is checked before the session, which lives in the database: details still come when the
database is what is down. "Warn" (the offline root's CRL expires within a month, an
issuing CA that templates use ends within PKIPORTAL_CA_EXPIRY_WARNING_DAYS or already
cuts certificates short, or is name-constrained more narrowly than PKIPORTAL_MAIL_DOMAINS,
the cap held leavers' certificate revocations back, publishing certificates to the
LDAP directory fails, the directory leavers' sync cannot read it or held back, a
template's approvers group holds no active RA officer, pending requests are outside
every RA officer's officer scope, the imported FIDO metadata is past its nextUpdate, or
forwarding the audit trail to the SIEM failed or fell ten minutes behind)
still answers 200.

Callers who get only the verdict share one broker and worker ping per process every
BROKER_CHECK_SECONDS (and one CA key check a minute): a flood of them costs no pings.
"""

from __future__ import annotations

import copy
import hmac
import threading
import time
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import translation
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from accounts import fido_metadata, mfa
from enrollment import audit_shipping, health, ldap_publish, ldap_sync, leavers
from enrollment.permissions import is_ra_officer

# A probe must answer quickly even when the broker host is gone.
BROKER_TIMEOUT_SECONDS = 2.0
WORKER_TIMEOUT_SECONDS = 1.0


def _database() -> dict[str, Any]:
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return {"status": health.FAIL, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"status": health.OK, "ms": round((time.perf_counter() - started) * 1000, 1)}


def _broker_connection() -> Any:
    from kombu import Connection

    return Connection(
        settings.CELERY_BROKER_URL,
        connect_timeout=BROKER_TIMEOUT_SECONDS,
        transport_options={
            "socket_connect_timeout": BROKER_TIMEOUT_SECONDS,
            "socket_timeout": BROKER_TIMEOUT_SECONDS,  # one that accepts and never answers
        },
    )


def _broker() -> dict[str, Any]:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return {"status": health.OK, "mode": "inline"}
    started = time.perf_counter()
    try:
        with _broker_connection() as broker:
            broker.ensure_connection(max_retries=0, timeout=BROKER_TIMEOUT_SECONDS)
    except Exception as exc:
        return {"status": health.FAIL, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"status": health.OK, "ms": round((time.perf_counter() - started) * 1000, 1)}


def _worker() -> dict[str, Any]:
    """`celery inspect ping`, answered by the first worker or given up after a second."""
    from pkiportal.celery import app

    try:
        with _broker_connection() as broker:
            replies = app.control.ping(timeout=WORKER_TIMEOUT_SECONDS, limit=1, connection=broker)
    except Exception as exc:
        return {"status": health.FAIL, "error": f"{type(exc).__name__}: {exc}"[:300]}
    if not replies:
        return {"status": health.FAIL, "error": _("No Celery worker answered a ping.")}
    return {"status": health.OK, "answered": sorted(name for reply in replies for name in reply)}


def _ping_broker_and_worker() -> dict[str, dict[str, Any]]:
    broker = _broker()
    if broker.get("mode") == "inline":
        return {"broker": broker, "worker": {"status": health.OK, "mode": "inline"}}
    if broker["status"] == health.OK:
        return {"broker": broker, "worker": _worker()}
    return {
        "broker": broker,
        "worker": {"status": health.FAIL, "error": _("The broker is unreachable.")},
    }


# /health/ answers anyone, and its broker and worker pings take up to a few seconds (all
# the timeouts above when the broker is gone): a flood of anonymous calls must not tie up
# the web workers with them. Each process pings at most once per period for callers who
# get only the verdict; callers allowed details get a fresh ping, as for the CA keys.
BROKER_CHECK_SECONDS = 10.0
# How long a caller waits for another thread's ping rather than start its own.
_BROKER_PING_WAIT_SECONDS = 2 * BROKER_TIMEOUT_SECONDS + WORKER_TIMEOUT_SECONDS
_BROKER_CHECKS: dict[str, tuple[float, dict[str, dict[str, Any]]]] = {}
_BROKER_REFRESH = threading.Lock()


def forget_broker_checks() -> None:
    """Drop this process's remembered pings (tests; a broker just repaired)."""
    _BROKER_CHECKS.clear()


def broker_and_worker(*, fresh: bool = False) -> dict[str, dict[str, Any]]:
    """The broker's and a worker's verdicts ("broker", "worker"), pinged at most once per
    BROKER_CHECK_SECONDS in this process unless ``fresh``.

    ``fresh`` is for callers allowed details (staff, RA officers, the monitoring token):
    what they are shown is what the broker and workers answer now, and there are few of
    them. Everyone else shares the last ping's verdict (/metrics, authorised as it is,
    scrapes less often than the period, so it sees a ping of its own or one a moment
    old). While another thread pings, a caller takes the last verdict rather than wait.
    """
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return _ping_broker_and_worker()  # inline: nothing to ping
    key = settings.CELERY_BROKER_URL
    if fresh:
        pinged = _ping_broker_and_worker()
        _BROKER_CHECKS[key] = (time.monotonic(), pinged)
        return copy.deepcopy(pinged)

    def remembered() -> dict[str, dict[str, Any]] | None:
        found = _BROKER_CHECKS.get(key)
        if found is None or time.monotonic() - found[0] >= BROKER_CHECK_SECONDS:
            return None
        return found[1]

    verdicts = remembered()
    if verdicts is not None:
        return copy.deepcopy(verdicts)
    stale = _BROKER_CHECKS.get(key)
    if stale is not None:
        got = _BROKER_REFRESH.acquire(blocking=False)
    else:
        got = _BROKER_REFRESH.acquire(timeout=_BROKER_PING_WAIT_SECONDS)
    if not got:
        if stale is not None:
            return copy.deepcopy(stale[1])
        busy = {"status": health.FAIL, "error": _("The broker is being checked.")}
        return {"broker": busy, "worker": dict(busy)}
    try:
        verdicts = remembered()  # another thread may have pinged meanwhile
        if verdicts is None:
            verdicts = _ping_broker_and_worker()
            _BROKER_CHECKS[key] = (time.monotonic(), verdicts)
        return copy.deepcopy(verdicts)
    finally:
        _BROKER_REFRESH.release()


def checks(*, fresh: bool = False) -> dict[str, Any]:
    """Every check's details; the overall verdict is the worst of them. ``fresh``: ping
    the broker and a worker and check the CA keys now, not within the last seconds or
    minute (callers allowed details). Their texts are lazy: worded in the language active
    where they are read, so in English only under translation.override("en")."""
    results: dict[str, Any] = {"database": _database()}
    results.update(broker_and_worker(fresh=fresh))
    if health.no_scheduler():
        results["scheduler"] = {
            "status": health.OK,
            "mode": "not used",
            "detail": "No broker is configured: tasks run inline and there is no beat.",
        }
    elif results["database"]["status"] == health.OK:
        results["scheduler"] = health.beat_status()
    else:
        results["scheduler"] = {"status": health.FAIL, "error": "The database is unreachable."}
    if results["database"]["status"] == health.OK:
        crls = health.crl_status()
        results["crl"] = {
            "status": health.worst(*(status.status for status in crls)),
            "authorities": {status.slug: status.as_dict() for status in crls},
        }
    else:
        results["crl"] = {"status": health.FAIL, "error": "The database is unreachable."}
    if results["database"]["status"] == health.OK:
        # "warn" long before an issuing CA's end, "fail" once templates cannot issue.
        results["issuing_ca"] = health.issuing_ca_status().as_dict()
        # "fail" when an online CA's key cannot sign here: its file, or its HSM token.
        results["ca_keys"] = health.ca_key_status(fresh=fresh)
        # "warn" while the cap holds leavers' revocations back: an operator must look.
        results["leavers"] = leavers.leaver_check()
        # "warn" while publishing to the LDAP directory fails or finds people no entry.
        results["ldap_publish"] = ldap_publish.ldap_check()
        # "warn" while the directory leavers' sync cannot read the directory, the cap holds
        # deactivations back, or a superuser has left the directory.
        results["ldap_sync"] = ldap_sync.ldap_sync_check()
        # "warn" while a template's approvers group holds no active RA officer.
        results["approvers"] = health.approver_status()
        # "warn" once the imported FIDO metadata is past its nextUpdate.
        results["fido_metadata"] = fido_metadata.metadata_check()
        # "warn" while pending requests are outside every RA officer's officer scope.
        results["scopes"] = health.scope_status()
        # "warn" while forwarding the audit trail to the SIEM fails or falls behind.
        results["audit_shipping"] = audit_shipping.forwarding_check()
    else:  # unknown is not fine: every check is there, so no alert on one goes quiet
        names = (
            "issuing_ca",
            "ca_keys",
            "leavers",
            "ldap_publish",
            "ldap_sync",
            "approvers",
            "fido_metadata",
            "scopes",
            "audit_shipping",
        )
        for name in names:
            results[name] = {"status": health.FAIL, "error": "The database is unreachable."}
    # "warn" when an issuing CA in use is name-constrained more narrowly than the setting.
    results["mail_domains"] = health.mail_domain_status(
        with_cas=results["database"]["status"] == health.OK
    )
    return results


HTTPS_REQUIRED = "The monitoring token is accepted over HTTPS only: use the https:// URL."


def bearer_over_plain_http(request: HttpRequest) -> bool:
    """A bearer credential that came over plain HTTP, which takes none unless
    PKIPORTAL_MONITORING_ALLOW_HTTP: anyone on the path can read and replay the token.

    Decided by the transport and the header's scheme alone, before and without any
    comparison: right token, wrong token or none configured, plain HTTP answers alike,
    so it tells nobody (not even by timing) whether a token is valid.
    """
    scheme = request.headers.get("Authorization", "").partition(" ")[0]
    return (
        scheme.lower() == "bearer"
        and not request.is_secure()
        and not settings.PKIPORTAL_MONITORING_ALLOW_HTTP
    )


def refuse_bearer_over_plain_http(
    request: HttpRequest, *, plain_text: bool = False
) -> HttpResponse | None:
    """The 403 /health/, /health/live/ (JSON) and /metrics (``plain_text``) give a bearer
    credential over plain HTTP (bearer_over_plain_http), or None. 403, as EST refuses
    plain HTTP: a 401 would invite the client to send its credential again, as plainly."""
    if not bearer_over_plain_http(request):
        return None
    if plain_text:
        return HttpResponse(
            HTTPS_REQUIRED + "\n", status=403, content_type="text/plain; charset=utf-8"
        )
    return JsonResponse({"error": HTTPS_REQUIRED}, status=403)


def _presents_monitoring_token(request: HttpRequest) -> bool:
    expected = settings.PKIPORTAL_HEALTH_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if not expected or scheme.lower() != "bearer" or bearer_over_plain_http(request):
        return False  # over plain HTTP, never compared
    return hmac.compare_digest(given.strip().encode(errors="replace"), expected.encode())


def may_see_details(request: HttpRequest) -> bool:
    """The monitoring token, or a signed-in member of staff or RA officer whose session
    has confirmed its second factor where one is asked: the details name hosts, database
    users and error texts, and a fresh check drives the HSM, which a password alone must
    not buy (the second-factor middleware lets /health/ and /metrics through unconfirmed,
    for probes)."""
    if _presents_monitoring_token(request):
        return True
    try:
        user = request.user
        return bool(
            user.is_authenticated
            and (user.is_staff or is_ra_officer(user))
            and not mfa.session_needs_second_step(request)
            and not mfa.session_restriction(request)
        )
    except Exception:  # the session lives in the database, which may be what is down
        return False


@never_cache
@require_safe
def health_view(request: HttpRequest) -> HttpResponse:
    refused = refuse_bearer_over_plain_http(request)
    if refused is not None:
        return refused
    details = may_see_details(request)
    # Anonymous probes get the broker and worker pings of the last seconds and the CA key
    # checks of the last minute: they cannot make this process ping or drive the HSM.
    results = checks(fresh=details)
    overall = health.worst(*(check["status"] for check in results.values()))
    body: dict[str, Any] = {"status": overall}
    if details:
        body["checks"] = results
    # The checks' texts are lazy, worded where read (the RA console shows them in the
    # officer's language): a monitoring system reads them in English, whatever the
    # request asks or PKIPORTAL_LANGUAGE is. JsonResponse serialises here and now.
    with translation.override("en"):
        return JsonResponse(body, status=503 if overall == health.FAIL else 200)


@never_cache
@require_safe
def live_view(request: HttpRequest) -> HttpResponse:
    """For a load balancer: can this node serve its pages, CRLs and OCSP answers? Only the
    database decides. /health/ also fails for what a node cannot fix by being taken out
    (a stale CRL, a stopped beat, an issuing CA near its end), and a load balancer that
    drops every node for those takes /pki/ down with them, when it is needed most."""
    refused = refuse_bearer_over_plain_http(request)
    if refused is not None:
        return refused
    database = _database()
    body: dict[str, Any] = {"status": database["status"]}
    if may_see_details(request):
        body["checks"] = {"database": database}
    return JsonResponse(body, status=503 if database["status"] == health.FAIL else 200)
