"""Enrolment throughput through the HTTP API, against the bare library in one process.

    .venv/bin/python bench/enroll.py [--workers 2] [--clients 4] [--csr-requests 1500]
        [--key-requests 120] [--rsa-key-requests 30] [--rounds 3] [--profile]
        [--population 500000]

Creates a throwaway PostgreSQL database (``bench_enroll`` on 127.0.0.1, as the
``postgres`` user), migrates it, creates a P-256 issuing CA under a P-384 root, and as
many accounts (each with a knox API token) as the shipped per-person limits need: nobody
gets more than ``PKIPORTAL_MAX_VALID_PER_TEMPLATE`` (3) certificates of a template, so
the limits stay on, as in production. ``--population`` first loads synthetic people with
two certificates each (as bench/directory.py does), to time enrolment against tables of
production size. It starts gunicorn on 127.0.0.1 and times:

- the CSR path (POST /api/v1/enrollments/ with a pre-generated CSR), RSA-2048 and P-256
  keys, ``--clients`` concurrent clients (gunicorn's sync workers close each connection;
  the clients write prepared requests to plain sockets, since they share the cores);
- the portal-key path (the server generates the key and returns a PKCS#12), RSA-2048 and
  P-256;
- the stack's floor: the same POST, authenticated, refused by its input check (no CSR),
  so what gunicorn, Django, DRF and the token lookup cost before any enrolment work;
- the bare library, as issue 3 defines it: the same CSR work with ``cryptography`` alone
  in this process (load and verify the CSR, build and sign the portal's certificate
  profile with x509.CertificateBuilder), plus its builder alone; and, for reference,
  the same through our enrollment.x509 (which reuses the constant extensions' bytes,
  so it is faster than the library alone, and is not the ratio's denominator).

It prints certificates per second for each (best of ``--rounds``), the server CPU per
certificate (gunicorn workers and their PostgreSQL backends, from /proc) and the ratio of
the HTTP CSR path to the bare library. The machine's speed drifts over a run, so the bare
library also runs right after each HTTP round of the P-256 CSR path, and the ratio of
each such pair is printed with their median. ``--profile`` then runs CSR enrolments in-process
through Django's handler and prints the CPU of each main step (timed around the calls,
no profiler), the SQL statements of one enrolment, how many times a CA key was loaded,
and cProfile's hottest functions by CPU time. Everything is bounded; gunicorn and the
database are removed at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _harness
from _harness import HOST, PG, ROOT, free_port, portal_environment, run, start_gunicorn, stop

sys.path.insert(0, str(ROOT))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from enrollment.x509 import builder, csr, keys  # noqa: E402
from enrollment.x509.policy import CertificatePolicy, Purpose  # noqa: E402

DATABASE = _harness.database_name("bench_enroll")
ENROL = "/api/v1/enrollments/"
CSR_TEMPLATE = "smime-signing"
KEY_TEMPLATE = "smime-dual-use"
PKCS12_PASSWORD = "benchmark pkcs12 passphrase"
PER_PERSON = 3  # PKIPORTAL_MAX_VALID_PER_TEMPLATE's default, which the server keeps
HTTP_TIMEOUT = 60.0
FLOOR = "HTTP floor: the same POST refused (400, no CSR)"


@dataclass
class Result:
    name: str
    count: int
    seconds: float
    failures: int = 0
    app_cpu: float = 0.0  # seconds of CPU in the gunicorn workers
    db_cpu: float = 0.0  # seconds of CPU in their PostgreSQL backends
    client_cpu: float = 0.0  # seconds of CPU in this process's client threads
    unit: str = "certs/s"

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        failed = f", {self.failures} FAILED" if self.failures else ""
        figures = f"{self.rate:8.1f} {self.unit}  ({self.count} in {self.seconds:.2f} s{failed})"
        if self.count and (self.app_cpu or self.db_cpu):
            per, each = 1000 / self.count, "cert" if self.unit == "certs/s" else "req"
            figures += (
                f"  CPU/{each}: app {self.app_cpu * per:.2f} + PostgreSQL "
                f"{self.db_cpu * per:.2f} + clients {self.client_cpu * per:.2f} ms"
            )
        return f"{self.name:<52} {figures}"


# --- set-up and tear-down of the server side -------------------------------------------


def manage(env: dict[str, str], *args: str, tree: Path = ROOT) -> str:
    """manage.py of the portal in ``tree`` (bench/enroll_compare.py runs another commit's)."""
    return run([sys.executable, "manage.py", *args], env, cwd=tree)


# Run by the portal's own `manage.py shell`, so accounts are made by the code under test.
SETUP_USERS = """
import json
from knox.models import AuthToken
from django.contrib.auth import get_user_model
tokens = []
for i in range({count}):
    user = get_user_model().objects.create_user(
        username=f"bench{{i}}", email=f"bench{{i}}@example.com", first_name="Bench",
        last_name=f"Client{{i}}", password=None,
    )
    tokens.append(AuthToken.objects.create(user=user)[1])
print(json.dumps(tokens))
"""


def create_database(
    env: dict[str, str],
    var_dir: Path,
    users: int,
    *,
    database: str = DATABASE,
    tree: Path = ROOT,
) -> list[str]:
    """A fresh database with the hierarchy, `users` accounts and one API token each,
    made by the portal in ``tree``: its migrations, create_pki and models."""
    run(["dropdb", *PG, "--if-exists", "--force", database])
    run(["createdb", *PG, database])
    manage(env, "migrate", "--noinput", tree=tree)
    (var_dir / "offline").mkdir(parents=True)
    manage(
        env,
        "create_pki",
        "--root-key-algorithm", "ec-p384",
        "--issuing-key-algorithm", "ec-p256",
        "--root-key-out", str(var_dir / "offline" / "root-key.pem"),
        "--root-passphrase-file", str(var_dir / "offline" / "root-passphrase"),
        "--country", "GB",
        tree=tree,
    )  # fmt: skip
    out = manage(env, "shell", "-c", SETUP_USERS.format(count=users), tree=tree)
    return json.loads(out.strip().splitlines()[-1])


def populate(people: int) -> None:
    """(Runs inside the Django environment.) Fill the tables as a large organisation's are.

    ``people`` synthetic holders with two certificates each, COPYed in bulk exactly as
    bench/directory.py loads them (its rows reuse the DER of two real certificates from
    the bench CA), so enrolment is timed against production-sized tables and indexes.
    """
    import django

    django.setup()
    import importlib.util

    from django.contrib.auth import get_user_model

    from enrollment import services
    from enrollment.models import CertificateTemplate

    holder = get_user_model().objects.create(
        username="bench-sample", first_name="Sample", last_name="Holder", email="s@example.com"
    )
    public_key = keys.generate_private_key(keys.KeyAlgorithm.EC_P256).public_key()
    templates = {t.purpose: t for t in CertificateTemplate.objects.all()}
    ders = {}
    ca_id = 0
    for purpose in ("signing", "dual_use"):
        certificate = services.certificate_issue(
            template=templates[purpose], owner=holder, public_key=public_key
        )
        ders[purpose], ca_id = bytes(certificate.der), certificate.ca_id
    facts = {"ca_id": ca_id, "templates": {p: t.pk for p, t in templates.items()}, **ders}
    # By path: the portal's own `directory` app shadows bench/directory.py on sys.path.
    spec = importlib.util.spec_from_file_location(
        "bench_directory", Path(__file__).parent / "directory.py"
    )
    assert spec is not None
    assert spec.loader is not None
    directory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(directory)
    loaded = directory.load(DATABASE, people, 2, facts)
    print(json.dumps({key: loaded[key] for key in ("certificates", "seconds_total")}))


# --- the load -------------------------------------------------------------------------


def make_csrs(algorithm: keys.KeyAlgorithm, count: int, distinct_keys: int) -> list[str]:
    """PEM CSRs made before timing; RSA keys are reused (generation is not what we time)."""
    pool = [keys.generate_private_key(algorithm) for _ in range(min(count, distinct_keys))]
    made = []
    for i in range(count):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Bench request {i}")])
        request = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(name)
            .sign(pool[i % len(pool)], hashes.SHA256())
        )
        made.append(request.public_bytes(Encoding.PEM).decode("ascii"))
    return made


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of processes from /proc (Linux): load-independent cost."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def server_pids(
    gunicorn: subprocess.Popen, database: str = DATABASE
) -> tuple[list[int], list[int]]:
    """The gunicorn workers, and the PostgreSQL backends serving the benchmark database."""
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == gunicorn.pid:
            workers.append(int(stat.parent.name))
    query = f"SELECT pid FROM pg_stat_activity WHERE datname = '{database}'"
    backends = [int(pid) for pid in run(["psql", *PG, "-d", "postgres", "-Atc", query]).split()]
    return workers, backends


