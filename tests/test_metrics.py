"""/metrics: /health/'s knowledge as Prometheus metrics, for the same readers."""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from django.db import OperationalError
from django.utils import timezone

from enrollment import keystore, recovery, services
from enrollment.models import CertificateRequest, ScheduledRun
from enrollment.x509.keys import KeyAlgorithm, generate_private_key
from tests.conftest import client_for
from tests.enrollment.tools import issue

pytestmark = pytest.mark.django_db

MONITORING_TOKEN = "m" * 40


@pytest.fixture
def signed_root(hierarchy):
    return services.crl_publish(
        ca=hierarchy.root,
        offline_key=keystore.OfflineKey(hierarchy.root_key_path, hierarchy.root_passphrase),
    )


@pytest.fixture
def scrape(anonymous_client, settings):
    settings.PKIPORTAL_HEALTH_TOKEN = MONITORING_TOKEN

    def get() -> str:
        response = anonymous_client.get(
            "/metrics", headers={"Authorization": f"Bearer {MONITORING_TOKEN}"}, secure=True
        )
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "no-cache" in response["Cache-Control"]
        return response.content.decode()

    return get


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_scrape_reports_crls_cas_checks_and_beat(scrape, signed_root, hierarchy):
    ScheduledRun.objects.create(name="crl-watchdog", last_run_at=timezone.now())

    found = samples(scrape())

    issuing_crl = hierarchy.issuing.latest_crl()
    assert found[("pkiportal_crl_next_update_timestamp_seconds", (("ca", "issuing"),))] == (
        issuing_crl.next_update.timestamp()
    )
    assert found[("pkiportal_crl_number", (("ca", "root"),))] == signed_root.number
    assert found[("pkiportal_crl_unpublished_revocations", (("ca", "issuing"),))] == 0
    end = hierarchy.issuing.certificate.not_valid_after_utc.timestamp()
    key = (("ca", "issuing"), ("default", "true"), ("online", "true"))
    assert found[("pkiportal_ca_not_after_timestamp_seconds", key)] == end
    assert found[("pkiportal_check_status", (("check", "database"),))] == 0
    assert found[("pkiportal_check_status", (("check", "crl"),))] == 0
    runs = found[("pkiportal_scheduled_run_last_timestamp_seconds", (("task", "crl-watchdog"),))]
    assert abs(runs - timezone.now().timestamp()) < 60


def test_certificates_requests_and_recoveries_are_counted(
    scrape, signed_root, template, employee, colleague, officer
):
    signing = template("smime-signing")
    for owner in (employee, colleague):
        issue(owner, signing, generate_private_key(KeyAlgorithm.EC_P256))
    revoked = issue(colleague, signing, generate_private_key(KeyAlgorithm.EC_P256))
    services.certificate_revoke(certificate=revoked, reason="keyCompromise")
    CertificateRequest.objects.create(
        requester=employee,
        template=signing,
        state=CertificateRequest.State.PENDING,
        key_source="server",
        key_algorithm="ec-p256",
    )

    found = samples(scrape())

    assert found[("pkiportal_certificates_valid", (("template", "smime-signing"),))] == 2
    assert ("pkiportal_certificates_valid", (("template", "smime-encryption"),)) not in found
    assert found[("pkiportal_requests_open", (("state", "pending"),))] == 1
    assert found[("pkiportal_requests_open", (("state", "approved"),))] == 0
    # The revocation's CRL is published after the commit, which a test never reaches.
    assert found[("pkiportal_crl_unpublished_revocations", (("ca", "issuing"),))] == 1
    for state in recovery.OPEN_STATES:
        assert found[("pkiportal_key_recoveries_open", (("state", state.value),))] == 0


def test_an_expired_crl_shows_as_a_failed_check_and_a_past_next_update(
    scrape, signed_root, time_machine
):
    time_machine.move_to(signed_root.next_update + timedelta(seconds=1))

    found = samples(scrape())

    assert found[("pkiportal_check_status", (("check", "crl"),))] == 2
    past = found[("pkiportal_crl_next_update_timestamp_seconds", (("ca", "root"),))]
    assert past < timezone.now().timestamp()


