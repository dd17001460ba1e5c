"""Directory lookup at scale: 1,000,000 certificates for 500,000 people on PostgreSQL.

Creates a dedicated database, migrates it, bulk-loads synthetic people and certificates
with COPY (binary, psycopg 3), runs EXPLAIN ANALYZE on the lookup queries, starts
gunicorn on 127.0.0.1 and measures the lookup API over HTTP: exact e-mail, name/e-mail
substring and common prefix. Then what officers page through, in-process: the RA
console's certificate search (by surname, e-mail local part, user name, serial, SHA-1
thumbprint, and a broad term), the API's certificate list and a /metrics scrape. Prints
p50/p95/p99 and the load time, then stops gunicorn and drops the database (unless --keep).
Loopback only; every loop is bounded.

    .venv/bin/python bench/directory.py                 # the full run (~10 minutes)
    .venv/bin/python bench/directory.py --people 20000  # a quick smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from _harness import (
    PG_SERVER,
    ROOT,
    create_hierarchy,
    database_name,
    free_port,
    portal_environment,
    run,
    start_gunicorn,
    stop,
)

PG = PG_SERVER

FIRST_NAMES = (  # noqa: SIM905 - a list literal of 100 names reads worse
    "Maria Marco Martin Marta Mario Anna Andreas Anders Andrea Johan Jonas José Josefine "
    "Joanna Juan Li Wei Ming Priya Rahul Aisha Omar Fatima Ahmed Sofia Lucas Emma Noah "
    "Olivia Liam Chloé François Zoë Björn Søren Łukasz Małgorzata Jürgen Günther Åsa Ines "
    "Íñigo Nuno João Chiara Giulia Luca Matteo Pierre Élodie Kenji Yuki Hana Sven Astrid "
    "Ingrid Oskar Elif Mehmet Ayşe Dmitri Olga Ivan Katarzyna Tomasz Ewa"
).split()
LAST_NAMES = (  # noqa: SIM905 - a list literal of 100 names reads worse
    "García Martínez Müller Schmidt Andersson Johansson Nowak Kowalski Rossi Russo Dubois "
    "Lefèvre Smith Jones Brown Taylor Wilson Nguyen Tran Kim Park Lee Chen Wang Zhang "
    "Singh Patel Kumar Sharma Khan Ali Hassan Yılmaz Kaya Demir Öztürk Ivanov Petrov "
    "Novak Horvat Kovač Nielsen Jensen Hansen Larsen Berg Lindqvist Åström Sørensen "
    "Fernández López González Rodríguez Pérez Sánchez Ramírez Torres Flores Rivera Gómez "
    "Díaz Cruz Morales Ortiz Gutiérrez Chávez Ramos Ruiz Alvarez Mendoza Castillo Jiménez "
    "Moreno Romero Herrera Medina Aguilar Vargas Castro Fischer Weber Meyer Wagner Becker "
    "Schulz Hoffmann Koch Richter Klein Wolf Schröder Neumann Schwarz Zimmermann Braun "
    "Krüger Hofmann Hartmann Lange Schmitt Werner Krause Meier Lehmann O'Brien Murphy "
    "Kelly Walsh Byrne Ryan"
).split()
UNITS = (  # noqa: SIM905
    "Finance;Engineering;Research;Sales;Marketing;Legal;Human Resources;IT Operations;"
    "Security;Procurement;Customer Support;Logistics;Quality;Facilities;Executive Office;"
    "Data Science;Product;Design;Compliance;Treasury;Audit;Manufacturing;Training;Press"
).split(";")
COMMON_PREFIXES = ["mar", "and", "jo", "an", "li", "sch", "mü", "gon", "kr", "ha"]


def log(message: str) -> None:
    print(message, flush=True)


def pg_tool(tool: str, *args: str) -> str:
    return run([tool, "-h", PG["host"], "-p", PG["port"], "-U", PG["user"], *args], check=False)


# --- the database ---------------------------------------------------------------------


def prepare_django(database: str, var_dir: Path) -> dict[str, str]:
    """Point this process (and the gunicorn it starts) at the bench database."""
    # The bench measures the lookup, not knox: the directory is opened to anonymous
    # callers, as for partner organisations.
    env = portal_environment(database, var_dir, PKIPORTAL_DIRECTORY_PUBLIC="true")
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    return env


def sample_certificates() -> dict[str, object]:
    """A real hierarchy and two real certificates whose DER the synthetic rows reuse."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from enrollment import services
    from enrollment.models import CertificateTemplate
    from enrollment.x509.keys import KeyAlgorithm, generate_private_key

    var_dir = Path(os.environ["PKIPORTAL_VAR_DIR"])
    _root, issuing = create_hierarchy(var_dir, "ec-p256", organization_name="Example Org")
    holder = get_user_model().objects.create(
        username="bench-sample", first_name="Sample", last_name="Holder", email="s@example.com"
    )
    key = generate_private_key(KeyAlgorithm.EC_P256)
    templates = {t.purpose: t for t in CertificateTemplate.objects.all()}
    ders = {}
    for purpose in ("signing", "dual_use"):
        cert = services.certificate_issue(
            template=templates[purpose], owner=holder, public_key=key.public_key()
        )
        ders[purpose] = bytes(cert.der)
    return {"ca_id": issuing.pk, "templates": {p: t.pk for p, t in templates.items()}, **ders}


