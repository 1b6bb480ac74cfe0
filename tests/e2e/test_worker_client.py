"""The worker client as volunteers run it: real processes, the real portal over real HTTP.

Each test starts ``strategy-worker`` processes through the CLI against ``live_server`` (through
a faulty proxy where the network matters) and checks the promises of the worker issue: a
``kill -9`` loses nothing and changes no answer; a portal that goes away loses no result and
gets none twice; a corrupt download is caught and fetched again; a too-old client is refused
clearly; workers sharing a data set cache do not corrupt it.
"""

from __future__ import annotations

import collections
import hashlib
import json
import time
from pathlib import Path

import pytest

from apps.accounts.models import Host
from apps.credit.models import CreditGrant
from apps.workunits.campaigns import campaign_start
from apps.workunits.marketdata import dataset_create_synthetic
from apps.workunits.models import Campaign, Result, WorkUnit
from apps.workunits.states import CampaignState, Outcome, ServerState, ValidateState
from tests.e2e.conftest import Workers, wait_until_finished
from tests.e2e.faultproxy import FaultProxy
from tests.factories import make_campaign, make_volunteer
from worker_client.engine import Genome
from worker_client.engine.ga import GASettings, run_epoch
from worker_client.engine.space import SearchSpace
from worker_client.store import decode_checkpoint

pytestmark = pytest.mark.slow
TIMEOUT = 240.0


def _campaign(*, bars: int, islands: int, epochs: int, generations: int, population: int,
              quorum: int, seed: int = 7) -> Campaign:
    dataset = dataset_create_synthetic(bars=bars, seed=seed)
    campaign = make_campaign(
        name=f"worker-e2e-{seed}", dataset=dataset, state=CampaignState.DRAFT,
        in_sample_stop=bars * 4 // 5, out_sample_stop=bars, islands=islands,
        budget_epochs=epochs, generations_per_epoch=generations, migrants=2,
        min_quorum=quorum, target_nresults=quorum, seed=seed,
        ga_settings={"population_size": population, "elite": 2, "immigrants": 2, "top_k": 4,
                     "min_trades": 5})
    campaign_start(campaign=campaign)
    return campaign


def _attach(workers: Workers, name: str, server: str) -> None:
    volunteer = make_volunteer()
    done = workers.cli(name, "attach", "--server", server, "--account-key",
                       volunteer.account_key, "--name", name)
    assert done.returncode == 0, done.stderr


def _wait_for(condition, what: str, workers: Workers, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}\n{workers.logs()}")


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def test_a_worker_killed_mid_epoch_resumes_from_its_checkpoint_with_the_same_answer(
        live_server, daemons_inline, quick_delays, media, workers):
    # One long epoch, two replicas: "killed" is SIGKILLed (with its task process) mid-epoch and
    # restarted; "steady" runs the same epoch without interruption. Quorum 2 means the portal
    # validates only if both digests agree.
    campaign = _campaign(bars=60_000, islands=1, epochs=1, generations=150, population=32,
                         quorum=2)
    for name in ("killed", "steady"):
        _attach(workers, name, live_server.url)
    workers.start("killed", "--cpus", "1", "--checkpoint-interval", "0.2",
                  "--exit-when-idle", str(TIMEOUT))
    checkpoints = workers.home("killed") / "data" / "checkpoints"

    def checkpoint_at_generation(minimum: int):
        for path in checkpoints.glob("*.ckpt"):
            try:
                info, _ = decode_checkpoint(path.read_bytes())
            except (OSError, ValueError):
                continue
            if info.generation >= minimum:
                return info
        return None

    before = _wait_for(lambda: checkpoint_at_generation(3), "a checkpoint", workers)
    workers.kill_hard("killed")
    results_dir = workers.home("killed") / "data" / "results"
    assert not list(results_dir.glob("*.json")), "the epoch finished before the kill"
    killed_at = checkpoint_at_generation(0)
    assert killed_at is not None and killed_at.generation >= before.generation
    assert killed_at.generation < 150

    workers.start("steady", "--cpus", "1", "--exit-when-idle", str(TIMEOUT))
    workers.start("killed", "--cpus", "1", "--checkpoint-interval", "0.2",
                  "--exit-when-idle", str(TIMEOUT))
    wait_until_finished(campaign, workers, timeout=TIMEOUT)
    assert "(1 from a checkpoint)" in workers.log("killed")

    wu = WorkUnit.objects.get(campaign=campaign)
    results = list(wu.results.filter(outcome=Outcome.SUCCESS))
    assert len(results) == 2
    assert {r.validate_state for r in results} == {ValidateState.VALID}
    assert results[0].digest == results[1].digest

    # And it is the answer of the engine run in one go, here, from the task's payload.
    p = wu.payload
    from apps.workunits.data import load_dataset

    data = load_dataset(campaign.task_dataset)
    expected = run_epoch(data.slice(p["start"], p["stop"]), SearchSpace.from_dict(p["space"]),
                         GASettings.from_dict(p["settings"]), p["seed"],
                         [Genome.from_dict(g) for g in p["start_population"]],
                         p["generations"])
    assert results[0].digest == expected.digest


