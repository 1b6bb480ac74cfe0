"""The backtest kernel against a slow, obvious reference, hand-built candles, and invariants.

:func:`reference_backtest` is written here, bar by bar in plain Python floats, from the
conventions in the docstring of ``worker_client/engine/backtest.py``:

- decisions are taken at the close of bar t (t >= 1; bar 0 only gives history) and fill at the
  open of bar t+1; a crossing is strict (``a[t-1] < b[t-1] and a[t] > b[t]``);
- one direction: the entry rule opens, the exit rule closes; long/short: the entry rule asks for
  long, the exit rule for short (both at once: no change), and a reversal closes and reopens at
  the same open with the cash the close left;
- fills move against the trader by ``slippage``; the fee is charged on entry and on exit;
- ``units = cash * size / (fill * (1 + fee))``; an entry of less than 1e-8 units is skipped;
- stops are checked from the entry bar on, against the bar's low/high, with levels fixed
  before the bar: the stop-loss from the entry price, the trailing stop from the highest high
  (lowest low when short) of the position's *previous* bars, starting at the entry price;
  the tighter of the two is the stop, and on a tie it is called a stop-loss; when the stop and
  the take-profit both lie in the bar's range the stop wins; a bar that opens beyond a level
  fills at its open;
- end of data: no entries from signals on the last two bars; a position open at the open of
  the last bar is closed there with reason "end" (whatever the signals asked for);
- equity is marked at every close; per-bar returns ``r_t = eq_t / eq_{t-1} - 1`` with
  ``eq_{-1}`` the initial cash, one per bar of the range.

Metrics are computed from those returns with two-pass formulas and ``math.fsum``; the kernel
accumulates raw power sums in one pass, so the comparison is to ``rtol=1e-9`` (the measured
disagreement is about 1e-12 at most, on the mean return and what is divided by it). Trades
(bars, side, reason) must be identical.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker_client.engine import (
    METRIC_FIELDS,
    METRICS_DTYPE,
    OHLCV,
    Condition,
    Costs,
    DataError,
    FeatureTable,
    Genome,
    evaluate_population,
    synthetic_ohlcv,
)
from worker_client.engine import backtest as engine_backtest
from worker_client.engine.series import compute
from worker_client.engine.space import SearchSpace

try:
    import scipy.stats as scipy_stats
except ImportError:  # scipy comes with vectorbt; the cross-check is skipped without it
    scipy_stats = None

REPO = Path(__file__).resolve().parents[3]
RTOL = 1e-9
MIN_UNITS = 1e-8
BAR_SECONDS = 300
BARS_PER_YEAR = 365 * 24 * 3600 / BAR_SECONDS



backtest = engine_backtest


# --------------------------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefTrade:
    entry_bar: int
    exit_bar: int
    side: int
    entry_price: float
    exit_price: float
    units: float
    pnl: float
    exit_reason: str


@dataclass
class RefResult:
    trades: list[RefTrade]
    equity: list[float]
    metrics: dict[str, float]


class SeriesCache:
    """Indicator values read through the public ``series.compute``, once per key."""

    def __init__(self, data: OHLCV):
        self.data = data
        self._values: dict[str, list[float]] = {}

    def __getitem__(self, key: str) -> list[float]:
        if key not in self._values:
            self._values[key] = compute(self.data, key).tolist()
        return self._values[key]


def reference_backtest(data: OHLCV, genome: Genome, *, fee: float = 0.001,
                       slippage: float = 0.0, initial_cash: float = 10_000.0, start: int = 0,
                       stop: int | None = None, series: SeriesCache | None = None) -> RefResult:
    stop = len(data) if stop is None else stop
    last = stop - 1
    series = series or SeriesCache(data)
    o, h, lo, c = (a.tolist() for a in (data.open, data.high, data.low, data.close))

    def operand(x: str | float, t: int) -> float:
        return series[x][t] if isinstance(x, str) else x

    def condition_holds(cond: Condition, t: int) -> bool:
        a_now, a_before = series[cond.a][t], series[cond.a][t - 1]
        b_now, b_before = operand(cond.b, t), operand(cond.b, t - 1)
        if cond.op == "gt":
            return a_now > b_now
        if cond.op == "lt":
            return a_now < b_now
        if cond.op == "cross_above":
            return a_before < b_before and a_now > b_now
        assert cond.op == "cross_below"
        return a_before > b_before and a_now < b_now

    def rule_holds(rule: tuple[Condition, ...], t: int) -> bool:
        return len(rule) > 0 and all(condition_holds(cond, t) for cond in rule)

    def wanted_side(t: int, side: int) -> int:
        if genome.direction == "long_short":
            go_long, go_short = rule_holds(genome.entry, t), rule_holds(genome.exit, t)
            if go_long != go_short:
                return 1 if go_long else -1
            return side
        if side == 0:
            return (1 if genome.direction == "long" else -1) if rule_holds(genome.entry, t) else 0
        return 0 if rule_holds(genome.exit, t) else side

    sl, tp, trail = genome.stop_loss, genome.take_profit, genome.trailing_stop
    cash = initial_cash
    side, units, entry_price, entry_bar, extreme = 0, 0.0, 0.0, -1, 0.0
    trades: list[RefTrade] = []
    equity: list[float] = []
    bars_held = 0
    order: int | None = None  # the side wanted from the next open

    def open_position(t: int, new_side: int) -> None:
        nonlocal cash, side, units, entry_price, entry_bar, extreme
        fill = o[t] * (1.0 + slippage) if new_side > 0 else o[t] * (1.0 - slippage)
        n = cash * genome.size / (fill * (1.0 + fee))
        if n < MIN_UNITS:
            return
        value = n * fill
        cash = cash - value - value * fee if new_side > 0 else cash + value - value * fee
        side, units, entry_price, entry_bar, extreme = new_side, n, fill, t, fill

    def close_position(t: int, price: float, reason: str) -> None:
        nonlocal cash, side, units
        fill = price * (1.0 - slippage) if side > 0 else price * (1.0 + slippage)
        value = units * fill
        cash = cash + value - value * fee if side > 0 else cash - value - value * fee
        pnl = side * units * (fill - entry_price) - units * (entry_price + fill) * fee
        trades.append(RefTrade(entry_bar, t, side, entry_price, fill, units, pnl, reason))
        side, units = 0, 0.0

    for t in range(start, stop):
        # At the open: the end of the data, or the order decided at the previous close.
        if side != 0 and t == last:
            close_position(t, o[t], "end")
        elif order is not None and order != side:
            if side != 0:
                close_position(t, o[t], "signal")
            if order != 0:
                open_position(t, order)
        order = None
        # During the bar: stops, with levels fixed before it.
        if side > 0:
            stop_level, reason = -math.inf, ""
            if sl is not None:
                stop_level, reason = entry_price * (1.0 - sl), "stop_loss"
            if trail is not None and extreme * (1.0 - trail) > stop_level:
                stop_level, reason = extreme * (1.0 - trail), "trailing_stop"
            if reason and lo[t] <= stop_level:
                close_position(t, min(o[t], stop_level), reason)
            elif tp is not None and h[t] >= entry_price * (1.0 + tp):
                close_position(t, max(o[t], entry_price * (1.0 + tp)), "take_profit")
            else:
                extreme = max(extreme, h[t])
        elif side < 0:
            stop_level, reason = math.inf, ""
            if sl is not None:
                stop_level, reason = entry_price * (1.0 + sl), "stop_loss"
            if trail is not None and extreme * (1.0 + trail) < stop_level:
                stop_level, reason = extreme * (1.0 + trail), "trailing_stop"
            if reason and h[t] >= stop_level:
                close_position(t, max(o[t], stop_level), reason)
            elif tp is not None and lo[t] <= entry_price * (1.0 - tp):
                close_position(t, min(o[t], entry_price * (1.0 - tp)), "take_profit")
            else:
                extreme = min(extreme, lo[t])
        # At the close: mark equity, then decide for the next open.
        equity.append(cash + side * units * c[t])
        bars_held += side != 0
        if 1 <= t < last:
            want = wanted_side(t, side)
            if side == 0 and t >= last - 1:
                want = 0  # no entries from signals on the last two bars
            order = want

    return RefResult(trades, equity, reference_metrics(equity, trades, initial_cash, bars_held))


def reference_metrics(equity: list[float], trades: list[RefTrade], initial_cash: float,
                      bars_held: int) -> dict[str, float]:
    n = len(equity)
    previous = [initial_cash, *equity[:-1]]
    r = [eq / prev - 1.0 for eq, prev in zip(equity, previous, strict=True)]
    mean = math.fsum(r) / n
    dev = [x - mean for x in r]
    std = math.sqrt(math.fsum(d * d for d in dev) / (n - 1))
    ann = math.sqrt(BARS_PER_YEAR)
    downside = math.sqrt(math.fsum(min(x, 0.0) ** 2 for x in r) / n)
    peak, max_dd = initial_cash, 0.0
    for eq in equity:
        peak = max(peak, eq)
        max_dd = max(max_dd, (peak - eq) / peak)
    final = equity[-1]
    try:
        annual = (final / initial_cash) ** (BARS_PER_YEAR / n) - 1.0 if final > 0 else -1.0
    except OverflowError:  # a gain annualised from a few bars: the kernel's pow gives inf
        annual = math.inf
    pnls = [t.pnl for t in trades]
    profit = math.fsum(p for p in pnls if p > 0)
    loss = -math.fsum(p for p in pnls if p <= 0)
    m2 = math.fsum(d * d for d in dev) / n
    if m2 > 0:
        skew = math.fsum(d**3 for d in dev) / n / m2**1.5
        kurt = math.fsum(d**4 for d in dev) / n / m2**2
    else:
        skew = kurt = math.nan
    return {
        "final_equity": final,
        "net_profit": final - initial_cash,
        "total_return": final / initial_cash - 1.0,
        "annual_return": annual,
        "sharpe": mean / std * ann if std > 0 else 0.0,
        "sortino": mean / downside * ann if downside > 0 else (math.inf if mean > 0 else 0.0),
        "max_drawdown": max_dd,
        "calmar": annual / max_dd if max_dd > 0 else 0.0,
        "n_trades": len(trades),
        "win_rate": sum(p > 0 for p in pnls) / len(pnls) if pnls else 0.0,
        "profit_factor": profit / loss if loss > 0 else (math.inf if profit > 0 else 0.0),
        "exposure": bars_held / n,
        "avg_trade_return": (math.fsum(t.pnl / (t.units * t.entry_price) for t in trades)
                             / len(trades) if trades else 0.0),
        "return_mean": mean,
        "return_std": std,
        "return_skew": skew,
        "return_kurtosis": kurt,
        "n_returns": n,
        "_returns": r,  # for the scipy cross-check; not a metric
    }


# --------------------------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------------------------


def close(a: float, b: float, rtol: float = RTOL, atol: float = 0.0) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


def trade_rows(trades: np.ndarray) -> list[tuple[int, int, int, str]]:
    return [(int(t["entry_bar"]), int(t["exit_bar"]), int(t["side"]), str(t["exit_reason"]))
            for t in trades]


def assert_trades_match(got: np.ndarray, want: list[RefTrade], context: str = "") -> None:
    assert trade_rows(got) == [(t.entry_bar, t.exit_bar, t.side, t.exit_reason) for t in want], \
        context
    for g, w in zip(got, want, strict=True):
        assert close(float(g["entry_price"]), w.entry_price, 1e-12), (context, w)
        assert close(float(g["exit_price"]), w.exit_price, 1e-12), (context, w)
        assert close(float(g["units"]), w.units), (context, w)
        # pnl is a difference of prices: compare on the scale of the traded value.
        assert close(float(g["pnl"]), w.pnl, atol=RTOL * w.units * w.entry_price), (context, w)


# Absolute floors for figures that are differences of nearly equal numbers, each on the scale
# of what it is a difference of (10,000 of cash; per-bar returns of about 1e-3).
ATOL = {"net_profit": 1e-7, "total_return": 1e-12, "annual_return": 1e-12,
        "return_mean": 1e-17, "sharpe": 1e-9, "sortino": 1e-9, "calmar": 1e-9,
        "avg_trade_return": 1e-12, "return_skew": 1e-9}


def assert_metrics_match(got: dict[str, float], want: dict[str, float], context: str = "") -> None:
    for name in METRIC_FIELDS:
        assert close(float(got[name]), float(want[name]), atol=ATOL.get(name, 0.0)), \
            (context, name, got[name], want[name])
    if scipy_stats is not None and not math.isnan(want["return_skew"]):
        r = np.asarray(want["_returns"])
        assert close(want["return_skew"], float(scipy_stats.skew(r)), 1e-9, 1e-9)
        assert close(want["return_kurtosis"], float(scipy_stats.kurtosis(r, fisher=False)), 1e-9)


def assert_matches_reference(data: OHLCV, genome: Genome, *, fee: float = 0.001,
                             slippage: float = 0.0, initial_cash: float = 10_000.0,
                             start: int = 0, stop: int | None = None,
                             series: SeriesCache | None = None) -> RefResult:
    got = backtest(data, genome, costs=Costs(fee=fee, slippage=slippage),
                   initial_cash=initial_cash, start=start, stop=stop)
    want = reference_backtest(data, genome, fee=fee, slippage=slippage,
                              initial_cash=initial_cash, start=start, stop=stop, series=series)
    context = f"{genome.to_json()} [{start}, {stop})"
    assert_trades_match(got.trades, want.trades, context)
    np.testing.assert_allclose(got.equity, want.equity, rtol=RTOL, err_msg=context)
    assert_metrics_match(dataclasses.asdict(got.metrics), want.metrics, context)
    return want


# --------------------------------------------------------------------------------------------
# Random genomes against the reference
# --------------------------------------------------------------------------------------------

DATA = synthetic_ohlcv(3000, seed=11)
WIDE = SearchSpace(directions=("long", "short", "long_short"), max_conditions=3,
                   sizes=(0.5, 1.0))


def random_genomes(count: int, seed: int, space: SearchSpace = WIDE) -> list[Genome]:
    rng = np.random.default_rng(seed)
    return [space.random_genome(rng) for _ in range(count)]


# Genomes that trade often enough to exercise every rule: rules built from conditions that
# hold about half the time, with stops of every kind.
def busy_genomes() -> list[Genome]:
    rng = np.random.default_rng(5)
    out = []
    entries = [(Condition("close", "gt", "sma(10)"),), (Condition("rsi(7)", "lt", 45.0),),
               (Condition("roc(1)", "cross_above", 0.0),),
               (Condition("ema(5)", "cross_above", "ema(20)"), Condition("rsi(14)", "lt", 70.0))]
    exits = [(), (Condition("close", "lt", "sma(10)"),), (Condition("rsi(7)", "gt", 55.0),),
             (Condition("ema(5)", "cross_below", "ema(20)"),)]
    for i in range(24):
        out.append(Genome(
            entry=entries[i % 4], exit=exits[(i // 4) % 4],
            direction=("long", "short", "long_short")[i % 3],
            stop_loss=[None, 0.002, 0.005][int(rng.integers(3))],
            take_profit=[None, 0.003, 0.01][int(rng.integers(3))],
            trailing_stop=[None, 0.002, 0.005][int(rng.integers(3))],
            size=[0.5, 1.0][i % 2]))
    return out


def test_random_genomes_match_the_reference() -> None:
    series = SeriesCache(DATA)
    genomes = random_genomes(60, seed=1) + busy_genomes()
    seen_reasons: set[str] = set()
    seen = {"short": 0, "long": 0, "reversal": 0, "trades": 0, "gap_fill": 0}
    for genome in genomes:
        want = assert_matches_reference(DATA, genome, fee=0.001, slippage=0.0005, series=series)
        seen_reasons |= {t.exit_reason for t in want.trades}
        seen["trades"] += len(want.trades)
        seen["long"] += sum(t.side > 0 for t in want.trades)
        seen["short"] += sum(t.side < 0 for t in want.trades)
        seen["reversal"] += sum(a.exit_bar == b.entry_bar and a.side != b.side
                                for a, b in pairwise(want.trades))
        seen["gap_fill"] += sum(t.exit_reason in ("stop_loss", "trailing_stop", "take_profit")
                                and t.exit_price in (DATA.open[t.exit_bar] * 0.9995,
                                                     DATA.open[t.exit_bar] * 1.0005)
                                for t in want.trades)
    # The comparison means something only if every rule was exercised.
    assert seen_reasons == {"signal", "stop_loss", "take_profit", "trailing_stop", "end"}
    assert min(seen.values()) > 0, seen


@pytest.mark.parametrize(("start", "stop"), [(0, 3), (1, 500), (250, 1800), (2000, None),
                                              (2990, 3000)])
def test_bar_ranges_match_the_reference(start: int, stop: int | None) -> None:
    series = SeriesCache(DATA)
    for genome in random_genomes(8, seed=2) + busy_genomes()[:6]:
        assert_matches_reference(DATA, genome, fee=0.002, slippage=0.001, start=start,
                                 stop=stop, series=series)


# Short look-backs, so that rules fire often on a few hundred bars.
DENSE = SearchSpace(indicators=("sma", "ema", "rsi", "roc", "stoch_k", "highest", "lowest"),
                    periods=(2, 3, 5, 10), max_conditions=2, stop_probability=0.7,
                    directions=("long", "short", "long_short"), sizes=(0.3, 1.0))


def wild_candles(seed: int, n: int = 300) -> OHLCV:
    """Volatile candles with wide gaps between bars, so that stops are often jumped over."""
    rng = np.random.default_rng(seed)
    gap, body = rng.normal(0.0, 0.008, n), rng.normal(0.0, 0.012, n)
    close = 100.0 * np.exp(np.cumsum(gap + body))
    open_ = close / np.exp(body)
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.008, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.008, n)))
    return OHLCV.from_arrays(np.arange(n) * BAR_SECONDS, open_, high, low, close)


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
       st.sampled_from([(0.0, 0.0), (0.001, 0.0005), (0.004, 0.002)]))
def test_wild_candles_match_the_reference(data_seed: int, genome_seed: int,
                                          costs: tuple[float, float]) -> None:
    data = wild_candles(data_seed)
    genome = DENSE.random_genome(np.random.default_rng(genome_seed))
    assert_matches_reference(data, genome, fee=costs[0], slippage=costs[1])


def test_costs_and_cash_match_the_reference() -> None:
    series = SeriesCache(DATA)
    for fee, slippage, cash in ((0.0, 0.0, 10_000.0), (0.0005, 0.0, 1.0), (0.01, 0.005, 1e6)):
        for genome in busy_genomes()[::3]:
            assert_matches_reference(DATA, genome, fee=fee, slippage=slippage,
                                     initial_cash=cash, series=series)


# --------------------------------------------------------------------------------------------
# Hand-built candles that pin each rule
# --------------------------------------------------------------------------------------------

QUIET = (100.0, 100.5, 99.5, 100.0)  # open, high, low, close
RISE = (100.0, 102.5, 99.5, 102.0)  # close +2 %: roc(1) > 1
UP = Condition("roc(1)", "gt", 1.0)
DOWN = Condition("roc(1)", "lt", -1.0)


def candles(*rows: tuple[float, float, float, float]) -> OHLCV:
    o, h, lo, c = (list(col) for col in zip(*rows, strict=True))
    return OHLCV.from_arrays(np.arange(len(rows)) * BAR_SECONDS, o, h, lo, c)


def run(data: OHLCV, genome: Genome, *, fee: float = 0.0, slippage: float = 0.0,
        initial_cash: float = 10_000.0):
    """The engine's result, after checking that the reference agrees on these candles too."""
    assert_matches_reference(data, genome, fee=fee, slippage=slippage, initial_cash=initial_cash)
    return backtest(data, genome, costs=Costs(fee=fee, slippage=slippage),
                    initial_cash=initial_cash)


