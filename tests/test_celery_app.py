"""Every portal task is acknowledged late, given back when its worker is lost, and bounded.

How a worker really behaves is in tests/integration/test_poison_messages.py; this guards,
without a broker, that no task slips out of those settings.
"""

from __future__ import annotations

from pkiportal.celery import PortalTask, app


def test_every_portal_task_is_given_back_on_a_lost_worker_and_bounded():
    app.loader.import_default_modules()
    portal_tasks = [task for name, task in app.tasks.items() if name.startswith("enrollment.")]

    assert len(portal_tasks) >= 6
    for task in portal_tasks:
        assert isinstance(task, PortalTask), task.name
        assert (task.acks_late, task.reject_on_worker_lost) == (True, True), task.name
