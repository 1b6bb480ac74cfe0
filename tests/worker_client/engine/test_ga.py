"""The island GA: determinism, checkpoint/resume, and what an epoch returns."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from worker_client.engine import Genome, evaluate_population, synthetic_ohlcv
from worker_client.engine.ga import (
    EpochError,
    EpochState,
    GASettings,
    IslandEpoch,
    fitness_of,
    run_epoch,
)
from worker_client.engine.space import SearchSpace

SPACE = SearchSpace(directions=("long", "short"), max_conditions=2)
SETTINGS = GASettings(population_size=16, elite=2, immigrants=2, top_k=5, min_trades=5)
GENERATIONS = 6


@pytest.fixture(scope="module")
def data():
    return synthetic_ohlcv(4_000, seed=11)


@pytest.fixture(scope="module")
def reference(data):
    states: list[bytes] = []
    result = run_epoch(data, SPACE, SETTINGS, 7, [], GENERATIONS,
                       on_generation=lambda s: states.append(s.to_bytes()))
    return result, states


def test_same_epoch_gives_same_digest(data, reference):
    result, _ = reference
    again = run_epoch(data, SPACE, SETTINGS, 7, [], GENERATIONS)
    assert again.digest == result.digest
    assert [g.hash for g in again.population] == [g.hash for g in result.population]


def test_other_seed_gives_other_digest(data, reference):
    assert run_epoch(data, SPACE, SETTINGS, 8, [], GENERATIONS).digest != reference[0].digest


def test_resume_after_every_generation_ends_identical(data, reference):
    result, states = reference
    assert len(states) == GENERATIONS + 1  # the evaluated start population, then each generation
    for blob in states:
        state = EpochState.from_bytes(blob)
        resumed = run_epoch(data, SPACE, SETTINGS, 7, [], GENERATIONS, checkpoint=state)
        assert resumed.digest == result.digest, f"resumed after generation {state.generation}"


def test_interrupted_epoch_resumes_identical(data, reference):
    """Stop from inside the callback (as a worker does on SIGTERM), resume from the last save."""
    saved: list[bytes] = []

    class Stop(Exception):
        pass

    def save_then_stop(state: EpochState) -> None:
        saved.append(state.to_bytes())
        if state.generation == 3:
            raise Stop

    with pytest.raises(Stop):
        run_epoch(data, SPACE, SETTINGS, 7, [], GENERATIONS, on_generation=save_then_stop)
    resumed = run_epoch(data, SPACE, SETTINGS, 7, [], GENERATIONS,
                        checkpoint=EpochState.from_bytes(saved[-1]))
    assert resumed.digest == reference[0].digest


def test_thread_count_does_not_change_the_answer(data, reference):
    assert run_epoch(data, SPACE, SETTINGS, 7, [], GENERATIONS, threads=2).digest == \
        reference[0].digest


def test_checkpoint_of_another_task_is_refused(data, reference):
    state = EpochState.from_bytes(reference[1][2])
    with pytest.raises(EpochError, match="another task"):
        run_epoch(data, SPACE, SETTINGS, 8, [], GENERATIONS, checkpoint=state)
    with pytest.raises(EpochError, match="unreadable"):
        EpochState.from_bytes(b"not a checkpoint")


def test_checkpoint_bytes_round_trip(reference):
    blob = reference[1][-1]
    assert EpochState.from_bytes(blob).to_bytes() == blob


def test_result_contents(data, reference):
    result, _ = reference
    assert len(result.population) == SETTINGS.population_size
    assert len(result.top) == SETTINGS.top_k
    assert result.generations == GENERATIONS
    # At most: the start population plus every child of every generation; at least the start.
    assert SETTINGS.population_size <= result.evaluated <= SETTINGS.population_size * (
        GENERATIONS + 1)
    fitness = [t.fitness for t in result.top]
    assert fitness == sorted(fitness, reverse=True)
    assert len({t.genome.hash for t in result.top}) == len(result.top)
    # The reported metrics are what a fresh backtest of the genome gives.
    rows = evaluate_population(data, [t.genome for t in result.top], costs=SETTINGS.costs,
                               initial_cash=SETTINGS.initial_cash)
    for scored, row in zip(result.top, rows, strict=True):
        assert scored.metrics.final_equity == row["final_equity"]
        assert scored.metrics.n_trades == row["n_trades"]
    json.dumps(result.to_dict())  # JSON-ready for the wire


def test_elites_survive_and_fitness_never_regresses(data):
    epoch = IslandEpoch(data, SPACE, SETTINGS, 3, [], 5)
    best = max(epoch._fitness(epoch._population))
    while not epoch.done:
        epoch.step()
        now = max(epoch._fitness(epoch._population))
        assert now >= best  # elitism keeps the best genome
        best = now


def test_start_population_is_used(data):
    seeds = [Genome.sma_crossover(10, 50), Genome.sma_crossover(20, 100)]
    epoch = IslandEpoch(data, SearchSpace(), SETTINGS, 1, seeds, 0)
    assert epoch.result().population and {g.hash for g in seeds} <= {
        g.hash for g in epoch._population}


def test_start_population_outside_space_is_refused(data):
    narrow = SearchSpace(indicators=("rsi",))
    with pytest.raises(ValueError, match="outside the search space"):
        run_epoch(data, narrow, SETTINGS, 1, [Genome.sma_crossover(10, 50)], 1)


def test_fitness_penalises_too_few_trades():
    rows = np.zeros(3, dtype=[("sharpe", "f8"), ("n_trades", "f8")])
    rows["sharpe"] = [2.0, 2.0, -3.0]
    rows["n_trades"] = [20, 10, 30]
    settings = GASettings(min_trades=20)
    fitness = fitness_of(rows, settings)
    assert fitness[0] == 2.0
    assert fitness[1] == -50.0  # half the trades missing: 0 - 100 * 0.5
    assert fitness[2] == -3.0  # a losing strategy that trades enough still ranks above
    assert fitness[2] > fitness[1]


@pytest.mark.parametrize("bad", [
    {"population_size": 2}, {"elite": 48}, {"fitness": "luck"}, {"fee": -0.1},
    {"tournament_size": 0}, {"crossover_rate": 1.5},
])
def test_bad_settings_are_refused(bad):
    with pytest.raises((EpochError, ValueError)):
        GASettings(**bad)
    with pytest.raises(EpochError, match="unknown"):
        GASettings.from_dict({"populaton_size": 10})


_SUBPROCESS = """
import json, sys
from worker_client.engine import synthetic_ohlcv
from worker_client.engine.ga import GASettings, run_epoch
from worker_client.engine.space import SearchSpace
data = synthetic_ohlcv(1_500, seed=11)
settings = GASettings(population_size=8, elite=1, immigrants=1, top_k=3, min_trades=2)
result = run_epoch(data, SearchSpace(max_conditions=2), settings, 5, [], 2)
print(json.dumps({"digest": result.digest,
                  "top": [[t.genome.hash, t.metrics.n_trades, t.metrics.final_equity]
                          for t in result.top]}))
