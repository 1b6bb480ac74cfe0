"""The worker's terminal display: a live table on a terminal, a few log lines everywhere else.

The runner builds a :class:`WorkerView` snapshot about once a second and hands it to
``display.update(view)``. Rendering is a pure function of the snapshot (:func:`render`), so the
clock it counts deadlines from is ``view.now``, never the machine's.

* :class:`LiveDisplay` redraws the snapshot in place with ``rich.live.Live``. While it is up,
  log lines written to the terminal are printed above it instead of through it.
* :class:`PlainLog` is for output that is not a terminal (a file, a pipe, a service manager's
  journal): it logs only what changed and is worth a line, never one line per second.
* :func:`make_display` picks one of the two.

Only rich and the standard library: it runs alike on Windows, macOS and Linux.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import IO, Protocol, Self

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.measure import Measurement
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

log = logging.getLogger(__name__)

# A task's states, as the runner reports them: queued, then starting (its process is up, no
# progress yet: loading the data set), running with pauses to checkpoint, then finished (its
# result waits on disk until the portal acknowledges it).
QUEUED = "queued"
STARTING = "starting"
RUNNING = "running"
CHECKPOINTING = "checkpointing"
FINISHED = "finished"

STATE_STYLES = {
    QUEUED: "dim",
    STARTING: "cyan",
    RUNNING: "bold green",
    CHECKPOINTING: "blue",
    FINISHED: "green",
}
# A checkpoint is a pause inside a running task, not a change worth a log line of its own.
_BUSY = frozenset({STARTING, RUNNING, CHECKPOINTING})

NO_TASK_YET = "no task yet — asking the portal for work…"
DEADLINE_SOON = 3600.0  # seconds: a deadline closer than this is shown in red
BAR_WIDTH = 16  # character cells of a task's progress bar
WIDE_TABLE = 110  # columns from which the table shows every figure
PROGRESS_STEP = 10  # per cent of a task between two PlainLog lines
EMPTY = "—"


@dataclass(frozen=True)
class TaskView:
    """One task of the worker, as the display shows it."""

    result_id: int
    name: str  # e.g. "demo-btc#i2e3" (the work unit's name)
    state: str  # QUEUED, STARTING, RUNNING, CHECKPOINTING or FINISHED
    fraction_done: float  # 0..1
    generation: int
    generations: int
    speed: float  # candle-evaluations per second of this task (0 if unknown)
    eta_seconds: float | None  # None if unknown
    deadline: datetime  # aware UTC
    credit: float  # credit the task earns if validated


@dataclass(frozen=True)
class WorkerView:
    """A snapshot of the whole worker, built by the runner about once a second."""

    server: str
    host_name: str
    slots: int  # processes running tasks at most
    tasks: tuple[TaskView, ...]
    results_waiting: int  # finished, not yet acknowledged by the portal
    results_accepted: int  # acknowledged this session
    credit_pending: float  # credit of accepted results not yet validated (claimed)
    credit_granted: float | None  # the host's total credit from the portal, None if unknown
    speed: float  # the host's measured candle-evaluations per second per core
    message: str  # the latest notable event, e.g. "portal unreachable; retrying in 40 s"
    now: datetime  # aware UTC, for deadline countdowns


class Display(Protocol):
    """What the runner needs of a display: a context manager that takes snapshots."""

    def __enter__(self) -> Self: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def update(self, view: WorkerView) -> None: ...


# --- formatting ----------------------------------------------------------------------------------

_PREFIXES = ("k", "M", "G", "T", "P")


def _si(x: float) -> str:
    """``182 M``, ``41.2 M``, ``4.3 k``, ``950``: three significant figures at most."""
    if not math.isfinite(x) or x < 0:
        return "?"
    if round(x) < 1000:
        return f"{x:.0f}"
    scaled = x
    for prefix in _PREFIXES:
        scaled /= 1000.0
        # Decide the decimals on the rounded figure: 99.96 k is "100 k", 999.7 k is "1.0 M".
        text = f"{scaled:.1f}" if round(scaled, 1) < 100 else f"{scaled:.0f}"
        if float(text) < 1000 or prefix == _PREFIXES[-1]:
            return f"{text} {prefix}"
    raise AssertionError("unreachable")


def format_rate(per_second: float) -> str:
    """A rate per second, short: ``"182 M/s"``, ``"41.2 M/s"``, ``"4.3 k/s"``, ``"950/s"``."""
    return f"{_si(per_second)}/s"


def format_duration(seconds: float) -> str:
    """A duration in its two largest units: ``"45s"``, ``"3m 05s"``, ``"2h 10m"``, ``"3d 4h"``.

    Truncated, not rounded (a countdown never shows more time than is left); a negative
    duration keeps its sign, and one that is not finite is shown as ``"—"``.
    """
    if not math.isfinite(seconds):
        return EMPTY
    if seconds < 0:
        return "-" + format_duration(-seconds)
    whole = int(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_credit(credit: float) -> str:
    """``"3.50"`` below 100, ``"1,234"`` from there on."""
    return f"{credit:.2f}" if abs(credit) < 100 else f"{credit:,.0f}"


def _percent(fraction: float) -> str:
    return f"{100 * _clamp(fraction):.1f}%"


def _clamp(fraction: float) -> float:
    return min(max(fraction, 0.0), 1.0) if math.isfinite(fraction) else 0.0


def _speed_per_core(speed: float) -> str:
    if speed <= 0:
        return "speed not measured yet"
    return f"{_si(speed)} candle-evals/s/core"


def _deadline(task: TaskView, now: datetime) -> Text:
    """``due in 2d 4h``; red under an hour, ``overdue 3h 05m`` in bold red once past."""
    left = (task.deadline - now).total_seconds()
    if left < 0:
        return Text(f"overdue {format_duration(-left)}", style="bold red")
    return Text(f"due in {format_duration(left)}", style="red" if left < DEADLINE_SOON else "")


# --- rendering -----------------------------------------------------------------------------------


class _Bar:
    """A fixed-width text bar and its percentage: readable without colour, unlike rich's own
    ProgressBar (which leaves the part to do blank then)."""

    def __init__(self, fraction: float, *, style: str, width: int = BAR_WIDTH) -> None:
        self.fraction = _clamp(fraction)
        self.style = style or "green"
        self.width = width

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        filled = int(self.fraction * self.width + 1e-9)
        yield Text.assemble(("█" * filled, self.style), ("░" * (self.width - filled), "dim"),
                            f" {_percent(self.fraction):>6}", end="")

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        width = self.width + 7  # " 100.0%"
        return Measurement(width, width)


def _header(view: WorkerView) -> Text:
    busy = sum(task.state in _BUSY for task in view.tasks)
    slots = f"{view.slots} slot{'s' if view.slots != 1 else ''}"
    return Text.assemble(
        ("Strategy@Home worker ", "bold"),
        (view.host_name, "bold cyan"), " → ", (view.server, "cyan"),
        f" · {slots} ({busy} busy) · ", (_speed_per_core(view.speed), "bold"),
    )


def _task_table(view: WorkerView, *, wide: bool) -> Table:
    """One row per task. Narrower than WIDE_TABLE (an 80-column terminal), the speed and credit
    columns go and the bar shortens, so that the task's name keeps some room."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    # The name is the only column that may shrink (it ends in "…" then); the figures never do.
    table.add_column("Task", overflow="ellipsis", max_width=32)
    table.add_column("State", no_wrap=True)
    table.add_column("Progress", no_wrap=True)
    table.add_column("Gen", no_wrap=True)
    if wide:
        table.add_column("Speed", justify="right", no_wrap=True)
    table.add_column("ETA", justify="right", no_wrap=True)
    table.add_column("Deadline", no_wrap=True)
    if wide:
        table.add_column("Credit", justify="right", no_wrap=True)
    for task in view.tasks:
        style = STATE_STYLES.get(task.state, "")
        speed = format_rate(task.speed) if task.speed > 0 else EMPTY
        eta = EMPTY if task.eta_seconds is None else format_duration(task.eta_seconds)
        cells: list[RenderableType] = [
            task.name,
            Text(task.state, style=style),
            _Bar(task.fraction_done, style=style, width=BAR_WIDTH if wide else BAR_WIDTH // 2),
            f"gen {task.generation}/{task.generations}",
            *([speed] if wide else []),
            eta,
            _deadline(task, view.now),
            *([format_credit(task.credit)] if wide else []),
        ]
        table.add_row(*cells)
    return table


def _footer(view: WorkerView) -> Text:
    footer = Text.assemble(
        "results: ", (str(view.results_waiting), "bold"), " waiting to report, ",
        (str(view.results_accepted), "bold"), " accepted this session · credit: ",
        (format_credit(view.credit_pending), "bold"), " pending, ",
    )
    if view.credit_granted is None:
        footer.append("total not known yet")
    else:
        footer.append_text(Text.assemble((format_credit(view.credit_granted), "bold"),
                                         " granted"))
    if view.message:
        footer.append("\n")
        footer.append(view.message, style="yellow")
    return footer


class _Screen:
    """The snapshot laid out for the width it is given (known only when rich renders it)."""

    def __init__(self, view: WorkerView) -> None:
        self.view = view

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        view = self.view
        parts: list[RenderableType] = [_header(view), Text("")]
        if view.tasks:
            parts.append(_task_table(view, wide=options.max_width >= WIDE_TABLE))
        else:
            parts.append(Text(NO_TASK_YET, style="italic dim"))
        parts += [Text(""), _footer(view)]
        if not options.ascii_only:
            yield Group(*parts)
            return
        # A console whose encoding is not UTF (an old Windows code page): rich swaps its box
        # characters for ASCII itself; ours, and whatever a task's name or a message holds, would
        # stop the worker with a UnicodeEncodeError. One cell for one, so columns stay aligned.
        for segment in console.render(Group(*parts), options):
            text = segment.text.translate(_ASCII)
            if not segment.control:
                text = text.encode(options.encoding, "replace").decode(options.encoding)
            yield Segment(text, segment.style, segment.control)


_ASCII = str.maketrans({"→": ">", "·": "|", "—": "-", "…": "~", "█": "#", "░": "-"})


def render(view: WorkerView) -> RenderableType:
    """The whole display for one snapshot: header, one table row per task, footer."""
    return _Screen(view)


# --- displays ------------------------------------------------------------------------------------


def _stderr_console() -> Console:
    return Console(stderr=True)


class LiveDisplay:
    """The snapshot, redrawn in place on a terminal about twice a second.

    While it is up, ``sys.stdout``/``sys.stderr`` go through rich (so a ``print`` lands above the
    table), and so do the logging handlers that wrote to them when it started (``basicConfig``
    keeps the stream it was given, which a redirect of ``sys.stderr`` alone would not reach).
    """

    def __init__(self, console: Console | None = None, *, refresh_per_second: float = 2) -> None:
        self.console = console if console is not None else _stderr_console()
        self._live = Live(Text("starting...", style="dim"), console=self.console,
                          refresh_per_second=refresh_per_second, transient=False,
                          redirect_stdout=True, redirect_stderr=True)
        self._moved: list[tuple[logging.StreamHandler[IO[str]], IO[str]]] = []

    def __enter__(self) -> Self:
        before = {id(sys.stdout): "stdout", id(sys.stderr): "stderr"}
        self._live.start()
        for handler in _stream_handlers():
            which = before.get(id(handler.stream))
            if which is not None:
                self._moved.append((handler, handler.stream))
                handler.setStream(getattr(sys, which))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._live.stop()
        finally:
            while self._moved:
                handler, stream = self._moved.pop()
                handler.setStream(stream)

    def update(self, view: WorkerView) -> None:
        # The Live's own thread redraws; re-rendering here too would only double the work.
        self._live.update(render(view), refresh=False)


def _stream_handlers() -> Iterator[logging.StreamHandler[IO[str]]]:
    """Handlers writing to a stream (not a file) on the root and the worker's loggers."""
    seen: set[int] = set()
    for logger in (logging.getLogger(), logging.getLogger("worker_client")):
        for handler in logger.handlers:
            if (isinstance(handler, logging.StreamHandler)
                    and not isinstance(handler, logging.FileHandler)
                    and id(handler) not in seen):
                seen.add(id(handler))
                yield handler


@dataclass
class _Seen:
    state: str
    step: int  # the last PROGRESS_STEP multiple of per cent logged


class PlainLog:
    """Log lines for output that is not a terminal: only changes worth a line.

    A line when a task appears, changes state (a checkpoint inside a running task does not
    count) or finishes; one each time a task passes a further ``PROGRESS_STEP`` per cent; one for
    each new message; one when the count of accepted results changes. Identical snapshots, and
    the clock moving on, log nothing.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger if logger is not None else log
        self._header: tuple[str, str, int] | None = None
        self._tasks: dict[int, _Seen] = {}
        self._message = ""
        self._accepted: int | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def update(self, view: WorkerView) -> None:
        header = (view.server, view.host_name, view.slots)
        if header != self._header:
            self._header = header
            self.log.info("worker %s on %s: %d slot(s), %s", view.host_name, view.server,
                          view.slots, _speed_per_core(view.speed))
        for task in view.tasks:
            self._task(task, view.now)
        current = {task.result_id for task in view.tasks}
        for gone in self._tasks.keys() - current:
            del self._tasks[gone]  # reported or dropped: the runner logs which
        if view.message and view.message != self._message:
            self.log.info("%s", view.message)
        self._message = view.message
        if self._accepted is not None and view.results_accepted != self._accepted:
            granted = ("unknown" if view.credit_granted is None
                       else format_credit(view.credit_granted))
            self.log.info("results: %d accepted this session, %d waiting to report; credit "
                          "%s pending, %s granted", view.results_accepted, view.results_waiting,
                          format_credit(view.credit_pending), granted)
        self._accepted = view.results_accepted

    def _task(self, task: TaskView, now: datetime) -> None:
        step = _progress_step(task.fraction_done)
        seen = self._tasks.get(task.result_id)
        label = f"task {task.result_id} ({task.name})"
        if seen is None:
            self._tasks[task.result_id] = _Seen(task.state, step)
            self.log.info("%s %s: %s, gen %d/%d, %s, %s credit", label, task.state,
                          _percent(task.fraction_done), task.generation, task.generations,
                          _deadline(task, now).plain, format_credit(task.credit))
            return
        if task.state != seen.state:
            quiet = seen.state in _BUSY and task.state in _BUSY
            previous, seen.state = seen.state, task.state
            if not quiet:
                if task.state == FINISHED:
                    seen.step = step
                    self.log.info("%s finished", label)
                else:
                    self.log.info("%s %s (was %s)", label, task.state, previous)
        if step > seen.step and task.state != FINISHED:
            seen.step = step
            eta = "" if task.eta_seconds is None else f", ETA {format_duration(task.eta_seconds)}"
            speed = f", {format_rate(task.speed)}" if task.speed > 0 else ""
            self.log.info("%s %d%% done (gen %d/%d%s%s)", label, step, task.generation,
                          task.generations, speed, eta)


def _progress_step(fraction: float) -> int:
    """The largest multiple of PROGRESS_STEP per cent reached. A fraction a rounding error short
    of a step (0.7 - 0.4 is 0.29999999999999993) counts as reaching it."""
    percent = 100 * _clamp(fraction)
    return int(percent / PROGRESS_STEP + 1e-9) * PROGRESS_STEP


def make_display(*, console: Console | None = None,
                 plain: bool | None = None) -> LiveDisplay | PlainLog:
    """A LiveDisplay on a terminal, a PlainLog anywhere else or when ``plain`` is True.

    ``plain=False`` means the same as None: a live table cannot be drawn into a file or a pipe.
    """
    console = console if console is not None else _stderr_console()
    if plain or not console.is_terminal or console.is_dumb_terminal:
        return PlainLog()
    return LiveDisplay(console)
