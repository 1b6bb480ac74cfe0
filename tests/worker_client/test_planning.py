"""Work fetch and run order: the buffer, and earliest deadline first when one is at risk."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from worker_client.planning import (
    PlannedTask,
    eta_seconds,
    plan,
    remaining_seconds,
    slot_queue,
    work_request,
)
from worker_client.protocol import MAX_WORK_SECONDS

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SPEED = 1e6  # candle-evaluations per second and core


def task(rid: int, *, seconds: float, due_in: float, done: float = 0.0) -> PlannedTask:
    return PlannedTask(rid, NOW + timedelta(seconds=due_in), cost=seconds * SPEED,
                       fraction_done=done)


def test_remaining_seconds_follow_cost_speed_and_progress():
    assert remaining_seconds(task(1, seconds=100, due_in=1e4), SPEED) == 100
    assert remaining_seconds(task(1, seconds=100, due_in=1e4, done=0.25), SPEED) == 75


def test_an_empty_host_asks_for_its_whole_buffer():
    assert work_request(slots=3, buffer_seconds=600, held=[], speed=SPEED) == (3, 1800)


def test_work_held_is_subtracted_and_a_full_buffer_asks_for_nothing():
    held = [task(1, seconds=500, due_in=1e4), task(2, seconds=700, due_in=1e4)]
    assert work_request(slots=2, buffer_seconds=1000, held=held, speed=SPEED) == (2, 800)
    held.append(task(3, seconds=900, due_in=1e4))
    assert work_request(slots=2, buffer_seconds=1000, held=held, speed=SPEED) == (0, 0.0)


def test_an_idle_slot_asks_even_with_no_buffer():
    free, seconds = work_request(slots=2, buffer_seconds=0, held=[task(1, seconds=9, due_in=99)],
                                 speed=SPEED)
    assert free >= 1 and seconds > 0


def test_never_more_than_eight_tasks_per_slot():
    held = [task(i, seconds=0.001, due_in=1e4) for i in range(16)]
    assert work_request(slots=2, buffer_seconds=1e6, held=held, speed=SPEED) == (0, 0.0)


def test_arrival_order_is_kept_while_every_deadline_is_met():
    queued = [task(1, seconds=100, due_in=1000), task(2, seconds=100, due_in=500)]
    result = plan(queued=queued, running=[], slots=1, speed=SPEED, now=NOW)
    assert result.order == (1, 2) and result.at_risk == ()


def test_earliest_deadline_first_when_arrival_order_would_miss_one():
    queued = [task(1, seconds=300, due_in=10_000), task(2, seconds=300, due_in=10_000),
              task(3, seconds=100, due_in=450)]
    result = plan(queued=queued, running=[], slots=1, speed=SPEED, now=NOW)
    assert result.at_risk == (3,)
    assert result.order[0] == 3
    assert result.finish[3] <= queued[2].deadline


def test_running_tasks_hold_their_slots_in_the_simulation():
    running = [task(9, seconds=1000, due_in=5000, done=0.5)]  # 500 s left
    queued = [task(1, seconds=100, due_in=550)]
    one_slot = plan(queued=queued, running=running, slots=1, speed=SPEED, now=NOW)
    assert one_slot.at_risk == (1,)  # starts at 500 s, ends at 600 s: late
    two_slots = plan(queued=queued, running=running, slots=2, speed=SPEED, now=NOW)
    assert two_slots.at_risk == ()


def test_eta_from_progress():
    assert eta_seconds(fraction_done=0.25, elapsed=30) == 90
    assert eta_seconds(fraction_done=0.0, elapsed=30) is None


def test_a_huge_buffer_asks_for_no_more_than_the_protocol_allows():
    _, seconds = work_request(slots=64, buffer_seconds=240 * 3600, held=[], speed=SPEED)
    assert seconds == MAX_WORK_SECONDS


def test_the_queue_of_each_slot_is_what_runs_there_before_a_new_task_could_start():
    running = [task(1, seconds=300, due_in=1e4, done=0.5)]  # 150 s left
    queued = [task(2, seconds=100, due_in=1e4), task(3, seconds=400, due_in=1e4),
              task(4, seconds=50, due_in=1e4)]
    # Slot A: 150 s left of task 1; slot B: task 2 (100 s), then 3 goes on the slot free
    # first (B at 100 s: 500 s), then 4 on A (at 150 s: 200 s).
    assert slot_queue(queued=queued, running=running, slots=2, speed=SPEED) == [200.0, 500.0]
    assert slot_queue(queued=[], running=[], slots=3, speed=SPEED) == [0.0, 0.0, 0.0]


def test_the_queue_is_bounded_by_the_protocol():
    huge = [task(1, seconds=MAX_WORK_SECONDS * 2, due_in=1e9)]
    assert slot_queue(queued=huge, running=[], slots=1, speed=SPEED) == [MAX_WORK_SECONDS]
    assert len(slot_queue(queued=[], running=[], slots=1000, speed=SPEED)) == 256
