"""The scheduler service: reports, acks, aborts and claims, called directly (no HTTP)."""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from apps.accounts.models import Host
from apps.workunits import scheduler as scheduler_module
from apps.workunits.models import Result, WorkUnit
from apps.workunits.scheduler import scheduler_request, version_tuple
from apps.workunits.states import CampaignState, Outcome, ServerState, ValidateState
from tests.factories import (
    make_campaign,
    make_dataset,
    make_host,
    make_volunteer,
    make_workunit,
)
from worker_client import protocol

pytestmark = pytest.mark.django_db

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DIGEST = "ab" * 32


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.MIN_CLIENT_VERSION = "0.1.0"
    settings.RESULT_GRACE_SECONDS = 300


def ask(host, *, now=NOW, client_version="0.1.0", rng=None, **request):
    request.setdefault("free_slots", 1)
    request.setdefault("work_seconds", 3600.0)
    host.refresh_from_db()
    return scheduler_request(host=host, request=request, client_version=client_version, now=now,
                             rng=rng)


def success(result_id, digest=DIGEST, **extra):
    return {"result_id": result_id, "status": "success",
            "output": {"digest": digest, "top": []}, "cpu_time": 10.0, "wall_time": 12.0,
            **extra}


def send(result, host, now=NOW):
    """Put a replica in progress on a host, as a claim would."""
    Result.objects.filter(pk=result.pk).update(
        server_state=ServerState.IN_PROGRESS, host=host, volunteer=host.volunteer, sent_time=now,
        report_deadline=now + timedelta(hours=1))
    result.refresh_from_db()
    return result


# --- claiming ----------------------------------------------------------------------------------


def test_a_claim_sends_one_task_and_marks_the_replica_in_progress(settings):
    workunit = make_workunit(delay_bound=600, cost=5_000, credit=2.5)
    host = make_host()

    reply = ask(host, free_slots=1)

    assert reply["reason"] is None
    assert reply["request_delay"] == settings.SCHEDULER_REQUEST_DELAY
    [task] = reply["tasks"]
    protocol.SchedulerReply.from_dict(reply)  # speaks the wire contract
    replica = Result.objects.get(pk=task["result_id"])
    assert replica.workunit_id == workunit.pk
    assert replica.server_state == ServerState.IN_PROGRESS
    assert (replica.host_id, replica.volunteer_id) == (host.pk, host.volunteer_id)
    assert replica.sent_time == NOW
    assert replica.report_deadline == NOW + timedelta(seconds=600 + 300)
    dataset = workunit.campaign.dataset
    assert task == {
        "result_id": replica.pk, "name": task["name"], "payload": workunit.payload,
        "dataset_sha256": dataset.sha256, "dataset_url": f"/api/v1/datasets/{dataset.sha256}/",
        "dataset_size": dataset.size_bytes, "deadline": "2025-03-01T12:10:00+00:00",
        "credit": 2.5, "cost": 5_000}
    workunit.refresh_from_db()
    assert workunit.transition_time == replica.report_deadline
    host.refresh_from_db()
    assert (host.results_today, host.quota_day, host.last_contact) == (1, NOW.date(), NOW)


def test_the_transition_time_only_moves_earlier():
    earlier = NOW + timedelta(minutes=1)
    workunit = make_workunit(transition_time=earlier)

    ask(make_host())

    workunit.refresh_from_db()
    assert workunit.transition_time == earlier


def test_never_two_replicas_of_one_work_unit_to_the_same_volunteer():
    workunit = make_workunit(replicas=3)
    volunteer = make_volunteer()
    laptop, desktop = make_host(volunteer=volunteer), make_host(volunteer=volunteer)

    first = ask(laptop, free_slots=3)
    second = ask(desktop, free_slots=3)
    other = ask(make_host(), free_slots=3)

    assert len(first["tasks"]) == 1
    assert second["tasks"] == [] and second["reason"] == protocol.REASON_NO_WORK
    assert len(other["tasks"]) == 1
    sent = Result.objects.filter(workunit=workunit, server_state=ServerState.IN_PROGRESS)
    assert Counter(sent.values_list("volunteer_id", flat=True)).most_common(1)[0][1] == 1


def test_free_slots_caps_the_number_of_tasks():
    for _ in range(5):
        make_workunit(replicas=1)

    reply = ask(make_host(), free_slots=2, work_seconds=1e6)

    assert len(reply["tasks"]) == 2


def test_work_seconds_is_covered_like_boinc_and_at_least_one_task_is_sent():
    campaign = make_campaign()
    for _ in range(6):
        make_workunit(campaign=campaign, replicas=1, cost=1_000_000)  # 1 s at 1e6/s

    covered = ask(make_host(speed=1e6), free_slots=10, work_seconds=2.5)
    tiny = ask(make_host(speed=1e6), free_slots=10, work_seconds=0.1)

    assert len(covered["tasks"]) == 3  # 1 + 1 + 1 >= 2.5: the last one overshoots
    assert len(tiny["tasks"]) == 1


