"""A real `celery beat` and worker on Redis and PostgreSQL: /health/ sees beat alive, then
stopped, by the CRL watchdog's last run.

Runs when PKIPORTAL_TEST_REDIS_URL is set and the database is PostgreSQL, like the other
integration tests; its own redis-server, so nothing collides with them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from django.utils import timezone

from enrollment import keystore, services
from enrollment.models import ScheduledRun
from tests.conftest import client_for
from tests.integration.test_crl_publishing import (
    BASE_DIR,
    ca_key_env,
    process_env,
    process_marks,
    start_worker,
    stop,
    wait_for,
)

pytestmark = process_marks("beat")


@pytest.fixture
def service_env(hierarchy, settings, tmp_path, broker) -> dict[str, str]:
    return process_env(
        broker.url, tmp_path, **ca_key_env(settings), PKIPORTAL_CRL_WATCHDOG_MINUTES="1"
    )


def overdue_schedule(path: Path) -> None:
    """Beat's schedule file as a beat that was down for an hour left it: the watchdog is
    overdue, so the new beat sends it at once instead of one period after starting."""
    from celery.beat import PersistentScheduler

    from pkiportal.celery import app

    path.parent.mkdir(parents=True, exist_ok=True)
    scheduler = PersistentScheduler(app=app, schedule_filename=str(path))
    scheduler.schedule["crl-watchdog"].last_run_at = timezone.now() - timedelta(hours=1)
    scheduler.close()


def start_beat(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "pkiportal", "beat", "--loglevel", "INFO"],
            cwd=BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def test_health_sees_beat_run_the_watchdog_and_fails_once_beat_is_gone(
    service_env, hierarchy, broker, officer, settings, tmp_path, time_machine
):
    services.crl_publish(
        ca=hierarchy.root,
        offline_key=keystore.OfflineKey(hierarchy.root_key_path, hierarchy.root_passphrase),
    )
    overdue_schedule(Path(service_env["PKIPORTAL_VAR_DIR"]) / "celerybeat-schedule")
    worker = start_worker(service_env, tmp_path / "worker.log")
    beat = start_beat(service_env, tmp_path / "beat.log")
    try:
        assert not ScheduledRun.objects.exists()
        wait_for(ScheduledRun.objects.exists, 30, "beat to have the worker run the watchdog")
    finally:
        stop(beat, signal.SIGKILL)  # beat dies and nobody restarts it
    last_run = ScheduledRun.objects.get(name="crl-watchdog").last_run_at
    assert "Sending due task crl-watchdog" in (tmp_path / "beat.log").read_text()

    # This process now answers /health/ as a web process of that portal would.
    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.CELERY_BROKER_URL = broker.url
    settings.PKIPORTAL_CRL_WATCHDOG_MINUTES = 1
    officer_client = client_for(officer)
    try:
        response = officer_client.get("/health/")
        # The scheduler's check only: whether a loaded worker answers /health/'s ping
        # within its second is another test's business.
        assert response.json()["checks"]["scheduler"] == {
            "status": "ok",
            "last_run": last_run.isoformat(),
            "every_minutes": 1,
        }

        time_machine.move_to(last_run + timedelta(minutes=3, seconds=30))
        response = officer_client.get("/health/")
    finally:
        stop(worker)

    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["scheduler"]["status"] == "fail"
    assert checks["scheduler"]["last_run"] == last_run.isoformat()
    assert (
        f"last ran at {last_run:%Y-%m-%d %H:%M} UTC, 3 minutes ago"
        in (checks["scheduler"]["error"])
    )
    assert ScheduledRun.objects.get().last_run_at == last_run  # nothing ran since
