"""Reports wake the transitioner through django-q2: coalesced, so that hundreds of reports a
second queue one pass at a time, while a work unit a report could not make due (another process
held its row) is still named to a pass of its own."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.workunits import tasks
from apps.workunits.models import WorkUnit
from tests.factories import make_workunit

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued(monkeypatch, settings):
    settings.DAEMON_RUNNER = "qcluster"
    calls: list[tuple[str, tuple]] = []
    monkeypatch.setattr(tasks, "async_task", lambda func, *args: calls.append((func, args)))
    return calls


def test_reports_while_a_pass_is_queued_queue_only_what_it_would_miss(queued):
    now = timezone.now()
    due, held = make_workunit(), make_workunit()
    WorkUnit.objects.filter(pk=due.pk).update(transition_time=now - timedelta(seconds=1))
    WorkUnit.objects.filter(pk=held.pk).update(transition_time=now + timedelta(hours=1))

    tasks.enqueue_transitions([due.pk])  # no pass queued: this one is
    assert queued == [(tasks.TRANSITION_WORKUNITS, ([due.pk],))]
    tasks.enqueue_transitions([due.pk])  # the queued pass will find it
    tasks.enqueue_transitions([held.pk, due.pk])  # but not the one the report could not make due
    assert queued[1:] == [(tasks.TRANSITION_WORKUNITS, ([held.pk], False))]

    queued.clear()
    # The pass starts (later reports must queue again) and, having found work, queues one
    # more sweep for the reports that committed while it ran: they need queue nothing.
    assert tasks.transition_workunits([due.pk]) == 1
    assert queued == [(tasks.TRANSITIONER, ())]
    WorkUnit.objects.filter(pk=due.pk).update(transition_time=timezone.now())
    tasks.enqueue_transitions([due.pk])
    assert queued == [(tasks.TRANSITIONER, ())]


def test_a_pass_that_found_work_queues_one_more_and_the_next_daemon_once(queued):
    wu = make_workunit()
    WorkUnit.objects.filter(pk=wu.pk).update(transition_time=timezone.now(), need_validate=True)
    assert tasks.run_transitioner() == 1
    assert [func for func, _ in queued] == [tasks.TRANSITIONER, tasks.VALIDATOR]
    tasks.enqueue_once(tasks.VALIDATOR)  # already queued, not started: nothing more
    assert [func for func, _ in queued] == [tasks.TRANSITIONER, tasks.VALIDATOR]
    assert tasks.run_transitioner() == 0  # an idle pass ends the chain
    assert len(queued) == 2


def test_nothing_is_queued_when_the_daemons_run_in_a_loop(queued, settings):
    settings.DAEMON_RUNNER = "loop"
    tasks.enqueue_transitions([make_workunit().pk])
    assert queued == []


def test_a_work_unit_held_elsewhere_is_not_waited_for_but_looked_at_again(queued):
    # A work unit the pass could not lock (here: one that is gone, which no pass can lock)
    # sends the task back to the queue, a bounded number of times.
    wu = make_workunit()
    missing = wu.pk + 1000
    assert tasks.transition_workunits([wu.pk, missing], False) == 1
    assert queued == [(tasks.TRANSITION_WORKUNITS, ([wu.pk, missing], False, 1))]
    queued.clear()
    tasks.transition_workunits([missing], False, tasks.MAX_REQUEUES)  # the last time: it waits
    assert queued == []


# --- a batch that loses a lock race -------------------------------------------------------------


class _SqlState(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def _database_error(sqlstate: str):
    from django.db import OperationalError

    error = OperationalError(f"sqlstate {sqlstate}")
    error.__cause__ = _SqlState(sqlstate)  # as Django wraps psycopg's error
    return error


@pytest.mark.parametrize("sqlstate", ["40P01", "40001", "55P03"])
def test_a_batch_that_deadlocks_is_retried_one_work_unit_at_a_time(sqlstate):
    """A batch may lock several replicas of one host while a scheduler call of that host locks
    them in another order: PostgreSQL then aborts one side. The pass goes on, one work unit at
    a time (one work unit has at most one replica per host, so no cycle), instead of failing."""
    from apps.workunits.transitioner import run_batches

    calls: list[list[int]] = []

    def handle(ids: list[int]) -> int:
        calls.append(ids)
        if len(ids) > 1 or ids == [3]:
            raise _database_error(sqlstate)
        return 1

    assert run_batches([1, 2, 3, 4], handle, name="test", batch=4) == 3
    assert calls == [[1, 2, 3, 4], [1], [2], [3], [4]]


def test_other_database_errors_still_fail_the_pass():
    from apps.workunits.transitioner import run_batches

    def handle(ids: list[int]) -> int:
        raise _database_error("23505")  # a unique violation is a bug, not a lost race

    with pytest.raises(Exception, match="23505"):
        run_batches([1, 2], handle, name="test", batch=2)
