"""The bar-by-bar backtest: one numba kernel for a single genome or a whole population.

Conventions (the conformance tests pin them against backtesting.py and vectorbt):

* **Signals** are decided at the close of bar *t* from data up to and including *t*, and fill at
  the **open of bar t+1**. A crossing is strict: ``a[t-1] < b[t-1] and a[t] > b[t]``.
* **Fees** are a fraction of traded value, charged on entry and again on exit; **slippage**
  moves every fill against the trader by a fraction of the price.
* **Sizing**: a position commits ``size`` × equity, fees included:
  ``units = equity · size / (fill · (1 + fee))``, in fractional units; an order of less than
  1e-8 units is skipped (vectorbt's ``min_size``, one satoshi, compared as vectorbt does with
  an absolute tolerance of 1e-12 units).
* **Stops** are checked against each bar's high and low while a position is open, from the bar
  it was entered on. Levels are fixed before the bar starts (the trailing stop follows the
  highest high — lowest low for shorts — of the *previous* bars), and when the stop-loss (or
  trailing stop) and the take-profit both lie inside one bar's range, the **stop is assumed to
  have hit first** — the conservative choice, since the path inside a bar is unknown. A bar
  that opens beyond a level fills at its open.
* **End of data**: no entries from signals on the last two bars of the range; a position still
  open on the last bar is closed at that bar's open, fee charged, so every trade is closed and
  final equity is cash.
* **Returns** for the metrics are close-to-close changes of equity marked at each close, one per
  bar of the range, starting from the initial cash; annualised with the data's bars per year.

No look-ahead anywhere: bar *t*'s decisions read only indicator values up to *t*, and indicators
read only data up to *t* (tests truncate the data and check that earlier decisions stand).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numba
import numpy as np
from numba import prange

from ._jit import njit
from .data import OHLCV
from .genome import MAX_CONDITIONS, Genome
from .series import FeatureTable

MIN_UNITS = 1e-8
MIN_UNITS_TOLERANCE = 1e-12  # vectorbt compares order sizes with this absolute tolerance

# Codes the kernel sees. Comparisons with a number have their own codes (see ``holds``).
_GT, _LT, _CROSS_ABOVE, _CROSS_BELOW = 1, 2, 3, 4
_GT_VALUE, _LT_VALUE, _CROSS_ABOVE_VALUE, _CROSS_BELOW_VALUE = 5, 6, 7, 8
_OPS = {"gt": _GT, "lt": _LT, "cross_above": _CROSS_ABOVE, "cross_below": _CROSS_BELOW}
_VALUE_OFFSET = _GT_VALUE - _GT
_MAX_CONDITIONS = MAX_CONDITIONS
_DIRECTIONS = {"long": 1, "short": -1, "long_short": 0}
EXIT_REASONS = ("", "signal", "stop_loss", "take_profit", "trailing_stop", "end")
_SIGNAL, _STOP_LOSS, _TAKE_PROFIT, _TRAILING, _END = 1, 2, 3, 4, 5

METRIC_FIELDS = (
    "final_equity", "net_profit", "total_return", "annual_return", "sharpe", "sortino",
    "max_drawdown", "calmar", "n_trades", "win_rate", "profit_factor", "exposure",
    "avg_trade_return", "return_mean", "return_std", "return_skew", "return_kurtosis",
    "n_returns",
)
METRICS_DTYPE = np.dtype([(name, np.float64) for name in METRIC_FIELDS])
_N_METRICS = len(METRIC_FIELDS)
_TRADE_COLUMNS = 8
# The kernel's trade columns 0-6, in order; column 7 is the exit reason's code.
_TRADE_NUMERIC_FIELDS = ("entry_bar", "exit_bar", "side", "entry_price", "exit_price", "units",
                         "pnl")
TRADE_DTYPE = np.dtype([
    ("entry_bar", np.int64), ("exit_bar", np.int64), ("side", np.int8),
    ("entry_price", np.float64), ("exit_price", np.float64), ("units", np.float64),
    ("pnl", np.float64), ("exit_reason", "U13"),
])


# ---------------------------------------------------------------------------------------------
# Kernels: arrays and scalars only.


@njit
def _close_position(q, fill, entry_price, entry_bar, t, reason, fee, cash, stats, record,
                    trades_out):
    """Close the position of ``q`` units at ``fill``; returns the new cash.

    ``stats`` accumulates [trades, wins, gross profit, gross loss, sum of trade returns].
    Called only on bars that trade, so the cost of a function call does not matter here (on
    every bar it would: numba passes arrays to a callee with reference-count updates).
    """
    units = abs(q)
    pnl = q * (fill - entry_price) - units * (entry_price + fill) * fee
    stats[0] += 1.0
    if pnl > 0.0:
        stats[1] += 1.0
        stats[2] += pnl
    else:
        stats[3] -= pnl
    stats[4] += pnl / (units * entry_price)
    if record:
        i = int(stats[0]) - 1
        trades_out[i, 0] = entry_bar
        trades_out[i, 1] = t
        trades_out[i, 2] = 1.0 if q > 0.0 else -1.0
        trades_out[i, 3] = entry_price
        trades_out[i, 4] = fill
        trades_out[i, 5] = units
        trades_out[i, 6] = pnl
        trades_out[i, 7] = reason
    return cash + q * fill - units * fill * fee


@njit
def _simulate(open_, high, low, close, table, ops, a, b, v, p, direction, stop_loss, take_profit,
              trailing, size, fee, slippage, initial_cash, start, stop, bars_per_year, out,
              record, equity_out, trades_out):
    """Run genome ``p`` of the encoded arrays over bars [start, stop); metrics into ``out[p]``.

    With ``record``, also writes close-marked equity into ``equity_out`` and closed trades into
    ``trades_out``; returns the number of trades.

    The loop alternates two phases, so that each bar does only what its state needs: while
    flat it only looks for an entry signal (equity is constant, the return is exactly 0);
    while in a position it checks stops, marks equity to the close and evaluates the exit.
    """
    last = stop - 1

    def holds(rule, t):
        """AND of the rule's conditions at bar t (t >= 1); an empty rule never holds.

        A closure, which numba inlines: a call per bar would cost more than the bar. One
        branch per operator, with no "series or number?" test on the operand: that test
        alone made the kernel several times slower.
        """
        ok = False
        for k in range(_MAX_CONDITIONS):
            op = ops[p, rule, k]
            if op == 0:
                break
            x = table[a[p, rule, k], t]
            if op == _GT:
                ok = x > table[b[p, rule, k], t]
            elif op == _LT:
                ok = x < table[b[p, rule, k], t]
            elif op == _CROSS_ABOVE:
                ok = (table[a[p, rule, k], t - 1] < table[b[p, rule, k], t - 1]
                      and x > table[b[p, rule, k], t])
            elif op == _CROSS_BELOW:
                ok = (table[a[p, rule, k], t - 1] > table[b[p, rule, k], t - 1]
                      and x < table[b[p, rule, k], t])
            elif op == _GT_VALUE:
                ok = x > v[p, rule, k]
            elif op == _LT_VALUE:
                ok = x < v[p, rule, k]
            elif op == _CROSS_ABOVE_VALUE:
                ok = table[a[p, rule, k], t - 1] < v[p, rule, k] and x > v[p, rule, k]
            else:
                ok = table[a[p, rule, k], t - 1] > v[p, rule, k] and x < v[p, rule, k]
            if not ok:
                break
        return ok

    def wanted_side(t, side):
        """The side the rules ask for at the close of bar t, given the current side."""
        if direction != 0:  # one direction: the entry rule opens, the exit rule closes
            if side == 0:
                return direction if holds(0, t) else 0
            return 0 if holds(1, t) else side
        go_long = holds(0, t)  # long/short: the entry rule goes long, the exit rule short
        go_short = holds(1, t)
        if go_long and not go_short:
            return 1
        if go_short and not go_long:
            return -1
        return side

    def opened(side, price, cash):
        """(signed units, cash left, entry fill) after opening ``side`` at ``price``.

        No position (0 units) when the order would be under the minimum of 1e-8 units
        (``MIN_UNITS``, less vectorbt's 1e-12 tolerance), which also covers an account with
        nothing left.
        """
        committed = cash * size  # fee included
        fill = price * (1.0 + slippage) if side > 0 else price * (1.0 - slippage)
        units = committed / (fill * (1.0 + fee))
        if MIN_UNITS - units > MIN_UNITS_TOLERANCE:
            return 0.0, cash, 0.0
        if side > 0:  # paid exactly what was committed: all-in leaves exactly 0, no residue
            return units, cash - committed, fill
        return -units, cash + units * fill * (1.0 - fee), fill  # short: proceeds less the fee

    has_stops = stop_loss > 0.0 or take_profit > 0.0 or trailing > 0.0
    cash = initial_cash
    q = 0.0  # signed units held
    entry_price = 0.0
    entry_bar = -1
    extreme = 0.0  # highest high (long) / lowest low (short) of the position's earlier bars
    prev_eq = initial_cash
    peak_eq = initial_cash
    trough_eq = initial_cash  # lowest equity since the peak
    max_dd = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    s4 = 0.0
    down2 = 0.0
    bars_in = 0
    stats = np.zeros(5)
    flat_from = start  # first bar whose close is decided while flat
    while True:
        # Flat: find the first signal bar; entries need a signal on a bar before last - 1.
        signal = -1
        side = 0
        for s in range(max(flat_from, 1), last - 1):
            side = wanted_side(s, 0)
            if side != 0:
                signal = s
                break
        if record:
            equity_out[flat_from - start:(signal if signal >= 0 else last) + 1 - start] = cash
        if signal < 0:
            break
        t = signal + 1
        q, cash, entry_price = opened(side, open_[t], cash)
        if q == 0.0:  # below the minimum order (or a ruined account): still flat
            flat_from = t
            continue
        entry_bar = t
        extreme = entry_price
        # In a position from the open of bar t.
        while True:
            if has_stops and q != 0.0:  # levels are fixed before the bar: its high/low come after
                px = -1.0
                reason = 0
                if q > 0.0:
                    level = -1.0
                    if stop_loss > 0.0:
                        level = entry_price * (1.0 - stop_loss)
                        reason = _STOP_LOSS
                    if trailing > 0.0 and extreme * (1.0 - trailing) > level:
                        level = extreme * (1.0 - trailing)
                        reason = _TRAILING
                    if reason != 0 and low[t] <= level:
                        px = min(open_[t], level)
                    elif take_profit > 0.0 and high[t] >= entry_price * (1.0 + take_profit):
                        px = max(open_[t], entry_price * (1.0 + take_profit))
                        reason = _TAKE_PROFIT
                    elif high[t] > extreme:
                        extreme = high[t]
                else:
                    level = np.inf
                    if stop_loss > 0.0:
                        level = entry_price * (1.0 + stop_loss)
                        reason = _STOP_LOSS
                    if trailing > 0.0 and extreme * (1.0 + trailing) < level:
                        level = extreme * (1.0 + trailing)
                        reason = _TRAILING
                    if reason != 0 and high[t] >= level:
                        px = max(open_[t], level)
                    elif take_profit > 0.0 and low[t] <= entry_price * (1.0 - take_profit):
                        px = min(open_[t], entry_price * (1.0 - take_profit))
                        reason = _TAKE_PROFIT
                    elif low[t] < extreme:
                        extreme = low[t]
                if px > 0.0:
                    fill = px * (1.0 - slippage) if q > 0.0 else px * (1.0 + slippage)
                    cash = _close_position(q, fill, entry_price, entry_bar, t, reason, fee, cash,
                                           stats, record, trades_out)
                    q = 0.0
            # Mark bar t to its close.
            eq = cash + q * close[t]
            r = (eq - prev_eq) / prev_eq
            s1 += r
            r2 = r * r
            s2 += r2
            s3 += r2 * r
            s4 += r2 * r2
            if r < 0.0:
                down2 += r2
            if eq > peak_eq:
                peak_eq = eq
                trough_eq = eq
            elif eq < trough_eq:
                trough_eq = eq
                if peak_eq - eq > max_dd * peak_eq:
                    max_dd = (peak_eq - eq) / peak_eq
            prev_eq = eq
            if record:
                equity_out[t - start] = eq
            if q == 0.0:  # closed during this bar: look for the next entry from its close
                flat_from = t
                break
            bars_in += 1
            side = 1 if q > 0.0 else -1
            want = wanted_side(t, side)
            t += 1
            if want == side and t < last:
                continue
            # The position closes at this open: on an exit signal, or at the end of the data.
            fill = open_[t] * (1.0 - slippage) if q > 0.0 else open_[t] * (1.0 + slippage)
            cash = _close_position(q, fill, entry_price, entry_bar, t,
                                   _END if t == last else _SIGNAL, fee, cash, stats, record,
                                   trades_out)
            q = 0.0
            if want != 0 and want != side and t < last:  # long/short reverses at the same open
                q, cash, entry_price = opened(want, open_[t], cash)
                entry_bar = t
                extreme = entry_price

    n_trades = int(stats[0])
    wins = stats[1]
    gross_profit = stats[2]
    gross_loss = stats[3]
    sum_trade_return = stats[4]
    n = stop - start
    mean = s1 / n
    var = (s2 - s1 * mean) / (n - 1) if n > 1 else 0.0
    std = math.sqrt(var) if var > 0.0 else 0.0
    ann = math.sqrt(bars_per_year)
    downside = math.sqrt(down2 / n)
    m2 = s2 / n - mean * mean
    final = cash
    out[p, 0] = final
    out[p, 1] = final - initial_cash
    out[p, 2] = final / initial_cash - 1.0
    out[p, 3] = (final / initial_cash) ** (bars_per_year / n) - 1.0 if final > 0.0 else -1.0
    out[p, 4] = mean / std * ann if std > 0.0 else 0.0
    if downside > 0.0:
        out[p, 5] = mean / downside * ann
    else:
        out[p, 5] = np.inf if mean > 0.0 else 0.0
    out[p, 6] = max_dd
    out[p, 7] = out[p, 3] / max_dd if max_dd > 0.0 else 0.0
    out[p, 8] = n_trades
    out[p, 9] = wins / n_trades if n_trades > 0 else 0.0
    if gross_loss > 0.0:
        out[p, 10] = gross_profit / gross_loss
    else:
        out[p, 10] = np.inf if gross_profit > 0.0 else 0.0
    out[p, 11] = bars_in / n
    out[p, 12] = sum_trade_return / n_trades if n_trades > 0 else 0.0
    out[p, 13] = mean
    out[p, 14] = std
    if m2 > 0.0:
        m3 = s3 / n - 3.0 * mean * s2 / n + 2.0 * mean * mean * mean
        m4 = s4 / n - 4.0 * mean * s3 / n + 6.0 * mean * mean * s2 / n - 3.0 * mean ** 4
        out[p, 15] = m3 / (m2 * math.sqrt(m2))
        out[p, 16] = m4 / (m2 * m2)
    else:
        out[p, 15] = np.nan
        out[p, 16] = np.nan
    out[p, 17] = n
    return n_trades


@njit(parallel=True)
def _simulate_population(open_, high, low, close, table, ops, a, b, v, direction, stop_loss,
                         take_profit, trailing, size, fee, slippage, initial_cash, start, stop,
                         bars_per_year, out):
    no_equity = np.empty(0)
    no_trades = np.empty((0, 8))
    # Each genome is independent: the answer cannot depend on how prange splits the work.
    for p in prange(ops.shape[0]):
        _simulate(open_, high, low, close, table, ops, a, b, v, p, direction[p],
                  stop_loss[p], take_profit[p], trailing[p], size[p], fee, slippage,
                  initial_cash, start, stop, bars_per_year, out, False, no_equity, no_trades)


# ---------------------------------------------------------------------------------------------
# Public API.


@dataclass(frozen=True)
class Costs:
    """Trading costs, each a fraction: ``fee`` of traded value per side, ``slippage`` of price."""

    fee: float = 0.001
    slippage: float = 0.0

    def __post_init__(self) -> None:
        for name in ("fee", "slippage"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and 0 <= value < 0.1):
                raise ValueError(f"{name} must be a fraction in [0, 0.1), got {value!r}")


@dataclass(frozen=True)
class Metrics:
    """A backtest's figures. Returns and drawdown are fractions; Sharpe and Sortino annualised.

    ``return_mean/std/skew/kurtosis`` are moments of the per-bar returns (kurtosis not excess,
    3 for a normal distribution), as the deflated Sharpe ratio needs them.
    """

    final_equity: float
    net_profit: float
    total_return: float
    annual_return: float
    sharpe: float
    sortino: float
    max_drawdown: float
    calmar: float
    n_trades: int
    win_rate: float
    profit_factor: float
    exposure: float
    avg_trade_return: float
    return_mean: float
    return_std: float
    return_skew: float
    return_kurtosis: float
    n_returns: int

    @classmethod
    def from_row(cls, row: Any) -> Metrics:
        values: dict[str, Any] = {name: float(row[name]) for name in METRIC_FIELDS}
        values["n_trades"] = int(values["n_trades"])
        values["n_returns"] = int(values["n_returns"])
        return cls(**values)

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready: infinities and NaN (undefined figures) become None."""
        out: dict[str, float | int | None] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value if isinstance(value, int) or math.isfinite(value) else None
        return out


@dataclass(frozen=True)
class BacktestResult:
    metrics: Metrics
    equity: np.ndarray  # close-marked equity, one value per bar of the range
    trades: np.ndarray  # TRADE_DTYPE, bar indices into the whole data set
    start: int


@dataclass
class _Encoded:
    ops: np.ndarray
    a: np.ndarray
    b: np.ndarray
    v: np.ndarray
    direction: np.ndarray
    stop_loss: np.ndarray
    take_profit: np.ndarray
    trailing: np.ndarray
    size: np.ndarray


def _encode(genomes: Sequence[Genome], features: FeatureTable) -> _Encoded:
    """Genomes as fixed-size arrays the kernel reads; series become feature-table rows."""
    keys: set[str] = set()
    for g in genomes:
        keys |= g.series_keys()
    features.ensure(keys)
    n = len(genomes)
    shape = (n, 2, MAX_CONDITIONS)
    enc = _Encoded(
        ops=np.zeros(shape, np.int64), a=np.zeros(shape, np.int64),
        b=np.zeros(shape, np.int64), v=np.zeros(shape, np.float64),
        direction=np.empty(n, np.int64), stop_loss=np.zeros(n), take_profit=np.zeros(n),
        trailing=np.zeros(n), size=np.empty(n),
    )
    for p, g in enumerate(genomes):
        for r, rule in enumerate((g.entry, g.exit)):
            for k, cond in enumerate(rule):
                enc.a[p, r, k] = features.row(cond.a)
                if isinstance(cond.b, str):
                    enc.ops[p, r, k] = _OPS[cond.op]
                    enc.b[p, r, k] = features.row(cond.b)
                else:
                    enc.ops[p, r, k] = _OPS[cond.op] + _VALUE_OFFSET
                    enc.v[p, r, k] = cond.b
        enc.direction[p] = _DIRECTIONS[g.direction]
        enc.stop_loss[p] = g.stop_loss or 0.0
        enc.take_profit[p] = g.take_profit or 0.0
        enc.trailing[p] = g.trailing_stop or 0.0
        enc.size[p] = g.size
    return enc


def _range(data: OHLCV, start: int, stop: int | None) -> tuple[int, int]:
    stop = len(data) if stop is None else stop
    if not 0 <= start < stop <= len(data) or stop - start < 3:
        raise ValueError(f"bar range [{start}, {stop}) must lie within the data's {len(data)} "
                         "bars and hold at least 3")
    return start, stop


def _features_for(data: OHLCV, features: FeatureTable | None) -> FeatureTable:
    if features is None:
        return FeatureTable(data)
    if features.data is not data:
        raise ValueError("features were computed for another data set")
    return features


def _check_cash(initial_cash: float) -> float:
    if not (math.isfinite(initial_cash) and initial_cash > 0):
        raise ValueError(f"initial_cash must be positive, got {initial_cash!r}")
    return float(initial_cash)


def backtest(data: OHLCV, genome: Genome, *, costs: Costs = Costs(),
             initial_cash: float = 10_000.0, start: int = 0, stop: int | None = None,
             features: FeatureTable | None = None) -> BacktestResult:
    """Backtest one genome over bars ``[start, stop)`` with its equity curve and trade list.

    Indicators are computed over the whole data set, so bars before ``start`` serve as warm-up.
    """
    start, stop = _range(data, start, stop)
    features = _features_for(data, features)
    initial_cash = _check_cash(initial_cash)
    enc = _encode([genome], features)
    out = np.empty((1, _N_METRICS))
    equity = np.empty(stop - start)
    trades = np.empty((stop - start, _TRADE_COLUMNS))  # at most one trade closes per bar
    n = _simulate(data.open, data.high, data.low, data.close, features.table, enc.ops,
                  enc.a, enc.b, enc.v, 0, enc.direction[0], enc.stop_loss[0],
                  enc.take_profit[0], enc.trailing[0], enc.size[0], float(costs.fee),
                  float(costs.slippage), initial_cash, start, stop,
                  data.bars_per_year, out, True, equity, trades)
    trade_list = np.empty(n, TRADE_DTYPE)
    for i, name in enumerate(_TRADE_NUMERIC_FIELDS):
        trade_list[name] = trades[:n, i]
    trade_list["exit_reason"] = [EXIT_REASONS[int(code)] for code in trades[:n, 7]]
    metrics = Metrics.from_row(out.view(METRICS_DTYPE).reshape(-1)[0])
    return BacktestResult(metrics=metrics, equity=equity, trades=trade_list, start=start)


def evaluate_population(data: OHLCV, genomes: Sequence[Genome], *, costs: Costs = Costs(),
                        initial_cash: float = 10_000.0, start: int = 0, stop: int | None = None,
                        threads: int = 1, features: FeatureTable | None = None) -> np.ndarray:
    """Metrics of many genomes at once (a structured array, ``METRICS_DTYPE``, genome order).

    Each distinct series is computed once and shared (pass ``features`` to share them across
    calls too). ``threads`` spreads genomes over cores without changing any result.
    """
    start, stop = _range(data, start, stop)
    features = _features_for(data, features)
    initial_cash = _check_cash(initial_cash)
    out = np.empty((len(genomes), _N_METRICS))
    if not genomes:
        return out.view(METRICS_DTYPE).reshape(-1)
    enc = _encode(genomes, features)
    previous = numba.get_num_threads()
    most = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
    numba.set_num_threads(max(1, min(int(threads), most)))
    try:
        _simulate_population(data.open, data.high, data.low, data.close, features.table, enc.ops,
                             enc.a, enc.b, enc.v, enc.direction, enc.stop_loss, enc.take_profit,
                             enc.trailing, enc.size, float(costs.fee), float(costs.slippage),
                             initial_cash, start, stop, data.bars_per_year, out)
    finally:
        numba.set_num_threads(previous)
    return out.view(METRICS_DTYPE).reshape(-1)