class Accounts:
    """Hands out the benchmark accounts' tokens, each at most `per_template` times a template.

    With the per-person limits on, an account can hold only a few valid certificates of a
    template, so thousands of enrolments come from hundreds of people, as they would.
    Consecutive requests go to different people: the clients take every ``clients``-th
    request, so handing one person's requests out together would have most concurrent
    enrolments wait for each other on that person's row lock (which exists to serialise
    one person's own requests), a pattern of one person enrolling from several clients at
    once rather than of many people enrolling.
    """

    def __init__(self, tokens: list[str], per_template: int) -> None:
        self.tokens = tokens
        self.per_template = per_template
        self.used: dict[str, int] = {}

    def take(self, template: str) -> str:
        index = self.used.get(template, 0)
        self.used[template] = index + 1
        if index // self.per_template >= len(self.tokens):
            raise SystemExit(f"benchmark bug: more enrolments for {template} than planned")
        return self.tokens[index % len(self.tokens)]


def http_request(port: int, token: str, body: bytes) -> bytes:
    """One complete POST, built before timing."""
    head = (
        f"POST {ENROL} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Token {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def exchange(port: int, request: bytes) -> tuple[int, bytes]:
    """Send one request on a new connection and read the answer to the server's close."""
    with socket.create_connection((HOST, port), timeout=HTTP_TIMEOUT) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    if not response.startswith(b"HTTP/1."):
        return 0, response[:300]
    return int(response[9:12]), response.partition(b"\r\n\r\n")[2]


def post_all(
    port: int,
    requests: list[bytes],
    name: str,
    clients: int,
    gunicorn: subprocess.Popen | None = None,
    database: str = DATABASE,
    expected: int = 201,
) -> Result:
    """Send every prepared request, split over `clients` threads started together."""
    failures: list[str] = []
    lock = threading.Lock()
    start_line = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        start_line.wait()
        for request in requests[index::clients]:
            status, content = exchange(port, request)
            if status != expected:
                with lock:
                    failures.append(f"{status}: {content[:300]!r}")

    workers, backends = server_pids(gunicorn, database) if gunicorn is not None else ([], [])
    app_before, db_before = cpu_seconds(workers), cpu_seconds(backends)
    client_before = time.process_time()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, i) for i in range(clients)]
        start_line.wait()
        started = time.perf_counter()
        for future in futures:
            future.result()
        elapsed = time.perf_counter() - started
    if failures:
        print(f"  {name}: {len(failures)} failed, e.g. {failures[0]}", file=sys.stderr)
    return Result(
        name,
        len(requests) - len(failures),
        elapsed,
        len(failures),
        app_cpu=cpu_seconds(workers) - app_before,
        db_cpu=cpu_seconds(backends) - db_before,
        client_cpu=time.process_time() - client_before,
    )