def only_trade(result) -> np.void:
    assert len(result.trades) == 1, result.trades
    return result.trades[0]


def test_signal_fills_at_next_open_and_fees_on_both_sides() -> None:
    data = candles(QUIET, QUIET, RISE,
                   (101.0, 103.0, 100.5, 102.5),  # 3: buy at this open
                   (102.5, 104.0, 102.0, 103.5),  # 4: +0.98 %: no signal
                   (103.5, 104.0, 101.5, 102.0),  # 5: -1.45 %: sell signal
                   (101.5, 102.0, 101.0, 101.8),  # 6: sell at this open
                   *[(101.8, 102.0, 101.5, 101.8)] * 3)
    fee = 0.001
    result = run(data, Genome(entry=(UP,), exit=(DOWN,)), fee=fee)
    trade = only_trade(result)
    assert (trade["entry_bar"], trade["exit_bar"], trade["side"]) == (3, 6, 1)
    assert (trade["entry_price"], trade["exit_price"], trade["exit_reason"]) == (101.0, 101.5,
                                                                               "signal")
    units = 10_000 / (101.0 * (1 + fee))  # all-in, the entry fee included
    assert trade["units"] == pytest.approx(units, rel=1e-15)
    assert trade["pnl"] == pytest.approx(units * 0.5 - units * (101.0 + 101.5) * fee, rel=1e-12)
    final = units * 101.5 * (1 - fee)
    assert result.metrics.final_equity == pytest.approx(final, rel=1e-14)
    assert result.metrics.net_profit == pytest.approx(final - 10_000, rel=1e-10)
    expected_equity = [10_000] * 3 + [units * c for c in (102.5, 103.5, 102.0)] + [final] * 4
    np.testing.assert_allclose(result.equity, expected_equity, rtol=1e-13)
    assert result.metrics.exposure == 3 / 10  # held at the closes of bars 3, 4 and 5
    assert result.metrics.n_trades == 1 and result.metrics.win_rate == 1.0


