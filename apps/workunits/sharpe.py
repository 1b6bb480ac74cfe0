"""Probabilistic and deflated Sharpe ratios (Bailey & López de Prado), as pure functions.

Everything here is **per observation**, never annualised (shared/reference/strategy_mining.md
§3.1): ``sharpe`` is mean/std of the returns the ``n_observations`` count, ``kurtosis`` is the
raw (non-excess) kurtosis, 3 for a normal distribution. Mixing an annualised Sharpe with a
daily count is the classic bug that saturates the DSR at 1.

* PSR(SR*) = Φ((SR̂ − SR*)·√(T−1) / √(1 − γ3·SR̂ + (γ4 − 1)/4·SR̂²))
* SR0 = √V·((1 − γ)·Φ⁻¹(1 − 1/N) + γ·Φ⁻¹(1 − 1/(N·e))), the expected maximum Sharpe of N
  zero-skill trials whose Sharpe estimates have variance V (γ: Euler–Mascheroni)
* DSR = PSR(SR0)

Standard library only (``statistics.NormalDist``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from statistics import NormalDist

EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()


def expected_max_of_normals(n_trials: int) -> float:
    """E[max] of ``n_trials`` independent standard normals (the paper's approximation).

    0 for a single trial: the best of one is that one, whose expected value under the null
    is 0 (Φ⁻¹(0) would be −∞; the reference's trap 3).
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be at least 1, got {n_trials}")
    if n_trials == 1:
        return 0.0
    return ((1.0 - EULER_GAMMA) * _NORMAL.inv_cdf(1.0 - 1.0 / n_trials)
            + EULER_GAMMA * _NORMAL.inv_cdf(1.0 - 1.0 / (n_trials * math.e)))


def expected_max_sharpe(*, n_trials: int, trials_variance: float) -> float:
    """SR0: the Sharpe the best of ``n_trials`` zero-skill strategies shows by luck alone.

    ``trials_variance`` is V, the variance of the trials' per-observation Sharpe estimates.
    """
    if not (math.isfinite(trials_variance) and trials_variance >= 0.0):
        raise ValueError(f"trials_variance must be finite and >= 0, got {trials_variance!r}")
    return math.sqrt(trials_variance) * expected_max_of_normals(n_trials)


def _sharpe_std_error_scale(sharpe: float, skewness: float, kurtosis: float) -> float:
    """√(1 − γ3·SR + (γ4 − 1)/4·SR²): the non-normality correction of the Sharpe's error."""
    return math.sqrt(max(1.0 - skewness * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2, 0.0))


def probabilistic_sharpe_ratio(*, sharpe: float, n_observations: int, skewness: float = 0.0,
                               kurtosis: float = 3.0, benchmark: float = 0.0) -> float | None:
    """PSR: the probability that the true Sharpe exceeds ``benchmark`` (both per observation).

    None when it is undefined: fewer than 2 observations, a non-finite input, or a zero
    standard error (the returns' moments then say nothing about the estimate's spread).
    """
    values = (sharpe, skewness, kurtosis, benchmark)
    if n_observations < 2 or not all(math.isfinite(v) for v in values):
        return None
    scale = _sharpe_std_error_scale(sharpe, skewness, kurtosis)
    if scale == 0.0:
        return None
    z = (sharpe - benchmark) * math.sqrt(n_observations - 1) / scale
    return _NORMAL.cdf(z)


def deflated_sharpe_ratio(*, sharpe: float, n_observations: int, n_trials: int,
                          trials_variance: float, skewness: float = 0.0,
                          kurtosis: float = 3.0) -> float | None:
    """DSR: PSR against the expected maximum Sharpe of ``n_trials`` lucky trials.

    ``n_trials`` counts every configuration tried for the search (not only those kept);
    with one trial this is PSR(0). None when the PSR is undefined.
    """
    benchmark = expected_max_sharpe(n_trials=n_trials, trials_variance=trials_variance)
    return probabilistic_sharpe_ratio(sharpe=sharpe, n_observations=n_observations,
                                      skewness=skewness, kurtosis=kurtosis, benchmark=benchmark)


def min_track_record_length(*, sharpe: float, skewness: float = 0.0, kurtosis: float = 3.0,
                            benchmark: float = 0.0, confidence: float = 0.95) -> float | None:
    """MinTRL: observations needed for PSR(benchmark) to reach ``confidence``.

    None when the Sharpe does not exceed the benchmark (no track record is long enough).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if not sharpe > benchmark:
        return None
    scale = _sharpe_std_error_scale(sharpe, skewness, kurtosis)
    return 1.0 + scale**2 * (_NORMAL.inv_cdf(confidence) / (sharpe - benchmark)) ** 2


def null_sharpe_variance(n_observations: int) -> float:
    """Var(SR̂) of a zero-skill strategy with normal returns: 1/(T−1) per observation.

    The spread the trials' Sharpe estimates show by chance alone; a floor for V when the
    trials actually recorded are too few, or too alike, to estimate it.
    """
    if n_observations < 2:
        raise ValueError(f"n_observations must be at least 2, got {n_observations}")
    return 1.0 / (n_observations - 1)


def trials_sharpe_variance(sharpes: Iterable[float], *, n_observations: int) -> float:
    """V for the DSR: the sample variance of the trials' per-observation Sharpe ratios,
    never below :func:`null_sharpe_variance` (conservative: a larger V raises SR0).

    The portal records only the trials that entered its hall of fame, a selected and hence
    narrower set than all trials; the floor keeps that from understating the luck of N trials.
    """
    finite = [s for s in sharpes if math.isfinite(s)]
    if len(finite) < 2:
        return floored_sharpe_variance(None, n_observations=n_observations)
    mean = math.fsum(finite) / len(finite)
    variance = math.fsum((s - mean) ** 2 for s in finite) / (len(finite) - 1)
    return floored_sharpe_variance(variance, n_observations=n_observations)


def floored_sharpe_variance(variance: float | None, *, n_observations: int) -> float:
    """A measured variance of trials' Sharpe ratios (None or not finite: unknown), never below
    what chance alone gives over ``n_observations``."""
    floor = null_sharpe_variance(n_observations)
    if variance is None or not math.isfinite(variance):
        return floor
    return max(variance, floor)


def per_observation_sharpe(*, mean: float | None, std: float | None) -> float | None:
    """mean/std of per-observation returns; None when undefined (no variation, missing)."""
    if mean is None or std is None or not (math.isfinite(mean) and math.isfinite(std)):
        return None
    if std <= 0.0:
        return None
    return mean / std
