"""Technical indicators: validated wrappers over deterministic numba kernels.

Every public function takes 1-D price arrays (anything ``np.asarray`` accepts), returns new
float64 arrays of the same length, and puts NaN in the warm-up window, where the indicator is
not yet defined. Output ``t`` uses inputs ``0..t`` only: nothing looks ahead.

Determinism across volunteers' machines is the point. The kernels use only ``+ - * /``,
``sqrt`` (correctly rounded by IEEE 754), comparisons and min/max, in a fixed order, compiled
without ``fastmath``; no ``exp``, ``log`` or ``pow``, whose libm results differ between
platforms. Run under ``NUMBA_DISABLE_JIT=1`` they give the same bits as compiled.

Inputs are expected to be finite, as :class:`~worker_client.engine.data.OHLCV` guarantees.
The one exception is :func:`ema`, which accepts leading NaNs (the MACD signal line is an EMA
of the MACD line, NaN during its own warm-up). A NaN elsewhere is not an error, but it
spreads: into every later value of the cumulative and recursive indicators (``sma``,
``bollinger``'s middle band, ``ema``, ``macd``, ``rsi``, ``atr``), into each window that holds
it for the others.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from worker_client.engine._jit import njit
from worker_client.engine.data import as_float_series as _as_series

# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _as_same_length(**series: object) -> list[np.ndarray]:
    arrays = [_as_series(name, values) for name, values in series.items()]
    names = list(series)
    for name, array in zip(names[1:], arrays[1:], strict=True):
        if len(array) != len(arrays[0]):
            raise ValueError(
                f"{name} has {len(array)} values, {names[0]} has {len(arrays[0])}"
            )
    return arrays


def _as_period(name: str, value: object, minimum: int = 1) -> int:
    # bool is an int to Python, but period=True is a bug, not a period of one.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _as_positive_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    result = float(value)
    if not (math.isfinite(result) and result > 0.0):
        raise ValueError(f"{name} must be a positive, finite number, got {value!r}")
    return result


# --------------------------------------------------------------------------------------------
# Kernels (arrays and scalars only)
# --------------------------------------------------------------------------------------------


@njit
def _sma_kernel(x, period):
    n = x.shape[0]
    out = np.full(n, np.nan)
    # vectorbt's rolling_mean_1d_nb, operation for operation, so that crossings of our moving
    # averages and theirs agree to the last bit: out[t] = (c[t] - c[t-period]) / period.
    csum = np.empty(n)
    c = 0.0
    for t in range(n):
        c = c + x[t]
        csum[t] = c
        if t == period - 1:
            out[t] = c / period
        elif t >= period:
            out[t] = (c - csum[t - period]) / period
    return out


@njit
def _ema_kernel(x, period):
    n = x.shape[0]
    out = np.full(n, np.nan)
    # Seed at the first bar that ends `period` consecutive non-NaN values (t = period-1 for a
    # clean series; later for a series with its own warm-up, like the MACD line).
    seed = -1
    run = 0
    for t in range(n):
        if np.isnan(x[t]):
            run = 0
        else:
            run += 1
            if run == period:
                seed = t
                break
    if seed < 0:
        return out
    total = 0.0
    for i in range(seed - period + 1, seed + 1):
        total = total + x[i]
    e = total / period  # TA-Lib's seed: the SMA of the first `period` values
    out[seed] = e
    alpha = 2.0 / (period + 1.0)
    for t in range(seed + 1, n):
        e = e + alpha * (x[t] - e)
        out[t] = e
    return out


@njit
def _rsi_kernel(close, period):
    n = close.shape[0]
    out = np.full(n, np.nan)
    if n <= period:
        return out
    gain_sum = 0.0
    loss_sum = 0.0
    for t in range(1, period + 1):
        d = close[t] - close[t - 1]
        if d > 0.0:
            gain_sum = gain_sum + d
        elif d < 0.0:
            loss_sum = loss_sum - d
    avg_gain = gain_sum / period
    avg_loss = loss_sum / period
    out[period] = _rsi_value(avg_gain, avg_loss)
    for t in range(period + 1, n):
        d = close[t] - close[t - 1]
        gain = d if d > 0.0 else 0.0
        loss = -d if d < 0.0 else 0.0
        # Wilder's smoothing, written as he did (not as an EMA with alpha = 1/period, which
        # rounds differently).
        avg_gain = (avg_gain * (period - 1) + gain) / period
        avg_loss = (avg_loss * (period - 1) + loss) / period
        out[t] = _rsi_value(avg_gain, avg_loss)
    return out


@njit
def _rsi_value(avg_gain, avg_loss):
    if avg_loss == 0.0:
        # No losses in the window: all gains is 100, no movement at all is neutral.
        return 100.0 if avg_gain > 0.0 else 50.0
    return 100.0 - 100.0 / (1.0 + avg_gain / avg_loss)


@njit
def _macd_kernel(close, fast, slow, signal):
    line = _ema_kernel(close, fast) - _ema_kernel(close, slow)
    signal_line = _ema_kernel(line, signal)
    return line, signal_line, line - signal_line


@njit
def _bollinger_kernel(close, period, k):
    n = close.shape[0]
    mid = _sma_kernel(close, period)
    upper = np.full(n, np.nan)
    lower = np.full(n, np.nan)
    pctb = np.full(n, np.nan)
    for t in range(period - 1, n):
        std = math.sqrt(_window_var(close, t - period + 1, t + 1, close[t], 0))
        upper[t] = mid[t] + k * std
        lower[t] = mid[t] - k * std
        width = upper[t] - lower[t]
        if width != 0.0:
            pctb[t] = (close[t] - lower[t]) / width
    return mid, upper, lower, pctb


@njit
def _window_var(x, start, stop, shift, ddof):
    """Variance of ``x[start:stop]``: two passes over the data shifted by ``shift``.

    The shift (a value from the window) keeps the sums small next to prices of ~30,000, and
    makes a window of equal values come out exactly 0 (so that the bands touch and %b is NaN).
    Recomputing every window costs O(period) per bar but leaves no drift to correct.
    """
    m = stop - start
    total = 0.0
    for i in range(start, stop):
        total = total + (x[i] - shift)
    mean = total / m
    squares = 0.0
    for i in range(start, stop):
        d = (x[i] - shift) - mean
        squares = squares + d * d
    return squares / (m - ddof)


@njit
def _atr_kernel(high, low, close, period):
    n = close.shape[0]
    out = np.full(n, np.nan)
    if n <= period:
        return out
    total = 0.0
    for t in range(1, period + 1):
        total = total + _true_range(high[t], low[t], close[t - 1])
    a = total / period
    out[period] = a
    for t in range(period + 1, n):
        a = (a * (period - 1) + _true_range(high[t], low[t], close[t - 1])) / period
        out[t] = a
    return out


@njit
def _true_range(high, low, prev_close):
    tr = high - low
    up = abs(high - prev_close)
    down = abs(low - prev_close)
    if up > tr:
        tr = up
    if down > tr:
        tr = down
    return tr


@njit
def _natr_kernel(high, low, close, period):
    a = _atr_kernel(high, low, close, period)
    out = np.full(close.shape[0], np.nan)
    for t in range(period, close.shape[0]):
        out[t] = 100.0 * a[t] / close[t]
    return out


@njit
def _roc_kernel(close, period):
    n = close.shape[0]
    out = np.full(n, np.nan)
    for t in range(period, n):
        out[t] = 100.0 * (close[t] / close[t - period] - 1.0)
    return out


@njit
def _stoch_k_kernel(high, low, close, period):
    n = close.shape[0]
    hh = _rolling_max(high, period)
    ll = _rolling_min(low, period)
    out = np.full(n, np.nan)
    for t in range(period - 1, n):
        if hh[t] == ll[t]:
            out[t] = 50.0  # a flat window: the close is neither high nor low in it
        else:
            out[t] = 100.0 * (close[t] - ll[t]) / (hh[t] - ll[t])
    return out


@njit
def _volatility_kernel(close, period):
    n = close.shape[0]
    out = np.full(n, np.nan)
    returns = np.full(n, np.nan)
    for t in range(1, n):
        returns[t] = close[t] / close[t - 1] - 1.0
    for t in range(period, n):
        var = _window_var(returns, t - period + 1, t + 1, returns[t], 1)
        out[t] = 100.0 * math.sqrt(var)
    return out


@njit
def _rolling_max(x, period):
    """``max(x[t-period+1..t])`` (current bar included), NaN for t < period-1; O(n).

    A monotonic deque of indices whose values decrease from head to tail: the head is the
    window's maximum. Every index is pushed once, so a plain array of n slots serves as the
    deque with two cursors.
    """
    n = x.shape[0]
    out = np.full(n, np.nan)
    queue = np.empty(n, dtype=np.int64)
    head = 0
    tail = 0
    for t in range(n):
        while tail > head and x[queue[tail - 1]] <= x[t]:
            tail -= 1
        queue[tail] = t
        tail += 1
        if queue[head] <= t - period:
            head += 1  # one push per bar, so at most one index leaves per bar
        if t >= period - 1:
            out[t] = x[queue[head]]
    return out


@njit
def _rolling_min(x, period):
    """``min(x[t-period+1..t])``; :func:`_rolling_max` with the comparison turned round."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    queue = np.empty(n, dtype=np.int64)
    head = 0
    tail = 0
    for t in range(n):
        while tail > head and x[queue[tail - 1]] >= x[t]:
            tail -= 1
        queue[tail] = t
        tail += 1
        if queue[head] <= t - period:
            head += 1
        if t >= period - 1:
            out[t] = x[queue[head]]
    return out