def test_round_trip_at_one_price_costs_two_fees_and_two_slippages() -> None:
    data = candles(QUIET, QUIET, RISE,
                   (100.0, 103.0, 99.5, 102.5),  # 3: buy at 100 (+slippage)
                   (102.5, 103.0, 100.5, 101.0),  # 4: -1.46 %: sell signal
                   (100.0, 101.0, 99.5, 100.5),  # 5: sell at 100 (-slippage)
                   *[(100.5, 101.0, 100.0, 100.5)] * 4)
    fee, slippage = 0.002, 0.001
    result = run(data, Genome(entry=(UP,), exit=(DOWN,)), fee=fee, slippage=slippage)
    trade = only_trade(result)
    buy, sell = 100.0 * (1 + slippage), 100.0 * (1 - slippage)
    units = 10_000 / (buy * (1 + fee))
    assert (trade["entry_price"], trade["exit_price"]) == (buy, sell)
    assert result.metrics.final_equity == pytest.approx(units * sell * (1 - fee), rel=1e-14)
    assert trade["pnl"] == pytest.approx(units * (sell - buy) - units * (buy + sell) * fee,
                                         rel=1e-12)
    assert result.metrics.win_rate == 0.0 and result.metrics.profit_factor == 0.0


# A long from the open of bar 3, whose high is the entry price: the trailing stop starts there.
STOP_SETUP = (QUIET, QUIET, RISE, (100.0, 100.0, 99.5, 100.0))
AFTER = [(100.5, 101.0, 100.0, 100.5)] * 4  # quiet bars: no signal, no stop


