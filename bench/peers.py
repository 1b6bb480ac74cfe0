"""The benchmark's peers, each driven the way its own documentation does it fastest.

Every peer is a :class:`Peer`: ``prepare(data, pairs, threads)`` does the untimed set-up (imports,
genomes, pandas wrappers) and returns the callable that is timed. That callable runs the whole
grid and returns a :class:`Summary` (trades and final equity per combo), which the harness uses
to check that the peers computed the same thing.

All follow one convention (``shared/reference/backtest_peers.md``): SMA crossover, strict, long
only, signal on bar t filled at ``open[t+1]``, all-in fractional units, fee 0.1 % per side, cash
10,000, minimum order 1e-8 units, no entries from signals on the last two bars and a position
still open sold at ``open[n-1]``.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from worker_client.engine.data import OHLCV

FEE = 0.001
INITIAL_CASH = 10_000.0
MIN_UNITS = 1e-8
VECTORBT_CHUNK = 100  # combos per from_signals call: 1M bars x 100 combos already peaks at ~12 GB

Pairs = list[tuple[int, int]]


@dataclass(frozen=True)
class Summary:
    """Per combo, in the order of the pairs: closed trades and final equity."""

    n_trades: np.ndarray
    final_equity: np.ndarray


Timed = Callable[[], Summary]


@dataclass(frozen=True)
class Peer:
    key: str
    label: str
    prepare: Callable[[OHLCV, Pairs, int], Timed]
    multithreaded: bool = False  # runs on ``threads`` threads; otherwise always one
    subset: int | None = None  # time this many combos and extrapolate (too slow for the grid)


# --- our engine --------------------------------------------------------------------------------


class EngineUnavailable(RuntimeError):
    """The engine's population API has not landed yet."""


def _prepare_engine(data: OHLCV, pairs: Pairs, threads: int) -> Timed:
    try:
        from worker_client.engine import Costs, Genome, evaluate_population
    except ImportError as exc:
        raise EngineUnavailable(str(exc)) from exc
    genomes = [Genome.sma_crossover(fast, slow) for fast, slow in pairs]
    costs = Costs(fee=FEE, slippage=0.0)

    def run() -> Summary:
        # The whole call: the SMA table of the distinct windows is built inside it.
        out = evaluate_population(
            data, genomes, costs=costs, initial_cash=INITIAL_CASH, threads=threads
        )
        return Summary(np.asarray(out["n_trades"]), np.asarray(out["final_equity"]))

    return run


# --- the minimal numba loop --------------------------------------------------------------------


def _prepare_loop(data: OHLCV, pairs: Pairs, threads: int) -> Timed:
    import numba
    from minimal_loop import run_grid

    parallel = threads > 1
    if parallel:
        numba.set_num_threads(threads)

    def run() -> Summary:
        result = run_grid(data.open, data.close, pairs, fee=FEE, initial_cash=INITIAL_CASH,
                          min_units=MIN_UNITS, bars_per_year=data.bars_per_year,
                          parallel=parallel)
        return Summary(result.n_trades, result.final_equity)

    return run


# --- vectorbt ----------------------------------------------------------------------------------


def _prepare_vectorbt(data: OHLCV, pairs: Pairs, threads: int) -> Timed:
    import pandas as pd
    import vectorbt as vbt

    # A naive (implicitly UTC) index: vectorbt's signal and metric steps run about twice as
    # slowly on a tz-aware one, and the fastest idiomatic use is what is measured.
    index = pd.to_datetime(data.timestamp, unit="s")
    close = pd.Series(data.close, index=index)
    open_ = pd.Series(data.open, index=index)

    def chunk(part: Pairs) -> tuple[np.ndarray, np.ndarray]:
        # vectorbt's grid idiom: one MA column per combo (each distinct window computed once),
        # crossings, shifted one bar so that a signal fills at the next open.
        fast = vbt.MA.run(close, window=[f for f, _ in part], short_name="fast")
        slow = vbt.MA.run(close, window=[s for _, s in part], short_name="slow")
        entries = fast.ma_crossed_above(slow).vbt.signals.fshift(1)
        exits = fast.ma_crossed_below(slow).vbt.signals.fshift(1)
        entries.iloc[-1] = False  # end of data: no entry at open[n-1] ...
        exits.iloc[-1] = True  # ... and any position is sold there
        portfolio = vbt.Portfolio.from_signals(
            close, entries, exits, price=open_, size=np.inf, fees=FEE, init_cash=INITIAL_CASH,
            direction="longonly", freq="5min",
        )
        # The four metrics the grid is run for.
        final_value = np.atleast_1d(np.asarray(portfolio.final_value()))
        n_trades = np.atleast_1d(np.asarray(portfolio.trades.count()))
        np.asarray(portfolio.trades.win_rate())
        np.asarray(portfolio.sharpe_ratio())
        return n_trades, final_value

    def run() -> Summary:
        trades, equity = [], []
        for start in range(0, len(pairs), VECTORBT_CHUNK):
            n_trades, final_value = chunk(pairs[start : start + VECTORBT_CHUNK])
            trades.append(n_trades)
            equity.append(final_value)
            # Without this, two chunks' frames are alive at once (OOM at 1M bars).
            gc.collect()
        return Summary(np.concatenate(trades), np.concatenate(equity))

    return run


