"""Issue 5 end to end: real web, worker and broker processes on the real PostgreSQL.

Each test starts its own throwaway `redis-server` on a free port (so it can kill it, and
so nothing collides with tests/integration/test_celery_worker.py), a `celery worker` and,
where the API is exercised, `gunicorn`: every process is configured through the
environment only, as in production. Runs when PKIPORTAL_TEST_REDIS_URL is set and the
database is PostgreSQL, like the other integration tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from knox.models import AuthToken

from cryptography import x509

from django.db import connection, transaction

from enrollment import services
from enrollment.models import ApiToken, Certificate, CertificateAuthority
from tests.enrollment.tools import issue, openssl_serial
from tests.interop.test_openssl_verify import verify
from tests.net import free_port


def process_marks(group: str) -> list[pytest.MarkDecorator]:
    """The marks of a module whose tests start processes of their own (workers, beat,
    gunicorn): one xdist group each, Redis required, and committed rows those processes
    can read, restored afterwards for the tests that run after them."""
    return [
        pytest.mark.integration,
        pytest.mark.xdist_group(group),
        pytest.mark.skipif(
            not os.environ.get("PKIPORTAL_TEST_REDIS_URL"),
            reason="PKIPORTAL_TEST_REDIS_URL is not set",
        ),
        pytest.mark.django_db(transaction=True, serialized_rollback=True),
    ]


pytestmark = process_marks("crl-publishing")

BASE_DIR = Path(__file__).resolve().parents[2]


def wait_for(condition, timeout: float, what: str, interval: float = 0.1) -> float:
    """Poll until ``condition()`` is true; the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


class RedisServer:
    """A redis-server of our own: no persistence, so a kill loses every queued message."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "no",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(self._answers, 10, "redis-server to answer")

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        stop(self.process, signal.SIGKILL)


@pytest.fixture
def publish_delay(request) -> str:
    """PKIPORTAL_CRL_PUBLISH_DELAY_SECONDS: the default unless a test parametrizes it."""
    return getattr(request, "param", "2")


@pytest.fixture
def service_env(hierarchy, settings, tmp_path, broker, publish_delay) -> dict[str, str]:
    """What a production process gets, pointed at the test database and our broker."""
    return process_env(
        broker.url,
        tmp_path,
        **ca_key_env(settings),
        PKIPORTAL_BASE_URL="http://pki.example.com",
        PKIPORTAL_CRL_PUBLISH_DELAY_SECONDS=publish_delay,
    )


def process_env(broker_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a worker or beat started by a test: the test's database (so
    PostgreSQL only: SQLite's test database is not shared), its broker, its own var dir."""
    if connection.vendor != "postgresql":
        pytest.skip("separate processes need a shared database server")
    db = connection.settings_dict
    return {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": broker_url,
        "PKIPORTAL_VAR_DIR": str(tmp_path / "service-var"),
        **extra,
    }


def ca_key_env(settings) -> dict[str, str]:
    """Where such a process finds the test hierarchy's CA keys."""
    return {
        "PKIPORTAL_KEY_DIR": str(settings.PKIPORTAL_KEY_DIR),
        "PKIPORTAL_CA_KEY_PASSPHRASE": settings.PKIPORTAL_CA_KEY_PASSPHRASE,
    }


def start_worker(env: dict[str, str], log_path: Path, *pool: str) -> subprocess.Popen:
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "pkiportal", "worker", "--loglevel", "INFO",
             "--without-gossip", "--without-mingle", "--without-heartbeat",
             *(pool or ("--pool", "solo"))],
            cwd=BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    process.log_path = log_path  # type: ignore[attr-defined]

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail("the worker died:\n" + log_path.read_text(errors="replace"))
        return b"ready." in log_path.read_bytes()

    wait_for(ready, 60, "the worker to start")
    return process


