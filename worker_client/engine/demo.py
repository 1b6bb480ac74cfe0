"""A local strategy search on synthetic 5-minute candles: ``python -m worker_client.engine.demo``.

What a campaign does across volunteers, on one machine: islands evolve in epochs, the best of
each island migrate along a ring, and the winners are judged on out-of-sample bars the search
never saw. The portal runs the same engine, spread over hosts.
"""

from __future__ import annotations

import argparse
import time

import numba

from . import backtest, synthetic_ohlcv
from .ga import GASettings, ScoredGenome, run_epoch
from .space import SearchSpace


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=60_000, help="5-minute bars (default 60,000)")
    parser.add_argument("--islands", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)

    data = synthetic_ohlcv(args.bars, seed=args.seed)
    split = int(len(data) * 0.7)
    in_sample = data.slice(0, split)
    space = SearchSpace(directions=("long", "short"))
    settings = GASettings()
    print(f"Data: {len(data):,} synthetic 5-minute bars; in-sample {split:,}, "
          f"out-of-sample {len(data) - split:,} (never seen by the search)")
    print(f"Islands {args.islands} x epochs {args.epochs} x generations {args.generations}, "
          f"population {settings.population_size}, {numba.get_num_threads()} threads\n")

    populations: list[list] = [[] for _ in range(args.islands)]
    tried = 0
    best: dict[str, ScoredGenome] = {}
    started = time.perf_counter()
    for epoch in range(args.epochs):
        results = []
        for island in range(args.islands):
            seed = args.seed * 1_000_003 + epoch * 1_009 + island  # one stream per epoch
            result = run_epoch(in_sample, space, settings, seed, populations[island],
                               args.generations, threads=numba.get_num_threads())
            results.append(result)
            tried += result.evaluated
            for scored in result.top:
                best.setdefault(scored.genome.hash, scored)
            print(f"epoch {epoch + 1} island {island + 1}: best fitness "
                  f"{result.top[0].fitness:7.3f}, {result.evaluated} strategies, "
                  f"digest {result.digest[:12]}")
        # Ring migration: each island keeps its population and takes its neighbour's best two.
        for island, result in enumerate(results):
            migrants = [t.genome for t in results[island - 1].top[:2]]
            own = [g for g in result.population if g not in migrants]
            populations[island] = migrants + own[: settings.population_size - len(migrants)]
    elapsed = time.perf_counter() - started
    print(f"\n{tried:,} strategies tried in {elapsed:.1f} s "
          f"({tried * split / elapsed / 1e6:,.0f} M candle-evaluations/s)\n")

    ranked = sorted(best.values(), key=lambda s: (-s.fitness, s.genome.hash))[:5]
    print("Best strategies: in-sample vs out-of-sample (Sharpe, return, max drawdown, trades)")
    for scored in ranked:
        oos = backtest(data, scored.genome, costs=settings.costs, start=split).metrics
        ins = scored.metrics
        print(f"- {scored.genome.describe()}")
        print(f"    in-sample  Sharpe {ins.sharpe:6.2f}  return {ins.total_return:7.2%}  "
              f"drawdown {ins.max_drawdown:6.2%}  trades {ins.n_trades}")
        print(f"    out-sample Sharpe {oos.sharpe:6.2f}  return {oos.total_return:7.2%}  "
              f"drawdown {oos.max_drawdown:6.2%}  trades {oos.n_trades}")
    print("\nThe data is a driftless random walk: out-of-sample results near zero are the honest"
          "\nanswer, and the gap to in-sample is what overfitting looks like.")


if __name__ == "__main__":
    main()
