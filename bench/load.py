"""Load: a thousand simulated hosts speak the real protocol to the real portal, for a bounded time.

    .venv/bin/python bench/load.py [--hosts 1000] [--duration 30] [--slots 4-16]
                                   [--task-seconds 8] [--request-delay 10]
                                   [--daemons qcluster|loop|none] [--gunicorn-workers 4] [--redis]

What it does, all on 127.0.0.1 and bounded in time:

1. creates a throwaway PostgreSQL database (dropped at the end) and fills it: one synthetic data
   set; campaigns of 2,048 islands whose epochs are tiny (300 in-sample bars, 4 genomes, one
   generation), so that the validator's real re-run of every answer is cheap; two replicas per
   work unit (quorum 2, BOINC's usual redundancy); ``--hosts`` hosts attached to volunteers in
   bulk, one volunteer in nine owning two hosts, so that "never two replicas of one work unit
   for one volunteer" is exercised; quotas lifted (a host here finishes a task a second);
2. computes the right answer of every island's epoch with the worker's own ``run_job``: island
   i carries the same payload in every campaign (its seed is ``epoch_seed(seed, i, 0)``, as the
   campaign services make it), so the hosts report right answers and the validator, which
   re-runs the claimed genomes on the server, accepts them for real;
3. starts the portal under gunicorn (production settings, DEBUG off) and the server daemons
   (``manage.py qcluster`` by default, as production runs them, at nice 10: batch work that
   yields the CPU to the calls);
4. runs the hosts in one asyncio process (aiohttp): each host has ``--slots`` cores and holds
   up to twice as many tasks (running plus a buffer, like BOINC's work buffer); each task runs
   for a simulated ``--task-seconds`` (± 50 %), then its result is reported. A host calls when
   it has something to say (results, acks, free buffer) and never sooner than the
   ``request_delay`` the portal tells it (``SCHEDULER_REQUEST_DELAY``, 10 s here); each call
   carries its results, acks, the tasks it holds, heartbeats of the running ones and a request
   for work, as ``strategy-worker`` does; it downloads the data set once, after its first task;
5. after ``--warmup`` seconds measures for ``--duration`` seconds: tasks dispatched/s, results
   reported/s, work units validated/s and credit granted/s, request latency percentiles,
   errors by kind, the CPU each part used (and per task), and the daemons' backlog;
6. checks with SQL that no replica was given to two hosts and that no volunteer got two
   replicas of one work unit, and exits non-zero on any error or double assignment.

The offered load is hosts × mean slots / task seconds (1,000 × 10 / 8 = 1,250 tasks/s by
default); a call carries about request_delay / task_seconds × slots results (12-15 here). On a
shared machine the throughput moves with the neighbours' load: the CPU per task does not, and
2 cores divided by it is the capacity of an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import portal  # noqa: E402
from bench.hosts import (  # noqa: E402
    MAX_TASKS_PER_CALL,
    Options,
    Seeded,
    Totals,
    Window,
    run_hosts,
)

BOINC_TASKS_PER_SECOND = 8_800_000 / 86_400  # ~102: BOINC's published single-server figure
ISLANDS_PER_CAMPAIGN = 2048  # a real portal runs a few campaigns at a time: so does the bench


# --- the portal's database: filled in bulk through the models ------------------------------------


def seed_portal(opts: Options, *, workunits: int, replicas: int, bars: int,
                islands: int = ISLANDS_PER_CAMPAIGN, rng: random.Random) -> Seeded:
    """Fill the portal's database through its models and services (Django is set up), with
    campaigns of ``islands`` islands; returns the hosts' tokens and every payload's answer."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.db import connection, transaction

    from apps.accounts.models import Host, Volunteer
    from apps.accounts.selectors import secret_hash
    from apps.accounts.services import new_secret
    from apps.workunits.campaigns import campaign_start, epoch_seed
    from apps.workunits.marketdata import dataset_create_synthetic
    from apps.workunits.models import Campaign, Result, WorkUnit
    from apps.workunits.states import CampaignState, ServerState
    from worker_client import __version__

    dataset = dataset_create_synthetic(bars=bars, seed=7)
    in_sample = bars * 3 // 4
    settings = {"population_size": 4, "elite": 1, "immigrants": 1, "tournament_size": 2,
                "top_k": 2}
    first = Campaign.objects.create(
        name="load bench 0", dataset=dataset, in_sample_stop=in_sample, out_sample_stop=bars,
        islands=1, generations_per_epoch=1, budget_epochs=1, min_quorum=replicas,
        target_nresults=replicas, ga_settings=settings, delay_bound=3600)
    (template,) = campaign_start(campaign=first)  # island 0 epoch 0, made by the services
    Campaign.objects.filter(pk=first.pk).update(islands=islands)
    first.refresh_from_db()
    # Island i's epoch 0, as workunit_create would make it: the template with the island's own
    # seed. Every campaign has the same seed, so island i carries the same payload in each.
    payloads = {i: {**template.payload, "seed": epoch_seed(first.seed, i, 0)}
                for i in range(islands)}
    assert payloads[template.island] == template.payload
    n_campaigns = -(-workunits // islands)
    campaign_fields = {f.attname: getattr(first, f.attname) for f in Campaign._meta.concrete_fields
                       if f.attname not in ("id", "name", "created_at", "updated_at")}
    wu_fields = {f.attname: getattr(template, f.attname) for f in WorkUnit._meta.concrete_fields
                 if f.attname not in ("id", "campaign_id", "island", "payload", "created_at",
                                      "updated_at", "transition_time")}
    with transaction.atomic():
        campaigns = [first, *Campaign.objects.bulk_create([
            Campaign(name=f"load bench {i}", **campaign_fields) for i in range(1, n_campaigns)])]
        assert all(c.state == CampaignState.ACTIVE for c in campaigns)
        made = 1
        for campaign in campaigns:
            numbers = [i for i in range(islands)
                       if not (campaign.pk == first.pk and i == template.island)]
            numbers = numbers[:max(0, workunits - made)]
            # Created complete (all replicas exist), so the transitioner has nothing to do with
            # them until a replica is sent: no transition time yet.
            units = WorkUnit.objects.bulk_create(
                [WorkUnit(campaign=campaign, island=i, payload=payloads[i], **wu_fields)
                 for i in numbers], batch_size=2_000)
            Result.objects.bulk_create(
                [Result(workunit=wu, server_state=ServerState.UNSENT, priority=wu.priority)
                 for wu in units for _ in range(replicas)], batch_size=5_000)
            made += len(units)

        # Volunteers and hosts in bulk (as host_attach would make them, without hashing a
        # thousand sign-up passwords): every tenth volunteer owns two hosts.
        user_model = get_user_model()
        owners: list[int] = []
        n_volunteers = 0
        for i in range(opts.hosts):
            if i % 10 == 1:
                owners.append(owners[-1])  # this volunteer's second host
            else:
                owners.append(n_volunteers)
                n_volunteers += 1
        users = user_model.objects.bulk_create([
            user_model(username=f"load{i}", email=f"load{i}@example.org",
                       password=make_password(None))
            for i in range(n_volunteers)])
        keys = [new_secret() for _ in users]
        volunteers = Volunteer.objects.bulk_create([
            Volunteer(user=user, display_name=f"load volunteer {i}",
                      account_key_hash=secret_hash(key), account_key_hint=key[:8])
            for i, (user, key) in enumerate(zip(users, keys, strict=True))])
        tokens = [new_secret() for _ in range(opts.hosts)]
        slots = [rng.randint(*opts.slots) for _ in range(opts.hosts)]
        hosts = Host.objects.bulk_create([
            Host(volunteer=volunteers[owners[i]], name=f"load-{i}", token_hash=secret_hash(token),
                 os="Linux", arch="x86_64", python_version="3.11", numba_version="0",
                 cpu_count=slots[i], memory_mb=8192, client_version=__version__,
                 max_results_day=10**9)  # a host here finishes a task a second
            for i, token in enumerate(tokens)])
    if connection.vendor == "postgresql":
        # Fresh statistics, as autovacuum would have them on a live server.
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")

    search = first.search_dataset
    answers = {payload["seed"]: _answer(payload, search.sha256, search.file.path)
               for payload in payloads.values()}
    return Seeded(tokens=tokens, host_ids=[h.pk for h in hosts], slots=slots, answers=answers,
                  dataset_sha256=search.sha256, workunits=made, campaigns=len(campaigns))


def _answer(payload: dict[str, Any], sha256: str, path: str) -> dict[str, Any]:
    """An island epoch's output, computed by the worker's own task code."""
    import tempfile

    from worker_client.compute import EXIT_FINISHED, Job, run_job

    with tempfile.TemporaryDirectory() as scratch:
        job = Job(result_id=1, payload=payload, dataset_sha256=sha256, dataset_path=path,
                  checkpoint_path=str(Path(scratch) / "checkpoint"),
                  result_path=str(Path(scratch) / "result.json"))
        code = run_job(job, should_stop=lambda: False, report=lambda progress: None)
        result = json.loads(Path(job.result_path).read_text())
    if code != EXIT_FINISHED or result["status"] != "success":
        raise SystemExit(f"the bench's island epoch failed: {result.get('error')}")
    return result["output"]


# --- server-side figures -------------------------------------------------------------------------


SNAPSHOT_SQL = {
    "validated_workunits":
        "SELECT count(*) FROM workunits_workunit WHERE canonical_result_id IS NOT NULL",
    "credit_grants": "SELECT count(*), coalesce(sum(amount), 0) FROM credit_creditgrant",
    "reported": "SELECT count(*) FROM workunits_result WHERE received_time IS NOT NULL",
    "sent": "SELECT count(*) FROM workunits_result WHERE sent_time IS NOT NULL",
}
BACKLOG_SQL = {
    "queued daemon tasks (django-q2 ORM broker)": "SELECT count(*) FROM django_q_ormq",
    "work units waiting for the transitioner":
        "SELECT count(*) FROM workunits_workunit WHERE transition_time <= now()",
    "work units waiting for the validator":
        "SELECT count(*) FROM workunits_workunit WHERE need_validate",
    "work units waiting for the assimilator":
        "SELECT count(*) FROM workunits_workunit WHERE assimilate_state = 1",
    "results reported, not yet validated":
        "SELECT count(*) FROM workunits_result WHERE server_state = 5 AND outcome = 1 "
        "AND validate_state = 0",
}
CHECK_SQL = {
    # Each replica row has one host column; the client's record of who got what must match it.
    "replicas whose row names another host than the one they were sent to":
        "SELECT count(*) FROM given g JOIN workunits_result r ON r.id = g.result_id "
        "WHERE r.host_id IS DISTINCT FROM g.host_id",
    "volunteers holding two replicas of one work unit (by the volunteer column)":
        "SELECT count(*) FROM (SELECT workunit_id, volunteer_id FROM workunits_result "
        "WHERE volunteer_id IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1) t",
    "volunteers holding two replicas of one work unit (through the hosts)":
        "SELECT count(*) FROM (SELECT r.workunit_id, h.volunteer_id FROM workunits_result r "
        "JOIN accounts_host h ON h.id = r.host_id GROUP BY 1, 2 HAVING count(*) > 1) t",
    "results credited more than once":
        "SELECT count(*) FROM (SELECT result_id FROM credit_creditgrant GROUP BY 1 "
        "HAVING count(*) > 1) t",
    "valid replicas without exactly one credit grant":
        "SELECT count(*) FROM workunits_result r LEFT JOIN credit_creditgrant c "
        "ON c.result_id = r.id WHERE r.validate_state = 1 AND c.id IS NULL",
}


def snapshot(conn: Any) -> dict[str, Any]:
    figures = {}
    for name, sql in SNAPSHOT_SQL.items():
        row = conn.execute(sql).fetchone()
        figures[name] = row if len(row) > 1 else row[0]
    figures["time"] = time.monotonic()
    return figures


def backend_pids(conn: Any, database: str, application: str) -> list[int]:
    """PostgreSQL's backends serving one part (libpq sends ``PGAPPNAME`` as its name)."""
    return [pid for (pid,) in conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
        [database, application]).fetchall()]


