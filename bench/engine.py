"""Engine benchmark: candle-evaluations per second, side by side with peers.

    python bench/engine.py              # full run: all peers, 30k and 1M bars, 100 and 1,000 pairs
    python bench/engine.py --quick      # 1 thread, 30k bars, 100 pairs: ours, loop, vectorbt
    python bench/engine.py --json PATH  # also write every figure to PATH
    --vectorbt-full                     # run vectorbt's 1M x 1,000 in full (~10 min more)
    --cold-jit                          # fresh numba cache: warm-up shows cold compiles

One strategy on one data set for every peer: the long-only SMA crossover over a grid of
(fast, slow) pairs, fee 0.1 % per side, fills at the next bar's open, all-in, under the
convention of ``shared/reference/backtest_peers.md``; data are the first 30,000 or all 1,000,000
bars of ``synthetic_ohlcv(1_000_000)`` (seed 20240501, 5-minute bars).

candle-evaluations/s = bars x combos / wall seconds of the whole pipeline (indicators, signals,
simulation, metrics). Each (peer, bars, grid, threads) runs in its own process: import, load
data, a warm-up call on 3,000 bars x 2 combos (JIT compile or on-disk cache load, reported apart
and excluded), ``gc.collect()``, a reset of the peak-RSS counter, then 1 to 7 timed repetitions
whose median is reported. Peak memory is that process's VmHWM over the timed repetitions.
Peers too slow for the whole grid are timed on a subset and extrapolated, and the table says so.
The full run ends with a GA epoch's throughput (:func:`ga_throughput`).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import peers  # bench/, beside this script
from measure import (
    FULL_BARS,
    NOISY_CORES,
    ROOT,
    WARMUP_BARS,
    Case,
    Measurement,
    child_main,
    load_average,
    measure_case,
    peak_mb,
    reset_peak_rss,
    wait_for_quiet,
)

QUICK_REP_BUDGET_S = 5.0  # time spent on repetitions after the first, per configuration
FULL_REP_BUDGET_S = 10.0


# --- the GA hook -------------------------------------------------------------------------------

GA_GENERATIONS = {30_000: 30, FULL_BARS: 3}


def ga_throughput(bars: int, threads: int) -> dict[str, Any]:
    """HOOK for the engine author: a GA epoch's throughput on random genomes.

    One island epoch of ``run_epoch`` with the default ``SearchSpace`` (random genomes of one or
    two conditions over several indicators, stops) and default ``GASettings``, started from a
    seeded random population, on the first ``bars`` bars. Throughput = distinct strategies
    evaluated x bars / wall seconds of the epoch; a 1-generation epoch on 3,000 bars warms the
    JIT first. Runs in its own process (``--ga BARS THREADS``). Returns ``{"skipped": why}``
    while ``run_epoch`` is not importable.
    """
    try:
        from worker_client.engine.ga import GASettings, run_epoch
        from worker_client.engine.space import SearchSpace
    except ImportError as exc:
        return {"skipped": f"run_epoch is not available yet ({exc})"}
    import numpy as np

    from worker_client.engine.data import synthetic_ohlcv

    data = synthetic_ohlcv(FULL_BARS).slice(0, bars)
    space, settings = SearchSpace(), GASettings()
    generations = GA_GENERATIONS.get(bars, 3)

    def epoch(candles, generations: int, seed: int) -> tuple[Any, float]:
        rng = np.random.default_rng(seed)
        population = [space.random_genome(rng) for _ in range(settings.population_size)]
        t0 = time.perf_counter()
        result = run_epoch(candles, space, settings, seed, population, generations,
                           threads=threads)
        return result, time.perf_counter() - t0

    _, warmup_s = epoch(data.slice(0, WARMUP_BARS), 1, seed=1)
    gc.collect()
    reset = reset_peak_rss()
    result, seconds = epoch(data, generations, seed=20240501)
    return {"bars": bars, "threads": threads, "generations": generations,
            "population": settings.population_size, "evaluated": result.evaluated,
            "seconds": seconds, "rate": result.evaluated * bars / seconds,
            "warmup_s": warmup_s, "peak_mb": peak_mb(reset), "digest": result.digest}


def run_ga(bars: int, threads: int, env: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--ga", str(bars), str(threads)]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT,
                               check=False)
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        tail = completed.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"skipped": f"failed (exit {completed.returncode}): {tail[0]}"}
    return json.loads(lines[-1])


def measure_ga(threads_all: int, env: dict[str, str], wait_quiet_s: float) -> list[dict[str, Any]]:
    figures = []
    for bars in (30_000, FULL_BARS):
        for threads in sorted({1, threads_all}):
            if wait_quiet_s > 0:
                wait_for_quiet(wait_quiet_s)
            figures.append(run_ga(bars, threads, env))
            if "skipped" in figures[-1]:
                return figures
    return figures


def print_ga(figures: list[dict[str, Any]]) -> None:
    print("\nGA epoch throughput (run_epoch, default SearchSpace and GASettings, random start)")
    for f in figures:
        if "skipped" in f:
            print(f"  skipped: {f['skipped']}")
            break
        print(f"  {f['bars']:>9,} bars, {f['threads']} thread(s): {f['evaluated']:,} strategies "
              f"in {f['generations']} generations of {f['population']}, "
              f"{_duration(f['seconds'])} → {_si(f['rate'])} candle-evals/s; peak "
              f"{f['peak_mb']:,.0f} MB; warm-up {_duration(f['warmup_s'])}")


# --- output ------------------------------------------------------------------------------------


def _si(value: float, unit: str = "") -> str:
    if value != value:  # NaN
        return "–"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def _duration(seconds: float) -> str:
    if seconds != seconds:
        return "–"
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.1f} ms"


def _ratio(ours: float, theirs: float) -> str:
    if ours != ours or theirs != theirs or theirs == 0:
        return "–"
    return f"{ours / theirs:.2g}" if ours / theirs < 100 else f"{ours / theirs:.0f}"


def print_table(headers: list[str], rows: list[list[str]], right: set[int]) -> None:
    """A plain-text table, columns sized to their content; ``right`` = right-aligned columns."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def _find(results: list[Measurement], peer: str, bars: int, grid: str,
          threads: int = 1) -> Measurement | None:
    for m in results:
        c = m.case
        if (c.peer, c.bars, c.grid, c.threads) == (peer, bars, grid, threads) and not m.skipped:
            return m
    return None


