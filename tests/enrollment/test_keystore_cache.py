"""The per-process cache of CA keys follows the key file, not only its mtime."""

from __future__ import annotations

import os

from enrollment import keystore
from enrollment.x509 import keys
from tests.enrollment.tools import new_key


def test_a_key_written_again_with_the_same_mtime_is_read_afresh(tmp_path, settings):
    """A key file replaced within the clock's granularity (a few ms: tests, a restore)
    keeps its mtime; the cache must still see the new key, not serve the old one."""
    settings.PKIPORTAL_KEY_DIR = str(tmp_path)
    settings.PKIPORTAL_CA_KEY_PASSPHRASE = "a passphrase for the test keys"
    backend = keystore.FileKeyBackend()
    path = tmp_path / "issuing.key.pem"
    first, second = new_key(), keys.generate_private_key(keys.KeyAlgorithm.RSA_2048)
    passphrase = settings.PKIPORTAL_CA_KEY_PASSPHRASE.encode()
    path.write_bytes(keys.encrypt_private_key_pem(first, passphrase))
    assert backend.load("issuing.key.pem").public_key() == first.public_key()
    before = path.stat()

    path.write_bytes(keys.encrypt_private_key_pem(second, passphrase))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # the same mtime again

    assert path.stat().st_mtime_ns == before.st_mtime_ns
    assert backend.load("issuing.key.pem").public_key() == second.public_key()