def test_data_sets_the_host_holds_come_first():
    held = make_dataset()
    elsewhere = make_workunit(campaign=make_campaign(priority=10), priority=10, replicas=1)
    local = make_workunit(campaign=make_campaign(dataset=held), replicas=1)

    with_data = ask(make_host(), datasets=[held.sha256])
    without = ask(make_host(), datasets=[])

    assert Result.objects.get(pk=with_data["tasks"][0]["result_id"]).workunit_id == local.pk
    assert Result.objects.get(pk=without["tasks"][0]["result_id"]).workunit_id == elsewhere.pk


def test_higher_priority_first_then_the_oldest():
    campaign = make_campaign()
    old, high, new = (make_workunit(campaign=campaign, replicas=1, priority=p) for p in (0, 5, 0))

    reply = ask(make_host(), free_slots=3, work_seconds=1e9)

    order = [Result.objects.get(pk=t["result_id"]).workunit_id for t in reply["tasks"]]
    assert order == [high.pk, old.pk, new.pk]


def test_work_a_host_cannot_finish_in_time_is_skipped():
    campaign = make_campaign()
    too_big = make_workunit(campaign=campaign, replicas=1, cost=10_000_000, delay_bound=600,
                            priority=9)
    fits = make_workunit(campaign=campaign, replicas=1, cost=100_000, delay_bound=600)

    reply = ask(make_host(speed=1_000.0), free_slots=2)  # 10 000 s and 100 s

    assert [Result.objects.get(pk=t["result_id"]).workunit_id for t in reply["tasks"]] == [
        fits.pk]
    assert Result.objects.get(workunit=too_big).server_state == ServerState.UNSENT


def test_deadline_infeasible_when_work_exists_but_none_fits():
    make_workunit(replicas=1, cost=10_000_000, delay_bound=600)

    slow = ask(make_host(speed=1_000.0))
    unmeasured = ask(make_host(speed=0.0))  # no estimate: BOINC's "everyone gets one job"

    assert slow["tasks"] == [] and slow["reason"] == protocol.REASON_TOO_SLOW
    assert slow["request_delay"] == scheduler_module.DELAY_INFEASIBLE
    assert len(unmeasured["tasks"]) == 1


def test_work_that_would_miss_its_deadline_behind_the_hosts_queue_is_not_sent():
    campaign = make_campaign(min_quorum=1, target_nresults=1)
    make_workunit(campaign=campaign, cost=1_000, delay_bound=3_600)  # 1000 s here

    busy = ask(make_host(speed=1.0), slot_queue_seconds=[3_000.0])
    busy_but_in_time = ask(make_host(speed=1.0), slot_queue_seconds=[3_000.0, 2_600.0])

    assert busy["tasks"] == [] and busy["reason"] == protocol.REASON_TOO_SLOW
    assert busy["message"].endswith("after the 3,000 s of work it already holds.")
    assert len(busy_but_in_time["tasks"]) == 1  # its second slot is free in time


def test_each_task_sent_queues_on_the_slot_free_first():
    campaign = make_campaign(min_quorum=1, target_nresults=1)
    for _ in range(8):
        make_workunit(campaign=campaign, cost=2_000, delay_bound=3_600)  # 2000 s each here

    two_idle_slots = ask(make_host(speed=1.0), free_slots=4, work_seconds=20_000.0,
                         slot_queue_seconds=[0.0, 0.0])
    one_busy_slot = ask(make_host(speed=1.0), free_slots=4, work_seconds=20_000.0,
                        slot_queue_seconds=[1_000.0])
    older_client = ask(make_host(speed=1.0), free_slots=4, work_seconds=20_000.0)

    # One task per slot: a second on either would end at 4000 s, past the 3600 s deadline.
    assert len(two_idle_slots["tasks"]) == 2
    assert len(one_busy_slot["tasks"]) == 1  # 1000 + 2000 s; then 3000 + 2000 s is too late
    assert len(older_client["tasks"]) == 4  # each task judged alone, as before


def test_no_work_when_nothing_is_unsent_or_the_campaign_is_not_active(settings):
    make_workunit(campaign=make_campaign(state=CampaignState.PAUSED))

    reply = ask(make_host())

    assert reply["tasks"] == []
    assert reply["reason"] == protocol.REASON_NO_WORK
    assert reply["request_delay"] == settings.SCHEDULER_NO_WORK_DELAY


def test_work_units_already_decided_are_not_sent():
    errored = make_workunit(error_mask=2)
    assert ask(make_host())["reason"] == protocol.REASON_NO_WORK
    assert Result.objects.filter(workunit=errored, server_state=ServerState.UNSENT).count() == 2


