"""The worker's HTTP seam and minimal loop against the real portal over real HTTP.

Only the network's failures are simulated (a closed port, a stub that answers 503, an adapter
that drops one request); everything else is the portal under ``live_server``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from requests.adapters import HTTPAdapter

from apps.workunits.campaigns import campaign_start
from apps.workunits.marketdata import dataset_create_synthetic
from apps.workunits.models import Result
from apps.workunits.states import CampaignState, Outcome, ServerState
from tests.factories import make_campaign, make_host, make_volunteer
from worker_client import __version__, runner
from worker_client import host as host_use_cases
from worker_client.client import PortalClient, RetryPolicy
from worker_client.config import HOME_ENV, WorkerPaths, load_host_config
from worker_client.exceptions import AuthError, ClientTooOld, ServerUnavailable, WorkerError
from worker_client.protocol import ReportedResult, SchedulerRequest, user_agent
from worker_client.store import WorkerStore

FAST_RETRY = RetryPolicy(attempts=4, base=0.01, cap=0.04)
PROJECT_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture
def paths(tmp_path) -> WorkerPaths:
    paths = WorkerPaths.default({HOME_ENV: str(tmp_path / "worker")})
    paths.ensure()
    return paths


@pytest.fixture
def quick_delays(settings):
    """The portal's request_delay values, shortened so a test need not wait minutes."""
    settings.SCHEDULER_REQUEST_DELAY = 0.1
    settings.SCHEDULER_NO_WORK_DELAY = 0.2


@pytest.fixture
def one_task_campaign(settings, tmp_path):
    """An active campaign of one work unit that one host can finish alone (quorum 1)."""
    settings.MEDIA_ROOT = tmp_path / "media"
    dataset = dataset_create_synthetic(bars=1_500, seed=3)
    campaign = make_campaign(
        dataset=dataset, state=CampaignState.DRAFT, in_sample_stop=1_000, out_sample_stop=1_500,
        islands=1, budget_epochs=1, generations_per_epoch=1, min_quorum=1, target_nresults=1,
        ga_settings={"population_size": 8, "elite": 1, "immigrants": 1, "top_k": 3})
    campaign_start(campaign=campaign)
    return campaign


def test_the_worker_client_never_imports_django():
    code = ("import sys, worker_client.cli, worker_client.runner, worker_client.client, "
            "worker_client.datafile; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('django', 'rest_framework', 'django_q', 'apps', 'portal')); "
            "sys.exit(', '.join(bad) or 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_attach_stores_the_host_token_and_never_the_account_key(live_server, paths):
    volunteer = make_volunteer()
    config = host_use_cases.attach(server=live_server.url, account_key=volunteer.account_key,
                           name="attic box", paths=paths)
    host = volunteer.hosts.get()
    assert (config.host_id, config.name) == (host.pk, "attic box")
    assert host.client_version == __version__
    assert load_host_config(paths) == config
    stored = paths.config_file.read_text()
    assert config.token in stored
    assert volunteer.account_key not in stored


def test_a_bad_account_key_is_an_auth_error_with_the_portals_message(live_server):
    with PortalClient(live_server.url, retry=FAST_RETRY) as client, \
            pytest.raises(AuthError) as caught:
        client.attach(account_key="not-a-key", host=host_use_cases.host_info("box"))
    assert caught.value.status == 403
    assert caught.value.code == "invalid_account_key"
    assert str(caught.value) == ("That account key is not valid. Copy it again from your "
                                 "account page on the portal.")


def test_a_bad_host_token_is_an_auth_error(live_server):
    with PortalClient(live_server.url, token="forged", retry=FAST_RETRY) as client, \
            pytest.raises(AuthError, match="attach this host again") as caught:
        client.scheduler(SchedulerRequest(free_slots=1, work_seconds=60))
    assert caught.value.status == 401


def test_an_old_client_gets_client_too_old_and_no_work(live_server, paths, one_task_campaign):
    host = make_host()
    client = PortalClient(live_server.url, host.token, client_version="0.0.1",
                          retry=FAST_RETRY)
    worker = runner.Runner(client, WorkerStore(paths), runner.RunOptions(max_tasks=1))
    with pytest.raises(ClientTooOld, match="Upgrade it with: pipx upgrade strategy-worker"):
        worker.run()
    assert not Result.objects.filter(host=host).exists()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on exit: nothing listens there


def test_a_refused_connection_is_retried_with_backoff_then_reported():
    waits: list[float] = []
    client = PortalClient(f"http://127.0.0.1:{_closed_port()}", token="t", retry=FAST_RETRY,
                          sleep=waits.append)
    with pytest.raises(ServerUnavailable, match=r"connection refused.* after 4 tries"):
        client.scheduler(SchedulerRequest())
    assert len(waits) == FAST_RETRY.attempts - 1
    # Exponential with equal jitter: retry n waits in [ceiling/2, ceiling], ceiling doubling.
    for n, wait in enumerate(waits):
        ceiling = min(FAST_RETRY.cap, FAST_RETRY.base * 2**n)
        assert ceiling / 2 <= wait <= ceiling


class _FlakyPortal(BaseHTTPRequestHandler):
    """Answers ``failures`` requests with ``status`` (+ Retry-After), then a host reply."""

    failures = 2
    status = 503
    retry_after: str | None = "2"
    seen: list[dict[str, str]] = []

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen.append(dict(self.headers))
        failing = len(self.seen) <= self.failures
        body = (json.dumps({"error": {"code": "unavailable", "message": "down for upgrade"}})
                if failing else json.dumps({"host_id": 5})).encode()
        self.send_response(self.status if failing else 200)
        if failing and self.retry_after is not None:
            self.send_header("Retry-After", self.retry_after)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        type(self).seen.append(dict(self.headers))
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_portal():
    _FlakyPortal.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyPortal)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status", [503, 429])