def test_results_finished_while_the_portal_is_unreachable_are_reported_once_it_is_back(
        live_server, daemons_inline, quick_delays, media, workers):
    campaign = _campaign(bars=20_000, islands=2, epochs=2, generations=60, population=24,
                         quorum=2, seed=8)
    with FaultProxy(live_server.url) as proxy:
        # As soon as both hosts hold a task, the network goes away.
        proxy.down_when_hosts_have_tasks = 2
        for name in ("a", "b"):
            _attach(workers, name, proxy.url)
            workers.start(name, "--cpus", "1", "--exit-when-idle", str(TIMEOUT))
        _wait_for(lambda: list((workers.home("a") / "data" / "results").glob("*.json")),
                  "a task finished while the portal is unreachable", workers)
        time.sleep(2.0)  # long enough to fail and back off
        proxy.up()
        wait_until_finished(campaign, workers, timeout=TIMEOUT)
        # A report the portal stored as the network went down lost its reply: the worker
        # still holds it and reports it again when its back-off ends, which may come after the
        # campaign finished. It must arrive, and be acknowledged, all the same.
        _wait_for(lambda: not any(list((workers.home(n) / "data" / "results").glob("*.json"))
                                  for n in ("a", "b")),
                  "every result acknowledged", workers)

    for name in ("a", "b"):
        assert "connection refused" in workers.log(name), workers.log(name)
    # Every result the portal holds crossed the wire and was acknowledged exactly once.
    stored = set(Result.objects.filter(workunit__campaign=campaign,
                                       server_state=ServerState.OVER,
                                       outcome=Outcome.SUCCESS).values_list("pk", flat=True))
    acknowledged = collections.Counter(proxy.accepted_reports())
    assert set(acknowledged) == stored
    assert set(acknowledged.values()) == {1}, acknowledged
    # ... and was validated and credited once.
    valid = Result.objects.filter(pk__in=stored, validate_state=ValidateState.VALID)
    assert valid.count() == len(stored) == 2 * 2 * 2
    assert CreditGrant.objects.filter(result__in=valid).count() == valid.count()
    for name in ("a", "b"):
        assert not list((workers.home(name) / "data" / "results").glob("*.json"))


def test_tasks_whose_reply_never_arrived_are_sent_again_without_a_ghost_timeout(
        live_server, daemons_inline, quick_delays, media, workers):
    # Two replicas of one work unit. "dropped": the reply carrying its task breaks off on the
    # way (the portal has committed the send). "killed": SIGKILLed while the reply carrying
    # its task is on the way, so it dies without ever saving it, and is started again. The
    # ghost timeout (600 s) is far beyond this test's: each must get its task back at once.
    campaign = _campaign(bars=5_000, islands=1, epochs=1, generations=5, population=8,
                         quorum=2, seed=12)
    with FaultProxy(live_server.url) as proxy:
        for name in ("dropped", "killed"):
            _attach(workers, name, proxy.url)
        proxy.drop_task_replies = 1
        workers.start("dropped", "--cpus", "1", "--exit-when-idle", str(TIMEOUT))
        [dropped] = _wait_for(proxy.lost_tasks, "a dropped reply", workers)
        # Its retried call gets the task back (before the next fault, which must hit "killed").
        _wait_for(lambda: dropped in proxy.sent_tasks(), "the dropped task sent again", workers)

        proxy.hold_task_replies = 1
        workers.start("killed", "--cpus", "1", "--exit-when-idle", str(TIMEOUT))
        _wait_for(proxy.holding.is_set, "a held reply", workers)
        workers.kill_hard("killed")
        proxy.release.set()
        assert not list((workers.home("killed") / "data" / "tasks").glob("*.json"))
        workers.start("killed", "--cpus", "1", "--exit-when-idle", str(TIMEOUT))
        wait_until_finished(campaign, workers, timeout=TIMEOUT)
        lost, sent = proxy.lost_tasks(), proxy.sent_tasks()

    assert len(lost) == 2 and set(lost) <= set(sent), (lost, sent)
    wu = WorkUnit.objects.get(campaign=campaign)
    replicas = list(wu.results.order_by("pk"))
    # The very replicas lost, validated; nothing timed out, nothing sent a second time.
    assert sorted(r.pk for r in replicas) == sorted(lost)
    assert {(r.outcome, r.validate_state) for r in replicas} == {
        (Outcome.SUCCESS, ValidateState.VALID)}
    assert {r.host.name for r in replicas} == {"dropped", "killed"}
    for name in ("dropped", "killed"):
        assert "received task" in workers.log(name)