def test_nothing_is_sent_when_nothing_is_asked():
    make_workunit()

    for request in ({"free_slots": 0}, {"work_seconds": 0.0}):
        reply = ask(make_host(), **request)
        assert reply["tasks"] == [] and reply["reason"] == protocol.REASON_NOT_ASKED


def test_an_old_client_is_refused_with_the_upgrade_command_and_no_work(settings):
    settings.MIN_CLIENT_VERSION = "0.10.0"
    make_workunit()

    reply = ask(make_host(), client_version="0.9.5")

    assert reply["tasks"] == []
    assert reply["reason"] == protocol.REASON_CLIENT_TOO_OLD
    assert "pipx upgrade strategy-worker" in reply["message"]
    assert reply["request_delay"] >= 3600
    assert not Result.objects.exclude(server_state=ServerState.UNSENT).exists()
    assert ask(make_host(), client_version="0.10")["reason"] is None


@pytest.mark.parametrize(("older", "newer"), [("0.9.0", "0.10.0"), ("1.2", "1.10"),
                                              ("", "0.0.1"), ("0.1.0rc1", "0.1.1"),
                                              ("v1.0.0", "1.0.1")])
def test_versions_compare_as_numbers(older, newer):
    assert version_tuple(older) < version_tuple(newer)


def test_trailing_zeros_do_not_matter():
    assert version_tuple("1.0.0") == version_tuple("1") == version_tuple("1.0")


def test_a_retired_host_gets_no_work():
    make_workunit()
    host = make_host(retired=True)

    reply = ask(host)

    assert reply["tasks"] == [] and reply["reason"] == protocol.REASON_HOST_RETIRED


def test_the_daily_quota_caps_tasks_and_resets_each_utc_day():
    for _ in range(4):
        make_workunit(replicas=1)
    host = make_host(max_results_day=2)

    first = ask(host, free_slots=5, work_seconds=1e9)
    second = ask(host, free_slots=5, work_seconds=1e9)
    next_day = ask(host, free_slots=5, work_seconds=1e9, now=NOW + timedelta(days=1))

    assert len(first["tasks"]) == 2
    assert second["tasks"] == [] and second["reason"] == protocol.REASON_QUOTA
    assert second["request_delay"] == 12 * 3600  # until midnight UTC
    assert len(next_day["tasks"]) == 2
    host.refresh_from_db()
    assert (host.results_today, host.quota_day) == (2, (NOW + timedelta(days=1)).date())


# --- reports -----------------------------------------------------------------------------------


def test_a_success_is_stored_and_the_transitioner_woken(monkeypatch,
                                                        django_capture_on_commit_callbacks):
    woken = []
    monkeypatch.setattr(scheduler_module, "enqueue_transitions", woken.append)
    workunit = make_workunit()
    host = make_host(cpu_count=2)
    replica = send(workunit.results.first(), host, now=NOW - timedelta(minutes=10))

    with django_capture_on_commit_callbacks(execute=True):
        reply = ask(host, free_slots=0, results=[success(replica.pk)], client_version="0.1.3")

    assert reply["accepted"] == [replica.pk] and reply["rejected"] == []
    replica.refresh_from_db()
    assert (replica.server_state, replica.outcome, replica.validate_state) == (
        ServerState.OVER, Outcome.SUCCESS, ValidateState.INIT)
    assert replica.output == {"digest": DIGEST, "top": []}
    assert replica.digest == DIGEST
    assert (replica.received_time, replica.cpu_time, replica.wall_time) == (NOW, 10.0, 12.0)
    assert replica.client_version == "0.1.3"
    workunit.refresh_from_db()
    assert workunit.transition_time == NOW
    assert woken == [[workunit.pk]]


def test_reported_times_are_clamped_to_what_is_possible():
    workunit = make_workunit()
    host = make_host(cpu_count=1)
    replica = send(workunit.results.first(), host, now=NOW - timedelta(seconds=100))

    ask(host, free_slots=0, results=[success(replica.pk, cpu_time=5_000.0, wall_time=9_000.0)])

    replica.refresh_from_db()
    assert (replica.wall_time, replica.cpu_time) == (100.0, 100.0)


def test_an_error_is_stored_as_an_invalid_client_error():
    workunit = make_workunit()
    host = make_host()
    replica = send(workunit.results.first(), host)

    reply = ask(host, free_slots=0, results=[
        {"result_id": replica.pk, "status": "error", "error": "MemoryError"}])

    assert reply["accepted"] == [replica.pk]
    replica.refresh_from_db()
    assert (replica.server_state, replica.outcome, replica.validate_state) == (
        ServerState.OVER, Outcome.CLIENT_ERROR, ValidateState.INVALID)
    assert replica.error_message == "MemoryError"
    assert replica.output is None


