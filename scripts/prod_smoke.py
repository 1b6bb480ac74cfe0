"""The production setup on this machine, end to end, with checks that nothing ran twice.

    .venv/bin/python scripts/prod_smoke.py [--database URL] [--redis URL] [--keep]

What it does, all on loopback and bounded in time:

1. creates a throwaway PostgreSQL database (dropped at the end) and runs the deploy step of
   ``deploy/strategy-migrate.service``: migrate, createcachetable, collectstatic (the hashed,
   compressed files whitenoise serves), setup_schedules;
2. creates a tiny campaign (3 islands × 2 epochs, quorum 2) and two volunteers;
3. starts the portal as production runs it: ``gunicorn -c deploy/gunicorn.conf.py`` with three
   worker processes, DEBUG off, Redis as cache and broker; and **two** ``manage.py qcluster``
   processes side by side on one Redis queue;
4. attaches two hosts with the real worker client (``strategy-worker attach`` / ``run``) and
   lets them mine the campaign to the end;
5. checks the deployment (health checks, static files, security headers) and the books: every
   work unit validated and assimilated once, one credit grant per valid result, ledger and
   cached totals equal, no failed or left-over daemon task, both clusters and several portal
   processes did work, no server error.

Each check prints ``ok`` or ``FAIL``; the exit status is 0 when all passed, 1 when one failed,
and 2 when PostgreSQL or Redis is not reachable (nothing was run). The plain-HTTP loopback has
no TLS proxy in front, so the HTTPS redirect is off here (``DJANGO_SECURE_SSL_REDIRECT=0``);
every other production default stays on. Logs are kept in ``var/prod_smoke/<run>/``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE = "postgres://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/5"
ISLANDS, EPOCHS = 3, 2
PORTAL_WORKERS, CLUSTERS = 3, 2
MINING_TIMEOUT = 240.0  # seconds; the campaign takes well under a minute

sys.path.insert(0, str(ROOT))


class Unavailable(Exception):
    """PostgreSQL or Redis cannot be reached: nothing to test against."""


def say(message: str) -> None:
    print(message, flush=True)


# --- services -----------------------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _psycopg_url(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


def preflight(database: str, redis_url: str) -> None:
    import psycopg
    import redis

    try:
        psycopg.connect(_psycopg_url(database), connect_timeout=5).close()
    except psycopg.Error as exc:
        raise Unavailable(f"PostgreSQL at {database} is not reachable: {exc}") from None
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=5).ping()
    except redis.RedisError as exc:
        raise Unavailable(f"Redis at {redis_url} is not reachable: {exc}") from None


def create_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(_psycopg_url(admin_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(_psycopg_url(admin_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def clear_redis(redis_url: str, name: str) -> int:
    """Delete this run's keys: its cache prefix, its queue and its cluster stats."""
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"*{name}*", count=500))
    if keys:
        client.delete(*keys)
    return len(keys)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- processes ----------------------------------------------------------------------------------


