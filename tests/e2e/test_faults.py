"""Faults while mining, each ending with the check that nothing was lost and nothing was
counted twice: workers SIGKILLed at random moments, a network that drops and delays requests,
and a worker whose disk fills up or turns read-only.

The portal-side faults (portal, cluster and PostgreSQL restarted under load) need a real
gunicorn, qcluster and PostgreSQL: ``bench/faults.py`` runs those scenarios.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest
from django.db import connection
from django.db.models import Count

from apps.credit.models import CreditGrant
from apps.workunits.campaigns import campaign_start
from apps.workunits.marketdata import dataset_create_synthetic
from apps.workunits.models import Campaign, Result, WorkUnit
from apps.workunits.states import AssimilateState, CampaignState, Outcome, ValidateState
from apps.workunits.tasks import run_transitioner
from tests.e2e.conftest import Workers, wait_until_finished
from tests.e2e.faultproxy import FaultProxy
from tests.factories import make_campaign, make_volunteer
from worker_client.store import decode_checkpoint

pytestmark = pytest.mark.slow
TIMEOUT = 300.0


def _campaign(*, islands: int, epochs: int, generations: int, seed: int) -> Campaign:
    campaign = make_campaign(
        name=f"faults-{seed}", dataset=dataset_create_synthetic(bars=20_000, seed=seed),
        state=CampaignState.DRAFT, in_sample_stop=16_000, out_sample_stop=20_000,
        islands=islands, budget_epochs=epochs, generations_per_epoch=generations, migrants=2,
        min_quorum=2, target_nresults=2, seed=seed,
        ga_settings={"population_size": 16, "elite": 2, "immigrants": 2, "top_k": 4,
                     "min_trades": 5})
    campaign_start(campaign=campaign)
    return campaign


def _attach(workers: Workers, name: str, server: str) -> None:
    done = workers.cli(name, "attach", "--server", server, "--account-key",
                       make_volunteer().account_key, "--name", name)
    assert done.returncode == 0, done.stderr


def assert_nothing_lost_nothing_twice(campaign: Campaign, workers: Workers,
                                      names: list[str]) -> None:
    """Every work unit validated and assimilated once, with agreeing replicas; one credit
    grant per valid replica; no result left on a worker's disk."""
    wus = WorkUnit.objects.filter(campaign=campaign)
    assert wus.count() == campaign.islands * campaign.budget_epochs
    for wu in wus:
        assert wu.canonical_result_id is not None, wu
        assert wu.assimilate_state == AssimilateState.DONE, wu
        valid = wu.results.filter(validate_state=ValidateState.VALID)
        assert valid.count() >= 2 and len(set(valid.values_list("digest", flat=True))) == 1
    valid = Result.objects.filter(workunit__campaign=campaign, validate_state=ValidateState.VALID)
    grants = CreditGrant.objects.filter(result__workunit__campaign=campaign)
    assert grants.count() == valid.count()
    assert not grants.values("result").annotate(n=Count("pk")).filter(n__gt=1).exists()
    assert not Result.objects.filter(workunit__campaign=campaign,
                                     outcome=Outcome.VALIDATE_ERROR).exists()
    for name in names:
        assert not list((workers.home(name) / "data" / "results").glob("*.json")), name


def test_workers_killed_at_random_moments_lose_nothing_and_count_nothing_twice(
        live_server, daemons_inline, quick_delays, settings, tmp_path, workers):
    settings.MEDIA_ROOT = tmp_path / "media"
    # A worker killed after the portal sent a task but before it saved it gets that task
    # back on its first call after the restart (its list of tasks is complete): no ghost
    # waits for the ghost timeout (600 s, far beyond this test's), and none is timed out.
    campaign = _campaign(islands=2, epochs=3, generations=40, seed=31)
    names = ["k0", "k1", "k2"]
    for name in names:
        _attach(workers, name, live_server.url)
        workers.start(name, "--cpus", "1", "--checkpoint-interval", "0.3",
                      "--exit-when-idle", str(TIMEOUT))
    rng = random.Random(31)
    kills = 0
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and kills < 12:
        campaign.refresh_from_db()
        if campaign.state == CampaignState.FINISHED:
            break
        time.sleep(rng.uniform(0.5, 2.5))
        run_transitioner()  # the periodic sweep
        victim = rng.choice(names)
        workers.kill_hard(victim)  # the runner and its task process: a power cut
        kills += 1
        started = workers.log(victim).count(f"worker {victim} on ")
        workers.start(victim, "--cpus", "1", "--checkpoint-interval", "0.3",
                      "--exit-when-idle", str(TIMEOUT))
        # Up and running before the next fault (a SIGTERM before Python has even started
        # our code would end it with the default action, not a clean stop).
        up_by = time.monotonic() + 60
        while workers.log(victim).count(f"worker {victim} on ") == started and \
                time.monotonic() < up_by:
            time.sleep(0.05)
    sweeping = threading.Event()

    def sweep() -> None:  # in production: the schedule setup_schedules declares
        while not sweeping.wait(1.0):
            run_transitioner()
            connection.close()

    sweeper = threading.Thread(target=sweep, daemon=True)
    sweeper.start()
    try:
        wait_until_finished(campaign, workers, timeout=TIMEOUT)
    finally:
        sweeping.set()
        sweeper.join(10)
    assert workers.stop_all() == {n: 0 for n in names}
    assert kills >= 3, "the campaign ended before the workers were killed a few times"
    assert_nothing_lost_nothing_twice(campaign, workers, names)
    # A task lost with its worker came back to it: nothing waited for a timeout.
    assert not Result.objects.filter(workunit__campaign=campaign,
                                     outcome=Outcome.NO_REPLY).exists()