def test_a_host_can_report_only_its_own_results():
    workunit = make_workunit()
    owner, intruder = make_host(), make_host()
    replica = send(workunit.results.first(), owner)
    unsent = workunit.results.exclude(pk=replica.pk).get()

    reply = ask(intruder, free_slots=0,
                results=[success(replica.pk), success(unsent.pk), success(999_999)])

    assert reply["accepted"] == []
    assert reply["rejected"] == [
        {"result_id": pk, "reason": scheduler_module.REJECT_NOT_THIS_HOST}
        for pk in (replica.pk, unsent.pk, 999_999)]
    replica.refresh_from_db()
    unsent.refresh_from_db()
    assert replica.server_state == ServerState.IN_PROGRESS and replica.output is None
    assert unsent.server_state == ServerState.UNSENT


def test_a_second_report_of_the_same_result_is_harmless(monkeypatch,
                                                         django_capture_on_commit_callbacks):
    woken = []
    monkeypatch.setattr(scheduler_module, "enqueue_transitions", woken.append)
    workunit = make_workunit()
    host = make_host()
    replica = send(workunit.results.first(), host)
    ask(host, free_slots=0, results=[success(replica.pk)])
    stored = Result.objects.get(pk=replica.pk)
    woken.clear()  # the first report's wake (enqueued in its transaction with the ORM broker)

    with django_capture_on_commit_callbacks(execute=True):
        again = ask(host, free_slots=0, now=NOW + timedelta(minutes=5),
                    results=[success(replica.pk, digest="cd" * 32), success(replica.pk)])

    assert again["accepted"] == [replica.pk] and again["rejected"] == []
    replica.refresh_from_db()
    assert (replica.digest, replica.received_time, replica.output) == (
        stored.digest, stored.received_time, stored.output)
    assert woken == []


def test_a_late_success_after_a_timeout_is_kept_for_the_validator():
    workunit = make_workunit()
    host = make_host()
    replica = send(workunit.results.first(), host)
    Result.objects.filter(pk=replica.pk).update(server_state=ServerState.OVER,
                                                outcome=Outcome.NO_REPLY)

    reply = ask(host, free_slots=0, results=[success(replica.pk)])

    assert reply["accepted"] == [replica.pk]
    replica.refresh_from_db()
    assert (replica.outcome, replica.validate_state, replica.digest) == (
        Outcome.SUCCESS, ValidateState.INIT, DIGEST)


def test_a_late_error_or_a_report_of_an_unneeded_replica_is_rejected():
    host = make_host()
    # Two work units: one volunteer never holds two replicas of one work unit.
    timed_out, unneeded = (send(make_workunit().results.first(), host) for _ in range(2))
    Result.objects.filter(pk=timed_out.pk).update(server_state=ServerState.OVER,
                                                  outcome=Outcome.NO_REPLY)
    Result.objects.filter(pk=unneeded.pk).update(server_state=ServerState.OVER,
                                                 outcome=Outcome.DIDNT_NEED)

    reply = ask(host, free_slots=0, results=[
        {"result_id": timed_out.pk, "status": "error", "error": "late"}, success(unneeded.pk)])

    assert reply["rejected"] == [
        {"result_id": timed_out.pk, "reason": scheduler_module.REJECT_TOO_LATE},
        {"result_id": unneeded.pk, "reason": scheduler_module.REJECT_TOO_LATE}]
    assert Result.objects.get(pk=unneeded.pk).output is None


def test_reports_are_recorded_even_when_the_client_is_too_old(settings):
    settings.MIN_CLIENT_VERSION = "9.0"
    workunit = make_workunit()
    host = make_host()
    replica = send(workunit.results.first(), host)

    reply = ask(host, results=[success(replica.pk)])

    assert reply["accepted"] == [replica.pk]
    assert reply["reason"] == protocol.REASON_CLIENT_TOO_OLD


# --- acks and aborts ---------------------------------------------------------------------------


def test_acks_mark_only_this_hosts_tasks_in_progress():
    workunit = make_workunit()
    host, other = make_host(), make_host()
    first, second = workunit.results.order_by("pk")
    mine, theirs = send(first, host), send(second, other)

    ask(host, free_slots=0, acks=[mine.pk, theirs.pk])

    assert Result.objects.get(pk=mine.pk).acked_time == NOW
    assert Result.objects.get(pk=theirs.pk).acked_time is None


