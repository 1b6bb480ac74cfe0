"""Portal-side faults under load, on the real stack: gunicorn + qcluster + PostgreSQL + workers.

    python bench/faults.py [--port 8100] [--timeout 900]

A campaign is mined by three workers while, one after another, mid-run:

1. the portal (gunicorn) is stopped and started again;
2. the cluster (qcluster, the daemons) is killed with SIGKILL and started again;
3. PostgreSQL is restarted (``pg_ctlcluster … restart``): every open connection breaks;
4. a worker is killed with SIGKILL (with its task processes) and started again.

Then it checks that nothing was lost and nothing counted twice (every work unit validated and
assimilated once with agreeing replicas, one credit grant per valid replica, no result left on a
worker's disk), prints the figures and exits non-zero if a check fails. It uses its own database
(``strategy_faults``, dropped and created) and ``var/faults/``; it restarts the machine's
PostgreSQL, so do not run it while something else uses that server.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "var" / "faults"
LOGS = WORK / "logs"
DB_NAME = "strategy_faults"
PG_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
sys.path.insert(0, str(ROOT))


class Stack:
    """The processes of the scenario, each in its own session (killable as a group)."""

    def __init__(self, env: dict[str, str], port: int) -> None:
        self.env = env
        self.port = port
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        with open(LOGS / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(args, cwd=ROOT, env=env or self.env, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        process = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)

    def portal(self) -> None:
        self.start("portal", [sys.executable, "-m", "gunicorn", "portal.wsgi", "-w", "2", "-b",
                              f"127.0.0.1:{self.port}", "--graceful-timeout", "10"])
        _wait_http(f"http://127.0.0.1:{self.port}/healthz")

    def cluster(self) -> None:
        self.start("qcluster", [sys.executable, "manage.py", "qcluster"])

    def worker(self, name: str) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DJANGO_", "DATABASE_URL"))}
        env.update(STRATEGY_WORKER_HOME=str(WORK / "workers" / name), PYTHONUNBUFFERED="1")
        self.start(f"worker-{name}", [sys.executable, "-m", "worker_client.cli", "run",
                                      "--cpus", "1", "--checkpoint-interval", "1", "--plain"],
                   env)

    def stop_all(self) -> None:
        for name in [n for n in self.procs if n.startswith("worker")]:
            self.stop(name, timeout=30)
        for name in ("qcluster", "portal"):
            if name in self.procs:
                self.stop(name, timeout=30)


def _wait_http(url: str, timeout: float = 60.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"faults: {url} did not come up in {timeout:.0f} s")


def _say(message: str) -> None:
    print(message, flush=True)


def _prepare(env: dict[str, str]) -> tuple[int, dict[str, str]]:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    from apps.accounts.services import volunteer_register
    from apps.workunits.campaigns import campaign_start
    from apps.workunits.models import Campaign, Dataset

    call_command("migrate", verbosity=0, interactive=False)
    call_command("createcachetable", verbosity=0)
    call_command("make_demo_data", bars=30_000, seed=7, stdout=io.StringIO())
    dataset = Dataset.objects.get()
    campaign = Campaign.objects.create(
        name="faults", dataset=dataset, in_sample_start=0, in_sample_stop=24_000,
        out_sample_stop=dataset.bar_count, islands=4, budget_epochs=6, generations_per_epoch=30,
        migrants=2, seed=11, search_space={"directions": ["long", "short"]},
        ga_settings={"population_size": 32, "top_k": 5}, min_quorum=2, target_nresults=2,
        delay_bound=1800)
    campaign_start(campaign=campaign)
    keys = {}
    for name in ("w0", "w1", "w2"):
        _, keys[name] = volunteer_register(username=name, email=f"{name}@example.org",
                                           password=f"{name}-password", display_name=name)
    from django.db import connections

    connections.close_all()
    return campaign.pk, keys


def _epochs_done(campaign_id: int) -> tuple[int, bool]:
    from django.db import connections

    from apps.workunits.models import Campaign, WorkUnit
    from apps.workunits.states import AssimilateState, CampaignState

    try:
        done = WorkUnit.objects.filter(campaign_id=campaign_id,
                                       assimilate_state=AssimilateState.DONE).count()
        finished = Campaign.objects.get(pk=campaign_id).state == CampaignState.FINISHED
    finally:
        connections.close_all()  # never hold a connection across a PostgreSQL restart
    return done, finished


def _checks(campaign_id: int) -> list[tuple[str, bool, str]]:
    from django.db.models import Count

    from apps.credit.models import CreditGrant
    from apps.workunits.models import Campaign, Result, WorkUnit
    from apps.workunits.states import AssimilateState, Outcome, ValidateState

    campaign = Campaign.objects.get(pk=campaign_id)
    wus = WorkUnit.objects.filter(campaign=campaign)
    expected = campaign.islands * campaign.budget_epochs
    valid = Result.objects.filter(workunit__campaign=campaign, validate_state=ValidateState.VALID)
    grants = CreditGrant.objects.filter(result__workunit__campaign=campaign)
    disagreeing = [wu.pk for wu in wus if len(set(wu.results.filter(
        validate_state=ValidateState.VALID).values_list("digest", flat=True))) != 1]
    duplicates = grants.values("result").annotate(n=Count("pk")).filter(n__gt=1).count()
    left = sum(len(list((WORK / "workers" / n / "data" / "results").glob("*.json")))
               for n in ("w0", "w1", "w2"))
    no_reply = Result.objects.filter(workunit__campaign=campaign,
                                     outcome=Outcome.NO_REPLY).count()
    return [
        ("work units", wus.count() == expected, f"{wus.count()} of {expected}"),
        ("validated and assimilated once",
         wus.filter(canonical_result__isnull=False,
                    assimilate_state=AssimilateState.DONE).count() == expected,
         f"{wus.filter(assimilate_state=AssimilateState.DONE).count()}"),
        ("valid replicas agree", not disagreeing, f"disagreeing work units: {disagreeing}"),
        ("one credit grant per valid replica", grants.count() == valid.count(),
         f"{grants.count()} grants, {valid.count()} valid replicas"),
        ("no result credited twice", duplicates == 0, f"{duplicates}"),
        ("no result left on a worker's disk", left == 0, f"{left}"),
        ("replicas timed out (lost tasks)", True, f"{no_reply} (informational)"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    LOGS.mkdir(parents=True)
    env = {**os.environ, "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
           "DJANGO_DEBUG": "1", "DJANGO_SETTINGS_MODULE": "portal.settings",
           "MEDIA_ROOT": str(WORK / "media"), "SCHEDULER_REQUEST_DELAY": "1",
           "SCHEDULER_NO_WORK_DELAY": "2", "PYTHONUNBUFFERED": "1"}
    env.pop("REDIS_URL", None)
    campaign_id, keys = _prepare(env)
    stack = Stack(env, args.port)
    server = f"http://127.0.0.1:{args.port}"
    events: list[str] = []
    started = time.monotonic()

    def event(text: str) -> None:
        line = f"[{time.monotonic() - started:6.1f} s] {text}"
        events.append(line)
        _say(line)

    def wait_epochs(count: int) -> None:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            done, finished = _epochs_done(campaign_id)
            if done >= count or finished:
                return
            time.sleep(1)
        raise SystemExit(f"faults: fewer than {count} epochs done after {args.timeout:.0f} s")

    pg_version = sorted(os.listdir("/etc/postgresql"))[0] if Path("/etc/postgresql").is_dir() \
        else None
    try:
        stack.portal()
        subprocess.run([sys.executable, "manage.py", "setup_schedules"], cwd=ROOT, env=env,
                       check=True, stdout=subprocess.DEVNULL)
        stack.cluster()
        for name, key in keys.items():
            home = WORK / "workers" / name
            subprocess.run([sys.executable, "-m", "worker_client.cli", "attach", "--server",
                            server, "--account-key", key, "--name", name], cwd=ROOT, check=True,
                           env={**{k: v for k, v in os.environ.items()
                                   if not k.startswith(("DJANGO_", "DATABASE_URL"))},
                                "STRATEGY_WORKER_HOME": str(home)}, stdout=subprocess.DEVNULL)
            stack.worker(name)
        event("portal, cluster and three workers running; mining")

        wait_epochs(2)
        event("restarting the portal (SIGTERM gunicorn, start it again)")
        stack.stop("portal")
        time.sleep(3)
        stack.portal()
        event("portal back")

        wait_epochs(6)
        event("killing the cluster (SIGKILL qcluster and its workers), starting it again")
        stack.stop("qcluster", sig=signal.SIGKILL)
        time.sleep(2)
        stack.cluster()

        wait_epochs(10)
        if pg_version is not None:
            event(f"restarting PostgreSQL {pg_version}")
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", pg_version, "main",
                            "restart", "-m", "fast"], check=True)
            event("PostgreSQL back")
        else:
            event("no local PostgreSQL cluster found: restart skipped")

        wait_epochs(14)
        victim = random.Random(7).choice(sorted(keys))
        event(f"killing worker {victim} (SIGKILL, with its task processes), starting it again")
        stack.stop(f"worker-{victim}", sig=signal.SIGKILL)
        stack.worker(victim)

        deadline = time.monotonic() + args.timeout
        while not _epochs_done(campaign_id)[1]:
            if time.monotonic() > deadline:
                raise SystemExit("faults: the campaign did not finish in time; see "
                                 f"{LOGS.relative_to(ROOT)}/")
            for name, process in stack.procs.items():
                if process.poll() is not None:
                    raise SystemExit(f"faults: {name} exited ({process.returncode}); see "
                                     f"{LOGS / (name + '.log')}")
            time.sleep(1)
        event("campaign finished")
    finally:
        stack.stop_all()

    failed = 0
    _say("\nChecks:")
    for name, ok, detail in _checks(campaign_id):
        failed += not ok
        _say(f"  {'ok  ' if ok else 'FAIL'} {name}: {detail}")
    injected = sum(1 for e in events if "restarting" in e or "killing" in e)
    _say(f"\n{injected} faults injected in {time.monotonic() - started:.0f} s; "
         f"{'all checks passed' if not failed else f'{failed} check(s) FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