# --- backtesting.py ----------------------------------------------------------------------------


def sma_cross_strategy():
    """backtesting.py's documented SMA-crossover idiom under the shared conventions (also used
    by the conformance tests, so the strategy timed here is the one checked there)."""
    from backtesting import Strategy
    from backtesting.lib import crossover
    from backtesting.test import SMA

    class SmaCross(Strategy):
        n1 = 10
        n2 = 60
        last_bar = 0  # the index of the last bar, for the end-of-data rule

        def init(self):
            self.fast = self.I(SMA, self.data.Close, self.n1)
            self.slow = self.I(SMA, self.data.Close, self.n2)

        def next(self):
            bar = len(self.data) - 1
            if self.position:
                # An order placed on bar n-2 fills at open[n-1]: the end-of-data exit.
                if crossover(self.slow, self.fast) or bar >= self.last_bar - 1:
                    self.position.close()
            elif crossover(self.fast, self.slow) and bar < self.last_bar - 1:
                self.buy()  # all cash, in whole satoshis (FractionalBacktest)

    return SmaCross


def _prepare_backtesting(data: OHLCV, pairs: Pairs, threads: int) -> Timed:
    import pandas as pd
    from backtesting.lib import FractionalBacktest

    frame = pd.DataFrame(
        {"Open": data.open, "High": data.high, "Low": data.low, "Close": data.close,
         "Volume": data.volume},
        index=pd.to_datetime(data.timestamp, unit="s", utc=True),
    )
    backtest = FractionalBacktest(
        frame, sma_cross_strategy(), cash=INITIAL_CASH, commission=FEE, fractional_unit=MIN_UNITS
    )

    def run() -> Summary:
        trades, equity = [], []
        for fast, slow in pairs:
            stats = backtest.run(n1=fast, n2=slow, last_bar=len(frame) - 1)
            trades.append(int(stats["# Trades"]))
            equity.append(float(stats["Equity Final [$]"]))
        return Summary(np.array(trades), np.array(equity))

    return run


PEERS: dict[str, Peer] = {
    peer.key: peer
    for peer in (
        Peer("engine", "ours: evaluate_population", _prepare_engine, multithreaded=True),
        Peer("loop", "minimal numba loop", _prepare_loop, multithreaded=True),
        Peer("vectorbt", "vectorbt 1.2.0 from_signals", _prepare_vectorbt),
        Peer("backtesting", "backtesting.py 0.6.6 loop of run",
             _prepare_backtesting, subset=3),
    )
}


def spread(pairs: Pairs, k: int) -> list[int]:
    """Indices of ``k`` combos spread evenly over the grid, first and last included."""
    if k >= len(pairs):
        return list(range(len(pairs)))
    return sorted({round(i * (len(pairs) - 1) / (k - 1)) for i in range(k)})


def grid(name: str) -> Pairs:
    """The benchmark grids: 100 or 1,000 (fast, slow) pairs, fast-major."""
    if name == "100":
        return [(f, s) for f in range(5, 51, 5) for s in range(60, 241, 20)]
    if name == "1000":
        return [(f, s) for f in range(4, 101, 4) for s in range(110, 501, 10)]
    raise ValueError(f"unknown grid {name!r}")


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """The largest ``|a - b| / |b|`` (0 where both are 0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.where(a == b, 0.0, np.abs(a - b) / np.abs(b))
    return float(diff.max()) if diff.size else math.nan
