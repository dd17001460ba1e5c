"""The LDAP reconciliation's full sweep: people per second against a real slapd.

Creates a dedicated database (bench_ldap_sweep), migrates it, creates an EC hierarchy,
and N people (default 2,000) with one dual-use certificate each, and starts a throwaway
slapd (tests/slapd.py: Debian's slapd and ldap-utils) with one entry per person. A first
run publishes everyone (the database diff); then the sweep alone is timed: with nothing
left to diff, `reconcile()` visits every person (one LDAP search, the database read of
their wanted certificates, the ownership check of what the entry holds, no write), the
way beat's hourly run walks its PKIPORTAL_LDAP_SWEEP_BATCH slice. Prints the figures,
stops slapd and drops the database (unless --keep). Loopback only.

    .venv/bin/python bench/ldap_sweep.py                 # ~1 minute
    .venv/bin/python bench/ldap_sweep.py --people 10000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import PG, ROOT, create_hierarchy, database_name, portal_environment, run

DATABASE = database_name("bench_ldap_sweep")


def _django() -> None:
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def inside(var_dir: Path, people: int, rounds: int) -> dict:
    """In a process configured by the environment: populate, publish, time the sweep."""
    _django()
    from django.conf import settings

    from accounts.models import User
    from enrollment import ldap_publish, services
    from enrollment.models import CertificateTemplate
    from enrollment.x509.keys import KeyAlgorithm, generate_private_key
    from tests.slapd import PEOPLE, Slapd

    create_hierarchy(var_dir, "ec-p256")
    template = CertificateTemplate.objects.get(slug="smime-dual-use")
    started = time.monotonic()
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
    for user in users:
        key = generate_private_key(KeyAlgorithm.EC_P256)
        services.certificate_issue(template=template, owner=user, public_key=key.public_key())
    issued_seconds = time.monotonic() - started
    slapd = Slapd(var_dir / "slapd")
    (var_dir / "slapd").mkdir()
    slapd.start()
    try:
        ldif = "".join(
            f"dn: uid={u.username},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {u.username}\n"
            f"cn: {u.username}\nsn: {u.username}\nmail: {u.email}\n\n"
            for u in users
        )
        slapd.add(ldif)
        settings.PKIPORTAL_LDAP_PUBLISH_URI = slapd.uri
        settings.PKIPORTAL_LDAP_PUBLISH_BIND_DN = "cn=pkiportal,dc=example,dc=com"
        settings.PKIPORTAL_LDAP_PUBLISH_BIND_PASSWORD = "service-secret-for-tests"
        settings.PKIPORTAL_LDAP_PUBLISH_SEARCH_BASE = PEOPLE
        t0 = time.monotonic()
        first = ldap_publish.reconcile(sweep=0)
        publish_seconds = time.monotonic() - t0
        assert first.added == people, first
        diff = []
        sweeps = []
        for _ in range(rounds):
            t0 = time.monotonic()
            idle = ldap_publish.reconcile(sweep=0)
            diff.append(time.monotonic() - t0)
            assert idle.people == 0, idle
            t0 = time.monotonic()
            swept = ldap_publish.reconcile()
            sweeps.append(time.monotonic() - t0)
            assert swept.swept == people, swept
            assert swept.changed == 0, swept
        sample = slapd.values(f"uid={users[-1].username},{PEOPLE}")
        assert len(sample) == 1
    finally:
        slapd.stop()
    best = min(sweeps)
    return {
        "people": people,
        "issue_seconds": round(issued_seconds, 1),
        "first_publish_seconds": round(publish_seconds, 2),
        "first_publish_people_per_second": round(people / publish_seconds, 1),
        "idle_diff_seconds": [round(s, 3) for s in diff],
        "sweep_seconds": [round(s, 2) for s in sweeps],
        "sweep_people_per_second": round(people / best, 1),
        "ms_per_person": round(1000 * best / people, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--_inside", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._inside:
        var_dir, people, rounds = args._inside
        print(json.dumps(inside(Path(var_dir), int(people), int(rounds))))
        return
    var_dir = Path(tempfile.mkdtemp(prefix="bench-ldap-"))
    env = portal_environment(DATABASE, var_dir)
    run(["dropdb", *PG, "--if-exists", "--force", DATABASE])
    run(["createdb", *PG, DATABASE])
    try:
        run([sys.executable, "manage.py", "migrate", "--noinput"], env)
        out = run(
            [sys.executable, __file__, "--_inside", str(var_dir), str(args.people),
             str(args.rounds)], env,
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
        subprocess.run(["true"], check=False)


if __name__ == "__main__":
    main()