class Supervisor:
    """Restarts the worker when it exits, as systemd's Restart=always would.

    Needed because celery 5.7.0 with kombu 5.7.0 can end the worker with "Unrecoverable
    error: AttributeError" when the Redis broker vanishes while the worker holds
    unacknowledged messages (our countdown tasks); see README, "Production".
    """

    def __init__(self, env: dict[str, str], directory: Path) -> None:
        self.env, self.directory = env, directory
        self.restarts = 0
        self.process = start_worker(env, directory / "worker-0.log")
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            if self.process.poll() is not None:
                self.restarts += 1
                self.process = start_worker(
                    self.env, self.directory / f"worker-{self.restarts}.log"
                )

    def logs(self) -> str:
        return "\n".join(
            path.read_text(errors="replace") for path in sorted(self.directory.glob("worker-*.log"))
        )

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=70)
        stop(self.process)


@pytest.fixture
def worker(service_env, tmp_path) -> Iterator[Supervisor]:
    supervisor = Supervisor(service_env, tmp_path)
    yield supervisor
    supervisor.stop()


@pytest.fixture
def web(service_env, tmp_path) -> Iterator[str]:
    """gunicorn serving the portal; yields its base URL."""
    port = free_port()
    log_path = tmp_path / "web.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "pkiportal.wsgi", "--bind", f"127.0.0.1:{port}",
             "--workers", "1", "--threads", "4", "--no-control-socket"],
            cwd=BASE_DIR,
            env=service_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            pytest.fail("gunicorn died:\n" + log_path.read_text(errors="replace"))
        try:
            return http(f"{base}/pki/issuing.crt")[0] == 200
        except OSError:
            return False

    wait_for(up, 60, "gunicorn to serve")
    yield base
    stop(process)


