"""Chart data for ``static/js/charts.js``: series downsampled on the server, and the strategy
page's equity, drawdown and trades (a server-side backtest, cached).

A chart's data is ``{"series": [{"name", "x", "y"}], "markers": [{"x", "label"}]}``, written
into the page with ``json_script``; dates travel as milliseconds since 1970 UTC.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from django.core.cache import cache

import worker_client
from apps.workunits.models import Campaign, Strategy
from apps.workunits.selectors import EpochFitness, strategy_backtests

MAX_POINTS = 1_000  # per series: plenty for a chart a few hundred pixels wide
CHART_FORMAT = 1  # bump when the cached payload's shape changes
CURVES_CACHE_SECONDS = 7 * 86_400  # the inputs never change for a given key (see the key)


def downsample_minmax(values: Sequence[float] | np.ndarray, max_points: int) -> np.ndarray:
    """Indices of at most ``max_points`` points that keep the series' shape, in order.

    The series is cut into equal buckets of consecutive points and each bucket keeps its
    lowest and highest point (in their original order), so every peak and every trough —
    the maximum drawdown above all — survives; the first and last points are always kept.
    Series that are short enough come back whole. NaN counts as neither low nor high.
    """
    if max_points < 4:
        raise ValueError(f"max_points must be at least 4, got {max_points}")
    y = np.asarray(values, dtype=np.float64)
    n = len(y)
    if n <= max_points:
        return np.arange(n)
    buckets = (max_points - 2) // 2
    edges = np.linspace(1, n - 1, buckets + 1).astype(np.int64)  # inner points only
    finite = np.where(np.isfinite(y), y, np.nan)
    keep = [0]
    for lo, hi in itertools.pairwise(edges):
        if hi <= lo:
            continue
        chunk = finite[lo:hi]
        if np.all(np.isnan(chunk)):
            keep.append(lo)
            continue
        pair = sorted({lo + int(np.nanargmin(chunk)), lo + int(np.nanargmax(chunk))})
        keep.extend(pair)
    keep.append(n - 1)
    return np.asarray(keep, dtype=np.int64)


def _number(value: float, digits: int) -> float | None:
    return round(float(value), digits) if math.isfinite(value) else None


def line_series(name: str, x: Sequence[Any] | np.ndarray, y: Sequence[float] | np.ndarray, *,
                digits: int = 6, max_points: int = MAX_POINTS) -> dict[str, Any]:
    """One series for charts.js, downsampled to ``max_points``; y rounded to ``digits``."""
    y = np.asarray(y, dtype=np.float64)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} values, y has {len(y)}")
    keep = downsample_minmax(y, max_points)
    xs = np.asarray(x)[keep].tolist()
    return {"name": name, "x": xs, "y": [_number(v, digits) for v in y[keep]]}


def milliseconds(timestamps: np.ndarray) -> np.ndarray:
    """Unix seconds → the milliseconds charts.js reads as dates."""
    return np.asarray(timestamps, dtype=np.int64) * 1000


def drawdown_of(equity: np.ndarray) -> np.ndarray:
    """Drawdown at each point: equity below its running peak, as a fraction (≤ 0)."""
    equity = np.asarray(equity, dtype=np.float64)
    if len(equity) == 0:
        return equity
    peak = np.maximum.accumulate(equity)
    return np.where(peak > 0, equity / peak - 1.0, 0.0)


# --- campaign charts -------------------------------------------------------------------------

MAX_ISLAND_LINES = 8  # more lines than this are noise: only the overall lines are drawn


def fitness_chart(campaign: Campaign, rows: Sequence[EpochFitness]) -> dict[str, Any]:
    """Best fitness over epochs: the best of each epoch, the best so far, and one line per
    island when there are few islands."""
    by_epoch: dict[int, float] = {}
    by_island: dict[int, tuple[list[int], list[float]]] = {}
    for row in rows:
        by_epoch[row.epoch] = max(by_epoch.get(row.epoch, -math.inf), row.fitness)
        xs, ys = by_island.setdefault(row.island, ([], []))
        xs.append(row.epoch)
        ys.append(row.fitness)
    epochs = sorted(by_epoch)
    best = [by_epoch[e] for e in epochs]
    series = []
    if epochs:
        series.append(line_series("best so far", epochs, np.maximum.accumulate(best)))
        series.append(line_series("best of the epoch", epochs, best))
        if len(by_island) <= MAX_ISLAND_LINES:
            series += [line_series(f"island {island}", *by_island[island])
                       for island in sorted(by_island)]
    return {"series": series, "markers": []}


# --- the strategy page -----------------------------------------------------------------------


def _trade_rows(trades: np.ndarray, timestamps: np.ndarray, part: str) -> list[dict[str, Any]]:
    rows = []
    for t in trades:
        entry_value = float(t["units"]) * float(t["entry_price"])
        rows.append({
            "part": part,
            "entry_time": int(timestamps[int(t["entry_bar"])]),
            "exit_time": int(timestamps[int(t["exit_bar"])]),
            "entry_bar": int(t["entry_bar"]), "exit_bar": int(t["exit_bar"]),
            "side": "long" if int(t["side"]) > 0 else "short",
            "entry_price": float(t["entry_price"]), "exit_price": float(t["exit_price"]),
            "units": float(t["units"]), "pnl": float(t["pnl"]),
            "return": float(t["pnl"]) / entry_value if entry_value > 0 else None,
            "exit_reason": str(t["exit_reason"]).replace("_", " "),
        })
    return rows


def _strategy_curves(strategy: Strategy) -> dict[str, Any]:
    runs = strategy_backtests(strategy)
    ts = runs.timestamps
    ins = runs.in_sample
    in_x = milliseconds(ts[ins.start:ins.start + len(ins.equity)])
    initial_cash = runs.initial_cash
    equity = [line_series("in-sample", in_x, ins.equity, digits=2)]
    stitched = [np.asarray(ins.equity, dtype=np.float64)]
    stitched_x = [in_x]
    trades = _trade_rows(ins.trades, ts, "in-sample")
    markers = []
    outs = runs.out_sample
    if outs is not None:
        # The out-of-sample run starts flat with the initial cash; chained onto the in-sample
        # end it reads as one account that kept trading the same rules.
        scale = ins.metrics.final_equity / initial_cash
        out_x = milliseconds(ts[outs.start:outs.start + len(outs.equity)])
        out_equity = np.asarray(outs.equity, dtype=np.float64) * scale
        equity.append(line_series("out-of-sample", out_x, out_equity, digits=2))
        stitched.append(out_equity)
        stitched_x.append(out_x)
        trades += _trade_rows(outs.trades, ts, "out-of-sample")
        markers.append({"x": int(out_x[0]), "label": "out-of-sample →"})
    all_x = np.concatenate(stitched_x)
    drawdown = drawdown_of(np.concatenate(stitched))
    return {
        "format": CHART_FORMAT,
        "equity": {"series": equity, "markers": markers},
        "drawdown": {"series": [line_series("drawdown", all_x, drawdown, digits=5)],
                     "markers": markers},
        "trades": trades,
        "initial_cash": initial_cash,
        "in_sample_trades": len(ins.trades),
    }


def strategy_curves(strategy: Strategy) -> dict[str, Any]:
    """Equity and drawdown chart data and the trade list of ``strategy``, cached.

    The key names everything the backtest depends on (genome, data set, ranges, engine
    version); the settings come with the strategy's work unit, which never changes.
    """
    campaign = strategy.campaign
    key = ":".join(str(part) for part in (
        "strategy-curves", CHART_FORMAT, worker_client.__version__, strategy.pk,
        strategy.genome_hash, campaign.dataset.sha256, campaign.in_sample_start,
        campaign.in_sample_stop, campaign.out_sample_stop))
    curves = cache.get(key)
    if curves is None:
        curves = _strategy_curves(strategy)
        cache.set(key, curves, CURVES_CACHE_SECONDS)
    return curves
