"""Market data as the engine sees it: contiguous float64 OHLCV arrays and int64 timestamps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SECONDS_PER_YEAR = 365 * 24 * 3600  # crypto trades every day of the year


class DataError(ValueError):
    """The candles cannot be used as given (shape, order, NaN, high < low …)."""


def as_float_series(name: str, values: object) -> np.ndarray:
    """``values`` as a contiguous, writable, one-dimensional float64 array (what kernels take)."""
    array = np.ascontiguousarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise DataError(f"{name} must be one-dimensional, got shape {array.shape}")
    # A private, writable copy: pandas 3 hands out read-only views, and numba compiles a
    # second specialisation for read-only arrays.
    if not array.flags.writeable:
        array = array.copy()
    return array


@dataclass(frozen=True, eq=False)
class OHLCV:
    """Candles in time order. ``timestamp`` is each bar's open time, UTC seconds since the epoch."""

    timestamp: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    @classmethod
    def from_arrays(
        cls,
        timestamp: object,
        open: object,
        high: object,
        low: object,
        close: object,
        volume: object | None = None,
    ) -> OHLCV:
        """Validate and convert; raises :class:`DataError` naming the first bad bar."""
        ts = np.ascontiguousarray(timestamp, dtype=np.int64)
        o, h, lo, c = (as_float_series(n, v) for n, v in
                       (("open", open), ("high", high), ("low", low), ("close", close)))
        v = np.zeros_like(c) if volume is None else as_float_series("volume", volume)
        n = len(c)
        for name, arr in (("timestamp", ts), ("open", o), ("high", h), ("low", lo), ("volume", v)):
            if len(arr) != n:
                raise DataError(f"{name} has {len(arr)} values, close has {n}")
        if n < 2:
            raise DataError(f"at least 2 bars are needed, got {n}")
        for name, arr in (("open", o), ("high", h), ("low", lo), ("close", c), ("volume", v)):
            bad = np.flatnonzero(~np.isfinite(arr))
            if bad.size:
                raise DataError(f"{name} is not finite at bar {bad[0]}")
        for name, arr in (("open", o), ("high", h), ("low", lo), ("close", c)):
            bad = np.flatnonzero(arr <= 0)
            if bad.size:
                raise DataError(f"{name} must be positive, bar {bad[0]} has {arr[bad[0]]}")
        bad = np.flatnonzero((h < np.maximum(o, c)) | (lo > np.minimum(o, c)) | (v < 0))
        if bad.size:
            i = bad[0]
            raise DataError(
                f"bar {i} is inconsistent: open={o[i]} high={h[i]} low={lo[i]} close={c[i]} "
                f"volume={v[i]} (need low <= open, close <= high and volume >= 0)"
            )
        bad = np.flatnonzero(np.diff(ts) <= 0)
        if bad.size:
            raise DataError(f"timestamps must increase: bar {bad[0] + 1} is not after bar {bad[0]}")
        return cls(ts, o, h, lo, c, v)

    def __len__(self) -> int:
        return len(self.close)

    @property
    def bar_seconds(self) -> int:
        """The bar length: the most common gap between timestamps (gaps in the data are rarer)."""
        gaps, counts = np.unique(np.diff(self.timestamp), return_counts=True)
        return int(gaps[np.argmax(counts)])

    @property
    def bars_per_year(self) -> float:
        return SECONDS_PER_YEAR / self.bar_seconds

    def slice(self, start: int, stop: int) -> OHLCV:
        """Bars ``[start, stop)`` as a new, contiguous data set."""
        return OHLCV(*(np.ascontiguousarray(a[start:stop]) for a in
                       (self.timestamp, self.open, self.high, self.low, self.close, self.volume)))


def synthetic_ohlcv(
    n_bars: int,
    *,
    seed: int = 20240501,
    bar_seconds: int = 300,
    start_timestamp: int = 1_577_836_800,  # 2020-01-01T00:00:00Z
    start_price: float = 30_000.0,
    annual_volatility: float = 0.38,
) -> OHLCV:
    """A seeded, BTC-like candle series for demos, tests and benchmarks.

    Zero-drift geometric Brownian motion whose volatility switches between three regimes
    (x0.5, x1 and x2.5 of ``annual_volatility``, mean regime length two days), with a small
    gap between each close and the next open so that "fill at the next open" and "fill at the
    close" differ, as they do on real exchanges. The same seed gives the same series on every
    machine (NumPy's PCG64 and only +, *, exp, sqrt).
    """
    if n_bars < 2:
        raise DataError("n_bars must be at least 2")
    rng = np.random.default_rng(seed)
    bars_per_year = SECONDS_PER_YEAR / bar_seconds
    base_sigma = annual_volatility / np.sqrt(bars_per_year)
    scales = np.array([0.5, 1.0, 2.5])
    stay = 1.0 - 1.0 / (2 * 86400 / bar_seconds)  # mean regime length: two days
    switches = rng.random(n_bars) > stay
    new_regimes = rng.integers(0, 3, n_bars)
    # Carry each regime forward from the bar it switched on (regime 1 until the first switch).
    last_switch = np.maximum.accumulate(np.where(switches, np.arange(n_bars), -1))
    regime = np.where(last_switch >= 0, new_regimes[np.maximum(last_switch, 0)], 1)
    sigma = base_sigma * scales[regime]
    gap = 0.05 * sigma * rng.standard_normal(n_bars)
    body = sigma * rng.standard_normal(n_bars) - 0.5 * sigma**2
    gap[0] = 0.0
    # open[t] = close[t-1] * exp(gap[t]); close[t] = open[t] * exp(body[t]). cumsum adds in order.
    log_close = np.log(start_price) + np.cumsum(gap + body)
    log_open = log_close - body
    open_ = np.exp(log_open)
    close = np.exp(log_close)
    up = np.abs(rng.standard_normal(n_bars)) * sigma * 0.5
    down = np.abs(rng.standard_normal(n_bars)) * sigma * 0.5
    high = np.maximum(open_, close) * np.exp(up)
    low = np.minimum(open_, close) * np.exp(-down)
    volume = np.exp(rng.standard_normal(n_bars) * 0.5) * 10.0 * scales[regime]
    timestamp = start_timestamp + bar_seconds * np.arange(n_bars, dtype=np.int64)
    return OHLCV.from_arrays(timestamp, open_, high, low, close, volume)
