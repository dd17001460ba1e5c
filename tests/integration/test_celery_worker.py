"""A real Celery worker against the real Redis and PostgreSQL: revocation reaches the CRL.

Runs when PKIPORTAL_TEST_REDIS_URL is set and the database is PostgreSQL (.ci/run sets
both); a separate worker process cannot see SQLite's in-memory test database.
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

from django.db import connection
from django.test import Client

from enrollment import services
from enrollment.x509.keys import KeyAlgorithm
from pkiportal.celery import app as celery_app

REDIS_URL = os.environ.get("PKIPORTAL_TEST_REDIS_URL", "")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.xdist_group("celery-worker"),
    pytest.mark.skipif(not REDIS_URL, reason="PKIPORTAL_TEST_REDIS_URL is not set"),
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


@pytest.fixture
def worker(hierarchy, settings, tmp_path):
    """A `celery worker` process on the test database, consuming from Redis."""
    if connection.vendor != "postgresql":
        pytest.skip("a worker process needs a shared database server")
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": REDIS_URL,
        "PKIPORTAL_KEY_DIR": str(settings.PKIPORTAL_KEY_DIR),
        "PKIPORTAL_CA_KEY_PASSPHRASE": settings.PKIPORTAL_CA_KEY_PASSPHRASE,
        "PKIPORTAL_VAR_DIR": str(tmp_path / "worker-var"),
    }
    log = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "pkiportal",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=Path(settings.BASE_DIR),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    previous = {k: celery_app.conf[k] for k in ("broker_url", "task_always_eager")}
    celery_app.conf.update(broker_url=REDIS_URL, task_always_eager=False)
    settings.CELERY_TASK_ALWAYS_EAGER = False
    try:
        yield process
    finally:
        celery_app.conf.update(previous)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def served_serials(client: Client) -> set[int]:
    crl = x509.load_der_x509_crl(client.get("/pki/issuing.crl").content)
    return {entry.serial_number for entry in crl}


def test_a_revocation_reaches_the_served_crl_through_the_worker(
    worker, hierarchy, template, employee
):
    certificate, _ = services.certificate_issue_with_server_key(
        template=template("smime-signing"),
        owner=employee,
        key_algorithm=KeyAlgorithm.EC_P256,
        pkcs12_password="a long pkcs12 password",
    )
    client = Client()
    published_before = hierarchy.issuing.revocation_lists.count()

    services.certificate_revoke(certificate=certificate, reason="keyCompromise")

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if int(certificate.serial, 16) in served_serials(client):
            break
        assert worker.poll() is None, "the worker died"
        time.sleep(0.2)
    assert int(certificate.serial, 16) in served_serials(client)
    assert hierarchy.issuing.revocation_lists.count() == published_before + 1
