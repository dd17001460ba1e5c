"""CRLs at scale (issue 5): 10,000 / 100,000 / 1,000,000 revoked certificates on PostgreSQL.

Creates a dedicated database (bench_crl), migrates it, creates an RSA-3072 issuing CA (the
production default), bulk-loads revoked certificates with their stored CRL entries, and
for each size measures, each in a fresh process so peak memory is its own:

- portal: services.crl_publish() end to end: lock, read the stored entries from
  PostgreSQL, assemble and sign (crl_fast), store the DER; seconds and peak RSS.
- cryptography: the same entries, already in memory, through cryptography's own
  CertificateRevocationListBuilder (one RevokedCertificate object per entry, the list
  handed to the constructor at once), signed and serialised to DER.

Then the revocation latency through the API (gunicorn, a knox token, POST
/api/v1/certificates/<serial>/revoke/) with 10,000 and with 1,000,000 entries already
revoked, with a throwaway redis-server and a Celery worker rebuilding the CRL meanwhile.
Prints the figures, stops everything it started and drops the database (unless --keep).
Loopback only; every loop is bounded.

    .venv/bin/python bench/crl.py                          # the full run (~5 minutes)
    .venv/bin/python bench/crl.py --sizes 10000 --latency 50   # a quick smoke run
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import (
    HOST,
    PG,
    ROOT,
    create_hierarchy,
    database_name,
    free_port,
    portal_environment,
    run,
    start_gunicorn,
    stop,
)

DATABASE = database_name("bench_crl")
REASONS = ["", "keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation",
           "privilegeWithdrawn"]  # fmt: skip


def log(message: str) -> None:
    print(message, flush=True)


def environment(var_dir: Path) -> dict[str, str]:
    return portal_environment(DATABASE, var_dir)


def inside(env: dict[str, str], *args: str) -> dict:
    """Run this script's hidden sub-command in a fresh process; its last line is JSON."""
    out = run([sys.executable, __file__, *args], env)
    return json.loads(out.strip().splitlines()[-1])


# --- peak memory: the kernel's high-water mark, reset before each measured step ----------


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)


def rss_mb(field: str = "VmHWM") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


# --- inside Django ---------------------------------------------------------------------


def _django() -> None:
    import django

    django.setup()


def setup(var_dir: Path, valid: int) -> dict:
    """The hierarchy, an RA officer with an API token, ``valid`` certificates to revoke."""
    _django()
    from knox.models import AuthToken

    from accounts.models import User
    from enrollment import services
    from enrollment.models import ApiToken, CertificateTemplate
    from enrollment.x509.keys import KeyAlgorithm

    create_hierarchy(var_dir, "rsa-3072")
    officer = User.objects.create_user(
        username="officer", email="officer@example.com", first_name="Olivia", last_name="Officer"
    )
    officer.is_superuser = True  # an RA officer may revoke any certificate
    officer.save()
    holder = User.objects.create_user(
        username="holder", email="holder@example.com", first_name="Hal", last_name="Holder"
    )
    template = CertificateTemplate.objects.get(slug="smime-signing")
    from enrollment.x509.keys import generate_private_key

    key = generate_private_key(KeyAlgorithm.EC_P256)
    serials = [
        services.certificate_issue(template=template, owner=holder, public_key=key.public_key())
        for _ in range(valid)
    ]
    instance, token = AuthToken.objects.create(user=officer)
    # As the portal mints an officer's token: with the second factor, or it carries no
    # officer power (README, "Second factor"); the bench officer has no app to ask.
    ApiToken.objects.filter(auth_token=instance).update(second_factor=True)
    return {
        "token": token,
        "valid": [certificate.serial for certificate in serials],
    }


