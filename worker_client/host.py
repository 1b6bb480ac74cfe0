"""The CLI's use cases besides ``run``: attach, status, benchmark, detach, replay.

Each is one function the CLI calls with parsed arguments; each raises a
:class:`~worker_client.exceptions.WorkerError` with one actionable line when it cannot do its job.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import __version__
from .client import PortalClient, RetryPolicy
from .config import HostConfig, WorkerPaths, load_host_config, save_host_config
from .datasets import DatasetCache
from .exceptions import ConfigError, DataError, ProtocolError, WorkerError
from .protocol import MAX_RESULTS_PER_REQUEST, HostInfo, SchedulerRequest
from .store import LOCK_FILE, WorkerStore, try_lock

log = logging.getLogger(__name__)

# Someone is waiting at the terminal: a few quick retries, not the worker loop's patience.
INTERACTIVE_RETRY = RetryPolicy(attempts=3, base=1.0, cap=4.0)


def attach(*, server: str, account_key: str, name: str | None = None,
           paths: WorkerPaths | None = None) -> HostConfig:
    """Register this machine with the portal under the account; store the host token."""
    paths = paths or WorkerPaths.default()
    info = host_info(name, speed=float(WorkerStore(paths).load_host_state().get("speed") or 0))
    with PortalClient(server, retry=INTERACTIVE_RETRY) as client:
        host_id, token = client.attach(account_key=account_key, host=info)
        config = HostConfig(server=client.server, host_id=host_id, token=token, name=info.name)
    save_host_config(paths, config)
    log.info("attached to %s as host %d (%s); the token is in %s", config.server, host_id,
             info.name, paths.config_file)
    return config


def host_info(name: str | None = None, *, speed: float = 0.0) -> HostInfo:
    import numba  # the engine needs it anyway; imported here to keep `--help` quick

    return HostInfo(
        name=(name or socket.gethostname() or "worker")[:100],
        os=f"{platform.system()} {platform.release()}".strip()[:50],
        arch=platform.machine()[:30],
        python_version=platform.python_version(),
        numba_version=numba.__version__,
        cpu_count=os.cpu_count() or 1,
        memory_mb=_memory_mb(),
        client_version=__version__,
        speed=max(0.0, speed),
    )


# -- status ------------------------------------------------------------------------------------


@dataclass
class Status:
    config: HostConfig
    running: bool  # a `run` holds the data directory now
    tasks: list[dict[str, Any]]  # result_id, name, state, fraction_done, deadline, …
    results_waiting: int
    speed: float
    portal: dict[str, Any] | None  # the portal's figures for this host; None if unreachable
    portal_error: str = ""


def status(*, paths: WorkerPaths | None = None, offline: bool = False) -> Status:
    """What this host holds and has earned: local files, the running worker's snapshot, and
    the portal's figures (credit) unless ``offline`` or unreachable."""
    paths = paths or WorkerPaths.default()
    config = load_host_config(paths)
    store = WorkerStore(paths)
    running = _run_in_progress(store)
    snapshot = store.read_status() if running else None
    if snapshot is not None:
        tasks = list(snapshot.get("tasks", []))
    else:
        tasks = []
        for task, _ in store.load_tasks():
            info = store.checkpoint_info(task.result_id)
            tasks.append({
                "result_id": task.result_id, "name": task.name,
                "state": "checkpointed" if info else "queued",
                "fraction_done": info.fraction_done if info else 0.0,
                "generation": info.generation if info else 0,
                "generations": info.generations if info else 0,
                "deadline": task.deadline, "credit": task.credit})
    portal, problem = None, ""
    if not offline:
        try:
            with PortalClient(config.server, config.token,
                              retry=RetryPolicy(attempts=1)) as client:
                portal = client.host_status()
        except WorkerError as exc:
            problem = str(exc)
    return Status(config=config, running=running, tasks=tasks,
                  results_waiting=len(list(paths.results_dir.glob("*.json"))),
                  speed=float(store.load_host_state().get("speed") or 0.0), portal=portal,
                  portal_error=problem)


