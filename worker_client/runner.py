"""``strategy-worker run``: keep a buffer of tasks, run them on N cores, report every result.

One loop in the main process (the runner) and one child process per running task
(:mod:`worker_client.compute`). Each pass of the loop, a few times a second:

1. reads the children's progress and reaps the finished ones (a result on disk is kept until
   the portal acknowledges it; a crashed task is retried, then reported as an error);
2. starts queued tasks on free slots, in arrival order or earliest deadline first when a
   deadline is at risk (:mod:`worker_client.planning`), after fetching their data set;
3. talks to the portal when there is something to say and its ``request_delay`` has passed:
   results to report, tasks to acknowledge, work to ask for (enough seconds to fill the
   buffer at this host's measured speed), or a heartbeat with the progress of long tasks;
   when the portal cannot be reached it keeps computing and backs off, with jitter;
4. redraws the terminal display and rewrites the status file ``strategy-worker status`` reads.

SIGINT/SIGTERM stop it cleanly: each child checkpoints at its next generation boundary and
exits, within seconds; a second signal stops at once (the checkpoints on disk remain).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from . import EARLY_STOPS, __version__
from .client import PortalClient, RetryPolicy
from .compute import (
    EXIT_BAD_DATA,
    EXIT_FINISHED,
    EXIT_ORPHANED,
    EXIT_STOPPED,
    EXIT_STORAGE,
    PHASE_RUNNING,
    Job,
    Progress,
    start_method,
    task_main,
)
from .config import HostConfig, WorkerPaths, load_host_config
from .datasets import DatasetCache
from .display import FINISHED, QUEUED, STARTING, TaskView, WorkerView, make_display
from .exceptions import (
    AuthError,
    ClientTooOld,
    DataError,
    Interrupted,
    ProtocolError,
    ServerRefused,
    ServerUnavailable,
    StorageError,
    WorkerError,
    storage_error,
)
from .planning import PlannedTask, eta_seconds, plan, slot_queue, work_request
from .protocol import (
    MAX_IDS_PER_LIST,
    MAX_RESULTS_PER_REQUEST,
    REASON_CLIENT_TOO_OLD,
    REASON_HOST_RETIRED,
    REASON_NOT_ASKED,
    ReportedResult,
    SchedulerReply,
    SchedulerRequest,
    Task,
    TaskProgress,
    parse_deadline,
)
from .store import WorkerStore

log = logging.getLogger(__name__)

MAX_CRASHES = 3  # a task whose process dies this many times is reported as an error
TICK = 0.2  # seconds between passes of the loop
HEARTBEAT_SECONDS = 300.0  # tell the portal how running tasks progress at least this often
STATUS_SECONDS = 2.0
STOP_GRACE_SECONDS = 20.0  # children get this long to checkpoint before they are killed
SPEED_WEIGHT = 0.3  # of a new measurement in the host's running speed estimate


@dataclass(frozen=True)
class RunOptions:
    cpus: int | None = None  # task processes at once; None: all cores but one
    buffer_hours: float = 0.1  # work to hold per slot, in hours of this host's time
    threads: int = 1  # numba threads per task process
    checkpoint_interval: float = 5.0  # seconds of work between checkpoints
    cache_limit_mb: int = 2048  # the data set cache's size
    max_tasks: int | None = None  # stop once this many tasks have run and been reported
    exit_when_idle: float | None = None  # stop after this many seconds without a task
    min_idle_delay: float = 1.0  # never ask again sooner than this after "no work"
    max_backoff: float = 600.0  # longest wait while the portal is unreachable
    display: bool | None = None  # live display; None: when stderr is a terminal

    @property
    def slots(self) -> int:
        return self.cpus or max(1, (os.cpu_count() or 2) - 1)


@dataclass
class RunSummary:
    tasks_run: int = 0
    tasks_failed: int = 0
    results_accepted: int = 0
    results_rejected: int = 0
    stopped_by_signal: bool = False


@dataclass
class _Held:
    """A task received and not yet finished."""

    task: Task
    received_at: float  # wall clock, for arrival order across restarts
    deadline: datetime
    crashes: int = 0
    progress: Progress | None = None


@dataclass
class _Running:
    held: _Held
    process: Any  # multiprocessing.process.BaseProcess
    stop: Any  # multiprocessing Event
    aborted: bool = False


@dataclass
class _Session:
    accepted: int = 0
    credit_pending: float = 0.0
    credit_granted: float | None = None
    message: str = ""
    acks: list[int] = field(default_factory=list)


def run(*, options: RunOptions, paths: WorkerPaths | None = None,
        retry: RetryPolicy | None = None) -> RunSummary:
    """Run the attached host until stopped, idle, or out of ``max_tasks``."""
    paths = paths or WorkerPaths.default()
    config = load_host_config(paths)
    store = WorkerStore(paths)
    try:
        return _run_locked(store, config, options, retry)
    except OSError as exc:  # our own files (the lock, the directories), not the network
        raise storage_error(exc, paths.data_dir) from None


def _run_locked(store: WorkerStore, config: HostConfig, options: RunOptions,
                retry: RetryPolicy | None) -> RunSummary:
    with store.lock():
        # Few quick retries per call: the loop itself backs off and keeps computing meanwhile.
        retry = retry or RetryPolicy(attempts=2, base=0.5, cap=2.0)
        with PortalClient(config.server, config.token, retry=retry) as client:
            runner = Runner(client, store, options, name=config.name)
            with runner.signals_handled():
                return runner.run()


class Runner:
    """The loop. ``clock`` and ``sleep`` are injectable so tests control time."""

    def __init__(self, client: PortalClient, store: WorkerStore, options: RunOptions, *,
                 name: str = "", clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.store = store
        self.options = options
        self.name = name
        self.slots = options.slots
        self.cache = DatasetCache(store.paths.datasets_dir,
                                  limit_bytes=options.cache_limit_mb * 2**20)
        self._clock = clock
        self._sleep = sleep
        self._rng = random.Random()
        self._context: Any = multiprocessing.get_context(start_method())
        self._progress_queue: Any = None
        self._held: dict[int, _Held] = {}
        self._running: dict[int, _Running] = {}
        self._results: dict[int, ReportedResult] = {}
        self._finished_views: dict[int, TaskView] = {}  # finished this run, not yet acknowledged
        self._credit_of: dict[int, float] = {}  # credit each task earns if validated
        self._session = _Session()
        self._summary = RunSummary()
        self._stop = False
        self._next_contact = 0.0
        self._last_heartbeat = clock()
        self._failures = 0  # calls in a row that found the portal unreachable
        # Until the portal has heard this run's complete list of tasks once, there is
        # something to say: tasks a previous run lost come back (see ``_holding``).
        self._synced = False
        self._download_after = 0.0  # no download before this clock time (backing off)
        self._last_work = clock()
        self._last_reason: tuple[str | None, str] | None = None
        self._last_status = 0.0
        self._last_credit_check = -1e9
        self.speed = float(store.load_host_state().get("speed") or 0.0)

    # -- stopping ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop = True

    @property
    def stopping(self) -> bool:
        return self._stop

    def signals_handled(self) -> _SignalScope:
        return _SignalScope(self)

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> RunSummary:
        self.store.ensure()
        self.store.tidy()
        self._load_state()
        if self._context.get_start_method() == "forkserver":
            self._context.set_forkserver_preload(["worker_client.compute",
                                                  "worker_client.engine"])
        self._progress_queue = self._context.Queue()
        self._announce()
        display = make_display(plain=None if self.options.display is None
                               else not self.options.display)
        try:
            with display:
                while not self._stop:
                    self._pass()
                    display.update(self._view())
                    if self._finished():
                        break
                    self._sleep(TICK)
        finally:
            self._stop_children()
            self._write_status()
        self._summary.stopped_by_signal = self._stop
        if self._held or self._results:
            log.info("%d task(s) to run and %d result(s) to report are kept in %s for the next "
                     "run", len(self._held), len(self._results), self.store.paths.data_dir)
        return self._summary

    def _pass(self) -> None:
        try:
            self._pass_once()
        except OSError as exc:  # our own files: tasks, results, the cache
            raise storage_error(exc, self.store.paths.data_dir) from None

    def _pass_once(self) -> None:
        self._read_progress()
        self._reap()
        self._start_tasks()
        if self._clock() >= self._next_contact and self._has_something_to_say():
            self._contact()
        if self._clock() - self._last_status >= STATUS_SECONDS:
            self._write_status()

    def _finished(self) -> bool:
        """The stop options: ``--max-tasks`` done and reported, or ``--exit-when-idle``."""
        if self.options.max_tasks is not None and self._summary.tasks_run >= \
                self.options.max_tasks and not self._running and not self._results:
            log.info("ran %d task(s) and every result is acknowledged; stopping",
                     self._summary.tasks_run)
            return True
        if self.options.exit_when_idle is not None and not self._held:
            # Nothing to compute for that long; results not yet reported stay on disk.
            idle = self._clock() - self._last_work
            if idle >= self.options.exit_when_idle:
                log.info("no work for %.0f s; stopping (--exit-when-idle)", idle)
                return True
        return False

    def _budget_left(self) -> bool:
        return (self.options.max_tasks is None
                or self._summary.tasks_run + len(self._held) < self.options.max_tasks)

    # -- children -------------------------------------------------------------------------------

    def _read_progress(self) -> None:
        while True:
            try:
                progress: Progress = self._progress_queue.get_nowait()
            except Exception:  # queue.Empty, or a queue broken by a killed child
                return
            held = self._held.get(progress.result_id)
            if held is not None:
                held.progress = progress

    def _reap(self) -> None:
        for result_id, running in list(self._running.items()):
            if running.process.is_alive():
                continue
            running.process.join()
            code = running.process.exitcode
            del self._running[result_id]
            self._child_exited(running, code)

    def _child_exited(self, running: _Running, code: int | None) -> None:
        held = running.held
        rid = held.task.result_id
        if running.aborted:
            log.info("task %d is no longer needed (the portal has its answer); stopped", rid)
            self._forget(rid)
            self.store.drop_result(rid)  # had it finished meanwhile, no one wants it now
            return
        if code == EXIT_FINISHED:
            result = self.store.read_result(self.store.result_path(rid))
            if result is not None:
                self._finished_task(held, result)
                return
            code = -1  # exited 0 without a result: treat it as a crash
        if code in (EXIT_STOPPED, EXIT_ORPHANED):
            return  # checkpointed: runs again from there
        if code == EXIT_STORAGE:
            raise StorageError(
                f"task {rid} could not write its checkpoint or result in "
                f"{self.store.paths.data_dir} (the disk is full or read-only); free some space "
                "and run again — the tasks and results already saved there are kept")
        if code == EXIT_BAD_DATA:
            log.warning("data set %s… failed its check; fetching it again",
                        held.task.dataset_sha256[:12])
            self.cache.discard(held.task.dataset_sha256)
        held.crashes += 1
        if held.crashes < MAX_CRASHES:
            log.warning("task %d stopped unexpectedly (exit code %s); trying again", rid, code)
            return
        error = ReportedResult(result_id=rid, status="error",
                               error=f"the task process failed {held.crashes} times "
                                     f"(last exit code {code})")
        self.store.save_result(error)
        self._finished_task(held, error)

    def _finished_task(self, held: _Held, result: ReportedResult) -> None:
        rid = held.task.result_id
        # The result is on disk (written by the child) before the task is forgotten.
        self._results[rid] = result
        generations = held.progress.generations if held.progress else 0
        self._finished_views[rid] = TaskView(
            result_id=rid, name=held.task.name, state=FINISHED, fraction_done=1.0,
            generation=generations, generations=generations, speed=0.0, eta_seconds=None,
            deadline=held.deadline, credit=held.task.credit)
        self._forget(rid)
        self._summary.tasks_run += 1
        self._last_work = self._clock()
        if result.status == "success":
            self._learn_speed(held, result)
            top = (result.output or {}).get("top") or [{}]
            log.info("task %d done in %.1f s: %s strategies evaluated, best fitness %s", rid,
                     result.wall_time, f"{(result.output or {}).get('evaluated', 0):,}",
                     _fmt(top[0].get("fitness")))
        else:
            self._summary.tasks_failed += 1
            log.error("task %d failed: %s", rid, result.error)
        self._next_contact = min(self._next_contact, self._clock())  # report it soon

    def _forget(self, result_id: int) -> None:
        self._held.pop(result_id, None)
        self.store.drop_task(result_id)

    def _learn_speed(self, held: _Held, result: ReportedResult) -> None:
        progress = held.progress
        if progress is None or not progress.bars or result.wall_time <= 0.5:
            return  # too short to measure anything but start-up
        evaluated = int((result.output or {}).get("evaluated") or progress.evaluated)
        sample = evaluated * progress.bars / result.wall_time
        self.speed = sample if self.speed <= 0 else (
            (1 - SPEED_WEIGHT) * self.speed + SPEED_WEIGHT * sample)
        state = self.store.load_host_state()
        state.update(speed=self.speed, speed_source="tasks",
                     measured_at=datetime.now(UTC).isoformat())
        self.store.save_host_state(state)

    def _start_tasks(self) -> None:
        if self._stop or self._clock() < self._download_after:
            return
        queued = [h for rid, h in self._held.items() if rid not in self._running]
        if not queued or len(self._running) >= self.slots:
            return
        order = plan(queued=[_planned(h) for h in queued],
                     running=[_planned(r.held) for r in self._running.values()],
                     slots=self.slots, speed=self.speed).order
        for rid in order:
            if len(self._running) >= self.slots or self._stop or \
                    self._clock() < self._download_after:
                return
            held = self._held[rid]
            started = held.progress is not None or self.store.checkpoint_info(rid) is not None
            if held.deadline <= datetime.now(UTC) and not started:
                # BOINC's rule: an unstarted task past its deadline is not worth starting.
                log.warning("task %d missed its deadline (%s) before it could start; dropped",
                            rid, held.task.deadline)
                self._forget(rid)
                continue
            self._start(held)

    def _start(self, held: _Held) -> None:
        task = held.task
        try:
            path = self.cache.fetch(self.client, sha256=task.dataset_sha256,
                                    url=task.dataset_url, size=task.dataset_size,
                                    should_stop=lambda: self._stop)
        except Interrupted:
            return  # stopping: the task stays queued for the next run
        except ServerUnavailable as exc:
            self._download_after = self._clock() + self._backoff()
            self._session.message = "data set download failed; trying again in " \
                f"{self._download_after - self._clock():.0f} s"
            log.warning("%s; %s", exc, self._session.message)
            return
        except DataError as exc:
            error = ReportedResult(result_id=task.result_id, status="error", error=str(exc))
            self.store.save_result(error)
            self._finished_task(held, error)
            return
        self.cache.evict(keep={h.task.dataset_sha256 for h in self._held.values()})
        job = Job(result_id=task.result_id, payload=task.payload,
                  dataset_sha256=task.dataset_sha256.lower(), dataset_path=str(path),
                  checkpoint_path=str(self.store.checkpoint_path(task.result_id)),
                  result_path=str(self.store.result_path(task.result_id)),
                  threads=self.options.threads,
                  checkpoint_interval=self.options.checkpoint_interval)
        stop = self._context.Event()
        process = self._context.Process(target=task_main, args=(job, stop, self._progress_queue),
                                        name=f"task-{task.result_id}", daemon=True)
        process.start()
        self._running[task.result_id] = _Running(held=held, process=process, stop=stop)
        log.info("task %d started (%s)", task.result_id, task.name)

    def _stop_children(self) -> None:
        for running in self._running.values():
            running.stop.set()
        deadline = self._clock() + STOP_GRACE_SECONDS
        for running in list(self._running.values()):
            # Keep reading their queue meanwhile: a child exits only once its reports are out.
            while running.process.is_alive() and self._clock() < deadline:
                self._read_progress()
                running.process.join(0.1)
            if running.process.is_alive():
                log.warning("task %d did not stop in time; killed (its last checkpoint stays)",
                            running.held.task.result_id)
                running.process.kill()
                running.process.join(5)
        self._read_progress()
        self._reap()  # a task that finished meanwhile keeps its result

    # -- the portal ------------------------------------------------------------------------------

    def _backoff(self) -> float:
        """The next wait after a failed call: exponential, capped, with jitter (equal jitter:
        a thousand hosts cut off together do not come back in the same second)."""
        self._failures += 1
        wait = min(self.options.max_backoff, 2.0 ** min(self._failures, 20))
        return wait / 2 + self._rng.uniform(0, wait / 2)

    def _has_something_to_say(self) -> bool:
        if self._results or self._session.acks or not self._synced:
            return True
        if self._running and self._clock() - self._last_heartbeat >= HEARTBEAT_SECONDS:
            return True
        free_slots, _ = self._work_request()
        return free_slots > 0

    def _work_request(self) -> tuple[int, float]:
        if self._stop or not self._budget_left():
            return 0, 0.0
        free_slots, seconds = work_request(
            slots=self.slots, buffer_seconds=self.options.buffer_hours * 3600,
            held=[_planned(h) for h in self._held.values()], speed=self.speed)
        if self.options.max_tasks is not None:
            free_slots = min(free_slots, self.options.max_tasks - self._summary.tasks_run
                             - len(self._held))
        return max(0, free_slots), seconds

    def _slot_queue(self) -> list[float]:
        """Work queued per slot, the queued tasks in the order they will start."""
        queued = [_planned(h) for rid, h in self._held.items() if rid not in self._running]
        running = [_planned(r.held) for r in self._running.values()]
        order = plan(queued=queued, running=running, slots=self.slots, speed=self.speed).order
        by_id = {t.result_id: t for t in queued}
        return [round(seconds, 1) for seconds in slot_queue(
            queued=[by_id[rid] for rid in order], running=running, slots=self.slots,
            speed=self.speed)]

    def _holding(self, reported: set[int]) -> tuple[list[int], bool]:
        """The ``in_progress`` list of a request that reports ``reported`` (the tasks this
        runner holds, queued or running), and whether the request accounts for every task the
        portal sent: the list and the reports together. ``_held`` and ``_results`` mirror the
        task and result files, so a task the portal sent that is in neither was never saved
        here: the portal sends it again. Not complete while finished results wait beyond this
        request's reports (listed as in progress, one whose work unit is decided would be
        released as not needed before it could be reported, and its credit lost), nor when the
        list is cut to the protocol's limit."""
        ids = sorted(self._held)
        waiting = set(self._results) - reported
        return ids[:MAX_IDS_PER_LIST], len(ids) <= MAX_IDS_PER_LIST and not waiting

    def _contact(self) -> None:
        free_slots, work_seconds = self._work_request()
        results = list(self._results.values())[:MAX_RESULTS_PER_REQUEST]
        in_progress, complete = self._holding({r.result_id for r in results})
        request = SchedulerRequest(
            results=results,
            acks=list(self._session.acks)[:MAX_IDS_PER_LIST],
            in_progress=in_progress,
            in_progress_complete=complete,
            progress=[TaskProgress(rid, round(h.progress.fraction_done, 4))
                      for rid, h in sorted(self._held.items()) if h.progress is not None],
            free_slots=free_slots,
            work_seconds=work_seconds if free_slots else 0.0,
            slot_queue_seconds=self._slot_queue() if free_slots else [],
            datasets=sorted(self.cache.held())[:100],
        )
        try:
            reply = self.client.scheduler(request)
        except (AuthError, ClientTooOld):
            raise  # the volunteer must act: attach again, or upgrade
        except (ServerUnavailable, ProtocolError, ServerRefused) as exc:
            # Unreachable, or something between us answers nonsense (a proxy, a captive
            # portal): compute on and ask again later.
            wait = self._backoff()
            self._session.message = f"portal unreachable; trying again in {wait:.0f} s"
            log.warning("%s; computing on, trying again in %.0f s", exc, wait)
            self._next_contact = self._clock() + wait
            return
        self._failures = 0
        self._synced = True
        self._download_after = 0.0
        self._last_heartbeat = self._clock()
        sent_acks = set(request.acks)
        self._session.acks = [a for a in self._session.acks if a not in sent_acks]
        self._apply(reply, reported={r.result_id for r in request.results})
        delay = max(0.0, reply.request_delay)
        if not reply.tasks and free_slots:
            delay = max(delay, self.options.min_idle_delay)
        self._next_contact = self._clock() + delay
        if reply.tasks:
            self._last_work = self._clock()
        self._check_credit()

    def _apply(self, reply: SchedulerReply, *, reported: set[int]) -> None:
        for result_id in reply.accepted:
            result = self._results.pop(result_id, None)
            self._finished_views.pop(result_id, None)
            if result is not None:
                self._summary.results_accepted += 1
                self._session.accepted += 1
                if result.status == "success":
                    self._session.credit_pending += self._credit_of.pop(result_id, 0.0)
                log.info("result %d accepted by the portal", result_id)
            self.store.drop_result(result_id)
        for entry in reply.rejected:
            result_id = int(entry.get("result_id", -1))
            self._finished_views.pop(result_id, None)
            if self._results.pop(result_id, None) is not None:
                self._summary.results_rejected += 1
                log.warning("result %d rejected by the portal: %s", result_id,
                            entry.get("reason", "no reason given"))
            self.store.drop_result(result_id)
        unanswered = reported & set(self._results)
        if unanswered:
            log.warning("the portal did not acknowledge result(s) %s; they will be sent again",
                        sorted(unanswered))
        for result_id in reply.abort:
            running = self._running.get(result_id)
            if running is not None:
                running.aborted = True
                running.stop.set()  # checkpoints and exits; then forgotten
            elif result_id in self._held:
                log.info("task %d is no longer needed; dropped", result_id)
                self._forget(result_id)
        for task in reply.tasks:
            if task.result_id in self._held or task.result_id in self._results:
                # Sent again although we hold it (a retried call whose first reply did reach
                # us): keep what we have, and confirm it again, since a re-sent task counts as
                # unconfirmed on the portal until acknowledged.
                if task.result_id in self._held and task.result_id not in self._session.acks:
                    self._session.acks.append(task.result_id)
                continue
            received = time.time()
            self.store.save_task(task, received)
            self._held[task.result_id] = _Held(task, received, _deadline(task.deadline))
            self._credit_of[task.result_id] = task.credit
            self._session.acks.append(task.result_id)
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
            self._session.message = f"no task: {reply.reason}" + (
                f" ({reply.message})" if reply.message else "")
            log.info("%s", self._session.message)
        elif reply.tasks:
            self._session.message = f"received {len(reply.tasks)} task(s)"
        self._last_reason = said if not reply.tasks else None

    def _check_credit(self) -> None:
        """The host's granted credit, from the portal, every few minutes."""
        if self._clock() - self._last_credit_check < 120:
            return
        self._last_credit_check = self._clock()
        try:
            self._session.credit_granted = float(self.client.host_status()["total_credit"])
        except (WorkerError, KeyError, TypeError, ValueError) as exc:
            log.debug("could not read the host's credit: %s", exc)

    def _announce(self) -> None:
        """Tell the portal what this machine is now (versions may have changed since attach)."""
        from .host import host_info

        try:
            self.client.update_host(host_info(self.name or None, speed=self.speed))
        except ServerUnavailable as exc:
            log.warning("%s; carrying on, will report when it is back", exc)

    # -- state ----------------------------------------------------------------------------------

    def _load_state(self) -> None:
        """Pick up what a previous run left: results to report, tasks to resume."""
        self._results = self.store.load_results()
        for task, received in self.store.load_tasks():
            if task.result_id in self._results:
                continue
            self._held[task.result_id] = _Held(task, received, _deadline(task.deadline))
            self._credit_of[task.result_id] = task.credit
        if self._results or self._held:
            resumable = sum(1 for rid in self._held
                            if self.store.checkpoint_info(rid) is not None)
            log.info("found %d result(s) to report and %d task(s) to run (%d from a checkpoint) "
                     "from a previous run", len(self._results), len(self._held), resumable)

    def _tasks_view(self) -> tuple[TaskView, ...]:
        views = []
        for rid, held in self._held.items():
            progress = held.progress
            state = QUEUED if rid not in self._running else (
                progress.phase if progress else STARTING)
            info = self.store.checkpoint_info(rid) if progress is None else None
            fraction = progress.fraction_done if progress else (
                info.fraction_done if info else 0.0)
            speed = (progress.evaluated * progress.bars / progress.seconds
                     if progress and progress.seconds > 0 and progress.bars else 0.0)
            views.append(TaskView(
                result_id=rid, name=held.task.name, state=state, fraction_done=fraction,
                generation=progress.generation if progress else (info.generation if info else 0),
                generations=progress.generations if progress else (
                    info.generations if info else 0),
                speed=speed,
                eta_seconds=eta_seconds(fraction_done=fraction, elapsed=progress.seconds)
                if progress and progress.phase == PHASE_RUNNING else None,
                deadline=held.deadline, credit=held.task.credit))
        return (*views, *(view for rid, view in self._finished_views.items()
                          if rid in self._results))

    def _view(self) -> WorkerView:
        return WorkerView(
            server=self.client.server, host_name=self.name, slots=self.slots,
            tasks=self._tasks_view(), results_waiting=len(self._results),
            results_accepted=self._session.accepted,
            credit_pending=self._session.credit_pending,
            credit_granted=self._session.credit_granted, speed=self.speed,
            message=self._session.message, now=datetime.now(UTC))

    def _write_status(self) -> None:
        self._last_status = self._clock()
        view = self._view()
        self.store.write_status({
            "pid": os.getpid(), "version": __version__, "updated": view.now.isoformat(),
            "server": view.server, "slots": view.slots, "speed": view.speed,
            "results_waiting": view.results_waiting, "results_accepted": view.results_accepted,
            "credit_pending": view.credit_pending, "credit_granted": view.credit_granted,
            "message": view.message,
            "tasks": [{"result_id": t.result_id, "name": t.name, "state": t.state,
                       "fraction_done": t.fraction_done, "generation": t.generation,
                       "generations": t.generations, "deadline": t.deadline.isoformat(),
                       "eta_seconds": t.eta_seconds, "credit": t.credit} for t in view.tasks],
        })


