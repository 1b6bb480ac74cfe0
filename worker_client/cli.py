"""``strategy-worker``: attach this computer to a Strategy@Home portal and run its tasks.

``main`` only parses arguments and calls one use case from :mod:`worker_client.runner`. Errors
the client expects (:class:`~worker_client.exceptions.WorkerError`) print one line and exit
non-zero; ``--debug`` adds the traceback and debug logging.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence

from . import EARLY_STOPS, __version__
from .exceptions import (
    AuthError,
    ClientTooOld,
    ConfigError,
    ServerUnavailable,
    StorageError,
    WorkerError,
)

ACCOUNT_KEY_ENV = "STRATEGY_WORKER_ACCOUNT_KEY"

EXIT_OK = 0
EXIT_ERROR = 1  # any other WorkerError
EXIT_USAGE = 2  # argparse's own code
EXIT_CONFIG = 3
EXIT_UNAVAILABLE = 4
EXIT_AUTH = 5
EXIT_TOO_OLD = 6
EXIT_STORAGE = 7
EXIT_INTERRUPTED = 130


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="strategy-worker",
        description="Lend this computer to a Strategy@Home portal: it backtests and evolves "
                    "trading strategies and reports them for credit.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="debug logging, and tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    attach = commands.add_parser(
        "attach", help="register this computer under your account",
        description="Register this computer with the portal. The account key is used once and "
                    "not stored; the host token the portal returns is saved in the config dir.")
    attach.add_argument("--server", required=True, help="the portal's URL, e.g. "
                                                         "https://strategy.example.org")
    attach.add_argument("--account-key", default=os.environ.get(ACCOUNT_KEY_ENV),
                        help=f"your account key, from the portal's account page (or set "
                             f"{ACCOUNT_KEY_ENV})")
    attach.add_argument("--name", help="this computer's name on the portal (default: hostname)")

    run = commands.add_parser(
        "run", help="ask for tasks, run them and report, until stopped",
        description="Run tasks until Ctrl-C / SIGTERM (each task checkpoints and the worker "
                    "exits within seconds), or until a stop option below is met.")
    run.add_argument("--cpus", type=_positive_int, metavar="N",
                     help="tasks to run at once, one process each (default: all cores but one)")
    run.add_argument("--buffer-hours", type=_non_negative_float, default=0.1, metavar="H",
                     help="work to keep at hand per core, in hours (default 0.1)")
    run.add_argument("--threads", type=_positive_int, default=1,
                     help="CPU threads one task may use (default 1)")
    run.add_argument("--checkpoint-interval", type=_non_negative_float, default=5.0,
                     metavar="SECONDS", help="seconds of work between checkpoints (default 5)")
    run.add_argument("--cache-mb", type=_positive_int, default=2048, metavar="MB",
                     help="size limit of the data set cache (default 2048)")
    run.add_argument("--max-tasks", type=_positive_int, metavar="N",
                     help="stop after N tasks have run and their results were acknowledged")
    run.add_argument("--exit-when-idle", type=_non_negative_float, metavar="SECONDS",
                     help="stop after SECONDS without a task (no work, or portal unreachable)")
    run.add_argument("--plain", action="store_true",
                     help="log lines instead of the live display (the default when the output "
                          "is not a terminal)")

    status = commands.add_parser("status", help="tasks, results waiting, credit")
    status.add_argument("--offline", action="store_true", help="do not ask the portal")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    bench = commands.add_parser("benchmark",
                                help="measure candle-evaluations per second and report it")
    bench.add_argument("--seconds", type=_non_negative_float, default=10.0,
                       help="how long to measure (default 10)")
    bench.add_argument("--no-report", action="store_true", help="do not tell the portal")

    detach = commands.add_parser(
        "detach", help="leave the portal: report results, give back tasks, forget the token")
    detach.add_argument("--force", action="store_true",
                        help="forget the host here even if the portal cannot be told")

    replay = commands.add_parser(
        "replay", help="backtest a strategy from the portal here and list its trades",
        description="Fetch a strategy's genome and its in-sample data set from the portal and "
                    "backtest it with this client's engine: the trades the portal shows.")
    replay.add_argument("--strategy", type=_positive_int, required=True, metavar="ID")
    replay.add_argument("--server", help="the portal's URL (default: the attached one)")
    replay.add_argument("--csv", metavar="FILE", help="also write the trades to FILE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        # Until the runner installs its own handler: see worker_client.EARLY_STOPS.
        signal.signal(signal.SIGTERM, lambda signum, frame: EARLY_STOPS.append(signum))
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S", stream=sys.stderr)
    if not args.debug:
        logging.getLogger("urllib3").setLevel(logging.WARNING)
        logging.getLogger("numba").setLevel(logging.WARNING)
    from . import commands  # after parsing: --help stays fast

    try:
        return commands.dispatch(args, parser)
    except KeyboardInterrupt:
        print("strategy-worker: aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except WorkerError as exc:
        if args.debug:
            traceback.print_exc()
        hint = ""
        if isinstance(exc, AuthError) and not isinstance(exc, ClientTooOld):
            hint = ("; check the account key on your account page" if args.command == "attach"
                    else "; attach this computer again: strategy-worker attach --server URL "
                         "--account-key KEY")
        print(f"strategy-worker: error: {exc}{hint}", file=sys.stderr)
        return _exit_code(exc)


def _exit_code(exc: WorkerError) -> int:
    for kind, code in ((ClientTooOld, EXIT_TOO_OLD), (AuthError, EXIT_AUTH),
                       (StorageError, EXIT_STORAGE),
                       (ServerUnavailable, EXIT_UNAVAILABLE), (ConfigError, EXIT_CONFIG)):
        if isinstance(exc, kind):
            return code
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