def test_tasks_no_longer_needed_are_aborted_and_released():
    campaign = make_campaign()
    running, decided, timed_out = (make_workunit(campaign=campaign) for _ in range(3))
    host, other = make_host(), make_host()
    keep = send(running.results.first(), host)
    decided_replica = send(decided.results.first(), host)
    WorkUnit.objects.filter(pk=decided.pk).update(canonical_result=decided.results.last())
    late = send(timed_out.results.first(), host)
    Result.objects.filter(pk=late.pk).update(server_state=ServerState.OVER,
                                             outcome=Outcome.NO_REPLY)
    someone_elses = send(running.results.last(), other)

    reply = ask(host, free_slots=0, in_progress=[keep.pk, decided_replica.pk, late.pk,
                                                 someone_elses.pk, 424_242])

    assert reply["abort"] == sorted([decided_replica.pk, late.pk, someone_elses.pk, 424_242])
    decided_replica.refresh_from_db()
    # Released without blame: an abort must not count as a missed deadline.
    assert (decided_replica.server_state, decided_replica.outcome) == (
        ServerState.OVER, Outcome.DIDNT_NEED)
    assert Result.objects.get(pk=someone_elses.pk).server_state == ServerState.IN_PROGRESS


# --- lost tasks (BOINC's resend_lost_results) -------------------------------------------------

LATER = NOW + timedelta(minutes=2)


def test_a_lost_task_is_sent_again_the_same_replica_with_its_deadline():
    workunit = make_workunit(delay_bound=600, cost=5_000, credit=2.5)
    host = make_host()
    [task] = ask(host)["tasks"]  # the reply that never reached the host
    ask(host, free_slots=0, acks=[])  # acks nothing, lists nothing: an older client's call
    replica = Result.objects.get(pk=task["result_id"])
    assert (replica.sent_time, replica.acked_time) == (NOW, None)

    reply = ask(host, now=LATER, free_slots=0, work_seconds=0.0, in_progress=[],
                in_progress_complete=True)

    assert reply["tasks"] == [task]  # same id, payload, data set and deadline
    assert reply["reason"] is None and reply["message"] == "Re-sent 1 lost task."
    replica.refresh_from_db()
    # A new send that the host must acknowledge again; the report deadline does not move.
    assert (replica.server_state, replica.host_id) == (ServerState.IN_PROGRESS, host.pk)
    assert (replica.sent_time, replica.acked_time) == (LATER, None)
    assert replica.report_deadline == NOW + timedelta(seconds=600 + 300)
    host.refresh_from_db()
    assert host.results_today == 1  # counted once, when first sent
    assert Result.objects.filter(workunit=workunit, server_state=ServerState.UNSENT).count() == 1


def test_tasks_the_host_lists_or_reports_are_not_sent_again():
    campaign = make_campaign(min_quorum=1, target_nresults=1)
    running, finished = (make_workunit(campaign=campaign) for _ in range(2))
    host = make_host()
    held = send(running.results.get(), host)
    done = send(finished.results.get(), host)

    reply = ask(host, now=LATER, free_slots=0, results=[success(done.pk)],
                in_progress=[held.pk], in_progress_complete=True)

    assert reply["tasks"] == [] and reply["accepted"] == [done.pk]
    assert Result.objects.get(pk=held.pk).sent_time == NOW


def test_without_the_flag_a_missing_task_is_left_alone():
    host = make_host()
    replica = send(make_workunit().results.first(), host)

    reply = ask(host, now=LATER, free_slots=0, in_progress=[])

    assert reply["tasks"] == []
    replica.refresh_from_db()
    assert (replica.server_state, replica.sent_time) == (ServerState.IN_PROGRESS, NOW)


def test_another_hosts_tasks_are_never_sent_even_of_the_same_volunteer():
    volunteer = make_volunteer()
    host, sibling, stranger = make_host(volunteer=volunteer), make_host(volunteer=volunteer), \
        make_host()
    first, second = make_workunit(), make_workunit()
    send(first.results.first(), sibling)
    send(second.results.first(), stranger)

    reply = ask(host, now=LATER, free_slots=0, in_progress=[], in_progress_complete=True)

    assert reply["tasks"] == []
    assert not Result.objects.filter(host=host).exists()
    assert set(Result.objects.filter(server_state=ServerState.IN_PROGRESS)
               .values_list("sent_time", flat=True)) == {NOW}


def test_a_lost_task_the_host_cannot_finish_in_time_is_given_up_and_replaced(settings):
    from apps.workunits.transitioner import transition_pass

    settings.RESULT_GRACE_SECONDS = 300
    workunit = make_workunit(delay_bound=600, cost=60_000_000, min_quorum=1, target_nresults=1,
                             replicas=1)
    host = make_host(speed=200_000.0)  # 300 s of work: fits the 600 s window when sent
    replica = send(workunit.results.get(), host)
    Result.objects.filter(pk=replica.pk).update(
        report_deadline=NOW + timedelta(seconds=600 + 300))
    too_late = NOW + timedelta(seconds=400)  # 200 s left: not enough

    reply = ask(host, now=too_late, free_slots=0, in_progress=[], in_progress_complete=True)

    assert reply["tasks"] == []
    replica.refresh_from_db()
    assert replica.server_state == ServerState.IN_PROGRESS
    assert replica.report_deadline < too_late  # given up: the transitioner times it out now
    workunit.refresh_from_db()
    assert workunit.transition_time == too_late
    transition_pass(workunit_ids=[workunit.pk], now=too_late)
    replica.refresh_from_db()
    assert (replica.server_state, replica.outcome) == (ServerState.OVER, Outcome.NO_REPLY)
    assert workunit.results.filter(server_state=ServerState.UNSENT).count() == 1


