"""``make demo``: the whole platform on this machine, mining one small campaign to the end.

1. a fresh SQLite database and media directory under ``var/demo/`` (every run starts clean);
2. migrations, the cache table, a seeded synthetic data set of 5-minute candles, a demo
   campaign (started), two demo volunteers and an admin user whose password is printed;
3. the portal under gunicorn on http://127.0.0.1:8000, the django-q2 cluster (the daemons),
   and two local workers attached through the ``strategy-worker`` CLI, one per volunteer;
4. progress lines until the campaign is finished, then a summary: work units validated,
   credit per volunteer, the best strategy in plain words with its in-sample and
   out-of-sample Sharpe ratios;
5. the portal stays up until Ctrl-C (``DEMO_EXIT=1``: stop everything and exit 0 instead).

Logs of every process are in ``var/demo/logs/``. ``DEMO_PORT`` changes the port,
``DEMO_TIMEOUT`` the longest wait for the campaign (seconds, default 900).
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / "var" / "demo"
LOG_DIR = DEMO_DIR / "logs"
PORT = int(os.environ.get("DEMO_PORT", "8000"))
SERVER = f"http://127.0.0.1:{PORT}/"
TIMEOUT = float(os.environ.get("DEMO_TIMEOUT", "900"))
EXIT_AFTER_SUMMARY = os.environ.get("DEMO_EXIT", "").strip().lower() in ("1", "true", "yes")

# The demo data and campaign: small enough to finish in a few minutes on two cores.
BARS = 60_000  # 5-minute candles: about 208 days
IN_SAMPLE_STOP = 42_000  # the search sees 70 %; the last 30 % judge the hall of fame
ISLANDS, EPOCHS, POPULATION, GENERATIONS = 4, 5, 48, 10
VOLUNTEERS = (("alice", "Alice"), ("bob", "Bob"))

sys.path.insert(0, str(ROOT))


class DemoError(Exception):
    """Something the person running the demo can fix; printed as one line."""


def say(message: str) -> None:
    print(message, flush=True)


# -- processes ------------------------------------------------------------------------------------


class Processes:
    """The demo's child processes, each in its own session so that Ctrl-C reaches only us."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(LOG_DIR / f"{name}.log", "ab") as log:
            process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.children.append((name, process))
        return process

    def check_alive(self) -> None:
        for name, process in self.children:
            if process.poll() is not None:
                raise DemoError(f"{name} exited with code {process.returncode}; see "
                                f"{LOG_DIR / (name + '.log')}:\n{tail(LOG_DIR / (name + '.log'))}")

    def stop(self, prefix: str, *, timeout: float) -> None:
        """One SIGTERM to each matching process (qcluster deadlocks on a second one), a
        bounded wait, then SIGKILL to whatever is left of its process group."""
        chosen = [(n, p) for n, p in self.children if n.startswith(prefix)]
        for _, process in chosen:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, process in chosen:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"  {name} did not stop within {timeout:.0f} s; killing it")
            # The group may hold the leader or orphans of it (gunicorn and qcluster workers).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        self.children = [(n, p) for n, p in self.children if not n.startswith(prefix)]

    def stop_all(self) -> None:
        if not self.children:
            return
        say("Stopping the workers, the cluster and the portal …")
        self.stop("worker", timeout=20)
        self.stop("qcluster", timeout=30)
        self.stop("portal", timeout=20)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As gunicorn binds: connections of a previous run in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_portal(process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(f"the portal exited with code {process.returncode}:\n"
                            f"{tail(LOG_DIR / 'portal.log')}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(SERVER + "healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise DemoError(f"the portal did not answer {SERVER}healthz within {timeout:.0f} s")


# -- the demo -------------------------------------------------------------------------------------


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update({
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DATABASE_URL": f"sqlite:///{DEMO_DIR / 'db.sqlite3'}",
        "MEDIA_ROOT": str(DEMO_DIR / "media"),
        "DJANGO_DEBUG": "1",  # a local demo: development secret, static files served directly
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
        # Two workers on one machine: ask again after a second, not after the default five.
        "SCHEDULER_REQUEST_DELAY": "1",
        "SCHEDULER_NO_WORK_DELAY": "2",
    })
    env.pop("DJANGO_SECRET_KEY", None)
    env.pop("REDIS_URL", None)  # the ORM broker: nothing else to start
    return env


def prepare_database() -> dict[str, str]:
    """Migrate, load data, create the campaign and the people; returns the account keys."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections

    from apps.accounts.services import volunteer_register
    from apps.workunits.campaigns import campaign_start
    from apps.workunits.models import Campaign, Dataset

    say("Preparing the database (var/demo/db.sqlite3) …")
    call_command("migrate", verbosity=0, interactive=False)
    call_command("createcachetable", verbosity=0)
    call_command("make_demo_data", bars=BARS, seed=20240501, stdout=io.StringIO())
    dataset = Dataset.objects.get()
    campaign = Campaign.objects.create(
        name="Demo: BTC-USD 5m", description="The `make demo` campaign on synthetic candles.",
        dataset=dataset, in_sample_start=0, in_sample_stop=IN_SAMPLE_STOP,
        out_sample_stop=dataset.bar_count, islands=ISLANDS, budget_epochs=EPOCHS,
        generations_per_epoch=GENERATIONS, migrants=2, seed=20240501,
        search_space={"directions": ["long", "short"]},
        ga_settings={"population_size": POPULATION, "top_k": 5},
        min_quorum=2, target_nresults=2, delay_bound=1800)
    campaign_start(campaign=campaign)
    say(f"  data set: {dataset}, in-sample bars 0–{IN_SAMPLE_STOP:,}, out-of-sample "
        f"{IN_SAMPLE_STOP:,}–{dataset.bar_count:,}")
    say(f"  campaign: {ISLANDS} islands × {EPOCHS} epochs, population {POPULATION}, "
        f"{GENERATIONS} generations per epoch, quorum 2 (each epoch runs on both workers "
        "until a host has earned trust)")

    keys = {}
    for username, display_name in VOLUNTEERS:
        _, key = volunteer_register(
            username=username, email=f"{username}@example.org",
            password=demo_password(username), display_name=display_name)
        keys[username] = key
    say(f"  volunteers: {', '.join(name for _, name in VOLUNTEERS)}")
    connections.close_all()
    return keys


def demo_password(username: str) -> str:
    """The demo volunteers' passwords: printed at the end, so you can log in as one."""
    return f"{username}-demo-password"


def check_pages() -> str:
    """Fetch every kind of web page with the demo's data, logged out and logged in as a
    volunteer; raise DemoError if one does not render."""
    import re

    import requests

    from apps.accounts.models import Volunteer
    from apps.workunits.models import Campaign, Strategy

    campaign = Campaign.objects.get()
    strategy = Strategy.objects.filter(campaign=campaign).order_by("-fitness").first()
    public = ["", "campaigns/", f"campaigns/{campaign.pk}/", f"campaigns/{campaign.pk}/strategies/",
              "strategies/", "leaderboards/users/", "leaderboards/teams/", "leaderboards/hosts/",
              "leaderboards/users/?order=rac", "teams/", "status/", "download/", "join/",
              "login/", "password-reset/", "stats/users.json", "stats/teams.json",
              "stats/hosts.json", "api/v1/docs/"]
    public += [f"volunteers/{pk}/" for pk in Volunteer.objects.values_list("pk", flat=True)]
    if strategy is not None:
        public += [f"strategies/{strategy.pk}/", f"strategies/{strategy.pk}/genome.json"]
    failures = []
    with requests.Session() as session:
        for path in public:
            response = session.get(SERVER + path, timeout=60)
            if response.status_code != 200:
                failures.append(f"/{path} answered {response.status_code}")
        username = VOLUNTEERS[0][0]
        form = session.get(SERVER + "login/", timeout=30).text
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
        session.post(SERVER + "login/", timeout=30, headers={"Referer": SERVER + "login/"},
                     data={"username": username, "password": demo_password(username),
                           "csrfmiddlewaretoken": token[1] if token else ""})
        for path in ("account/", "account/password/", "teams/new/"):
            response = session.get(SERVER + path, timeout=30, allow_redirects=False)
            if response.status_code != 200:
                failures.append(f"/{path} (logged in as {username}) answered "
                                f"{response.status_code}")
    if failures:
        raise DemoError("web pages that do not render: " + "; ".join(failures))
    return f"Web pages: all {len(public) + 3} render with the demo's data."


def create_admin(env: dict[str, str]) -> str:
    password = secrets.token_urlsafe(9)
    subprocess.run([sys.executable, "manage.py", "createsuperuser", "--noinput",
                    "--username", "admin", "--email", "admin@example.org"],
                   cwd=ROOT, env={**env, "DJANGO_SUPERUSER_PASSWORD": password}, check=True,
                   stdout=subprocess.DEVNULL)
    return password


def attach_worker(username: str, key: str, env: dict[str, str]) -> dict[str, str]:
    worker_env = {k: v for k, v in env.items()
                  if not k.startswith(("DJANGO_", "DATABASE_URL", "MEDIA_ROOT"))}
    worker_env["STRATEGY_WORKER_HOME"] = str(DEMO_DIR / "workers" / username)
    done = subprocess.run([sys.executable, "-m", "worker_client.cli", "attach",
                           "--server", SERVER, "--account-key", key,
                           "--name", f"{username}-laptop"],
                          cwd=ROOT, env=worker_env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise DemoError(f"attaching {username}'s worker failed: {done.stderr.strip()}")
    return worker_env


def progress_line(started: float) -> tuple[str, bool]:
    from django.db.models import Count

    from apps.accounts.models import Volunteer
    from apps.workunits.models import Campaign, Result, WorkUnit
    from apps.workunits.states import AssimilateState, CampaignState, ServerState

    campaign = Campaign.objects.get()
    wus = WorkUnit.objects.filter(campaign=campaign)
    done = wus.filter(assimilate_state=AssimilateState.DONE).count()
    replicas = dict(Result.objects.filter(workunit__campaign=campaign)
                    .values_list("server_state").annotate(n=Count("pk")))
    credit = ", ".join(f"{v.display_name} {v.total_credit:.2f}"
                       for v in Volunteer.objects.order_by("display_name"))
    best = "-" if campaign.best_fitness is None else f"{campaign.best_fitness:.2f}"
    line = (f"[{time.monotonic() - started:5.0f} s] epochs {done}/{ISLANDS * EPOCHS} done · "
            f"tasks running {replicas.get(ServerState.IN_PROGRESS, 0)}, waiting "
            f"{replicas.get(ServerState.UNSENT, 0)}, over "
            f"{replicas.get(ServerState.OVER, 0)} · best fitness {best} · credit: {credit}")
    return line, campaign.state == CampaignState.FINISHED


def summary(elapsed: float) -> str:
    from django.db.models import Count, Q

    from apps.accounts.models import Volunteer
    from apps.workunits.models import Campaign, Result, Strategy, WorkUnit
    from apps.workunits.states import ValidateState

    campaign = Campaign.objects.get()
    wus = WorkUnit.objects.filter(campaign=campaign)
    validated = wus.filter(canonical_result__isnull=False).count()
    errored = wus.exclude(error_mask=0).count()
    results = Result.objects.filter(workunit__campaign=campaign)
    valid = results.filter(validate_state=ValidateState.VALID).count()
    invalid = results.filter(validate_state=ValidateState.INVALID).count()
    minutes, seconds = divmod(round(elapsed), 60)
    lines = [
        "",
        f"Campaign {campaign.name!r} finished in {minutes} min {seconds:02d} s.",
        f"  work units validated: {validated} of {wus.count()} ({errored} errored); replicas "
        f"valid {valid}, invalid {invalid}",
        f"  strategies tried: {campaign.strategies_tried:,}; candle-evaluations: "
        f"{campaign.candle_evaluations:,}",
    ]
    alone = wus.filter(min_quorum__lt=campaign.min_quorum).count()
    if alone:
        lines.append(f"  {alone} work unit(s) ran on a long-trusted host alone (adaptive "
                     "replication, as in BOINC); every other one on both workers")
    lines.append("  credit per volunteer:")
    volunteers = Volunteer.objects.annotate(
        valid=Count("results", filter=Q(results__validate_state=ValidateState.VALID,
                                        results__workunit__campaign=campaign)),
    ).order_by("-total_credit", "display_name")
    for volunteer in volunteers:
        lines.append(f"    {volunteer.display_name:<8} {volunteer.total_credit:8.3f} credit "
                     f"from {volunteer.valid} valid results")
    best = Strategy.objects.filter(campaign=campaign).order_by("-fitness").first()
    if best is None:
        lines.append("  hall of fame: empty (no strategy cleared the bar)")
    else:
        in_sharpe = best.in_sample.get("sharpe")
        lines += [
            f"  hall of fame: {Strategy.objects.filter(campaign=campaign).count()} strategies; "
            "the best in-sample:",
            f"    {best.description}",
            f"    Sharpe in-sample {_fmt(in_sharpe)}, out-of-sample "
            f"{_fmt(best.out_sample_sharpe)} (bars the search never saw); trades "
            f"{best.in_sample.get('n_trades', '-')} in-sample, "
            f"{best.out_sample.get('n_trades', '-')} out-of-sample",
        ]
        top_oos = (Strategy.objects.filter(campaign=campaign, out_sample_sharpe__isnull=False)
                   .order_by("-out_sample_sharpe").first())
        if top_oos is not None and top_oos.pk != best.pk:
            lines.append(f"    (best out-of-sample: Sharpe {_fmt(top_oos.out_sample_sharpe)}, "
                         f"in-sample {_fmt(top_oos.in_sample.get('sharpe'))}: "
                         f"{top_oos.description})")
        lines.append("  The candles are a driftless random walk: an out-of-sample Sharpe near "
                     "zero is the honest answer, and the gap to in-sample is overfitting.")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "n/a"


def _interrupt(signum: int, frame: object) -> None:
    """Ctrl-C, or SIGTERM from a service manager, ends the demo (cleanly, in ``finally``)."""
    raise KeyboardInterrupt


def main() -> int:
    started = time.monotonic()
    if not port_is_free(PORT):
        raise DemoError(f"port {PORT} is in use (is another demo still running?); stop it or "
                        f"set DEMO_PORT")
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    LOG_DIR.mkdir(parents=True)
    env = environment()
    os.environ.clear()
    os.environ.update(env)  # this process reads the same database as its children
    keys = prepare_database()
    admin_password = create_admin(env)
    say(f"  admin user: admin, password {admin_password}")

    processes = Processes()
    for signum in (signal.SIGINT, signal.SIGTERM):  # even if started with SIGINT ignored (&)
        signal.signal(signum, _interrupt)
    try:
        say(f"Starting the portal on {SERVER} (gunicorn, 2 workers) …")
        portal = processes.start("portal", [
            sys.executable, "-m", "gunicorn", "portal.wsgi", "-w", "2", "-b",
            f"127.0.0.1:{PORT}", "--access-logfile", str(LOG_DIR / "access.log"),
            "--graceful-timeout", "10"], env)
        wait_for_portal(portal)
        say("Starting the background cluster (manage.py qcluster) …")
        subprocess.run([sys.executable, "manage.py", "setup_schedules"], cwd=ROOT, env=env,
                       check=True, stdout=subprocess.DEVNULL)
        processes.start("qcluster", [sys.executable, "manage.py", "qcluster"], env)
        for username, _ in VOLUNTEERS:
            worker_env = attach_worker(username, keys[username], env)
            processes.start(f"worker-{username}",
                            [sys.executable, "-m", "worker_client.cli", "run"], worker_env)
        say(f"Two workers attached and running (logs in {LOG_DIR.relative_to(ROOT)}/). "
            "Mining …")

        mining_started = time.monotonic()
        last_line, finished = "", False
        last_print = 0.0
        while not finished:
            if time.monotonic() - mining_started > TIMEOUT:
                raise DemoError(f"the campaign did not finish within {TIMEOUT:.0f} s; see the "
                                f"logs in {LOG_DIR}")
            processes.check_alive()
            line, finished = progress_line(mining_started)
            # Print on change, or every 30 s as a heartbeat.
            if finished or (line.split("]", 1)[1] != last_line
                            or time.monotonic() - last_print > 30):
                say(line)
                last_line, last_print = line.split("]", 1)[1], time.monotonic()
            if not finished:
                time.sleep(2)

        say(summary(time.monotonic() - mining_started))
        processes.stop("worker", timeout=20)  # nothing left for them to do
        say(check_pages())
        say(f"\nTotal demo time {time.monotonic() - started:.0f} s.")
        if EXIT_AFTER_SUMMARY:
            return 0
        say(f"\nThe portal stays up: {SERVER}  ·  admin {SERVER}admin/ (user admin, password "
            f"{admin_password})  ·  log in as a volunteer: {VOLUNTEERS[0][0]} / "
            f"{demo_password(VOLUNTEERS[0][0])}  ·  API docs {SERVER}api/v1/docs/\n"
            "Press Ctrl-C to stop.")
        while True:
            processes.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        say("")
        return 0
    finally:
        processes.stop_all()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DemoError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        sys.exit(1)