def test_busy_answers_are_retried_after_the_portals_retry_after(flaky_portal, monkeypatch,
                                                                status):
    _, url = flaky_portal
    monkeypatch.setattr(_FlakyPortal, "status", status)
    waits: list[float] = []
    client = PortalClient(url, token="tok", retry=FAST_RETRY, sleep=waits.append)
    assert client.update_host(host_use_cases.host_info("box")) == 5
    assert waits == [2.0, 2.0]  # Retry-After outweighs the (millisecond) backoff
    assert len(_FlakyPortal.seen) == 3
    for headers in _FlakyPortal.seen:
        assert headers["User-Agent"] == user_agent(__version__)
        assert headers["Authorization"] == "Token tok"


def test_a_portal_that_keeps_failing_is_unavailable_with_its_message(flaky_portal,
                                                                     monkeypatch):
    _, url = flaky_portal
    monkeypatch.setattr(_FlakyPortal, "failures", 99)
    monkeypatch.setattr(_FlakyPortal, "retry_after", None)
    client = PortalClient(url, token="tok", retry=FAST_RETRY, sleep=lambda s: None)
    with pytest.raises(ServerUnavailable, match=r"keeps answering 503 \(down for upgrade\)"):
        client.update_host(host_use_cases.host_info("box"))
    assert len(_FlakyPortal.seen) == FAST_RETRY.attempts


class _DropReports(HTTPAdapter):
    """The network loses every request that carries a result (the portal never sees it)."""

    def send(self, request, *args, **kwargs):
        if request.body and json.loads(request.body).get("results"):
            raise requests.ConnectionError("connection reset (simulated)")
        return super().send(request, *args, **kwargs)


def test_a_result_stays_on_disk_until_the_portal_accepts_it(live_server, paths, quick_delays,
                                                            one_task_campaign):
    host = make_host()
    lossy = requests.Session()
    lossy.mount("http://", _DropReports())
    client = PortalClient(live_server.url, host.token, retry=RetryPolicy(attempts=1),
                          session=lossy)
    options = runner.RunOptions(max_tasks=1, exit_when_idle=1.0)
    summary = runner.Runner(client, WorkerStore(paths), options).run()

    assert summary.tasks_run == 1 and summary.results_accepted == 0
    (stored,) = paths.results_dir.glob("*.json")
    result = Result.objects.get(host=host)
    assert stored.name == f"{result.pk}.json"
    assert result.server_state == ServerState.IN_PROGRESS  # the report never arrived
    assert result.received_time is None
    assert not list(paths.tasks_dir.iterdir())
    reported = json.loads(stored.read_text())

    # The next run (a fresh process, say) finds the result on disk and reports it first.
    client = PortalClient(live_server.url, host.token, retry=FAST_RETRY)
    summary = runner.Runner(client, WorkerStore(paths), runner.RunOptions(max_tasks=0)).run()
    assert summary.results_accepted == 1
    assert not stored.exists()
    result.refresh_from_db()
    assert (result.server_state, result.outcome) == (ServerState.OVER, Outcome.SUCCESS)
    assert result.digest == reported["output"]["digest"]

    # Reporting it once more (a lost reply) is harmless: accepted again, stored once.
    reply = client.scheduler(SchedulerRequest(results=[ReportedResult(**reported)]))
    assert reply.accepted == [result.pk]
    result.refresh_from_db()
    assert result.digest == reported["output"]["digest"]


