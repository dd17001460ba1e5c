"""A task whose run kills its worker is not redelivered for ever: a real worker, a real
redis-server of the test's own, PostgreSQL.

Tasks are acknowledged late and given back when their worker is lost (settings.py). Found
with this worker before pkiportal.celery.PortalTask: a pool process that died mid-task
(os._exit or SIGKILL) gave its message back at once, and the next process died on it, for
ever; a whole worker killed mid-task left its message in Redis, which handed it out again
after the visibility timeout (an hour), with the same end. Now the fourth redelivery is
dropped, logged and audited. A task killed by its hard time limit was and is acknowledged,
not given back.

Runs when PKIPORTAL_TEST_REDIS_URL is set and the database is PostgreSQL, like the other
integration tests (the worker audits into the test database).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from enrollment.models import AuditEvent
from pkiportal.celery import MAX_REDELIVERIES
from tests.integration.test_crl_publishing import (
    BASE_DIR,
    RedisServer,
    process_env,
    process_marks,
    start_worker,
    stop,
    wait_for,
)

pytestmark = process_marks("poison-messages")

DYING = "tests.integration.dying_tasks"


@pytest.fixture
def service_env(db, tmp_path, broker) -> dict[str, str]:
    return process_env(broker.url, tmp_path)


@pytest.fixture
def send(broker) -> Iterator:
    """Queue a task by name, as the portal would, through the test's own broker."""
    client = Celery("sender", broker=broker.url, set_as_current=False)
    yield lambda name, *args: client.send_task(f"{DYING}.{name}", args=args).id
    client.close()


@pytest.fixture
def runs(tmp_path) -> Path:
    path = tmp_path / "runs"
    path.touch()
    return path


def count(path: Path) -> int:
    return len(path.read_text().split())


def held_by_redis(broker: RedisServer) -> tuple[int, int]:
    """(messages waiting in the queue, messages delivered and not yet acknowledged)."""
    client = redis.Redis(port=broker.port)
    return client.llen("celery"), client.hlen("unacked")


def dropped(task_id: str) -> AuditEvent | None:
    return AuditEvent.objects.filter(action="task.drop", detail__task_id=task_id).first()


def test_a_task_that_kills_its_pool_process_is_dropped_after_three_redeliveries(
    service_env, broker, send, tmp_path
):
    """Both ways a pool process dies mid-task, side by side: os._exit as a crash would,
    SIGKILL as the kernel's OOM killer."""
    worker = start_worker(
        service_env, tmp_path / "worker.log", "--pool", "prefork", "--concurrency", "2", "-I", DYING
    )
    runs = {how: tmp_path / f"runs-{how}" for how in ("exit", "sigkill")}
    try:
        task_ids = {how: send("die", str(path), how) for how, path in runs.items()}
        wait_for(
            lambda: all(dropped(task_id) for task_id in task_ids.values()),
            90,
            "both messages to be dropped",
            0.3,
        )
        after = tmp_path / "after"
        send("note", str(after))
        wait_for(after.exists, 30, "the next task to run")
    finally:
        stop(worker)

    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert [count(path) for path in runs.values()] == [MAX_REDELIVERIES + 1] * 2, log
    assert log.count("WorkerLostError('Worker exited prematurely: exitcode 1") == 4
    assert log.count("WorkerLostError('Worker exited prematurely: signal 9 (SIGKILL)") == 4
    for task_id in task_ids.values():
        assert f"Task {DYING}.die[{task_id}] dropped: its message came back 4 times" in log
        event = dropped(task_id)
        assert event.outcome == AuditEvent.Outcome.FAILURE
        assert event.detail == {"task": f"{DYING}.die", "task_id": task_id, "redeliveries": 4}
    assert held_by_redis(broker) == (0, 0)


def test_a_task_that_kills_its_whole_worker_comes_back_after_the_visibility_timeout_until_dropped(
    service_env, broker, send, runs, tmp_path
):
    """The solo pool runs the task in the worker process itself: os._exit ends the worker,
    as the OOM killer ending a whole worker under systemd would."""
    task_id = send("die", str(runs), "exit")
    client = redis.Redis(port=broker.port)
    for run in range(1, MAX_REDELIVERIES + 2):
        crashed = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "pkiportal", "worker", "--pool", "solo",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-I", DYING],
            cwd=BASE_DIR, env=service_env, capture_output=True, timeout=90, check=False,
        )  # fmt: skip
        assert crashed.returncode == 1, crashed.stderr.decode(errors="replace")
        assert count(runs) == run
        # Not given back at once: Redis keeps it as delivered until the visibility timeout.
        assert held_by_redis(broker) == (0, 1)
        for tag in client.zrange("unacked_index", 0, -1):  # an hour passes for Redis
            client.zadd("unacked_index", {tag: time.time() - 3601})

    worker = start_worker(service_env, tmp_path / "worker.log", "--pool", "solo", "-I", DYING)
    try:
        wait_for(lambda: dropped(task_id) is not None, 60, "the message to be dropped", 0.3)
    finally:
        stop(worker)

    assert count(runs) == MAX_REDELIVERIES + 1
    assert held_by_redis(broker) == (0, 0)
    assert dropped(task_id).detail["redeliveries"] == 4


def test_a_task_past_its_hard_time_limit_is_killed_and_not_given_back(
    service_env, broker, send, runs, tmp_path
):
    """The hard limit ends the pool process too, but is a failure, not a lost worker: the
    message is acknowledged (task_acks_on_failure_or_timeout), so it cannot loop."""
    env = {**service_env, "CELERY_TASK_SOFT_TIME_LIMIT": "1", "CELERY_TASK_TIME_LIMIT": "2"}
    worker = start_worker(
        env, tmp_path / "worker.log", "--pool", "prefork", "--concurrency", "1", "-I", DYING
    )
    log_path = tmp_path / "worker.log"
    try:
        send("outlive_the_soft_time_limit", str(runs), 30)
        wait_for(lambda: b"Hard time limit (2s) exceeded" in log_path.read_bytes(), 30, "the kill")
        after = tmp_path / "after"
        send("note", str(after))
        wait_for(after.exists, 30, "the next task to run")
    finally:
        stop(worker)

    assert count(runs) == 1
    assert held_by_redis(broker) == (0, 0)
    assert not AuditEvent.objects.filter(action="task.drop").exists()