class Processes:
    """Child processes, each in its own session and with its own log file."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.exit_codes: dict[str, int] = {}

    def start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            self.children[name] = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check_alive(self) -> None:
        for name, process in self.children.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode}:\n"
                                   + "\n".join(self.log(name).splitlines()[-20:]))

    def stop(self, names: list[str], *, timeout: float) -> None:
        """One SIGTERM to each (qcluster can deadlock on a second one), a bounded wait, then
        SIGKILL to whatever is left of its process group."""
        chosen = [(n, self.children.pop(n)) for n in names if n in self.children]
        for _, process in chosen:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, process in chosen:
            try:
                self.exit_codes[name] = process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.exit_codes[name] = -9
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # orphans of the group, if any
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)

    def stop_all(self) -> None:
        self.stop([n for n in self.children if n.startswith("worker")], timeout=20)
        self.stop([n for n in self.children if n.startswith("qcluster")], timeout=40)
        self.stop(list(self.children), timeout=20)


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, timeout=300)


def wait_for_portal(server: str, processes: Processes, timeout: float = 60.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processes.check_alive()
        with contextlib.suppress(requests.RequestException):
            if requests.get(server + "healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"the portal did not answer {server}healthz within {timeout:.0f} s")


def worker_env(env: dict[str, str], home: Path) -> dict[str, str]:
    """What a volunteer's machine has: none of the portal's settings."""
    clean = {k: v for k, v in env.items()
             if not k.startswith(("DJANGO_", "DATABASE_URL", "REDIS_URL", "MEDIA_ROOT",
                                  "STATIC_ROOT", "GUNICORN_", "Q_", "CACHE_KEY_PREFIX"))}
    clean["STRATEGY_WORKER_HOME"] = str(home)
    return clean


# --- the run ------------------------------------------------------------------------------------


def seed() -> dict[str, str]:
    """The data set, the campaign (started) and two volunteers; returns their account keys."""
    from django.db import connections

    from apps.accounts.services import volunteer_register
    from apps.workunits.campaigns import campaign_start
    from apps.workunits.marketdata import dataset_create_synthetic
    from apps.workunits.models import Campaign

    dataset = dataset_create_synthetic(bars=3_000, seed=11)
    campaign = Campaign.objects.create(
        name="production smoke", dataset=dataset, in_sample_stop=2_000, out_sample_stop=3_000,
        islands=ISLANDS, budget_epochs=EPOCHS, generations_per_epoch=2, migrants=2, seed=2024,
        min_quorum=2, target_nresults=2, delay_bound=1800,
        ga_settings={"population_size": 8, "elite": 2, "immigrants": 2, "top_k": 4,
                     "min_trades": 5})
    campaign_start(campaign=campaign)
    keys = {}
    for username in ("ada", "grace"):
        _, keys[username] = volunteer_register(
            username=username, email=f"{username}@example.org",
            password=secrets.token_urlsafe(16), display_name=username.title())
    connections.close_all()
    return keys


def mine(processes: Processes, timeout: float) -> float:
    from apps.workunits.models import Campaign
    from apps.workunits.states import CampaignState

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        processes.check_alive()
        if Campaign.objects.get().state == CampaignState.FINISHED:
            return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"the campaign did not finish within {timeout:.0f} s")


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed = 0

    def __call__(self, name: str, condition: bool, detail: object = "") -> None:
        if condition:
            self.passed += 1
            say(f"  ok    {name}" + (f" ({detail})" if detail or detail == 0 else ""))
        else:
            self.failed.append(name)
            say(f"  FAIL  {name}" + (f": {detail}" if detail != "" else ""))

    def run(self, name: str, check: Callable[[], tuple[bool, object]]) -> None:
        try:
            condition, detail = check()
        except Exception as exc:  # a check that crashes is a failed check, not a crash
            condition, detail = False, f"{type(exc).__name__}: {exc}"
        self(name, condition, detail)


def check_live(check: Checks, server: str, env: dict[str, str]) -> None:
    """While the portal and the clusters run: health checks, static files, headers."""
    import requests
    from django_q.status import Stat

    for kind in ("portal", "qcluster"):
        done = subprocess.run([sys.executable, "deploy/healthcheck.py", kind], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=60)
        check(f"deploy/healthcheck.py {kind} says healthy", done.returncode == 0,
              (done.stdout + done.stderr).strip())
    clusters = [s for s in Stat.get_all() if s.status != "Stopped"]
    check(f"{CLUSTERS} clusters report to the broker", len(clusters) == CLUSTERS,
          f"{len(clusters)} running")

    home = requests.get(server, timeout=30, headers={"X-Forwarded-Proto": "https"})
    check("the home page renders with the manifest static storage", home.status_code == 200,
          home.status_code)
    css = re.search(r'href="(/static/[^"]+\.[0-9a-f]{12}\.css)"', home.text)
    check("pages link content-hashed static files", css is not None)
    if css:
        asset = requests.get(server.rstrip("/") + css[1], timeout=30,
                             headers={"Accept-Encoding": "gzip"})
        cache = asset.headers.get("Cache-Control", "")
        check("whitenoise serves them compressed, cached for good",
              asset.status_code == 200 and "immutable" in cache
              and asset.headers.get("Content-Encoding") == "gzip",
              f"{asset.status_code}, {cache}, {asset.headers.get('Content-Encoding')}")
    expected = {"Strict-Transport-Security": "max-age=31536000; includeSubDomains; preload",
                "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin", "Cross-Origin-Opener-Policy": "same-origin"}
    wrong = {k: home.headers.get(k) for k, v in expected.items() if home.headers.get(k) != v}
    check("security headers behind a TLS proxy (X-Forwarded-Proto: https)", not wrong, wrong)
    login = requests.get(server + "login/", timeout=30, headers={"X-Forwarded-Proto": "https"})
    cookie = login.headers.get("Set-Cookie", "")
    check("the CSRF cookie is Secure", "csrftoken=" in cookie and "Secure" in cookie, cookie)


def check_books(check: Checks, processes: Processes) -> None:
    """After every process stopped: the database and the logs."""
    from django.db.models import Count, Sum
    from django_q.brokers import get_broker
    from django_q.models import Failure, Success

    from apps.accounts.models import Host, Volunteer
    from apps.credit.models import CreditGrant
    from apps.workunits.models import Campaign, Result, Strategy, WorkUnit
    from apps.workunits.states import AssimilateState, CampaignState, ValidateState

    campaign = Campaign.objects.get()
    wus = list(WorkUnit.objects.filter(campaign=campaign).select_related("canonical_result"))
    check("the campaign finished", campaign.state == CampaignState.FINISHED, campaign.state)
    check("one work unit per island and epoch", len(wus) == ISLANDS * EPOCHS == len(
        {(wu.island, wu.epoch) for wu in wus}), f"{len(wus)} work units")
    bad = [wu.pk for wu in wus if wu.error_mask or wu.canonical_result_id is None
           or wu.assimilate_state != AssimilateState.DONE]
    check("every work unit validated and assimilated, none errored", not bad, bad or len(wus))
    disagree = []
    for wu in wus:
        valid = wu.results.filter(validate_state=ValidateState.VALID)
        digests = set(valid.values_list("digest", flat=True))
        if valid.count() < wu.min_quorum or digests != {wu.canonical_result.digest}:
            disagree.append(wu.pk)
    check("each canonical answer agreed by a quorum", not disagree, disagree)

    # Each daemon moved counters with F() once per work unit: a second pass would show here.
    check("assimilated once each: epochs_done", campaign.epochs_done == len(wus),
          f"{campaign.epochs_done} for {len(wus)} work units")
    evaluated = sum(wu.canonical_result.output["evaluated"] for wu in wus)
    cost = sum(wu.cost for wu in wus)
    check("assimilated once each: strategies tried and candle-evaluations",
          campaign.strategies_tried == evaluated and campaign.candle_evaluations == cost,
          f"{campaign.strategies_tried} = {evaluated}, {campaign.candle_evaluations} = {cost}")
    results = Result.objects.filter(workunit__campaign=campaign)
    n_valid = results.filter(validate_state=ValidateState.VALID).count()
    n_invalid = results.filter(validate_state=ValidateState.INVALID).count()
    hosts = Host.objects.aggregate(valid=Sum("n_valid"), invalid=Sum("n_invalid"))
    check("validated once each: hosts' valid/invalid counts equal the replicas'",
          (hosts["valid"], hosts["invalid"]) == (n_valid, n_invalid),
          f"valid {hosts['valid']} = {n_valid}, invalid {hosts['invalid']} = {n_invalid}")

    grants = CreditGrant.objects.filter(result__workunit__campaign=campaign)
    valid_ids = set(results.filter(validate_state=ValidateState.VALID)
                    .values_list("pk", flat=True))
    doubled = grants.values("result").annotate(n=Count("pk")).filter(n__gt=1).count()
    check("one credit grant per valid result, none for others",
          set(grants.values_list("result_id", flat=True)) == valid_ids and not doubled
          and grants.count() == len(valid_ids), f"{grants.count()} grants, {n_valid} valid")
    wrong_amounts = [g.pk for g in grants.select_related("result__workunit")
                     if not (math.isclose(g.amount, g.result.workunit.credit)
                             and math.isclose(g.result.granted_credit, g.amount))]
    check("each grant is the work unit's credit", not wrong_amounts, wrong_amounts)
    totals_off = []
    for owner in [*Volunteer.objects.all(), *Host.objects.all()]:
        ledger = owner.grants.aggregate(total=Sum("amount"))["total"] or 0.0
        if not math.isclose(owner.total_credit, ledger, rel_tol=1e-9, abs_tol=1e-9):
            totals_off.append(f"{owner}: {owner.total_credit} != {ledger}")
    check("cached credit totals equal the ledger (volunteers and hosts)", not totals_off,
          totals_off or "")
    strategies = Strategy.objects.filter(campaign=campaign)
    check("the hall of fame holds each genome once",
          strategies.count() == strategies.values("genome_hash").distinct().count(),
          f"{strategies.count()} strategies")

    failures = list(Failure.objects.values_list("func", "result")[:5])
    check("no failed django-q2 task", not failures, failures)
    by_func = Counter(Success.objects.values_list("func", flat=True))
    ran = {func.rsplit(".", 1)[1]: n for func, n in sorted(by_func.items())}
    check("the daemons ran as django-q2 tasks",
          {"transition_workunits", "run_validator", "run_assimilator"} <= set(ran), ran)
    check("nothing left in the queue", get_broker().queue_size() == 0)
    processed = {name: processes.log(name).count("Processed '")
                 for name in (f"qcluster{i}" for i in range(1, CLUSTERS + 1))}
    check("both clusters processed tasks", all(processed.values()), processed)

    access = processes.log("portal")
    pids = Counter(re.findall(r'"POST /api/v1/scheduler/ HTTP/1\.1" \d+ .* pid=<(\d+)>', access))
    check("several portal processes served the scheduler", len(pids) >= 2, dict(pids))
    errors = re.findall(r'" (5\d\d) ', access)
    check("no 5xx answer", not errors, Counter(errors))
    tracebacks = {name: log.count("Traceback") for name in ("portal", "qcluster1", "qcluster2")
                  if (log := processes.log(name)).count("Traceback")}
    check("no traceback in the portal's or the clusters' logs", not tracebacks, tracebacks)
    check("gunicorn and the clusters stopped cleanly on one SIGTERM",
          all(processes.exit_codes.get(n) == 0 for n in ("portal", "qcluster1", "qcluster2")),
          {n: processes.exit_codes.get(n) for n in ("portal", "qcluster1", "qcluster2")})


def run(database: str, redis_url: str, *, keep: bool) -> int:
    preflight(database, redis_url)
    started = time.monotonic()
    name = f"strategy_smoke_{os.getpid()}_{secrets.token_hex(3)}"
    run_dir = ROOT / "var" / "prod_smoke" / name
    log_dir = run_dir / "logs"
    log_dir.mkdir(parents=True)
    port = free_port()
    server = f"http://127.0.0.1:{port}/"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DJANGO_", "PYTEST_", "DATABASE_URL", "REDIS_URL", "Q_"))}
    env.update({
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SECURE_SSL_REDIRECT": "0",  # plain HTTP on loopback; see the docstring
        "DJANGO_SECURE_PROXY_SSL_HEADER": "1",
        "DATABASE_URL": _with_database(database, name),
        "REDIS_URL": redis_url,
        "CACHE_KEY_PREFIX": name,  # this run's keys only, on a shared Redis database
        "Q_CLUSTER_NAME": name,  # this run's queue only
        "Q_WORKERS": "2",
        "MEDIA_ROOT": str(run_dir / "media"),
        "STATIC_ROOT": str(run_dir / "static"),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": str(PORTAL_WORKERS),
        "SCHEDULER_REQUEST_DELAY": "1",
        "SCHEDULER_NO_WORK_DELAY": "1",
        "PYTHONUNBUFFERED": "1",
    })
    say(f"prod_smoke: database {name}, Redis {redis_url}, logs in {log_dir.relative_to(ROOT)}/")
    create_database(database, name)
    processes = Processes(log_dir)
    check = Checks()
    try:
        say("deploy step: migrate, createcachetable, collectstatic, setup_schedules …")
        for args in (("migrate", "--noinput"), ("createcachetable",),
                     ("collectstatic", "--noinput"), ("setup_schedules",)):
            manage(env, *args)
        os.environ.clear()
        os.environ.update(env)  # this process reads the same database and broker
        import django

        django.setup()
        keys = seed()
        say(f"campaign: {ISLANDS} islands × {EPOCHS} epochs, quorum 2; volunteers "
            f"{', '.join(keys)}")

        processes.start("portal", [sys.executable, "-m", "gunicorn", "-c",
                                   "deploy/gunicorn.conf.py"], env)
        wait_for_portal(server, processes)
        for i in range(1, CLUSTERS + 1):
            processes.start(f"qcluster{i}", [sys.executable, "manage.py", "qcluster"], env)
        say(f"up: gunicorn ({PORTAL_WORKERS} workers) on {server}, {CLUSTERS} qclusters")
        for username, key in keys.items():
            home = run_dir / "workers" / username
            attached = subprocess.run(
                [sys.executable, "-m", "worker_client.cli", "attach", "--server", server,
                 "--account-key", key, "--name", f"{username}-host"],
                cwd=ROOT, env=worker_env(env, home), capture_output=True, text=True,
                timeout=120)
            if attached.returncode != 0:
                raise RuntimeError(f"attaching {username}'s host failed: {attached.stderr}")
            processes.start(f"worker-{username}",
                            [sys.executable, "-m", "worker_client.cli", "run", "--plain",
                             "--exit-when-idle", str(MINING_TIMEOUT)], worker_env(env, home))
        say("two hosts attached and mining …")
        took = mine(processes, MINING_TIMEOUT)
        say(f"campaign finished in {took:.1f} s of mining")

        say("checks while running:")
        check_live(check, server, env)
        processes.stop_all()
        say("checks after a clean stop:")
        check_books(check, processes)
    except Exception as exc:
        check("the run itself", False, f"{type(exc).__name__}: {exc}")
    finally:
        processes.stop_all()
        from django.db import connections

        with contextlib.suppress(Exception):
            connections.close_all()
        if not keep:
            drop_database(database, name)
            clear_redis(redis_url, name)
            if not check.failed:
                shutil.rmtree(run_dir, ignore_errors=True)
    elapsed = time.monotonic() - started
    say(f"prod_smoke: {check.passed} passed, {len(check.failed)} failed in {elapsed:.0f} s"
        + (f"; logs kept in {log_dir}" if check.failed or keep else ""))
    return 1 if check.failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default=os.environ.get("SMOKE_DATABASE_URL",
                                                             DEFAULT_DATABASE),
                        help="PostgreSQL URL of a role that may create databases "
                             f"(default {DEFAULT_DATABASE})")
    parser.add_argument("--redis", default=os.environ.get("SMOKE_REDIS_URL", DEFAULT_REDIS),
                        help=f"Redis URL (default {DEFAULT_REDIS})")
    parser.add_argument("--keep", action="store_true",
                        help="keep the database, the Redis keys and the logs")
    args = parser.parse_args(argv)
    try:
        return run(args.database, args.redis, keep=args.keep)
    except Unavailable as exc:
        say(f"prod_smoke: not run: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
