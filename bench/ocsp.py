"""OCSP responses per second: over HTTP (gunicorn on PostgreSQL) and in one process.

    .venv/bin/python bench/ocsp.py [--algorithms ec-p256,rsa-3072] [--workers 2]
        [--clients 4] [--requests 2000] [--certificates 400] [--rounds 3]

For each issuing-key algorithm: creates a throwaway PostgreSQL database (``bench_ocsp``
on 127.0.0.1, as the ``postgres`` user), migrates it, creates the PKI (EC P-384 root, the
issuing CA with that key) and issues ``--certificates`` certificates through the
services, revoking every fourth. It starts gunicorn and times, with ``--clients``
concurrent clients on new connections (gunicorn's sync workers close each one), requests
built before timing:

- GET, known serials, no nonce: what RFC 5019 clients send. After a warm-up each worker
  has signed each answer once, so this is the kept path: a database read, no signature;
- POST with a fresh nonce: every answer signed (RFC 9654 clients);
- GET for serials never issued: signed "unknown" answers, each logged;
- the floor: a GET whose path is no request (malformedRequest: no database, no key).

Then the same in one process through Django's test client (no HTTP, no gunicorn), the
responder's function alone (enrollment.ocsp.answer), and the bare library
(enrollment.x509.ocsp: parse a request, build and sign a response with the key in
memory). It prints responses per second (best of ``--rounds``), the server CPU per
response (gunicorn workers and their PostgreSQL backends, from /proc), and removes the
database and gunicorn at the end. Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from _harness import (
    HOST,
    PG,
    ROOT,
    create_hierarchy,
    database_name,
    free_port,
    memory_hierarchy,
    portal_environment,
    run,
    start_gunicorn,
    stop,
)
from enroll import Result, post_all

sys.path.insert(0, str(ROOT))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402
from cryptography.x509 import ocsp as x509_ocsp  # noqa: E402

from enrollment.x509 import keys  # noqa: E402
from enrollment.x509 import ocsp as ocsp_library  # noqa: E402

DATABASE = database_name("bench_ocsp")
OCSP = "/pki/ocsp/"
ONE_DAY = timedelta(hours=24) - timedelta(seconds=1)


def log(message: str) -> None:
    print(message, flush=True)


# --- inside Django ----------------------------------------------------------------------


def setup(var_dir: Path, algorithm: str, count: int) -> dict:
    """(Runs inside the Django environment.) The PKI and ``count`` certificates."""
    import django

    django.setup()
    from accounts.models import User
    from enrollment import services
    from enrollment.models import CertificateTemplate

    _root, issuing = create_hierarchy(var_dir, algorithm)
    holder = User.objects.create_user(
        username="holder", email="holder@example.com", first_name="Hal", last_name="Holder"
    )
    template = CertificateTemplate.objects.get(slug="smime-signing")
    serials = []
    for index in range(count):
        # Each its own key: revoking one for any reason then touches only it.
        public_key = keys.generate_private_key(keys.KeyAlgorithm.EC_P256).public_key()
        certificate = services.certificate_issue(
            template=template, owner=holder, public_key=public_key
        )
        if index % 4 == 3:
            services.certificate_revoke(certificate=certificate, reason="superseded")
        serials.append(certificate.serial)
    return {
        "issuing_pem": issuing.certificate.public_bytes(Encoding.PEM).decode(),
        "serials": serials,
    }


def in_process(count: int, requests_file: str) -> dict:
    """(Runs inside the Django environment.) The same requests without HTTP."""
    import django

    django.setup()
    from django.test import Client

    from enrollment import ocsp

    prepared = json.loads(Path(requests_file).read_text())
    kept = [base64.b64decode(item) for item in prepared["kept"]]
    nonced = [base64.b64decode(item) for item in prepared["nonced"]]
    client = Client()
    figures: dict[str, float] = {}

    def timed(name: str, function, items: list) -> None:
        started = time.perf_counter()
        for index in range(count):
            function(items[index % len(items)])
        figures[name] = count / (time.perf_counter() - started)

    for der in kept:  # warm up: each answer signed once, the CA key loaded
        ocsp.answer(der)
    timed("function, kept answers (GET's path)", ocsp.answer, kept)
    timed("function, signed answers (nonce)", ocsp.answer, nonced)
    paths = [OCSP + quote(base64.b64encode(der).decode(), safe="") for der in kept]

    def get(path: str) -> None:
        response = client.get(path)
        assert response.status_code == 200, response.status_code

    def post(der: bytes) -> None:
        response = client.post(OCSP, der, content_type="application/ocsp-request")
        assert response.status_code == 200, response.status_code

    timed("Django test client, GET kept answers", get, paths)
    timed("Django test client, POST with nonce", post, nonced)
    return figures


# --- requests, built before timing ------------------------------------------------------


def ocsp_request(issuer: x509.Certificate, serial: int, nonce: bool) -> bytes:
    """What a client sends: a SHA-1 CertID of the issuing CA, and a nonce or none."""
    name_hash = hashes.Hash(hashes.SHA1())
    name_hash.update(issuer.subject.public_bytes())
    key_hash = (
        x509_ocsp.OCSPRequestBuilder()
        .add_certificate(issuer, issuer, hashes.SHA1())
        .build()
        .issuer_key_hash
    )
    request = x509_ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash.finalize(), key_hash, serial, hashes.SHA1()
    )
    if nonce:
        request = request.add_extension(x509.OCSPNonce(secrets.token_bytes(32)), critical=False)
    return request.build().public_bytes(Encoding.DER)


def http_get(port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode(
        "ascii"
    )


def http_post(port: int, der: bytes) -> bytes:
    head = (
        f"POST {OCSP} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/ocsp-request\r\nContent-Length: {len(der)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + der


def get_path(der: bytes) -> str:
    return OCSP + quote(base64.b64encode(der).decode(), safe="")


# --- the bare library ---------------------------------------------------------------------


def bare_library(algorithm: keys.KeyAlgorithm, count: int) -> tuple[Result, Result]:
    """Parse a request and sign a response with the key in memory, as the responder does."""
    _root, issuing, issuing_key = memory_hierarchy(algorithm, sign_ocsp=True)
    requests = [ocsp_request(issuing, 2**158 + i, nonce=True) for i in range(count)]
    good = ocsp_library.CertificateStatus(ocsp_library.Status.GOOD)
    started = time.perf_counter()
    for der in requests:
        query = ocsp_library.parse_request(der)
        now = datetime.now(UTC)
        ocsp_library.build_response(
            issuer_certificate=issuing,
            issuer_key=issuing_key,
            cert_id=query.cert_id,
            status=good,
            this_update=now,
            next_update=now + ONE_DAY,
            nonce=query.nonce,
        )
    signed = Result("bare library: parse, build and sign", count, 0.0, unit="resp/s")
    signed.seconds = time.perf_counter() - started
    started = time.perf_counter()
    for der in requests:
        ocsp_library.parse_request(der)
    parsed = Result("bare library: parse only", count, 0.0, unit="resp/s")
    parsed.seconds = time.perf_counter() - started
    return signed, parsed


# --- one algorithm ------------------------------------------------------------------------


def measure(algorithm: str, args: argparse.Namespace) -> list[Result | str]:
    var_dir = Path(tempfile.mkdtemp(prefix="bench-ocsp-"))
    env = portal_environment(DATABASE, var_dir)
    run(["dropdb", *PG, "--if-exists", "--force", DATABASE])
    run(["createdb", *PG, DATABASE])
    gunicorn = None
    lines: list[Result | str] = []
    try:
        run([sys.executable, "manage.py", "migrate", "--noinput"], env)
        out = run(
            [sys.executable, __file__, "--_setup", str(var_dir), algorithm, str(args.certificates)],
            env,
        )
        made = json.loads(out.strip().splitlines()[-1])
        issuer = x509.load_pem_x509_certificate(made["issuing_pem"].encode())
        serials = [int(serial, 16) for serial in made["serials"]]

        port = free_port()
        gunicorn = start_gunicorn(env, port, workers=args.workers, log=var_dir / "gunicorn.log")
        kept_ders = [ocsp_request(issuer, serial, nonce=False) for serial in serials]
        kept = [http_get(port, get_path(der)) for der in kept_ders]
        # Warm-up: every worker signs every answer once (connections land anywhere).
        post_all(port, kept * (2 * args.workers), "warm-up", args.clients, expected=200)

        def rounds(name: str, make) -> Result:
            best = None
            for _ in range(args.rounds):
                result = post_all(
                    port, make(), name, args.clients, gunicorn, DATABASE, expected=200
                )
                result.unit = "resp/s"
                if best is None or result.rate > best.rate:
                    best = result
            assert best is not None
            return best

        count = args.requests
        lines.append(
            rounds(
                "HTTP GET, kept answers (no nonce)",
                lambda: [kept[i % len(kept)] for i in range(count)],
            )
        )
        lines.append(
            rounds(
                "HTTP POST with a nonce (signed each time)",
                lambda: [
                    http_post(port, ocsp_request(issuer, serials[i % len(serials)], nonce=True))
                    for i in range(count)
                ],
            )
        )
        lines.append(
            rounds(
                "HTTP GET, serials never issued (signed, logged)",
                lambda: [
                    http_get(
                        port,
                        get_path(ocsp_request(issuer, 2**158 + secrets.randbits(64), nonce=False)),
                    )
                    for _ in range(count)
                ],
            )
        )
        lines.append(
            rounds(
                "HTTP floor: GET that is no request (malformed)",
                lambda: [http_get(port, OCSP + "MAA%3D") for _ in range(count)],
            )
        )
        stop(gunicorn)
        gunicorn = None

        prepared = var_dir / "requests.json"
        prepared.write_text(
            json.dumps(
                {
                    "kept": [base64.b64encode(der).decode() for der in kept_ders],
                    "nonced": [
                        base64.b64encode(
                            ocsp_request(issuer, serials[i % len(serials)], nonce=True)
                        ).decode()
                        for i in range(count)
                    ],
                }
            )
        )
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            out = run([sys.executable, __file__, "--_inprocess", str(count), str(prepared)], env)
            for name, rate in json.loads(out.strip().splitlines()[-1]).items():
                best[name] = max(best.get(name, 0.0), rate)
        for name, rate in best.items():
            lines.append(f"{'in process: ' + name:<52} {rate:8.1f} resp/s")
        signed, parsed = bare_library(keys.KeyAlgorithm(algorithm), count)
        lines += [signed, parsed]
    finally:
        if gunicorn is not None:
            stop(gunicorn)
        run(["dropdb", *PG, "--if-exists", "--force", DATABASE])
        shutil.rmtree(var_dir, ignore_errors=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithms", default="ec-p256,rsa-3072", help="issuing CA keys")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument("--requests", type=int, default=2000, help="requests per case and round")
    parser.add_argument("--certificates", type=int, default=400, help="certificates issued")
    parser.add_argument("--rounds", type=int, default=3, help="best of this many runs")
    parser.add_argument("--_setup", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--_inprocess", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._setup:
        var_dir, algorithm, count = args._setup
        print(json.dumps(setup(Path(var_dir), algorithm, int(count))))
        return
    if args._inprocess:
        count, requests_file = args._inprocess
        print(json.dumps(in_process(int(count), requests_file)))
        return

    for algorithm in args.algorithms.split(","):
        log(f"issuing CA key {algorithm}, {args.certificates} certificates (a quarter revoked), "
            f"{args.workers} gunicorn workers, {args.clients} clients, "
            f"{args.requests} requests per case, best of {args.rounds}:")  # fmt: skip
        for line in measure(algorithm, args):
            log(f"  {line.line() if isinstance(line, Result) else line}")
    load = os.getloadavg()
    log(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
