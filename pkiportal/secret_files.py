"""Files that hold a secret: born private, never replaced, read safely while being made.

No Django here: the settings module uses it (the embedded default's SECRET_KEY) before
Django is set up, as do the management commands (passphrase files) and the key store.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

# How long a reader waits for a file another process has just created to be written.
SETTLE_SECONDS = 2.0
# A file last changed this long ago is no longer being written.
WRITTEN_SECONDS = 1.0


def create_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data``, 0600 from before its first byte whatever the
    umask, or raise FileExistsError and leave an existing file alone.

    Written first and narrowed after, a secret was readable by anyone for a moment (umask
    022); opened without O_EXCL, two processes creating it at once both wrote one.
    """
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # a umask such as 0277 would have left it 0400
    except BaseException:
        os.close(descriptor)
        raise
    with os.fdopen(descriptor, "wb") as fh:
        fh.write(data)


def read_settled(path: Path, *, patience: float | None = None) -> str:
    """The secret in ``path``, stripped, once whoever created it has finished writing.

    A file made by create_private_file_once ends with a newline. One without it (or an
    empty one) is being written at this moment, and is read again for at most
    ``patience`` seconds; unless it was last changed more than WRITTEN_SECONDS ago: then
    it was written whole, by an older release (which added no newline) or by hand.
    """
    patience = SETTLE_SECONDS if patience is None else patience
    deadline = time.monotonic() + patience
    while True:
        text = path.read_text()
        if text.endswith("\n") or (
            text.strip() and time.time() - path.stat().st_mtime > WRITTEN_SECONDS
        ):
            return text.strip()
        if time.monotonic() >= deadline:
            if text.strip():
                return text.strip()
            raise OSError(f"{path} is still empty after {patience:g} s.")
        time.sleep(0.01)


def create_private_file_once(path: Path, make: Callable[[], str]) -> str:
    """The secret in ``path``, made with ``make()`` in a new 0600 file if there is none.

    Processes starting together (gunicorn workers, a worker and beat) all end with the
    same secret: one creates the file, the others find it there and read what it wrote.
    """
    with contextlib.suppress(FileExistsError):  # another process made it: read theirs
        create_private_file(path, (make() + "\n").encode())
    return read_settled(path)
