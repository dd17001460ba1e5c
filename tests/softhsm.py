"""A throwaway SoftHSM2 token for the PKCS#11 key store tests.

One token per test session (per xdist worker), in a temporary directory named by a
generated SOFTHSM2_CONF. The config resets the library on fork, as a network HSM's does:
a forked child must initialise the library itself. Keys are made and inspected with
OpenSC's pkcs11-tool, never only with the portal's own code. CI installs both packages
(.ci/run); a machine without them fails these tests, saying what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from enrollment import keystore_pkcs11

MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
INSTALL = "apt-get install -y softhsm2 opensc"
TOKEN_LABEL = "pkiportal-test"
USER_PIN = "4711-user-pin-for-tests"
SO_PIN = "0815-so-pin-for-tests"

CONFIG = """\
directories.tokendir = {directory}
objectstore.backend = file
log.level = ERROR
slots.removable = false
slots.mechanisms = ALL
library.reset_on_fork = true
"""


@dataclass(frozen=True)
class SoftHsm:
    module: str
    config: Path
    label: str = TOKEN_LABEL
    pin: str = USER_PIN

    def tool(self, *args: str, login: bool = True, check: bool = True) -> str:
        """Run pkcs11-tool against the token; its stdout and stderr together."""
        command = ["pkcs11-tool", "--module", self.module, "--token-label", self.label]
        if login:
            command += ["--login", "--pin", self.pin]
        done = subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            errors="replace",
            env={**os.environ, "SOFTHSM2_CONF": str(self.config)},
            timeout=60,
        )
        output = done.stdout + done.stderr
        if check and done.returncode:
            raise AssertionError(f"pkcs11-tool {' '.join(args)} failed:\n{output}")
        return output


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory) -> SoftHsm:
    """The session's token, initialised with a user PIN (softhsm2-util --init-token)."""
    module = next((path for path in MODULES if os.path.exists(path)), None)
    if module is None or not shutil.which("softhsm2-util") or not shutil.which("pkcs11-tool"):
        pytest.fail(f"SoftHSM2 and OpenSC are needed for the HSM tests: {INSTALL}")
    directory = tmp_path_factory.mktemp("softhsm")
    (directory / "tokens").mkdir()
    config = directory / "softhsm2.conf"
    config.write_text(CONFIG.format(directory=directory / "tokens"))
    # The library reads it when first initialised, in this process and its children.
    os.environ["SOFTHSM2_CONF"] = str(config)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", TOKEN_LABEL]
        + ["--pin", USER_PIN, "--so-pin", SO_PIN],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return SoftHsm(module=module, config=config)


@pytest.fixture
def hsm(settings, softhsm) -> Iterator[SoftHsm]:
    """PKIPORTAL_KEY_BACKEND=pkcs11 on the session's token; the test's keys go after it."""
    settings.PKIPORTAL_KEY_BACKEND = "pkcs11"
    settings.PKIPORTAL_PKCS11_MODULE = softhsm.module
    settings.PKIPORTAL_PKCS11_TOKEN_LABEL = softhsm.label
    settings.PKIPORTAL_PKCS11_TOKEN_SERIAL = ""
    settings.PKIPORTAL_PKCS11_PIN = softhsm.pin
    yield softhsm
    keystore_pkcs11.forget_process_state()
    for kind in ("privkey", "pubkey"):
        for _ in range(100):
            listed = softhsm.tool("--list-objects", "--type", kind)
            if "ID:" not in listed:
                break
            key_id = listed.split("ID:", 1)[1].split()[0]
            softhsm.tool("--delete-object", "--type", kind, "--id", key_id)