def _agreement(m: Measurement, reference: Measurement | None) -> str:
    """Trade-count mismatches and largest equity difference against the minimal loop."""
    if reference is None or m is reference or not m.n_trades:
        return ""
    ref_trades = [reference.n_trades[i] for i in m.combo_index]
    ref_equity = [reference.final_equity[i] for i in m.combo_index]
    mismatches = sum(a != b for a, b in zip(m.n_trades, ref_trades, strict=True))
    equity = peers.relative_difference(m.final_equity, ref_equity)
    return f"{mismatches}/{len(ref_trades)} trade counts ≠, equity rel {equity:.0e}"


def report(results: list[Measurement], threads_all: int) -> dict[str, Any]:
    headers = ["peer", "threads", "bars", "combos", "wall (grid)", "candle-evals/s", "ns/eval",
               "engine ×", "peak RSS (+timed)", "warm-up/JIT", "reps", "load before", "other CPU",
               "vs loop", "note"]
    rows = []
    for m in results:
        c = m.case
        if m.skipped:
            rows.append([m.label, str(c.threads), f"{c.bars:,}", c.grid, "–", "–", "–", "–", "–",
                         "–", "–", m.load_before, "–", "", m.skipped.splitlines()[0][:120]])
            continue
        ours = _find(results, "engine", c.bars, c.grid, c.threads) or _find(
            results, "engine", c.bars, c.grid)
        peak = f"{m.peak_mb:,.0f} MB (+{m.peak_mb - m.rss_before_mb:,.0f})"
        if not m.peak_reset:
            peak += " ru_maxrss"
        rows.append([
            m.label, str(c.threads), f"{c.bars:,}", f"{m.combos:,}", _duration(m.seconds),
            _si(m.rate), f"{1e9 / m.rate:.3g}", _ratio(ours.rate, m.rate) if ours else "–", peak,
            _duration(m.warmup_s), str(len(m.times)), m.load_before, f"{m.foreign_cpu:.2f}",
            _agreement(m, _find(results, "loop", c.bars, c.grid, 1)),
            "; ".join(filter(None, [m.note, f"attempt {m.attempts}" if m.attempts > 1 else ""])),
        ])
    print()
    print_table(headers, rows, right={1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12})
    print("\nengine × = our candle-evals/s ÷ this row's (ours at the same thread count, else 1 "
          "thread). other CPU = cores used by other processes during the case. vs loop = "
          "trade counts and final equity against the 1-thread minimal loop, same combos (on 1M "
          "bars the strategy ruins itself: entries near the 1e-8-unit minimum decide trades, "
          "and backtesting.py's whole satoshis differ there by design).")

    ratios: dict[str, Any] = {}
    ratio_rows = []
    for bars in sorted({m.case.bars for m in results}):
        for grid in sorted({m.case.grid for m in results}, key=int):
            def rate(peer: str, threads: int = 1, b: int = bars, g: str = grid) -> float:
                found = _find(results, peer, b, g, threads)
                return found.rate if found else float("nan")

            key = f"{bars}x{grid}"
            figures = {
                "engine_vs_loop_1t": rate("engine") / rate("loop"),
                "engine_vs_loop_all": rate("engine", threads_all) / rate("loop", threads_all),
                "engine_vs_vectorbt": rate("engine") / rate("vectorbt"),
                "engine_vs_backtesting": rate("engine") / rate("backtesting"),
                "engine_thread_scaling": rate("engine", threads_all) / rate("engine"),
            }
            if all(v != v for v in figures.values()):
                continue
            ratios[key] = figures
            ratio_rows.append([f"{bars:,} × {grid}"] + [_ratio(v, 1.0) for v in figures.values()])
    if ratio_rows:
        print("\nRatios (our candle-evals/s ÷ theirs; 1 thread unless said)")
        print_table(["data × combos", "÷ loop 1T", f"÷ loop {threads_all}T", "÷ vectorbt",
                     "÷ backtesting.py", f"ours {threads_all}T ÷ 1T"], ratio_rows,
                    right={1, 2, 3, 4, 5})
    print_targets(results, ratios)
    return ratios