@dataclass
class CpuMeter:
    """CPU seconds used between two readings by gunicorn, the daemons, PostgreSQL's backends
    of the bench database, and the whole machine."""

    groups: dict[str, list[int]]
    start: dict[str, dict[int, float]] = field(default_factory=dict)
    machine_start: tuple[float, float] = (0.0, 0.0)

    def begin(self) -> None:
        self.start = {name: portal.cpu_seconds(pids) for name, pids in self.groups.items()}
        self.machine_start = portal.machine_cpu()

    def end(self, groups: dict[str, list[int]]) -> dict[str, float]:
        used = {}
        for name, pids in groups.items():
            now = portal.cpu_seconds(pids)
            before = self.start.get(name, {})
            used[name] = sum(now[pid] - before.get(pid, 0.0) for pid in now)
        busy, total = portal.machine_cpu()
        used["machine busy"] = busy - self.machine_start[0]
        used["machine total"] = total - self.machine_start[1]
        return used


# --- main ----------------------------------------------------------------------------------------


def _slots(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    pair = (int(low), int(high or low))
    if not 1 <= pair[0] <= pair[1] <= 16:
        raise argparse.ArgumentTypeError("slots: N or LOW-HIGH, between 1 and 16")
    return pair


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000, help="simulated hosts (1000)")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds measured, after the warm-up (30)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before measuring (default: request delay + 2 tasks)")
    parser.add_argument("--slots", type=_slots, default=(4, 16),
                        help="cores per host, N or LOW-HIGH drawn uniformly (4-16)")
    parser.add_argument("--task-seconds", type=float, default=8.0,
                        help="mean simulated run time of a task, ±50%% (8)")
    parser.add_argument("--request-delay", type=int, default=10,
                        help="the portal's SCHEDULER_REQUEST_DELAY, obeyed by the hosts (10)")
    parser.add_argument("--gunicorn-workers", type=int, default=4)
    parser.add_argument("--gunicorn-threads", type=int, default=1,
                        help="threads per worker; more than 1 selects gthread (1: sync)")
    parser.add_argument("--daemons", choices=["qcluster", "loop", "none"], default="qcluster",
                        help="qcluster (production), run_daemons --loop, or none")
    parser.add_argument("--q-workers", type=int, default=2, help="qcluster workers (2)")
    parser.add_argument("--daemons-nice", type=int, default=10,
                        help="the daemons' niceness: batch work yields the CPU to the "
                             "scheduler's calls (10; 0 for none)")
    parser.add_argument("--redis", action="store_true",
                        help="cache and django-q2 broker in Redis (REDIS_URL), not PostgreSQL")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12",
                        help="a loopback Redis database the bench may empty (db 12)")
    parser.add_argument("--connections", type=int, default=64,
                        help="HTTP connections the hosts share at most (64)")
    parser.add_argument("--bars", type=int, default=400, help="bars of the data set (400)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database", default=os.environ.get("BENCH_DATABASE_URL",
                                                             portal.DEFAULT_PG),
                        help="a PostgreSQL URL whose server may create and drop a database")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 600:
        parser.error("--duration must be between 1 and 600 seconds")
    if not 1 <= args.hosts <= 20_000:
        parser.error("--hosts must be between 1 and 20,000")
    if args.task_seconds <= 0 or args.request_delay < 0:
        parser.error("--task-seconds must be positive, --request-delay not negative")
    if args.redis and not args.redis_url.startswith(("redis://127.0.0.1", "redis://localhost")):
        parser.error("--redis-url must be a loopback Redis")
    warmup = (args.warmup if args.warmup is not None
              else args.request_delay + 2 * args.task_seconds)
    opts = Options(hosts=args.hosts, slots=args.slots, task_seconds=args.task_seconds,
                   request_delay=args.request_delay, warmup=warmup, duration=args.duration,
                   connections=args.connections, seed=args.seed)
    figures = run(opts, args)
    return 0 if figures["passed"] else 1


