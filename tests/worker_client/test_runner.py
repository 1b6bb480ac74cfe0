"""The runner's own pieces, without a portal: the epoch it computes is the engine's."""

from __future__ import annotations

import hashlib

import numpy as np

from worker_client.config import HOME_ENV, WorkerPaths
from worker_client.datafile import write_candles
from worker_client.engine import synthetic_ohlcv
from worker_client.engine.ga import GASettings, run_epoch
from worker_client.engine.space import SearchSpace
from worker_client.protocol import ENGINE_FORMAT, TASK_KIND, Task
from worker_client.runner import Runner, RunOptions


def test_a_task_computes_exactly_what_run_epoch_computes(tmp_path):
    """The runner steps the epoch itself (to look at stop requests between generations);
    its answer must be run_epoch's to the last bit, or hosts would disagree."""
    paths = WorkerPaths.default({HOME_ENV: str(tmp_path)})
    paths.ensure()
    data = synthetic_ohlcv(1_200, seed=9)
    staging = tmp_path / "staging.sahc"
    sha = write_candles(staging, data, symbol="BTC-USD", timeframe="5m")
    cached = paths.datasets_dir / f"{sha}.sahc"
    staging.replace(cached)  # already in the cache: nothing to download
    space = SearchSpace(directions=("long", "short"))
    settings = GASettings(population_size=10, elite=2, immigrants=2, top_k=4, min_trades=3)
    seed = int.from_bytes(hashlib.sha256(b"runner").digest()[:8], "big") >> 1
    start_population = [space.random_genome(np.random.default_rng(1))]
    payload = {"kind": TASK_KIND, "engine": ENGINE_FORMAT, "dataset_sha256": sha,
               "start": 100, "stop": 1_000, "seed": seed, "generations": 5,
               "space": space.to_dict(), "settings": settings.to_dict(),
               "start_population": [g.to_dict() for g in start_population]}
    task = Task(result_id=1, name="t", payload=payload, dataset_sha256=sha,
                dataset_url="/unused/", dataset_size=cached.stat().st_size,
                deadline="2999-01-01T00:00:00+00:00", credit=1.0, cost=1)

    output = Runner(None, paths, RunOptions())._compute(task)  # type: ignore[arg-type]

    expected = run_epoch(data.slice(100, 1_000), space, settings, seed, start_population, 5)
    assert output == expected.to_dict()
