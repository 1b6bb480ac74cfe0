"""Run the server daemons in this process, BOINC-style: pass after pass, sleeping when idle.

``--once`` runs rounds (transitioner, validator, assimilator, file deleter) until a round finds
nothing to do, then exits: handy for demos, scripts and tests. ``--loop`` keeps going, sleeping
``--sleep`` seconds after an idle round, until interrupted (or ``--max-seconds`` have passed).
"""

import time

from django.core.management.base import BaseCommand, CommandError

from apps.workunits.assimilator import assimilate_pass
from apps.workunits.file_deleter import file_delete_pass
from apps.workunits.transitioner import transition_pass
from apps.workunits.validator import validate_pass

MAX_ROUNDS_ONCE = 1000  # --once stops even if some daemon keeps finding work


def run_round() -> dict[str, int]:
    """One pass of each daemon, in the order work flows through them."""
    return {"transitioner": transition_pass(), "validator": validate_pass(),
            "assimilator": assimilate_pass(), "file deleter": file_delete_pass()}


class Command(BaseCommand):
    help = "Run the transitioner, validator, assimilator and file deleter in this process."

    def add_arguments(self, parser):
        mode = parser.add_mutually_exclusive_group(required=True)
        mode.add_argument("--once", action="store_true",
                          help="run rounds until one finds no work, then exit")
        mode.add_argument("--loop", action="store_true", help="run until interrupted")
        parser.add_argument("--sleep", type=float, default=5.0,
                            help="seconds to sleep after an idle round (--loop; default 5)")
        parser.add_argument("--max-seconds", type=float, default=None,
                            help="stop looping after this long (--loop)")

    def handle(self, *args, once=False, loop=False, sleep=5.0, max_seconds=None, **options):
        if sleep < 0:
            raise CommandError("--sleep must be >= 0")
        started = time.monotonic()
        totals: dict[str, int] = {}
        rounds = 0
        try:
            while True:
                done = run_round()
                rounds += 1
                for name, n in done.items():
                    totals[name] = totals.get(name, 0) + n
                busy = any(done.values())
                if busy and options["verbosity"] >= 2:
                    self.stdout.write(", ".join(f"{k} {v}" for k, v in done.items() if v))
                if once and (not busy or rounds >= MAX_ROUNDS_ONCE):
                    break
                if max_seconds is not None and time.monotonic() - started >= max_seconds:
                    break
                if loop and not busy:
                    time.sleep(sleep)
        except KeyboardInterrupt:
            self.stdout.write("interrupted")
        summary = ", ".join(f"{name} {n}" for name, n in totals.items())
        self.stdout.write(f"{rounds} round(s): {summary}")