def run(opts: Options, args: argparse.Namespace) -> dict[str, Any]:
    mean_slots = sum(opts.slots) / 2
    offered = opts.hosts * mean_slots / opts.task_seconds
    held = opts.hosts * sum(min(2 * s, MAX_TASKS_PER_CALL) for s in opts.slots) / 2
    # Enough replicas for the buffers and the whole run, with a margin: the work must not run out.
    tasks_needed = held + offered * (opts.warmup + opts.duration + opts.request_delay) * 1.3
    replicas = 2
    workunits = int(tasks_needed / replicas) + 1
    rng = random.Random(opts.seed)

    extra = {"SCHEDULER_REQUEST_DELAY": str(opts.request_delay), "Q_WORKERS": str(args.q_workers)}
    if args.redis:
        extra["REDIS_URL"] = args.redis_url
    with portal.ThrowawayDatabase(args.database, "strategy_load") as database:
        database.keep = args.keep
        env = portal.portal_env(database.url, database.name, **extra)
        print(f"database {database.name}: migrating; {workunits:,} work units × {replicas} "
              f"replicas, {opts.hosts:,} hosts …", flush=True)
        started = time.monotonic()
        portal.manage(env, "migrate", "--noinput")
        portal.manage(env, "createcachetable")
        portal.manage(env, "setup_schedules")
        if args.redis:
            _flush_redis(args.redis_url)
        os.environ.update(env)
        import django

        django.setup()
        from django.db import connection

        seeded = seed_portal(opts, workunits=workunits, replicas=replicas, bars=args.bars,
                             rng=rng)
        connection.close()
        size = statistics.fmean(len(json.dumps(a)) for a in seeded.answers.values())
        print(f"seeded in {time.monotonic() - started:.0f} s: {seeded.campaigns} campaigns of "
              f"{ISLANDS_PER_CAMPAIGN} islands; answers of {size:,.0f} bytes", flush=True)
        try:
            return _measure(opts, args, env, database, seeded, offered)
        finally:
            if args.redis:
                _flush_redis(args.redis_url)


