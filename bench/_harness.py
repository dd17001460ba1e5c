"""What the benchmarks share: loopback ports, subprocesses, the gunicorn they start, and
the CA hierarchy they create.

Each benchmark owns its database and its measurements; this module runs things and cleans
up after them, so they start and stop gunicorn, and set up their CAs, the same way.
"""

from __future__ import annotations

import http.client
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START_TIMEOUT = 60.0


def _postgresql_server() -> dict[str, str]:
    """The PostgreSQL server the benchmarks create their databases on: 127.0.0.1:5432 as
    ``postgres`` (trust authentication, as on CI), or BENCH_PG_URL's
    (``postgres://user[:password]@host:port``: tests/test_bench_smoke.py points it at the
    test suite's server). The variable is not PKIPORTAL_*, so the portal and bench
    processes a benchmark starts see it too."""
    url = urlsplit(os.environ.get("BENCH_PG_URL", "") or f"postgres://postgres@{HOST}:5432")
    if url.password:
        os.environ["PGPASSWORD"] = url.password  # for psql, createdb, dropdb and psycopg
    return {
        "host": url.hostname or HOST,
        "port": str(url.port or 5432),
        "user": url.username or "postgres",
        "password": url.password or "",
    }


PG_SERVER = _postgresql_server()
PG = ["-h", PG_SERVER["host"], "-p", PG_SERVER["port"], "-U", PG_SERVER["user"]]


def database_name(name: str) -> str:
    """A benchmark's own database: ``name``, plus BENCH_DATABASE_SUFFIX when set, so that
    runs side by side (the smoke tests under xdist, a developer's run) never share one."""
    suffix = os.environ.get("BENCH_DATABASE_SUFFIX", "")
    if not re.fullmatch(r"[a-z0-9_]*", suffix):
        raise SystemExit(f"BENCH_DATABASE_SUFFIX={suffix!r}: lower-case letters, digits and _")
    return name + suffix


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def run(
    args: Sequence[str | Path],
    env: dict[str, str] | None = None,
    *,
    timeout: int = 1800,
    check: bool = True,
    cwd: Path = ROOT,
) -> str:
    """Run a command from the project root (or ``cwd``); with ``check``, a failure ends
    the benchmark showing what the command printed."""
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        command = " ".join(map(str, args))
        raise SystemExit(f"{command} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def database_server_url() -> str:
    """PG_SERVER as a URL without a database name."""
    user = quote(PG_SERVER["user"], safe="")
    if PG_SERVER["password"]:
        user += ":" + quote(PG_SERVER["password"], safe="")
    return f"postgres://{user}@{PG_SERVER['host']}:{PG_SERVER['port']}"


def portal_environment(database: str, var_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a portal process on a throwaway PostgreSQL database.

    The caller's PKIPORTAL_* and CELERY_* variables are dropped so a developer's own
    settings cannot change what is measured; connections persist, as in production.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PKIPORTAL_", "CELERY_"))}
    env.update(
        {
            "DATABASE_URL": f"{database_server_url()}/{database}?conn_max_age=600",
            "DJANGO_SETTINGS_MODULE": "pkiportal.settings",
            "PYTHONPATH": str(ROOT),
            "SECRET_KEY": secrets.token_urlsafe(40),
            "DEBUG": "false",
            "ALLOWED_HOSTS": f"{HOST},localhost,testserver",
            "LOG_LEVEL": "WARNING",
            "PKIPORTAL_VAR_DIR": str(var_dir),
            "PKIPORTAL_KEY_DIR": str(var_dir / "keys"),
            "PKIPORTAL_CA_KEY_PASSPHRASE": secrets.token_urlsafe(24),
            "PKIPORTAL_BASE_URL": "http://127.0.0.1:8000",
            **extra,
        }
    )
    return env


def start_gunicorn(
    env: dict[str, str],
    port: int,
    *,
    workers: int = 2,
    probe: str = "/pki/issuing.crt",
    log: Path | None = None,
    cwd: Path = ROOT,
    app: str = "pkiportal.wsgi",
) -> subprocess.Popen[bytes]:
    """gunicorn (sync workers) on the loopback, in its own process group, serving the
    portal in ``cwd`` (or another WSGI ``app``); returns once ``probe`` answers 200."""
    process = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", app,
            "--bind", f"{HOST}:{port}",
            "--workers", str(workers),
            "--log-level", "warning",
            "--timeout", "120",
            "--no-control-socket",  # gunicorn 27's default ~/.gunicorn/gunicorn.ctl is shared
        ],
        cwd=cwd,
        env=env,
        stdout=log.open("wb") if log is not None else None,
        stderr=subprocess.STDOUT if log is not None else None,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            shown = log.read_text(errors="replace") if log is not None else ""
            raise SystemExit(f"gunicorn exited ({process.returncode}); port {port} taken?\n{shown}")
        try:
            connection = http.client.HTTPConnection(HOST, port, timeout=2)
            connection.request("GET", probe)
            if connection.getresponse().status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.2)
    stop(process)
    raise SystemExit(f"gunicorn did not answer {probe} within {START_TIMEOUT:.0f} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started in its own group (gunicorn's master and workers together)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def create_hierarchy(
    var_dir: Path, issuing: str = "ec-p256", *, organization_name: str = "Bench Org"
) -> tuple[Any, Any]:
    """In a process Django is set up in: an EC P-384 root, its key written under
    ``var_dir/offline``, and an online issuing CA with an ``issuing`` key (a KeyAlgorithm
    value). Returns both CertificateAuthority rows."""
    from enrollment import services
    from enrollment.x509.keys import KeyAlgorithm

    (var_dir / "offline").mkdir(parents=True, exist_ok=True)
    return services.pki_create(
        root=services.CaSpec("Bench Root CA", "root", KeyAlgorithm.EC_P384, 3650),
        issuing=services.CaSpec("Bench Issuing CA", "issuing", KeyAlgorithm(issuing), 1825),
        base_url="http://127.0.0.1:8000",
        root_key_path=var_dir / "offline" / "root-key.pem",
        root_passphrase=b"bench root passphrase",
        organization_name=organization_name,
        country_name="GB",
    )


