"""A small campaign mined end to end: the real portal over HTTP, two real worker processes.

The portal runs under ``live_server``; the daemons run inside it through django-q2 in sync
mode (each report's on-commit enqueue runs the transitioner, which chains the validator and
the assimilator, in the server thread), as qcluster would run them in production. The workers
are separate processes started with the CLI, each with its own home directory and volunteer.
The portal's request delays are shortened (the clock is the one thing faked).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import django_q.conf
import pytest
from django.db.models import Count, Sum

from apps.accounts.models import Host, Volunteer
from apps.credit.models import CreditGrant
from apps.workunits.campaigns import campaign_start
from apps.workunits.marketdata import dataset_create_synthetic
from apps.workunits.models import Campaign, Result, Strategy, WorkUnit
from apps.workunits.states import AssimilateState, CampaignState, ValidateState
from tests.factories import make_campaign, make_volunteer

PROJECT_DIR = Path(__file__).resolve().parents[2]
ISLANDS, EPOCHS = 2, 2
MINING_TIMEOUT = 240.0  # seconds; the campaign takes well under a minute
pytestmark = pytest.mark.slow


@pytest.fixture
def daemons_inline(monkeypatch):
    """django-q2 in sync mode: enqueued daemon passes run at once, in the enqueuing thread."""
    monkeypatch.setattr(django_q.conf.Conf, "SYNC", True)


@pytest.fixture
def quick_delays(settings):
    settings.SCHEDULER_REQUEST_DELAY = 0.2
    settings.SCHEDULER_NO_WORK_DELAY = 0.5


@pytest.fixture
def small_campaign(settings, tmp_path) -> Campaign:
    settings.MEDIA_ROOT = tmp_path / "media"
    dataset = dataset_create_synthetic(bars=3_000, seed=11)
    campaign = make_campaign(
        name="e2e", dataset=dataset, state=CampaignState.DRAFT, in_sample_stop=2_000,
        out_sample_stop=3_000, islands=ISLANDS, budget_epochs=EPOCHS, generations_per_epoch=2,
        migrants=2, min_quorum=2, target_nresults=2, seed=2024,
        ga_settings={"population_size": 8, "elite": 2, "immigrants": 2, "top_k": 4,
                     "min_trades": 5})
    campaign_start(campaign=campaign)
    return campaign


class Workers:
    """Worker processes started through the CLI; every one is stopped and reaped at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DJANGO_", "DATABASE_URL", "PYTEST_"))}
        env["STRATEGY_WORKER_HOME"] = str(self.root / name)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def cli(self, name: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "worker_client.cli", *args],
                              cwd=PROJECT_DIR, env=self.env(name), capture_output=True,
                              text=True, timeout=timeout)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.root / f"{name}.log"
        with open(log, "wb") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "worker_client.cli", "run", *args], cwd=PROJECT_DIR,
                env=self.env(name), stdout=handle, stderr=subprocess.STDOUT)
        self.processes.append((name, process, log))
        return process

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


def _wait_until_finished(campaign: Campaign, workers: Workers) -> None:
    deadline = time.monotonic() + MINING_TIMEOUT
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
    pytest.fail(f"campaign not finished after {MINING_TIMEOUT:.0f} s: {states}\n"
                f"{workers.logs()}")


def test_two_workers_mine_a_campaign_to_completion(live_server, daemons_inline, quick_delays,
                                                   small_campaign, workers):
    volunteers = [make_volunteer(), make_volunteer()]
    for i, volunteer in enumerate(volunteers):
        attached = workers.cli(f"w{i}", "attach", "--server", live_server.url,
                               "--account-key", volunteer.account_key, "--name", f"e2e-{i}")
        assert attached.returncode == 0, attached.stderr
        assert "Attached to" in attached.stdout
    for i in range(len(volunteers)):
        workers.start(f"w{i}", "--exit-when-idle", str(MINING_TIMEOUT))

    _wait_until_finished(small_campaign, workers)
    codes = workers.stop_all()
    assert codes == {"w0": 0, "w1": 0}, workers.logs()  # SIGTERM is a clean stop

    # Every island ran its budget and every work unit was validated and assimilated.
    wus = WorkUnit.objects.filter(campaign=small_campaign)
    assert wus.count() == ISLANDS * EPOCHS
    for wu in wus:
        assert wu.error_mask == 0, wu
        assert wu.canonical_result_id is not None, wu
        assert wu.assimilate_state == AssimilateState.DONE, wu
        canonical = wu.canonical_result
        assert canonical.validate_state == ValidateState.VALID
        # Quorum 2: both volunteers ran it and agreed on the answer.
        valid = wu.results.filter(validate_state=ValidateState.VALID)
        assert valid.values("volunteer").distinct().count() == 2, wu
        assert set(valid.values_list("digest", flat=True)) == {canonical.digest}

    # Credit: exactly one grant per valid replica, and the totals are the ledger's sums.
    valid_results = Result.objects.filter(workunit__campaign=small_campaign,
                                          validate_state=ValidateState.VALID)
    grants = CreditGrant.objects.filter(result__workunit__campaign=small_campaign)
    assert grants.count() == valid_results.count() == ISLANDS * EPOCHS * 2
    assert set(grants.values_list("result_id", flat=True)) == set(
        valid_results.values_list("pk", flat=True))
    assert not grants.values("result").annotate(n=Count("pk")).filter(n__gt=1).exists()
    for grant in grants.select_related("result"):
        assert grant.amount == pytest.approx(grant.result.workunit.credit)
        assert grant.result.granted_credit == pytest.approx(grant.amount)
    for volunteer in Volunteer.objects.filter(pk__in=[v.pk for v in volunteers]):
        ledger = volunteer.grants.aggregate(total=Sum("amount"))["total"]
        assert ledger and ledger > 0, volunteer
        assert math.isclose(volunteer.total_credit, ledger, rel_tol=1e-9)
        assert volunteer.rac > 0
    for host in Host.objects.filter(volunteer__in=volunteers):
        ledger = host.grants.aggregate(total=Sum("amount"))["total"]
        assert math.isclose(host.total_credit, ledger, rel_tol=1e-9)

    # The hall of fame holds re-checked strategies with out-of-sample figures.
    strategies = Strategy.objects.filter(campaign=small_campaign)
    assert strategies.exists()
    best = strategies.order_by("-fitness").first()
    assert best.description and best.in_sample and best.out_sample

    # Nothing is left waiting on the workers' disks: every result was acknowledged.
    for i in range(len(volunteers)):
        home = workers.root / f"w{i}" / "data"
        assert not list((home / "results").glob("*.json"))
        assert not list((home / "tasks").glob("*.json"))