@njit
def _highest_kernel(high, period):
    n = high.shape[0]
    including = _rolling_max(high, period)
    out = np.full(n, np.nan)
    # Shift by one bar: the window ends at the previous bar, so close > highest is a breakout.
    for t in range(period, n):
        out[t] = including[t - 1]
    return out


@njit
def _lowest_kernel(low, period):
    n = low.shape[0]
    including = _rolling_min(low, period)
    out = np.full(n, np.nan)
    for t in range(period, n):
        out[t] = including[t - 1]
    return out


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def sma(x: object, period: int) -> np.ndarray:
    """Simple moving average.

    Parameters
    ----------
    x : array_like, shape (n,)
        Values, in any unit (usually a price).
    period : int
        Window length in bars, >= 1.

    Returns
    -------
    numpy.ndarray, shape (n,), float64
        ``mean(x[t-period+1..t])`` in the unit of ``x``; NaN for ``t < period - 1``.

    Notes
    -----
    Computed from a running sum, ``(c[t] - c[t-period]) / period``, exactly as vectorbt's
    ``rolling_mean_1d_nb`` does, so the two agree bit for bit. The running sum grows with the
    series and so does its rounding: after a million bars of BTC-like prices (30,000 falling to
    2,000) the mean is off by up to ~1e-10 relative, against ~1e-16 for a per-window sum.
    """
    return _sma_kernel(_as_series("x", x), _as_period("period", period))


