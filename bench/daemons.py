"""The server daemons alone: how fast the transitioner, validator and assimilator (with credit)
turn reported replicas into validated, credited, assimilated work units.

    .venv/bin/python bench/daemons.py [--workunits 2000] [--filler 20000] [--processes 1]
                                      [--profile FILE] [--sql] [--keep]

1. creates a throwaway PostgreSQL database (dropped at the end) and seeds it as
   ``bench/load.py`` does (:func:`bench.load.seed_portal`: campaigns of 2,048 islands of tiny
   epochs, two replicas per work unit, quorum 2, right answers computed with the worker's own
   ``run_job``), with ``--filler`` more work units left unsent, so that the tables are not
   trivially small (a live portal's are not);
2. reports every replica of the first ``--workunits`` work units with its right answer, as a
   scheduler call would (two distinct volunteers per work unit, received, ``transition_time``
   due now);
3. runs the daemon passes (the functions qcluster and ``manage.py run_daemons`` run) until none
   finds work: in this process, timing each daemon (this process's CPU and its PostgreSQL
   backend's CPU, read from ``/proc``) and counting its SQL statements; or with
   ``--processes N`` > 1, N ``manage.py run_daemons --once`` processes side by side (the
   concurrency check: nothing may be validated, credited or assimilated twice);
4. checks that every work unit was validated and assimilated exactly once, that every valid
   replica has exactly one credit grant and that cached totals equal the ledger's sums; exits
   non-zero otherwise.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import portal  # noqa: E402
from bench.hosts import Options, Seeded  # noqa: E402
from bench.load import BOINC_TASKS_PER_SECOND, seed_portal  # noqa: E402

DAEMONS = ("transitioner", "validator", "assimilator")


def report_all(seeded: Seeded, *, workunits: int) -> list[int]:
    """Report both replicas of the first ``workunits`` work units with their right answers,
    each from another volunteer's host; returns the work units' ids."""
    from datetime import timedelta

    from django.db import transaction
    from django.utils import timezone

    from apps.accounts.models import Host
    from apps.workunits.models import Result, WorkUnit
    from apps.workunits.states import Outcome, ServerState

    now = timezone.now()
    hosts = list(Host.objects.filter(pk__in=seeded.host_ids).order_by("pk")
                 .values_list("pk", "volunteer_id"))
    ids = list(WorkUnit.objects.order_by("id").values_list("id", flat=True)[:workunits])
    seeds = dict(WorkUnit.objects.filter(pk__in=ids).values_list("id", "payload__seed"))
    results = list(Result.objects.filter(workunit_id__in=ids).order_by("workunit_id", "id"))
    by_wu: dict[int, list[Result]] = {}
    for r in results:
        by_wu.setdefault(r.workunit_id, []).append(r)
    turn = 0
    for wu_id, replicas in by_wu.items():
        answer = seeded.answers[seeds[wu_id]]
        used: set[int] = set()
        for k, r in enumerate(replicas):
            while hosts[turn % len(hosts)][1] in used:
                turn += 1
            host_id, volunteer_id = hosts[turn % len(hosts)]
            turn += 1
            used.add(volunteer_id)
            sent = now - timedelta(seconds=60)
            r.host_id, r.volunteer_id = host_id, volunteer_id
            r.server_state, r.outcome = ServerState.OVER, Outcome.SUCCESS
            r.sent_time, r.acked_time = sent, sent
            r.report_deadline = sent + timedelta(hours=2)
            r.received_time = now - timedelta(seconds=10 - k)
            r.output, r.digest = answer, answer["digest"]
            r.cpu_time = r.wall_time = 1.0
            r.client_version = "bench"
    with transaction.atomic():
        Result.objects.bulk_update(
            results, ["host_id", "volunteer_id", "server_state", "outcome", "sent_time",
                      "acked_time", "report_deadline", "received_time", "output", "digest",
                      "cpu_time", "wall_time", "client_version"], batch_size=500)
        WorkUnit.objects.filter(pk__in=ids).update(transition_time=now, updated_at=now)
    return ids


class Meter:
    """CPU of this process and of its PostgreSQL backend, and SQL statements, per daemon."""

    def __init__(self) -> None:
        from django.db import connection

        self.connection = connection
        self.cpu: Counter[str] = Counter()
        self.backend_cpu: Counter[str] = Counter()
        self.statements: Counter[str] = Counter()
        self.found: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._backend_pid: int | None = None
        self._current = ""

    def backend_pid(self) -> int | None:
        if self.connection.vendor != "postgresql":
            return None
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]

    def _count(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.statements[self._current] += 1
        return execute(sql, params, many, context)

    def run(self, name: str, func: Callable[[], int]) -> int:
        pid = self.backend_pid()  # asked before the clock starts: not counted
        backend_before = portal.cpu_seconds([pid]).get(pid, 0.0) if pid else 0.0
        self._current = name
        started = time.process_time()
        with self.connection.execute_wrapper(self._count):
            found = func()
        self.cpu[name] += time.process_time() - started
        if pid:
            # The backend may have changed if the connection was closed and reopened.
            after = portal.cpu_seconds([pid]).get(pid)
            if after is not None:
                self.backend_cpu[name] += after - backend_before
        self.found[name] += found
        self.calls[name] += 1
        return found


def drain_in_process(meter: Meter, *, max_rounds: int = 10_000) -> int:
    """Run rounds of the daemons (as ``run_daemons``) until a round finds nothing; returns
    the number of rounds."""
    from apps.workunits.assimilator import assimilate_pass
    from apps.workunits.transitioner import transition_pass
    from apps.workunits.validator import validate_pass

    passes = {"transitioner": transition_pass, "validator": validate_pass,
              "assimilator": assimilate_pass}
    for rounds in range(1, max_rounds + 1):
        found = [meter.run(name, passes[name]) for name in DAEMONS]
        if not any(found):
            return rounds
    return max_rounds


def drain_processes(env: dict[str, str], processes: int) -> None:
    """``manage.py run_daemons --once`` in ``processes`` processes side by side."""
    procs = [subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "run_daemons", "--once"],
                              env={**env, "PGAPPNAME": "bench-daemons"}, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(processes)]
    for proc in procs:
        out, _ = proc.communicate(timeout=3600)
        lines = out.decode(errors="replace").strip().splitlines()
        print(f"  run_daemons pid {proc.pid}: {lines[-1] if lines else ''}")
        if proc.returncode:
            print(out.decode(errors="replace"))
            raise SystemExit(f"run_daemons exited with {proc.returncode}")


CHECK_SQL = {
    "reported work units without a canonical result":
        "SELECT count(*) FROM workunits_workunit WHERE id IN ({ids}) "
        "AND canonical_result_id IS NULL",
    "reported work units not assimilated":
        "SELECT count(*) FROM workunits_workunit WHERE id IN ({ids}) "
        "AND assimilate_state <> 2",
    "reported work units still flagged (need_validate, due)":
        "SELECT count(*) FROM workunits_workunit WHERE id IN ({ids}) "
        "AND (need_validate OR transition_time IS NOT NULL)",
    "reported replicas not valid":
        "SELECT count(*) FROM workunits_result WHERE workunit_id IN ({ids}) "
        "AND validate_state <> 1",
    "valid replicas without exactly one credit grant":
        "SELECT count(*) FROM workunits_result r WHERE r.validate_state = 1 AND "
        "(SELECT count(*) FROM credit_creditgrant c WHERE c.result_id = r.id) <> 1",
    "credit grants of replicas that are not valid":
        "SELECT count(*) FROM credit_creditgrant c JOIN workunits_result r "
        "ON r.id = c.result_id WHERE r.validate_state <> 1",
    "epochs assimilated minus work units assimilated (assimilated twice or never)":
        "SELECT abs((SELECT coalesce(sum(epochs_done), 0) FROM workunits_campaign) "
        "- (SELECT count(*) FROM workunits_workunit WHERE assimilate_state = 2))",
    "volunteers whose total credit is not their ledger's sum":
        "SELECT count(*) FROM accounts_volunteer v WHERE abs(v.total_credit - "
        "(SELECT coalesce(sum(amount), 0) FROM credit_creditgrant c "
        "WHERE c.volunteer_id = v.id)) > 1e-9",
    "hosts whose total credit is not their ledger's sum":
        "SELECT count(*) FROM accounts_host h WHERE abs(h.total_credit - "
        "(SELECT coalesce(sum(amount), 0) FROM credit_creditgrant c "
        "WHERE c.host_id = h.id)) > 1e-9",
    "hosts whose valid count is not their valid replicas":
        "SELECT count(*) FROM accounts_host h WHERE h.n_valid <> "
        "(SELECT count(*) FROM workunits_result r WHERE r.host_id = h.id "
        "AND r.validate_state = 1)",
}


def check(ids: list[int]) -> dict[str, int]:
    from django.db import connection

    listed = ", ".join(str(int(pk)) for pk in ids) or "NULL"
    found = {}
    with connection.cursor() as cursor:
        for name, sql in CHECK_SQL.items():
            cursor.execute(sql.replace("{ids}", listed))
            found[name] = cursor.fetchone()[0]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workunits", type=int, default=2000,
                        help="work units reported (both replicas) and drained (2000)")
    parser.add_argument("--filler", type=int, default=20_000,
                        help="more work units, never sent: the tables' size (20000)")
    parser.add_argument("--hosts", type=int, default=200, help="hosts reporting (200)")
    parser.add_argument("--bars", type=int, default=400, help="bars of the data set (400)")
    parser.add_argument("--processes", type=int, default=1,
                        help="drain in this process (1) or in N run_daemons processes")
    parser.add_argument("--profile", type=Path, help="cProfile the drain into this file")
    parser.add_argument("--sql", action="store_true",
                        help="print the most frequent SQL statements of the drain")
    parser.add_argument("--database", default=os.environ.get("BENCH_DATABASE_URL",
                                                             portal.DEFAULT_PG),
                        help="a PostgreSQL URL whose server may create and drop a database")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args(argv)
    if not 1 <= args.workunits <= 200_000 or args.filler < 0 or args.processes < 1:
        parser.error("--workunits 1..200000, --filler >= 0, --processes >= 1")
    with portal.ThrowawayDatabase(args.database, "strategy_daemons") as database:
        database.keep = args.keep
        env = portal.portal_env(database.url, database.name, DAEMON_RUNNER="loop")
        portal.manage(env, "migrate", "--noinput")
        os.environ.update(env)
        import django

        django.setup()
        opts = Options(hosts=args.hosts, slots=(4, 4), task_seconds=1.0, request_delay=0,
                       warmup=0.0, duration=0.0, connections=1, seed=1)
        started = time.monotonic()
        seeded = seed_portal(opts, workunits=args.workunits + args.filler, replicas=2,
                             bars=args.bars, rng=random.Random(1))
        ids = report_all(seeded, workunits=args.workunits)
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        print(f"database {database.name}: {seeded.workunits:,} work units in "
              f"{seeded.campaigns} campaigns, {len(ids):,} of them reported by two hosts "
              f"(seeded in {time.monotonic() - started:.0f} s)", flush=True)
        return _drain(args, env, database, ids)


def _drain(args: argparse.Namespace, env: dict[str, str], database: portal.ThrowawayDatabase,
           ids: list[int]) -> int:
    from django.db import connection

    meter = Meter()
    admin = portal.admin_connection(database.url)
    try:
        machine_before = portal.machine_cpu()
        own_before = time.process_time()
        wall_started = time.monotonic()
        if args.processes > 1:
            connection.close()
            drain_processes(env, args.processes)
            rounds = 0
        else:
            # CPU time, not wall time: waits for PostgreSQL are not this process's cost.
            profiler = cProfile.Profile(time.process_time) if args.profile else None
            if profiler:
                profiler.enable()
            if args.sql:
                statements: Counter[str] = Counter()

                def record(execute: Any, sql: str, params: Any, many: bool, context: Any
                           ) -> Any:
                    statements[sql[:140]] += 1
                    return execute(sql, params, many, context)

                with connection.execute_wrapper(record):
                    rounds = drain_in_process(meter)
            else:
                rounds = drain_in_process(meter)
            if profiler:
                profiler.disable()
                profiler.dump_stats(args.profile)
        wall = time.monotonic() - wall_started
        own = time.process_time() - own_before
        busy, total = (a - b for a, b in zip(portal.machine_cpu(), machine_before, strict=True))
        found = check(ids)
    finally:
        admin.close()
        connection.close()

    n = len(ids)
    print(f"\n{n:,} work units ({2 * n:,} replicas) validated, credited and assimilated in "
          f"{wall:.2f} s wall" + (f", {rounds} rounds" if rounds else "")
          + f"; machine busy {100 * busy / max(total, 1e-9):.0f} % of "
          f"{os.cpu_count()} cores; load {os.getloadavg()[0]:.2f}")
    print(f"  work units validated: {n / wall:9,.1f} /s  = {2 * n / wall:,.1f} tasks/s end to "
          f"end (BOINC's figure: {BOINC_TASKS_PER_SECOND:.0f} tasks/s)")
    if args.processes == 1:
        print("  per work unit          CPU ms (Python)  CPU ms (PostgreSQL)  SQL statements  "
              "passes  found")
        for name in DAEMONS:
            print(f"    {name:<20} {1e3 * meter.cpu[name] / n:12.2f} "
                  f"{1e3 * meter.backend_cpu[name] / n:18.2f} "
                  f"{meter.statements[name] / n:16.1f} {meter.calls[name]:7} "
                  f"{meter.found[name]:6}")
        cpu, backend = sum(meter.cpu.values()), sum(meter.backend_cpu.values())
        print(f"    {'all':<20} {1e3 * cpu / n:12.2f} {1e3 * backend / n:18.2f} "
              f"{sum(meter.statements.values()) / n:16.1f}")
        print(f"  this process used {own:.2f} CPU s in all")
    else:
        print(f"  {args.processes} run_daemons processes side by side")
    if args.sql and args.processes == 1:
        print("  most frequent SQL statements (first 140 characters):")
        for sql, count in statements.most_common(15):
            print(f"    {count:7,}  {sql}")
    if args.profile:
        print(f"  profile: {args.profile}")
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(30)
    print("  checks (each must be 0):")
    for name, value in found.items():
        print(f"    {name:<80} {value}")
    passed = not any(found.values())
    print("PASSED" if passed else "FAILED")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
