"""What the tests that start real workers and beats share."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.integration.test_crl_publishing import RedisServer, stop


@pytest.fixture
def broker(tmp_path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, on a free port, killed at the end."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.process is not None:
        stop(server.process, signal.SIGKILL)