def http(url: str, *, token: str = "", body: bytes | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Token {token}"
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def api_revoke(base: str, token: str, certificate: Certificate, reason: str) -> int:
    body = f'{{"reason": "{reason}"}}'.encode()
    url = f"{base}/api/v1/certificates/{certificate.serial}/revoke/"
    return http(url, token=token, body=body)[0]


def served_serials(base: str) -> set[int]:
    status, der = http(f"{base}/pki/issuing.crl")
    assert status == 200
    return {entry.serial_number for entry in x509.load_der_x509_crl(der)}


@pytest.fixture
def officer_token(officer) -> str:
    token, clear = AuthToken.objects.create(user=officer)
    # Minted with the second factor, as an officer's must be for officer actions.
    ApiToken.objects.filter(auth_token=token).update(second_factor=True)
    return clear


@pytest.fixture
def certificates(hierarchy, template, employee, ec_p256_key):
    return lambda n: [issue(employee, template("smime-signing"), ec_p256_key) for _ in range(n)]


def test_an_api_revocation_is_on_the_served_crl_within_five_seconds(
    web, worker, officer_token, certificates, hierarchy, openssl
):
    """Default coalescing delay (2 s), real worker: openssl sees the serial revoked."""
    (certificate,) = certificates(1)
    serial = int(certificate.serial, 16)

    started = time.monotonic()
    assert api_revoke(web, officer_token, certificate, "keyCompromise") == 200
    wait_for(lambda: serial in served_serials(web), 5, "the serial on the served CRL")
    elapsed = time.monotonic() - started

    assert elapsed < 5
    _status, der = http(f"{web}/pki/issuing.crl")
    openssl.write("issuing.crl", der)
    openssl.write_pem("issuing.pem", hierarchy.issuing.certificate)
    text = openssl.run("crl", "-inform", "DER", "-in", "issuing.crl", "-noout", "-text")
    assert openssl_serial(serial) in text.stdout.decode()
    assert "Key Compromise" in text.stdout.decode()
    checked = openssl.run(
        "crl", "-inform", "DER", "-in", "issuing.crl", "-noout", "-CAfile", "issuing.pem"
    )
    assert b"verify OK" in checked.stdout + checked.stderr
    openssl.run("crl", "-inform", "DER", "-in", "issuing.crl", "-out", "issuing-pem.crl")
    openssl.write_der("leaf.der", certificate.certificate)
    openssl.run("x509", "-inform", "DER", "-in", "leaf.der", "-out", "leaf.pem")
    ok, output = verify(
        openssl, hierarchy.root, hierarchy.issuing, "leaf.pem", "-crl_check",
        "-CRLfile", "issuing-pem.crl",
    )  # fmt: skip
    assert not ok
    assert "certificate revoked" in output


@pytest.mark.parametrize("publish_delay", ["0.5"], indirect=True)
def test_every_committed_revocation_survives_the_broker_dying_mid_burst(
    web, worker, broker, officer_token, certificates, hierarchy
):
    burst = certificates(24)
    statuses = []
    for index, certificate in enumerate(burst):
        if index == 8:
            broker.kill()  # every message still queued in it is gone
        if index == 16:
            broker.start()  # same port: web and worker reconnect
        statuses.append(api_revoke(web, officer_token, certificate, "superseded"))

    # The person revoking got success every time, broker or not.
    assert statuses == [200] * len(burst)
    expected = {int(certificate.serial, 16) for certificate in burst}
    try:
        wait_for(lambda: expected <= served_serials(web), 25, "every revocation on the CRL", 0.3)
    except pytest.fail.Exception:
        print(worker.logs())
        raise
    assert Certificate.objects.filter(pk__in=[c.pk for c in burst], status="revoked").count() == (
        len(burst)
    )
    # Coalesced: far fewer CRLs than revocations.
    assert hierarchy.issuing.revocation_lists.count() < len(burst) // 2


def pool_children(parent: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


def test_a_worker_killed_mid_task_still_converges(service_env, tmp_path, certificates, hierarchy):
    """acks_late + reject_on_worker_lost: the message goes back and a new child runs it."""
    worker = start_worker(
        service_env, tmp_path / "worker.log", "--pool", "prefork", "--concurrency", "1"
    )
    (certificate,) = certificates(1)
    serial = int(certificate.serial, 16)
    holding, release = threading.Event(), threading.Event()

    def hold_the_ca_lock() -> None:
        """Keep the CA row locked, as a long CRL build would: the task waits on it."""
        try:
            with transaction.atomic():
                CertificateAuthority.objects.select_for_update(no_key=True).get(slug="issuing")
                holding.set()
                release.wait(timeout=60)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_ca_lock)
    holder.start()
    try:
        assert holding.wait(timeout=10)
        revoke = subprocess.run(
            [sys.executable, "manage.py", "revoke_cert", certificate.serial, "--reason",
             "keyCompromise"],
            cwd=BASE_DIR, env=service_env, capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        assert revoke.returncode == 0, revoke.stderr.decode()

        def task_waits_on_the_lock() -> bool:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                return cursor.fetchone()[0] > 0

        wait_for(task_waits_on_the_lock, 20, "the task to block on the CA lock", 0.2)
        children = pool_children(worker.pid)
        assert len(children) == 1
        os.kill(children[0], signal.SIGKILL)
    finally:
        release.set()
        holder.join(timeout=30)

    def listed() -> bool:
        crl = CertificateAuthority.objects.get(slug="issuing").latest_crl()
        parsed = x509.load_der_x509_crl(bytes(type(crl).objects.get(pk=crl.pk).der))
        return parsed.get_revoked_certificate_by_serial_number(serial) is not None

    try:
        wait_for(listed, 25, "the CRL to list the serial after the kill", 0.3)
        log = worker.log_path.read_text(errors="replace")  # type: ignore[attr-defined]
        assert "WorkerLostError" in log or "SIGKILL" in log, log
    finally:
        stop(worker)
    assert services.crl_publish_if_due(ca=hierarchy.issuing) is None  # nothing left waiting
