"""How much work to ask for, and in what order to run it: pure functions, no I/O.

BOINC's client keeps a buffer of work between two bounds and runs tasks round-robin, moving the
ones in deadline danger to the front in earliest-deadline-first order (``client/cpu_sched.cpp``,
``client/work_fetch.cpp``). Our tasks are short and run to completion once started, so the
client keeps it simpler:

* it asks for ``slots × buffer`` seconds of work minus what it already holds, estimated from
  the host's measured speed (candle-evaluations per second and core) and each task's cost;
* it runs tasks in the order they arrived, unless a simulation of that order on its slots says
  a deadline would be missed: then every queued task runs earliest deadline first;
* it tells the portal how much work each slot has queued (the same simulation), so that the
  portal sends only tasks that can still meet their deadline behind that queue (BOINC's
  ``estimated_delay``): a buffer as long as the deadlines does not fill up with work that
  would be late.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from .protocol import MAX_FREE_SLOTS, MAX_WORK_SECONDS

# A guess for the first tasks, before the host has been measured: a modest laptop core.
DEFAULT_SPEED = 5e7
MAX_QUEUED_PER_SLOT = 8  # never hold more tasks than this per slot, whatever their size


@dataclass(frozen=True)
class PlannedTask:
    """What the planner needs to know of a task."""

    result_id: int
    deadline: datetime  # aware
    cost: float  # candle-evaluations, an upper bound
    fraction_done: float = 0.0  # of a running task (or a checkpointed one)


def remaining_seconds(task: PlannedTask, speed: float) -> float:
    """Estimated seconds of one core still needed for ``task`` at ``speed``."""
    speed = speed if speed > 0 else DEFAULT_SPEED
    return max(0.0, task.cost * (1.0 - min(1.0, max(0.0, task.fraction_done)))) / speed


def work_request(*, slots: int, buffer_seconds: float, held: Sequence[PlannedTask],
                 speed: float) -> tuple[int, float]:
    """``(free_slots, work_seconds)`` to put in a scheduler request.

    ``held`` is every task received and not finished (running or queued). The request fills
    the buffer, ``slots × buffer_seconds`` of work, and always asks when a slot would otherwise
    sit idle. It asks for nothing once ``MAX_QUEUED_PER_SLOT`` tasks per slot are held.
    """
    room = slots * MAX_QUEUED_PER_SLOT - len(held)
    if slots <= 0 or room <= 0:
        return 0, 0.0
    want = slots * max(0.0, buffer_seconds) - sum(remaining_seconds(t, speed) for t in held)
    if len(held) < slots:
        want = max(want, 1.0)  # an idle slot always asks for work
    if want <= 0:
        return 0, 0.0
    want = min(want, MAX_WORK_SECONDS)
    # The count only caps the reply; the portal stops at ``want`` seconds for our speed.
    return min(room, slots, MAX_FREE_SLOTS), want


def slot_queue(*, queued: Sequence[PlannedTask], running: Sequence[PlannedTask], slots: int,
               speed: float) -> list[float]:
    """Seconds of work queued on each slot, soonest free first: when each slot could start a
    new task, if the running tasks keep their slots and the ``queued`` ones (in the order they
    will start) each go on the slot free first. For ``SchedulerRequest.slot_queue_seconds``."""
    slots = max(1, slots)
    free_at = sorted(remaining_seconds(t, speed) for t in running)[:slots]
    free_at += [0.0] * (slots - len(free_at))
    heapq.heapify(free_at)
    for task in queued:
        heapq.heapreplace(free_at, free_at[0] + remaining_seconds(task, speed))
    return sorted(min(seconds, MAX_WORK_SECONDS) for seconds in free_at)[:MAX_FREE_SLOTS]


@dataclass(frozen=True)
class Plan:
    order: tuple[int, ...]  # result ids of the queued tasks, the next one to start first
    at_risk: tuple[int, ...]  # queued tasks that would miss their deadline in arrival order
    finish: dict[int, datetime]  # the predicted finish of each queued task, in ``order``


def plan(*, queued: Sequence[PlannedTask], running: Sequence[PlannedTask], slots: int,
         speed: float, now: datetime | None = None) -> Plan:
    """Order the queued tasks: arrival order, or earliest deadline first when one is at risk.

    The simulation puts each queued task on the slot that frees first; running tasks hold
    their slots for their remaining time.
    """
    now = now or datetime.now(UTC)
    arrival = list(queued)
    finish, late = _simulate(arrival, running, slots, speed, now)
    if not late:
        return Plan(order=tuple(t.result_id for t in arrival), at_risk=(), finish=finish)
    edf = sorted(arrival, key=lambda t: (t.deadline, t.result_id))
    finish_edf, _ = _simulate(edf, running, slots, speed, now)
    return Plan(order=tuple(t.result_id for t in edf), at_risk=tuple(late), finish=finish_edf)


def _simulate(order: Sequence[PlannedTask], running: Sequence[PlannedTask], slots: int,
              speed: float, now: datetime) -> tuple[dict[int, datetime], list[int]]:
    slots = max(1, slots)
    free_at = sorted(remaining_seconds(t, speed) for t in running)[:slots]
    free_at += [0.0] * (slots - len(free_at))
    heapq.heapify(free_at)
    finish: dict[int, datetime] = {}
    late: list[int] = []
    start = now.timestamp()
    for task in order:
        begins = heapq.heappop(free_at)
        ends = begins + remaining_seconds(task, speed)
        heapq.heappush(free_at, ends)
        when = datetime.fromtimestamp(start + min(ends, 1e10), UTC)
        finish[task.result_id] = when
        if when > task.deadline:
            late.append(task.result_id)
    return finish, late


def eta_seconds(*, fraction_done: float, elapsed: float) -> float | None:
    """Seconds left for a running task, from its progress so far; None before it is known."""
    if fraction_done <= 0 or elapsed <= 0 or not math.isfinite(elapsed):
        return None
    return max(0.0, elapsed * (1.0 - fraction_done) / fraction_done)