def _run_in_progress(store: WorkerStore) -> bool:
    lock_path = store.paths.data_dir / LOCK_FILE
    if not lock_path.exists():
        return False
    with open(lock_path, "a+b") as handle:
        return not try_lock(handle)  # we got it: nobody holds it (closing releases it)


# -- benchmark ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkResult:
    speed: float  # candle-evaluations per second on one core
    seconds: float
    evaluations: int
    reported: bool  # the portal now knows it


def benchmark(*, seconds: float = 10.0, paths: WorkerPaths | None = None,
              report: bool = True) -> BenchmarkResult:
    """Measure this machine's candle-evaluations per second on one core, as tasks run them
    (random strategies of the default search space on 30,000 synthetic 5-minute bars), save it
    and report it to the portal (which sizes the work it sends by it)."""
    import numpy as np

    from .engine import FeatureTable, evaluate_population, synthetic_ohlcv
    from .engine.space import SearchSpace

    paths = paths or WorkerPaths.default()
    store = WorkerStore(paths)
    data = synthetic_ohlcv(30_000, seed=7)
    space = SearchSpace()
    rng = np.random.default_rng(7)
    features = FeatureTable(data)
    evaluate_population(data, [space.random_genome(rng) for _ in range(8)], features=features)
    evaluations, started = 0, time.perf_counter()
    while True:
        population = [space.random_genome(rng) for _ in range(48)]
        evaluate_population(data, population, features=features, threads=1)
        evaluations += len(population) * len(data)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            break
    speed = evaluations / elapsed
    state = store.load_host_state()
    state.update(speed=speed, speed_source="benchmark", measured_at=datetime.now(UTC).isoformat())
    store.ensure()
    store.save_host_state(state)
    reported = False
    if report:
        try:
            config = load_host_config(paths)
            with PortalClient(config.server, config.token, retry=INTERACTIVE_RETRY) as client:
                client.update_host(host_info(config.name, speed=speed))
            reported = True
        except ConfigError:
            pass  # not attached: measured and kept for later
    return BenchmarkResult(speed=speed, seconds=elapsed, evaluations=evaluations,
                           reported=reported)


# -- detach ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetachResult:
    server: str
    reported: int  # results reported before leaving
    dropped_tasks: int
    portal_told: bool


def detach(*, paths: WorkerPaths | None = None, force: bool = False) -> DetachResult:
    """Leave the portal: report finished results, retire the host there (its token stops
    working, its unfinished tasks go to other hosts), then forget the token and the tasks.

    Without ``force`` it refuses while the portal cannot be told (the tasks would wait for
    their deadlines) or while results could not be reported (they would be lost).
    """
    paths = paths or WorkerPaths.default()
    config = load_host_config(paths)
    store = WorkerStore(paths)
    with store.lock():  # never while a `run` uses the directory
        results = store.load_results()
        total, told = len(results), False
        try:
            with PortalClient(config.server, config.token, retry=INTERACTIVE_RETRY) as client:
                pending = list(results.values())
                while pending:
                    batch, pending = pending[:MAX_RESULTS_PER_REQUEST], \
                        pending[MAX_RESULTS_PER_REQUEST:]
                    reply = client.scheduler(SchedulerRequest(results=batch))
                    for rid in set(reply.accepted) | {int(r.get("result_id", -1))
                                                      for r in reply.rejected}:
                        if results.pop(rid, None) is not None:
                            store.drop_result(rid)
                if results:  # never forget a finished result the portal does not have
                    raise WorkerError(f"the portal did not acknowledge {len(results)} "
                                      "finished result(s)")
                client.detach()
                told = True
        except WorkerError as exc:
            if not force:
                raise WorkerError(f"{exc}; nothing else was changed. Try again later, or "
                                  "detach anyway with --force (unreported results are then "
                                  "lost)") from None
            log.warning("%s; detaching locally anyway (--force)", exc)
        reported = total - len(results)
        tasks = store.load_tasks()
        for task, _ in tasks:
            store.drop_task(task.result_id)
        for rid in results:  # only with --force: what the portal never acknowledged
            store.drop_result(rid)
        paths.config_file.unlink(missing_ok=True)
    return DetachResult(server=config.server, reported=reported, dropped_tasks=len(tasks),
                        portal_told=told)


