"""/metrics: what /health/ knows, as Prometheus metrics, for alerting on trends and dates.

/health/ gives a verdict; an operator running Prometheus wants numbers to alert on and to
graph: seconds until a CRL's nextUpdate or an issuing CA's end, revocations waiting for a
CRL, requests and key recoveries waiting for people, valid certificates per template.

Every figure is read from the database (and the broker, through /health/'s checks) at
scrape time into a registry made for that scrape. Nothing is counted in the web processes:
with several gunicorn workers per-process counters would need prometheus_client's
multiprocess mode and a shared directory, and the database already holds the truth.

Who may scrape: whoever may see /health/'s details (the PKIPORTAL_HEALTH_TOKEN as a bearer
token over HTTPS, staff, RA officers). The figures name CAs and templates and count people's
certificates: not for the internet.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from enrollment import audit_shipping, health
from enrollment.models import (
    Certificate,
    CertificateAuthority,
    CertificateRequest,
    KeyRecoveryRequest,
    ScheduledRun,
)
from enrollment.recovery import OPEN_STATES
from pkiportal import health as health_view

# Prometheus has no strings: a check's verdict as a number, worst highest.
VERDICTS = {health.OK: 0, health.WARN: 1, health.FAIL: 2}


def _seconds(moment: str | None) -> float | None:
    """An ISO 8601 time from /health/'s details as Unix time."""
    return datetime.fromisoformat(moment).timestamp() if moment is not None else None