@pytest.mark.parametrize(("bar4", "risk", "price", "reason"), [
    # stop-loss 2 % of 100: 98. The bar trades through it: filled at the level.
    ((100.5, 101.0, 97.5, 100.5), dict(stop_loss=0.02), 98.0, "stop_loss"),
    # The bar opens below it: filled at the open, worse than the level.
    ((97.0, 100.5, 96.5, 100.0), dict(stop_loss=0.02), 97.0, "stop_loss"),
    # A low exactly at the level triggers.
    ((100.5, 101.0, 98.0, 100.5), dict(stop_loss=0.02), 98.0, "stop_loss"),
    # Take-profit 3 %: 103, inside the range: filled at the level.
    ((100.5, 104.0, 99.0, 100.8), dict(stop_loss=0.02, take_profit=0.03), 103.0, "take_profit"),
    # Opens above it: filled at the open, better than the level.
    ((105.0, 106.0, 100.6, 100.8), dict(take_profit=0.03), 105.0, "take_profit"),
    # Both inside one bar: the path is unknown, the stop is assumed first.
    ((100.5, 104.0, 97.0, 100.8), dict(stop_loss=0.02, take_profit=0.03), 98.0, "stop_loss"),
    ((100.5, 104.0, 97.0, 100.8), dict(trailing_stop=0.02, take_profit=0.03), 98.0,
     "trailing_stop"),
    # Trailing and stop-loss at the same level (no new high yet): called a stop-loss.
    ((100.5, 101.0, 97.5, 100.5), dict(stop_loss=0.02, trailing_stop=0.02), 98.0, "stop_loss"),
])
def test_long_stops(bar4, risk, price, reason) -> None:
    data = candles(*STOP_SETUP, bar4, *AFTER)
    trade = only_trade(run(data, Genome(entry=(UP,), **risk)))
    assert (trade["entry_bar"], trade["exit_bar"]) == (3, 4)
    assert (trade["exit_price"], trade["exit_reason"]) == (pytest.approx(price, rel=1e-15), reason)


def test_stop_fill_pays_slippage() -> None:
    data = candles(*STOP_SETUP, (100.5, 101.0, 97.5, 100.5), *AFTER)
    slip = 0.001
    trade = only_trade(run(data, Genome(entry=(UP,), stop_loss=0.02), slippage=slip))
    entry = 100.0 * (1 + slip)
    assert trade["entry_price"] == entry
    assert trade["exit_price"] == pytest.approx(entry * (1 - 0.02) * (1 - slip), rel=1e-15)


def test_stops_are_checked_on_the_entry_bar() -> None:
    # Entered at 100 on bar 3, whose range covers both the 1 % trailing stop (from the entry
    # price: no earlier bar yet) and the 2 % take-profit: the stop wins, on the entry bar.
    data = candles(QUIET, QUIET, RISE, (100.0, 103.0, 98.5, 100.5), *AFTER)
    trade = only_trade(run(data, Genome(entry=(UP,), trailing_stop=0.01, take_profit=0.02)))
    assert (trade["entry_bar"], trade["exit_bar"], trade["exit_reason"]) == (3, 3,
                                                                           "trailing_stop")
    assert trade["exit_price"] == pytest.approx(99.0, rel=1e-15)


@pytest.mark.parametrize("stop_loss", [None, 0.1])
def test_trailing_stop_follows_previous_highs_not_the_current_bar(stop_loss) -> None:
    data = candles(QUIET, QUIET, RISE,
                   (100.0, 110.0, 99.0, 102.5),  # 3: entry at 100; level 95 (from the entry)
                   (112.0, 120.0, 105.0, 113.0),  # 4: level 110 * 0.95 = 104.5; the low holds.
                   # (Were this bar's own high used, the level would be 114 and the low 105
                   # would have hit it.)
                   (116.0, 117.0, 113.0, 113.5),  # 5: level 120 * 0.95 = 114: hit
                   *[(113.5, 114.0, 113.0, 113.5)] * 4)
    trade = only_trade(run(data, Genome(entry=(UP,), trailing_stop=0.05, stop_loss=stop_loss)))
    assert (trade["entry_bar"], trade["exit_bar"], trade["exit_reason"]) == (3, 5,
                                                                           "trailing_stop")
    assert trade["exit_price"] == pytest.approx(114.0, rel=1e-15)