# -- replay ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replay:
    strategy: dict[str, Any]  # the portal's genome.json
    description: str
    metrics: Any  # engine Metrics
    trades: Any  # TRADE_DTYPE array
    timestamps: Any  # bar open times, ms since the epoch, for the trade list


def replay(*, strategy_id: int, server: str | None = None,
           paths: WorkerPaths | None = None) -> Replay:
    """Backtest a strategy from the portal's hall of fame on this machine, with this client's
    engine, over the in-sample bars the volunteers mined: the same trades the portal shows."""
    from .engine import Costs, Genome, backtest

    paths = paths or WorkerPaths.default()
    try:
        config: HostConfig | None = load_host_config(paths)
    except ConfigError:
        config = None
    base = server or (config.server if config else None)
    if not base:
        raise ConfigError("replay needs --server URL (or attach this computer first)")
    token = config.token if config and (server is None or
                                        _same_origin(server, config.server)) else None
    with PortalClient(base, token, retry=INTERACTIVE_RETRY) as client:
        spec = client.get_json(f"/strategies/{strategy_id}/genome.json")
        try:
            genome = Genome.from_dict(spec["genome"])
            costs = Costs(**spec.get("costs", {}))
            start, stop = int(spec["start"]), int(spec["stop"])
            sha = str(spec["dataset_sha256"]).lower()
            initial_cash = float(spec.get("initial_cash", 10_000.0))
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"strategy {strategy_id}'s genome.json is not usable: {exc}"
                                ) from None
        cache = DatasetCache(paths.datasets_dir)
        path = cache.fetch(client, sha256=sha, url=f"datasets/{sha}/", size=None)
    from .datafile import DataFileError, read_candles

    try:
        data = read_candles(path, expected_sha256=sha)
    except DataFileError as exc:
        cache.discard(sha)
        raise DataError(f"{exc}; run the command again to fetch it anew") from None
    result = backtest(data, genome, costs=costs, initial_cash=initial_cash, start=start,
                      stop=stop)
    return Replay(strategy=spec, description=genome.describe(), metrics=result.metrics,
                  trades=result.trades, timestamps=data.timestamp)


def _same_origin(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def write_trades_csv(replay: Replay, path: Path) -> None:
    """The replayed trades as CSV (times in UTC), written atomically."""
    from .config import write_atomic

    lines = ["entry_time,exit_time,side,entry_price,exit_price,units,pnl,exit_reason"]
    ts = replay.timestamps
    for t in replay.trades:
        lines.append(",".join([
            bar_time(ts[t["entry_bar"]]), bar_time(ts[t["exit_bar"]]),
            "long" if t["side"] > 0 else "short", repr(float(t["entry_price"])),
            repr(float(t["exit_price"])), repr(float(t["units"])), repr(float(t["pnl"])),
            str(t["exit_reason"])]))
    write_atomic(path, ("\n".join(lines) + "\n").encode())


def bar_time(ms: Any) -> str:
    return datetime.fromtimestamp(int(ms) / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _memory_mb() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)
    except (AttributeError, ValueError, OSError):
        pass
    try:  # Windows
        import ctypes

        class _MemoryStatus(ctypes.Structure):
            _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                        ("ullTotalPhys", ctypes.c_ulonglong),
                        ("ullAvailPhys", ctypes.c_ulonglong),
                        ("ullTotalPageFile", ctypes.c_ulonglong),
                        ("ullAvailPageFile", ctypes.c_ulonglong),
                        ("ullTotalVirtual", ctypes.c_ulonglong),
                        ("ullAvailVirtual", ctypes.c_ulonglong),
                        ("sullAvailExtendedVirtual", ctypes.c_ulonglong)]

        status = _MemoryStatus()
        status.dwLength = ctypes.sizeof(_MemoryStatus)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
            return int(status.ullTotalPhys // 2**20)
    except (AttributeError, OSError):
        pass
    return 0
