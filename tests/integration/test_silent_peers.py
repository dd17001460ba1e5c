"""A mail server or a broker that accepts a connection and then never answers (a stuck
relay, a frozen or partitioned Redis) must not hold a request, /health/ or a worker.

Real peers: a socket that never greets for SMTP, a redis-server stopped with SIGSTOP.
Each call runs in a thread with a deadline, so a regression fails instead of hanging.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from django.conf import settings as django_settings

from enrollment import services
from enrollment.models import Certificate
from tests.enrollment.tools import issue, new_key
from tests.net import free_port

pytestmark = pytest.mark.django_db


def within(seconds: float, call: Callable[[], Any]) -> tuple[bool, Any]:
    """(finished in time, its result or exception)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # the caller looks at it
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return (not thread.is_alive(), outcome[0] if outcome else None)


@pytest.fixture
def silent_smtp() -> Iterator[int]:
    """A port that accepts connections and never sends the SMTP greeting."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


def test_the_shipped_settings_bound_every_wait():
    assert django_settings.EMAIL_TIMEOUT == 10
    options = django_settings.CELERY_BROKER_TRANSPORT_OPTIONS
    assert options["socket_timeout"] <= 5
    assert options["socket_connect_timeout"] <= 2
    soft, hard = django_settings.CELERY_TASK_SOFT_TIME_LIMIT, django_settings.CELERY_TASK_TIME_LIMIT
    assert soft < hard < options["visibility_timeout"]


def test_a_revocation_returns_when_the_mail_server_never_answers(
    hierarchy,
    template,
    employee,
    silent_smtp,
    settings,
    django_capture_on_commit_callbacks,
    caplog,
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", silent_smtp
    settings.EMAIL_TIMEOUT = 1
    certificate = issue(employee, template("smime-signing"), new_key())

    def give_up(signum: int, frame: object) -> None:
        raise AssertionError("the revocation waited on the silent mail server")

    previous = signal.signal(signal.SIGALRM, give_up)  # the database needs this thread
    signal.alarm(20)
    started = time.monotonic()
    try:
        with django_capture_on_commit_callbacks(execute=True):
            revoked = services.certificate_revoke(certificate=certificate, reason="superseded")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)

    assert time.monotonic() - started < 10
    assert revoked.status == Certificate.Status.REVOKED
    assert "Could not send" in caplog.text  # the mail timed out, logged, not raised


@pytest.fixture
def frozen_redis(tmp_path) -> Iterator[str]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    os.kill(process.pid, signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        process.wait(10)


def test_health_answers_fail_quickly_when_the_broker_is_frozen(frozen_redis, settings):
    from pkiportal import health

    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.CELERY_BROKER_URL = frozen_redis

    finished, result = within(20, health._broker)

    assert finished, "/health/'s broker check waited on the frozen broker"
    assert result["status"] == "fail"