def test_a_lost_task_past_its_deadline_is_given_up_even_on_an_unmeasured_host():
    host = make_host(speed=0.0)
    replica = send(make_workunit(delay_bound=600).results.first(), host)  # due NOW + 1 h
    in_grace = NOW + timedelta(hours=1, seconds=10)
    Result.objects.filter(pk=replica.pk).update(report_deadline=NOW + timedelta(hours=1, minutes=5))

    reply = ask(host, now=in_grace, free_slots=0, in_progress=[], in_progress_complete=True)

    assert reply["tasks"] == []
    assert Result.objects.get(pk=replica.pk).report_deadline < in_grace


def test_a_lost_task_no_longer_needed_is_released_without_blame():
    workunit = make_workunit()
    host = make_host()
    replica = send(workunit.results.first(), host)
    WorkUnit.objects.filter(pk=workunit.pk).update(canonical_result=workunit.results.last())

    reply = ask(host, now=LATER, free_slots=0, in_progress=[], in_progress_complete=True)

    assert reply["tasks"] == []
    replica.refresh_from_db()
    assert (replica.server_state, replica.outcome) == (ServerState.OVER, Outcome.DIDNT_NEED)


def test_a_lost_task_decided_after_it_was_read_is_released_not_sent(monkeypatch):
    """The lost replicas are read before their work units are locked: a validator that decides
    one in between must not have it sent again."""
    from apps.workunits import scheduler

    workunit = make_workunit()
    host = make_host()
    replica = send(workunit.results.first(), host)
    read = scheduler._lost_rows

    def read_then_validator_commits(*args, **kwargs):
        rows = read(*args, **kwargs)
        WorkUnit.objects.filter(pk=workunit.pk).update(canonical_result=workunit.results.last())
        return rows

    monkeypatch.setattr(scheduler, "_lost_rows", read_then_validator_commits)

    reply = ask(host, now=LATER, free_slots=0, in_progress=[], in_progress_complete=True)

    assert reply["tasks"] == []
    replica.refresh_from_db()
    assert (replica.server_state, replica.outcome) == (ServerState.OVER, Outcome.DIDNT_NEED)


def test_a_too_old_client_gets_its_lost_tasks_given_up_not_sent(settings):
    host = make_host()
    replica = send(make_workunit().results.first(), host)
    settings.MIN_CLIENT_VERSION = "0.2.0"

    reply = ask(host, now=LATER, in_progress=[], in_progress_complete=True)

    assert reply["tasks"] == [] and reply["reason"] == protocol.REASON_CLIENT_TOO_OLD
    assert Result.objects.get(pk=replica.pk).report_deadline < LATER


def test_re_sent_tasks_fill_the_request_before_new_work():
    campaign = make_campaign(min_quorum=1, target_nresults=1)
    lost_unit, *_ = (make_workunit(campaign=campaign, cost=1_000) for _ in range(4))
    host = make_host(speed=1.0)  # 1000 s a task
    lost = send(lost_unit.results.get(), host)

    one_slot = ask(host, now=LATER, free_slots=1, work_seconds=500.0, in_progress=[],
                   in_progress_complete=True)
    assert [t["result_id"] for t in one_slot["tasks"]] == [lost.pk]

    Result.objects.filter(pk=lost.pk).update(acked_time=LATER)
    three = ask(host, now=LATER, free_slots=3, work_seconds=2_500.0, in_progress=[],
                in_progress_complete=True)
    ids = [t["result_id"] for t in three["tasks"]]
    assert ids[0] == lost.pk and len(ids) == 3  # the lost one, then 1500 s of new work
    assert three["reason"] is None
    assert three["message"] == "Re-sent 1 lost task. Sent 2 tasks."
    host.refresh_from_db()
    assert host.results_today == 2


def test_re_sent_tasks_queue_on_the_hosts_slots_before_new_work():
    campaign = make_campaign(min_quorum=1, target_nresults=1)
    lost_unit, _ = (make_workunit(campaign=campaign, cost=2_000, delay_bound=3_600)
                    for _ in range(2))
    host = make_host(speed=1.0)  # 2000 s a task: two in a row miss the 3600 s deadline
    lost = send(lost_unit.results.get(), host)
    Result.objects.filter(pk=lost.pk).update(report_deadline=LATER + timedelta(hours=2))

    reply = ask(host, now=LATER, free_slots=2, work_seconds=4_000.0, in_progress=[],
                in_progress_complete=True, slot_queue_seconds=[0.0])

    assert [t["result_id"] for t in reply["tasks"]] == [lost.pk]


