"""The host's own endpoints besides the scheduler: its figures, detaching, and heartbeats."""

from __future__ import annotations

import pytest

from apps.workunits.models import Result
from apps.workunits.states import Outcome, ServerState, ValidateState
from tests.api import HOST, SCHEDULER, assert_error, post_json, worker
from tests.factories import make_host, make_workunit
from worker_client import protocol

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def isolated(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.MIN_CLIENT_VERSION = "0.1.0"


def _take_tasks(host, count: int) -> list[protocol.Task]:
    for _ in range(count):
        make_workunit()
    reply = post_json(worker(host), SCHEDULER, protocol.SchedulerRequest(
        free_slots=count, work_seconds=1e6).to_dict())
    assert reply.status_code == 200, reply.content
    return protocol.SchedulerReply.from_dict(reply.json()).tasks


def test_a_host_reads_its_own_figures_and_only_its_own():
    host = make_host(total_credit=12.5, rac=3.25, n_valid=4, n_invalid=1, n_errors=2)
    make_host(total_credit=999.0)  # someone else's
    tasks = _take_tasks(host, 3)
    # Pending: reported and waiting for a quorum, whether undecided yet or not.
    for task, state in zip(tasks[:2], [ValidateState.INIT, ValidateState.INCONCLUSIVE],
                           strict=True):
        Result.objects.filter(pk=task.result_id).update(
            server_state=ServerState.OVER, outcome=Outcome.SUCCESS, validate_state=state)

    body = worker(host).get(HOST).json()

    assert body == {"host_id": host.pk, "name": host.name, "total_credit": 12.5, "rac": 3.25,
                    "n_valid": 4, "n_invalid": 1, "n_errors": 2, "in_progress": 1,
                    "pending": 2, "speed": host.speed}
    assert_error(worker().get(HOST), 401)


def test_detach_revokes_the_token_and_gives_the_tasks_back_at_once():
    host = make_host()
    tasks = _take_tasks(host, 2)
    assert len(tasks) == 2

    response = worker(host).delete(HOST)

    assert response.status_code == 204
    host.refresh_from_db()
    assert host.retired
    for task in tasks:
        given_back = Result.objects.get(pk=task.result_id)
        assert (given_back.server_state, given_back.outcome) == (
            ServerState.OVER, Outcome.CLIENT_DETACHED)
    assert_error(worker(host).get(HOST), 401)  # the token no longer works
    assert_error(worker(host).delete(HOST), 401)


def test_a_heartbeat_records_progress_of_the_hosts_own_tasks_only():
    host, other = make_host(), make_host()
    [task] = _take_tasks(host, 1)
    [foreign] = _take_tasks(other, 1)
    request = protocol.SchedulerRequest(
        in_progress=[task.result_id],
        progress=[protocol.TaskProgress(task.result_id, 0.4),
                  protocol.TaskProgress(foreign.result_id, 0.9)])

    assert post_json(worker(host), SCHEDULER, request.to_dict()).status_code == 200

    mine = Result.objects.get(pk=task.result_id)
    assert mine.fraction_done == 0.4 and mine.progress_time is not None
    theirs = Result.objects.get(pk=foreign.result_id)
    assert theirs.fraction_done == 0.0 and theirs.progress_time is None


@pytest.mark.parametrize("fraction", [-0.1, 1.5, "half", None])
def test_a_heartbeat_fraction_outside_0_to_1_is_refused(fraction):
    host = make_host()
    body = {"progress": [{"result_id": 1, "fraction_done": fraction}]}
    assert_error(post_json(worker(host), SCHEDULER, body), 400)