FALL = (100.0, 100.5, 97.5, 98.0)  # close -2 %: roc(1) < -1


def test_short_accounting_and_stops() -> None:
    data = candles(QUIET, QUIET, FALL,
                   (99.0, 99.5, 97.0, 97.5),  # 3: sell short at 99
                   (97.5, 98.0, 95.0, 95.5),  # 4
                   (95.5, 97.5, 95.0, 97.0),  # 5: +1.57 %: cover signal
                   (96.0, 96.5, 95.5, 96.5),  # 6: buy back at 96
                   *[(96.5, 97.0, 96.0, 96.5)] * 3)
    fee = 0.001
    result = run(data, Genome(entry=(DOWN,), exit=(UP,), direction="short"), fee=fee)
    trade = only_trade(result)
    assert (trade["entry_bar"], trade["exit_bar"], trade["side"]) == (3, 6, -1)
    units = 10_000 / (99.0 * (1 + fee))
    cash = 10_000 + units * 99.0 * (1 - fee)  # the proceeds of the short sale, less the fee
    np.testing.assert_allclose(
        result.equity,
        [10_000] * 3 + [cash - units * c for c in (97.5, 95.5, 97.0)]
        + [cash - units * 96.0 * (1 + fee)] * 4, rtol=1e-13)
    assert trade["pnl"] == pytest.approx(units * 3.0 - units * (99.0 + 96.0) * fee, rel=1e-12)
    assert result.metrics.win_rate == 1.0

    # A short's stop-loss is above the entry, its take-profit below.
    stop = candles(QUIET, QUIET, FALL, (100.0, 100.5, 99.5, 99.8),
                   (99.5, 102.5, 99.0, 99.5), *AFTER)  # 4: high 102.5 >= 102
    trade = only_trade(run(stop, Genome(entry=(DOWN,), direction="short", stop_loss=0.02,
                                        take_profit=0.01)))
    assert (trade["exit_bar"], trade["exit_reason"]) == (4, "stop_loss")
    assert trade["exit_price"] == pytest.approx(102.0, rel=1e-15)
    gap = candles(QUIET, QUIET, FALL, (100.0, 100.5, 99.5, 100.0),
                  (96.0, 99.5, 95.5, 99.5), *AFTER)  # 4: opens below the 3 % take-profit (97)
    trade = only_trade(run(gap, Genome(entry=(DOWN,), direction="short", take_profit=0.03)))
    assert (trade["exit_bar"], trade["exit_reason"], trade["exit_price"]) == (4, "take_profit",
                                                                            96.0)
    trailing = candles(QUIET, QUIET, FALL,
                       (100.0, 101.0, 90.0, 99.5),  # 3: short at 100; lowest low 90
                       (91.0, 94.0, 85.0, 93.0),  # 4: level 90 * 1.05 = 94.5 holds
                       (93.0, 95.0, 92.5, 93.2),  # 5: level 85 * 1.05 = 89.25: hit at the open
                       *[(93.2, 93.5, 93.0, 93.2)] * 4)
    trade = only_trade(run(trailing, Genome(entry=(DOWN,), direction="short",
                                            trailing_stop=0.05)))
    assert (trade["exit_bar"], trade["exit_reason"], trade["exit_price"]) == (5, "trailing_stop",
                                                                            93.0)


def test_long_short_reverses_at_one_open() -> None:
    data = candles(QUIET, QUIET, RISE,
                   (101.0, 103.0, 100.5, 102.5),  # 3: long at 101
                   (102.5, 103.0, 101.5, 102.0),  # 4
                   (102.0, 102.5, 99.5, 100.0),  # 5: -1.96 %: the short rule holds
                   (99.5, 100.0, 99.0, 99.8),  # 6: sell the long and sell short, both at 99.5
                   (99.8, 100.0, 99.5, 99.8),
                   (99.8, 100.0, 99.5, 99.8),
                   (99.6, 100.0, 99.5, 99.8))  # 9: the last bar: cover at its open
    fee = 0.001
    result = run(data, Genome(entry=(UP,), exit=(DOWN,), direction="long_short"), fee=fee)
    assert trade_rows(result.trades) == [(3, 6, 1, "signal"), (6, 9, -1, "end")]
    long_units = 10_000 / (101.0 * (1 + fee))
    cash = long_units * 99.5 * (1 - fee)
    short_units = cash / (99.5 * (1 + fee))
    assert result.trades[1]["units"] == pytest.approx(short_units, rel=1e-13)
    assert result.trades[1]["entry_price"] == 99.5
    final = cash + short_units * 99.5 * (1 - fee) - short_units * 99.6 * (1 + fee)
    assert result.metrics.final_equity == pytest.approx(final, rel=1e-13)
    assert result.metrics.exposure == 6 / 10  # bars 3 to 8


def test_size_commits_a_fraction_of_equity() -> None:
    data = candles(QUIET, QUIET, RISE, (100.0, 101.0, 99.5, 100.5), *AFTER)
    fee = 0.001
    result = run(data, Genome(entry=(UP,), size=0.25), fee=fee)
    trade = only_trade(result)
    assert trade["units"] == pytest.approx(10_000 * 0.25 / (100.0 * (1 + fee)), rel=1e-15)
    assert trade["exit_reason"] == "end"


def n_bars(*rows: tuple[float, float, float, float], total: int = 10) -> OHLCV:
    """``rows`` placed at the end of ``total`` bars, quiet bars before them."""
    return candles(*[QUIET] * (total - len(rows)), *rows)


def test_end_of_data() -> None:
    genome = Genome(entry=(UP,), exit=(DOWN,))
    # A signal on the last bar but one (8 of 0..9) opens nothing.
    assert len(run(n_bars(RISE, QUIET), genome).trades) == 0
    # Nor on the last bar.
    assert len(run(n_bars(RISE), genome).trades) == 0
    # A signal on bar 7 buys at the open of 8; the last bar's open closes it: reason "end".
    result = run(n_bars(RISE, (100.5, 101.0, 100.0, 100.5), (100.8, 101.0, 100.0, 100.5)),
                 genome, fee=0.001)
    trade = only_trade(result)
    assert (trade["entry_bar"], trade["exit_bar"], trade["exit_reason"]) == (8, 9, "end")
    assert (trade["entry_price"], trade["exit_price"]) == (100.5, 100.8)
    assert result.metrics.final_equity == result.equity[-1]  # every trade closed: equity is cash
    # An exit signal on the last bar but one also closes at the last open: reason "end".
    result = run(n_bars(RISE, (100.0, 102.5, 99.5, 102.0), (102.0, 102.5, 99.5, 100.0),
                        (99.0, 100.5, 98.5, 100.0)), genome)
    assert trade_rows(result.trades) == [(7, 9, 1, "end")]
    # A last bar that trades through the stop: the position was already closed at its open.
    result = run(n_bars(RISE, (100.0, 100.5, 99.5, 100.0), (100.0, 100.5, 80.0, 90.0)),
                 Genome(entry=(UP,), stop_loss=0.02))
    assert trade_rows(result.trades) == [(8, 9, 1, "end")]
    assert result.trades[0]["exit_price"] == 100.0