@pytest.mark.interop
def test_promtool_accepts_the_exposition(scrape, signed_root, template, employee):
    """Prometheus' own linter, from Debian's prometheus package (.ci/run installs it)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    issue(employee, template("smime-signing"), generate_private_key(KeyAlgorithm.EC_P256))

    checked = subprocess.run(
        [promtool, "check", "metrics"], input=scrape(), capture_output=True, text=True, timeout=30
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""  # no lint warnings either


def test_with_the_database_down_every_check_reads_as_failed(scrape, signed_root, monkeypatch):
    from pkiportal import health as health_view

    class Broken:
        def cursor(self):
            raise OperationalError("connection refused")

    monkeypatch.setattr(health_view, "connection", Broken())

    found = samples(scrape())

    checks = {dict(labels)["check"]: value for (name, labels), value in found.items()
              if name == "pkiportal_check_status"}  # fmt: skip
    assert checks["database"] == 2
    assert checks["issuing_ca"] == 2
    assert checks["leavers"] == 2
    assert checks["crl"] == 2
    assert checks["mail_domains"] == 2
    assert not any(name.startswith("pkiportal_crl_number") for name, _labels in found)


# --- who may scrape ----------------------------------------------------------------------


@pytest.mark.parametrize("who", ["officer", "admin_user"])
def test_officers_and_staff_may_read_the_metrics(request, who, signed_root):
    response = client_for(request.getfixturevalue(who)).get("/metrics")

    assert response.status_code == 200
    assert b"pkiportal_check_status" in response.content


@pytest.mark.parametrize("who", ["employee", "colleague"])
def test_people_without_a_role_are_refused(request, who, signed_root):
    response = client_for(request.getfixturevalue(who)).get("/metrics")

    assert response.status_code == 403
    assert b"pkiportal_" not in response.content


@pytest.mark.parametrize(
    "header", [None, f"Bearer {MONITORING_TOKEN}x", f"Token {MONITORING_TOKEN}", "Bearer "]
)
def test_anonymous_callers_and_wrong_tokens_are_asked_for_the_token(
    anonymous_client, signed_root, settings, header
):
    settings.PKIPORTAL_HEALTH_TOKEN = MONITORING_TOKEN
    headers = {"Authorization": header} if header else {}

    response = anonymous_client.get("/metrics", headers=headers, secure=True)

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"pkiportal_" not in response.content


def test_without_a_configured_token_no_bearer_is_let_in(anonymous_client, signed_root, settings):
    settings.PKIPORTAL_HEALTH_TOKEN = ""

    response = anonymous_client.get("/metrics", headers={"Authorization": "Bearer "}, secure=True)

    assert response.status_code == 401


def test_a_scrape_over_plain_http_is_refused_before_the_token_is_looked_at(
    anonymous_client, signed_root, settings
):
    settings.PKIPORTAL_HEALTH_TOKEN = MONITORING_TOKEN

    right = anonymous_client.get(
        "/metrics", headers={"Authorization": f"Bearer {MONITORING_TOKEN}"}
    )
    wrong = anonymous_client.get("/metrics", headers={"Authorization": "Bearer wrong"})

    for response in (right, wrong):
        assert response.status_code == 403
        assert response["Content-Type"] == "text/plain; charset=utf-8"
        assert response.content == right.content
        assert b"over HTTPS only" in response.content
    settings.PKIPORTAL_MONITORING_ALLOW_HTTP = True
    allowed = anonymous_client.get(
        "/metrics", headers={"Authorization": f"Bearer {MONITORING_TOKEN}"}
    )
    assert allowed.status_code == 200
    assert b"pkiportal_check_status" in allowed.content


def test_the_metrics_take_no_post(officer, signed_root):
    assert client_for(officer).post("/metrics").status_code == 405
