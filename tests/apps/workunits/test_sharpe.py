"""PSR and DSR against the paper's worked example (strategy_mining.md §3.3) and edge cases."""

from __future__ import annotations

import math
import random

import pytest

from apps.workunits.sharpe import (
    deflated_sharpe_ratio,
    expected_max_of_normals,
    expected_max_sharpe,
    min_track_record_length,
    null_sharpe_variance,
    per_observation_sharpe,
    probabilistic_sharpe_ratio,
    trials_sharpe_variance,
)

# Bailey & López de Prado (2014), numerical example: 100 trials, V = 1/2 annualised, five years
# of daily returns, skewness −3, kurtosis 10, selected Sharpe 2.5 annualised. Everything is
# converted to per-day figures first (the reference's trap 1).
PAPER = {"n_trials": 100, "trials_variance": 0.5 / 250, "n_observations": 1250,
         "skewness": -3.0, "kurtosis": 10.0, "sharpe": 2.5 / math.sqrt(250)}


def test_expected_maximum_sharpe_matches_the_paper():
    sr0 = expected_max_sharpe(n_trials=PAPER["n_trials"],
                              trials_variance=PAPER["trials_variance"])
    assert sr0 == pytest.approx(0.1132, abs=5e-5)  # paper: SR0 ≈ 0.1132
    assert sr0 == pytest.approx(0.113172, abs=1e-6)  # the reference's step-by-step figure


def test_deflated_sharpe_ratio_matches_the_paper():
    dsr = deflated_sharpe_ratio(**PAPER)
    assert dsr == pytest.approx(0.9004, abs=5e-5)  # paper: DSR ≈ 0.9004, not significant at 95%
    assert dsr == pytest.approx(0.90040, abs=5e-6)  # z = 1.28382 in the reference
    assert dsr < 0.95


def test_probabilistic_sharpe_ratio_against_zero_for_the_same_numbers():
    psr = probabilistic_sharpe_ratio(sharpe=PAPER["sharpe"],
                                     n_observations=PAPER["n_observations"],
                                     skewness=PAPER["skewness"], kurtosis=PAPER["kurtosis"])
    # The whole drop to 0.90 above is selection bias.
    assert psr == pytest.approx(0.999997, abs=1e-6)


def test_min_track_record_length_of_the_paper_example():
    sr0 = expected_max_sharpe(n_trials=PAPER["n_trials"],
                              trials_variance=PAPER["trials_variance"])
    min_trl = min_track_record_length(sharpe=PAPER["sharpe"], skewness=PAPER["skewness"],
                                      kurtosis=PAPER["kurtosis"], benchmark=sr0)
    assert min_trl == pytest.approx(2051, abs=1)  # > 1250 days available: the test fails
    # PSR reaches the confidence exactly at MinTRL.
    at_min_trl = probabilistic_sharpe_ratio(
        sharpe=PAPER["sharpe"], n_observations=min_trl, skewness=PAPER["skewness"],
        kurtosis=PAPER["kurtosis"], benchmark=sr0)
    assert at_min_trl == pytest.approx(0.95, abs=1e-9)


@pytest.mark.parametrize(("n_trials", "expected"), [
    (2, 0.5198), (10, 1.5746), (100, 2.5306), (1_000, 3.2551), (10_000, 3.8607)])
def test_expected_max_of_normals_test_vectors(n_trials, expected):
    assert expected_max_of_normals(n_trials) == pytest.approx(expected, abs=5e-5)


def test_expected_max_of_normals_close_to_monte_carlo_for_many_trials():
    rng = random.Random(7)
    n_trials, draws = 1_000, 400
    mean_max = sum(max(rng.gauss(0, 1) for _ in range(n_trials)) for _ in range(draws)) / draws
    # The approximation is for N ≫ 1; the Monte Carlo mean has a standard error of ~0.02.
    assert expected_max_of_normals(n_trials) == pytest.approx(mean_max, abs=0.08)


def test_one_trial_deflates_nothing():
    psr = probabilistic_sharpe_ratio(sharpe=0.05, n_observations=500, skewness=0.1,
                                     kurtosis=4.0)
    dsr = deflated_sharpe_ratio(sharpe=0.05, n_observations=500, n_trials=1,
                                trials_variance=0.01, skewness=0.1, kurtosis=4.0)
    assert dsr == psr


def test_more_trials_deflate_more():
    values = [deflated_sharpe_ratio(sharpe=0.05, n_observations=2_000, n_trials=n,
                                    trials_variance=0.001) for n in (1, 10, 1_000, 10**6)]
    assert values == sorted(values, reverse=True)
    assert values[0] > 0.95 > values[-1]


def test_zero_trial_variance_means_no_luck_to_deflate():
    assert expected_max_sharpe(n_trials=10**6, trials_variance=0.0) == 0.0
    assert deflated_sharpe_ratio(sharpe=0.05, n_observations=100, n_trials=10**6,
                                 trials_variance=0.0) == probabilistic_sharpe_ratio(
        sharpe=0.05, n_observations=100)


def test_zero_sharpe_against_zero_is_a_coin_flip():
    assert probabilistic_sharpe_ratio(sharpe=0.0, n_observations=1_000) == pytest.approx(0.5)


def test_short_samples_are_undefined_or_unconvincing():
    assert probabilistic_sharpe_ratio(sharpe=0.5, n_observations=1) is None
    assert probabilistic_sharpe_ratio(sharpe=0.5, n_observations=0) is None
    # Two observations: one degree of freedom, far from certainty even for a large Sharpe.
    assert probabilistic_sharpe_ratio(sharpe=0.5, n_observations=2) == pytest.approx(
        0.6813, abs=1e-3)


def test_undefined_inputs_give_none():
    assert probabilistic_sharpe_ratio(sharpe=math.nan, n_observations=100) is None
    assert probabilistic_sharpe_ratio(sharpe=0.1, n_observations=100, kurtosis=math.inf) is None
    # 1 − γ3·SR + (γ4 − 1)/4·SR² = 0: no spread to scale by.
    assert probabilistic_sharpe_ratio(sharpe=1.0, n_observations=100, skewness=2.0,
                                      kurtosis=5.0) is None


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        expected_max_of_normals(0)
    with pytest.raises(ValueError):
        expected_max_sharpe(n_trials=10, trials_variance=-1.0)
    with pytest.raises(ValueError):
        null_sharpe_variance(1)
    with pytest.raises(ValueError):
        min_track_record_length(sharpe=0.1, confidence=1.0)


def test_min_track_record_length_is_none_below_the_benchmark():
    assert min_track_record_length(sharpe=0.01, benchmark=0.02) is None


def test_trials_variance_is_the_sample_variance_floored_by_chance():
    assert trials_sharpe_variance([0.1, 0.2, 0.3], n_observations=1_000_000) == pytest.approx(0.01)
    # Near-identical trials (a converged population) still carry the luck of T observations.
    assert trials_sharpe_variance([0.1, 0.1001], n_observations=101) == pytest.approx(0.01)
    assert trials_sharpe_variance([], n_observations=101) == pytest.approx(0.01)
    assert trials_sharpe_variance([0.3, math.nan], n_observations=11) == pytest.approx(0.1)


def test_per_observation_sharpe():
    assert per_observation_sharpe(mean=0.001, std=0.01) == pytest.approx(0.1)
    assert per_observation_sharpe(mean=0.001, std=0.0) is None
    assert per_observation_sharpe(mean=None, std=0.01) is None
    assert per_observation_sharpe(mean=math.nan, std=0.01) is None