def load(database: str, people: int, per_person: int, facts: dict) -> dict[str, object]:
    """COPY people and certificates in bulk; returns what the measurements sample from."""
    import psycopg

    from accounts.search import directory_search_text, fold

    rng = random.Random(4)
    now = datetime.now(UTC)
    emails: list[str] = []
    surnames: list[str] = []
    dsn = f"host={PG['host']} port={PG['port']} user={PG['user']} dbname={database}"
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SET synchronous_commit = off")
        cur.execute("SELECT COALESCE(MAX(id), 0) FROM accounts_user")
        first_user = cur.fetchone()[0] + 1
        cur.execute("SELECT COALESCE(MAX(id), 0) FROM enrollment_certificate")
        first_cert = cur.fetchone()[0] + 1
        started = time.perf_counter()
        user_columns = (
            "id, password, is_superuser, username, first_name, last_name, email, is_staff, "
            "is_active, date_joined, display_name, organizational_unit, directory_search"
        )
        with cur.copy(f"COPY accounts_user ({user_columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(
                [
                    "int8",
                    "text",
                    "bool",
                    "text",
                    "text",
                    "text",
                    "text",
                    "bool",
                    "bool",
                    "timestamptz",
                    "text",
                    "text",
                    "text",
                ]  # fmt: skip
            )
            for i in range(people):
                first = FIRST_NAMES[i % len(FIRST_NAMES)]
                last = LAST_NAMES[(i // len(FIRST_NAMES) + i) % len(LAST_NAMES)]
                unit = UNITS[rng.randrange(len(UNITS))]
                local = fold(f"{first}.{last}").replace(" ", "").replace("'", "")
                email = f"{local}{i}@example.com"
                username = f"u{i}"
                emails.append(email)
                surnames.append(fold(last))
                search = directory_search_text(
                    username=username,
                    first_name=first,
                    last_name=last,
                    display_name="",
                    email=email,
                    organizational_unit=unit,
                )
                copy.write_row(
                    (
                        first_user + i,
                        "!",
                        False,
                        username,
                        first,
                        last,
                        email,
                        False,
                        True,
                        now,
                        "",
                        unit,
                        search,
                    )  # fmt: skip
                )
        users_done = time.perf_counter()
        cert_columns = (
            "id, der, serial, fingerprint_sha256, subject, not_before, not_after, ca_id, "
            "owner_id, template_id, purpose, common_name, email, emails, fingerprint_sha1, "
            "key_algorithm, spki_sha256, status, revoked_at, revocation_reason, created_at"
        )
        with cur.copy(
            f"COPY enrollment_certificate ({cert_columns}) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(
                [
                    "int8",
                    "bytea",
                    "text",
                    "text",
                    "text",
                    "timestamptz",
                    "timestamptz",
                    "int8",
                    "int8",
                    "int8",
                    "text",
                    "text",
                    "text",
                    "jsonb",
                    "text",
                    "text",
                    "text",
                    "text",
                    "timestamptz",
                    "text",
                    "timestamptz",
                ]  # fmt: skip
            )
            n = 0
            for i in range(people):
                email = emails[i]
                name = f"{FIRST_NAMES[i % len(FIRST_NAMES)]} {surnames[i]}"
                for k in range(per_person):
                    purpose = "signing" if k % 2 == 0 else ("dual_use", "encryption")[i % 2]
                    not_before = now - timedelta(days=rng.randrange(1, 330), seconds=k)
                    not_after = not_before + timedelta(days=365)
                    status, revoked_at, reason = "valid", None, ""
                    if k == 0 and i % 25 == 0:  # some signing certificates have expired
                        not_before -= timedelta(days=400)
                        not_after -= timedelta(days=400)
                    if k == 1 and i % 20 == 0:  # some encryption certificates are revoked
                        status, revoked_at, reason = "revoked", now, "superseded"
                    digest = hashlib.sha256(n.to_bytes(8, "big")).hexdigest()
                    copy.write_row(
                        (
                            first_cert + n,
                            facts["dual_use" if purpose != "signing" else "signing"],
                            format((1 << 100) + n, "x"),
                            digest,
                            f"CN={name}",
                            not_before,
                            not_after,
                            facts["ca_id"],
                            first_user + i,
                            facts["templates"][purpose],
                            purpose,
                            name,
                            email,
                            json.dumps([email]),
                            digest[:40],
                            "EC P-256",
                            hashlib.sha256(b"key" + n.to_bytes(8, "big")).hexdigest(),
                            status,
                            revoked_at,
                            reason,
                            now,
                        )  # fmt: skip
                    )
                    n += 1
        certs_done = time.perf_counter()
        for table in ("accounts_user", "enrollment_certificate"):
            cur.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT MAX(id) FROM {table}))"
            )
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE accounts_user")
        conn.execute("VACUUM ANALYZE enrollment_certificate")
    analysed = time.perf_counter()
    return {
        "emails": emails,
        "surnames": surnames,
        "certificates": n,
        "seconds_users": users_done - started,
        "seconds_certificates": certs_done - users_done,
        "seconds_vacuum_analyze": analysed - certs_done,
        "seconds_total": analysed - started,
    }


