"""Instructions per CSR enrolment, counted by valgrind: a figure the machine's load cannot move.

    .venv/bin/python bench/enroll_instructions.py [BASE] [--enrolments 30]
        [--mode csr|refused]

On this project's shared 2-core machines, CPU time per enrolment drifts by a fifth from
minute to minute for the same code (docs/benchmarks.md), so a change worth 2 % cannot be
seen in one run, and bench/enroll_compare.py needs many interleaved rounds to see 5 %.
The number of instructions a process executes does not depend on what else runs: two runs
of the same code here agreed to 0.1 %. This counts them for ``--enrolments`` CSR
enrolments (P-256) through the portal's own code in one process (Django's test client, so
middleware, DRF, the token, the service layer, the statements, the signing and the
answer; not gunicorn, and not PostgreSQL's side), under ``valgrind --tool=callgrind`` with
counting switched on (callgrind_control) only around the timed enrolments, after five
warm-up ones. ``--mode refused`` counts the stack's floor instead: the same POST
refused by its input check, as bench/enroll.py's floor.

With BASE (a commit), the same is counted for BASE, checked out as a temporary git
worktree with its own database set up by its own migrations, and the difference printed.

Instructions are not time: Python's interpreter loop runs at under one instruction per
cycle here, the cryptography's arithmetic at over two, and a process switching with
PostgreSQL loses its caches, which no instruction count shows. Use it to see the sign and
size of a change to the Python path; use bench/enroll.py for throughput. Needs valgrind
(Debian's package). Each side's database, and the worktree, are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _harness import PG, ROOT, database_name, portal_environment, run

WARM_UP = 5


def count(tree: Path, database: str, scratch: Path, enrolments: int, mode: str) -> int:
    """Instructions of ``enrolments`` enrolments by the portal in ``tree``, in total."""
    # Here, not at the top: enroll puts this checkout first on sys.path, and the child
    # must import the portal of ``tree`` (BASE's worktree) instead.
    from enroll import CSR_TEMPLATE, ENROL, PER_PERSON, create_database, csr_bodies, keys, make_csrs

    var_dir = scratch / f"var-{database}"
    env = portal_environment(database, var_dir, PYTHONPATH=str(tree))
    people = -(-(WARM_UP + enrolments) // PER_PERSON)
    tokens = create_database(env, var_dir, people, database=database, tree=tree)
    bodies = csr_bodies(
        make_csrs(keys.KeyAlgorithm.EC_P256, WARM_UP + enrolments, WARM_UP + enrolments)
    )
    plan = scratch / f"plan-{database}.json"
    plan.write_text(
        json.dumps(
            {
                "tokens": [tokens[i // PER_PERSON] for i in range(len(bodies))],
                "bodies": [body.decode() for body in bodies],
                "mode": mode,
                "url": ENROL,
                "refused_body": json.dumps({"template": CSR_TEMPLATE}),
            }
        )
    )
    out = scratch / f"callgrind-{database}.out"
    done = subprocess.run(
        [
            "valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable, __file__, "--_child", str(plan),
        ],
        cwd=tree,
        env={**env, "PYTHONHASHSEED": "0"},  # the same dict layouts on both sides
        capture_output=True,
        text=True,
        timeout=1800,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the counted run failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    totals = re.search(r"^totals: (\d+)", out.read_text(), re.M)
    if totals is None:
        raise SystemExit(f"no totals in {out}")
    return int(totals[1])


def child(plan_path: str) -> None:
    """(Runs under valgrind, inside the portal's environment.) The enrolments themselves."""
    import django

    django.setup()
    from django.test import Client

    plan = json.loads(Path(plan_path).read_text())
    refused = plan["mode"] == "refused"
    client = Client()

    def enrol(index: int) -> None:
        body = plan["refused_body"] if refused else plan["bodies"][index]
        response = client.post(
            plan["url"],
            body,
            content_type="application/json",
            headers={"Authorization": f"Token {plan['tokens'][index]}"},
        )
        if response.status_code != (400 if refused else 201):
            raise SystemExit(f"HTTP {response.status_code}: {response.content[:300]!r}")

    def callgrind(switch: str) -> None:
        subprocess.run(
            ["callgrind_control", "--instr", switch, str(os.getpid())],
            check=True,
            capture_output=True,
        )

    for index in range(WARM_UP):
        enrol(index)
    callgrind("on")
    for index in range(WARM_UP, len(plan["bodies"])):
        enrol(index)
    callgrind("off")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", nargs="?", help="also count this commit, and the difference")
    parser.add_argument("--enrolments", type=int, default=30, help="counted per side")
    parser.add_argument("--mode", choices=("csr", "refused"), default="csr")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        child(args._child)
        return
    for tool in ("valgrind", "callgrind_control", "createdb", "dropdb"):
        if shutil.which(tool) is None:
            raise SystemExit(
                f"{tool} is needed (Debian: apt-get install valgrind postgresql-client)"
            )

    scratch = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    sides: list[tuple[str, Path, str]] = []
    if args.base:
        commit = run(["git", "rev-parse", "--verify", f"{args.base}^{{commit}}"]).strip()
        run(["git", "worktree", "add", "--detach", str(scratch / "base"), commit])
        sides.append((f"A {commit[:9]}", scratch / "base", database_name("bench_instr_a")))
    head = run(["git", "rev-parse", "--short", "HEAD"]).strip()
    dirty = " (with uncommitted changes)" if run(["git", "status", "--porcelain"]) else ""
    sides.append((f"B {head}{dirty}", ROOT, database_name("bench_instr_b")))
    what, each = (
        ("refused POSTs", "refused POST")
        if args.mode == "refused"
        else ("CSR enrolments (P-256)", "CSR enrolment (P-256)")
    )
    counted: list[tuple[str, float]] = []
    try:
        for name, tree, database in sides:
            print(f"Counting {args.enrolments} {what} of {name} under valgrind...", flush=True)
            total = count(tree, database, scratch, args.enrolments, args.mode)
            counted.append((name, total / args.enrolments))
    finally:
        for _name, _tree, database in sides:
            run(["dropdb", *PG, "--if-exists", "--force", database], check=False)
        if args.base:
            run(["git", "worktree", "remove", "--force", str(scratch / "base")], check=False)
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\nInstructions per {each}, {args.enrolments} counted per side:")
    for name, per in counted:
        print(f"  {name:<44} {per:>14,.0f}")
    if len(counted) == 2:
        (_a, before), (_b, after) = counted
        print(f"  B - A: {after - before:+,.0f} ({(after - before) / before:+.1%})")


if __name__ == "__main__":
    main()