def test_the_re_sent_tasks_per_call_are_bounded(monkeypatch):
    monkeypatch.setattr(scheduler_module, "MAX_TASKS_PER_REQUEST", 2)
    campaign = make_campaign(min_quorum=1, target_nresults=1)
    host = make_host()
    lost = [send(make_workunit(campaign=campaign).results.get(), host) for _ in range(3)]

    first = ask(host, now=LATER, free_slots=0, in_progress=[], in_progress_complete=True)
    second = ask(host, now=LATER, free_slots=0, in_progress=[t["result_id"]
                                                             for t in first["tasks"]],
                 in_progress_complete=True)

    assert [t["result_id"] for t in first["tasks"]] == [r.pk for r in lost[:2]]
    assert [t["result_id"] for t in second["tasks"]] == [lost[2].pk]


# --- adaptive replication ----------------------------------------------------------------------


class FixedRandom(random.Random):
    def __init__(self, value):
        super().__init__(0)
        self.value = value

    def random(self):
        return self.value


def test_a_long_trusted_host_may_run_a_work_unit_alone():
    workunit = make_workunit(replicas=2)
    host = make_host(consecutive_valid=20)  # trusted with probability 0.95

    reply = ask(host, rng=FixedRandom(0.5))

    [task] = reply["tasks"]
    workunit.refresh_from_db()
    assert (workunit.min_quorum, workunit.target_nresults) == (1, 1)
    sibling = workunit.results.exclude(pk=task["result_id"]).get()
    assert (sibling.server_state, sibling.outcome) == (ServerState.OVER, Outcome.DIDNT_NEED)


@pytest.mark.parametrize(("consecutive_valid", "draw"), [(20, 0.96), (9, 0.0)])
def test_spot_checks_and_short_records_keep_replication(consecutive_valid, draw):
    workunit = make_workunit(replicas=2)

    ask(make_host(consecutive_valid=consecutive_valid), rng=FixedRandom(draw))

    workunit.refresh_from_db()
    assert (workunit.min_quorum, workunit.target_nresults) == (2, 2)
    assert workunit.results.filter(server_state=ServerState.UNSENT).count() == 1


def test_trust_applies_only_to_the_first_replica_sent():
    workunit = make_workunit(replicas=2)
    ask(make_host())

    ask(make_host(consecutive_valid=50), rng=FixedRandom(0.0))

    workunit.refresh_from_db()
    assert workunit.min_quorum == 2
    assert workunit.results.filter(server_state=ServerState.IN_PROGRESS).count() == 2


# --- concurrency (PostgreSQL) ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_never_share_a_replica_nor_give_a_volunteer_two_of_one_work_unit():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: SQLite serialises writers, so there is no "
                    "concurrency to test here (run with DATABASE_URL=postgres://…)")
    campaign = make_campaign()
    for _ in range(40):
        make_workunit(campaign=campaign, replicas=2)
    hosts = [make_host() for _ in range(16)]
    shared = make_volunteer()
    hosts += [make_host(volunteer=shared), make_host(volunteer=shared)]
    barrier = threading.Barrier(len(hosts))
    replies: dict[int, list[dict]] = {host.pk: [] for host in hosts}
    failures: list[BaseException] = []

    def worker(host: Host) -> None:
        try:
            barrier.wait(timeout=30)
            idle = 0
            for _ in range(20):
                reply = scheduler_request(
                    host=host, client_version="0.1.0", now=timezone.now(),
                    request={"free_slots": 3, "work_seconds": 1e6, "datasets": []})
                replies[host.pk].append(reply)
                idle = idle + 1 if not reply["tasks"] else 0
                if idle >= 3:
                    break
        except BaseException as exc:  # reported below; a thread must not die silently
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(host,)) for host in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not failures, failures
    assert not any(thread.is_alive() for thread in threads)
    given = [(host_id, task["result_id"]) for host_id, rs in replies.items() for reply in rs
             for task in reply["tasks"]]
    result_ids = [result_id for _, result_id in given]
    assert len(result_ids) == len(set(result_ids)), "a replica was given twice"
    assert len(result_ids) >= 60  # most of the 80 went out despite the contention
    sent = Result.objects.filter(server_state=ServerState.IN_PROGRESS)
    assert sorted(sent.values_list("pk", flat=True)) == sorted(result_ids)
    assert {(r.pk, r.host_id) for r in sent} == {(rid, hid) for hid, rid in given}
    per_volunteer = Counter(sent.values_list("workunit_id", "volunteer_id"))
    assert max(per_volunteer.values()) == 1, "a volunteer got two replicas of one work unit"
    shared_units = [wu for (wu, vol) in per_volunteer if vol == shared.pk]
    assert len(shared_units) == len(set(shared_units))