def explain(samples: dict) -> list[str]:
    """EXPLAIN ANALYZE of the queries behind each scenario, to show which index answers."""
    from django.db import connection, transaction

    from directory import selectors
    from enrollment.models import Certificate

    lines = []
    email = samples["emails"][123]
    lookups = {
        "exact e-mail": Certificate.objects.valid()
        .encryption_capable()
        .filter(email=email)
        .order_by("-not_before", "-pk")[:100],
    }
    for label, query in [
        ("substring 'ndersso'", "ndersso"),
        ("rare substring 'ezqu'", "ezqu"),
        ("clustered prefix 'zoe'", "zoe"),
        ("common prefix 'mar'", "mar"),
        ("everyone 'example'", "example"),
    ]:
        captured: list[tuple[str, object]] = []

        def capture(execute, sql, params, many, context, captured=captured):
            captured.append((sql, params))
            return execute(sql, params, many, context)

        with connection.execute_wrapper(capture):
            selectors.certificate_search(query=query)
        lines.append(f"-- {label}: {len(captured)} queries; the people queries:")
        with transaction.atomic(), connection.cursor() as cursor:
            for sql, params in captured:
                if not sql.startswith("SELECT"):
                    cursor.execute(sql, params)  # SET LOCAL / RESET: replay as they ran
                    lines.append(f"   ({sql})")
                    continue
                if "enrollment_certificate" in sql.split("WHERE")[0]:
                    continue  # the prefetch of the page's certificates (owner_id IN ...)
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS OFF) " + sql, params)
                plan = [row[0] for row in cursor.fetchall()]
                lines += [line for line in plan if "->" in line[:40] or "Time" in line]
        lines.append("")
    for label, queryset in lookups.items():
        lines += [f"-- {label}", queryset.explain(analyze=True), ""]
    return lines


