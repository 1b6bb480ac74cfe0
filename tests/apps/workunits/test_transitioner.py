"""The transitioner, rule by rule (reference/boinc.md §1.5)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection

from apps.credit.models import CreditGrant
from apps.workunits.models import Result, WorkUnit
from apps.workunits.states import (
    AssimilateState,
    ErrorMask,
    FileDeleteState,
    Outcome,
    ServerState,
    ValidateState,
)
from apps.workunits.transitioner import transition_pass
from apps.workunits.validator import validate_pass
from tests.apps.workunits.test_validator import (
    T0,
    daemons,
    engine_output,
    make_host,
    make_workunit,
    report,
    run_replica,
    send,
    states,
)

pytestmark = pytest.mark.django_db

UNSENT, IN_PROGRESS, OVER = ServerState.UNSENT, ServerState.IN_PROGRESS, ServerState.OVER


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.GHOST_TIMEOUT_SECONDS = 600


def test_host_that_never_reports_is_timed_out_replaced_and_the_workunit_still_completes():
    wu = make_workunit()
    silent, a, b = make_host(consecutive_valid=7), make_host(), make_host()
    lost = send(wu, silent)
    first = run_replica(wu, a, engine_output(wu))
    transition_pass(now=T0)
    wu.refresh_from_db()
    assert wu.transition_time == lost.report_deadline  # woken by the deadline

    late = lost.report_deadline + timedelta(seconds=1)
    assert transition_pass(now=late) == 1
    lost.refresh_from_db()
    silent.refresh_from_db()
    assert (lost.server_state, lost.outcome) == (OVER, Outcome.NO_REPLY)
    assert silent.consecutive_valid == 0 and silent.max_results_day == 99
    replacement = Result.objects.get(workunit=wu, server_state=UNSENT)
    assert replacement.priority == wu.priority + 1  # retries go first

    second = run_replica(wu, b, engine_output(wu), now=late)
    daemons(late)
    wu.refresh_from_db()
    assert wu.canonical_result_id == first.pk
    second.refresh_from_db()
    assert second.validate_state == ValidateState.VALID


def test_ghost_task_never_acknowledged_is_treated_as_no_reply_quickly():
    wu = make_workunit()
    ghost, acked = send(wu, make_host()), send(wu, make_host())
    Result.objects.filter(pk=ghost.pk).update(acked_time=None)
    transition_pass(now=T0)
    wu.refresh_from_db()
    assert wu.transition_time == T0 + timedelta(seconds=600)  # the ghost limit, not 1 h
    transition_pass(now=T0 + timedelta(seconds=601))
    ghost.refresh_from_db()
    acked.refresh_from_db()
    assert (ghost.server_state, ghost.outcome) == (OVER, Outcome.NO_REPLY)
    assert acked.server_state == IN_PROGRESS
    assert Result.objects.filter(workunit=wu, server_state=UNSENT).count() == 1


def test_validation_is_flagged_when_a_new_success_meets_min_quorum():
    wu = make_workunit()
    run_replica(wu, make_host(), engine_output(wu))
    transition_pass(now=T0)
    wu.refresh_from_db()
    assert not wu.need_validate
    run_replica(wu, make_host(), engine_output(wu))
    transition_pass(now=T0)
    wu.refresh_from_db()
    assert wu.need_validate


def test_too_many_errors_error_the_workunit_and_wind_it_down():
    wu = make_workunit(target_nresults=3, max_error_results=1, max_total_results=8)
    good = run_replica(wu, make_host(), engine_output(wu))
    for _ in range(2):
        run_replica(wu, make_host(), None)
    assert transition_pass(now=T0) == 1
    wu.refresh_from_db()
    assert wu.error_mask == ErrorMask.TOO_MANY_ERROR_RESULTS
    assert wu.assimilate_state == AssimilateState.READY and not wu.need_validate
    assert wu.transition_time is None
    good.refresh_from_db()
    assert good.validate_state == ValidateState.NO_CHECK
    assert not Result.objects.filter(workunit=wu, server_state=UNSENT).exists()


def test_unsent_replicas_of_an_errored_workunit_are_not_needed():
    wu = make_workunit(target_nresults=3, max_error_results=0, max_total_results=8)
    run_replica(wu, make_host(), None)
    transition_pass(now=T0)
    assert [s[:2] for s in states(wu)] == [(OVER, Outcome.CLIENT_ERROR),
                                           (OVER, Outcome.DIDNT_NEED), (OVER, Outcome.DIDNT_NEED)]


def test_needing_more_replicas_than_max_total_results_allows_is_an_error():
    wu = make_workunit(target_nresults=2, max_total_results=2, max_error_results=5)
    run_replica(wu, make_host(), None)
    run_replica(wu, make_host(), engine_output(wu))
    transition_pass(now=T0)
    wu.refresh_from_db()
    assert wu.error_mask == ErrorMask.TOO_MANY_TOTAL_RESULTS
    assert Result.objects.filter(workunit=wu).count() == 2


def test_too_many_successes_without_consensus_is_an_error():
    wu = make_workunit(target_nresults=3, max_success_results=2, max_total_results=8)
    for r in Result.objects.filter(workunit=wu):  # three answers the validator saw disagree
        Result.objects.filter(pk=r.pk).update(server_state=OVER, outcome=Outcome.SUCCESS,
                                              validate_state=ValidateState.INCONCLUSIVE)
    transition_pass(now=T0)
    wu.refresh_from_db()
    assert wu.error_mask == ErrorMask.TOO_MANY_SUCCESS_RESULTS
    assert [s[2] for s in states(wu)] == [ValidateState.NO_CHECK] * 3


def test_errors_below_the_limit_are_replaced():
    wu = make_workunit(max_error_results=3)
    run_replica(wu, make_host(), None)
    transition_pass(now=T0)
    wu.refresh_from_db()
    assert wu.error_mask == 0
    assert Result.objects.filter(workunit=wu, server_state=UNSENT).count() == 2


def test_pass_is_idempotent():
    wu = make_workunit()
    run_replica(wu, make_host(), None)
    for _ in range(3):
        transition_pass(workunit_ids=[wu.pk], now=T0)
    assert Result.objects.filter(workunit=wu).count() == 3
    assert Result.objects.filter(workunit=wu, server_state=UNSENT).count() == 2


def test_only_due_workunits_are_swept_and_the_safety_net_is_set():
    wu = make_workunit()
    assert transition_pass(now=T0 - timedelta(seconds=1)) == 0  # not due yet
    assert transition_pass(now=T0) == 1
    wu.refresh_from_db()
    assert wu.transition_time == T0 + timedelta(days=10)  # max(10 days, 1.5 x 1 h)
    assert transition_pass(now=T0 + timedelta(days=1)) == 0
    assert transition_pass(workunit_ids=[wu.pk], now=T0 + timedelta(days=1)) == 1  # enqueued


def test_a_decided_workunit_is_never_due_again_once_nothing_is_out():
    wu = make_workunit()
    for _ in range(2):
        run_replica(wu, make_host(), engine_output(wu))
    daemons()
    wu.refresh_from_db()
    assert wu.canonical_result_id is not None and wu.transition_time is None


def test_late_success_after_the_files_are_deleted_is_too_late():
    wu = make_workunit(target_nresults=3, max_total_results=8)
    late = send(wu, make_host())
    for _ in range(2):
        run_replica(wu, make_host(), engine_output(wu))
    daemons()
    WorkUnit.objects.filter(pk=wu.pk).update(file_delete_state=FileDeleteState.DONE)
    report(late, engine_output(wu), now=T0 + timedelta(hours=2))
    transition_pass(now=T0 + timedelta(hours=2))
    late.refresh_from_db()
    assert late.validate_state == ValidateState.TOO_LATE and late.output is None
    wu.refresh_from_db()
    assert not wu.need_validate
    assert validate_pass(now=T0 + timedelta(hours=2)) == 0


@pytest.mark.django_db(transaction=True)
def test_daemons_in_two_processes_at_once_apply_each_change_once():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: SQLite serialises writers, so there is no "
                    "concurrency to test here (run with DATABASE_URL=postgres://…)")
    workunits = [make_workunit(max_error_results=5) for _ in range(6)]
    failing, agreeing = workunits[:3], workunits[3:]
    for wu in failing:  # an error and an answer: needs exactly one replacement
        run_replica(wu, make_host(), None)
        run_replica(wu, make_host(), engine_output(wu))
    for wu in agreeing:  # two agreeing answers: one canonical result, credit once each
        for _ in range(2):
            run_replica(wu, make_host(), engine_output(wu))
    barrier = threading.Barrier(4)
    failures: list[BaseException] = []

    def daemon(kind: str) -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(3):
                if kind == "sweep":
                    transition_pass(now=T0)
                else:
                    transition_pass(workunit_ids=[wu.pk for wu in workunits], now=T0)
                validate_pass(now=T0)
        except BaseException as exc:  # reported below
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=daemon, args=(kind,))
               for kind in ("sweep", "sweep", "ids", "ids")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    for wu in failing:
        assert Result.objects.filter(workunit=wu).count() == 3  # no duplicate replacement
        assert Result.objects.filter(workunit=wu, server_state=UNSENT).count() == 1
    for wu in agreeing:
        wu.refresh_from_db()
        assert wu.canonical_result_id is not None
        valid = Result.objects.filter(workunit=wu, validate_state=ValidateState.VALID)
        assert valid.count() == 2
        assert CreditGrant.objects.filter(result__workunit=wu).count() == 2
        for r in valid:
            assert r.volunteer.total_credit == pytest.approx(wu.credit)
