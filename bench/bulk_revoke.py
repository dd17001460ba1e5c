"""The admin's bulk revocation: what a selection costs in the officer's request, and how
long everyone else's audited work waits meanwhile.

PKIPORTAL_ADMIN_REVOKE_INLINE_MAX (100) certificates are revoked in the request; a larger
selection goes to a worker. Each batch (enrollment.bulk_revoke.BATCH, 50) is one
transaction that holds the audit chain's head from its first revocation to its commit,
so other audited changes (an enrolment, an approval) wait for a whole batch. This
measures both: the officer's wait for the inline maximum (as the admin action runs it:
bulk_revoke_work in the request, with a broker, so the CRL is queued for a worker,
not signed here), the time per batch of the background path, and the worst wait of a
concurrent audited write (a thread appending one event in its own transaction, as an
enrolment does, in a loop).

Creates a dedicated database (bench_bulk_revoke), migrates it, creates an EC hierarchy
and the certificates, prints the figures and drops the database (unless --keep). The CRL
tasks go to a Redis broker (db 14, emptied at the end), as in production; no worker runs.
Loopback only.

    .venv/bin/python bench/bulk_revoke.py                 # ~1 minute
    .venv/bin/python bench/bulk_revoke.py --inline 200 --background 1000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _harness import (
    PG,
    ROOT,
    AuditedWrites,
    create_hierarchy,
    database_name,
    portal_environment,
    run,
)

DATABASE = database_name("bench_bulk_revoke")
BROKER = "redis://127.0.0.1:6379/14"
WARM_UP = 2  # revoked first, untimed: the CA's key, the first statements, the imports


def inside(var_dir: Path, inline: int, background: int) -> dict:
    """In a process configured by the environment: issue, then time both paths."""
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import connection, transaction

    from accounts.models import User
    from enrollment import bulk_revoke, services
    from enrollment.models import Certificate, CertificateTemplate
    from enrollment.x509.keys import KeyAlgorithm, generate_private_key

    create_hierarchy(var_dir, "ec-p256")
    template = CertificateTemplate.objects.get(slug="smime-signing")
    holder = User.objects.create_user(
        username="holder", email="holder@example.com", first_name="Hal", last_name="Holder"
    )
    officer = User.objects.create_user(
        username="olivia", email="olivia@example.com", is_staff=True, is_superuser=True
    )
    issued_started = time.monotonic()
    for _ in range(WARM_UP + inline + background):
        key = generate_private_key(KeyAlgorithm.EC_P256)  # each its own: keyCompromise-safe
        services.certificate_issue(template=template, owner=holder, public_key=key.public_key())
    issued_seconds = time.monotonic() - issued_started
    ids = list(Certificate.objects.filter(owner=holder).order_by("pk").values_list("pk", flat=True))
    connection.close()

    def revoke(selection: list[int]) -> tuple[float, list[float], object]:
        """Revoke the selection as the admin does; seconds, concurrent writes' waits."""
        before = len(waits)
        started = time.monotonic()
        # Both record the run (its row and .queued event) in the request; the task then
        # works on it as the request does, in a worker (a minute a message: longer than
        # this run), so the two differ only in who waits.
        with transaction.atomic():
            recorded = bulk_revoke.bulk_revoke_start(
                ids=selection, reason="cessationOfOperation", actor=officer
            )
        progress = bulk_revoke.bulk_revoke_work(recorded.pk, claim=recorded.claim)
        seconds = time.monotonic() - started
        return seconds, waits[before:], progress

    with AuditedWrites() as writes:
        waits = writes.waits
        revoke(ids[:WARM_UP])
        time.sleep(0.5)
        quiet = list(waits)
        selected = ids[WARM_UP:]
        inline_seconds, inline_waits, inline_run = revoke(selected[:inline])
        background_seconds, background_waits, background_run = revoke(selected[inline:])
        time.sleep(0.3)
    assert inline_run.revoked == inline, inline_run  # type: ignore[attr-defined]
    assert background_run.revoked == background, background_run  # type: ignore[attr-defined]
    batches = background_run.batches  # type: ignore[attr-defined]
    return {
        "certificates_issued_seconds": round(issued_seconds, 1),
        "inline_certificates": inline,
        "inline_officer_wait_seconds": round(inline_seconds, 2),
        "inline_ms_per_certificate": round(1000 * inline_seconds / max(inline, 1), 1),
        "background_certificates": background,
        "background_batches": batches,
        "background_seconds_per_batch": round(background_seconds / max(batches, 1), 2),
        "background_ms_per_certificate": round(1000 * background_seconds / max(background, 1), 1),
        "longest_audited_write_seconds": round(
            max(inline_waits + background_waits, default=0.0), 3
        ),
        "quiet_audited_write_ms_median": round(1000 * statistics.median(quiet), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inline", type=int, default=100, help="revoked in the request")
    parser.add_argument("--background", type=int, default=500, help="revoked as the task does")
    parser.add_argument("--broker", default=BROKER, help="a Redis database, emptied at the end")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--_inside", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._inside:
        var_dir, inline, background = args._inside
        print(json.dumps(inside(Path(var_dir), int(inline), int(background))))
        return
    var_dir = Path(tempfile.mkdtemp(prefix="bench-bulk-revoke-"))
    # A broker, as in production: each batch's CRL task and the holders' mail are queued
    # for a worker after the commit (none runs here; the queue is emptied at the end).
    env = portal_environment(DATABASE, var_dir, CELERY_BROKER_URL=args.broker)
    run(["dropdb", *PG, "--if-exists", "--force", DATABASE])
    run(["createdb", *PG, DATABASE])
    try:
        run([sys.executable, "manage.py", "migrate", "--noinput"], env)
        out = run(
            [sys.executable, __file__, "--_inside", str(var_dir), str(args.inline),
             str(args.background)],
            env,
        )  # fmt: skip
        figures = json.loads(out.strip().splitlines()[-1])
        for key, value in figures.items():
            print(f"{key:>34}: {value}")
        load = os.getloadavg()
        print(f"{'load average at the end':>34}: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    finally:
        if not args.keep:
            run(["dropdb", *PG, "--if-exists", "--force", DATABASE])
        shutil.rmtree(var_dir, ignore_errors=True)
        run(["redis-cli", "-u", args.broker, "flushdb"], check=False)


if __name__ == "__main__":
    main()