def test_minimum_order() -> None:
    data = candles(QUIET, QUIET, RISE, (100.0, 101.0, 99.5, 100.5), *AFTER)
    genome = Genome(entry=(UP,))
    # 1.5e-6 of cash buys 1.5e-8 units at 100: enough.
    assert len(run(data, genome, initial_cash=1.5e-6).trades) == 1
    # 0.5e-6 buys 5e-9 units: skipped, cash untouched.
    result = run(data, genome, initial_cash=0.5e-6)
    assert len(result.trades) == 0 and np.all(result.equity == 0.5e-6)
    # Size applies before the minimum: a quarter of 3e-6 buys 7.5e-9 units.
    assert len(run(data, dataclasses.replace(genome, size=0.25), initial_cash=3e-6).trades) == 0


def test_crossing_is_strict() -> None:
    cross = Condition("roc(1)", "cross_above", 0.0)
    # roc(1): 0, 0, then +1 %: touching zero and leaving it is not a crossing.
    touch = candles(QUIET, QUIET, QUIET, (100.0, 101.5, 99.5, 101.0), *AFTER)
    assert len(run(touch, Genome(entry=(cross,))).trades) == 0
    # roc(1): 0, -0.5 %, +1.5 %: a crossing at bar 3, filled at the open of bar 4.
    below = candles(QUIET, QUIET, (100.0, 100.5, 99.0, 99.5), (99.5, 101.5, 99.0, 101.0),
                    *AFTER)
    assert trade_rows(run(below, Genome(entry=(cross,))).trades) == [(4, 7, 1, "end")]


def test_bar_zero_only_gives_history() -> None:
    # close > lowest(1) (the bar's own low) holds on every bar, bar 0 included, but the first
    # decision is taken at the close of bar 1: the entry fills at the open of bar 2.
    data = candles(*[QUIET] * 6)
    result = run(data, Genome(entry=(Condition("close", "gt", "lowest(1)"),)))
    assert trade_rows(result.trades) == [(2, 5, 1, "end")]


def test_no_trades_metrics() -> None:
    result = run(DATA.slice(0, 50), Genome(entry=(Condition("rsi(14)", "lt", 5.0),)))
    m = result.metrics
    assert (m.n_trades, m.final_equity, m.sharpe, m.sortino, m.max_drawdown) == (0, 1e4, 0, 0, 0)
    assert (m.win_rate, m.profit_factor, m.exposure, m.avg_trade_return) == (0, 0, 0, 0)
    assert math.isnan(m.return_skew) and math.isnan(m.return_kurtosis) and m.n_returns == 50
    assert m.to_dict()["return_skew"] is None


# --------------------------------------------------------------------------------------------
# The trade list must hold every trade
# --------------------------------------------------------------------------------------------

# Run in a child process: an overrun of the kernel's trade buffer corrupts the heap and can
# abort the interpreter ("double free or corruption"), which would take pytest down with it.
TRADE_BUFFER_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from worker_client.engine import OHLCV, Condition, Costs, Genome, backtest
    rows, genome = json.loads(sys.stdin.read())
    o, h, lo, c = zip(*rows)
    data = OHLCV.from_arrays(np.arange(len(rows)) * 300, o, h, lo, c)
    result = backtest(data, Genome.from_json(genome), costs=Costs(fee=0.0))
    print(json.dumps([[int(t["entry_bar"]), int(t["exit_bar"]), int(t["side"]),
                       str(t["exit_reason"])] for t in result.trades]))
