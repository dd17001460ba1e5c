"""Forked children sign with a token key: run by test_keystore_pkcs11 in a fresh Python
with a token of its own, as SoftHSM reads library.reset_on_fork once per process.

    python tests/softhsm_fork.py <directory> <true|false>

Prints one line per case, "<case> ok" or "<case> FAILED: ...", and exits non-zero if any
failed. A child that deadlocks is ended by an alarm and counts as failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
CHILD_SECONDS = 10


def _token(directory: Path, reset_on_fork: str) -> str:
    (directory / "tokens").mkdir()
    config = directory / "softhsm2.conf"
    config.write_text(
        f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\n"
        f"log.level = ERROR\nlibrary.reset_on_fork = {reset_on_fork}\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(config)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "fork"]
        + ["--pin", "fork-user-pin", "--so-pin", "fork-so-pin"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return next(path for path in MODULES if os.path.exists(path))


def main() -> int:
    directory, reset_on_fork = Path(sys.argv[1]), sys.argv[2]
    module = _token(directory, reset_on_fork)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="pkiportal.settings",
        PKIPORTAL_VAR_DIR=str(directory / "var"),
        PKIPORTAL_KEY_BACKEND="pkcs11",
        PKIPORTAL_PKCS11_MODULE=module,
        PKIPORTAL_PKCS11_TOKEN_LABEL="fork",
        PKIPORTAL_PKCS11_PIN="fork-user-pin",
    )
    import django

    django.setup()
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from enrollment import keystore_pkcs11
    from enrollment.x509.keys import KeyAlgorithm

    backend = keystore_pkcs11.Pkcs11KeyBackend()
    reference, _ = backend.generate(label="fork", algorithm=KeyAlgorithm.EC_P256)

    def signs() -> None:
        key = backend.load(reference)
        algorithm = ec.ECDSA(hashes.SHA256())
        key.public_key().verify(key.sign(b"fork", algorithm), b"fork", algorithm)

    def in_child() -> str:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - reports through its exit code
            signal.alarm(CHILD_SECONDS)
            try:
                signs()
            except BaseException as exc:  # noqa: BLE001
                print(f"  child: {type(exc).__name__}: {getattr(exc, 'message', exc)}", flush=True)
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        return "" if code == 0 else f"the child ended with {code}"

    def after_signing() -> str:
        signs()
        return in_child()

    def after_forgetting() -> str:  # the library initialised, no session: nothing inherited
        signs()
        keystore_pkcs11.forget_process_state()
        return in_child()

    def while_a_thread_is_in_the_token() -> str:
        signs()
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with keystore_pkcs11._LOCK:
                held.set()
                release.wait(CHILD_SECONDS * 2)

        thread = threading.Thread(target=hold)
        thread.start()
        held.wait()
        try:
            return in_child()
        finally:
            release.set()
            thread.join()

    failed = False
    for case in (after_signing, after_forgetting, while_a_thread_is_in_the_token):
        try:
            problem = case()
            signs()  # and the parent carries on
        except Exception as exc:  # noqa: BLE001
            problem = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
        failed = failed or bool(problem)
        print(f"{case.__name__} " + (f"FAILED: {problem}" if problem else "ok"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
