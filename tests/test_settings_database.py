"""PostgreSQL gets prepared statements unless DATABASE_PREPARED_STATEMENTS says no.

The settings module is executed afresh (runpy) under a patched environment.
"""

from __future__ import annotations

import runpy

import pytest

from django.conf import settings

SETTINGS_FILE = str(settings.BASE_DIR / "pkiportal" / "settings.py")


@pytest.fixture
def database_options(monkeypatch, tmp_path):
    monkeypatch.setenv("PKIPORTAL_VAR_DIR", str(tmp_path))
    monkeypatch.delenv("DATABASE_PREPARED_STATEMENTS", raising=False)

    def load(url: str, **variables: str) -> dict[str, object]:
        monkeypatch.setenv("DATABASE_URL", url)
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        return runpy.run_path(SETTINGS_FILE)["DATABASES"]["default"].get("OPTIONS", {})

    return load


def test_postgresql_prepares_statements_by_default(database_options):
    options = database_options("postgres://pki@db.example/pki")

    assert options["server_side_binding"] is True
    assert options["prepare_threshold"] == 5


def test_prepared_statements_can_be_turned_off_for_a_transaction_pooler(database_options):
    options = database_options(
        "postgres://pki@pgbouncer.example/pki", DATABASE_PREPARED_STATEMENTS="false"
    )

    assert "server_side_binding" not in options
    assert "prepare_threshold" not in options


def test_sqlite_is_left_alone(database_options):
    options = database_options("sqlite:////tmp/pkiportal-test.sqlite3")

    assert "server_side_binding" not in options
    assert options["init_command"] == "PRAGMA journal_mode=WAL;"
