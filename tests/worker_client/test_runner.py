"""A task process's body, in-process: the answer is the engine's, resumable bit for bit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from worker_client.compute import (
    EXIT_BAD_DATA,
    EXIT_FINISHED,
    EXIT_STOPPED,
    PHASE_CHECKPOINTING,
    Job,
    run_job,
)
from worker_client.datafile import write_candles
from worker_client.engine import synthetic_ohlcv
from worker_client.engine.ga import GASettings, run_epoch
from worker_client.engine.space import SearchSpace
from worker_client.protocol import ENGINE_FORMAT, TASK_KIND
from worker_client.store import decode_checkpoint

GENERATIONS = 6


@pytest.fixture
def setup(tmp_path):
    data = synthetic_ohlcv(1_200, seed=9)
    path = tmp_path / "data.sahc"
    sha = write_candles(path, data, symbol="BTC-USD", timeframe="5m")
    space = SearchSpace(directions=("long", "short"))
    settings = GASettings(population_size=10, elite=2, immigrants=2, top_k=4, min_trades=3)
    seed = int.from_bytes(hashlib.sha256(b"runner").digest()[:8], "big") >> 1
    start_population = [space.random_genome(np.random.default_rng(1))]
    payload = {"kind": TASK_KIND, "engine": ENGINE_FORMAT, "dataset_sha256": sha,
               "start": 100, "stop": 1_000, "seed": seed, "generations": GENERATIONS,
               "space": space.to_dict(), "settings": settings.to_dict(),
               "start_population": [g.to_dict() for g in start_population]}
    job = Job(result_id=1, payload=payload, dataset_sha256=sha, dataset_path=str(path),
              checkpoint_path=str(tmp_path / "1.ckpt"), result_path=str(tmp_path / "1.json"),
              checkpoint_interval=0.0)
    expected = run_epoch(data.slice(100, 1_000), space, settings, seed, start_population,
                         GENERATIONS)
    return job, expected


def _output(job: Job) -> dict:
    return json.loads(Path(job.result_path).read_text())


def test_a_task_computes_exactly_what_run_epoch_computes(setup):
    job, expected = setup
    progress = []
    assert run_job(job, should_stop=lambda: False, report=progress.append) == EXIT_FINISHED
    result = _output(job)
    assert result["status"] == "success"
    assert result["output"] == expected.to_dict()
    assert progress[-1].generation == GENERATIONS and progress[-1].fraction_done == 1.0
    assert not Path(job.checkpoint_path).exists()  # deleted once the result is on disk


@pytest.mark.parametrize("stop_after", [1, 3, 5])
def test_stopped_and_resumed_from_its_checkpoint_it_gives_the_same_answer(setup, stop_after):
    job, expected = setup
    seen = []

    def stop_at_generation():
        return bool(seen) and seen[-1].generation >= stop_after

    assert run_job(job, should_stop=stop_at_generation, report=seen.append) == EXIT_STOPPED
    assert any(p.phase == PHASE_CHECKPOINTING for p in seen)
    info, _ = decode_checkpoint(Path(job.checkpoint_path).read_bytes())
    assert info.generation == stop_after and info.generations == GENERATIONS
    assert not Path(job.result_path).exists()

    resumed = []
    assert run_job(job, should_stop=lambda: False, report=resumed.append) == EXIT_FINISHED
    assert resumed[1].generation == stop_after  # it did not start over
    assert _output(job)["output"] == expected.to_dict()


def test_a_damaged_checkpoint_is_ignored_and_the_task_starts_over(setup):
    job, expected = setup
    Path(job.checkpoint_path).write_bytes(b"SAHCKPT1\n{\"generation\": 2")  # cut off
    assert run_job(job, should_stop=lambda: False, report=lambda p: None) == EXIT_FINISHED
    assert _output(job)["output"] == expected.to_dict()


def test_a_corrupt_data_file_is_not_used(setup):
    job, _ = setup
    raw = bytearray(Path(job.dataset_path).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    Path(job.dataset_path).write_bytes(bytes(raw))
    assert run_job(job, should_stop=lambda: False, report=lambda p: None) == EXIT_BAD_DATA
    assert not Path(job.result_path).exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"kind": "shell"}, "unknown task kind"),
    ({"engine": 99}, "engine format"),
    ({"stop": 10_000}, "outside the data set"),
    ({"generations": "many"}, "cannot be used"),
])
def test_a_payload_the_engine_cannot_run_becomes_an_error_result(setup, change, message):
    job, _ = setup
    job = Job(**{**job.__dict__, "payload": {**job.payload, **change}})
    assert run_job(job, should_stop=lambda: False, report=lambda p: None) == EXIT_FINISHED
    result = _output(job)
    assert result["status"] == "error" and message in result["error"]