# --- the server and the measurements --------------------------------------------------


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def measure(port: int, paths: list[str], warmup: int = 10) -> dict[str, float]:
    for path in paths[:warmup]:
        get(port, path)
    timings, results, errors = [], [], 0
    for path in paths:
        started = time.perf_counter()
        status, body = get(port, path)
        timings.append((time.perf_counter() - started) * 1000)
        if status != 200:
            errors += 1
        else:
            results.append(len(json.loads(body)["results"]))
    quantiles = statistics.quantiles(timings, n=100, method="inclusive")
    return {
        "n": len(timings),
        "p50": quantiles[49],
        "p95": quantiles[94],
        "p99": quantiles[98],
        "max": max(timings),
        "mean_results": statistics.fmean(results) if results else 0.0,
        "errors": errors,
    }


def scenarios(samples: dict, requests: int, rng: random.Random) -> dict[str, list[str]]:
    def lookup(**params: str) -> str:
        return "/api/v1/directory/?" + urlencode(params)

    emails, surnames = samples["emails"], samples["surnames"]
    substrings = []
    for _ in range(requests):
        source = rng.choice([rng.choice(surnames), rng.choice(emails).split("@")[0]])
        length = rng.randint(4, 6)
        start = rng.randrange(0, max(1, len(source) - length + 1))
        substrings.append(source[start : start + length])
    return {
        "exact e-mail": [
            lookup(email=rng.choice(emails).upper() if k % 2 else rng.choice(emails))
            for k in range(requests)
        ],
        "name/e-mail substring": [lookup(q=s) for s in substrings],
        "common prefix": [
            lookup(q=COMMON_PREFIXES[k % len(COMMON_PREFIXES)]) for k in range(requests)
        ],
    }


def ra_search(requests: int, rng: random.Random) -> list[str]:
    """What officers page through, in this process: the RA console's certificate search
    (the first 50, as /ra/certificates/ asks for them, without the page's template) and the
    API's certificate list through Django's test client."""
    from accounts.models import User
    from enrollment.models import Certificate
    from enrollment.ra_selectors import certificate_search

    picked = list(
        Certificate.objects.order_by("?").values_list("serial", "fingerprint_sha1", "email")[
            :requests
        ]
    )
    names = list(User.objects.order_by("?").values_list("username", flat=True)[:requests])
    cases = {
        "RA: surname": [rng.choice(LAST_NAMES) for _ in range(requests)],
        "RA: e-mail local part": [email.split("@")[0] for _s, _h, email in picked],
        "RA: user name": names,
        "RA: serial": [serial for serial, _h, _e in picked],
        "RA: SHA-1 thumbprint": [sha1.upper() for _s, sha1, _e in picked],
    }
    cases["RA: broad ('example')"] = ["example"] * requests
    lines = [f"{'officer pages':<24}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
             f"{'max ms':>9}{'results':>9}"]  # fmt: skip

    def timed(name: str, calls: list[Callable[[], int]]) -> None:
        for call in calls[:10]:  # warm-up: statements get prepared after five runs
            call()
        timings, results = [], []
        for call in calls:
            started = time.perf_counter()
            results.append(call())
            timings.append((time.perf_counter() - started) * 1000)
        q = statistics.quantiles(timings, n=100, method="inclusive")
        lines.append(
            f"{name:<24}{len(timings):>6}{q[49]:>9.1f}{q[94]:>9.1f}{q[98]:>9.1f}"
            f"{max(timings):>9.1f}{statistics.fmean(results):>9.1f}"
        )

    for name, queries in cases.items():
        timed(name, [lambda q=q: len(list(certificate_search(q)[:50])) for q in queries])
    client = _officer_client()
    for name, path in [
        ("API list: first page", "/api/v1/certificates/"),
        ("API list: offset 5000", "/api/v1/certificates/?offset=5000"),
        ("API list: by template", "/api/v1/certificates/?template=smime-signing"),
    ]:
        timed(name, [lambda p=path: len(client.get(p).json()["results"])] * requests)
    # A Prometheus scrape of /metrics: /health/'s checks plus the counts, among them the
    # valid certificates per template over the whole table. Fewer: one is one scrape.
    timed("/metrics scrape", [lambda: len(client.get("/metrics").content)] * min(requests, 50))
    return lines


