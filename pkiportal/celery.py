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
from typing import Any, cast

from celery import Celery, Task
from celery.exceptions import Reject
from celery.signals import task_postrun
from kombu.connection import ConnectionPool

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pkiportal.settings")

logger = logging.getLogger(__name__)

# A message redelivered more often than this is dropped when it comes back once more: it
# has run MAX_REDELIVERIES + 1 times and its worker died each time.
MAX_REDELIVERIES = 3
# The marks must outlive a few visibility timeouts (an hour each), then go by themselves.
REDELIVERY_COUNT_SECONDS = 7 * 24 * 3600


class PortalTask(Task[Any, Any]):
    """Every task's base: counts the runs of a message that its worker did not survive,
    and drops the message past the limit.

    The broker flags a message it gives back as redelivered, but it gives back on a warm
    shutdown too the messages a worker had reserved and never started: only a delivery
    after one that started counts, so restarts during deployments drop nothing. The
    marks live in the broker, by task id: they share the message's fate.
    """

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        """Runs in the worker process before the task; Reject drops the message for good."""
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        deaths = record_start(self.app, task_id, redelivered=redelivered)
        if deaths is not None and deaths > MAX_REDELIVERIES:
            _report_dropped(self.name, task_id, deaths)
            raise Reject(f"redelivered {deaths} times", requeue=False)


def record_start(app: Celery, task_id: str, *, redelivered: bool) -> int | None:
    """Mark this task as started; for a redelivered message whose earlier delivery had
    started too (so its worker died running it), count one more such death and return
    the count. None when nothing was counted, or the broker cannot count.

    Any failure to count lets the task run: losing work to a broker hiccup is worse.
    """
    started, deaths = f"pkiportal:started:{task_id}", f"pkiportal:redelivered:{task_id}"
    try:
        # celery-types says ProducerPool; Celery.pool is a pools.connections[...] entry.
        pool = cast(ConnectionPool, app.pool)
        with pool.acquire(block=True, timeout=5) as connection:
            if connection.transport.driver_type != "redis":
                return None
            with connection.default_channel.conn_or_acquire() as client:
                before = client.set(started, 1, ex=REDELIVERY_COUNT_SECONDS, get=True)
                if not redelivered or before is None:
                    return None
                count, _ = (
                    client.pipeline()
                    .incr(deaths)
                    .expire(deaths, REDELIVERY_COUNT_SECONDS)
                    .execute()
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


@task_postrun.connect
def _write_audit_apart(**kwargs: Any) -> None:
    """Chain the audit events of attempts refused inside a task's transaction (a bulk
    revocation's batch: enrollment.audit.audit_record_apart) once the task has run,
    whatever its outcome. A worker has no request whose end (pkiportal.middleware.
    audit_apart) would write them: they would wait in the worker thread's memory for the
    next event written apart outside a transaction, a later unrelated one, or be lost
    with the process. Run inline inside a request's transaction, it leaves them to the
    request's end."""
    from enrollment.audit import write_apart

    write_apart()


app = Celery("pkiportal", task_cls=PortalTask)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
