"""Issue 3's ratio for the smallest server that does a CSR enrolment at all, beside ours.

    .venv/bin/python bench/enroll_ideal.py [--requests 1500] [--rounds 3] [--workers 2]
        [--clients 4]

How much of the bare library's rate can any HTTP server on PostgreSQL keep? This runs two
gunicorns side by side, each timed alone in turn, round by round, with the bare library
after each round (as bench/enroll.py pairs them):

- the portal: POST /api/v1/enrollments/ with a CSR, as bench/enroll.py times it;
- bench/_ideal_app.py: a plain WSGI callable on psycopg, no Django, that does only the
  essential work (find the person by the token's digest, parse and verify the CSR, issue
  the portal's certificate profile through enrollment.x509, store the certificate, answer
  it), two prepared statements in autocommit: the ceiling for any server that keeps a
  record of what it issued;
- the bare library, as bench/enroll.py defines it (``cryptography`` alone, one process),
  right after each round of both servers (which go first in turn).

Both servers get the same pre-generated P-256 CSRs, the same 2 sync workers and 4
clients on new connections, and the same CPU accounting (/proc). It prints each rate,
the server CPU per certificate and the ratios; the databases and gunicorns are removed
at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import _harness
import enroll
import psycopg
from _harness import PG, free_port, portal_environment, run, start_gunicorn, stop

from cryptography.hazmat.primitives import serialization

from enrollment.x509 import keys

IDEAL_DATABASE = _harness.database_name("bench_enroll_ideal")
PORTAL_DATABASE = _harness.database_name("bench_enroll_portal")
BENCH = Path(__file__).resolve().parent
SCHEMA = """
CREATE TABLE ideal_person (
    id serial PRIMARY KEY, token_sha512 text NOT NULL UNIQUE,
    given_name text NOT NULL, surname text NOT NULL, email text NOT NULL
);
CREATE TABLE ideal_certificate (
    id bigserial PRIMARY KEY, serial text NOT NULL UNIQUE,
    owner_id integer NOT NULL REFERENCES ideal_person (id),
    fingerprint_sha256 text NOT NULL UNIQUE, der bytea NOT NULL,
    not_after timestamptz NOT NULL
);
CREATE INDEX ideal_certificate_owner ON ideal_certificate (owner_id);
"""


def ideal_database(people: int) -> list[str]:
    """The ideal server's two tables and ``people`` people; their bearer tokens."""
    run(["dropdb", *PG, "--if-exists", "--force", IDEAL_DATABASE])
    run(["createdb", *PG, IDEAL_DATABASE])
    tokens = [secrets.token_hex(32) for _ in range(people)]
    with psycopg.connect(f"{_harness.database_server_url()}/{IDEAL_DATABASE}") as db:
        db.execute(SCHEMA)  # type: ignore[arg-type]  # a constant
        with db.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO ideal_person (token_sha512, given_name, surname, email) "
                "VALUES (%s, %s, %s, %s)",
                [
                    (hashlib.sha512(t.encode()).hexdigest(), "Bench", f"Client{i}",
                     f"bench{i}@example.com")
                    for i, t in enumerate(tokens)
                ],
            )  # fmt: skip
    return tokens