def test_a_corrupted_download_is_detected_and_fetched_again(
        live_server, daemons_inline, quick_delays, media, workers):
    campaign = _campaign(bars=5_000, islands=1, epochs=1, generations=3, population=8,
                         quorum=1, seed=9)
    with FaultProxy(live_server.url) as proxy:
        proxy.corrupt_downloads = 1
        _attach(workers, "w", proxy.url)
        process = workers.start("w", "--cpus", "1", "--max-tasks", "1")
        assert process.wait(TIMEOUT) == 0, workers.logs()
        downloads = proxy.count(path_prefix="/api/v1/datasets/", status=200)
    assert downloads == 2, workers.logs()  # the corrupt one, then a good one
    assert "sha256" in workers.log("w")
    result = Result.objects.get(workunit__campaign=campaign, outcome=Outcome.SUCCESS)
    assert result.host.name == "w"
    cached = list((workers.home("w") / "cache" / "datasets").glob("*.sahc"))
    assert len(cached) == 1
    assert hashlib.sha256(cached[0].read_bytes()).hexdigest() == cached[0].stem


def test_a_client_older_than_the_portal_accepts_is_refused_clearly_and_gets_no_work(
        live_server, quick_delays, media, settings, workers):
    campaign = _campaign(bars=3_000, islands=1, epochs=1, generations=2, population=8,
                         quorum=1, seed=10)
    _attach(workers, "old", live_server.url)
    settings.MIN_CLIENT_VERSION = "999.0"
    process = workers.start("old", "--cpus", "1")
    assert process.wait(60) == 6, workers.logs()  # EXIT_TOO_OLD
    log = workers.log("old")
    assert "pipx upgrade strategy-worker" in log
    assert "999.0" in log
    assert not Result.objects.filter(workunit__campaign=campaign, host__isnull=False).exists()


