"""The practical ceiling: a minimal hand-written numba SMA-crossover loop.

It does only what the benchmark's strategy needs and nothing a general engine must (no genome
decoding, no stops, no trade list), so our engine is measured against it. It follows the shared
convention of ``shared/reference/backtest_peers.md`` to the letter, with vectorbt's order of
floating-point operations, so its figures can be checked against vectorbt's:

- SMAs from running-cumsum differences, one row per distinct window (as vectorbt computes them);
- crossover strict, signal on bar t filled at ``open[t+1]``, long only, all-in, fee on both sides;
- an entry of less than ``min_units`` units is skipped (vectorbt's tolerance of 1e-12);
- no entries from signals on the last two bars, a position still open is sold at ``open[n-1]``;
- equity marked at each close and the return sums updated on every bar, for a Sharpe of
  ``mean(r) / std(r, ddof=1) * sqrt(bars_per_year)``.

Two kernels: one thread, and ``prange`` over the combos on all of numba's threads. No
``fastmath``: results are the same to the bit on every run and with any thread count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

_TOLERANCE = 1e-12  # vectorbt's absolute tolerance when it compares an order with min_size


@numba.njit(cache=True, nogil=True)
def sma_table(close: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """SMAs of ``close`` for each window, shape (windows, bars), NaN until the window is full."""
    n = close.shape[0]
    cumsum = np.empty(n)
    running = 0.0
    for i in range(n):
        running += close[i]
        cumsum[i] = running
    table = np.empty((windows.shape[0], n))
    for k in range(windows.shape[0]):
        w = windows[k]
        for i in range(min(w - 1, n)):
            table[k, i] = np.nan
        if w - 1 < n:
            table[k, w - 1] = cumsum[w - 1] / w
        for i in range(w, n):
            table[k, i] = (cumsum[i] - cumsum[i - w]) / w
    return table


@numba.njit(cache=True, nogil=True)
def _run_combo(open_, close, fast, slow, fee, initial_cash, min_units, bars_per_year):
    n = close.shape[0]
    cash = initial_cash
    units = 0.0
    holding = False
    entry_cash = 0.0
    pending = 0  # +1 buy, -1 sell at this bar's open (decided at the previous close)
    previous_equity = initial_cash
    sum_r = 0.0
    sum_r2 = 0.0
    n_trades = 0
    n_wins = 0
    for t in range(n):
        if pending == 1:
            size = cash / (1.0 + fee) / open_[t]
            if min_units - size <= _TOLERANCE:
                entry_cash = cash
                units = size
                cash = 0.0
                holding = True
        elif pending == -1:
            value = units * open_[t]
            cash = cash + (value - value * fee)
            n_trades += 1
            if cash > entry_cash:
                n_wins += 1
            units = 0.0
            holding = False
        pending = 0
        equity = cash + units * close[t]
        r = (equity - previous_equity) / previous_equity
        sum_r += r
        sum_r2 += r * r
        previous_equity = equity
        if t > 0:
            f0, s0, f1, s1 = fast[t - 1], slow[t - 1], fast[t], slow[t]
            if holding:
                if (f0 > s0 and f1 < s1) or t == n - 2:
                    pending = -1
            elif f0 < s0 and f1 > s1 and t < n - 2:
                pending = 1
    mean = sum_r / n
    variance = (sum_r2 - n * mean * mean) / (n - 1)
    sharpe = mean / math.sqrt(variance) * math.sqrt(bars_per_year)
    return previous_equity, n_trades, n_wins, sharpe


@numba.njit(cache=True, nogil=True)
def _grid_serial(open_, close, table, fast_row, slow_row, fee, initial_cash, min_units,
                 bars_per_year, final_equity, n_trades, n_wins, sharpe):
    for k in range(fast_row.shape[0]):
        final_equity[k], n_trades[k], n_wins[k], sharpe[k] = _run_combo(
            open_, close, table[fast_row[k]], table[slow_row[k]], fee, initial_cash, min_units,
            bars_per_year)


@numba.njit(cache=True, nogil=True, parallel=True)
def _grid_parallel(open_, close, table, fast_row, slow_row, fee, initial_cash, min_units,
                   bars_per_year, final_equity, n_trades, n_wins, sharpe):
    for k in numba.prange(fast_row.shape[0]):
        final_equity[k], n_trades[k], n_wins[k], sharpe[k] = _run_combo(
            open_, close, table[fast_row[k]], table[slow_row[k]], fee, initial_cash, min_units,
            bars_per_year)


@dataclass(frozen=True)
class GridResult:
    """One value per (fast, slow) combo, in the order given."""

    final_equity: np.ndarray
    n_trades: np.ndarray
    win_rate: np.ndarray
    sharpe: np.ndarray


def run_grid(
    open_: np.ndarray,
    close: np.ndarray,
    pairs: list[tuple[int, int]],
    *,
    fee: float = 0.001,
    initial_cash: float = 10_000.0,
    min_units: float = 1e-8,
    bars_per_year: float = 105_120.0,
    parallel: bool = False,
) -> GridResult:
    """Backtest every (fast, slow) pair; the SMA table is built once per call, one row per window.

    ``parallel`` spreads the combos over ``numba.get_num_threads()`` threads.
    """
    windows = np.array(sorted({w for pair in pairs for w in pair}), dtype=np.int64)
    row = {int(w): i for i, w in enumerate(windows)}
    fast_row = np.array([row[f] for f, _ in pairs], dtype=np.int64)
    slow_row = np.array([row[s] for _, s in pairs], dtype=np.int64)
    table = sma_table(close, windows)
    k = len(pairs)
    final_equity, sharpe = np.empty(k), np.empty(k)
    n_trades, n_wins = np.empty(k, dtype=np.int64), np.empty(k, dtype=np.int64)
    kernel = _grid_parallel if parallel else _grid_serial
    kernel(open_, close, table, fast_row, slow_row, fee, initial_cash, min_units, bars_per_year,
           final_equity, n_trades, n_wins, sharpe)
    with np.errstate(invalid="ignore", divide="ignore"):
        win_rate = n_wins / n_trades
    return GridResult(final_equity, n_trades, win_rate, sharpe)