def ema(x: object, period: int) -> np.ndarray:
    """Exponential moving average, TA-Lib convention.

    Parameters
    ----------
    x : array_like, shape (n,)
        Values, in any unit. Leading NaNs are allowed (an indicator's warm-up).
    period : int
        Span in bars, >= 1; the smoothing factor is ``alpha = 2 / (period + 1)``.

    Returns
    -------
    numpy.ndarray, shape (n,), float64
        In the unit of ``x``. Seeded with the mean of the first ``period`` consecutive non-NaN
        values at the bar that completes them (``t = period - 1`` for a series without leading
        NaNs), NaN before; then ``e[t] = e[t-1] + alpha * (x[t] - e[t-1])``.
    """
    return _ema_kernel(_as_series("x", x), _as_period("period", period))


def rsi(close: object, period: int = 14) -> np.ndarray:
    """Relative Strength Index with Wilder's smoothing.

    Parameters
    ----------
    close : array_like, shape (n,)
        Closing prices.
    period : int, default 14
        Smoothing length in bars, >= 1.

    Returns
    -------
    numpy.ndarray, shape (n,), float64
        RSI in [0, 100]; NaN for ``t < period``. The first average gain (loss) is the mean of
        the gains (losses) of bars ``1..period``; afterwards
        ``avg = (avg_prev * (period - 1) + current) / period``. With no average loss the RSI
        is 100, or 50 if there is no average gain either.
    """
    return _rsi_kernel(_as_series("close", close), _as_period("period", period))