def test_two_workers_share_one_data_set_cache_without_corrupting_it(
        live_server, daemons_inline, quick_delays, media, workers, tmp_path):
    campaign = _campaign(bars=40_000, islands=2, epochs=1, generations=4, population=8,
                         quorum=2, seed=12)
    shared = tmp_path / "shared-cache"
    workers.extra_env["STRATEGY_WORKER_CACHE"] = str(shared)
    with FaultProxy(live_server.url) as proxy:
        proxy.delay = 0.3  # both ask for the file while the first download is still running
        for name in ("x", "y"):
            _attach(workers, name, proxy.url)
        for name in ("x", "y"):
            workers.start(name, "--cpus", "1", "--exit-when-idle", str(TIMEOUT))
        wait_until_finished(campaign, workers, timeout=TIMEOUT)
        downloads = proxy.count(path_prefix="/api/v1/datasets/", status=200)
    assert downloads == 1, workers.logs()
    files = sorted(p.name for p in (shared / "datasets").iterdir() if not p.name.endswith(".lock"))
    assert files == [f"{campaign.task_dataset.sha256}.sahc"]  # and no partial download left
    data = (shared / "datasets" / files[0]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == campaign.task_dataset.sha256
    assert Result.objects.filter(workunit__campaign=campaign,
                                 validate_state=ValidateState.VALID).count() == 4
    assert Host.objects.filter(name__in=["x", "y"], n_valid=2).count() == 2


def test_status_shows_tasks_results_and_credit(live_server, daemons_inline, quick_delays,
                                               media, workers):
    campaign = _campaign(bars=3_000, islands=1, epochs=1, generations=2, population=8,
                         quorum=1, seed=13)
    _attach(workers, "s", live_server.url)
    assert workers.start("s", "--cpus", "1", "--max-tasks", "1").wait(TIMEOUT) == 0
    campaign.refresh_from_db()
    shown = workers.cli("s", "status", "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["running"] is False and status["tasks"] == []
    assert status["results_waiting"] == 0
    assert status["portal"]["n_valid"] == 1
    assert status["portal"]["total_credit"] > 0
    text = workers.cli("s", "status").stdout
    assert "Credit:" in text and "Results waiting to upload: 0" in text


def test_detach_gives_back_unfinished_tasks_and_revokes_the_token(
        live_server, daemons_inline, quick_delays, media, workers):
    campaign = _campaign(bars=3_000, islands=2, epochs=1, generations=2, population=8,
                         quorum=1, seed=14)
    _attach(workers, "d", live_server.url)
    host = Host.objects.get(name="d")
    # Take tasks without running them: one scheduler call by hand, as a worker would.
    from worker_client.client import PortalClient
    from worker_client.config import WorkerPaths, load_host_config
    from worker_client.protocol import SchedulerRequest
    from worker_client.store import WorkerStore

    paths = WorkerPaths.default({"STRATEGY_WORKER_HOME": str(workers.home("d"))})
    config = load_host_config(paths)
    with PortalClient(config.server, config.token) as client:
        reply = client.scheduler(SchedulerRequest(free_slots=2, work_seconds=1e6))
    assert reply.tasks
    store = WorkerStore(paths)
    store.ensure()
    for task in reply.tasks:
        store.save_task(task, time.time())

    done = workers.cli("d", "detach")
    assert done.returncode == 0, done.stderr
    assert f"{len(reply.tasks)} unfinished task(s) given back" in done.stdout
    host.refresh_from_db()
    assert host.retired
    given_back = Result.objects.filter(pk__in=[t.result_id for t in reply.tasks])
    assert {r.outcome for r in given_back} == {Outcome.CLIENT_DETACHED}
    # The work units got new replicas at once, for other hosts.
    for wu in WorkUnit.objects.filter(campaign=campaign):
        assert wu.results.filter(server_state=ServerState.UNSENT).exists()
    assert not Path(paths.config_file).exists()
    again = workers.cli("d", "status")
    assert again.returncode == 3 and "not attached" in again.stderr


def test_benchmark_measures_this_machine_and_tells_the_portal(live_server, media, workers):
    _attach(workers, "bench", live_server.url)
    done = workers.cli("bench", "benchmark", "--seconds", "1")
    assert done.returncode == 0, done.stderr
    assert "candle-evaluations per core" in done.stdout and "reported to the portal" in done.stdout
    host = Host.objects.get(name="bench")
    assert host.speed > 1e6  # candle-evaluations per second: this engine does tens of millions
    state = json.loads((workers.home("bench") / "data" / "host_state.json").read_text())
    assert state["speed"] == pytest.approx(host.speed)


def test_replay_backtests_a_hall_of_fame_strategy_here_with_the_portals_trades(
        live_server, daemons_inline, quick_delays, media, workers, tmp_path):
    from apps.workunits.models import Strategy

    campaign = _campaign(bars=6_000, islands=1, epochs=1, generations=6, population=16,
                         quorum=1, seed=15)
    _attach(workers, "r", live_server.url)
    assert workers.start("r", "--cpus", "1", "--max-tasks", "1").wait(TIMEOUT) == 0
    strategy = Strategy.objects.filter(campaign=campaign).order_by("-fitness").first()
    assert strategy is not None, "the epoch produced no hall-of-fame strategy"
    csv = tmp_path / "trades.csv"
    done = workers.cli("r", "replay", "--strategy", str(strategy.pk), "--csv", str(csv))
    assert done.returncode == 0, done.stderr
    assert "the same" in done.stdout and "DIFFERENT" not in done.stdout
    trades = strategy.in_sample["n_trades"]
    assert len(csv.read_text().splitlines()) == trades + 1  # a header, then one row per trade
