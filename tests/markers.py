"""Markers the test modules share."""

from __future__ import annotations

import pytest

from django.db import connection

# Races between threads, each with its own connection: only PostgreSQL's row locks make
# them wait for each other (SQLite's in-memory test database would lock whole tables).
needs_row_locks = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="row locks need PostgreSQL (DATABASE_URL)"
)
