"""Indicators against slow, obvious references, plus warm-up, causality and determinism checks.

The references below are written from the definitions, in plain Python loops over Python
floats. Where a reference performs the same operations in the same order as the kernel (the
recurrences of EMA, RSI and ATR, ROC, the min/max windows) the comparison is bit for bit;
where it computes more accurately instead (``math.fsum`` window means, two-pass standard
deviations) it is to ``rtol=1e-10``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker_client.engine import indicators as ind
from worker_client.engine.data import synthetic_ohlcv

NAN = float("nan")
RTOL = 1e-10

BARS = synthetic_ohlcv(3000, seed=7)
H, L, C = (list(map(float, a)) for a in (BARS.high, BARS.low, BARS.close))


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


def ref_sma(x, p):
    return [NAN if t < p - 1 else math.fsum(x[t - p + 1 : t + 1]) / p for t in range(len(x))]


def ref_ema(x, p):
    out = [NAN] * len(x)
    seed = next(
        (t for t in range(p - 1, len(x)) if not any(math.isnan(v) for v in x[t - p + 1 : t + 1])),
        None,
    )
    if seed is None:
        return out
    total = 0.0
    for v in x[seed - p + 1 : seed + 1]:
        total += v
    e = total / p
    out[seed] = e
    alpha = 2 / (p + 1)
    for t in range(seed + 1, len(x)):
        e = e + alpha * (x[t] - e)
        out[t] = e
    return out


def _rsi_from(avg_gain, avg_loss):
    if avg_loss == 0:
        return 100.0 if avg_gain > 0 else 50.0
    return 100 - 100 / (1 + avg_gain / avg_loss)


def ref_rsi(c, p):
    out = [NAN] * len(c)
    if len(c) <= p:
        return out
    gains = [0.0] + [max(c[t] - c[t - 1], 0.0) for t in range(1, len(c))]
    losses = [0.0] + [max(c[t - 1] - c[t], 0.0) for t in range(1, len(c))]
    g = l_ = 0.0
    for t in range(1, p + 1):
        g += gains[t]
        l_ += losses[t]
    g, l_ = g / p, l_ / p
    out[p] = _rsi_from(g, l_)
    for t in range(p + 1, len(c)):
        g = (g * (p - 1) + gains[t]) / p
        l_ = (l_ * (p - 1) + losses[t]) / p
        out[t] = _rsi_from(g, l_)
    return out


def ref_macd(c, fast, slow, signal):
    line = [a - b for a, b in zip(ref_ema(c, fast), ref_ema(c, slow), strict=True)]
    sig = ref_ema(line, signal)
    return line, sig, [a - b for a, b in zip(line, sig, strict=True)]


def _two_pass_std(w, ddof):
    mean = math.fsum(w) / len(w)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in w) / (len(w) - ddof))


def ref_bollinger(c, p, k):
    mid, upper, lower, pctb = ref_sma(c, p), [NAN] * len(c), [NAN] * len(c), [NAN] * len(c)
    for t in range(p - 1, len(c)):
        std = _two_pass_std(c[t - p + 1 : t + 1], 0)
        upper[t], lower[t] = mid[t] + k * std, mid[t] - k * std
        if upper[t] != lower[t]:
            pctb[t] = (c[t] - lower[t]) / (upper[t] - lower[t])
    return mid, upper, lower, pctb


def ref_atr(h, lo, c, p):
    tr = [h[0] - lo[0]] + [
        max(h[t] - lo[t], abs(h[t] - c[t - 1]), abs(lo[t] - c[t - 1])) for t in range(1, len(c))
    ]
    out = [NAN] * len(c)
    if len(c) <= p:
        return out
    a = 0.0
    for t in range(1, p + 1):
        a += tr[t]
    a /= p
    out[p] = a
    for t in range(p + 1, len(c)):
        a = (a * (p - 1) + tr[t]) / p
        out[t] = a
    return out


def ref_natr(h, lo, c, p):
    return [100 * a / close for a, close in zip(ref_atr(h, lo, c, p), c, strict=True)]


def ref_roc(c, p):
    return [NAN if t < p else 100 * (c[t] / c[t - p] - 1) for t in range(len(c))]


def ref_stoch_k(h, lo, c, p):
    out = [NAN] * len(c)
    for t in range(p - 1, len(c)):
        hh, ll = max(h[t - p + 1 : t + 1]), min(lo[t - p + 1 : t + 1])
        out[t] = 50.0 if hh == ll else 100 * (c[t] - ll) / (hh - ll)
    return out


def ref_volatility(c, p):
    r = [NAN] + [c[t] / c[t - 1] - 1 for t in range(1, len(c))]
    return [NAN if t < p else 100 * _two_pass_std(r[t - p + 1 : t + 1], 1) for t in range(len(c))]


def ref_highest(h, p):
    return [NAN if t < p else max(h[t - p : t]) for t in range(len(h))]


def ref_lowest(lo, p):
    return [NAN if t < p else min(lo[t - p : t]) for t in range(len(lo))]


def assert_same_bits(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_array_equal(actual, expected)


def assert_close(actual, expected, rtol=RTOL, atol=0.0):
    actual, expected = np.asarray(actual), np.asarray(expected, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------
# Against the references, on a few thousand BTC-like bars
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("period", [1, 2, 20, 200])
def test_sma(period):
    assert_close(ind.sma(BARS.close, period), ref_sma(C, period))


def test_sma_is_vectorbts_rolling_mean_bit_for_bit():
    vbt_nb = pytest.importorskip("vectorbt.generic.nb")
    close = synthetic_ohlcv(100_000, seed=11).close
    for period in (1, 2, 10, 50, 200):
        expected = vbt_nb.rolling_mean_1d_nb(close, period)
        assert_same_bits(ind.sma(close, period), expected)


@pytest.mark.parametrize("period", [1, 2, 12, 26, 200])
def test_ema(period):
    assert_same_bits(ind.ema(BARS.close, period), ref_ema(C, period))


def test_ema_seeds_after_leading_nans():
    x = [NAN, NAN, NAN, *C[:200]]
    assert_same_bits(ind.ema(x, 9), ref_ema(x, 9))
    assert np.isnan(ind.ema(x, 9)[:11]).all() and not np.isnan(ind.ema(x, 9)[11])


@pytest.mark.parametrize("period", [1, 2, 14, 100])
def test_rsi(period):
    assert_same_bits(ind.rsi(BARS.close, period), ref_rsi(C, period))


@pytest.mark.parametrize(("fast", "slow", "signal"), [(12, 26, 9), (1, 2, 1), (5, 35, 5)])
def test_macd(fast, slow, signal):
    for actual, expected in zip(
        ind.macd(BARS.close, fast, slow, signal), ref_macd(C, fast, slow, signal), strict=True
    ):
        assert_same_bits(actual, expected)


@pytest.mark.parametrize(("period", "k"), [(1, 2.0), (2, 1.0), (20, 2.0), (100, 2.5)])
def test_bollinger(period, k):
    mid, upper, lower, pctb = ind.bollinger(BARS.close, period, k)
    ref_mid, ref_upper, ref_lower, ref_pctb = ref_bollinger(C, period, k)
    assert_close(mid, ref_mid)
    assert_close(upper, ref_upper)
    assert_close(lower, ref_lower)
    # %b divides a price difference by the band width. Over a narrow band (two nearly equal
    # closes) it amplifies any rounding of the mid band, ours a running sum for vectorbt's
    # sake, the reference's math.fsum: so bound its error in price units, relative to price.
    ref_upper, ref_lower, ref_pctb = (np.asarray(a) for a in (ref_upper, ref_lower, ref_pctb))
    np.testing.assert_array_equal(np.isnan(pctb), np.isnan(ref_pctb))
    ok = ~np.isnan(pctb)
    error_in_price = np.abs(pctb - ref_pctb)[ok] * (ref_upper - ref_lower)[ok]
    assert np.all(error_in_price <= RTOL * BARS.close[ok])


@pytest.mark.slow
def test_bollinger_std_on_a_million_bars():
    """Window std stays accurate at BTC prices over 1M bars (against a NumPy two-pass std)."""
    close = synthetic_ohlcv(1_000_000, seed=3).close
    period = 50
    _, upper, lower, _ = ind.bollinger(close, period, 1.0)
    std = (upper - lower) / 2
    windows = np.lib.stride_tricks.sliding_window_view(close, period)
    worst = 0.0
    for start in range(0, len(windows), 100_000):
        w = windows[start : start + 100_000]
        expected = np.sqrt(((w - w.mean(axis=1, keepdims=True)) ** 2).mean(axis=1))
        got = std[period - 1 + start : period - 1 + start + len(w)]
        worst = max(worst, float(np.max(np.abs(got - expected) / expected)))
    assert worst < 1e-9
    assert np.isnan(std[: period - 1]).all()


@pytest.mark.parametrize("period", [1, 2, 14, 100])
def test_atr_and_natr(period):
    assert_same_bits(ind.atr(BARS.high, BARS.low, BARS.close, period), ref_atr(H, L, C, period))
    assert_same_bits(
        ind.natr(BARS.high, BARS.low, BARS.close, period), ref_natr(H, L, C, period)
    )


@pytest.mark.parametrize("period", [1, 10, 100])
def test_roc(period):
    assert_same_bits(ind.roc(BARS.close, period), ref_roc(C, period))


@pytest.mark.parametrize("period", [1, 2, 14, 200])
def test_stoch_k(period):
    assert_same_bits(
        ind.stoch_k(BARS.high, BARS.low, BARS.close, period), ref_stoch_k(H, L, C, period)
    )


@pytest.mark.parametrize("period", [2, 3, 20, 200])
def test_volatility(period):
    assert_close(ind.volatility(BARS.close, period), ref_volatility(C, period))


@pytest.mark.parametrize("period", [1, 2, 20, 200])
def test_highest_and_lowest(period):
    assert_same_bits(ind.highest(BARS.high, period), ref_highest(H, period))
    assert_same_bits(ind.lowest(BARS.low, period), ref_lowest(L, period))


def test_highest_and_lowest_on_monotonic_and_flat_series():
    # The deque's worst and best cases: every bar evicts all, or none.
    up, down, flat = np.arange(500.0), np.arange(500.0)[::-1], np.full(500, 7.0)
    for x in (up, down, flat):
        assert_same_bits(ind.highest(x, 17), ref_highest(list(x), 17))
        assert_same_bits(ind.lowest(x, 17), ref_lowest(list(x), 17))


# --------------------------------------------------------------------------------------------
# Tiny cases worked by hand
# --------------------------------------------------------------------------------------------


def test_hand_sma_and_ema():
    assert_same_bits(ind.sma([1, 2, 3, 4], 2), [NAN, 1.5, 2.5, 3.5])
    # alpha = 0.5, seed mean(1, 2, 3) = 2 at t = 2
    assert_same_bits(ind.ema([1, 2, 3, 4, 5], 3), [NAN, NAN, 2, 3, 4])


def test_hand_rsi():
    # gains 1, 1 -> 100; then avg gain (1 + 0)/2, avg loss (0 + 1)/2 -> 50
    assert_same_bits(ind.rsi([1, 2, 3, 2], 2), [NAN, NAN, 100, 50])
    assert_same_bits(ind.rsi([5, 5, 5, 5], 2), [NAN, NAN, 50, 50])
    assert_same_bits(ind.rsi([5, 4, 3, 2], 2), [NAN, NAN, 0, 0])


def test_hand_macd():
    # The EMA of a ramp lags it by exactly (period - 1) / 2: 1 bar for 3, 3 bars for 7.
    line, signal, hist = ind.macd(np.arange(12.0), 3, 7, 3)
    assert_same_bits(line, [NAN] * 6 + [2.0] * 6)
    assert_same_bits(signal, [NAN] * 8 + [2.0] * 4)
    assert_same_bits(hist, [NAN] * 8 + [0.0] * 4)


def test_hand_bollinger():
    mid, upper, lower, pctb = ind.bollinger([1, 2, 3, 4], 2, 2.0)  # std 0.5 in every window
    assert_same_bits(mid, [NAN, 1.5, 2.5, 3.5])
    assert_same_bits(upper, [NAN, 2.5, 3.5, 4.5])
    assert_same_bits(lower, [NAN, 0.5, 1.5, 2.5])
    assert_same_bits(pctb, [NAN, 0.75, 0.75, 0.75])


def test_bollinger_flat_window_has_no_width():
    # 0.1 * 3 is not 0.3 in binary; the bands must still touch, exactly.
    _, upper, lower, pctb = ind.bollinger(np.full(10, 0.1), 3, 2.0)
    assert_same_bits(upper - lower, [NAN, NAN] + [0.0] * 8)
    assert np.isnan(pctb).all()


def test_hand_atr():
    high, low, close = [10, 11, 12, 13], [9, 10, 10, 12], [9.5, 10.5, 11, 12.5]
    # TR = 1.5, 2, 2 from bar 1; atr[2] = 1.75; atr[3] = (1.75 + 2) / 2
    assert_same_bits(ind.atr(high, low, close, 2), [NAN, NAN, 1.75, 1.875])
    assert_same_bits(ind.natr(high, low, close, 2), [NAN, NAN, 175 / 11, 15.0])


def test_hand_roc_stoch_volatility():
    assert_same_bits(ind.roc([100, 50, 200], 1), [NAN, -50, 300])
    assert_same_bits(
        ind.stoch_k([10, 12, 11], [8, 9, 7], [9, 11, 10], 2), [NAN, 75, 60]
    )
    assert_same_bits(ind.stoch_k([5, 5, 5], [5, 5, 5], [5, 5, 5], 2), [NAN, 50, 50])
    # returns 1, -0.5, 1: sample std of (1, -0.5) is 1.5 / sqrt(2)
    vol = ind.volatility([1, 2, 1, 2], 2)
    assert_close(vol, [NAN, NAN, 150 / math.sqrt(2), 150 / math.sqrt(2)], rtol=1e-15)


def test_hand_highest_lowest():
    assert_same_bits(ind.highest([1, 3, 2, 5, 4], 2), [NAN, NAN, 3, 3, 5])
    assert_same_bits(ind.lowest([5, 3, 4, 1, 2], 2), [NAN, NAN, 3, 3, 1])


# --------------------------------------------------------------------------------------------
# Properties common to all indicators
# --------------------------------------------------------------------------------------------

# name -> (minimum period, outputs given bars and period, warm-up length of each output)
INDICATORS = {
    "sma": (1, lambda b, p: [ind.sma(b.close, p)], lambda p: [p - 1]),
    "ema": (1, lambda b, p: [ind.ema(b.close, p)], lambda p: [p - 1]),
    "rsi": (1, lambda b, p: [ind.rsi(b.close, p)], lambda p: [p]),
    "bollinger": (1, lambda b, p: list(ind.bollinger(b.close, p, 2.0)), lambda p: [p - 1] * 4),
    "atr": (1, lambda b, p: [ind.atr(b.high, b.low, b.close, p)], lambda p: [p]),
    "natr": (1, lambda b, p: [ind.natr(b.high, b.low, b.close, p)], lambda p: [p]),
    "roc": (1, lambda b, p: [ind.roc(b.close, p)], lambda p: [p]),
    "stoch_k": (1, lambda b, p: [ind.stoch_k(b.high, b.low, b.close, p)], lambda p: [p - 1]),
    "volatility": (2, lambda b, p: [ind.volatility(b.close, p)], lambda p: [p]),
    "highest": (1, lambda b, p: [ind.highest(b.high, p)], lambda p: [p]),
    "lowest": (1, lambda b, p: [ind.lowest(b.low, p)], lambda p: [p]),
}

PROPERTY_BARS = synthetic_ohlcv(400, seed=5)


def _prefix(bars, m):
    return SimpleNamespace(high=bars.high[:m], low=bars.low[:m], close=bars.close[:m])


def _check_warmup(outputs, warmups, n):
    for out, warmup in zip(outputs, warmups, strict=True):
        assert out.dtype == np.float64 and out.shape == (n,)
        assert np.isnan(out[:warmup]).all()
        assert np.isfinite(out[warmup:]).all()


@pytest.mark.parametrize("name", sorted(INDICATORS))
@settings(deadline=None, max_examples=60)
@given(data=st.data())
def test_warmup_length(name, data):
    min_period, compute, warmups = INDICATORS[name]
    period = data.draw(st.integers(min_period, 120), label="period")
    n = data.draw(st.integers(0, len(PROPERTY_BARS)), label="n")
    expected = warmups(period)
    if name == "bollinger" and period == 1:
        expected[3] = n  # a one-bar window has no width: %b is never defined
    _check_warmup(compute(_prefix(PROPERTY_BARS, n), period), expected, n)


@settings(deadline=None, max_examples=60)
@given(
    fast=st.integers(1, 40),
    extra=st.integers(1, 40),
    signal=st.integers(1, 40),
    n=st.integers(0, len(PROPERTY_BARS)),
)
def test_macd_warmup_length(fast, extra, signal, n):
    slow = fast + extra
    outputs = ind.macd(PROPERTY_BARS.close[:n], fast, slow, signal)
    _check_warmup(outputs, [slow - 1, slow + signal - 2, slow + signal - 2], n)


def all_outputs(bars):
    """Every indicator, with typical parameters, as a name -> array mapping."""
    out = {}
    for name, (min_period, compute, _) in INDICATORS.items():
        for period in sorted({max(min_period, 1), 14, 50}):
            for i, array in enumerate(compute(bars, period)):
                out[f"{name}_{period}_{i}"] = array
    for i, array in enumerate(ind.macd(bars.close, 12, 26, 9)):
        out[f"macd_{i}"] = array
    return out


@pytest.mark.parametrize("m", [0, 1, 2, 14, 15, 33, 34, 50, 51, 1000, 2999])
def test_no_look_ahead(m):
    full = all_outputs(BARS)
    prefix = all_outputs(_prefix(BARS, m))
    for key, array in full.items():
        assert_same_bits(prefix[key], array[:m])


INVALID_PERIODS = [0, -1, 2.5, 3.0, np.float64(3.0), "14", None, True]


PERIOD_CALLS = {
    "sma": lambda p: ind.sma(C, p),
    "ema": lambda p: ind.ema(C, p),
    "rsi": lambda p: ind.rsi(C, p),
    "bollinger": lambda p: ind.bollinger(C, p, 2.0),
    "atr": lambda p: ind.atr(H, L, C, p),
    "natr": lambda p: ind.natr(H, L, C, p),
    "roc": lambda p: ind.roc(C, p),
    "stoch_k": lambda p: ind.stoch_k(H, L, C, p),
    "volatility": lambda p: ind.volatility(C, p),
    "highest": lambda p: ind.highest(H, p),
    "lowest": lambda p: ind.lowest(L, p),
    "macd_fast": lambda p: ind.macd(C, p, 26, 9),
    "macd_slow": lambda p: ind.macd(C, 12, p, 9),
    "macd_signal": lambda p: ind.macd(C, 12, 26, p),
}


@pytest.mark.parametrize("bad", INVALID_PERIODS, ids=repr)
@pytest.mark.parametrize("name", sorted(PERIOD_CALLS))
def test_invalid_period_raises(name, bad):
    with pytest.raises(ValueError, match=r"must be an integer >= [12], got"):
        PERIOD_CALLS[name](bad)


def test_other_invalid_arguments_raise():
    with pytest.raises(ValueError, match=r"period must be an integer >= 2"):
        ind.volatility(C, 1)
    with pytest.raises(ValueError, match=r"fast must be less than slow"):
        ind.macd(C, 26, 26, 9)
    for bad_k in (0, -1.0, NAN, math.inf, "2", True):
        with pytest.raises(ValueError, match=r"k must be a positive"):
            ind.bollinger(C, 20, bad_k)
    with pytest.raises(ValueError, match=r"one-dimensional"):
        ind.sma(np.ones((10, 2)), 3)
    with pytest.raises(ValueError, match=r"low has 9 values, high has 10"):
        ind.atr(np.ones(10), np.ones(9), np.ones(10), 3)


def test_accepts_numpy_integers_read_only_and_short_inputs():
    close = BARS.close.copy()
    close.flags.writeable = False
    assert_same_bits(ind.sma(close, np.int64(20)), ind.sma(BARS.close, 20))
    assert_same_bits(ind.rsi(close[:10], 14), [NAN] * 10)
    assert ind.ema([], 3).shape == (0,)


# --------------------------------------------------------------------------------------------
# Compiled and interpreted kernels agree to the bit
# --------------------------------------------------------------------------------------------

_DIGEST_SCRIPT = """
import sys
sys.path.insert(0, {test_dir!r})
import numpy as np
from test_indicators import all_outputs, digest
from worker_client.engine.data import synthetic_ohlcv
outputs = all_outputs(synthetic_ohlcv(5000))
np.savez({npz!r}, **outputs)
print(digest(outputs))
"""


def digest(outputs):
    h = hashlib.sha256()
    for key in sorted(outputs):
        h.update(key.encode())
        h.update(np.ascontiguousarray(outputs[key], dtype=np.float64).tobytes())
    return h.hexdigest()


def _ulps_apart(a, b):
    # Map float bit patterns onto a line of integers so that neighbours differ by one.
    ia, ib = (np.where(v < 0, np.int64(-(2**63)) - v, v) for v in (a.view(np.int64),
                                                                  b.view(np.int64)))
    both = ~(np.isnan(a) | np.isnan(b))
    return int(np.max(np.abs(ia[both] - ib[both]), initial=0))


@pytest.mark.slow
def test_jit_and_pure_python_agree_bit_for_bit(tmp_path):
    npz = tmp_path / "interpreted.npz"
    script = _DIGEST_SCRIPT.format(test_dir=str(Path(__file__).parent), npz=str(npz))
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    jitted = all_outputs(synthetic_ohlcv(5000))
    if result.stdout.strip() == digest(jitted):
        return
    interpreted = np.load(npz)
    report = {}
    for key, array in jitted.items():
        other = interpreted[key]
        if array.tobytes() != other.tobytes():
            report[key] = {
                "max_ulps": _ulps_apart(array, other),
                "nan_pattern_differs": bool((np.isnan(array) != np.isnan(other)).any()),
            }
    pytest.fail(f"compiled and interpreted outputs differ: {json.dumps(report, indent=1)}")