"""


def _epoch_in_subprocess(**env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _SUBPROCESS], capture_output=True, text=True,
                         check=True, env={**os.environ, **env}, timeout=300)
    return json.loads(out.stdout)


def test_same_digest_in_another_process_and_without_the_jit():
    """Across processes, thread counts and with NUMBA_DISABLE_JIT=1 (the kernels as Python)."""
    compiled = _epoch_in_subprocess()
    assert _epoch_in_subprocess(NUMBA_NUM_THREADS="1") == compiled
    interpreted = _epoch_in_subprocess(NUMBA_DISABLE_JIT="1")
    # Same strategies and trades. Metrics use + - * / and sqrt, correctly rounded everywhere;
    # only the annual return (pow) could differ in the last bit, and the digest rounds figures
    # to 12 significant digits for that reason.
    assert interpreted["digest"] == compiled["digest"]
    for (h1, n1, eq1), (h2, n2, eq2) in zip(interpreted["top"], compiled["top"], strict=True):
        assert (h1, n1) == (h2, n2)
        assert eq1 == pytest.approx(eq2, rel=1e-12)


def test_digest_recomputed_from_the_reported_output(reference):
    """The portal recomputes the digest from what a host reports: any edit changes it."""
    from worker_client.engine.ga import digest_of_output

    result, _ = reference
    output = json.loads(json.dumps(result.to_dict()))  # as it crosses the wire
    assert digest_of_output(output) == result.digest
    output["top"][0]["metrics"]["sharpe"] += 1.0
    assert digest_of_output(output) != result.digest
    output = json.loads(json.dumps(result.to_dict()))
    output["top"][0]["hash"] = output["top"][1]["hash"]
    with pytest.raises(EpochError):
        digest_of_output(output)
    with pytest.raises(EpochError):
        digest_of_output({"population": "nonsense"})