def _officer_client() -> Any:
    """Django's test client, signed in as an RA officer of the bench database."""
    from django.conf import settings
    from django.contrib.auth.models import Group
    from django.test import Client

    from accounts.models import User
    from tests.second_factor import verified_login

    officer, _ = User.objects.get_or_create(username="bench-officer", email="o@example.com")
    officer.groups.add(Group.objects.get_or_create(name=settings.PKIPORTAL_RA_OFFICER_GROUP)[0])
    # Officers must confirm a second factor before the RA pages answer them.
    return verified_login(Client(), officer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=500_000)
    parser.add_argument("--per-person", type=int, default=2, help="certificates per person")
    parser.add_argument("--requests", type=int, default=400, help="per scenario")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--database", default=database_name("bench_directory"))
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--reuse", action="store_true", help="measure a database kept by an earlier --keep run"
    )
    options = parser.parse_args()
    rng = random.Random(7)

    with tempfile.TemporaryDirectory(prefix="bench-directory-") as tmp:
        env = prepare_django(options.database, Path(tmp))
        port = options.port or free_port()
        if not options.reuse:
            pg_tool("dropdb", "--if-exists", options.database)
            if "ERROR" in pg_tool("createdb", options.database):
                sys.exit(f"createdb {options.database} failed")
            log(f"created database {options.database}")
        log("migrating")
        run([sys.executable, "manage.py", "migrate", "-v0"], env)
        try:
            if options.reuse:
                samples = reload_samples(options.database)
            else:
                facts = sample_certificates()
                log(f"loading {options.people:,} people, {options.per_person} certificates each")
                samples = load(options.database, options.people, options.per_person, facts)
                log(
                    f"loaded {samples['certificates']:,} certificates in "
                    f"{samples['seconds_total']:.1f} s (people {samples['seconds_users']:.1f} s, "
                    f"certificates {samples['seconds_certificates']:.1f} s, "
                    f"VACUUM ANALYZE {samples['seconds_vacuum_analyze']:.1f} s)"
                )
            import django

            django.setup()  # a no-op when sample_certificates() already set it up
            log("\n".join(explain(samples)))
            server = start_gunicorn(
                env,
                port,
                workers=options.workers,
                probe="/api/v1/directory/?email=nobody@example.com",
            )
            try:
                log(f"gunicorn: {options.workers} workers on 127.0.0.1:{port}")
                log(f"{'scenario':<24}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
                    f"{'max ms':>9}{'results':>9}{'errors':>8}")  # fmt: skip
                for name, paths in scenarios(samples, options.requests, rng).items():
                    figures = measure(port, paths)
                    log(
                        f"{name:<24}{figures['n']:>6}{figures['p50']:>9.1f}{figures['p95']:>9.1f}"
                        f"{figures['p99']:>9.1f}{figures['max']:>9.1f}"
                        f"{figures['mean_results']:>9.1f}{figures['errors']:>8}"
                    )
            finally:
                stop(server)
            log("\n".join(ra_search(options.requests, rng)))
        finally:
            from django.db import connections

            connections.close_all()
            if not options.keep:
                pg_tool("dropdb", "--if-exists", options.database)
                log(f"dropped database {options.database}")


def reload_samples(database: str) -> dict:
    """E-mails and surnames of a kept database, to sample requests from."""
    import psycopg

    from accounts.search import fold

    dsn = f"host={PG['host']} port={PG['port']} user={PG['user']} dbname={database}"
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT email, last_name FROM accounts_user WHERE username LIKE 'u%' ORDER BY id"
        ).fetchall()
    return {"emails": [r[0] for r in rows], "surnames": [fold(r[1]) for r in rows]}


if __name__ == "__main__":
    main()
