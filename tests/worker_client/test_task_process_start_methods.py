"""A task process started as Windows starts it (``spawn``: a fresh interpreter that re-imports
everything and receives the job pickled) computes exactly what the in-process body does, stops
at a checkpoint when told, and resumes to the same answer; ``forkserver`` (Linux and macOS) too.
Only the start method of Windows is checked here, not Windows itself."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from tests.worker_client.test_runner import setup  # noqa: F401  the shared fixture
from worker_client.compute import EXIT_FINISHED, EXIT_STOPPED, Job, task_main

METHODS = [m for m in ("spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]


def _run(context, job: Job, *, stopped: bool = False) -> tuple[int, list]:
    stop = context.Event()
    if stopped:  # asked to stop from the start: it checkpoints after its first generation
        stop.set()
    progress = context.Queue()
    process = context.Process(target=task_main, args=(job, stop, progress))
    process.start()
    seen = []
    while process.is_alive() or not progress.empty():
        try:
            seen.append(progress.get(timeout=0.2))
        except Exception:  # queue.Empty, from the child's side of the pipe
            continue
    process.join(60)
    return process.exitcode, seen


@pytest.mark.parametrize("method", METHODS)
def test_a_task_process_computes_what_run_epoch_computes(setup, method):  # noqa: F811
    job, expected = setup

    code, progress = _run(multiprocessing.get_context(method), job)

    assert code == EXIT_FINISHED
    result = json.loads(Path(job.result_path).read_text())
    assert result["status"] == "success" and result["output"] == expected.to_dict()
    assert progress and progress[-1].fraction_done == 1.0


@pytest.mark.parametrize("method", METHODS)
def test_stopped_then_resumed_in_new_processes_it_gives_the_same_answer(setup,  # noqa: F811
                                                                         method):
    job, expected = setup
    context = multiprocessing.get_context(method)

    code, _ = _run(context, job, stopped=True)
    assert code == EXIT_STOPPED
    assert Path(job.checkpoint_path).exists() and not Path(job.result_path).exists()
    code, _ = _run(context, job)

    assert code == EXIT_FINISHED
    assert json.loads(Path(job.result_path).read_text())["output"] == expected.to_dict()