""")


@pytest.mark.parametrize("case", ["reversal_every_bar", "stopped_out_every_bar"])
def test_trade_list_holds_a_trade_per_bar(case: str) -> None:
    n = 20
    if case == "reversal_every_bar":
        # Closes alternate up and down: long/short reverses at every open from bar 2 on.
        rows = [(100.0, 102.5, 98.5, 102.0 if t % 2 else 99.0) for t in range(n)]
        genome = Genome(entry=(Condition("roc(1)", "gt", 0.0),),
                        exit=(Condition("roc(1)", "lt", 0.0),), direction="long_short")
    else:
        # A rule that always holds and a 0.5 % stop that every bar's range reaches: one trade
        # per bar, each entered at an open and stopped out in the same bar.
        rows = [(100.0, 101.0, 99.0, 100.0)] * n
        genome = Genome(entry=(Condition("rsi(2)", "gt", 5.0),), stop_loss=0.005)
    data = candles(*rows)
    want = reference_backtest(data, genome, fee=0.0)
    assert len(want.trades) > n // 2 + 2  # more trades than half the bars
    proc = subprocess.run([sys.executable, "-c", TRADE_BUFFER_SCRIPT], cwd=REPO,
                          input=json.dumps([rows, genome.to_json()]), capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == [[t.entry_bar, t.exit_bar, t.side, t.exit_reason]
                                       for t in want.trades]


# --------------------------------------------------------------------------------------------
# No look-ahead
# --------------------------------------------------------------------------------------------


def test_truncating_the_data_does_not_change_earlier_decisions() -> None:
    genomes = random_genomes(25, seed=3) + busy_genomes()[::2]
    costs = Costs(fee=0.001, slippage=0.0005)
    checked = 0
    for m in (40, 777, 1500, 2999):
        head = DATA.slice(0, m)
        for genome in genomes:
            # Indicators: each series of the head is the head of the series.
            for key in genome.series_keys():
                np.testing.assert_array_equal(compute(head, key), compute(DATA, key)[:m],
                                              err_msg=key)
            full = backtest(DATA, genome, costs=costs)
            cut = backtest(head, genome, costs=costs)
            # Every trade that ends by bar m-2 is decided by data up to m-2: identical, bit
            # for bit; the truncated run may add one trade closed at its last open.
            settled = full.trades[full.trades["exit_bar"] <= m - 2]
            assert cut.trades[: len(settled)].tolist() == settled.tolist(), genome.to_json()
            extra = cut.trades[len(settled):]
            assert len(extra) <= 1
            if len(extra):
                assert (extra["exit_bar"][0], extra["exit_reason"][0]) == (m - 1, "end")
                same_entry = full.trades[len(settled)]
                for name in ("entry_bar", "side", "entry_price", "units"):
                    assert extra[name][0] == same_entry[name], (name, genome.to_json())
            # The equity curve is the same up to the close of bar m-2.
            np.testing.assert_array_equal(cut.equity[: m - 1], full.equity[: m - 1])
            checked += len(settled)
    assert checked > 100


def spliced(data: OHLCV, m: int, seed: int) -> OHLCV:
    """``data`` up to bar m-1, then other candles (scaled to carry on from the last close)."""
    other = synthetic_ohlcv(len(data), seed=seed)
    scale = data.close[m - 1] / other.close[m - 1]
    return OHLCV.from_arrays(data.timestamp, *(
        np.concatenate([getattr(data, f)[:m], getattr(other, f)[m:] * (scale if f != "volume"
                                                                        else 1.0)])
        for f in ("open", "high", "low", "close", "volume")))


def decided_by_close_of(trades: np.ndarray, bar: int) -> tuple[list, list, list]:
    """What the closes up to ``bar`` decide, and nothing that depends on later bars.

    Trades over by then (every field); which positions open at the next open or earlier, on
    which side (not at what price: the next open is a later bar); and which positions a
    signal closes at the next open.
    """
    over = trades[trades["exit_bar"] <= bar].tolist()
    entries = [(int(t["entry_bar"]), int(t["side"])) for t in trades if t["entry_bar"] <= bar + 1]
    signal_exits = [(int(t["entry_bar"]), int(t["side"])) for t in trades
                    if t["exit_bar"] == bar + 1 and t["exit_reason"] == "signal"]
    return over, entries, signal_exits


def test_future_bars_do_not_change_earlier_decisions() -> None:
    # The other way round, and sharper: replace every bar from m on by other candles. The
    # decisions taken at the close of bar m-1 (what happens at the open of m) must not change;
    # truncation cannot show that, because the end-of-data rule takes over at m-2.
    genomes = random_genomes(20, seed=4) + busy_genomes()
    costs = Costs(fee=0.001, slippage=0.0005)
    full = [backtest(DATA, g, costs=costs) for g in genomes]
    decisions_at_the_cut = 0
    for i, m in enumerate((60, 400, 1111, 1500, 2222, 2500, 2900, 2998)):
        other = spliced(DATA, m, seed=100 + i)
        for genome, a in zip(genomes, full, strict=True):
            b = backtest(other, genome, costs=costs)
            want = decided_by_close_of(a.trades, m - 1)
            assert decided_by_close_of(b.trades, m - 1) == want, (m, genome.to_json())
            np.testing.assert_array_equal(a.equity[:m], b.equity[:m])
            decisions_at_the_cut += sum(e[0] == m for e in want[1]) + len(want[2])
    assert decisions_at_the_cut >= 10  # the check reached the bar after the cut


# --------------------------------------------------------------------------------------------
# evaluate_population
# --------------------------------------------------------------------------------------------

POPULATION = random_genomes(30, seed=6) + busy_genomes()[:10]


def metrics_rows(array: np.ndarray) -> np.ndarray:
    return np.array([[row[name] for name in METRIC_FIELDS] for row in array])


def backtest_rows(genomes: list[Genome], **kwargs) -> np.ndarray:
    return np.array([[getattr(backtest(DATA, g, **kwargs).metrics, name)
                      for name in METRIC_FIELDS] for g in genomes], dtype=np.float64)


@pytest.mark.parametrize("threads", [1, 2])
def test_population_equals_single_backtests_bit_for_bit(threads: int) -> None:
    costs = Costs(fee=0.0015, slippage=0.0003)
    expected = backtest_rows(POPULATION, costs=costs)
    got = evaluate_population(DATA, POPULATION, costs=costs, threads=threads)
    assert got.dtype == METRICS_DTYPE and got.shape == (len(POPULATION),)
    np.testing.assert_array_equal(metrics_rows(got), expected)
    # Any order of the genomes: each genome's row is the same.
    order = np.random.default_rng(threads).permutation(len(POPULATION))
    shuffled = evaluate_population(DATA, [POPULATION[i] for i in order], costs=costs,
                                   threads=threads)
    np.testing.assert_array_equal(metrics_rows(shuffled), expected[order])


def test_population_with_shared_features_and_ranges() -> None:
    features = FeatureTable(DATA)
    costs = Costs(fee=0.001)
    # The table grows from call to call (a few genomes first, then more): rows already
    # computed must keep their values.
    for count, start, stop in ((3, 0, None), (12, 0, None), (12, 100, 2500), (20, 2997, 3000)):
        genomes = POPULATION[:count]
        expected = backtest_rows(genomes, costs=costs, start=start, stop=stop)
        got = evaluate_population(DATA, genomes, costs=costs, start=start, stop=stop,
                                  features=features, threads=2)
        np.testing.assert_array_equal(metrics_rows(got), expected)
        got = engine_backtest(DATA, genomes[-1], costs=costs, start=start, stop=stop,
                              features=features)
        np.testing.assert_array_equal([getattr(got.metrics, f) for f in METRIC_FIELDS],
                                      expected[-1])


# A table of another data set's series would be read past its end by the kernel (which does
# no bounds checks): in a child process, so that a bad read cannot take pytest down.
FOREIGN_FEATURES_SCRIPT = textwrap.dedent("""
    from worker_client.engine import FeatureTable, Genome, backtest, evaluate_population
    from worker_client.engine import synthetic_ohlcv
    data = synthetic_ohlcv(3000, seed=11)
    genome = Genome.sma_crossover(5, 20)
    for call in (backtest, lambda d, g, **kw: evaluate_population(d, [g], **kw)):
        try:
            call(data, genome, features=FeatureTable(data.slice(0, 100)))
        except ValueError as exc:
            print("refused:", exc)
        else:
            print("accepted")
