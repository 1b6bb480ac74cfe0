"""What each CLI command prints: one use case call (``host``, ``runner``) and its output."""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import UTC, datetime
from pathlib import Path

from . import host, runner
from .cli import ACCOUNT_KEY_ENV
from .display import format_duration, format_rate
from .protocol import parse_deadline


def dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    command = args.command
    if command == "attach":
        if not args.account_key:
            parser.error(f"attach needs --account-key (or {ACCOUNT_KEY_ENV})")
        config = host.attach(server=args.server, account_key=args.account_key, name=args.name)
        print(f"Attached to {config.server} as host {config.host_id} ({config.name}). "
              "Start computing with: strategy-worker run")
    elif command == "run":
        summary = runner.run(options=runner.RunOptions(
            cpus=args.cpus, buffer_hours=args.buffer_hours, threads=args.threads,
            checkpoint_interval=args.checkpoint_interval, cache_limit_mb=args.cache_mb,
            max_tasks=args.max_tasks, exit_when_idle=args.exit_when_idle,
            display=False if args.plain else None))
        failed = f" ({summary.tasks_failed} failed)" if summary.tasks_failed else ""
        rejected = (f", {summary.results_rejected} refused" if summary.results_rejected
                    else "")
        why = " on a signal" if summary.stopped_by_signal else ""
        print(f"Stopped{why}: {summary.tasks_run} task(s) run{failed}, "
              f"{summary.results_accepted} result(s) accepted by the portal{rejected}.")
    elif command == "status":
        print_status(host.status(offline=args.offline), as_json=args.json)
    elif command == "benchmark":
        print(f"Measuring for {args.seconds:g} s on one core…", file=sys.stderr)
        result = host.benchmark(seconds=args.seconds, report=not args.no_report)
        print(f"{format_rate(result.speed)} candle-evaluations per core "
              f"({result.evaluations:,} in {result.seconds:.1f} s)"
              + ("; reported to the portal" if result.reported else ""))
    elif command == "detach":
        done = host.detach(force=args.force)
        told = "the portal retired this host" if done.portal_told else \
            "the portal was NOT told (its tasks here will time out there)"
        print(f"Detached from {done.server}: {done.reported} result(s) reported, "
              f"{done.dropped_tasks} unfinished task(s) given back; {told}.")
    elif command == "replay":
        print_replay(host.replay(strategy_id=args.strategy, server=args.server), args.csv)
    return 0


def print_status(status: host.Status, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"server": status.config.server, "host_id": status.config.host_id,
                          "running": status.running, "tasks": status.tasks,
                          "results_waiting": status.results_waiting, "speed": status.speed,
                          "portal": status.portal, "portal_error": status.portal_error},
                         indent=1, sort_keys=True, default=str))
        return
    c = status.config
    print(f"Attached to {c.server} as host {c.host_id} ({c.name}); "
          f"{'running' if status.running else 'not running'}.")
    if status.speed:
        print(f"Speed: {format_rate(status.speed)} candle-evaluations per core.")
    now = datetime.now(UTC)
    if status.tasks:
        print(f"Tasks ({len(status.tasks)}):")
        for t in status.tasks:
            due = parse_deadline(t.get("deadline"))
            left = "" if due is None else (
                f"due in {format_duration((due - now).total_seconds())}" if due > now
                else "overdue")
            gen = f"gen {t.get('generation', 0)}/{t.get('generations', 0)}" \
                if t.get("generations") else ""
            print(f"  {t['result_id']:>8}  {t['name'][:30]:<30} {t['state']:<13} "
                  f"{100 * float(t.get('fraction_done') or 0):5.1f} %  {gen:<11} {left}")
    else:
        print("Tasks: none held.")
    print(f"Results waiting to upload: {status.results_waiting}")
    if status.portal is not None:
        p = status.portal
        print(f"Credit: {p.get('total_credit', 0):,.2f} total, {p.get('rac', 0):,.2f} recent "
              f"average; results valid {p.get('n_valid', 0)}, invalid {p.get('n_invalid', 0)}, "
              f"errors {p.get('n_errors', 0)}, in progress {p.get('in_progress', 0)}, "
              f"pending validation {p.get('pending', 0)}")
    else:
        print(f"Credit: unknown ({status.portal_error or 'not asked'})")


def print_replay(replay: host.Replay, csv: str | None) -> None:
    s, m = replay.strategy, replay.metrics
    print(f"Strategy {s.get('strategy_id')} ({s.get('campaign', '')}): {replay.description}")
    print(f"In-sample bars [{s['start']}, {s['stop']}) of data set "
          f"{s['dataset_sha256'][:12]}…: {int(m.n_trades)} trades, total return "
          f"{100 * m.total_return:.2f} %, Sharpe {m.sharpe:.3f}, max drawdown "
          f"{100 * m.max_drawdown:.2f} %")
    expected = s.get("in_sample") or {}
    if expected:
        same = expected.get("trades") == int(m.n_trades) and _close(expected.get("sharpe"),
                                                                     m.sharpe)
        print(f"The portal's in-sample figures: {expected.get('trades')} trades, Sharpe "
              f"{expected.get('sharpe')}: {'the same' if same else 'DIFFERENT'}")
    ts = replay.timestamps
    for t in replay.trades[:50]:
        print(f"  {host.bar_time(ts[t['entry_bar']])} → {host.bar_time(ts[t['exit_bar']])}  "
              f"{'long ' if t['side'] > 0 else 'short'} {t['entry_price']:>12.2f} → "
              f"{t['exit_price']:>12.2f}  pnl {t['pnl']:>12.2f}  {t['exit_reason']}")
    if len(replay.trades) > 50:
        print(f"  … {len(replay.trades) - 50} more" + ("" if csv else " (--csv FILE for all)"))
    if csv:
        host.write_trades_csv(replay, Path(csv))
        print(f"Trades written to {csv}")


def _close(expected: object, value: float) -> bool:
    """The portal's figure, as JSON carried it (None for a figure that is not finite)."""
    if expected is None:
        return not math.isfinite(value)
    return isinstance(expected, int | float) and math.isclose(expected, value, rel_tol=1e-12,
                                                                abs_tol=1e-12)
