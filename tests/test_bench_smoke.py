"""Every benchmark in bench/ still runs: each at tiny sizes, and it prints its figures.

What a benchmark measures is never pass/fail (docs/benchmarks.md); that it runs is. A
feature change once broke bench/crl.py and bench/directory.py without anyone noticing,
because nothing ran them. Here each runs as a developer runs it (the project's Python,
from the project root, in its own process group) and the test checks its exit status and
the shape of its figures: every expected line, each rate a positive number, no failures.

Isolation: the benchmarks create their databases on the test suite's PostgreSQL server
(BENCH_PG_URL, from DATABASE_URL) under names ending in this process's id
(BENCH_DATABASE_SUFFIX), so xdist workers, other checkouts' suites and a developer's run
of the same benchmark never share one, and they need no xdist group: each starts its
gunicorn, Celery, Redis and slapd on free ports and its files under its own TMPDIR. A
database or temporary file a benchmark leaves behind fails its test (and is removed).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from django.conf import settings

from tests import slapd, softhsm
from tests.integration.test_crl_publishing import RedisServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 300  # seconds per benchmark; each takes 5-60 s on an idle 2-core machine
SUFFIX = f"_smoke{os.getpid()}"
NUMBER = r"\d+(?:\.\d+)?"

Bench = Callable[..., str]


def _server_url() -> str:
    """postgres://user[:password]@host:port of the database the suite runs on."""
    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("the benchmarks need PostgreSQL: DATABASE_URL=postgres://...")
    for tool in ("psql", "createdb", "dropdb"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: the benchmarks need PostgreSQL's client programs")
    user = quote(db["USER"] or "postgres", safe="")
    if db["PASSWORD"]:
        user += ":" + quote(db["PASSWORD"], safe="")
    return f"postgres://{user}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"


def _psql(env: dict[str, str], sql: str) -> list[str]:
    url = env["BENCH_PG_URL"] + "/postgres"
    done = subprocess.run(
        ["psql", url, "-Atc", sql], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def _ours(env: dict[str, str]) -> list[str]:
    """The databases named with this process's suffix."""
    sql = f"SELECT datname FROM pg_database WHERE right(datname, {len(SUFFIX)}) = '{SUFFIX}'"
    return _psql(env, sql)


@pytest.fixture
def bench(tmp_path) -> Iterator[Bench]:
    """Runs ``bench/<script> args...``; returns what it printed, or fails with its output.

    Its environment is the suite's without the portal's settings (a benchmark configures
    the processes it starts itself), pointed at the suite's PostgreSQL server. Afterwards
    nothing it created may remain: no database with our suffix, no temporary file.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PKIPORTAL_", "CELERY_", "BENCH_", "PG"))
        and key not in ("DATABASE_URL", "SOFTHSM2_CONF")
    }
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env.update(BENCH_PG_URL=_server_url(), BENCH_DATABASE_SUFFIX=SUFFIX, TMPDIR=str(temporary))
    assert _ours(env) == [], "a database of an earlier benchmark in this process remains"

    def run(script: str, *args: str) -> str:
        process = subprocess.Popen(
            [sys.executable, f"bench/{script}", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        try:
            out, err = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            # Ctrl-C: its finally blocks stop what it started and drop its database.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
            try:
                out, err = process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                out, err = process.communicate()
            pytest.fail(f"bench/{script} took more than {TIMEOUT} s:\n{out[-4000:]}\n{err[-4000:]}")
        if process.returncode != 0:
            pytest.fail(
                f"bench/{script} {' '.join(args)} exited {process.returncode}:\n"
                f"{out[-4000:]}\n{err[-6000:]}"
            )
        return out

    yield run
    left = _ours(env)
    for database in left:
        _psql(env, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert left == [], f"the benchmark left its databases behind: {left}"
    files = sorted(str(path.relative_to(temporary)) for path in temporary.rglob("*"))
    assert files == [], f"the benchmark left temporary files behind: {files[:10]}"


def matches(pattern: str, out: str) -> list[re.Match[str]]:
    return list(re.finditer(pattern, out, re.MULTILINE))


def key_values(out: str) -> dict[str, str]:
    """The ``name: value`` lines of bench/rollout.py and bench/ldap_sweep.py."""
    return {m["key"]: m["value"] for m in matches(r"^ *(?P<key>\w+): (?P<value>.+)$", out)}


def test_enroll(bench):
    out = bench(
        "enroll.py",
        "--workers", "1", "--clients", "2", "--rounds", "1",
        "--csr-requests", "12", "--key-requests", "3", "--rsa-key-requests", "2",
        "--population", "30", "--profile", "--profile-requests", "20",
    )  # fmt: skip
    assert "FAILED" not in out
    rates = matches(
        rf"^(?P<name>(?:HTTP|bare library).+?) +(?P<rate>{NUMBER}) (?:certs|reqs)/s"
        rf"  \((?P<count>\d+) in {NUMBER} s\)",
        out,
    )
    http = {m["name"]: m for m in rates if m["name"].startswith("HTTP")}
    bare = {m["name"]: m for m in rates if m["name"].startswith("bare library")}
    assert len(http) >= 5, out  # CSR P-256 and RSA, portal key P-256 and RSA, the floor
    assert len(bare) >= 3, out
    assert all(float(m["rate"]) > 0 and int(m["count"]) > 0 for m in rates), out
    assert matches(rf"^HTTP CSR path \(P-256\) / bare library .*: {NUMBER}%$", out), out
    assert matches(rf"^References: {NUMBER}% of the library .*, {NUMBER}% of our .*$", out), out
    # --rounds 1: one HTTP round of the P-256 CSR path, paired with one bare-library run.
    assert matches(
        rf"^Paired rounds .*: {NUMBER} / {NUMBER} certs/s; ratios {NUMBER}%, median", out
    )
    assert matches(r"^  60 certificates already in the table", out), out  # --population 30
    # --profile: the in-process rate, and each step it times was called.
    assert matches(rf"^In-process: 10 CSR enrolments .*\n  {NUMBER} certs/s", out), out
    steps = matches(rf"^ +{NUMBER} ms  (?P<step>.+) \((?P<calls>\d+)x\)$", out)
    assert len(steps) >= 10, out
    assert all(int(m["calls"]) >= 1 for m in steps), [m.group(0) for m in steps]
    assert matches(r"function calls .* in .* seconds", out), out


def test_enroll_ideal(bench):
    out = bench(
        "enroll_ideal.py", "--requests", "8", "--rounds", "2", "--workers", "1", "--clients", "2"
    )
    # No CPU figures asserted: eight requests may take less than one /proc tick (10 ms),
    # and a line then carries none (as bench/enroll.py's smoke test allows).
    servers = matches(
        rf"^HTTP CSR path, the (?P<side>portal|ideal server) \(P-256\) +(?P<rate>{NUMBER}) "
        rf"certs/s  \(8 in {NUMBER} s\)",
        out,
    )
    assert [m["side"] for m in servers] == ["portal", "ideal server"], out
    assert all(float(m["rate"]) > 0 for m in servers), out
    # --rounds 2: each server's ratio to the bare library in both rounds, and their median.
    assert len(matches(rf"^  {NUMBER}% of the bare library .*, {NUMBER}%, median", out)) == 2
    assert matches(rf"^bare library: .* {NUMBER} certs/s \(rounds: \d+, \d+\)$", out), out
    assert matches(r"^The portal runs at \d+% of the ideal server's rate", out), out


def test_enroll_compare(bench, tmp_path):
    out = bench(
        "enroll_compare.py", "HEAD",
        "--rounds", "2", "--block", "6", "--workers", "1", "--clients", "2",
    )  # fmt: skip
    sides = matches(
        rf"^  (?P<side>[AB]) .+ app +{NUMBER} \+ PostgreSQL +{NUMBER} = +(?P<ms>{NUMBER}) ms"
        rf" +(?P<rate>{NUMBER}) certs/s$",
        out,
    )
    assert [m["side"] for m in sides] == ["A", "B"], out
    assert all(float(m["ms"]) > 0 and float(m["rate"]) > 0 for m in sides), out
    assert matches(rf"^  B - A: [+-]{NUMBER} ms per enrolment", out), out
    worktrees = subprocess.run(
        ["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert str(tmp_path) not in worktrees  # its worktree of BASE (under TMPDIR) is gone


def test_enroll_instructions(bench, tmp_path):
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        pytest.fail("valgrind is needed for bench/enroll_instructions.py: apt-get install valgrind")
    out = bench("enroll_instructions.py", "HEAD", "--enrolments", "2")
    sides = matches(r"^  (?P<side>[AB]) .+? +(?P<count>[\d,]+)$", out)
    assert [m["side"] for m in sides] == ["A", "B"], out
    # A CSR enrolment is millions of instructions (signing alone is ~1M); zero means the
    # counting was never switched on around the enrolments.
    assert all(int(m["count"].replace(",", "")) > 1_000_000 for m in sides), out
    assert matches(r"^  B - A: [+-][\d,]+ \([+-]\d+\.\d%\)$", out), out
    worktrees = subprocess.run(
        ["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert str(tmp_path) not in worktrees


def test_ocsp(bench):
    out = bench(
        "ocsp.py", "--algorithms", "ec-p256", "--workers", "1", "--clients", "2",
        "--requests", "20", "--certificates", "8", "--rounds", "1",
    )  # fmt: skip
    assert "FAILED" not in out
    rates = matches(rf"^  (?P<name>.+?) +(?P<rate>{NUMBER}) resp/s", out)
    names = [m["name"] for m in rates]
    assert sum(name.startswith("HTTP") for name in names) == 4, out
    assert sum(name.startswith("in process: ") for name in names) == 4, out
    assert sum(name.startswith("bare library: ") for name in names) == 2, out
    assert all(float(m["rate"]) > 0 for m in rates), out


def test_directory(bench):
    out = bench("directory.py", "--people", "200", "--requests", "12", "--workers", "1")
    assert matches(r"^loaded 400 certificates in ", out), out
    figures = rf" +12 +(?P<p50>{NUMBER})(?: +{NUMBER}){{4}}"
    http = matches(rf"^(?P<name>[\w/ -]+?){figures} +(?P<errors>\d+)$", out)
    assert [m["name"] for m in http] == ["exact e-mail", "name/e-mail substring", "common prefix"]
    assert all(m["errors"] == "0" and float(m["p50"]) > 0 for m in http), out
    officer = matches(rf"^(?P<name>(?:RA: |API list: |/metrics).+?){figures}$", out)
    assert len(officer) == 10, out  # 6 RA searches, 3 API list pages, the /metrics scrape
    assert all(float(m["p50"]) > 0 for m in officer), out
    assert matches(rf"^dropped database bench_directory{SUFFIX}$", out), out


def test_crl(bench):
    out = bench("crl.py", "--sizes", "100", "--latency", "5", "--repeat", "1")
    row = matches(
        rf"^ +100 \| +(?P<der>{NUMBER}) +\d+ \| +(?P<publish>{NUMBER}) +\d+ \| +{NUMBER} +\d+"
        rf" \| +{NUMBER}x +{NUMBER}x \| +{NUMBER}$",
        out,
    )
    assert len(row) == 1, out
    assert float(row[0]["der"]) > 0, out
    assert float(row[0]["publish"]) > 0, out
    latency = matches(
        rf"^  revoke via API with 100 revoked: p50 (?P<p50>{NUMBER}) ms, p95 {NUMBER} ms, "
        rf"p99 {NUMBER} ms, max {NUMBER} ms \(5 revocations\)$",
        out,
    )
    assert len(latency) == 1, out
    assert float(latency[0]["p50"]) > 0


def test_rollout(bench, tmp_path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is missing: bench/rollout.py queues its mail to a broker")
    broker = RedisServer(tmp_path)  # its own: the benchmark empties the broker's database
    broker.start()
    try:
        out = bench("rollout.py", "--people", "20", "--broker", broker.url)
    finally:
        broker.kill()
    figures = key_values(out)
    assert figures["people"] == "20", out
    for key in ("officer_wait_seconds", "ms_per_person", "quiet_audited_write_ms_median"):
        assert float(figures[key]) > 0, out


def test_bulk_revoke(bench, tmp_path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is missing: bench/bulk_revoke.py queues its CRL tasks")
    broker = RedisServer(tmp_path)  # its own: the benchmark empties the broker's database
    broker.start()
    try:
        out = bench("bulk_revoke.py", "--inline", "3", "--background", "4", "--broker", broker.url)
    finally:
        broker.kill()
    figures = key_values(out)
    assert (figures["inline_certificates"], figures["background_certificates"]) == ("3", "4"), out
    assert figures["background_batches"] == "1", out
    for key in ("inline_officer_wait_seconds", "background_ms_per_certificate"):
        assert float(figures[key]) > 0, out


def test_ldap_sweep(bench):
    for tool in (slapd.SLAPD, "ldapadd", "ldapsearch"):
        if shutil.which(tool) is None:
            pytest.fail(
                f"{tool} is missing: install Debian's slapd and ldap-utils ({slapd.INSTALL})"
            )
    out = bench("ldap_sweep.py", "--people", "10", "--rounds", "1")
    figures = key_values(out)
    assert figures["people"] == "10", out
    for key in ("first_publish_people_per_second", "sweep_people_per_second", "ms_per_person"):
        assert float(figures[key]) > 0, out


def test_hsm(bench):
    if not shutil.which("softhsm2-util") or not any(map(os.path.exists, softhsm.MODULES)):
        pytest.fail(f"SoftHSM2 is needed for bench/hsm.py: {softhsm.INSTALL}")
    out = bench("hsm.py", "--count", "20", "--rsa-count", "5")
    rates = matches(
        rf"^  (?P<key>EC P-256|RSA 3072) +(?P<side>file|softhsm) +(?P<rate>\d+) certificates/s"
        rf" \((?P<count>\d+) built\); CRL of 10,000 entries in (?P<crl>{NUMBER}) ms$",
        out,
    )
    assert [(m["key"], m["side"], m["count"]) for m in rates] == [
        ("EC P-256", "file", "20"),
        ("EC P-256", "softhsm", "20"),
        ("RSA 3072", "file", "5"),
        ("RSA 3072", "softhsm", "5"),
    ], out
    assert all(int(m["rate"]) > 0 and float(m["crl"]) > 0 for m in rates), out
    assert len(matches(rf"^  (EC P-256|RSA 3072) +softhsm/file: {NUMBER}$", out)) == 2, out