# --- cost --------------------------------------------------------------------------------------


def test_a_report_plus_a_claim_costs_a_bounded_number_of_statements(django_assert_max_num_queries):
    """One report, one ack and a claim of four: per-row claims are one conditional UPDATE, the
    transitioner's wake is queued inside the transaction, and a stored result is not acked."""
    campaign = make_campaign(min_quorum=1, target_nresults=1)
    workunits = [make_workunit(campaign=campaign) for _ in range(6)]
    host = make_host()
    replica = send(workunits[0].results.first(), host)
    host.refresh_from_db()
    # lock volunteer, read host, read reported rows, lock work unit, store report, wake work
    # unit, queue transitioner, active campaigns, claim select, claim update, deadline update,
    # host update; and the transaction's begin/commit (savepoint/release here).
    with django_assert_max_num_queries(14):
        reply = scheduler_request(
            host=host, client_version="0.1.0", now=NOW,
            request={"results": [success(replica.pk)], "acks": [replica.pk], "free_slots": 4,
                     "work_seconds": 4 * 3600.0, "datasets": [campaign.dataset.sha256]})
    assert reply["accepted"] == [replica.pk]
    assert len(reply["tasks"]) == 4
    assert Result.objects.filter(host=host, server_state=ServerState.IN_PROGRESS).count() == 4


def test_a_complete_list_costs_one_statement_more(django_assert_max_num_queries):
    """The lost-task check is one SELECT when nothing is lost (the usual case)."""
    campaign = make_campaign(min_quorum=1, target_nresults=1)
    workunits = [make_workunit(campaign=campaign) for _ in range(6)]
    host = make_host()
    replica = send(workunits[0].results.first(), host)
    running = send(workunits[1].results.first(), host)
    host.refresh_from_db()
    with django_assert_max_num_queries(15):
        reply = scheduler_request(
            host=host, client_version="0.1.0", now=NOW,
            request={"results": [success(replica.pk)], "acks": [replica.pk],
                     "in_progress": [running.pk], "in_progress_complete": True,
                     "free_slots": 4, "work_seconds": 4 * 3600.0,
                     "datasets": [campaign.dataset.sha256]})
    assert reply["accepted"] == [replica.pk]
    assert len(reply["tasks"]) == 4


def test_a_batch_costs_as_many_statements_as_one_task(django_assert_max_num_queries):
    """A many-core host reports, acks and heartbeats many tasks and gets many: the statements
    do not grow with the number of tasks (one UPDATE stores every report, one records every
    ack and heartbeat), and each row still gets its own values."""
    campaign = make_campaign(min_quorum=1, target_nresults=1)
    workunits = [make_workunit(campaign=campaign) for _ in range(40)]
    host = make_host(cpu_count=16)
    reported = [send(wu.results.first(), host) for wu in workunits[:8]]
    running = [send(wu.results.first(), host) for wu in workunits[8:16]]
    error = reported.pop()
    host.refresh_from_db()
    with django_assert_max_num_queries(15):
        reply = scheduler_request(
            host=host, client_version="0.1.0", now=NOW + timedelta(seconds=100),
            request={"results": [success(r.pk, digest=f"{i:064x}", cpu_time=float(i + 1),
                                         wall_time=float(i + 1))
                                 for i, r in enumerate(reported)]
                     + [{"result_id": error.pk, "status": "error", "error": "out of memory"}],
                     "acks": [r.pk for r in running],
                     "in_progress": [r.pk for r in running],
                     "progress": [{"result_id": r.pk, "fraction_done": i / 10}
                                  for i, r in enumerate(running)],
                     "free_slots": 16, "work_seconds": 16 * 3600.0,
                     "datasets": [campaign.dataset.sha256]})
    assert reply["accepted"] == [r.pk for r in reported] + [error.pk]
    assert reply["rejected"] == [] and reply["abort"] == []
    assert len(reply["tasks"]) == 16
    for i, r in enumerate(reported):
        r.refresh_from_db()
        assert (r.server_state, r.outcome, r.validate_state) == (
            ServerState.OVER, Outcome.SUCCESS, ValidateState.INIT)
        assert r.digest == f"{i:064x}" and r.output["digest"] == r.digest
        assert r.cpu_time == r.wall_time == float(i + 1)
        assert r.received_time == NOW + timedelta(seconds=100)
    error.refresh_from_db()
    assert (error.server_state, error.outcome, error.validate_state) == (
        ServerState.OVER, Outcome.CLIENT_ERROR, ValidateState.INVALID)
    assert error.error_message == "out of memory" and error.output is None
    for i, r in enumerate(running):
        r.refresh_from_db()
        assert r.server_state == ServerState.IN_PROGRESS
        assert r.acked_time == NOW + timedelta(seconds=100)
        assert r.fraction_done == pytest.approx(i / 10)
