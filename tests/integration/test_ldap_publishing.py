"""Issuance and revocation reach the LDAP directory through a real worker.

The issuing and revoking commands run as processes of their own, configured only by the
environment as in production, so their transactions commit and queue
ldap_publish_task on a throwaway Redis; a `celery worker` writes to the session's slapd
(tests/slapd.py), and ldapsearch reads what it wrote.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from enrollment.models import Certificate
from tests.enrollment.tools import cryptography_csr, new_key
from tests.integration.test_crl_publishing import (
    BASE_DIR,
    ca_key_env,
    process_env,
    process_marks,
    start_worker,
    stop,
)
from tests.slapd import PEOPLE, SERVICE_DN, SERVICE_PASSWORD

pytestmark = process_marks("ldap-publishing")


def run(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR, env=env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def wait_for(condition, what: str, worker) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}; worker log:\n" + worker.log_path.read_text(errors="replace"))
        assert worker.poll() is None, "the worker died"
        time.sleep(0.2)


def test_the_worker_publishes_on_issuance_and_withdraws_on_revocation(
    hierarchy, template, employee, settings, tmp_path, broker, slapd
):
    slapd.reset_people()
    dn = slapd.add_person("alice", employee.email)
    secret = tmp_path / "ldap-bind"
    secret.write_text(SERVICE_PASSWORD + "\n")
    env = process_env(
        broker.url,
        tmp_path,
        **ca_key_env(settings),
        PKIPORTAL_LDAP_PUBLISH_URI=slapd.uri,
        PKIPORTAL_LDAP_PUBLISH_BIND_DN=SERVICE_DN,
        PKIPORTAL_LDAP_PUBLISH_BIND_PASSWORD_FILE=str(secret),
        PKIPORTAL_LDAP_PUBLISH_SEARCH_BASE=PEOPLE,
    )
    csr = tmp_path / "alice.csr"
    csr.write_bytes(cryptography_csr(new_key()).public_bytes(serialization.Encoding.PEM))
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        pem = run(env, "issue_cert", str(csr), "--user", "alice", "--template", "smime-dual-use")
        issued = x509.load_pem_x509_certificate(pem.encode())
        certificate = Certificate.objects.get(serial=format(issued.serial_number, "x"))
        wait_for(lambda: slapd.values(dn) == [bytes(certificate.der)], "never published", worker)

        run(env, "revoke_cert", certificate.serial, "--reason", "superseded")
        wait_for(lambda: slapd.values(dn) == [], "never withdrawn", worker)
    finally:
        stop(worker)
    log = worker.log_path.read_text(errors="replace")
    assert log.count("ldap_publish_task") >= 2
    assert SERVICE_PASSWORD not in log
