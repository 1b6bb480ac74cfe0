"""The worker's display: what a volunteer reads on a terminal, and in a log when there is none."""

from __future__ import annotations

import io
import logging
import re
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from worker_client.display import (
    NO_TASK_YET,
    LiveDisplay,
    PlainLog,
    TaskView,
    WorkerView,
    format_duration,
    format_rate,
    make_display,
    render,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
LOGGER = "worker_client"


def make_task(**changes) -> TaskView:
    task = TaskView(result_id=101, name="demo-btc#i2e3", state="running", fraction_done=0.4,
                    generation=12, generations=30, speed=41.23e6, eta_seconds=185.0,
                    deadline=NOW + timedelta(days=2, hours=4, minutes=3), credit=3.5)
    return replace(task, **changes)


THREE_TASKS = (
    make_task(),
    make_task(result_id=102, name="demo-eth#i7e1", state="checkpointing", fraction_done=0.933,
              generation=28, speed=39.87e6, eta_seconds=3_900.0,
              deadline=NOW + timedelta(minutes=35), credit=12.25),
    make_task(result_id=103, name="demo-sol#i1e9", state="queued", fraction_done=0.0,
              generation=0, speed=0.0, eta_seconds=None,
              deadline=NOW - timedelta(hours=3, minutes=10), credit=150.0),
)


def make_view(**changes) -> WorkerView:
    view = WorkerView(server="https://portal.example.org", host_name="ada-laptop", slots=2,
                      tasks=THREE_TASKS, results_waiting=1, results_accepted=5,
                      credit_pending=17.75, credit_granted=1234.5, speed=182e6,
                      message="no work: no_work (campaign paused)", now=NOW)
    return replace(view, **changes)


def record_console(width: int = 120, file: io.TextIOBase | None = None) -> Console:
    return Console(record=True, width=width, force_terminal=False,
                   file=file if file is not None else io.StringIO())


def rendered(view: WorkerView, *, width: int = 120, styles: bool = False) -> str:
    console = record_console(width)
    console.print(render(view))
    return console.export_text(styles=styles)


# --- formatting ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("rate", "text"), [
    (182e6, "182 M/s"),
    (41.23e6, "41.2 M/s"),
    (4_321, "4.3 k/s"),
    (950, "950/s"),
    (0, "0/s"),
    (99_960, "100 k/s"),  # rounds up into three figures, not "100.0 k/s"
    (999_960, "1.0 M/s"),  # and into the next prefix, not "1000 k/s"
    (2.5e9, "2.5 G/s"),
])
def test_format_rate(rate, text):
    assert format_rate(rate) == text


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"),
    (45, "45s"),
    (59.9, "59s"),  # truncated: a countdown never shows more time than is left
    (185, "3m 05s"),
    (3_600, "1h 00m"),
    (2 * 3_600 + 10 * 60 + 40, "2h 10m"),
    (3 * 86_400 + 4 * 3_600 + 59 * 60, "3d 4h"),
    (-90, "-1m 30s"),
    (float("inf"), "—"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


# --- render --------------------------------------------------------------------------------------

def test_header_shows_server_host_slots_and_speed():
    header = rendered(make_view()).splitlines()[0]
    assert "https://portal.example.org" in header
    assert "ada-laptop" in header
    assert "2 slots" in header
    assert "182 M candle-evals/s/core" in header


def test_each_task_has_a_row_with_its_figures():
    lines = rendered(make_view()).splitlines()
    row = next(line for line in lines if "demo-btc#i2e3" in line)
    for figure in ("running", "40.0%", "gen 12/30", "41.2 M/s", "3m 05s", "due in 2d 4h",
                   "3.50"):
        assert figure in row, figure
    row = next(line for line in lines if "demo-eth#i7e1" in line)
    for figure in ("checkpointing", "93.3%", "gen 28/30", "1h 05m", "due in 35m 00s", "12.25"):
        assert figure in row, figure
    row = next(line for line in lines if "demo-sol#i1e9" in line)
    for figure in ("queued", "0.0%", "gen 0/30", "overdue 3h 10m", "150"):
        assert figure in row, figure


def test_unknown_speed_and_eta_show_a_dash_not_a_zero():
    row = next(line for line in rendered(make_view()).splitlines() if "demo-sol" in line)
    assert "0/s" not in row
    assert row.count("—") == 2


def test_a_past_or_close_deadline_is_red_and_a_far_one_is_not():
    text = rendered(make_view(), styles=True)

    def style_before(fragment: str) -> str:
        match = re.search(r"(?:\x1b\[([0-9;]*)m)?" + re.escape(fragment), text)
        assert match is not None, fragment
        return match.group(1) or ""

    assert "31" in style_before("overdue 3h 10m").split(";")
    assert "31" in style_before("due in 35m 00s").split(";")
    assert "31" not in style_before("due in 2d 4h").split(";")


def test_footer_shows_results_credit_and_the_message():
    text = rendered(make_view())
    assert "1 waiting to report" in text
    assert "5 accepted this session" in text
    assert "17.75 pending" in text
    assert "1,234 granted" in text
    assert "no work: no_work (campaign paused)" in text


def test_no_task_yet():
    text = rendered(make_view(tasks=(), credit_granted=None, speed=0.0, message=""))
    assert NO_TASK_YET in text
    assert "Progress" not in text  # no empty table
    assert "total not known yet" in text
    assert "speed not measured yet" in text


def test_a_long_name_is_cut_and_the_figures_keep_their_room():
    long_name = "a-campaign-with-a-very-long-name-indeed-on-btc-usd#i12e345"
    text = rendered(make_view(tasks=(make_task(name=long_name),)))
    row = next(line for line in text.splitlines() if "a-campaign" in line)
    assert long_name not in row
    assert "…" in row
    assert "gen 12/30" in row
    assert "due in 2d 4h" in row
    assert max(len(line) for line in text.splitlines()) <= 120


def test_an_80_column_terminal_keeps_the_figures_that_matter():
    text = rendered(make_view(), width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    row = next(line for line in text.splitlines() if "running" in line)
    for figure in ("40.0%", "gen 12/30", "3m 05s", "due in 2d 4h"):
        assert figure in row, figure


def test_a_console_that_is_not_utf8_gets_ascii_and_does_not_crash():
    # An old Windows code page; "é" is in it, the arrow, the blocks and "✓" are not.
    file = io.TextIOWrapper(io.BytesIO(), encoding="cp1252")
    console = record_console(file=file)
    view = make_view(tasks=(make_task(name="démo-btc#i2e3"),), message="report sent ✓")
    console.print(render(view))
    text = console.export_text()
    assert "█" not in text
    assert "######----------  40.0%" in text
    assert "ada-laptop > https://portal.example.org" in text
    assert "démo-btc#i2e3" in text
    assert "report sent ?" in text


# --- PlainLog ------------------------------------------------------------------------------------

def lines_of(caplog) -> list[str]:
    lines = [record.getMessage() for record in caplog.records]
    caplog.clear()
    return lines


def test_plain_log_follows_a_task_from_start_to_finish(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    display = PlainLog()
    empty = make_view(tasks=(), message="", results_accepted=0)

    display.update(empty)
    assert lines_of(caplog) == [
        "worker ada-laptop on https://portal.example.org: 2 slot(s), 182 M candle-evals/s/core"]

    task = make_task(state="queued", fraction_done=0.0, generation=0)
    display.update(replace(empty, tasks=(task,)))
    (line,) = lines_of(caplog)
    assert line.startswith("task 101 (demo-btc#i2e3) queued: 0.0%, gen 0/30, due in 2d 4h")

    display.update(replace(empty, tasks=(replace(task, state="running", fraction_done=0.02),)))
    assert lines_of(caplog) == ["task 101 (demo-btc#i2e3) running (was queued)"]

    for fraction in (0.05, 0.09):
        display.update(replace(empty, tasks=(replace(task, state="running",
                                                     fraction_done=fraction),)))
    assert lines_of(caplog) == []

    display.update(replace(empty, tasks=(replace(task, state="running", fraction_done=0.1,
                                                 generation=3),)))
    assert lines_of(caplog) == [
        "task 101 (demo-btc#i2e3) 10% done (gen 3/30, 41.2 M/s, ETA 3m 05s)"]

    # A jump over several steps (a slow snapshot) is one line, at the step reached.
    display.update(replace(empty, tasks=(replace(task, state="running", fraction_done=0.3,
                                                 generation=9),)))
    assert lines_of(caplog) == [
        "task 101 (demo-btc#i2e3) 30% done (gen 9/30, 41.2 M/s, ETA 3m 05s)"]

    # A checkpoint is a pause inside running, not a state change worth two lines.
    for state in ("checkpointing", "running"):
        display.update(replace(empty, tasks=(replace(task, state=state, fraction_done=0.31),)))
    assert lines_of(caplog) == []

    display.update(replace(empty, tasks=(replace(task, state="finished", fraction_done=1.0),)))
    assert lines_of(caplog) == ["task 101 (demo-btc#i2e3) finished"]

    display.update(replace(empty, results_accepted=1, results_waiting=0))
    (line,) = lines_of(caplog)
    assert line.startswith("results: 1 accepted this session, 0 waiting to report")


def test_plain_log_is_silent_on_identical_snapshots(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    display = PlainLog()
    view = make_view()
    display.update(view)
    assert len(lines_of(caplog)) == 1 + 3 + 1  # header, three tasks, the message
    for second in range(1, 120):  # two minutes of a clock moving on and nothing else
        display.update(replace(view, now=NOW + timedelta(seconds=second)))
    assert lines_of(caplog) == []


def test_plain_log_logs_each_new_message_once(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    display = PlainLog()
    display.update(make_view(tasks=(), message=""))
    lines_of(caplog)
    for message in ("portal unreachable; retrying in 40 s",
                    "portal unreachable; retrying in 40 s",
                    "no work: no_work (campaign paused)"):
        display.update(make_view(tasks=(), message=message))
    assert lines_of(caplog) == ["portal unreachable; retrying in 40 s",
                                "no work: no_work (campaign paused)"]


def test_plain_log_picks_up_a_resumed_task_where_it_is(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    display = PlainLog()
    task = make_task(fraction_done=0.45)
    display.update(make_view(tasks=(task,), message=""))
    assert any("running: 45.0%" in line for line in lines_of(caplog))
    display.update(make_view(tasks=(replace(task, fraction_done=0.49),), message=""))
    assert lines_of(caplog) == []
    display.update(make_view(tasks=(replace(task, fraction_done=0.5),), message=""))
    assert [line for line in lines_of(caplog) if "50% done" in line]


def test_plain_log_counts_a_step_reached_up_to_a_rounding_error(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    display = PlainLog()
    display.update(make_view(tasks=(make_task(fraction_done=0.0),), message=""))
    lines_of(caplog)
    display.update(make_view(tasks=(make_task(fraction_done=0.7 - 0.4),), message=""))
    assert [line for line in lines_of(caplog) if "30% done" in line]


# --- make_display and LiveDisplay ----------------------------------------------------------------

def test_make_display_picks_plain_log_off_a_terminal():
    console = Console(file=io.StringIO(), force_terminal=False)
    assert isinstance(make_display(console=console), PlainLog)
    assert isinstance(make_display(console=console, plain=False), PlainLog)


def test_make_display_picks_the_live_table_on_a_terminal_unless_told_plain():
    console = Console(file=io.StringIO(), force_terminal=True)
    assert isinstance(make_display(console=console), LiveDisplay)
    assert isinstance(make_display(console=console, plain=True), PlainLog)


def test_both_displays_are_context_managers_that_take_snapshots(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    for force_terminal in (False, True):
        file = io.StringIO()
        console = Console(file=file, force_terminal=force_terminal, width=120)
        with make_display(console=console) as display:
            display.update(make_view())
        shown = file.getvalue() + caplog.text
        assert "demo-btc#i2e3" in shown


def test_live_display_leaves_the_last_snapshot_on_screen():
    file = io.StringIO()
    console = Console(file=file, force_terminal=True, width=120, color_system=None)
    with LiveDisplay(console) as display:
        display.update(make_view(tasks=()))
        display.update(make_view())
    text = file.getvalue()
    assert "gen 12/30" in text
    assert "overdue 3h 10m" in text


def test_live_display_prints_log_lines_above_the_table_and_then_gives_the_stream_back():
    file = io.StringIO()
    console = Console(file=file, force_terminal=True, width=120, color_system=None)
    # As logging.basicConfig(stream=sys.stderr) leaves it, before the display starts.
    handler = logging.StreamHandler(sys.stderr)
    original = handler.stream
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    try:
        with LiveDisplay(console) as display:
            display.update(make_view())
            logging.getLogger("worker_client.runner").warning("portal unreachable")
            assert handler.stream is not original
        assert handler.stream is original
    finally:
        logger.removeHandler(handler)
    assert "portal unreachable" in file.getvalue()
