"""Tasks that end the process running them, for test_poison_messages.py only.

The test's worker imports this module (`celery -A pkiportal worker -I
tests.integration.dying_tasks`), so these tasks get the portal's task base and settings
(acknowledged late, given back when the worker is lost, time limits), as its own do.
Each run appends its process id to the file `runs`, so the test counts the runs.
"""

from __future__ import annotations

import os
import signal
import time

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded


def _note(runs: str) -> None:
    with open(runs, "a") as file:
        file.write(f"{os.getpid()}\n")


@shared_task
def die(runs: str, how: str) -> None:
    """End this process mid-task: "exit" as a crash would, "sigkill" as the OOM killer."""
    _note(runs)
    if how == "exit":
        os._exit(1)
    os.kill(os.getpid(), signal.SIGKILL)


@shared_task
def outlive_the_soft_time_limit(runs: str, seconds: float) -> None:
    """A task stuck where the soft limit cannot stop it: the hard limit kills its process."""
    _note(runs)
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        time.sleep(seconds)


@shared_task
def note(runs: str) -> None:
    """A harmless task: the worker still serves the queue."""
    _note(runs)