def print_targets(results: list[Measurement], ratios: dict[str, Any]) -> None:
    """The issue's targets, each against every configuration that measured it."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = []
    for key, figures in ratios.items():
        bars, grid = key.split("x")
        label = f"{int(bars):,} × {grid}"
        loop, vbt = figures["engine_vs_loop_1t"], figures["engine_vs_vectorbt"]
        if loop == loop:
            lines.append(f"  ours ≥ 0.5 × minimal loop, 1 thread, {label}: {loop:.3f} "
                         f"{verdict(loop >= 0.5)}")
        if vbt == vbt:
            lines.append(f"  ours ≥ 50 × vectorbt, {label}: {vbt:.0f} {verdict(vbt >= 50)}")
    for m in results:
        if (m.case.peer, m.case.bars, m.case.grid) == ("engine", FULL_BARS, "1000") and m.peak_mb:
            lines.append(f"  ours < 1 GB peak at 1M × 1,000, {m.case.threads} thread(s): "
                         f"{m.peak_mb:,.0f} MB {verdict(m.peak_mb < 1024)}")
    if lines:
        print("\nTargets (issue 2)")
        print("\n".join(lines))


def machine() -> dict[str, Any]:
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        model = found.group(1).strip() if found else model
    versions = {}
    for package in ("numpy", "numba", "llvmlite", "pandas", "vectorbt", "backtesting"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    memory = "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        found = re.search(r"^MemTotal:\s+(\d+) kB", meminfo.read_text(), re.M)
        memory = f"{int(found.group(1)) / 1024**2:.1f} GB" if found else memory
    return {"cpu": model, "cores": os.cpu_count(), "memory": memory,
            "python": platform.python_version(), "platform": platform.platform(), **versions}


# --- the two runs ------------------------------------------------------------------------------


def plan(quick: bool, threads_all: int, vectorbt_full: bool) -> list[Case]:
    if quick:
        return [Case("engine", 30_000, "100"), Case("loop", 30_000, "100"),
                Case("vectorbt", 30_000, "100")]
    cases = []
    for bars in (30_000, FULL_BARS):
        for grid in ("100", "1000"):
            for peer in ("engine", "loop"):
                cases.append(Case(peer, bars, grid, 1))
                if threads_all > 1:
                    cases.append(Case(peer, bars, grid, threads_all))
            chunks = None if vectorbt_full or bars < FULL_BARS or grid == "100" else 1
            cases.append(Case("vectorbt", bars, grid, 1, chunks))
            cases.append(Case("backtesting", bars, grid, 1))
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 thread, 30,000 bars, 100 pairs; ours, the loop and vectorbt")
    parser.add_argument("--json", metavar="PATH", type=Path, help="write the figures here")
    parser.add_argument("--vectorbt-full", action="store_true",
                        help="run vectorbt's 1M x 1,000 grid in full (10 chunks, ~10 min) "
                             "instead of extrapolating from its first chunk")
    parser.add_argument("--wait-quiet", metavar="SECONDS", type=float, default=0.0,
                        help="before each case, wait up to SECONDS for other processes to use "
                             "under 0.25 cores (a shared machine)")
    parser.add_argument("--retries", type=int, default=2,
                        help="measure a short case again (up to this many times) while other "
                             f"processes use over {NOISY_CORES} cores; the least disturbed is kept")
    parser.add_argument("--cold-jit", action="store_true",
                        help="use a fresh numba cache, so warm-up includes cold compiles")
    parser.add_argument("--one", metavar="CASE", help=argparse.SUPPRESS)
    parser.add_argument("--ga", nargs=2, type=int, metavar=("BARS", "THREADS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=FULL_REP_BUDGET_S, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        child_main(args.one, args.budget)
        return 0
    if args.ga:
        print(json.dumps(ga_throughput(*args.ga)))
        return 0

    threads_all = os.cpu_count() or 1
    info = machine()
    print("Engine benchmark: SMA crossover, fee 0.1 %/side, next-open fills, all-in "
          "(shared/reference/backtest_peers.md)")
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory']} RAM; "
          f"Python {info['python']}, numpy {info['numpy']}, numba {info['numba']}, "
          f"pandas {info['pandas']}, vectorbt {info['vectorbt']}, "
          f"backtesting {info['backtesting']}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env["TQDM_DISABLE"] = "1"  # backtesting.py's progress bars
    cache = None
    if args.cold_jit:
        cache = tempfile.TemporaryDirectory(prefix="bench-numba-")
        env["NUMBA_CACHE_DIR"] = cache.name
    budget = QUICK_REP_BUDGET_S if args.quick else FULL_REP_BUDGET_S
    started = time.perf_counter()
    results = []
    for case in plan(args.quick, threads_all, args.vectorbt_full):
        print(f"  {case.peer:<11} {case.bars:>9,} bars × {case.grid:>4} combos, "
              f"{case.threads} thread(s); load {load_average()} … ", end="", flush=True)
        m = measure_case(case, budget, env, wait_quiet_s=args.wait_quiet, retries=args.retries)
        results.append(m)
        print(m.skipped.splitlines()[0] if m.skipped else
              f"{_duration(m.seconds)}, {_si(m.rate)} candle-evals/s "
              f"(other processes: {m.foreign_cpu:.2f} cores)")
    print(f"total wall time {_duration(time.perf_counter() - started)}")
    ratios = report(results, threads_all)
    ga = [] if args.quick else measure_ga(threads_all, env, args.wait_quiet)
    if ga:
        print_ga(ga)
    if cache is not None:
        cache.cleanup()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(
            {"mode": "quick" if args.quick else "full", "machine": info,
             "results": [dict(asdict(m), rate=m.rate) for m in results],
             "ratios": ratios, "ga": ga}, indent=1))
        print(f"figures written to {args.json}")
    if args.quick:
        engine, loop, vbt = (_find(results, p, 30_000, "100") for p in ("engine", "loop",
                                                                        "vectorbt"))
        versus_vbt = _ratio(engine.rate, vbt.rate) if engine and vbt else "n/a"
        versus_loop = _ratio(engine.rate, loop.rate) if engine and loop else "n/a"
        print(f"engine_vs_vectorbt={versus_vbt} engine_vs_loop={versus_loop}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