def memory_hierarchy(issuing: Any, *, sign_ocsp: bool = False) -> tuple[Any, Any, Any]:
    """Without Django or a database: an EC P-384 root and an issuing CA with an
    ``issuing`` key (a KeyAlgorithm), named as create_hierarchy() names them, for the
    benchmarks' bare-library runs. Returns the root's and the issuing CA's certificates
    and the issuing CA's private key."""
    from enrollment.x509 import builder, keys

    root_key = keys.generate_private_key(keys.KeyAlgorithm.EC_P384)
    root = builder.build_root_ca(
        key=root_key, common_name="Bench Root", organization_name="Bench Org", country_name="GB"
    )
    issuing_key = keys.generate_private_key(issuing)
    certificate = builder.build_issuing_ca(
        public_key=issuing_key.public_key(),
        issuer_certificate=root,
        issuer_key=root_key,
        common_name="Bench Issuing",
        organization_name="Bench Org",
        country_name="GB",
        crl_url="http://127.0.0.1:8000/pki/root.crl",
        ca_issuers_url="http://127.0.0.1:8000/pki/root.crt",
        sign_ocsp=sign_ocsp,
    )
    return root, certificate, issuing_key


class AuditedWrites:
    """A concurrent audited write in a loop, as an enrolment makes one: its own connection,
    one audit event per transaction. ``waits`` holds how long each took; a benchmark reads
    the slice written while its own work ran. Inside Django (after django.setup())."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        from django.db import connection, transaction

        from enrollment.audit import audit_record

        try:
            while not self._stop.is_set():
                started = time.monotonic()
                with transaction.atomic():
                    audit_record(action="bench.ping", detail={"n": len(self.waits)})
                self.waits.append(time.monotonic() - started)
                time.sleep(0.005)
        finally:
            connection.close()

    def __enter__(self) -> AuditedWrites:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
