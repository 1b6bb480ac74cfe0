"""One task in its own process: read the data set, run the island epoch, checkpoint, finish.

The runner starts :func:`task_main` in a child process per task (one per slot), so tasks use
several cores without sharing an interpreter, and a crash in one never takes down the others
or the runner. The child talks back through a queue (progress) and files (checkpoints and the
result, both written atomically); the runner stops it through an event.

* Every ``checkpoint_interval`` seconds of work, after a whole generation, the epoch's state
  (population, RNG state, generation, every genome evaluated) goes to the checkpoint file. A
  run started again, after a stop, ``kill -9`` or a power cut, resumes from it; the answer is
  bit-identical to an uninterrupted run's (the engine is deterministic and the state complete).
* On stop (the event) or when the runner has died, the child checkpoints and exits.
* The finished result is written before the checkpoint is deleted.

A task is data: this module hands the payload to the client's own engine, nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import write_atomic, write_json_atomic
from .exceptions import TaskError
from .protocol import ENGINE_FORMAT, TASK_KIND, ReportedResult
from .store import CheckpointInfo, decode_checkpoint, encode_checkpoint, epoch_fraction

log = logging.getLogger(__name__)

# Exit codes of a task process, read by the runner.
EXIT_FINISHED = 0  # the result file is written (success or a task error)
EXIT_STOPPED = 3  # checkpointed and stopped on request: run it again later
EXIT_BAD_DATA = 4  # the cached data set failed its checks: fetch it again, then rerun
EXIT_ORPHANED = 5  # the runner died: checkpointed and stopped
EXIT_STORAGE = 6  # a checkpoint or the result could not be written (disk full, read-only)

PHASE_LOADING = "loading"
PHASE_RUNNING = "running"
PHASE_CHECKPOINTING = "checkpointing"


@dataclass(frozen=True)
class Job:
    """Everything a task process needs; picklable, so it crosses to a spawned process."""

    result_id: int
    payload: dict[str, Any]
    dataset_sha256: str
    dataset_path: str
    checkpoint_path: str
    result_path: str
    threads: int = 1
    checkpoint_interval: float = 5.0  # seconds of work between checkpoints


@dataclass(frozen=True)
class Progress:
    """What a task process tells the runner after each generation."""

    result_id: int
    phase: str
    generation: int
    generations: int
    evaluated: int  # distinct strategies backtested so far in this epoch
    bars: int  # bars in the task's range: evaluated × bars is the work done
    seconds: float  # wall seconds spent computing this task so far, every run included

    @property
    def fraction_done(self) -> float:
        return epoch_fraction(self.generation, self.generations) if self.bars else 0.0


@dataclass(frozen=True)
class EpochSpec:
    """A validated island-epoch payload."""

    start: int
    stop: int
    seed: int
    generations: int
    space: Any
    settings: Any
    population: list[Any]


def parse_payload(payload: dict[str, Any], *, dataset_sha256: str) -> EpochSpec:
    """Check a task payload and turn it into engine objects; TaskError names what is wrong."""
    from .engine import Genome
    from .engine.ga import GASettings
    from .engine.space import SearchSpace

    if not isinstance(payload, dict):
        raise TaskError("the task payload is not an object")
    if payload.get("kind") != TASK_KIND:
        raise TaskError(f"unknown task kind {payload.get('kind')!r}; this client runs "
                        f"{TASK_KIND!r} tasks (upgrade it if the portal moved on)")
    if payload.get("engine") != ENGINE_FORMAT:
        raise TaskError(f"the task needs engine format {payload.get('engine')!r}, this client "
                        f"has {ENGINE_FORMAT}; upgrade it")
    if payload.get("dataset_sha256", dataset_sha256) != dataset_sha256:
        raise TaskError("the payload and the task name different data sets")
    try:
        return EpochSpec(
            start=int(payload["start"]), stop=int(payload["stop"]), seed=int(payload["seed"]),
            generations=int(payload["generations"]),
            space=SearchSpace.from_dict(payload["space"]),
            settings=GASettings.from_dict(payload["settings"]),
            population=[Genome.from_dict(g) for g in payload["start_population"]])
    except (KeyError, TypeError, ValueError) as exc:  # engine errors are ValueErrors
        raise TaskError(f"the payload cannot be used by this engine: {exc}") from None


def task_main(job: Job, stop: Any, progress: Any) -> None:
    """The body of a task process (``multiprocessing`` target): exits with an ``EXIT_*`` code."""
    # Ctrl-C in a terminal reaches the whole process group: only the runner decides.
    with contextlib.suppress(ValueError, AttributeError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM sent to the whole group (a service manager stopping us): checkpoint, then exit.
    terminated: list[int] = []
    with contextlib.suppress(ValueError, AttributeError):
        signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
    # Progress reports are advisory: never let unsent ones keep this process from exiting.
    progress.cancel_join_thread()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s task %(process)d: %(message)s")
    sys.exit(run_job(job, should_stop=lambda: bool(terminated) or stop.is_set() or _orphaned(),
                     report=progress.put))


def run_job(job: Job, *, should_stop: Any, report: Any, clock: Any = time.monotonic) -> int:
    """Run (or resume) one task; returns an ``EXIT_*`` code. Used in-process by tests too."""
    from .datafile import DataFileError, read_candles
    from .engine.ga import EpochState, IslandEpoch

    started_wall, started_cpu = clock(), time.process_time()
    spent_wall = spent_cpu = 0.0

    def finish(result: ReportedResult) -> int:
        try:
            write_json_atomic(Path(job.result_path), asdict(result))
        except OSError as exc:
            log.error("cannot write the result of task %d: %s", job.result_id, exc)
            return EXIT_STORAGE
        with contextlib.suppress(OSError):
            Path(job.checkpoint_path).unlink(missing_ok=True)
        return EXIT_FINISHED

    def failed(message: str) -> int:
        return finish(ReportedResult(
            result_id=job.result_id, status="error", error=message[:2000],
            cpu_time=spent_cpu + time.process_time() - started_cpu,
            wall_time=spent_wall + clock() - started_wall))

    try:
        spec = parse_payload(job.payload, dataset_sha256=job.dataset_sha256)
    except TaskError as exc:
        return failed(str(exc))
    report(Progress(job.result_id, PHASE_LOADING, 0, spec.generations, 0, 0, 0.0))
    try:
        data = read_candles(job.dataset_path, expected_sha256=job.dataset_sha256)
    except (DataFileError, OSError) as exc:
        log.warning("data set unusable: %s", exc)
        return EXIT_BAD_DATA
    if not 0 <= spec.start < spec.stop <= len(data):
        return failed(f"bar range [{spec.start}, {spec.stop}) is outside the data set's "
                      f"{len(data)} bars")
    bars = spec.stop - spec.start

    checkpoint = None
    try:
        info, state = decode_checkpoint(Path(job.checkpoint_path).read_bytes())
        checkpoint = EpochState.from_bytes(state)
        spent_wall, spent_cpu = info.wall_time, info.cpu_time
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.warning("checkpoint of task %d unusable (%s); starting it again", job.result_id, exc)

    def build(resume: Any) -> Any:
        return IslandEpoch(data.slice(spec.start, spec.stop), spec.space, spec.settings,
                           spec.seed, spec.population, spec.generations,
                           checkpoint=resume, threads=job.threads)

    try:
        try:
            epoch = build(checkpoint)
        except ValueError as exc:
            if checkpoint is None:
                raise
            log.warning("checkpoint of task %d refused (%s); starting it again",
                        job.result_id, exc)
            spent_wall = spent_cpu = 0.0
            epoch = build(None)

        def elapsed() -> float:
            return spent_wall + clock() - started_wall

        def tell(phase: str) -> None:
            report(Progress(job.result_id, phase, epoch.generation, spec.generations,
                            epoch.evaluated, bars, elapsed()))

        def save() -> None:
            tell(PHASE_CHECKPOINTING)
            info = CheckpointInfo(
                generation=epoch.generation, generations=spec.generations,
                evaluated=epoch.evaluated, wall_time=elapsed(),
                cpu_time=spent_cpu + time.process_time() - started_cpu)
            write_atomic(Path(job.checkpoint_path),
                         encode_checkpoint(info, epoch.state.to_bytes()))

        last_checkpoint = clock()
        tell(PHASE_RUNNING)
        while not epoch.done:
            if should_stop():
                save()
                return EXIT_ORPHANED if _orphaned() else EXIT_STOPPED
            epoch.step()
            tell(PHASE_RUNNING)
            if clock() - last_checkpoint >= job.checkpoint_interval and not epoch.done:
                save()
                last_checkpoint = clock()
        output = epoch.result().to_dict()
    except ValueError as exc:  # EpochError, SpaceError, GenomeError, engine DataError
        return failed(f"the engine refused the task: {exc}")
    except OSError as exc:  # the checkpoint could not be written; the last whole one stays
        log.error("cannot write the checkpoint of task %d: %s", job.result_id, exc)
        return EXIT_STORAGE
    return finish(ReportedResult(
        result_id=job.result_id, status="success", output=output,
        cpu_time=spent_cpu + time.process_time() - started_cpu, wall_time=elapsed()))


def _orphaned() -> bool:
    """True once the runner that started this process is gone (killed, crashed)."""
    parent = multiprocessing.parent_process()
    return parent is not None and not parent.is_alive()


def start_method() -> str:
    """``forkserver`` where it exists (a warm, clean parent: fast starts, no inherited
    threads); ``spawn`` on Windows."""
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods and os.name == "posix" else "spawn"