def populate(total: int) -> dict:
    """Grow the issuing CA's revoked certificates to ``total``, rows as _revoke writes them.

    Certificate rows are copies of a real one (same DER size) with their own serial and
    fingerprints, made in SQL; their CRL entries are encoded here by crl_fast.
    """
    _django()
    from django.db import connection

    from enrollment.models import Certificate, CertificateAuthority, CrlEntry
    from enrollment.x509 import crl_fast
    from enrollment.x509.crl import RevocationReason, RevokedEntry

    ca = CertificateAuthority.objects.get(slug="issuing")
    have = CrlEntry.objects.filter(ca=ca).count()
    if have >= total:
        return {"revoked": have, "seconds": 0.0}
    started = time.perf_counter()
    model = Certificate._meta
    table = model.db_table
    columns = [f.column for f in model.concrete_fields if f.column != "id"]
    replaced = {
        "serial": "'4' || substr(md5(g::text || 'bench'), 1, 27) || lpad(to_hex(g), 12, '0')",
        "fingerprint_sha256": "encode(sha256(('fp' || g)::bytea), 'hex')",
        "fingerprint_sha1": "md5('f1' || g) || substr(md5('f2' || g), 1, 8)",
        "spki_sha256": "encode(sha256(('key' || g)::bytea), 'hex')",  # each its own key
        "status": "'revoked'",
        "revoked_at": "now() - make_interval(secs => g)",
        "revocation_reason": f"(ARRAY{REASONS!r}::text[])[1 + g %% {len(REASONS)}]",
        "invalidity_date": "NULL",
        "owner_id": "NULL",
    }
    select = ", ".join(replaced.get(column, f"t.{column}") for column in columns)
    template_id = Certificate.objects.filter(ca=ca, status="valid").values_list("pk", flat=True)[0]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) SELECT {select} "
            f"FROM {table} t, generate_series(%s::bigint, %s::bigint) g WHERE t.id = %s "
            "RETURNING id, serial, revoked_at, revocation_reason, not_after",
            [have + 1, total, template_id],
        )
        rows = cursor.fetchall()
    number = ca.latest_crl().number
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(
            f"COPY {CrlEntry._meta.db_table} (certificate_id, ca_id, not_after, der, "
            "first_crl_number) FROM STDIN"
        ) as copy,
    ):
        for pk, serial, revoked_at, reason, not_after in rows:
            der = crl_fast.encode_entry(
                RevokedEntry(
                    int(serial, 16), revoked_at, RevocationReason(reason) if reason else None
                )
            )
            copy.write_row((pk, ca.pk, not_after, der, number))
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {table}")
        cursor.execute(f"VACUUM ANALYZE {CrlEntry._meta.db_table}")
    return {"revoked": total, "seconds": round(time.perf_counter() - started, 1)}


def measure_portal(step: str) -> dict:
    """One step in a fresh process (so its peak RSS is its own), with the key loaded.

    ``der``: database to signed DER (the lock, the stored entries, the signature).
    ``publish``: services.crl_publish() whole: also stores the DER, marks the entries,
    prunes old CRLs and writes the audit event.
    """
    _django()
    from cryptography import x509

    from django.db import transaction

    from enrollment import binary, keystore, services
    from enrollment.models import CertificateAuthority, RevocationList

    ca = CertificateAuthority.objects.get(slug="issuing")
    keystore.check_ca_key(ca)  # a worker signs many CRLs with the key it loaded once
    ca.refresh_from_db()  # and has its database connection
    baseline = rss_mb("VmRSS")
    reset_peak_rss()
    started = time.perf_counter()
    if step == "der":
        with transaction.atomic():
            locked = services._lock_ca(ca)
            previous = services._latest_crl_facts(locked)
            entries, revoked = services._crl_entry_bytes(locked, previous)
            der = keystore.sign_crl_der(
                locked,
                revoked=revoked,
                crl_number=previous.number + 1,
                this_update=previous.this_update,
                next_update=previous.next_update,
            )
    else:
        published = services.crl_publish(ca=ca)
        entries = published.entries
    seconds = time.perf_counter() - started
    peak = rss_mb()
    if step != "der":
        der = binary.read(RevocationList, published.pk, "der")
    crl = x509.load_der_x509_crl(der)
    assert crl.is_signature_valid(ca.certificate.public_key())
    assert len(crl) == entries
    return {
        "seconds": seconds,
        "peak_mb": peak,
        "baseline_mb": baseline,
        "entries": entries,
        "der_mb": len(der) / 1e6,
    }