def csr_bodies(csrs: list[str]) -> list[bytes]:
    return [json.dumps({"template": CSR_TEMPLATE, "csr": pem}).encode() for pem in csrs]


def key_bodies(algorithm: keys.KeyAlgorithm, count: int) -> list[bytes]:
    body = {
        "template": KEY_TEMPLATE,
        "key_algorithm": algorithm.value,
        "pkcs12_password": PKCS12_PASSWORD,
        "pkcs12_format": "modern",
    }
    return [json.dumps(body).encode()] * count


# --- the bare library -----------------------------------------------------------------


def bare_library(csrs: list[str]) -> tuple[Result, Result, Result, Result]:
    """The CSR path's cryptography in one process, as the issue asks: with ``cryptography``
    alone (parse and verify the CSR, build and sign the same certificate), then its
    builder alone; and two references.

    The certificate is the portal's profile: ours, built once untimed, gives the
    extensions and names. With cryptography alone, what is the same for every
    certificate (the issuer's name, the constant extensions) is made once before timing,
    as a script would; per certificate the key's identifier, serial and validity are new,
    and so are the subject and subjectAltName, made from the person's attribute texts
    and addresses, as issuing to different people needs (the HTTP path's certificates
    are each for someone else). ``sign`` encodes the whole certificate, as the library
    does. References, not the ratio's denominator: the same with the names made once too
    (the strictest bar), and our enrollment.x509 (which does more per CSR, its policy
    checks, and reuses the constant extensions' bytes).
    """
    _root, issuing, issuing_key = _harness.memory_hierarchy(keys.KeyAlgorithm.EC_P256)
    subject = builder.Subject(
        common_name="Bench Client",
        given_name="Bench",
        surname="Client",
        organization_name="Bench Org",
        organization_identifier="NTRUS-0000000",
        email_addresses=("bench@example.com",),
    )
    policy = CertificatePolicy(purpose=Purpose.SIGNING)

    def ours(public_key: keys.PublicKey) -> x509.Certificate:
        return builder.build_end_entity(
            public_key=public_key,
            subject=subject,
            issuer_certificate=issuing,
            issuer_key=issuing_key,
            policy=policy,
            crl_url="http://127.0.0.1:8000/pki/issuing.crl",
            ca_issuers_url="http://127.0.0.1:8000/pki/issuing.crt",
        )

    profile = ours(keys.generate_private_key(keys.KeyAlgorithm.EC_P256).public_key())
    per_key, per_person = x509.SubjectKeyIdentifier.oid, x509.SubjectAlternativeName.oid
    # In the profile's order; the key's identifier and the person's addresses marked.
    constant = [
        e.oid if e.oid in (per_key, per_person) else (e.value, e.critical)
        for e in profile.extensions
    ]
    lifetime = profile.not_valid_after_utc - profile.not_valid_before_utc
    # The person's data as a script has it: attribute types and texts, addresses.
    person = [[(a.oid, a.value, a._type) for a in rdn] for rdn in profile.subject.rdns]
    addresses = [str(name.value) for name in profile.extensions.get_extension_for_oid(
        per_person
    ).value]  # fmt: skip
    made_once = (
        profile.subject,
        x509.SubjectAlternativeName([x509.RFC822Name(a) for a in addresses]),
    )

    def library(public_key: keys.PublicKey, hoisted: bool = False) -> x509.Certificate:
        """Per certificate the key's identifier, serial and validity; and unless
        ``hoisted``, the subject and subjectAltName made from the person's data, as
        issuing to different people needs (``hoisted``: made once, the strictest bar)."""
        if hoisted:
            subject_name, alt_names = made_once
        else:
            subject_name = x509.Name(
                [
                    x509.RelativeDistinguishedName(
                        [x509.NameAttribute(oid, value, kind) for oid, value, kind in rdn]
                    )
                    for rdn in person
                ]
            )
            alt_names = x509.SubjectAlternativeName([x509.RFC822Name(a) for a in addresses])
        now = datetime.now(UTC)
        made = (
            x509.CertificateBuilder()
            .subject_name(subject_name)
            .issuer_name(issuing.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + lifetime)
        )
        for extension in constant:
            if extension == per_key:
                made = made.add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(public_key), False
                )
            elif extension == per_person:
                made = made.add_extension(alt_names, False)
            else:
                made = made.add_extension(*extension)  # type: ignore[misc]
        return made.sign(issuing_key, hashes.SHA256())

    # The same certificate as the portal's, but for its serial, validity and signature.
    for hoisted in (False, True):
        check = library(profile.public_key(), hoisted)
        if [(e.oid, e.critical, e.value) for e in check.extensions] != [
            (e.oid, e.critical, e.value) for e in profile.extensions
        ] or (check.subject.public_bytes(), check.issuer) != (
            profile.subject.public_bytes(),
            profile.issuer,
        ):
            raise SystemExit("benchmark bug: the library's certificate is not the portal's")

    def timed(name: str, sign: Any, public_keys: Any) -> Result:
        started = time.perf_counter()
        for public_key in public_keys():
            sign(public_key)
        result = Result(name, len(csrs), 0.0)
        result.seconds = time.perf_counter() - started
        return result

    def parsed_by_library() -> Any:
        for pem in csrs:
            request = x509.load_pem_x509_csr(pem.encode())
            if not request.is_signature_valid:
                raise SystemExit("benchmark bug: a CSR's signature does not verify")
            yield request.public_key()

    def parsed_by_us() -> Any:
        allowed = frozenset(keys.KeyAlgorithm)
        for pem in csrs:
            yield csr.parse_csr(pem, allowed_key_algorithms=allowed).public_key

    one_key = keys.generate_private_key(keys.KeyAlgorithm.EC_P256).public_key()
    with_csr = timed("bare library: CSR parse+verify, build+sign", library, parsed_by_library)
    builder_only = timed("bare library: build+sign only", library, lambda: [one_key] * len(csrs))
    hoisted = timed(
        "bare library, names made once: CSR parse+verify, build+sign",
        functools.partial(library, hoisted=True),
        parsed_by_library,
    )
    our_layer = timed("our enrollment.x509 alone: CSR parse+verify, build+sign", ours, parsed_by_us)
    return with_csr, builder_only, hoisted, our_layer