def ideal_ca(directory: Path) -> None:
    """A P-256 issuing CA under a P-384 root, as create_pki makes the portal's."""
    _root, issuing, issuing_key = _harness.memory_hierarchy(keys.KeyAlgorithm.EC_P256)
    (directory / "issuing.pem").write_bytes(issuing.public_bytes(serialization.Encoding.PEM))
    (directory / "issuing-key.pem").write_bytes(
        issuing_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1500, help="per server and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers, each server")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    args = parser.parse_args()

    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f} (before)")
    print("Generating CSRs (not timed)...", flush=True)
    csrs = enroll.make_csrs(keys.KeyAlgorithm.EC_P256, args.requests, args.requests)
    bodies = enroll.csr_bodies(csrs)
    warm = enroll.csr_bodies(enroll.make_csrs(keys.KeyAlgorithm.EC_P256, 4 * args.workers, 16))
    var_dir = Path(tempfile.mkdtemp(prefix="bench-enroll-ideal-"))
    portal_env = portal_environment(PORTAL_DATABASE, var_dir / "portal")
    enrolments = len(warm) + args.requests * args.rounds
    people = -(-enrolments // enroll.PER_PERSON)
    servers = []
    try:
        print(f"Creating both databases, their CAs and {people} people each...", flush=True)
        portal = enroll.Accounts(
            enroll.create_database(
                portal_env, var_dir / "portal", people, database=PORTAL_DATABASE
            ),
            enroll.PER_PERSON,
        )
        (var_dir / "ideal").mkdir()
        ideal_ca(var_dir / "ideal")
        ideal = enroll.Accounts(ideal_database(people), enroll.PER_PERSON)
        ideal_env = {
            **portal_env,
            "IDEAL_CA_DIR": str(var_dir / "ideal"),
            "IDEAL_DATABASE_URL": f"{_harness.database_server_url()}/{IDEAL_DATABASE}",
        }
        sides = []
        for name, env, accounts, database, app, cwd in (
            ("portal", portal_env, portal, PORTAL_DATABASE, "pkiportal.wsgi", _harness.ROOT),
            ("ideal", ideal_env, ideal, IDEAL_DATABASE, "_ideal_app:app", BENCH),
        ):
            port = free_port()
            gunicorn = start_gunicorn(
                env, port, workers=args.workers, log=var_dir / f"{name}.log", cwd=cwd, app=app
            )
            servers.append(gunicorn)
            warm_up = [
                enroll.http_request(port, accounts.take(enroll.CSR_TEMPLATE), b) for b in warm
            ]
            enroll.post_all(port, warm_up, "warm-up", args.clients)
            sides.append((name, port, gunicorn, accounts, database))
        print(f"Timing ({args.workers} workers, {args.clients} clients each)...", flush=True)
        rates: dict[str, list[enroll.Result]] = {name: [] for name, *_ in sides}
        bare: list[float] = []
        for round_number in range(args.rounds):
            # Each server goes first in every other round: the other's PostgreSQL
            # after-work (autovacuum after its inserts) lands on both alike.
            for name, port, gunicorn, accounts, database in (
                sides if round_number % 2 == 0 else sides[::-1]
            ):
                requests = [
                    enroll.http_request(port, accounts.take(enroll.CSR_TEMPLATE), body)
                    for body in bodies
                ]
                result = enroll.post_all(
                    port, requests, name, args.clients, gunicorn, database=database
                )
                if result.failures:
                    raise SystemExit(f"{name}: {result.failures} requests failed")
                rates[name].append(result)
            bare.append(enroll.bare_library(csrs)[0].rate)
        print()
        labels = {
            "portal": "HTTP CSR path, the portal (P-256)",
            "ideal": "HTTP CSR path, the ideal server (P-256)",
        }
        best_bare = max(bare)
        for name, results in rates.items():
            best = max(results, key=lambda r: r.rate)
            best.name = labels[name]
            paired = [r.rate / b for r, b in zip(results, bare, strict=True)]
            print(best.line())
            print(
                f"  {best.rate / best_bare:.1%} of the bare library (best of rounds); rounds "
                f"{', '.join(f'{p:.1%}' for p in paired)}, median {statistics.median(paired):.1%}"
            )
        print(
            f"bare library: CSR parse+verify, build+sign {best_bare:8.1f} certs/s "
            f"(rounds: {', '.join(f'{b:.0f}' for b in bare)})"
        )
        portal_share = [
            p.rate / i.rate for p, i in zip(rates["portal"], rates["ideal"], strict=True)
        ]
        print(
            f"The portal runs at {statistics.median(portal_share):.0%} of the ideal server's "
            f"rate (median of rounds: {', '.join(f'{s:.0%}' for s in portal_share)})"
        )
        print(f"load average: {os.getloadavg()[0]:.2f} (after)")
    finally:
        for gunicorn in servers:
            stop(gunicorn)
        for database in (PORTAL_DATABASE, IDEAL_DATABASE):
            run(["dropdb", *PG, "--if-exists", "--force", database], check=False)
        shutil.rmtree(var_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