def measure_builder() -> dict:
    """cryptography's builder on the same entries, loaded into memory beforehand."""
    _django()
    from datetime import timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from django.utils import timezone

    from enrollment import keystore
    from enrollment.models import Certificate, CertificateAuthority
    from enrollment.x509.crl import RevocationReason
    from enrollment.x509.keys import signature_hash_for

    ca = CertificateAuthority.objects.get(slug="issuing")
    key = keystore._ca_key(ca)  # bench only: the builder needs the key object itself
    entries = list(
        Certificate.objects.filter(ca=ca, status="revoked").values_list(
            "serial", "revoked_at", "revocation_reason"
        )
    )
    # Naive UTC datetimes: the builder's fastest input (aware ones are converted per entry).
    entries = [
        (int(serial, 16), when.replace(tzinfo=None), reason) for serial, when, reason in entries
    ]
    extensions = {"": []} | {
        reason.value: [x509.Extension(x509.CRLReason.oid, False, x509.CRLReason(reason.flag))]
        for reason in RevocationReason
    }
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
        ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    )
    now = timezone.now().replace(microsecond=0)
    baseline = rss_mb("VmRSS")
    reset_peak_rss()
    started = time.perf_counter()
    revoked = [
        x509.RevokedCertificateBuilder(serial, when, extensions[reason]).build()
        for serial, when, reason in entries
    ]
    objects = time.perf_counter() - started
    crl = x509.CertificateRevocationListBuilder(
        issuer_name=ca.certificate.subject,
        last_update=now,
        next_update=now + timedelta(days=7),
        extensions=[
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(10**6)),
            x509.Extension(x509.AuthorityKeyIdentifier.oid, False, aki),
        ],
        revoked_certificates=revoked,
    ).sign(key, signature_hash_for(key))
    der = crl.public_bytes(Encoding.DER)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "objects_seconds": objects,
        "peak_mb": rss_mb(),
        "baseline_mb": baseline,
        "entries": len(entries),
        "der_mb": len(der) / 1e6,
    }


# --- revocation latency through the API -------------------------------------------------


