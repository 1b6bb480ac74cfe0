"""Two holes ``bench/cheaters.py`` found in the validator, and their fixes.

1. Trust (``consecutive_valid``) is earned only by answers another host's later report confirms.
   A replica reported after an agreeing answer was already on record may be a copy of it (a
   leak, an accomplice): it is valid and credited (no quorum can tell a copy of a correct answer
   from the answer), but it proves no computation, so it must not move its host towards running
   alone. Before: copiers earned trust by copying, were then sent work units alone, had nothing
   to copy, and replayed old answers, which were accepted.
2. Another work unit's validated answer, replayed, is rejected. Before: two hosts replaying the
   same earlier answer agreed with each other and passed the re-check (same bars), and so did a
   trusted host replaying one alone.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from apps.accounts.models import Host
from apps.workunits.campaigns import campaign_start
from apps.workunits.models import Result, WorkUnit
from apps.workunits.states import ValidateState
from tests.apps.workunits.test_validator import (
    T0,
    daemons,
    engine_output,
    make_campaign,
    make_host,
    make_workunit,
    report,
    run_replica,
    send,
)

pytestmark = pytest.mark.django_db

LATER = T0 + timedelta(minutes=5)


def cv(host: Host) -> int:
    return Host.objects.get(pk=host.pk).consecutive_valid


def test_the_replica_reported_first_earns_trust_the_one_that_agreed_later_does_not():
    wu = make_workunit()
    first, later = make_host(), make_host()
    a, b = send(wu, first), send(wu, later)
    report(a, engine_output(wu), now=T0)
    report(b, engine_output(wu), now=LATER)  # the same answer, once a's was on record
    daemons(LATER)
    assert Result.objects.get(pk=a.pk).validate_state == ValidateState.VALID
    assert Result.objects.get(pk=b.pk).validate_state == ValidateState.VALID  # still credited
    assert (cv(first), cv(later)) == (1, 0)
    assert Host.objects.get(pk=later.pk).n_valid == 1


def test_replicas_reported_at_the_same_instant_both_earn_trust():
    wu = make_workunit()
    a, b = make_host(), make_host()
    run_replica(wu, a, engine_output(wu))
    run_replica(wu, b, engine_output(wu))
    daemons()
    assert (cv(a), cv(b)) == (1, 1)


def test_a_copier_never_earns_trust_however_often_it_agrees():
    copier = make_host()
    for _ in range(12):
        wu = make_workunit()
        honest = make_host()
        report(send(wu, honest), engine_output(wu), now=T0)
        report(send(wu, copier), engine_output(wu), now=LATER)
        daemons(LATER)
    host = Host.objects.get(pk=copier.pk)
    assert (host.consecutive_valid, host.n_valid) == (0, 12)


def test_of_three_agreeing_replicas_all_but_the_last_reported_earn_trust():
    wu = make_workunit(min_quorum=3, target_nresults=3)
    hosts = [make_host() for _ in range(3)]
    replicas = [send(wu, h) for h in hosts]
    for i, r in enumerate(replicas):
        report(r, engine_output(wu), now=T0 + timedelta(minutes=i))
    daemons(T0 + timedelta(minutes=3))
    assert [cv(h) for h in hosts] == [1, 1, 0]




# --- replays ---------------------------------------------------------------------------------
# An island epoch's answer is its own: every work unit of a campaign has its own seed and start
# population, so no honest answer has the digest of another work unit's. Two hosts that replay
# the same earlier answer agree with each other and pass the re-check (the bars are the same):
# found by bench/cheaters.py, where two copiers with nothing to copy replayed one old answer.


def _two_epochs() -> list[WorkUnit]:
    """Two work units of one campaign (two islands' first epochs)."""
    return campaign_start(campaign=make_campaign(islands=2), now=T0)


def test_an_earlier_answer_replayed_by_two_hosts_is_rejected_not_a_quorum():
    earlier, wu = _two_epochs()
    run_replica(earlier, make_host(), engine_output(earlier))
    run_replica(earlier, make_host(), engine_output(earlier))
    daemons()
    assert WorkUnit.objects.get(pk=earlier.pk).canonical_result_id is not None
    replayers = [make_host(), make_host()]
    replays = [run_replica(wu, h, engine_output(earlier), now=LATER) for h in replayers]
    daemons(LATER)
    for r in replays:
        r.refresh_from_db()
        assert r.validate_state == ValidateState.INVALID
        assert "answer of another work unit" in r.error_message
    assert [cv(h) for h in replayers] == [0, 0]
    assert WorkUnit.objects.get(pk=wu.pk).canonical_result_id is None


def test_a_host_trusted_alone_cannot_replay_an_earlier_answer():
    earlier, wu = _two_epochs()
    run_replica(earlier, make_host(), engine_output(earlier))
    run_replica(earlier, make_host(), engine_output(earlier))
    daemons()
    WorkUnit.objects.filter(pk=wu.pk).update(min_quorum=1, target_nresults=1)  # trusted alone
    host = make_host(consecutive_valid=50)
    replay = run_replica(wu, host, engine_output(earlier), now=LATER)
    daemons(LATER)
    replay.refresh_from_db()
    assert replay.validate_state == ValidateState.INVALID
    assert cv(host) == 0


def test_reporting_a_pending_answer_on_another_work_unit_does_not_block_it():
    # A cheater holding replicas of both reports a's honest answer for b too, before a is
    # validated: b's replica is a wrong answer, but a's honest answers stay a's.
    a, b = _two_epochs()
    cheater = make_host()
    run_replica(b, cheater, engine_output(a))
    run_replica(a, cheater, engine_output(a))
    run_replica(a, make_host(), engine_output(a), now=LATER)
    daemons(LATER)
    assert WorkUnit.objects.get(pk=a.pk).canonical_result_id is not None
    assert not Result.objects.filter(workunit=a).exclude(
        validate_state=ValidateState.VALID).exists()


def test_honest_answers_to_two_work_units_are_both_valid():
    first, second = _two_epochs()
    for wu in (first, second):
        run_replica(wu, make_host(), engine_output(wu))
        run_replica(wu, make_host(), engine_output(wu))
    daemons()
    assert set(Result.objects.filter(workunit__in=[first, second])
               .values_list("validate_state", flat=True)) == {ValidateState.VALID}