def _flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def _measure(opts: Options, args: argparse.Namespace, env: dict[str, str],
             database: portal.ThrowawayDatabase, seeded: Seeded, offered: float
             ) -> dict[str, Any]:
    port = portal.free_port()
    server = f"http://127.0.0.1:{port}/"
    gunicorn = portal.start_gunicorn({**env, "PGAPPNAME": "bench-portal"}, port,
                                     workers=args.gunicorn_workers,
                                     threads=args.gunicorn_threads, log_name="load-gunicorn.log")
    daemons: subprocess.Popen[bytes] | None = None
    conn = portal.admin_connection(database.url)
    try:
        portal.wait_healthy(server, gunicorn)
        if args.daemons != "none":
            command = (["qcluster"] if args.daemons == "qcluster"
                       else ["run_daemons", "--loop", "--sleep", "0.5"])
            niceness = args.daemons_nice
            with open(portal.LOG_DIR / "load-daemons.log", "wb") as log_file:
                daemons = subprocess.Popen(
                    [sys.executable, str(ROOT / "manage.py"), *command],
                    env={**env, "PGAPPNAME": "bench-daemons"}, cwd=ROOT,
                    stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=lambda: os.nice(niceness))
        kind = (f"gthread, {args.gunicorn_threads} threads" if args.gunicorn_threads > 1
                else "sync")
        daemons_text = (f"{args.daemons} (nice {args.daemons_nice})" if args.daemons != "none"
                        else "none")
        print(f"portal at {server} (gunicorn -w {args.gunicorn_workers}, {kind}); daemons: "
              f"{daemons_text}; broker and cache: {'Redis' if args.redis else 'PostgreSQL'}",
              flush=True)
        print(f"{opts.hosts:,} hosts with {opts.slots[0]}-{opts.slots[1]} cores, tasks of "
              f"{opts.task_seconds:g} s ± 50 %, request delay {opts.request_delay} s: offered "
              f"load {offered:,.0f} tasks/s; warm-up {opts.warmup:.0f} s, then "
              f"{opts.duration:.0f} s measured …", flush=True)

        def groups() -> dict[str, list[int]]:
            return {"gunicorn": portal.process_tree(gunicorn.pid),
                    "postgres for gunicorn": backend_pids(conn, database.name, "bench-portal"),
                    "daemons": portal.process_tree(daemons.pid) if daemons else [],
                    "postgres for the daemons": backend_pids(conn, database.name,
                                                             "bench-daemons")}

        meter = CpuMeter(groups={})
        edges: dict[str, dict[str, Any]] = {}
        cpu: dict[str, float] = {}

        own: list[float] = []

        async def on_window(edge: str) -> None:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            own.append(usage.ru_utime + usage.ru_stime)
            if edge == "start":
                meter.groups = groups()
                meter.begin()
                edges["start"] = snapshot(conn)
            else:
                edges["stop"] = snapshot(conn)
                cpu.update(meter.end(groups()))

        window, totals = asyncio.run(run_hosts(seeded, opts, server, on_window))
        if daemons is not None:
            portal.stop(daemons, timeout=30)
        backlog = {name: conn.execute(sql).fetchone()[0] for name, sql in BACKLOG_SQL.items()}
        if args.redis:
            import redis

            client = redis.Redis.from_url(args.redis_url)
            backlog["queued daemon tasks (django-q2 Redis broker)"] = sum(
                client.llen(key) for key in client.scan_iter("django_q:*:q"))
            client.close()
        found = checks(totals)
    finally:
        conn.close()
        if daemons is not None:
            portal.stop(daemons, timeout=30)
        portal.stop(gunicorn)
    own_cpu = own[1] - own[0]  # the hosts' process, inside the window
    return _report(opts, args, window, totals, edges, cpu, own_cpu, backlog, found, seeded,
                   offered)


