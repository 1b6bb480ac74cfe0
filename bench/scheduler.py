"""How many tasks the scheduler dispatches and takes back per second, against BOINC's figure.

    .venv/bin/python bench/scheduler.py [--duration 30] [--hosts 16] [--procs 4] [--slots 1]

What it does, all on loopback and bounded in time:

1. creates a throwaway PostgreSQL database (dropped at the end), migrates it, and fills it with
   one data set, one campaign and ``--workunits`` single-replica work units (min_quorum 1, so
   every replica is claimable), plus one volunteer and host per simulated host, quotas lifted;
2. starts the real portal under ``gunicorn -w 2 -k sync`` on 127.0.0.1 (DEBUG off, the
   production settings, the DB cache for throttles, scheduler throttle raised so it does not
   cap the figure);
3. runs ``--hosts`` simulated hosts, spread over ``--procs`` processes, each speaking the real
   protocol in a closed loop: ask for ``--slots`` tasks; as soon as they arrive report a canned
   valid output for each in the next request, which also asks for the next ones (BOINC's
   piggy-backed report; a host with several cores asks for several tasks at once). Hosts do
   not sleep ``request_delay``: the point is the server's capacity, which thousands of real
   hosts obeying their delays would share;
4. prints tasks dispatched-and-reported per second, request latency percentiles, errors, and
   the ratio to BOINC's published ~102 tasks/s (8.8 million per day from one server).

The daemons (transitioner, validator …) do not run: this measures the scheduler endpoint. The
simulated hosts share the machine's cores with gunicorn and PostgreSQL, so on a small machine
the figure is a lower bound of what the server alone could do.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import secrets
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import portal  # noqa: E402

BOINC_TASKS_PER_SECOND = 8_800_000 / 86_400  # ~102: BOINC's published single-server figure


# -- simulated hosts (only requests and the protocol: what a worker would use) -----------------


def _host_loop(server: str, token: str, output: dict[str, Any], sha256: str, slots: int,
               stop_at: float, stats: dict[str, Any], lock: threading.Lock) -> None:
    import requests

    from worker_client import __version__
    from worker_client.protocol import ReportedResult, SchedulerRequest, user_agent

    session = requests.Session()
    session.headers.update({"User-Agent": user_agent(__version__),
                            "Authorization": f"Token {token}"})
    url = server + "api/v1/scheduler/"
    latencies: list[float] = []
    dispatched = accepted = requests_sent = no_work = 0
    errors: dict[str, int] = {}
    to_report: list[int] = []
    acks: list[int] = []
    while time.monotonic() < stop_at:
        body = SchedulerRequest(
            results=[ReportedResult(result_id=pk, status="success", output=output,
                                    cpu_time=1.0, wall_time=1.0) for pk in to_report],
            acks=acks, free_slots=slots, work_seconds=3600.0 * slots,
            datasets=[sha256]).to_dict()
        started = time.perf_counter()
        try:
            response = session.post(url, json=body, timeout=(5, 30))
            elapsed = time.perf_counter() - started
        except requests.RequestException as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            time.sleep(0.05)
            continue
        requests_sent += 1
        latencies.append(elapsed)
        if response.status_code != 200:
            key = f"HTTP {response.status_code}"
            errors[key] = errors.get(key, 0) + 1
            time.sleep(0.05)
            continue
        reply = response.json()
        accepted += len(reply["accepted"])
        if reply["rejected"]:
            errors["rejected report"] = errors.get("rejected report", 0) + len(reply["rejected"])
        to_report = [t["result_id"] for t in reply["tasks"]]
        acks = list(to_report)
        dispatched += len(to_report)
        if not to_report:
            no_work += 1
            time.sleep(0.05)
    session.close()
    with lock:
        stats["latencies"].extend(latencies)
        stats["dispatched"] += dispatched
        stats["accepted"] += accepted
        stats["requests"] += requests_sent
        stats["no_work"] += no_work
        for key, n in errors.items():
            stats["errors"][key] = stats["errors"].get(key, 0) + n


def _host_process(server: str, tokens: list[str], output: dict[str, Any], sha256: str,
                  slots: int, start_at: float, duration: float, results: Any) -> None:
    # Every process starts its hosts at the same wall-clock instant, then runs on monotonic.
    time.sleep(max(0.0, start_at - time.time()))
    stop_at = time.monotonic() + duration
    stats: dict[str, Any] = {"latencies": [], "dispatched": 0, "accepted": 0, "requests": 0,
                             "no_work": 0, "errors": {}}
    lock = threading.Lock()
    threads = [threading.Thread(target=_host_loop, daemon=True,
                                args=(server, token, output, sha256, slots, stop_at, stats,
                                      lock))
               for token in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration + 60)
    results.put(stats)


# -- the portal side -----------------------------------------------------------------------------


def _canned_output() -> dict[str, Any]:
    """A real epoch's output (shape and digest as a worker sends), reused for every report."""
    from worker_client.engine import synthetic_ohlcv
    from worker_client.engine.ga import GASettings, run_epoch
    from worker_client.engine.space import SearchSpace

    data = synthetic_ohlcv(2_000, seed=1)
    result = run_epoch(data, SearchSpace(), GASettings(population_size=8, top_k=3), 1, [], 1)
    return result.to_dict()


