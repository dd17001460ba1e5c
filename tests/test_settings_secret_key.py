"""The embedded default's SECRET_KEY file (var/secret_key): private from its first byte,
and one key for every process that starts at once."""

from __future__ import annotations

import os
import secrets
import sys
import threading
import time
from pathlib import Path

import pytest

from django.core.exceptions import ImproperlyConfigured

import pkiportal.settings as settings_module
from pkiportal import secret_files

# sys.addaudithook cannot be undone: one hook for the module, watching only while a test
# names a path. At each open and chmod it notes the mode the watched file has while it
# holds anything, which is when another user could read it.
_WATCHED: dict = {}


def _audit(event: str, args: tuple[object, ...]) -> None:
    path = _WATCHED.get("path")
    if path is None or event not in ("open", "os.chmod"):
        return
    try:
        found = os.stat(path)
    except OSError:
        return
    if found.st_size:
        _WATCHED["modes"].append(found.st_mode & 0o777)


sys.addaudithook(_audit)


@pytest.fixture
def var_dir(monkeypatch, tmp_path) -> Path:
    """A fresh var/ for settings._embedded_secret_key, as on a first start."""
    folder = tmp_path / "var"
    monkeypatch.setattr(settings_module, "VAR_DIR", folder)
    return folder


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o277])
def test_the_key_file_is_0600_from_its_first_byte_whatever_the_umask(var_dir, umask):
    path = var_dir / "secret_key"
    _WATCHED.update(path=str(path), modes=[])
    old_umask = os.umask(umask)
    try:
        key = settings_module._embedded_secret_key()
    finally:
        os.umask(old_umask)
        modes = _WATCHED.pop("modes")
        _WATCHED.pop("path")

    assert modes
    assert set(modes) == {0o600}
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(key) >= 50
    assert path.read_text().strip() == key
    assert settings_module._embedded_secret_key() == key  # kept, not replaced


def test_processes_starting_together_all_get_the_same_key(var_dir, monkeypatch):
    """Every creator makes its candidate key, then they race to write it: one wins and
    the others read the winner's, so no process signs with a key that was overwritten."""
    creators = 8
    together = threading.Barrier(creators)
    made = secrets.token_urlsafe

    def candidate(length: int) -> str:
        # None writes before all have looked for the file; then one after the other, as
        # processes a moment apart do, each reading its key before the next one writes.
        place = together.wait(timeout=10)
        time.sleep(place * 0.02)
        return made(length)

    monkeypatch.setattr(secrets, "token_urlsafe", candidate)
    keys: list[str] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            keys.append(settings_module._embedded_secret_key())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(creators)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert len(keys) == creators
    assert set(keys) == {(var_dir / "secret_key").read_text().strip()}


def write_later(path: Path, text: str, delay: float) -> threading.Thread:
    def finish() -> None:
        time.sleep(delay)
        with path.open("a") as fh:
            fh.write(text)

    thread = threading.Thread(target=finish)
    thread.start()
    return thread


@pytest.mark.parametrize("written_so_far", ["", "half-of-the-"])
def test_a_key_file_still_being_written_is_waited_for(var_dir, written_so_far):
    """Another process created the file and has not finished writing it."""
    var_dir.mkdir()
    path = var_dir / "secret_key"
    path.write_text(written_so_far)
    path.chmod(0o600)
    key = "half-of-the-" + "k" * 50

    writer = write_later(path, key[len(written_so_far) :] + "\n", 0.2)
    try:
        assert settings_module._embedded_secret_key() == key
    finally:
        writer.join()


def test_a_key_file_written_by_an_older_release_is_read_at_once(var_dir):
    """Older releases wrote no final newline: a file untouched for a while is whole."""
    var_dir.mkdir()
    path = var_dir / "secret_key"
    path.write_text("o" * 67)
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))

    started = time.monotonic()
    assert settings_module._embedded_secret_key() == "o" * 67
    assert time.monotonic() - started < 0.5


def test_a_key_file_left_empty_stops_start_up_with_a_hint(var_dir, monkeypatch):
    """Its creator died before writing: no process may run with an empty key."""
    monkeypatch.setattr(secret_files, "SETTLE_SECONDS", 0.2)
    var_dir.mkdir()
    (var_dir / "secret_key").write_text("")

    with pytest.raises(ImproperlyConfigured, match="delete the file"):
        settings_module._embedded_secret_key()
