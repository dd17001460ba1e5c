"""The Celery app for `celery -A pkiportal worker|beat`.

Settings come from Django's settings under the CELERY_ namespace. Only JSON crosses the
broker: tasks take ids, never pickled objects.

Tasks are acknowledged late and given back to the broker when their worker dies
(settings.py), so a crash never loses one. The price: a message whose run kills its
worker (a pool process ended by the OOM killer, a segfault, os._exit) came back for ever,
at once when only the pool process died, an hour later (the visibility timeout) when the
whole worker did. PortalTask, every task's base, drops such a message after
MAX_REDELIVERIES, with an error in the log and an audit event.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pkiportal.settings")

logger = logging.getLogger(__name__)

# A message redelivered more often than this is dropped when it comes back once more: it
# has run MAX_REDELIVERIES + 1 times and its worker died each time.
MAX_REDELIVERIES = 3
# The count must outlive a few visibility timeouts (an hour each), then go by itself.
REDELIVERY_COUNT_SECONDS = 7 * 24 * 3600


class PortalTask(Task):
    """Every task's base: counts redeliveries of a message and drops it past the limit.

    Only a redelivered message is counted (the broker flags it), so a normal run costs
    nothing. The count lives in the broker, by task id: it shares the message's fate.
    """

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        """Runs in the worker process before the task; Reject drops the message for good."""
        if not (self.request.delivery_info or {}).get("redelivered"):
            return
        deliveries = redelivery_count(self.app, task_id)
        if deliveries is not None and deliveries > MAX_REDELIVERIES:
            _report_dropped(self.name, task_id, deliveries)
            raise Reject(f"redelivered {deliveries} times", requeue=False)


def redelivery_count(app: Celery, task_id: str) -> int | None:
    """Count one more redelivery of this task's message; None if the broker cannot count.

    Any failure to count lets the task run: losing work to a broker hiccup is worse.
    """
    key = f"pkiportal:redelivered:{task_id}"
    try:
        with app.pool.acquire(block=True, timeout=5) as connection:
            if connection.transport.driver_type != "redis":
                return None
            with connection.default_channel.conn_or_acquire() as client:
                count, _ = (
                    client.pipeline().incr(key).expire(key, REDELIVERY_COUNT_SECONDS).execute()
                )
    except Exception:
        logger.warning("Could not count the redeliveries of task %s.", task_id, exc_info=True)
        return None
    return int(count)


def _report_dropped(name: str, task_id: str, deliveries: int) -> None:
    logger.error(
        "Task %s[%s] dropped: its message came back %d times after the worker running it "
        "died (killed, out of memory, crashed). Find why in the worker log before it.",
        name,
        task_id,
        deliveries,
    )
    try:
        from enrollment import services

        services.task_drop_record(name=name, task_id=task_id, deliveries=deliveries)
    except Exception:
        logger.exception("Could not audit dropping task %s[%s].", name, task_id)


app = Celery("pkiportal", task_cls=PortalTask)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
