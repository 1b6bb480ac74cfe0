"""What the runner tells the portal it holds, and how it takes a task sent again.

The portal's side of this (re-sending what a complete list lacks) is tested in
``tests/apps/workunits/test_scheduler.py``; here a stub stands in for the portal so that the
requests the runner builds can be read exactly.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker_client import runner
from worker_client.config import HOME_ENV, WorkerPaths
from worker_client.protocol import (
    MAX_IDS_PER_LIST,
    ReportedResult,
    SchedulerReply,
    SchedulerRequest,
    Task,
)
from worker_client.store import WorkerStore

DEADLINE = (datetime.now(UTC) + timedelta(hours=1)).isoformat(timespec="seconds")


def _task(result_id: int) -> Task:
    return Task(result_id=result_id, name=f"t{result_id}", payload={"kind": "island_epoch"},
                dataset_sha256="ab" * 32, dataset_url="/api/v1/datasets/x/", dataset_size=1,
                deadline=DEADLINE, credit=1.0, cost=1_000)


def _reply(*tasks: Task, accepted: tuple[int, ...] = ()) -> SchedulerReply:
    return SchedulerReply(tasks=list(tasks), accepted=list(accepted), rejected=[], abort=[],
                          request_delay=0.0, reason=None, message="")


class StubPortal:
    server = "http://portal.invalid/"

    def __init__(self, *replies: SchedulerReply) -> None:
        self.replies = list(replies)
        self.requests: list[SchedulerRequest] = []

    def scheduler(self, request: SchedulerRequest) -> SchedulerReply:
        self.requests.append(request)
        return self.replies.pop(0) if self.replies else _reply()

    def host_status(self) -> dict:
        return {"total_credit": 0.0}


@pytest.fixture
def store(tmp_path) -> WorkerStore:
    store = WorkerStore(WorkerPaths.default({HOME_ENV: str(tmp_path / "worker")}))
    store.ensure()
    return store


def _runner(store: WorkerStore, portal: StubPortal, **options) -> runner.Runner:
    options = {"cpus": 1, **options}
    worker = runner.Runner(portal, store, runner.RunOptions(**options))  # type: ignore[arg-type]
    worker._load_state()
    return worker


def test_the_list_names_every_task_held_and_is_complete_with_the_reports(store):
    store.save_task(_task(7), 1.0)
    for result_id in range(100, 130):
        store.save_result(ReportedResult(result_id=result_id, status="error", error="x"))
    portal = StubPortal()

    _runner(store, portal)._contact()

    [request] = portal.requests
    assert {r.result_id for r in request.results} == set(range(100, 130))
    assert request.in_progress == [7]
    assert request.in_progress_complete is True
    assert request.to_dict()["in_progress_complete"] is True


def test_results_waiting_beyond_the_reports_make_the_list_incomplete(store):
    """Listed as in progress, a finished result of a work unit decided meanwhile would be
    released as not needed before it is reported, and its credit lost: it is never listed, and
    the list is not complete until it is reported."""
    store.save_task(_task(7), 1.0)
    for result_id in range(100, 140):  # more than one request reports
        store.save_result(ReportedResult(result_id=result_id, status="error", error="x"))
    portal = StubPortal(_reply(accepted=tuple(range(100, 132))))
    worker = _runner(store, portal)

    worker._contact()
    worker._contact()

    first, second = portal.requests
    assert len(first.results) == 32 and len(second.results) == 8
    assert first.in_progress == second.in_progress == [7]
    assert (first.in_progress_complete, second.in_progress_complete) == (False, True)


def test_a_list_cut_to_the_protocols_limit_is_not_called_complete(store):
    worker = _runner(store, StubPortal())
    worker._held = {rid: None for rid in range(1, MAX_IDS_PER_LIST + 2)}  # type: ignore[misc]

    ids, complete = worker._holding(set())

    assert ids == list(range(1, MAX_IDS_PER_LIST + 1)) and complete is False


def test_without_the_flag_the_wire_request_is_as_before():
    # A portal older than the flag refuses unknown fields: it is sent only when true.
    assert "in_progress_complete" not in SchedulerRequest(in_progress=[1]).to_dict()


def test_a_task_sent_again_is_kept_once_and_acknowledged_again(store):
    portal = StubPortal(_reply(_task(7)), _reply(_task(7)))
    worker = _runner(store, portal)

    worker._contact()  # receives 7, saves it, acks it in the next call
    first_saved = store.load_tasks()
    worker._contact()  # acks 7; the portal sends 7 again (a retried call, say)
    worker._contact()

    first, second, third = portal.requests
    assert (first.in_progress, second.in_progress, third.in_progress) == ([], [7], [7])
    assert (second.acks, third.acks) == ([7], [7])  # confirmed again: sent anew, unconfirmed
    assert store.load_tasks() == first_saved  # one task file, not rewritten
    assert list(worker._held) == [7]


def test_the_first_pass_talks_to_the_portal_even_with_a_full_buffer(store):
    for result_id in range(1, 9):  # as many as one slot may queue: nothing to ask for
        store.save_task(_task(result_id), float(result_id))
    portal = StubPortal()
    worker = _runner(store, portal)
    assert worker._work_request() == (0, 0.0)

    assert worker._has_something_to_say()  # tasks a previous run lost come back now
    worker._contact()
    assert not worker._has_something_to_say()
    assert portal.requests[0].in_progress == list(range(1, 9))


def test_a_request_for_work_says_how_much_each_slot_has_queued(store):
    store.save_task(_task(7), 1.0)  # 1000 candle-evaluations at 10 per second: 100 s
    portal = StubPortal()
    worker = _runner(store, portal, cpus=2, buffer_hours=1.0)
    worker.speed = 10.0

    worker._contact()

    [request] = portal.requests
    assert request.free_slots > 0
    assert request.slot_queue_seconds == [0.0, 100.0]


def test_a_finished_task_shows_as_finished_until_the_portal_acknowledges_it(store):
    from worker_client.display import FINISHED, QUEUED

    portal = StubPortal(_reply(_task(7), _task(8)), _reply(accepted=(7,)))
    worker = _runner(store, portal)
    worker._contact()
    assert [(t.result_id, t.state) for t in worker._view().tasks] == [(7, QUEUED), (8, QUEUED)]
    held = worker._held[7]
    result = ReportedResult(result_id=7, status="error", error="x")
    store.save_result(result)

    worker._finished_task(held, result)

    assert [(t.result_id, t.state, t.fraction_done) for t in worker._view().tasks] == [
        (8, QUEUED, 0.0), (7, FINISHED, 1.0)]
    worker._contact()  # reports it; the portal accepts it
    assert [(t.result_id, t.state) for t in worker._view().tasks] == [(8, QUEUED)]
