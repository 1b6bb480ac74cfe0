"""Every epoch reports the spread of all its trials' Sharpe ratios (count, sum, sum of squares),
for the deflated Sharpe ratio's V; the sums are part of the digest hosts agree on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from worker_client.engine import evaluate_population, synthetic_ohlcv
from worker_client.engine.ga import (
    EpochError,
    EpochState,
    GASettings,
    TrialsSharpe,
    digest_of_output,
    run_epoch,
)
from worker_client.engine.genome import Genome
from worker_client.engine.space import SearchSpace

SPACE = SearchSpace(directions=("long", "short"), max_conditions=2)
SETTINGS = GASettings(population_size=12, elite=2, immigrants=2, top_k=4, min_trades=3)


@pytest.fixture(scope="module")
def data():
    return synthetic_ohlcv(3_000, seed=5)


@pytest.fixture(scope="module")
def epoch(data):
    states: list[bytes] = []
    result = run_epoch(data, SPACE, SETTINGS, 3, [], 4,
                       on_generation=lambda state: states.append(state.to_bytes()))
    return result, states


def test_the_sums_are_those_of_every_genome_evaluated(data, epoch):
    result, states = epoch
    final = EpochState.from_bytes(states[-1])
    genomes = [Genome.from_json(text) for text, _ in final.evaluated.values()]
    assert len(genomes) == result.evaluated
    rows = evaluate_population(data, genomes, costs=SETTINGS.costs,
                               initial_cash=SETTINGS.initial_cash)
    usable = rows["return_std"] > 0
    sharpes = rows["return_mean"][usable] / rows["return_std"][usable]

    trials = result.trials
    assert 2 <= trials.n == len(sharpes) <= result.evaluated
    assert trials.sharpe_sum == pytest.approx(float(sharpes.sum()), rel=1e-12, abs=1e-15)
    assert trials.sharpe_sq_sum == pytest.approx(float((sharpes ** 2).sum()), rel=1e-12)
    variance = (trials.sharpe_sq_sum - trials.sharpe_sum ** 2 / trials.n) / (trials.n - 1)
    assert variance == pytest.approx(float(np.var(sharpes, ddof=1)), rel=1e-9)


def test_a_resumed_epoch_reports_the_same_sums(data, epoch):
    result, states = epoch
    resumed = run_epoch(data, SPACE, SETTINGS, 3, [], 4,
                        checkpoint=EpochState.from_bytes(states[1]))
    assert resumed.trials == result.trials and resumed.digest == result.digest


def test_the_sums_cross_the_wire_and_are_in_the_digest(epoch):
    result, _ = epoch
    output = json.loads(json.dumps(result.to_dict()))
    assert TrialsSharpe.from_dict(output["trials"]) == result.trials
    assert digest_of_output(output) == result.digest
    output["trials"]["sharpe_sq_sum"] *= 2  # a wider spread: a lower deflated Sharpe
    assert digest_of_output(output) != result.digest
    del output["trials"]
    with pytest.raises(EpochError):
        digest_of_output(output)


@pytest.mark.parametrize("raw", [
    None, {}, {"n": -1, "sharpe_sum": 0.0, "sharpe_sq_sum": 0.0},
    {"n": True, "sharpe_sum": 0.0, "sharpe_sq_sum": 0.0},
    {"n": 2, "sharpe_sum": math.nan, "sharpe_sq_sum": 1.0},
    {"n": 2, "sharpe_sum": 1.0, "sharpe_sq_sum": -1.0},
    {"n": 2, "sharpe_sum": 3.0, "sharpe_sq_sum": 1.0},  # (sum)^2 > n * sum of squares
    {"n": 0, "sharpe_sum": 0.5, "sharpe_sq_sum": 0.0},
])
def test_sums_no_set_of_ratios_could_give_are_refused(raw):
    with pytest.raises(EpochError):
        TrialsSharpe.from_dict(raw)


def test_a_strategy_that_never_trades_has_no_sharpe_ratio():
    rows = np.zeros(3, dtype=[("return_mean", "f8"), ("return_std", "f8")])
    rows["return_mean"] = [0.001, 0.0, 0.002]
    rows["return_std"] = [0.01, 0.0, 0.01]
    trials = TrialsSharpe.of_columns(rows["return_mean"], rows["return_std"])
    assert (trials.n, trials.sharpe_sum) == (2, pytest.approx(0.3))
