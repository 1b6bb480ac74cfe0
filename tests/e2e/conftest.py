"""The end-to-end harness: worker processes started through the CLI, daemons inline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import django_q.conf
import pytest

PROJECT_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture
def daemons_inline(monkeypatch):
    """django-q2 in sync mode: enqueued daemon passes run at once, in the enqueuing thread."""
    monkeypatch.setattr(django_q.conf.Conf, "SYNC", True)


@pytest.fixture
def quick_delays(settings):
    settings.SCHEDULER_REQUEST_DELAY = 0.2
    settings.SCHEDULER_NO_WORK_DELAY = 0.5


class Workers:
    """Worker processes started through the CLI; every one is stopped and reaped at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.extra_env: dict[str, str] = {}  # for every worker, e.g. a shared cache

    def env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DJANGO_", "DATABASE_URL", "PYTEST_"))}
        env["STRATEGY_WORKER_HOME"] = str(self.root / name)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    def home(self, name: str) -> Path:
        return self.root / name

    def cli(self, name: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "worker_client.cli", *args],
                              cwd=PROJECT_DIR, env=self.env(name), capture_output=True,
                              text=True, timeout=timeout)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.root / f"{name}.log"
        self.root.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as handle:  # a restarted worker appends to its log
            # Its own session: kill_hard() takes its task processes down with it.
            process = subprocess.Popen(
                [sys.executable, "-m", "worker_client.cli", "run", *args], cwd=PROJECT_DIR,
                env=self.env(name), stdout=handle, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.processes.append((name, process, log))
        return process

    def kill_hard(self, name: str) -> None:
        """SIGKILL the worker and its task processes at once: a power cut, as far as its
        files can tell."""
        for entry in list(self.processes):
            worker, process, _ = entry
            if worker == name and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
                self.processes.remove(entry)  # its log stays; a restart appends to it

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {name} (exit {p.poll()}) ---\n{log.read_text()[-4000:]}"
                         for name, p, log in self.processes)

    def stop_all(self, timeout: float = 30.0) -> dict[str, int]:
        """SIGTERM each (a clean stop), wait, and kill whatever is still there."""
        for _, process, _ in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        deadline = time.monotonic() + timeout
        for name, process, _ in self.processes:
            try:
                codes[name] = process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait(10)
        return codes


@pytest.fixture
def workers(tmp_path):
    workers = Workers(tmp_path / "workers")
    yield workers
    workers.stop_all(timeout=10.0)  # no orphans, whatever happened


def wait_until_finished(campaign, workers: Workers, *, timeout: float) -> None:
    """Until the campaign is finished; fails (with the workers' logs) if a worker exits first."""
    from apps.workunits.models import WorkUnit
    from apps.workunits.states import CampaignState

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        campaign.refresh_from_db()
        if campaign.state == CampaignState.FINISHED:
            return
        exited = [(name, p.returncode) for name, p, _ in workers.processes
                  if p.poll() is not None]
        if exited:
            pytest.fail(f"a worker exited before the campaign finished: {exited}\n"
                        f"{workers.logs()}")
        time.sleep(0.5)
    states = list(WorkUnit.objects.filter(campaign=campaign).values(
        "island", "epoch", "need_validate", "error_mask", "assimilate_state",
        "canonical_result"))
    pytest.fail(f"campaign not finished after {timeout:.0f} s: {states}\n"
                f"{workers.logs()}")
