"""A real Celery worker against the real Redis and PostgreSQL: revocation reaches the CRL.

Runs when PKIPORTAL_TEST_REDIS_URL is set and the database is PostgreSQL (.ci/run sets
both); worker and revoking processes cannot share SQLite's in-memory test database.
Both run as separate processes configured only through the environment, as in
production, so nothing here reconfigures Celery in-process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cryptography import x509

from django.test import Client

from enrollment import services
from enrollment.x509.keys import KeyAlgorithm
from tests.integration.test_crl_publishing import ca_key_env, process_env, process_marks

REDIS_URL = os.environ.get("PKIPORTAL_TEST_REDIS_URL", "")

pytestmark = process_marks("celery-worker")


@pytest.fixture
def service_env(hierarchy, settings, tmp_path) -> dict[str, str]:
    """The environment a production process would get, pointed at the test database."""
    return process_env(REDIS_URL, tmp_path, **ca_key_env(settings))


@pytest.fixture
def worker(service_env, settings, tmp_path):
    """A `celery worker` process consuming from Redis; waits until it is ready."""
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "pkiportal", "worker", "--pool", "solo",
             "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=Path(settings.BASE_DIR),
            env=service_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while b"ready." not in log_path.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("the worker did not start:\n" + log_path.read_text(errors="replace"))
        time.sleep(0.1)
    process.log_path = log_path
    yield process
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def served_serials(client: Client) -> set[int]:
    crl = x509.load_der_x509_crl(client.get("/pki/issuing.crl").content)
    return {entry.serial_number for entry in crl}


def test_a_revocation_reaches_the_served_crl_through_the_worker(
    worker, service_env, settings, hierarchy, template, employee
):
    certificate, _ = services.certificate_issue_with_server_key(
        template=template("smime-signing"),
        owner=employee,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password="a long pkcs12 password",
    )
    published_before = hierarchy.issuing.revocation_lists.count()

    revoke = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "revoke_cert",
            certificate.serial,
            "--reason",
            "keyCompromise",
        ],
        cwd=Path(settings.BASE_DIR),
        env=service_env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert revoke.returncode == 0, revoke.stderr.decode()

    client = Client()
    serial = int(certificate.serial, 16)
    deadline = time.monotonic() + 20
    while serial not in served_serials(client) and time.monotonic() < deadline:
        assert worker.poll() is None, "the worker died"
        time.sleep(0.2)
    log = worker.log_path.read_text(errors="replace")
    assert serial in served_serials(client), log
    assert "crl_publish_task" in log
    assert "succeeded" in log
    assert hierarchy.issuing.revocation_lists.count() == published_before + 1


def test_with_the_broker_down_a_revocation_still_commits(
    service_env, settings, hierarchy, template, employee
):
    """A lost broker delays the CRL; it never loses the revocation (DESIGN.md)."""
    certificate, _ = services.certificate_issue_with_server_key(
        template=template("smime-signing"),
        owner=employee,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password="a long pkcs12 password",
    )
    env = {**service_env, "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}  # nothing listens

    revoke = subprocess.run(
        [sys.executable, "manage.py", "revoke_cert", certificate.serial],
        cwd=Path(settings.BASE_DIR),
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )

    assert revoke.returncode == 0, revoke.stderr.decode()
    certificate.refresh_from_db()
    assert certificate.status == "revoked"
    assert b"next scheduled run" in revoke.stderr