class _LoseReplyWithTasks(HTTPAdapter):
    """The portal handles the first scheduler call that sends a task, but its reply is lost on
    the way back (the connection breaks after the portal committed)."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: list[int] = []
        self.requests: list[dict] = []

    def send(self, request, *args, **kwargs):
        response = super().send(request, *args, **kwargs)
        if request.url.endswith("/scheduler/"):
            self.requests.append(json.loads(request.body))
            if not self.lost and response.status_code == 200 and response.json()["tasks"]:
                self.lost = [task["result_id"] for task in response.json()["tasks"]]
                raise requests.ConnectionError("connection reset (simulated)")
        return response


def test_a_task_whose_reply_was_lost_is_sent_again_and_run(live_server, paths, quick_delays,
                                                           one_task_campaign):
    host = make_host()
    lossy = _LoseReplyWithTasks()
    session = requests.Session()
    session.mount("http://", lossy)
    client = PortalClient(live_server.url, host.token, session=session,
                          retry=RetryPolicy(attempts=2, base=0.01, cap=0.02))
    options = runner.RunOptions(max_tasks=1, exit_when_idle=10.0)
    summary = runner.Runner(client, WorkerStore(paths), options).run()

    assert lossy.lost, "no reply was lost"
    [lost] = lossy.lost
    # Every call says its list is complete; the retried one got the very same replica back.
    assert all(r["in_progress_complete"] is True for r in lossy.requests)
    assert (summary.tasks_run, summary.results_accepted) == (1, 1)
    result = Result.objects.get(host=host)  # no ghost left behind, no second replica
    assert result.pk == lost
    assert (result.server_state, result.outcome) == (ServerState.OVER, Outcome.SUCCESS)


def test_a_corrupt_cached_data_set_is_deleted_and_fetched_again(live_server, paths,
                                                                quick_delays, one_task_campaign):
    one_task_campaign.refresh_from_db()
    sent = one_task_campaign.task_dataset  # the in-sample file the task carries
    cached = paths.datasets_dir / f"{sent.sha256}.sahc"
    good = Path(sent.file.path).read_bytes()
    cached.write_bytes(good[: len(good) // 2])  # a truncated earlier download
    host = make_host()
    client = PortalClient(live_server.url, host.token, retry=FAST_RETRY)
    summary = runner.Runner(client, WorkerStore(paths), runner.RunOptions(max_tasks=1)).run()
    assert (summary.tasks_run, summary.tasks_failed, summary.results_accepted) == (1, 0, 1)
    assert cached.read_bytes() == good
    assert Result.objects.get(host=host).outcome == Outcome.SUCCESS


def _worker(args: list[str], home: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DJANGO_", "DATABASE_URL", "PYTEST_"))}
    env[HOME_ENV] = str(home)
    with open(log, "ab") as handle:
        return subprocess.Popen([sys.executable, "-m", "worker_client.cli", *args],
                                cwd=PROJECT_DIR, env=env, stdout=handle,
                                stderr=subprocess.STDOUT)


def _reap(process: subprocess.Popen, timeout: float) -> int:
    try:
        return process.wait(timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_sigterm_stops_a_task_cleanly_and_the_next_run_finishes_it(live_server, settings,
                                                                   tmp_path, quick_delays):
    settings.MEDIA_ROOT = tmp_path / "media"
    campaign = make_campaign(
        dataset=dataset_create_synthetic(bars=1_500, seed=5), state=CampaignState.DRAFT,
        in_sample_stop=1_000, out_sample_stop=1_500, islands=1, budget_epochs=1,
        generations_per_epoch=3_000, min_quorum=1, target_nresults=1,  # a task of seconds
        ga_settings={"population_size": 16, "elite": 1, "immigrants": 1, "top_k": 3})
    campaign_start(campaign=campaign)
    volunteer = make_volunteer()
    home, log = tmp_path / "worker", tmp_path / "worker.log"
    attach = _worker(["attach", "--server", live_server.url, "--account-key",
                      volunteer.account_key], home, log)
    assert _reap(attach, 60) == 0, log.read_text()
    paths = WorkerPaths.default({HOME_ENV: str(home)})

    worker = _worker(["run", "--max-tasks", "1"], home, log)
    try:
        deadline = time.monotonic() + 60
        while "task 1 done" not in log.read_text() and "downloading" not in log.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(0.5)  # into the epoch
        worker.send_signal(signal.SIGTERM)
    finally:
        code = _reap(worker, 15)
    first_run = log.read_text()
    assert code == 0, first_run
    assert "SIGTERM received: checkpointing and stopping" in first_run
    assert "1 task(s) to run and 0 result(s) to report are kept" in first_run
    (task_file,) = paths.tasks_dir.glob("*.json")
    assert not list(paths.results_dir.glob("*.json"))

    again = _worker(["run", "--max-tasks", "1"], home, log)
    assert _reap(again, 120) == 0, log.read_text()
    assert "found 0 result(s) to report and 1 task(s) to run (1 from a checkpoint)" in \
        log.read_text()
    assert not task_file.exists()
    assert not list(paths.results_dir.glob("*.json"))
    result = Result.objects.get(workunit__campaign=campaign)
    assert (result.server_state, result.outcome) == (ServerState.OVER, Outcome.SUCCESS)


def test_the_host_token_goes_to_the_portal_only_never_to_another_origin(flaky_portal,
                                                                        monkeypatch, tmp_path):
    _, url = flaky_portal
    monkeypatch.setattr(_FlakyPortal, "failures", 0)
    other = url.replace("127.0.0.1", "localhost")  # the same server under another origin
    client = PortalClient(url, token="tok", retry=FAST_RETRY, sleep=lambda s: None)
    client.update_host(host_use_cases.host_info("box"))
    with pytest.raises(WorkerError):  # the fake portal serves no file; the headers matter
        client.download(f"{other}/api/v1/datasets/x/", tmp_path / "x", expected_sha256="0" * 64)
    own, foreign = _FlakyPortal.seen[0], _FlakyPortal.seen[-1]
    assert own["Authorization"] == "Token tok"
    assert "Authorization" not in foreign