class Services:
    """redis-server, a Celery worker and gunicorn, all on loopback, all stopped after."""

    def __init__(self, env: dict[str, str], var_dir: Path) -> None:
        self.processes: list[subprocess.Popen] = []
        redis_port, self.port = free_port(), free_port()
        self.env = {**env, "CELERY_BROKER_URL": f"redis://{HOST}:{redis_port}/0"}
        self._start(
            ["redis-server", "--port", str(redis_port), "--bind", HOST, "--save", "",
             "--appendonly", "no", "--daemonize", "no"], var_dir / "redis.log")  # fmt: skip
        self._start(
            [sys.executable, "-m", "celery", "-A", "pkiportal", "worker", "--pool", "solo",
             "--loglevel", "INFO", "--without-gossip", "--without-mingle"],
            var_dir / "worker.log",
        )  # fmt: skip
        try:
            self.processes.append(
                start_gunicorn(self.env, self.port, workers=2, log=var_dir / "web.log")
            )
        except BaseException:
            self.stop()  # redis and the worker are already running
            raise
        time.sleep(3)  # the worker's start-up

    def _start(self, args: list[str], log_path: Path) -> None:
        self.processes.append(
            subprocess.Popen(
                args,
                cwd=ROOT,
                env=self.env,
                stdout=log_path.open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop(process)


WARM_UP = 10  # first requests of a fresh gunicorn load code and templates: not counted


def revoke_latency(port: int, token: str, serials: list[str]) -> dict:
    """Round trips of POST .../revoke/ on one keep-alive connection, one after another."""
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    body = json.dumps({"reason": "superseded"})
    times = []
    for index, serial in enumerate(serials):
        started = time.perf_counter()
        connection.request("POST", f"/api/v1/certificates/{serial}/revoke/", body, headers)
        response = connection.getresponse()
        response.read()
        if index >= WARM_UP:
            times.append((time.perf_counter() - started) * 1000)
        if response.status != 200:
            raise SystemExit(f"revoking {serial}: HTTP {response.status}")
    times.sort()
    return {
        "count": len(times),
        "p50": statistics.median(times),
        "p95": times[int(0.95 * (len(times) - 1))],
        "p99": times[int(0.99 * (len(times) - 1))],
        "max": times[-1],
    }


# --- the run ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--latency", type=int, default=200, help="revocations per size")
    parser.add_argument("--repeat", type=int, default=3, help="portal runs per size (best of)")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--_inside", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._inside:
        command, *rest = args._inside
        result = {
            "setup": lambda: setup(Path(rest[0]), int(rest[1])),
            "populate": lambda: populate(int(rest[0])),
            "portal": lambda: measure_portal(rest[0]),
            "builder": measure_builder,
        }[command]()
        print(json.dumps(result, default=str))
        return

    sizes = [int(size) for size in args.sizes.split(",")]
    latency_sizes = {sizes[0], sizes[-1]}
    var_dir = Path(tempfile.mkdtemp(prefix="bench-crl-"))
    env = environment(var_dir)
    run(["dropdb", *PG, "--if-exists", "--force", DATABASE])
    run(["createdb", *PG, DATABASE])
    try:
        run([sys.executable, "manage.py", "migrate", "--noinput"], env)
        valid_needed = 2 * (args.latency + WARM_UP) + 1
        made = inside(env, "--_inside", "setup", str(var_dir), str(valid_needed))
        valid = made["valid"]
        log(
            f"{'entries':>9} | {'DB→DER s':>8} {'peak MB':>7} | {'publish s':>9} {'peak MB':>7}"
            f" | {'crypto s':>8} {'peak MB':>7} | {'ratio':>6} {'ratio':>6} | {'CRL MB':>6}"
        )
        log(f"{'':>9} | {'':>16} | {'(+store)':>17} | {'':>16} | {'DER':>6} {'publ.':>6} |")
        latencies = {}
        for size in sizes:
            loaded = inside(env, "--_inside", "populate", str(size))
            der_runs = [inside(env, "--_inside", "portal", "der") for _ in range(args.repeat)]
            publish_runs = [
                inside(env, "--_inside", "portal", "publish") for _ in range(args.repeat)
            ]
            builder = inside(env, "--_inside", "builder")
            to_der = min(der_runs, key=lambda run: run["seconds"])
            publish = min(publish_runs, key=lambda run: run["seconds"])
            assert to_der["entries"] == publish["entries"] == builder["entries"] == size
            ratio = builder["seconds"] / to_der["seconds"]
            ratio_publish = builder["seconds"] / publish["seconds"]
            der_peak = max(run["peak_mb"] for run in der_runs)
            publish_peak = max(run["peak_mb"] for run in publish_runs)
            log(
                f"{size:>9,} | {to_der['seconds']:>8.3f} {der_peak:>7.0f} | "
                f"{publish['seconds']:>9.3f} {publish_peak:>7.0f} | "
                f"{builder['seconds']:>8.3f} {builder['peak_mb']:>7.0f} | {ratio:>5.1f}x "
                f"{ratio_publish:>5.1f}x | {publish['der_mb']:>6.1f}"
            )
            log(f"{'':>9}   runs: DB→DER {[round(r['seconds'], 3) for r in der_runs]}, "
                f"publish {[round(r['seconds'], 3) for r in publish_runs]}; "
                f"cryptography: {builder['objects_seconds']:.3f} s of it making the entry "
                f"objects; RSS before: portal {to_der['baseline_mb']:.0f} MB, cryptography "
                f"{builder['baseline_mb']:.0f} MB (its input in memory); rows loaded in "
                f"{loaded['seconds']} s")  # fmt: skip
            if size in latency_sizes and args.latency:
                services = Services(env, var_dir)
                try:
                    count = args.latency + WARM_UP
                    batch, valid = valid[:count], valid[count:]
                    latencies[size] = revoke_latency(services.port, made["token"], batch)
                finally:
                    services.stop()
                figures = latencies[size]
                log(f"  revoke via API with {size:,} revoked: p50 {figures['p50']:.1f} ms, "
                    f"p95 {figures['p95']:.1f} ms, p99 {figures['p99']:.1f} ms, "
                    f"max {figures['max']:.1f} ms ({figures['count']} revocations)")  # fmt: skip
        load = os.getloadavg()
        log(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2 cores)")
    finally:
        if not args.keep:
            run(["dropdb", *PG, "--if-exists", "--force", DATABASE])
            shutil.rmtree(var_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