def checks(totals: Totals) -> dict[str, int]:
    """The double-assignment checks, in SQL through Django's connection (each must find 0)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE given (result_id bigint PRIMARY KEY, "
                       "host_id bigint)")
        cursor.executemany("INSERT INTO given (result_id, host_id) VALUES (%s, %s)",
                           list(totals.given.items()))
        found = {}
        for name, sql in CHECK_SQL.items():
            cursor.execute(sql)
            found[name] = cursor.fetchone()[0]
        cursor.execute("DROP TABLE given")
    found["tasks the hosts were given twice (seen by the hosts)"] = len(totals.double_given)
    return found


def _report(opts: Options, args: argparse.Namespace, window: Window, totals: Totals,
            edges: dict[str, dict[str, Any]], cpu: dict[str, float], own_cpu: float,
            backlog: dict[str, int], checks: dict[str, int], seeded: Seeded,
            offered: float) -> dict[str, Any]:
    seconds = edges["stop"]["time"] - edges["start"]["time"]
    latencies = sorted(window.latencies)

    def per_second(name: str, index: int | None = None) -> float:
        a, b = edges["start"][name], edges["stop"][name]
        if index is not None:
            a, b = a[index], b[index]
        return float(b - a) / seconds

    errors = sum(window.errors.values())
    all_errors = sum(totals.errors.values())
    doubles = sum(checks.values())
    cpu_window = {name: round(value, 1) for name, value in cpu.items()}
    cpu_window["simulated hosts (one process)"] = round(own_cpu, 1)
    figures = {
        "hosts": opts.hosts, "slots": list(opts.slots), "task_seconds": opts.task_seconds,
        "request_delay_s": opts.request_delay, "warmup_s": opts.warmup,
        "duration_s": round(seconds, 2), "offered_tasks_per_s": round(offered, 1),
        "gunicorn": {"workers": args.gunicorn_workers, "threads": args.gunicorn_threads},
        "daemons": args.daemons, "redis": args.redis, "cores": os.cpu_count(),
        "workunits": seeded.workunits, "campaigns": seeded.campaigns,
        "tasks_dispatched_per_s": round(window.dispatched / seconds, 1),
        "results_reported_per_s": round(window.accepted / seconds, 1),
        "workunits_validated_per_s": round(per_second("validated_workunits"), 1),
        "credit_grants_per_s": round(per_second("credit_grants", 0), 1),
        "credit_per_s": round(per_second("credit_grants", 1), 4),
        "server_results_sent_per_s": round(per_second("sent"), 1),
        "server_results_received_per_s": round(per_second("reported"), 1),
        "calls": window.calls, "calls_per_s": round(window.calls / seconds, 1),
        "tasks_per_call": round(window.dispatched / max(window.calls, 1), 2),
        "reports_per_call": round(window.accepted / max(window.calls, 1), 2),
        "latency_ms": {
            "p50": round(portal.percentile(latencies, 0.50) * 1e3, 1),
            "p90": round(portal.percentile(latencies, 0.90) * 1e3, 1),
            "p99": round(portal.percentile(latencies, 0.99) * 1e3, 1),
            "max": round(latencies[-1] * 1e3, 1) if latencies else None,
            "mean": round(statistics.fmean(latencies) * 1e3, 1) if latencies else None},
        "no_work_replies": window.no_work, "aborted": window.aborted,
        "errors_in_window": dict(window.errors), "errors_total": dict(totals.errors),
        "cpu_seconds_in_window": cpu_window, "backlog_at_end": backlog, "checks": checks,
        "boinc_tasks_per_s": round(BOINC_TASKS_PER_SECOND, 1),
    }
    figures["passed"] = all_errors == 0 and doubles == 0 and window.calls > 0
    lat = figures["latency_ms"]
    print()
    print(f"measured {seconds:.1f} s after a {opts.warmup:.0f} s warm-up; {opts.hosts:,} hosts, "
          f"{opts.slots[0]}-{opts.slots[1]} cores each")
    print(f"  tasks dispatched:        {figures['tasks_dispatched_per_s']:>9,.1f} /s  "
          f"({window.dispatched:,}; {figures['tasks_per_call']} per call)")
    print(f"  results reported:        {figures['results_reported_per_s']:>9,.1f} /s  "
          f"({window.accepted:,}; {figures['reports_per_call']} per call)")
    print(f"  work units validated:    {figures['workunits_validated_per_s']:>9,.1f} /s")
    print(f"  credit granted:          {figures['credit_grants_per_s']:>9,.1f} grants/s "
          f"= {figures['credit_per_s']:.4f} credit/s")
    print(f"  calls: {window.calls:,} = {figures['calls_per_s']:,.1f}/s; latency p50 "
          f"{lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms, max {lat['max']} ms")
    print(f"  errors: {errors} in the window, {all_errors} in all"
          + (f" {dict(totals.errors)}" if all_errors else "")
          + f"; no-work replies: {window.no_work}")
    busy, total = cpu.get("machine busy", 0.0), cpu.get("machine total", 1.0)
    print(f"  CPU seconds in the window ({os.cpu_count()} cores, {seconds:.0f} s = "
          f"{seconds * (os.cpu_count() or 1):.0f} core-seconds; machine busy "
          f"{100 * busy / max(total, 1e-9):.0f} %):")
    tasks = max(window.dispatched, 1)
    for name, value in cpu_window.items():
        if not name.startswith("machine"):
            print(f"    {name:<32} {value:>6.1f}  = {1e3 * value / tasks:5.2f} ms per task")
    scheduler_ms = 1e3 * (cpu.get("gunicorn", 0.0) + cpu.get("postgres for gunicorn", 0.0)
                          + own_cpu) / tasks
    cores = os.cpu_count() or 1
    figures["scheduler_cpu_ms_per_task"] = round(scheduler_ms, 3)
    figures["idle_machine_capacity_tasks_per_s"] = round(1e3 * cores / scheduler_ms)
    print(f"  the calls cost {scheduler_ms:.2f} ms of CPU per task (gunicorn, its PostgreSQL "
          f"and the hosts): {cores} idle cores would carry {1e3 * cores / scheduler_ms:,.0f} "
          "tasks/s without the daemons")
    print("  backlog when the load stopped:")
    for name, value in backlog.items():
        print(f"    {name:<48} {value:>8,}")
    print("  checks (each must be 0):")
    for name, value in checks.items():
        print(f"    {name:<75} {value}")
    rate = min(figures["tasks_dispatched_per_s"], figures["results_reported_per_s"])
    print(f"BOINC's published figure: {BOINC_TASKS_PER_SECOND:.0f} tasks/s; this run "
          f"dispatched and took back {rate:,.0f} tasks/s = {rate / BOINC_TASKS_PER_SECOND:.1f}x")
    if window.no_work:
        print("note: some calls found no work: the figure is a lower bound")
    print("PASSED" if figures["passed"] else "FAILED: errors or double assignments (see above)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    sys.exit(main())
