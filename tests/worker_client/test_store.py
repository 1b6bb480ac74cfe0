"""The worker's files: one run per data directory, and what a crash leaves is tidied."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from worker_client.config import HOME_ENV, WorkerPaths
from worker_client.exceptions import ConfigError
from worker_client.protocol import ReportedResult, Task
from worker_client.store import CheckpointInfo, WorkerStore, decode_checkpoint, encode_checkpoint


@pytest.fixture
def store(tmp_path):
    store = WorkerStore(WorkerPaths.default({HOME_ENV: str(tmp_path)}))
    store.ensure()
    return store


def _task(rid: int) -> Task:
    return Task(result_id=rid, name=f"t{rid}", payload={}, dataset_sha256="0" * 64,
                dataset_url="/x/", dataset_size=1, deadline="2999-01-01T00:00:00+00:00",
                credit=1.0, cost=1)


def test_a_second_run_on_the_same_directory_is_refused_even_from_another_process(store,
                                                                                 tmp_path):
    with store.lock():
        with pytest.raises(ConfigError, match="already running"), store.lock():
            pass
        other = subprocess.run(
            [sys.executable, "-c",
             "import sys; from worker_client.config import WorkerPaths; "
             "from worker_client.store import WorkerStore; "
             f"s = WorkerStore(WorkerPaths.default({{'{HOME_ENV}': {str(tmp_path)!r}}})); "
             "s.lock().__enter__()"], capture_output=True, text=True)
        assert other.returncode != 0 and "already running" in other.stderr
    with store.lock():  # released when the holder is done
        pass


def test_tasks_come_back_in_arrival_order(store):
    store.save_task(_task(7), received_at=200.0)
    store.save_task(_task(3), received_at=100.0)
    assert [t.result_id for t, _ in store.load_tasks()] == [3, 7]


def test_tidy_removes_what_a_crash_leaves_behind(store):
    store.save_task(_task(1), time.time())  # finished: its result is on disk too
    store.save_result(ReportedResult(result_id=1, status="error", error="x"))
    store.save_task(_task(2), time.time())  # unfinished, with a checkpoint: kept
    info = CheckpointInfo(generation=1, generations=5, evaluated=10, cpu_time=1.0, wall_time=1.0)
    store.checkpoint_path(2).write_bytes(encode_checkpoint(info, b"state"))
    store.checkpoint_path(3).write_bytes(b"stale: no task")
    store.tidy()
    assert [t.result_id for t, _ in store.load_tasks()] == [2]
    assert set(store.load_results()) == {1}
    assert store.checkpoint_info(2) == info
    assert not store.checkpoint_path(3).exists()


def test_a_checkpoint_round_trips_and_a_cut_one_is_refused():
    info = CheckpointInfo(generation=3, generations=9, evaluated=40, cpu_time=2.5, wall_time=3.0)
    blob = encode_checkpoint(info, b"\x00state\nwith newlines")
    assert decode_checkpoint(blob) == (info, b"\x00state\nwith newlines")
    for broken in (blob[:5], blob[:12], b"something else"):
        with pytest.raises(ValueError):
            decode_checkpoint(broken)
