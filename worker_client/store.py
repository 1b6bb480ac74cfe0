"""The worker's state on disk: tasks, checkpoints, results, the host's speed and a status file.

Every write is atomic (``config.write_atomic``: temporary file, fsync, rename), so a crash or a
power cut leaves each file whole, old or new. The invariants that make a crash harmless:

* a task file exists from the moment the task is received until its result file exists;
* a result file exists from the moment the task finishes until the portal acknowledges it;
* a checkpoint belongs to a task file; one without its task is stale and deleted.

One ``run`` at a time may use a data directory: :meth:`WorkerStore.lock` takes an OS lock on a
file there (``fcntl`` on POSIX, ``msvcrt`` on Windows), released by the OS if the process dies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from .config import WorkerPaths, write_json_atomic
from .exceptions import ConfigError
from .protocol import ReportedResult, Task

log = logging.getLogger(__name__)

CHECKPOINT_MAGIC = b"SAHCKPT1\n"
STATUS_FILE = "status.json"
HOST_STATE_FILE = "host_state.json"
LOCK_FILE = "run.lock"


@dataclass(frozen=True)
class CheckpointInfo:
    """The small header in front of an epoch checkpoint."""

    generation: int
    generations: int
    evaluated: int
    cpu_time: float  # seconds of CPU spent on the task so far, over every run
    wall_time: float  # seconds of wall time spent computing so far

    @property
    def fraction_done(self) -> float:
        return epoch_fraction(self.generation, self.generations)


def epoch_fraction(generation: int, generations: int) -> float:
    """How far an epoch has come: the start population costs about one generation too."""
    return min(1.0, (generation + 1) / (generations + 1))


def encode_checkpoint(info: CheckpointInfo, state: bytes) -> bytes:
    header = json.dumps(asdict(info), sort_keys=True).encode()
    return CHECKPOINT_MAGIC + header + b"\n" + state


def decode_checkpoint(blob: bytes) -> tuple[CheckpointInfo, bytes]:
    """Raises ValueError for anything that is not a whole checkpoint."""
    if not blob.startswith(CHECKPOINT_MAGIC):
        raise ValueError("not a checkpoint file")
    header, sep, state = blob[len(CHECKPOINT_MAGIC):].partition(b"\n")
    if not sep:
        raise ValueError("checkpoint header is cut off")
    try:
        info = CheckpointInfo(**json.loads(header))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint header unreadable: {exc}") from None
    return info, state


class WorkerStore:
    """Files under the worker's data directory, one kind per sub-directory."""

    def __init__(self, paths: WorkerPaths) -> None:
        self.paths = paths
        self.checkpoints_dir = paths.data_dir / "checkpoints"

    def ensure(self) -> None:
        self.paths.ensure()
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- tasks -----------------------------------------------------------------------------------

    def task_path(self, result_id: int) -> Path:
        return self.paths.tasks_dir / f"{result_id}.json"

    def save_task(self, task: Task, received_at: float) -> None:
        write_json_atomic(self.task_path(task.result_id),
                          {**asdict(task), "received_at": received_at})

    def load_tasks(self) -> list[tuple[Task, float]]:
        """Tasks on disk with the time each was received, oldest first."""
        tasks = []
        for path in self.paths.tasks_dir.glob("*.json"):
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                tasks.append((Task.from_dict(raw), float(raw.get("received_at", 0.0))))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.warning("ignoring unreadable task file %s: %s", path, exc)
        tasks.sort(key=lambda pair: (pair[1], pair[0].result_id))
        return tasks

    def drop_task(self, result_id: int) -> None:
        """Forget a task: its file and its checkpoint."""
        _unlink(self.checkpoint_path(result_id))
        _unlink(self.task_path(result_id))

    # -- checkpoints -----------------------------------------------------------------------------

    def checkpoint_path(self, result_id: int) -> Path:
        return self.checkpoints_dir / f"{result_id}.ckpt"

    def checkpoint_info(self, result_id: int) -> CheckpointInfo | None:
        try:
            with open(self.checkpoint_path(result_id), "rb") as handle:
                head = handle.read(4096)
        except OSError:
            return None
        try:
            info, _ = decode_checkpoint(head)  # the header is all we need
        except ValueError:
            return None
        return info

    # -- results ---------------------------------------------------------------------------------

    def result_path(self, result_id: int) -> Path:
        return self.paths.results_dir / f"{result_id}.json"

    def load_results(self) -> dict[int, ReportedResult]:
        results = {}
        for path in sorted(self.paths.results_dir.glob("*.json")):
            result = self.read_result(path)
            if result is not None:
                results[result.result_id] = result
        return results

    def read_result(self, path: Path) -> ReportedResult | None:
        try:
            return ReportedResult(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring unreadable result file %s: %s", path, exc)
            return None

    def save_result(self, result: ReportedResult) -> None:
        write_json_atomic(self.result_path(result.result_id), asdict(result))

    def drop_result(self, result_id: int) -> None:
        _unlink(self.result_path(result_id))

    def tidy(self) -> None:
        """Delete what a crash can leave behind: tasks already finished, stale checkpoints."""
        finished = {p.stem for p in self.paths.results_dir.glob("*.json")}
        tasks = {p.stem for p in self.paths.tasks_dir.glob("*.json")}
        for stem in finished & tasks:
            _unlink(self.paths.tasks_dir / f"{stem}.json")
        for path in self.checkpoints_dir.glob("*.ckpt"):
            if path.stem not in tasks or path.stem in finished:
                _unlink(path)
        for directory in (self.paths.tasks_dir, self.paths.results_dir, self.checkpoints_dir):
            for leftover in directory.glob(".*.tmp"):  # an atomic write cut short
                if time.time() - _mtime(leftover) > 60:
                    _unlink(leftover)

    # -- the host's own figures, and what `status` reads -----------------------------------------

    def load_host_state(self) -> dict[str, Any]:
        try:
            raw = json.loads((self.paths.data_dir / HOST_STATE_FILE).read_text(encoding="utf-8"))
            return raw if isinstance(raw, dict) else {}
        except (OSError, ValueError):
            return {}

    def save_host_state(self, state: dict[str, Any]) -> None:
        write_json_atomic(self.paths.data_dir / HOST_STATE_FILE, state)

    def write_status(self, status: dict[str, Any]) -> None:
        # Not fsynced: a snapshot for `status`, rewritten every few seconds.
        path = self.paths.data_dir / STATUS_FILE
        tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(status, sort_keys=True, default=str), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            log.debug("could not write %s: %s", path, exc)

    def read_status(self) -> dict[str, Any] | None:
        try:
            raw = json.loads((self.paths.data_dir / STATUS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return raw if isinstance(raw, dict) else None

    # -- one run per data directory -------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the data directory for this process; ConfigError if another run holds it."""
        self.ensure()
        path = self.paths.data_dir / LOCK_FILE
        handle = open(path, "a+b")  # noqa: SIM115 - held for the whole run
        try:
            if not try_lock(handle):
                raise ConfigError(
                    f"another strategy-worker is already running with {self.paths.data_dir}; "
                    "stop it first, or give this one its own STRATEGY_WORKER_HOME")
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()).encode())
            handle.flush()
            yield
        finally:
            handle.close()  # closing releases the lock


def try_lock(handle: IO[bytes], *, blocking: bool = False) -> bool:
    """An exclusive OS lock on an open file: ``fcntl.flock`` or Windows' ``msvcrt.locking``."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        handle.seek(0)
        mode = msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK  # type: ignore[attr-defined]
        while True:
            try:
                msvcrt.locking(handle.fileno(), mode, 1)  # type: ignore[attr-defined]
                return True
            except OSError:
                if not blocking:
                    return False
                time.sleep(0.1)  # LK_LOCK gives up after 10 s; keep waiting
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not delete %s: %s", path, exc)
