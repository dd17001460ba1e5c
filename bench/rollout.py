"""A roll-out's creation: how long it takes, and how long everyone else's audited work
waits meanwhile.

Every audited transaction (an enrolment, a revocation, an approval) locks the audit
chain's head row to append its events. A roll-out writes one event per invited person in
its one transaction, so the head is held from its first append to its commit. This
measures both: the officer's wait, and the worst wait of a concurrent audited write
(a thread appending one event in its own transaction, as an enrolment does, in a loop).

Creates a dedicated database (bench_rollout), migrates it, creates an EC hierarchy and N
people (default 2,000, the default PKIPORTAL_ROLLOUT_MAX_PEOPLE) in one group that may
use the dual-use template, creates the roll-out, prints the figures and drops the
database (unless --keep). The invitations' mail goes to a Redis broker (db 14, emptied
at the end), as in production. Loopback only.

    .venv/bin/python bench/rollout.py                  # ~30 s
    .venv/bin/python bench/rollout.py --people 10000   # the largest allowed
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

DATABASE = database_name("bench_rollout")
BROKER = "redis://127.0.0.1:6379/14"


def inside(var_dir: Path, people: int) -> dict:
    """In a process configured by the environment: populate, then time the roll-out."""
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth.models import Group
    from django.db import connection

    from accounts.models import User
    from enrollment import rollouts
    from enrollment.models import CertificateTemplate

    create_hierarchy(var_dir, "ec-p256")
    template = CertificateTemplate.objects.get(slug="smime-dual-use")
    group = Group.objects.create(name="Everyone")
    template.allowed_groups.add(group)
    users = User.objects.bulk_create(
        [
            User(
                username=f"p{n:06}",
                email=f"p{n:06}@example.com",
                first_name="P",
                last_name=f"{n:06}",
            )
            for n in range(people)
        ]
    )
    group.user_set.add(*users)
    officer = User.objects.create(username="olivia", email="olivia@example.com")
    officer.groups.add(Group.objects.get_or_create(name=settings.PKIPORTAL_RA_OFFICER_GROUP)[0])
    connection.close()

    with AuditedWrites() as writes:
        time.sleep(0.5)
        before = len(writes.waits)
        started = time.monotonic()
        rollout = rollouts.rollout_create(officer=officer, template=template, group=group)
        officer_seconds = time.monotonic() - started
        during = writes.waits[before:]
        time.sleep(0.3)
    waits = writes.waits
    assert rollout.invited == people, (rollout.invited, rollout.skipped_count)
    quiet = waits[:before]
    return {
        "people": people,
        "officer_wait_seconds": round(officer_seconds, 2),
        "ms_per_person": round(1000 * officer_seconds / people, 2),
        "audited_writes_during": len(during),
        "longest_audited_write_seconds": round(max(during, default=0.0), 3),
        "quiet_audited_write_ms_median": round(1000 * statistics.median(quiet), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=2000)
    parser.add_argument("--broker", default=BROKER, help="a Redis database, emptied at the end")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--_inside", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._inside:
        var_dir, people = args._inside
        print(json.dumps(inside(Path(var_dir), int(people))))
        return
    var_dir = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    # A broker, as in production: the invitations' mail is queued for a worker after the
    # commit (none runs here; the queue is emptied at the end), not sent in the request.
    env = portal_environment(
        DATABASE,
        var_dir,
        PKIPORTAL_ROLLOUT_MAX_PEOPLE=str(max(args.people, 1)),
        CELERY_BROKER_URL=args.broker,
    )
    run(["dropdb", *PG, "--if-exists", "--force", DATABASE])
    run(["createdb", *PG, DATABASE])
    try:
        run([sys.executable, "manage.py", "migrate", "--noinput"], env)
        out = run([sys.executable, __file__, "--_inside", str(var_dir), str(args.people)], env)
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