def _planned(held: _Held) -> PlannedTask:
    return PlannedTask(result_id=held.task.result_id, deadline=held.deadline,
                       cost=float(held.task.cost),
                       fraction_done=held.progress.fraction_done if held.progress else 0.0)


def _deadline(text: str) -> datetime:
    # Unreadable: never treated as passed; the portal judges.
    return parse_deadline(text) or datetime.max.replace(tzinfo=UTC)


def _fmt(value: Any) -> str:
    return "n/a" if not isinstance(value, int | float) else f"{value:.3f}"


class _SignalScope:
    """SIGTERM/SIGINT ask the runner to stop; a second one stops at once."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.runner.stopping:
            raise KeyboardInterrupt
        log.info("%s received: checkpointing and stopping (send it again to stop at once)",
                 signal.Signals(signum).name)
        self.runner.request_stop()

    def __enter__(self) -> _SignalScope:
        for signum in (signal.SIGINT, signal.SIGTERM):
            # Outside the main thread signal() raises ValueError: the caller stops us instead.
            with contextlib.suppress(ValueError):
                self._previous[signum] = signal.signal(signum, self._handle)
        if EARLY_STOPS:  # asked to stop while starting: a clean stop before any work
            log.info("stop requested while starting; stopping")
            self.runner.request_stop()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


__all__ = ["RunOptions", "RunSummary", "Runner", "run"]