# --- the in-process profile -----------------------------------------------------------


def profile(count: int) -> None:
    """(Runs inside the Django environment.) Where one CSR enrolment's CPU goes."""
    import cProfile
    import pstats

    import django

    django.setup()
    from knox.models import AuthToken

    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from accounts.models import User
    from enrollment.x509 import keys as key_module

    tokens = []
    for i in range(-(-(count + 5) // PER_PERSON)):
        user = User.objects.create_user(
            username=f"profiled{i}", email=f"profiled{i}@example.com", first_name="Pro",
            last_name=f"Filed{i}",
        )  # fmt: skip
        tokens += [AuthToken.objects.create(user=user)[1]] * PER_PERSON
    client = Client()
    bodies = csr_bodies(make_csrs(keys.KeyAlgorithm.EC_P256, count + 5, count + 5))

    def enrol(index: int) -> int:
        return client.post(
            ENROL,
            bodies[index],
            content_type="application/json",
            headers={"Authorization": f"Token {tokens[index]}"},
        ).status_code

    loads = 0
    original = key_module.load_private_key_pem

    def counting_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal loads
        loads += 1
        return original(*args, **kwargs)

    key_module.load_private_key_pem = counting_load
    for index in range(5):  # warm up: imports, URL resolver, the CA key's first load
        assert enrol(index) == 201
    warm_loads, loads = loads, 0
    with CaptureQueriesContext(connection) as queries:
        assert enrol(5) == 201
    captured = list(queries.captured_queries)
    by_kind: dict[str, int] = {}
    for query in captured:
        kind = query["sql"].split(None, 1)[0].upper()
        by_kind[kind] = by_kind.get(kind, 0) + 1
    steps = _time_steps()
    started, cpu = time.perf_counter(), time.process_time()
    for index in range(6, 6 + count // 2):
        enrol(index)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    timed_count = count // 2
    print(f"\nIn-process: {timed_count} CSR enrolments (P-256), one process, no HTTP")
    print(f"  {timed_count / elapsed:.1f} certs/s, {cpu / timed_count * 1000:.2f} ms CPU each")
    print(f"  CA key loads: {warm_loads} during warm-up, {loads} during the timed run")
    print(f"  SQL per enrolment: {len(captured)} {by_kind}")
    print("  CPU per enrolment by step (nested steps are inside their callers):")
    skipped = []
    for name, seconds, calls in steps.report():
        if not calls:
            skipped.append(name.strip())
            continue
        print(f"    {seconds / timed_count * 1000:6.3f} ms  {name} ({calls // timed_count}x)")
    if skipped:  # the locked way's, where the unlocked way issued every certificate
        print(f"  Not run: {'; '.join(skipped)}")
    profiler = cProfile.Profile(time.process_time)  # CPU only: waits on PostgreSQL are not cost
    profiler.enable()
    for index in range(6 + count // 2, len(bodies)):
        enrol(index)
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(15)


def _time_steps() -> Any:
    """Wrap the enrolment's main steps with CPU-time counters (process_time, no profiler)."""
    import collections
    import functools

    from django.core.handlers.base import BaseHandler

    from enrollment import audit, hotsql, services
    from enrollment import keystore as keystore_module
    from enrollment.api import authentication, serializers
    from enrollment.api import views as api_views
    from enrollment.x509 import builder as builder_module

    totals: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()

    def wrap(owner: Any, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                totals[name] += time.process_time() - started
                calls[name] += 1

        setattr(owner, attribute, timed)

    steps = [
        (BaseHandler, "get_response", "Django: the whole request, middleware included"),
        (authentication.TokenAuthentication, "authenticate", "  token authentication"),
        (api_views, "_enrol", "  the enrolment view"),
        (serializers, "valid_csr_body", "    input check"),
        (services, "csr_submit_named", "    services.csr_submit_named (the API's CSR path)"),
        (services, "request_submit", "    services.request_submit"),
        (services, "_csr_issued_unlocked", "      unlocked way (PostgreSQL), all of it"),
        (hotsql, "enrolment_check", "        check: template, limits, version, key, CA (1)"),
        (hotsql, "template_by_slug", "      template (1 statement)"),
        (hotsql, "issue_checked", "        write it all (1 statement)"),
        (services, "parse_csr", "      parse + verify the CSR"),
        (services, "_enrolment_counts", "      locked way: lock + permission and limits (2)"),
        (services, "_issue", "      _issue"),
        (hotsql, "claim_key", "        key claim + issuing CA (1 statement on PostgreSQL)"),
        (keystore_module, "issue_end_entity", "        sign (keystore)"),
        (builder_module, "build_end_entity", "          build + sign"),
        (hotsql, "insert_issued", "        certificate with its request (1 statement)"),
        (audit, "_append", "      audit chain: lock, chain, insert, move (1 statement)"),
        (serializers, "issued_body", "    the 201 answer"),
    ]
    for owner, attribute, name in steps:
        wrap(owner, attribute, name)

    class Steps:
        def report(self) -> list[tuple[str, float, int]]:
            return [(name, totals[name], calls[name]) for _owner, _attribute, name in steps]

    return Steps()


# --- main -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument(
        "--csr-requests",
        type=int,
        default=1500,
        help="per key type and round: rounds of ~4 s, long enough to see costs that grow",
    )
    parser.add_argument("--key-requests", type=int, default=120, help="portal-key P-256")
    parser.add_argument("--rsa-key-requests", type=int, default=30, help="portal-key RSA-2048")
    parser.add_argument("--rounds", type=int, default=3, help="best of this many runs")
    parser.add_argument("--profile", action="store_true", help="also profile in-process")
    parser.add_argument("--profile-requests", type=int, default=600, help="CSRs it profiles")
    parser.add_argument(
        "--population",
        type=int,
        default=0,
        help="first load this many synthetic people with two certificates each "
        "(500000: a million certificates, as in bench/directory.py)",
    )
    parser.add_argument("--_profile", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_populate", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._profile is not None:
        profile(args._profile)
        return
    if args._populate is not None:
        populate(args._populate)
        return
    for tool in ("createdb", "dropdb"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} (PostgreSQL client) is needed")

    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f} (before)")
    print("Generating CSRs (not timed)...", flush=True)
    p256_csrs = make_csrs(keys.KeyAlgorithm.EC_P256, args.csr_requests, args.csr_requests)
    rsa_csrs = make_csrs(keys.KeyAlgorithm.RSA_2048, args.csr_requests, 16)

    var_dir = Path(tempfile.mkdtemp(prefix="bench-enroll-"))
    env = portal_environment(DATABASE, var_dir)
    gunicorn = None
    results: list[Result] = []
    try:
        plan = [
            ("HTTP CSR path, P-256 keys", CSR_TEMPLATE, csr_bodies(p256_csrs)),
            ("HTTP CSR path, RSA-2048 keys", CSR_TEMPLATE, csr_bodies(rsa_csrs)),
            (
                "HTTP portal key + PKCS#12, P-256",
                KEY_TEMPLATE,
                key_bodies(keys.KeyAlgorithm.EC_P256, args.key_requests),
            ),
            (
                "HTTP portal key + PKCS#12, RSA-2048",
                KEY_TEMPLATE,
                key_bodies(keys.KeyAlgorithm.RSA_2048, args.rsa_key_requests),
            ),
        ]
        warm = csr_bodies(make_csrs(keys.KeyAlgorithm.EC_P256, 4 * args.workers, 16))
        per_template: dict[str, int] = {CSR_TEMPLATE: len(warm)}
        for _name, template, bodies in plan:
            per_template[template] = per_template.get(template, 0) + len(bodies) * args.rounds
        people = -(-max(per_template.values()) // PER_PERSON)
        print(f"Creating the database, the CA hierarchy and {people} people...", flush=True)
        accounts = Accounts(create_database(env, var_dir, people), PER_PERSON)
        if args.population:
            print(
                f"Loading {args.population} synthetic people (2 certificates each)...", flush=True
            )
            out = run([sys.executable, __file__, "--_populate", str(args.population)], env)
            loaded = json.loads(out.strip().splitlines()[-1])
            print(
                f"  {loaded['certificates']:,} certificates already in the table "
                f"(loaded in {loaded['seconds_total']:.0f} s)",
                flush=True,
            )
        port = free_port()
        gunicorn = start_gunicorn(env, port, workers=args.workers, log=var_dir / "gunicorn.log")
        warm_up = [http_request(port, accounts.take(CSR_TEMPLATE), body) for body in warm]
        post_all(port, warm_up, "warm-up", args.clients)  # every worker loads its CA key
        print(
            f"Timing through gunicorn ({args.workers} workers, {args.clients} clients)...",
            flush=True,
        )
        # (HTTP, bare library) rates of the P-256 CSR path, round by round: the bare
        # library runs seconds after each HTTP round, so both see the machine alike.
        paired: list[tuple[float, float]] = []
        for name, template, bodies in plan:
            rounds = [
                [http_request(port, accounts.take(template), body) for body in bodies]
                for _ in range(args.rounds)
            ]
            measured = []
            for requests in rounds:
                measured.append(post_all(port, requests, name, args.clients, gunicorn))
                if bodies is plan[0][2]:
                    paired.append((measured[-1].rate, bare_library(p256_csrs)[0].rate))
            results.append(max(measured, key=lambda result: result.rate))
        http_p256 = results[0]
        # The stack's floor: the same endpoint, authenticated, refused by its input check
        # (no CSR) before any enrolment work. What gunicorn, Django, DRF and the token cost.
        refused = json.dumps({"template": CSR_TEMPLATE}).encode()
        floor_requests = [
            http_request(port, accounts.tokens[i % len(accounts.tokens)], refused)
            for i in range(args.csr_requests)
        ]
        floor = max(
            (
                post_all(port, floor_requests, FLOOR, args.clients, gunicorn, expected=400)
                for _ in range(args.rounds)
            ),
            key=lambda result: result.rate,
        )
        floor.unit = "reqs/s"
        results.append(floor)
        stop(gunicorn)
        gunicorn = None
        print("Timing the bare library in this process...", flush=True)
        bare_csr, bare_builder, hoisted, our_layer = max(
            (bare_library(p256_csrs) for _ in range(args.rounds)), key=lambda r: r[0].rate
        )
        bare_rsa, *_ = max(
            (bare_library(rsa_csrs) for _ in range(args.rounds)), key=lambda r: r[0].rate
        )
        bare_rsa.name = "bare library: RSA-2048 CSR parse+verify, build+sign"
        results += [bare_csr, bare_rsa, bare_builder, hoisted, our_layer]
        print()
        for result in results:
            print(result.line())
        print(
            f"\nHTTP CSR path (P-256) / bare library (P-256 CSR parse+verify+build+sign): "
            f"{http_p256.rate / bare_csr.rate:.1%}"
        )
        print(
            f"References: {http_p256.rate / hoisted.rate:.1%} of the library with the names "
            f"made once, {http_p256.rate / our_layer.rate:.1%} of our enrollment.x509 alone"
        )
        ratios = sorted(http / bare for http, bare in paired if bare)
        if ratios:
            print(
                "Paired rounds (each HTTP round, then the bare library at once): "
                + ", ".join(f"{http:.1f} / {bare:.1f} certs/s" for http, bare in paired)
                + f"; ratios {', '.join(f'{r:.1%}' for r in ratios)}, median "
                f"{statistics.median(ratios):.1%}"
            )
        server_cpu = (http_p256.app_cpu + http_p256.db_cpu) / max(http_p256.count, 1)
        if server_cpu:
            ceiling = (os.cpu_count() or 1) / server_cpu
            print(
                f"CPU-bound ceiling of the HTTP CSR path on {os.cpu_count()} idle cores "
                f"(server CPU per certificate {server_cpu * 1000:.1f} ms): "
                f"{ceiling:.0f} certs/s = {ceiling / bare_csr.rate:.1%} of the bare library"
            )
        floor_cpu = (floor.app_cpu + floor.db_cpu) / max(floor.count, 1)
        if server_cpu and floor_cpu:
            aim = 0.15 * bare_csr.rate
            print(
                f"The stack's floor (an authenticated 400 on the same endpoint): "
                f"{floor_cpu * 1000:.2f} ms of server CPU, {floor_cpu / server_cpu:.0%} of an "
                f"enrolment's. 15% of the bare library is {aim:.0f} certs/s: "
                f"{(os.cpu_count() or 1) / aim * 1000:.2f} ms per certificate on idle cores."
            )
        print(f"load average: {os.getloadavg()[0]:.2f} (after)")
        if args.profile:
            print(run([sys.executable, __file__, "--_profile", str(args.profile_requests)], env))
    finally:
        if gunicorn is not None:
            stop(gunicorn)
        run(["dropdb", *PG, "--if-exists", "--force", DATABASE])
        shutil.rmtree(var_dir, ignore_errors=True)
    if any(result.failures for result in results):
        raise SystemExit("some requests failed; see above")


if __name__ == "__main__":
    main()
