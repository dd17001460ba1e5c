"""Two versions of the portal side by side: server CPU per CSR enrolment, interleaved.

    .venv/bin/python bench/enroll_compare.py BASE [--rounds 16] [--block 120]
        [--workers 2] [--clients 4]

On a shared 2-core machine the HTTP rate of bench/enroll.py drifts by a fifth over
minutes for the same code, so two runs minutes apart cannot show a change of a few per
cent. This measures both versions at once. The working tree is side B; BASE (any commit)
is checked out as a temporary git worktree and is side A. Each side gets its own
database, CA hierarchy, accounts and gunicorn, set up by its own code and migrations.
Then blocks of CSR enrolments (the same pre-made P-256 CSRs) go to A and B in turn, the
order flipping every round, and each block's server CPU (gunicorn workers and their
PostgreSQL backends, from /proc) is added to its side, so drift falls on both alike.

A process is faster or slower by a few per cent for its whole life (its memory layout,
its hash seed: two gunicorns of the same code differed by 7 % here), so both gunicorns
are restarted every ``--restart-every`` rounds, and the spread is taken over those
generations of processes, not over rounds. Prints each side's CPU per enrolment and
rate, and B - A with its standard error. Both databases, both gunicorns and the worktree
are removed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from _harness import (
    PG,
    ROOT,
    database_name,
    free_port,
    portal_environment,
    run,
    start_gunicorn,
    stop,
)
from enroll import (
    CSR_TEMPLATE,
    PER_PERSON,
    Accounts,
    Result,
    create_database,
    csr_bodies,
    http_request,
    keys,
    make_csrs,
    post_all,
)


@dataclass
class Side:
    name: str
    tree: Path
    database: str
    env: dict[str, str] = field(default_factory=dict)
    gunicorn: subprocess.Popen | None = None
    port: int = 0
    accounts: Accounts | None = None
    blocks: list[Result] = field(default_factory=list)
    workers: int = 2
    log: Path | None = None

    def set_up(self, var_dir: Path, people: int, workers: int) -> None:
        """Database, hierarchy and accounts, made by this side's own code."""
        self.env = portal_environment(self.database, var_dir, PYTHONPATH=str(self.tree))
        tokens = create_database(self.env, var_dir, people, database=self.database, tree=self.tree)
        self.accounts = Accounts(tokens, PER_PERSON)
        self.workers, self.log = workers, var_dir / "gunicorn.log"

    def restart(self, warm_up: list[bytes], clients: int) -> None:
        """Fresh worker processes, each with its CA key loaded before the timing."""
        if self.gunicorn is not None:
            stop(self.gunicorn)
        self.port = free_port()
        self.gunicorn = start_gunicorn(
            self.env, self.port, workers=self.workers, log=self.log, cwd=self.tree
        )
        self.send(warm_up, clients, record=False)

    def send(self, bodies: list[bytes], clients: int, record: bool = True) -> Result:
        assert self.accounts is not None
        requests = [
            http_request(self.port, self.accounts.take(CSR_TEMPLATE), body) for body in bodies
        ]
        result = post_all(self.port, requests, self.name, clients, self.gunicorn, self.database)
        if result.failures:
            raise SystemExit(f"{self.name}: {result.failures} enrolments failed")
        if record:
            self.blocks.append(result)
        return result

    def per_enrolment_ms(self) -> tuple[float, float, float]:
        count = sum(block.count for block in self.blocks)
        app = sum(block.app_cpu for block in self.blocks) / count * 1000
        db = sum(block.db_cpu for block in self.blocks) / count * 1000
        rate = count / sum(block.seconds for block in self.blocks)
        return app, db, rate


def per_block_ms(block: Result) -> float:
    return (block.app_cpu + block.db_cpu) / block.count * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the commit to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=16, help="A/B pairs of blocks")
    parser.add_argument("--block", type=int, default=120, help="enrolments per block")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per side")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument(
        "--restart-every", type=int, default=2, help="rounds between gunicorn restarts"
    )
    args = parser.parse_args()
    commit = run(["git", "rev-parse", "--verify", f"{args.base}^{{commit}}"]).strip()
    head = run(["git", "rev-parse", "--short", "HEAD"]).strip()
    dirty = " (with uncommitted changes)" if run(["git", "status", "--porcelain"]) else ""

    scratch = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    tree = scratch / "base"
    run(["git", "worktree", "add", "--detach", str(tree), commit])
    sides = [
        Side(f"A {commit[:9]}", tree, database_name("bench_compare_a")),
        Side(f"B {head}{dirty}", ROOT, database_name("bench_compare_b")),
    ]
    warm = 4 * args.workers
    generations = -(-args.rounds // args.restart_every)
    people = -(-(args.rounds * args.block + generations * warm) // PER_PERSON)
    try:
        print(f"Setting up both sides ({people} people each)...", flush=True)
        for index, side in enumerate(sides):
            side.set_up(scratch / f"var-{index}", people, args.workers)
        print("Generating CSRs (not timed)...", flush=True)
        bodies = csr_bodies(make_csrs(keys.KeyAlgorithm.EC_P256, args.block, args.block))
        print(
            f"{args.rounds} rounds of {args.block} enrolments per side, "
            f"{generations} generations of gunicorn...",
            flush=True,
        )
        for round_number in range(args.rounds):
            if round_number % args.restart_every == 0:
                for side in sides:
                    side.restart(bodies[:warm], args.clients)
            order = sides if round_number % 2 == 0 else sides[::-1]
            for side in order:
                side.send(bodies, args.clients)
    finally:
        for side in sides:
            if side.gunicorn is not None:
                stop(side.gunicorn)
            run(["dropdb", *PG, "--if-exists", "--force", side.database], check=False)
        run(["git", "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\nServer CPU per CSR enrolment (P-256), {args.rounds} x {args.block} per side:")
    for side in sides:
        app, db, rate = side.per_enrolment_ms()
        print(f"  {side.name:<40} app {app:5.2f} + PostgreSQL {db:4.2f} = {app + db:5.2f} ms"
              f"   {rate:6.1f} certs/s")  # fmt: skip
    rounds = [
        per_block_ms(b) - per_block_ms(a)
        for a, b in zip(sides[0].blocks, sides[1].blocks, strict=True)
    ]
    differences = [
        statistics.mean(rounds[start : start + args.restart_every])
        for start in range(0, len(rounds), args.restart_every)
    ]
    mean = statistics.mean(differences)
    spread = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) > 1 else 0
    base_total = sum(sides[0].per_enrolment_ms()[:2])
    print(
        f"  B - A: {mean:+.2f} ms per enrolment ({mean / base_total:+.1%}), standard error "
        f"{spread:.2f} ms over {len(differences)} generations of gunicorn"
    )


if __name__ == "__main__":
    main()
