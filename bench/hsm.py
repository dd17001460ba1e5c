"""Certificates per second signed through SoftHSM2 (PKCS#11) against the file backend.

    .venv/bin/python bench/hsm.py [--count 2000] [--rsa-count 300]

In one process and one run: a throwaway SoftHSM2 token in a temporary directory, an
issuing CA key generated in it by the key store (Pkcs11KeyBackend.generate) and a file
key of the same type held in memory, as the file backend holds it after first use. Each
side builds the same S/MIME certificate with enrollment.x509.builder (so everything but
the signature is common) for EC P-256 and RSA 3072 (create_pki's default). A CRL of
10,000 entries is signed both ways as well. Prints certificates/s per side and their
ratio. Needs softhsm2 (Debian package); no database, nothing left behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "bench-user-pin"


def _token(directory: Path) -> None:
    (directory / "tokens").mkdir()
    config = directory / "softhsm2.conf"
    config.write_text(
        f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\n"
    )
    os.environ["SOFTHSM2_CONF"] = str(config)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "bench"]
        + ["--pin", PIN, "--so-pin", "bench-so-pin"],
        check=True,
        capture_output=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="EC certificates per side")
    parser.add_argument("--rsa-count", type=int, default=300, help="RSA certificates per side")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-hsm-"))
    try:
        _run(work, options)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the token, its keys and var/


def _run(work: Path, options: argparse.Namespace) -> None:
    _token(work)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="pkiportal.settings",
        PKIPORTAL_VAR_DIR=str(work / "var"),
        PKIPORTAL_KEY_BACKEND="pkcs11",
        PKIPORTAL_PKCS11_MODULE=MODULE,
        PKIPORTAL_PKCS11_TOKEN_LABEL="bench",
        PKIPORTAL_PKCS11_PIN=PIN,
    )
    import django

    django.setup()
    from enrollment import keystore_pkcs11
    from enrollment.x509 import builder, crl_fast
    from enrollment.x509.crl import RevokedEntry
    from enrollment.x509.keys import KeyAlgorithm, generate_private_key
    from enrollment.x509.policy import CertificatePolicy, Generation, Purpose

    now = datetime.now(UTC)
    root_key = generate_private_key(KeyAlgorithm.EC_P384)
    root = builder.build_root_ca(
        key=root_key, common_name="Bench Root", organization_name="Bench", country_name="GB"
    )
    policy = CertificatePolicy(purpose=Purpose.SIGNING, generation=Generation.STRICT)
    subject = builder.Subject(
        common_name="Alice Example",
        given_name="Alice",
        surname="Example",
        organization_name="Bench",
        organization_identifier="NTRGB-12345678",
        country_name="GB",
        email_addresses=("alice@example.com",),
    )
    subscriber = generate_private_key(KeyAlgorithm.EC_P256).public_key()
    revoked = crl_fast.encode_entries(
        RevokedEntry(serial_number=builder.random_serial(), revocation_date=now)
        for _ in range(10_000)
    )
    backend = keystore_pkcs11.Pkcs11KeyBackend()
    print(f"SoftHSM2 via python-pkcs11, {MODULE}; one process, one thread")
    for algorithm, count in ((KeyAlgorithm.EC_P256, options.count),
                             (KeyAlgorithm.RSA_3072, options.rsa_count)):  # fmt: skip
        _reference, token_key = backend.generate(label=algorithm.value, algorithm=algorithm)
        file_key = generate_private_key(algorithm)
        rates = {}
        for side, key in (("file", file_key), ("softhsm", token_key)):
            issuing = builder.build_issuing_ca(
                public_key=key.public_key(), issuer_certificate=root, issuer_key=root_key,
                common_name=f"Bench Issuing {side}", organization_name="Bench",
                country_name="GB", crl_url="http://pki.example.com/root.crl",
                ca_issuers_url="http://pki.example.com/root.crt",
            )  # fmt: skip

            def issue(issuing=issuing, key=key):
                return builder.build_end_entity(
                    public_key=subscriber, subject=subject, issuer_certificate=issuing,
                    issuer_key=key, policy=policy, crl_url="http://pki.example.com/i.crl",
                    ca_issuers_url="http://pki.example.com/i.crt",
                )  # fmt: skip

            issue().verify_directly_issued_by(issuing)
            started = time.perf_counter()
            for _ in range(count):
                issue()
            rates[side] = count / (time.perf_counter() - started)
            started = time.perf_counter()
            crl_fast.sign_crl(
                issuer_certificate=issuing, issuer_key=key, revoked=revoked, crl_number=1,
                this_update=now, next_update=now + timedelta(days=7),
            )  # fmt: skip
            crl_ms = (time.perf_counter() - started) * 1000
            print(
                f"  {algorithm.label:9} {side:8} {rates[side]:8.0f} certificates/s "
                f"({count} built); CRL of 10,000 entries in {crl_ms:.1f} ms"
            )
        print(f"  {algorithm.label:9} softhsm/file: {rates['softhsm'] / rates['file']:.2f}")


if __name__ == "__main__":
    main()