def _seed(env: dict[str, str], hosts: int, workunits: int) -> tuple[list[str], str]:
    """Fill the bench database through the portal's services (run in this process)."""
    os.environ.update(env)
    import django

    django.setup()
    from django.db import connections, transaction

    from apps.accounts.models import Host
    from apps.accounts.services import host_attach, volunteer_register
    from apps.workunits.campaigns import campaign_start
    from apps.workunits.marketdata import dataset_create_synthetic
    from apps.workunits.models import Campaign, Result, WorkUnit
    from apps.workunits.states import ServerState
    from worker_client import __version__

    dataset = dataset_create_synthetic(bars=3_000, seed=7)
    campaign = Campaign.objects.create(
        name="scheduler bench", dataset=dataset, in_sample_stop=2_000, out_sample_stop=3_000,
        islands=1, generations_per_epoch=1, budget_epochs=1, min_quorum=1, target_nresults=1,
        ga_settings={"population_size": 8, "elite": 1, "immigrants": 1, "top_k": 3},
        delay_bound=86_400)
    (template,) = campaign_start(campaign=campaign)
    fields = {f.attname: getattr(template, f.attname) for f in WorkUnit._meta.concrete_fields
              if f.attname not in ("id", "island")}
    batch = 2_000
    with transaction.atomic():
        for first in range(1, workunits, batch):
            made = WorkUnit.objects.bulk_create([
                WorkUnit(**fields, island=i) for i in range(first, min(first + batch, workunits))])
            Result.objects.bulk_create([
                Result(workunit=wu, server_state=ServerState.UNSENT, priority=wu.priority)
                for wu in made])
    tokens = []
    for i in range(hosts):
        _, key = volunteer_register(
            username=f"bench{i}", email=f"bench{i}@example.org",
            password=secrets.token_urlsafe(16), display_name=f"bench host {i}")
        _, token = host_attach(account_key=key, info={
            "name": f"bench-{i}", "os": "Linux", "arch": "x86_64", "python_version": "3.11",
            "numba_version": "0", "cpu_count": 1, "memory_mb": 1024,
            "client_version": __version__})
        tokens.append(token)
    Host.objects.update(max_results_day=10**9)  # quotas would cap the figure, not the server
    # Fresh statistics, as autovacuum would have them on a live server: without them the
    # planner takes the just-filled tables for empty and the claim scans every unsent row.
    with connections["default"].cursor() as cursor:
        cursor.execute("ANALYZE")
    connections.close_all()
    campaign.refresh_from_db()
    return tokens, campaign.task_dataset.sha256  # what a worker holds: the in-sample file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (30)")
    parser.add_argument("--hosts", type=int, default=16, help="simulated hosts (16)")
    parser.add_argument("--procs", type=int, default=4, help="processes they run in (4)")
    parser.add_argument("--slots", type=int, default=1,
                        help="tasks each host asks for (and reports) per request (1)")
    parser.add_argument("--gunicorn-workers", type=int, default=2)
    parser.add_argument("--workunits", type=int, default=None,
                        help="single-replica work units to create (default 600 per second)")
    parser.add_argument("--database", default=os.environ.get("BENCH_DATABASE_URL",
                                                             portal.DEFAULT_PG),
                        help="a PostgreSQL URL whose server may create and drop a database")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 600:
        parser.error("--duration must be between 1 and 600 seconds")
    if min(args.hosts, args.procs, args.slots) < 1:
        parser.error("--hosts, --procs and --slots must be at least 1")
    if args.slots > 32:
        parser.error("--slots: the portal sends and takes at most 32 per request")
    if urlsplit(args.database).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the bench runs on loopback only: give a 127.0.0.1 PostgreSQL URL")
    workunits = args.workunits or int(600 * args.slots * args.duration)
    procs = min(args.procs, args.hosts)

    with portal.ThrowawayDatabase(args.database, "strategy_bench") as database:
        env = portal.portal_env(database.url, database.name,
                                THROTTLE_SCHEDULER="100000000/minute")
        print(f"database {database.name}: migrating and creating {workunits:,} work units, "
              f"{args.hosts} hosts …", flush=True)
        portal.manage(env, "migrate", "--noinput")
        portal.manage(env, "createcachetable")
        tokens, sha256 = _seed(env, args.hosts, workunits)
        output = _canned_output()

        port = portal.free_port()
        server = f"http://127.0.0.1:{port}/"
        gunicorn = portal.start_gunicorn(env, port, workers=args.gunicorn_workers)
        try:
            portal.wait_healthy(server, gunicorn)
            print(f"portal up at {server} (gunicorn -w {args.gunicorn_workers} -k sync); "
                  f"{args.hosts} hosts in {procs} processes, {args.slots} task(s) per request, "
                  f"for {args.duration:.0f} s …", flush=True)

            load_before = os.getloadavg()[0]
            context = multiprocessing.get_context("spawn")
            results = context.Queue()
            start_at = time.time() + 3.0  # let every process import and be ready
            children = [context.Process(target=_host_process, args=(
                server, tokens[i::procs], output, sha256, args.slots, start_at, args.duration,
                results))
                for i in range(procs)]
            for child in children:
                child.start()
            collected = [results.get(timeout=args.duration + 120) for _ in children]
            for child in children:
                child.join(10)
                if child.is_alive():
                    child.kill()
        finally:
            portal.stop(gunicorn)

    latencies = sorted(x for stats in collected for x in stats["latencies"])
    dispatched = sum(stats["dispatched"] for stats in collected)
    accepted = sum(stats["accepted"] for stats in collected)
    requests_sent = sum(stats["requests"] for stats in collected)
    no_work = sum(stats["no_work"] for stats in collected)
    errors: dict[str, int] = {}
    for stats in collected:
        for key, n in stats["errors"].items():
            errors[key] = errors.get(key, 0) + n
    rate = accepted / args.duration
    figures = {
        "duration_s": args.duration, "hosts": args.hosts, "processes": procs,
        "slots": args.slots,
        "gunicorn_workers": args.gunicorn_workers, "cores": os.cpu_count(),
        "tasks_dispatched": dispatched, "tasks_reported": accepted,
        "tasks_per_s": round(rate, 1), "requests": requests_sent,
        "requests_per_s": round(requests_sent / args.duration, 1),
        "latency_ms": {"p50": round(portal.percentile(latencies, 0.50) * 1e3, 2),
                       "p95": round(portal.percentile(latencies, 0.95) * 1e3, 2),
                       "p99": round(portal.percentile(latencies, 0.99) * 1e3, 2),
                       "mean": round(statistics.fmean(latencies) * 1e3, 2) if latencies
                       else None},
        "no_work_replies": no_work, "errors": errors,
        "boinc_tasks_per_s": round(BOINC_TASKS_PER_SECOND, 1),
        "ratio_to_boinc": round(rate / BOINC_TASKS_PER_SECOND, 2),
        "work_ran_out": dispatched >= workunits,
        "load1_before": round(load_before, 2),
    }
    lat = figures["latency_ms"]
    print()
    print(f"tasks dispatched and reported: {accepted:,} in {args.duration:.0f} s = "
          f"{rate:,.1f} tasks/s  ({dispatched:,} dispatched)")
    print(f"requests: {requests_sent:,} = {requests_sent / args.duration:,.1f}/s; latency p50 "
          f"{lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms")
    print(f"errors: {sum(errors.values())} {errors if errors else ''}; "
          f"no-work replies: {no_work}")
    print(f"BOINC's published figure: 8.8 M tasks/day = {BOINC_TASKS_PER_SECOND:.0f} tasks/s; "
          f"this run: {figures['ratio_to_boinc']}x")
    if figures["work_ran_out"]:
        print("note: the work ran out; the figure is a lower bound (raise --workunits)")
    print(f"({os.cpu_count()} cores shared by gunicorn, PostgreSQL and the simulated hosts; "
          f"1-minute load average before the run: {load_before:.2f})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
