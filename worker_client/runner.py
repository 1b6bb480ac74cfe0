"""The minimal worker: attach once, then ask → download → run → store → report, in a loop.

One task at a time, on one core by default. What it guarantees already (the full client adds
several slots, checkpoints and a live display):

* a task is written to disk when it arrives and a finished result is written to disk (atomically)
  **before** it is reported; the result file is deleted only when the portal lists it in
  ``accepted`` or ``rejected``. A worker stopped or killed at any point loses no finished work:
  the next ``run`` reports what is waiting and restarts what was interrupted;
* a data set is downloaded once per machine into the cache, sha256-checked; a bad download is
  deleted and fetched again, never used;
* the portal's ``request_delay`` is obeyed, and when it cannot be reached the worker backs off
  and keeps trying (its client retries each call first);
* SIGTERM or SIGINT stops it cleanly at the next generation boundary (a second one aborts).

A task is data: the client's own engine interprets it. Nothing the portal sends is executed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from . import __version__
from .client import PortalClient, RetryPolicy
from .config import (
    HostConfig,
    WorkerPaths,
    load_host_config,
    save_host_config,
    write_json_atomic,
)
from .exceptions import (
    AuthError,
    ClientTooOld,
    DataError,
    ServerUnavailable,
    TaskError,
    WorkerError,
)
from .protocol import (
    ENGINE_FORMAT,
    REASON_CLIENT_TOO_OLD,
    REASON_HOST_RETIRED,
    REASON_NOT_ASKED,
    TASK_KIND,
    HostInfo,
    ReportedResult,
    SchedulerReply,
    SchedulerRequest,
    Task,
)

log = logging.getLogger(__name__)

DOWNLOAD_ATTEMPTS = 3
REPORT_BATCH = 32  # results per request: the portal's limit


# -- use cases (what the CLI calls) ---------------------------------------------------------


def attach(*, server: str, account_key: str, name: str | None = None,
           paths: WorkerPaths | None = None) -> HostConfig:
    """Register this machine with the portal under the account; store the host token."""
    paths = paths or WorkerPaths.default()
    info = host_info(name)
    # Someone is waiting at the terminal: a few quick retries, not the worker loop's patience.
    with PortalClient(server, retry=RetryPolicy(attempts=3, base=1.0, cap=4.0)) as client:
        host_id, token = client.attach(account_key=account_key, host=info)
        config = HostConfig(server=client.server, host_id=host_id, token=token, name=info.name)
    save_host_config(paths, config)
    log.info("attached to %s as host %d (%s); the token is in %s", config.server, host_id,
             info.name, paths.config_file)
    return config


@dataclass(frozen=True)
class RunOptions:
    max_tasks: int | None = None  # stop once this many tasks have run and been reported
    exit_when_idle: float | None = None  # stop after this many seconds without a task
    threads: int = 1  # numba threads for one task
    work_seconds: float = 3600.0  # seconds of work to ask for per free slot
    min_idle_delay: float = 1.0  # never ask again sooner than this after "no work"
    max_backoff: float = 600.0  # longest wait while the portal is unreachable


@dataclass
class RunSummary:
    tasks_run: int = 0
    tasks_failed: int = 0
    results_accepted: int = 0
    results_rejected: int = 0
    stopped_by_signal: bool = False


def run(*, options: RunOptions, paths: WorkerPaths | None = None,
        retry: RetryPolicy | None = None) -> RunSummary:
    """Run the attached host until stopped, idle, or out of ``max_tasks``."""
    paths = paths or WorkerPaths.default()
    config = load_host_config(paths)
    paths.ensure()
    with PortalClient(config.server, config.token, retry=retry) as client:
        runner = Runner(client, paths, options, name=config.name)
        with runner.signals_handled():
            return runner.run()


def host_info(name: str | None = None) -> HostInfo:
    import numba  # the engine needs it anyway; imported here to keep `attach --help` quick

    return HostInfo(
        name=(name or socket.gethostname() or "worker")[:100],
        os=f"{platform.system()} {platform.release()}".strip()[:50],
        arch=platform.machine()[:30],
        python_version=platform.python_version(),
        numba_version=numba.__version__,
        cpu_count=os.cpu_count() or 1,
        memory_mb=_memory_mb(),
        client_version=__version__,
    )


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


# -- the loop --------------------------------------------------------------------------------


class _Interrupted(Exception):
    """Raised inside an epoch to stop it at a generation boundary (the worker is stopping)."""


class _Aborted(Exception):
    """Raised inside an epoch the portal no longer needs."""


@dataclass
class _State:
    queue: list[Task] = field(default_factory=list)  # received, not yet finished
    results: dict[int, ReportedResult] = field(default_factory=dict)  # finished, not acknowledged
    acks: list[int] = field(default_factory=list)  # received since the last call


class Runner:
    """One worker loop. ``clock`` and ``sleep`` are injectable so tests control time."""

    def __init__(self, client: PortalClient, paths: WorkerPaths, options: RunOptions, *,
                 name: str = "", clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.paths = paths
        self.options = options
        self.name = name
        self._clock = clock
        self._sleep = sleep
        self._state = _State()
        self._summary = RunSummary()
        self._stop = False
        self._next_contact = 0.0  # clock time before which the portal must not be asked
        self._failures = 0  # consecutive calls that found the portal unavailable
        self._last_work = clock()
        self._last_reason: tuple[str | None, str] | None = None
        self._datasets: dict[str, Any] = {}  # sha256 -> OHLCV, the last one loaded
        self._running: int | None = None  # the task whose epoch is running now
        self._abort_running = False

    # -- stopping ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop = True

    @property
    def stopping(self) -> bool:
        return self._stop

    def signals_handled(self) -> _SignalScope:
        return _SignalScope(self)

    # -- main loop ------------------------------------------------------------------------------

    def run(self) -> RunSummary:
        self._load_state()
        self._announce()
        while not self._stop:
            if self._state.queue:
                self._run_task(self._state.queue[0])
                continue
            budget_left = (self.options.max_tasks is None
                           or self._summary.tasks_run < self.options.max_tasks)
            if not budget_left and not self._state.results and not self._state.acks:
                log.info("ran %d task(s) and every result is acknowledged; stopping",
                         self._summary.tasks_run)
                break
            wake = self._next_contact
            if self.options.exit_when_idle is not None:
                give_up = self._last_work + self.options.exit_when_idle
                if self._clock() >= give_up:
                    log.info("no work for %.0f s; stopping (--exit-when-idle)",
                             self._clock() - self._last_work)
                    break
                wake = min(wake, give_up)
            if not self._wait_until(wake):
                break
            if self._clock() < self._next_contact:
                continue  # woke up to check the idle limit, not to ask
            try:
                reply = self._exchange(free_slots=1 if budget_left else 0)
            except ServerUnavailable as exc:
                self._failures += 1
                wait = min(self.options.max_backoff, 2.0 ** min(self._failures, 20))
                log.warning("%s; asking again in %.0f s", exc, wait)
                self._next_contact = self._clock() + wait
                continue
            self._failures = 0
            if reply.tasks:
                self._last_work = self._clock()
        self._summary.stopped_by_signal = self._stop
        if self._state.queue or self._state.results:
            log.info("%d task(s) to run and %d result(s) to report are kept in %s for the next "
                     "run", len(self._state.queue), len(self._state.results), self.paths.data_dir)
        return self._summary

    def _announce(self) -> None:
        """Tell the portal what this machine is now (versions may have changed since attach)."""
        try:
            self.client.update_host(host_info(self.name or None))
        except ServerUnavailable as exc:
            log.warning("%s; carrying on, will report when it is back", exc)

    def _wait_until(self, when: float) -> bool:
        """Sleep until ``when`` in short steps so that a stop request is seen; False if stopped."""
        while not self._stop:
            left = when - self._clock()
            if left <= 0:
                return True
            self._sleep(min(left, 0.25))
        return False

    # -- one round trip ------------------------------------------------------------------------

    def _exchange(self, *, free_slots: int) -> SchedulerReply:
        state = self._state
        request = SchedulerRequest(
            results=list(state.results.values())[:REPORT_BATCH],
            acks=list(state.acks),
            in_progress=[t.result_id for t in state.queue],
            free_slots=free_slots,
            work_seconds=self.options.work_seconds * free_slots,
            datasets=sorted(self._cached_datasets())[:100],
        )
        reply = self.client.scheduler(request)  # raises ClientTooOld, AuthError, …
        sent_acks = set(request.acks)
        state.acks = [a for a in state.acks if a not in sent_acks]
        self._apply(reply, reported={r.result_id for r in request.results})
        delay = max(0.0, reply.request_delay)
        if not reply.tasks and free_slots:
            delay = max(delay, self.options.min_idle_delay)
        self._next_contact = self._clock() + delay
        return reply

    def _apply(self, reply: SchedulerReply, *, reported: set[int]) -> None:
        state = self._state
        for result_id in reply.accepted:
            if state.results.pop(result_id, None) is not None:
                self._summary.results_accepted += 1
                log.info("result %d accepted by the portal", result_id)
            _unlink(self.paths.results_dir / f"{result_id}.json")
        for entry in reply.rejected:
            result_id = int(entry.get("result_id", -1))
            if state.results.pop(result_id, None) is not None:
                self._summary.results_rejected += 1
                log.warning("result %d rejected by the portal: %s", result_id,
                            entry.get("reason", "no reason given"))
            _unlink(self.paths.results_dir / f"{result_id}.json")
        unanswered = reported & set(state.results)
        if unanswered:
            log.warning("the portal did not acknowledge result(s) %s; they will be sent again",
                        sorted(unanswered))
        for result_id in reply.abort:
            if result_id == self._running:
                self._abort_running = True  # stopped at its next generation boundary
                continue
            before = len(state.queue)
            state.queue = [t for t in state.queue if t.result_id != result_id]
            if len(state.queue) < before:
                log.info("task %d is no longer needed; dropped", result_id)
                _unlink(self.paths.tasks_dir / f"{result_id}.json")
        for task in reply.tasks:
            if task.result_id in {t.result_id for t in state.queue} or \
                    task.result_id in state.results:
                continue  # sent again (e.g. a lost reply); we already have it
            write_json_atomic(self.paths.tasks_dir / f"{task.result_id}.json", asdict(task))
            state.queue.append(task)
            state.acks.append(task.result_id)
            log.info("received task %d (%s, %s candle-evaluations, %.3g credit, due %s)",
                     task.result_id, task.name, f"{task.cost:,}", task.credit, task.deadline)
        if reply.reason == REASON_CLIENT_TOO_OLD:
            raise ClientTooOld(f"{reply.message or 'the portal refuses this client version'}; "
                               "upgrade with `pipx upgrade strategy-worker`",
                               code=REASON_CLIENT_TOO_OLD)
        if reply.reason == REASON_HOST_RETIRED:
            raise AuthError(f"{reply.message or 'this host was retired on the portal'}; "
                            "attach again to get a new host", code=REASON_HOST_RETIRED)
        said = (reply.reason, reply.message)
        if (not reply.tasks and reply.reason and reply.reason != REASON_NOT_ASKED
                and said != self._last_reason):
            log.info("no task: %s%s", reply.reason, f" ({reply.message})" if reply.message else "")
        self._last_reason = said if not reply.tasks else None

    # -- one task --------------------------------------------------------------------------------

    def _run_task(self, task: Task) -> None:
        if _deadline_passed(task.deadline):
            log.warning("task %d missed its deadline (%s) before it could run; dropped",
                        task.result_id, task.deadline)
            self._drop(task)
            return
        started_wall, started_cpu = time.perf_counter(), time.process_time()
        try:
            output = self._compute(task)
        except _Interrupted:
            log.info("stopped in the middle of task %d; it will start again on the next run",
                     task.result_id)
            return
        except _Aborted:
            log.info("task %d is no longer needed (the portal has its answer); stopped",
                     task.result_id)
            self._drop(task)
            return
        except ServerUnavailable as exc:
            self._failures += 1
            wait = min(self.options.max_backoff, 2.0 ** min(self._failures, 20))
            log.warning("task %d: %s; trying again in %.0f s", task.result_id, exc, wait)
            self._wait_until(self._clock() + wait)
            return
        except (TaskError, DataError) as exc:
            self._finish(task, ReportedResult(
                result_id=task.result_id, status="error", error=str(exc)[:2000],
                cpu_time=time.process_time() - started_cpu,
                wall_time=time.perf_counter() - started_wall))
            self._summary.tasks_failed += 1
            log.error("task %d failed: %s", task.result_id, exc)
            return
        self._finish(task, ReportedResult(
            result_id=task.result_id, status="success", output=output,
            cpu_time=time.process_time() - started_cpu,
            wall_time=time.perf_counter() - started_wall))
        top = output["top"][0]["fitness"] if output.get("top") else None
        log.info("task %d done in %.1f s: %d strategies evaluated, best fitness %s",
                 task.result_id, time.perf_counter() - started_wall, output["evaluated"],
                 "n/a" if top is None else f"{top:.3f}")

    def _finish(self, task: Task, result: ReportedResult) -> None:
        # The result reaches the disk before the task leaves it: a crash in between leaves
        # both, and the next run reports the result and drops the duplicate task.
        write_json_atomic(self.paths.results_dir / f"{task.result_id}.json", asdict(result))
        self._state.results[task.result_id] = result
        self._drop(task)
        self._summary.tasks_run += 1
        self._last_work = self._clock()

    def _drop(self, task: Task) -> None:
        self._state.queue = [t for t in self._state.queue if t.result_id != task.result_id]
        _unlink(self.paths.tasks_dir / f"{task.result_id}.json")

    def _compute(self, task: Task) -> dict[str, Any]:
        from .engine import Genome
        from .engine.ga import GASettings, IslandEpoch
        from .engine.space import SearchSpace

        p = task.payload
        try:
            if p.get("kind") != TASK_KIND:
                raise TaskError(f"unknown task kind {p.get('kind')!r}; this client runs "
                                f"{TASK_KIND!r} tasks (upgrade it if the portal moved on)")
            if p.get("engine") != ENGINE_FORMAT:
                raise TaskError(f"the task needs engine format {p.get('engine')!r}, this "
                                f"client has {ENGINE_FORMAT}; upgrade it")
            if p.get("dataset_sha256", task.dataset_sha256) != task.dataset_sha256:
                raise TaskError("the payload and the task name different data sets")
            start, stop = int(p["start"]), int(p["stop"])
            space = SearchSpace.from_dict(p["space"])
            settings = GASettings.from_dict(p["settings"])
            population = [Genome.from_dict(g) for g in p["start_population"]]
            seed, generations = int(p["seed"]), int(p["generations"])
        except (KeyError, TypeError, ValueError) as exc:  # engine errors are ValueErrors
            raise TaskError(f"task {task.result_id} has a payload this engine cannot use: "
                            f"{exc}") from None
        data = self._dataset(task)
        self._heartbeat(task)  # a long download must not leave the task unacknowledged
        if not 0 <= start < stop <= len(data):
            raise TaskError(f"bar range [{start}, {stop}) is outside the data set's "
                            f"{len(data)} bars")

        # What run_epoch() does, one generation at a time, so that a stop request, an abort
        # from the portal or a due acknowledgement is seen between generations. (run_epoch's
        # on_generation hook hands over a full checkpoint each time, whose cost grows with
        # every genome evaluated: too dear to pay per generation just to look at a flag.)
        self._running, self._abort_running = task.result_id, False
        try:
            epoch = IslandEpoch(data.slice(start, stop), space, settings, seed, population,
                                generations, threads=self.options.threads)
            while not epoch.done:
                if self._stop:
                    raise _Interrupted
                self._heartbeat(task)
                if self._abort_running:
                    raise _Aborted
                epoch.step()
            result = epoch.result()
        except ValueError as exc:  # EpochError, SpaceError, GenomeError, engine DataError
            raise TaskError(f"the engine refused task {task.result_id}: {exc}") from None
        finally:
            self._running = None
        return result.to_dict()

    def _heartbeat(self, task: Task) -> None:
        """While a long task runs, acknowledge it as soon as the portal may be asked again."""
        if not self._state.acks or self._clock() < self._next_contact:
            return
        try:
            self._exchange(free_slots=0)
        except WorkerError as exc:  # never let the portal stop a running epoch
            log.warning("could not acknowledge task %d yet: %s", task.result_id, exc)
            self._next_contact = self._clock() + min(self.options.max_backoff, 60.0)

    # -- data sets ------------------------------------------------------------------------------

    def _cached_datasets(self) -> set[str]:
        try:
            return {p.stem for p in self.paths.datasets_dir.glob("*.sahc")
                    if len(p.stem) == 64}
        except OSError:
            return set()

    def _dataset(self, task: Task) -> Any:
        from .datafile import read_candles

        sha = task.dataset_sha256.lower()
        if sha in self._datasets:
            return self._datasets[sha]
        path = self.paths.datasets_dir / f"{sha}.sahc"
        problem = ""
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            if not path.exists():
                log.info("downloading data set %s… (%s bytes)", sha[:12],
                         f"{task.dataset_size:,}")
                try:
                    self.client.download(task.dataset_url, path, expected_sha256=sha,
                                         expected_size=task.dataset_size or None)
                except DataError as exc:
                    problem = str(exc)
                    log.warning("attempt %d: %s", attempt, exc)
                    continue
            try:
                data = read_candles(path, expected_sha256=sha)
            except (ValueError, OSError) as exc:  # a corrupt or truncated cached file
                problem = f"the cached data set {path.name} is unusable: {exc}"
                log.warning("attempt %d: %s; deleting it", attempt, problem)
                _unlink(path)
                continue
            self._datasets = {sha: data}  # keep one data set in memory
            return data
        raise DataError(f"data set {sha[:12]}… could not be fetched intact after "
                        f"{DOWNLOAD_ATTEMPTS} attempts: {problem}")

    # -- state on disk --------------------------------------------------------------------------

    def _load_state(self) -> None:
        """Pick up what a previous run left: results to report, tasks to (re)start."""
        state = self._state
        for path in sorted(self.paths.results_dir.glob("*.json")):
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                result = ReportedResult(**raw)
            except (OSError, ValueError, TypeError) as exc:
                log.warning("ignoring unreadable result file %s: %s", path, exc)
                continue
            state.results[result.result_id] = result
        for path in sorted(self.paths.tasks_dir.glob("*.json")):
            try:
                task = Task.from_dict(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.warning("ignoring unreadable task file %s: %s", path, exc)
                continue
            if task.result_id in state.results:
                _unlink(path)  # finished before a crash; only the task file was left
                continue
            state.queue.append(task)
        if state.results or state.queue:
            log.info("found %d result(s) to report and %d task(s) to run from a previous run",
                     len(state.results), len(state.queue))


class _SignalScope:
    """SIGTERM/SIGINT ask the runner to stop; a second one aborts at once."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.runner.stopping:
            raise KeyboardInterrupt
        log.info("%s received: finishing cleanly (send it again to abort)",
                 signal.Signals(signum).name)
        self.runner.request_stop()

    def __enter__(self) -> _SignalScope:
        for signum in (signal.SIGINT, signal.SIGTERM):
            # Outside the main thread signal() raises ValueError: the caller stops us instead.
            with contextlib.suppress(ValueError):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _deadline_passed(deadline: str) -> bool:
    try:
        when = datetime.fromisoformat(deadline)
    except (TypeError, ValueError):
        return False  # unreadable: let the portal judge
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when <= datetime.now(UTC)


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not delete %s: %s", path, exc)


__all__ = ["RunOptions", "RunSummary", "Runner", "attach", "host_info", "run"]