def test_a_network_that_drops_and_delays_requests_loses_nothing(
        live_server, daemons_inline, quick_delays, settings, tmp_path, workers):
    settings.MEDIA_ROOT = tmp_path / "media"
    campaign = _campaign(islands=2, epochs=2, generations=20, seed=32)
    names = ["n0", "n1"]
    with FaultProxy(live_server.url, seed=32) as proxy:
        for name in names:
            _attach(workers, name, proxy.url)
        # Requests vanish before they reach the portal (the connection is cut) or arrive late.
        proxy.drop_rate, proxy.delay = 0.25, 0.05
        for name in names:
            workers.start(name, "--cpus", "1", "--exit-when-idle", str(TIMEOUT))
        wait_until_finished(campaign, workers, timeout=TIMEOUT)
        dropped = proxy.count(path_prefix="/", status=0)
        # A report dropped near the end is still on its worker's disk: with the network
        # healthy again, it is delivered (not lost) before the workers stop.
        proxy.drop_rate = 0.0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(
                list((workers.home(n) / "data" / "results").glob("*.json")) for n in names):
            time.sleep(0.2)
    assert workers.stop_all() == {n: 0 for n in names}
    assert dropped > 0
    assert_nothing_lost_nothing_twice(campaign, workers, names)


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small file system here ({done.stderr.strip()}); the disk-"
                    "full test needs root")


@pytest.fixture
def small_disk(tmp_path):
    mounted: list[Path] = []

    def make(path: Path, size: str) -> Path:
        _tmpfs(path, size)
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_stops_the_worker_with_a_clear_error_and_no_corrupt_state(
        live_server, daemons_inline, quick_delays, settings, tmp_path, workers, small_disk):
    settings.MEDIA_ROOT = tmp_path / "media"
    _campaign(islands=1, epochs=1, generations=400, seed=33)
    _attach(workers, "full", live_server.url)
    data = workers.home("full") / "data"
    saved = {p.name: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    small_disk(data, "200k")  # the data directory on a file system of its own, nearly empty
    for name, content in saved.items():
        (data / name).write_bytes(content)
    # Fill it almost to the brim: the task file still fits, checkpoints soon will not.
    filler = data / "filler"
    with open(filler, "wb") as handle, contextlib.suppress(OSError):
        handle.write(b"\0" * (200 * 1024 - 24 * 1024))
    workers.extra_env["STRATEGY_WORKER_CACHE"] = str(tmp_path / "cache")  # on the big disk
    process = workers.start("full", "--cpus", "1", "--checkpoint-interval", "0.1")
    code = process.wait(TIMEOUT)
    log = workers.log("full")
    assert code == 7, log  # EXIT_STORAGE
    assert "the disk is full" in log or "disk full" in log
    assert "Traceback" not in log
    # What is on disk is whole: the task file parses, a checkpoint (if any) decodes.
    tasks = list((data / "tasks").glob("*.json"))
    assert len(tasks) == 1
    json.loads(tasks[0].read_text())
    for checkpoint in (data / "checkpoints").glob("*.ckpt"):
        decode_checkpoint(checkpoint.read_bytes())
    assert not list(data.rglob(".*.tmp"))  # no half-written file left behind
    # Room again: the same task resumes and finishes.
    filler.unlink()
    process = workers.start("full", "--cpus", "1", "--max-tasks", "1")
    assert process.wait(TIMEOUT) == 0, workers.log("full")


def test_a_read_only_data_directory_is_a_clear_error(live_server, settings, tmp_path, workers,
                                                     small_disk):
    settings.MEDIA_ROOT = tmp_path / "media"
    _attach(workers, "ro", live_server.url)
    data = workers.home("ro") / "data"
    small_disk(data, "1m")
    subprocess.run(["mount", "-o", "remount,ro", str(data)], check=True)
    done = workers.cli("ro", "run", "--cpus", "1", "--exit-when-idle", "5")
    assert done.returncode in (3, 7), done.stderr  # EXIT_CONFIG or EXIT_STORAGE
    assert "read-only" in done.stderr.lower()
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert os.access(data, os.R_OK)