def macd(
    close: object, fast: int = 12, slow: int = 26, signal: int = 9
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Moving Average Convergence/Divergence.

    Parameters
    ----------
    close : array_like, shape (n,)
        Closing prices.
    fast, slow : int, default 12, 26
        Spans of the two EMAs in bars, ``1 <= fast < slow``.
    signal : int, default 9
        Span of the signal line's EMA in bars, >= 1.

    Returns
    -------
    line, signal_line, hist : numpy.ndarray, shape (n,), float64
        In price units. ``line = ema(close, fast) - ema(close, slow)``, NaN for
        ``t < slow - 1``; ``signal_line = ema(line, signal)``, seeded on the first ``signal``
        values of the line, so NaN for ``t < slow + signal - 2``; ``hist = line - signal_line``.
    """
    c = _as_series("close", close)
    fast_ = _as_period("fast", fast)
    slow_ = _as_period("slow", slow)
    signal_ = _as_period("signal", signal)
    if fast_ >= slow_:
        raise ValueError(f"fast must be less than slow, got fast={fast_}, slow={slow_}")
    return _macd_kernel(c, fast_, slow_, signal_)


def bollinger(
    close: object, period: int = 20, k: float = 2.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bollinger Bands and %b.

    Parameters
    ----------
    close : array_like, shape (n,)
        Closing prices.
    period : int, default 20
        Window length in bars, >= 1.
    k : float, default 2.0
        Band half-width in standard deviations, > 0.

    Returns
    -------
    mid, upper, lower, pctb : numpy.ndarray, shape (n,), float64
        ``mid = sma(close, period)``; ``upper``/``lower = mid ± k * std`` with ``std`` the
        population standard deviation (ddof=0) of the window, all in price units; ``pctb =
        (close - lower) / (upper - lower)``, dimensionless (0 at the lower band, 1 at the
        upper), NaN where ``upper == lower``. All NaN for ``t < period - 1``.

    Notes
    -----
    The standard deviation is recomputed in two passes for each window (O(n * period)), not
    carried in running sums of squares, which lose most of their digits at prices ~30,000.
    """
    c = _as_series("close", close)
    return _bollinger_kernel(c, _as_period("period", period), _as_positive_float("k", k))


def atr(high: object, low: object, close: object, period: int = 14) -> np.ndarray:
    """Average True Range with Wilder's smoothing.

    Parameters
    ----------
    high, low, close : array_like, shape (n,)
        Bar highs, lows and closes, equally long.
    period : int, default 14
        Smoothing length in bars, >= 1.

    Returns
    -------
    numpy.ndarray, shape (n,), float64
        In price units; NaN for ``t < period``. The true range is
        ``max(high - low, |high - close[t-1]|, |low - close[t-1]|)`` (``high[0] - low[0]`` at
        bar 0, which the average never uses); ``atr[period]`` is the mean true range of bars
        ``1..period``, then ``atr = (atr_prev * (period - 1) + tr) / period``.
    """
    h, lo, c = _as_same_length(high=high, low=low, close=close)
    return _atr_kernel(h, lo, c, _as_period("period", period))


def natr(high: object, low: object, close: object, period: int = 14) -> np.ndarray:
    """Normalised ATR: ``100 * atr / close``, in percent of the close; NaN for ``t < period``.

    Parameters are those of :func:`atr`.
    """
    h, lo, c = _as_same_length(high=high, low=low, close=close)
    return _natr_kernel(h, lo, c, _as_period("period", period))


def roc(close: object, period: int = 10) -> np.ndarray:
    """Rate of change over ``period`` bars, in percent.

    Parameters
    ----------
    close : array_like, shape (n,)
        Closing prices (positive).
    period : int, default 10
        Look-back in bars, >= 1.

    Returns
    -------
    numpy.ndarray, shape (n,), float64
        ``100 * (close[t] / close[t-period] - 1)``; NaN for ``t < period``.
    """
    return _roc_kernel(_as_series("close", close), _as_period("period", period))


def stoch_k(high: object, low: object, close: object, period: int = 14) -> np.ndarray:
    """Fast stochastic %K.

    Parameters
    ----------
    high, low, close : array_like, shape (n,)
        Bar highs, lows and closes, equally long.
    period : int, default 14
        Window length in bars, >= 1, the current bar included.

    Returns
    -------
    numpy.ndarray, shape (n,), float64
        ``100 * (close - LL) / (HH - LL)`` in [0, 100] for well-formed bars, with ``HH`` the
        highest high and ``LL`` the lowest low of bars ``t-period+1..t``; 50 where
        ``HH == LL``; NaN for ``t < period - 1``.
    """
    h, lo, c = _as_same_length(high=high, low=low, close=close)
    return _stoch_k_kernel(h, lo, c, _as_period("period", period))


def volatility(close: object, period: int = 20) -> np.ndarray:
    """Rolling standard deviation of simple returns, in percent per bar (not annualised).

    Parameters
    ----------
    close : array_like, shape (n,)
        Closing prices (positive).
    period : int, default 20
        Number of returns in the window, >= 2.

    Returns
    -------
    numpy.ndarray, shape (n,), float64
        ``100 * std(r[t-period+1..t], ddof=1)`` with ``r[t] = close[t] / close[t-1] - 1``;
        NaN for ``t < period``.
    """
    c = _as_series("close", close)
    return _volatility_kernel(c, _as_period("period", period, minimum=2))


def highest(high: object, period: int) -> np.ndarray:
    """Highest value of the previous ``period`` bars, the current bar excluded.

    Parameters
    ----------
    high : array_like, shape (n,)
        Values, usually bar highs.
    period : int
        Window length in bars, >= 1.

    Returns
    -------
    numpy.ndarray, shape (n,), float64
        ``max(high[t-period..t-1])`` in the unit of ``high``; NaN for ``t < period``. Because
        the current bar is left out, ``close > highest(high, 20)`` is a 20-bar breakout.
    """
    return _highest_kernel(_as_series("high", high), _as_period("period", period))


def lowest(low: object, period: int) -> np.ndarray:
    """Lowest value of the previous ``period`` bars, the current bar excluded.

    Parameters
    ----------
    low : array_like, shape (n,)
        Values, usually bar lows.
    period : int
        Window length in bars, >= 1.

    Returns
    -------
    numpy.ndarray, shape (n,), float64
        ``min(low[t-period..t-1])`` in the unit of ``low``; NaN for ``t < period``.
    """
    return _lowest_kernel(_as_series("low", low), _as_period("period", period))