""")


def test_feature_table_of_other_data_is_refused() -> None:
    proc = subprocess.run([sys.executable, "-c", FOREIGN_FEATURES_SCRIPT], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("refused:") for line in lines), lines


def test_population_duplicates_and_empty() -> None:
    genome = POPULATION[0]
    rows = metrics_rows(evaluate_population(DATA, [genome, genome, genome]))
    np.testing.assert_array_equal(rows[0], rows[1])
    np.testing.assert_array_equal(rows[0], rows[2])
    empty = evaluate_population(DATA, [])
    assert empty.shape == (0,) and empty.dtype == METRICS_DTYPE


@pytest.mark.parametrize(("start", "stop"), [(-1, None), (0, 3001), (10, 10), (10, 5),
                                              (0, 2), (2998, None)])
def test_bad_ranges(start: int, stop: int | None) -> None:
    with pytest.raises(ValueError, match=r"bar range .* at least 3"):
        engine_backtest(DATA, POPULATION[0], start=start, stop=stop)
    with pytest.raises(ValueError, match=r"bar range"):
        evaluate_population(DATA, POPULATION[:2], start=start, stop=stop)


@pytest.mark.parametrize("cash", [0.0, -1.0, math.nan, math.inf])
def test_bad_initial_cash(cash: float) -> None:
    with pytest.raises(ValueError, match=r"initial_cash must be positive"):
        engine_backtest(DATA, POPULATION[0], initial_cash=cash)
    with pytest.raises(ValueError, match=r"initial_cash must be positive"):
        evaluate_population(DATA, POPULATION[:2], initial_cash=cash)


@pytest.mark.parametrize("changes", [dict(fee=-0.001), dict(fee=0.1), dict(fee=math.nan),
                                     dict(fee="0.001"), dict(slippage=-1e-9),
                                     dict(slippage=math.inf), dict(slippage=None)])
def test_bad_costs(changes: dict[str, object]) -> None:
    name = next(iter(changes))
    with pytest.raises(ValueError, match=rf"{name} must be a fraction in \[0, 0\.1\)"):
        Costs(**changes)


# --------------------------------------------------------------------------------------------
# Determinism without the JIT
# --------------------------------------------------------------------------------------------

DETERMINISM_SCRIPT = textwrap.dedent("""
    import json, sys
    import numba
    from worker_client.engine import (METRIC_FIELDS, Costs, Genome, backtest,
                                      evaluate_population, synthetic_ohlcv)

    def payload(genome_texts):
        data = synthetic_ohlcv(2000, seed=21)
        genomes = [Genome.from_json(text) for text in genome_texts]
        costs = Costs(fee=0.001, slippage=0.0005)
        trades = []
        for g in genomes:
            result = backtest(data, g, costs=costs)
            trades.append([[int(t["entry_bar"]), int(t["exit_bar"]), int(t["side"]),
                            float(t["entry_price"]), float(t["exit_price"]), float(t["units"]),
                            float(t["pnl"]), str(t["exit_reason"])] for t in result.trades])
        rows = evaluate_population(data, genomes, costs=costs, threads=2)
        metrics = [[float(row[name]) for name in METRIC_FIELDS] for row in rows]
        return {"trades": trades, "metrics": metrics, "jit": not numba.config.DISABLE_JIT}

    if __name__ == "__main__":
        print(json.dumps(payload(json.loads(sys.stdin.read()))))
""")


def test_same_trades_without_the_jit() -> None:
    genomes = [g for g in busy_genomes() if g.stop_loss or g.trailing_stop][:3]
    genomes += [g for g in random_genomes(40, seed=7) if g.direction != "long"][:2]
    texts = [g.to_json() for g in genomes]
    namespace: dict[str, object] = {"__name__": "determinism"}
    exec(DETERMINISM_SCRIPT, namespace)
    jitted = json.loads(json.dumps(namespace["payload"](texts)))  # type: ignore[operator]
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    proc = subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT], cwd=REPO, env=env,
                          input=json.dumps(texts), capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    interpreted = json.loads(proc.stdout)
    assert jitted.pop("jit") is True and interpreted.pop("jit") is False
    assert sum(len(t) for t in jitted["trades"]) > 20
    # Trades: identical, to the last bit (only + - * / and comparisons decide them).
    assert interpreted["trades"] == jitted["trades"]
    # Metrics: within 1e-12 relative. annual_return and calmar use pow(), which LLVM and the
    # C library may round differently; everything else is + - * / and sqrt, correctly rounded
    # in both, so in practice those agree exactly.
    for want_row, got_row in zip(jitted["metrics"], interpreted["metrics"], strict=True):
        for name, want, got in zip(METRIC_FIELDS, want_row, got_row, strict=True):
            assert close(got, want, 1e-12), (name, got, want)


# --------------------------------------------------------------------------------------------
# Data validation
# --------------------------------------------------------------------------------------------

GOOD = dict(timestamp=[0, 300, 600, 900], open=[10.0, 11.0, 12.0, 11.0],
            high=[11.5, 12.0, 12.5, 12.0], low=[9.5, 10.5, 11.0, 10.0],
            close=[11.0, 11.5, 11.0, 10.5], volume=[1.0, 2.0, 3.0, 4.0])


def with_value(field: str, bar: int, value: float) -> dict[str, list[float]]:
    out = {k: list(v) for k, v in GOOD.items()}
    out[field][bar] = value
    return out


def test_good_candles_are_contiguous_float64() -> None:
    data = OHLCV.from_arrays(**GOOD)
    assert data.timestamp.dtype == np.int64 and len(data) == 4
    for name in ("open", "high", "low", "close", "volume"):
        array = getattr(data, name)
        assert array.dtype == np.float64 and array.flags.c_contiguous and array.flags.writeable
    assert data.bar_seconds == 300 and data.bars_per_year == BARS_PER_YEAR
    head = data.slice(1, 3)
    assert len(head) == 2 and head.close.flags.c_contiguous and list(head.close) == [11.5, 11.0]
    assert np.all(OHLCV.from_arrays(**{**GOOD, "volume": None}).volume == 0)


@pytest.mark.parametrize(("kwargs", "message"), [
    (with_value("close", 2, math.nan), r"close is not finite at bar 2"),
    (with_value("open", 1, math.inf), r"open is not finite at bar 1"),
    (with_value("volume", 3, math.nan), r"volume is not finite at bar 3"),
    (with_value("low", 2, 13.0), r"bar 2 is inconsistent: .*high=12\.5 low=13\.0"),
    (with_value("high", 1, 11.2), r"bar 1 is inconsistent"),  # below the close
    (with_value("low", 3, 10.8), r"bar 3 is inconsistent"),  # above the close
    (with_value("high", 0, 10.5), r"bar 0 is inconsistent"),  # below the close
    (with_value("volume", 1, -1.0), r"bar 1 is inconsistent"),
    (with_value("low", 1, 0.0), r"low must be positive, bar 1 has 0\.0"),
    (with_value("timestamp", 2, 300), r"timestamps must increase: bar 2 is not after bar 1"),
    (with_value("timestamp", 3, 100), r"timestamps must increase: bar 3 is not after bar 2"),
    ({**GOOD, "high": GOOD["high"][:3]}, r"high has 3 values, close has 4"),
    ({**GOOD, "timestamp": [0, 300, 600, 900, 1200]}, r"timestamp has 5 values, close has 4"),
    ({**GOOD, "volume": [1.0]}, r"volume has 1 values, close has 4"),
    ({k: v[:1] for k, v in GOOD.items()}, r"at least 2 bars are needed, got 1"),
    ({**GOOD, "close": [[11.0, 11.5, 11.0, 10.5]]}, r"close must be one-dimensional"),
])
def test_bad_candles_are_refused_naming_the_bar(kwargs, message) -> None:
    with pytest.raises(DataError, match=message):
        OHLCV.from_arrays(**kwargs)
    assert issubclass(DataError, ValueError)
