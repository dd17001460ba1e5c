"""Every portal task is acknowledged late, given back when its worker is lost, and bounded.

How a worker really behaves is in tests/integration/test_poison_messages.py; this guards,
without a broker, that no task slips out of those settings.
"""

from __future__ import annotations

import os

import pytest

from pkiportal.celery import PortalTask, app


def test_every_portal_task_is_given_back_on_a_lost_worker_and_bounded():
    app.loader.import_default_modules()
    portal_tasks = [task for name, task in app.tasks.items() if name.startswith("enrollment.")]

    assert len(portal_tasks) >= 6
    for task in portal_tasks:
        assert isinstance(task, PortalTask), task.name
        assert (task.acks_late, task.reject_on_worker_lost) == (True, True), task.name


@pytest.mark.skipif(
    not os.environ.get("PKIPORTAL_TEST_REDIS_URL"), reason="needs Redis (PKIPORTAL_TEST_REDIS_URL)"
)
def test_only_runs_the_worker_did_not_survive_count_towards_dropping():
    """A warm shutdown gives back, flagged redelivered, messages the worker reserved and
    never started: restarts while a message waits must not use up its allowance."""
    import uuid

    from celery import Celery

    from pkiportal.celery import MAX_REDELIVERIES, record_start

    broker = Celery(broker=os.environ["PKIPORTAL_TEST_REDIS_URL"])
    restored_first = str(uuid.uuid4())

    # Given back by restarts before it ever ran, then started: nothing to count.
    assert record_start(broker, restored_first, redelivered=True) is None
    # Each later delivery means the run before it died with its worker.
    deaths = [record_start(broker, restored_first, redelivered=True) for _ in range(4)]
    assert deaths == [1, 2, 3, 4]
    assert deaths[-1] > MAX_REDELIVERIES  # before_start drops it now

    fresh = str(uuid.uuid4())
    assert record_start(broker, fresh, redelivered=False) is None
    assert record_start(broker, fresh, redelivered=True) == 1