class PortalCollector(Collector):
    """One scrape's figures, read when the registry collects."""

    def collect(self) -> Iterator[Metric]:
        checks = health_view.checks()
        verdicts = GaugeMetricFamily(
            "pkiportal_check_status",
            "Verdict of each /health/ check: 0 ok, 1 warn, 2 fail.",
            labels=["check"],
        )
        for name, result in checks.items():
            verdicts.add_metric([name], VERDICTS.get(result.get("status"), VERDICTS[health.FAIL]))
        yield verdicts
        if checks["database"]["status"] != health.OK:
            return  # the rest is read from the database
        yield from self._crls(checks["crl"]["authorities"])
        yield from self._authorities()
        yield from self._work_waiting()
        yield from self._certificates()
        yield from self._scheduled_runs()
        if audit_shipping.enabled():
            yield from self._audit_forwarding(checks["audit_shipping"])

    def _crls(self, authorities: dict[str, dict[str, Any]]) -> Iterator[Metric]:
        """From /health/'s own reading of the CRLs: one pass over them per scrape."""
        families = {
            "this_update": GaugeMetricFamily(
                "pkiportal_crl_this_update_timestamp_seconds",
                "thisUpdate of the CA's newest CRL (Unix time).",
                labels=["ca"],
            ),
            "next_update": GaugeMetricFamily(
                "pkiportal_crl_next_update_timestamp_seconds",
                "nextUpdate of the CA's newest CRL (Unix time): alert well before it.",
                labels=["ca"],
            ),
            "number": GaugeMetricFamily(
                "pkiportal_crl_number", "cRLNumber of the CA's newest CRL.", labels=["ca"]
            ),
            "entries": GaugeMetricFamily(
                "pkiportal_crl_entries", "Entries in the CA's newest CRL.", labels=["ca"]
            ),
        }
        waiting = GaugeMetricFamily(
            "pkiportal_crl_unpublished_revocations",
            "Revocations not yet in a published CRL of the CA.",
            labels=["ca"],
        )
        for slug, status in authorities.items():
            values = {
                "this_update": _seconds(status["this_update"]),
                "next_update": _seconds(status["next_update"]),
                "number": status["number"],
                "entries": status["entries"],
            }
            for key, value in values.items():
                if value is not None:
                    families[key].add_metric([slug], float(value))
            waiting.add_metric([slug], status["unpublished_revocations"])
        yield from families.values()
        yield waiting

    def _authorities(self) -> Iterator[Metric]:
        ends = GaugeMetricFamily(
            "pkiportal_ca_not_after_timestamp_seconds",
            "notAfter of each CA's certificate (Unix time).",
            labels=["ca", "online", "default"],
        )
        for ca in CertificateAuthority.objects.ours().order_by("parent_id", "name"):
            ends.add_metric(
                [ca.slug, str(ca.is_online).lower(), str(ca.is_default).lower()],
                ca.certificate.not_valid_after_utc.timestamp(),
            )
        yield ends

    def _work_waiting(self) -> Iterator[Metric]:
        requests = GaugeMetricFamily(
            "pkiportal_requests_open",
            "Enrolment requests waiting for an officer (pending) or for their requester to "
            "download (approved).",
            labels=["state"],
        )
        counted = dict(
            CertificateRequest.objects.filter(
                state__in=[CertificateRequest.State.PENDING, CertificateRequest.State.APPROVED]
            )
            .values_list("state")
            .annotate(count=Count("pk"))
            .values_list("state", "count")
        )
        for state in (CertificateRequest.State.PENDING, CertificateRequest.State.APPROVED):
            requests.add_metric([state.value], counted.get(state.value, 0))
        yield requests
        recoveries = GaugeMetricFamily(
            "pkiportal_key_recoveries_open",
            "Key recoveries in progress, by state.",
            labels=["state"],
        )
        counted = dict(
            KeyRecoveryRequest.objects.filter(state__in=OPEN_STATES)
            .values_list("state")
            .annotate(count=Count("pk"))
            .values_list("state", "count")
        )
        for recovery_state in OPEN_STATES:
            recoveries.add_metric([recovery_state.value], counted.get(recovery_state.value, 0))
        yield recoveries

    def _certificates(self) -> Iterator[Metric]:
        valid = GaugeMetricFamily(
            "pkiportal_certificates_valid",
            "Certificates neither revoked nor expired, by template.",
            labels=["template"],
        )
        rows = (
            Certificate.objects.held(timezone.now())
            .filter(template__isnull=False)
            .values_list("template__slug")
            .annotate(count=Count("pk"))
            .values_list("template__slug", "count")
        )
        for slug, count in rows:
            valid.add_metric([slug], count)
        yield valid

    def _scheduled_runs(self) -> Iterator[Metric]:
        runs = GaugeMetricFamily(
            "pkiportal_scheduled_run_last_timestamp_seconds",
            "When each periodic task last finished a run (Unix time): beat's heartbeat.",
            labels=["task"],
        )
        for name, at in ScheduledRun.objects.values_list("name", "last_run_at"):
            runs.add_metric([name], at.timestamp())
        yield runs

    def _audit_forwarding(self, check: dict[str, Any]) -> Iterator[Metric]:
        """From /health/'s audit_shipping check, when PKIPORTAL_AUDIT_SYSLOG is set."""
        yield GaugeMetricFamily(
            "pkiportal_audit_syslog_unshipped_events",
            "Audit events not yet forwarded to the SIEM over syslog.",
            value=check["unshipped"],
        )
        last = check["last_event_at"]
        shipped = GaugeMetricFamily(
            "pkiportal_audit_syslog_last_shipped_event_timestamp_seconds",
            "When the newest audit event forwarded to the SIEM was recorded (Unix time).",
        )
        if last is not None:
            shipped.add_metric([], datetime.fromisoformat(last).timestamp())
        yield shipped


@never_cache
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    refused = health_view.refuse_bearer_over_plain_http(request, plain_text=True)
    if refused is not None:
        return refused  # the token over plain HTTP: 403, never compared
    if not health_view.may_see_details(request):
        try:
            signed_in = bool(request.user.is_authenticated)
        except Exception:  # the session lives in the database, which may be what is down
            signed_in = False
        response = HttpResponse(
            "Only staff, RA officers and a monitoring system with the token see metrics.\n",
            status=403 if signed_in else 401,
            content_type="text/plain; charset=utf-8",
        )
        if not signed_in:
            response["WWW-Authenticate"] = 'Bearer realm="pkiportal metrics"'
        return response
    # The classic text format: every Prometheus since 2.0 and other scrapers read it, and
    # these names need nothing newer.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PortalCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_PLAIN_0_0_4)
