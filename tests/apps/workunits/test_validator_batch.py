"""The daemons in batches: many work units to a transaction, each handled as it would be alone.

One validator batch holds a work unit whose replicas agree, one whose replicas disagree, one
whose two replicas agree on a forgery, one of a campaign finished meanwhile, and one whose
replicas replay the answer validated for an earlier work unit *of the same batch*; one host
appears in several of them. Every outcome must be the one that work unit gets when validated
alone (batch of one), and the statements a pass costs must not grow with its work units.
"""

from __future__ import annotations

import copy
import logging

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from apps.accounts.models import Host
from apps.credit.models import CreditGrant
from apps.workunits import assimilator as assimilator_module
from apps.workunits import transitioner as transitioner_module
from apps.workunits import validator as validator_module
from apps.workunits.assimilator import assimilate_pass
from apps.workunits.campaigns import campaign_finish, campaign_start
from apps.workunits.models import Campaign, Result, WorkUnit
from apps.workunits.states import AssimilateState, CampaignState, ErrorMask, ValidateState
from apps.workunits.transitioner import transition_pass
from apps.workunits.validator import validate_pass
from tests.apps.workunits.test_validator import (
    T0,
    engine_output,
    forged_metrics,
    make_campaign,
    make_host,
    make_workunit,
    run_replica,
    states,
)

pytestmark = pytest.mark.django_db

V, INV, INC, NOT_CHECKED = (ValidateState.VALID, ValidateState.INVALID,
                            ValidateState.INCONCLUSIVE, ValidateState.INIT)


def _scenario() -> dict[str, object]:
    shared = make_host()  # in the agreeing work unit (first) and among the forgers (later)
    Host.objects.filter(pk=shared.pk).update(max_results_day=10)
    agree = make_workunit()
    run_replica(agree, shared, engine_output(agree))
    run_replica(agree, make_host(), engine_output(agree))

    disagree = make_workunit()
    other = engine_output(disagree)
    other["digest"] = "1" * 64
    run_replica(disagree, make_host(), engine_output(disagree))
    run_replica(disagree, make_host(), other)

    forged_wu = make_workunit()
    forged = forged_metrics(forged_wu)
    run_replica(forged_wu, shared, copy.deepcopy(forged))
    run_replica(forged_wu, make_host(consecutive_valid=4), copy.deepcopy(forged))

    finished = make_workunit()
    run_replica(finished, make_host(), engine_output(finished))
    run_replica(finished, make_host(), engine_output(finished))

    # Two islands of one campaign: island 0 is validated in this batch, then island 1's
    # replicas replay island 0's answer.
    earlier, replayed = campaign_start(campaign=make_campaign(islands=2), now=T0)
    for _ in range(2):
        run_replica(earlier, make_host(), engine_output(earlier))
    for _ in range(2):
        run_replica(replayed, make_host(), engine_output(earlier))

    assert transition_pass(now=T0) == 6
    assert WorkUnit.objects.filter(need_validate=True).count() == 6
    campaign_finish(campaign=finished.campaign, now=T0)  # its work unit is cancelled
    return {"shared": shared, "agree": agree, "disagree": disagree, "forged": forged_wu,
            "finished": finished, "earlier": earlier, "replayed": replayed}


@pytest.mark.parametrize("batch", [1, 50])
def test_a_batch_handles_each_work_unit_as_it_would_alone(batch, monkeypatch, caplog):
    monkeypatch.setattr(validator_module, "VALIDATE_BATCH_SIZE", batch)
    s = _scenario()
    with caplog.at_level(logging.WARNING, logger="apps.workunits.validator"):
        assert validate_pass(now=T0) == 6
    wus = {name: WorkUnit.objects.get(pk=wu.pk) for name, wu in s.items()
           if isinstance(wu, WorkUnit)}
    assert not any(wu.need_validate for wu in wus.values())

    agree = wus["agree"]
    assert agree.canonical_result_id is not None
    assert agree.assimilate_state == AssimilateState.READY
    assert [x[2] for x in states(agree)] == [V, V]
    assert CreditGrant.objects.filter(result__workunit=agree).count() == 2

    disagree = wus["disagree"]
    assert disagree.canonical_result_id is None and disagree.target_nresults == 3
    assert [x[2] for x in states(disagree)] == [INC, INC]

    forged = wus["forged"]
    assert forged.canonical_result_id is None and forged.error_mask == 0
    assert [x[2] for x in states(forged)] == [INV, INV]
    assert all("final_equity" in r.error_message
               for r in Result.objects.filter(workunit=forged))

    finished = wus["finished"]
    assert finished.error_mask & ErrorMask.CANCELLED and finished.canonical_result_id is None
    assert [x[2] for x in states(finished)] == [NOT_CHECKED, NOT_CHECKED]  # not judged

    assert wus["earlier"].canonical_result_id is not None
    replayed = wus["replayed"]
    assert replayed.canonical_result_id is None
    assert [x[2] for x in states(replayed)] == [INV, INV]
    assert all("answer of another work unit" in r.error_message
               for r in Result.objects.filter(workunit=replayed))

    # Credit only for the two agreeing work units' replicas, once each, totals = ledger.
    valid = Result.objects.filter(validate_state=V)
    assert valid.count() == 4
    assert CreditGrant.objects.count() == 4
    for r in valid:
        assert r.volunteer.total_credit == pytest.approx(r.workunit.credit)
    # The shared host: valid (confirmed) in the first work unit, then caught forging; in that
    # order its figures move, as they would one work unit after the other.
    shared = Host.objects.get(pk=s["shared"].pk)
    assert (shared.n_valid, shared.n_invalid, shared.consecutive_valid) == (1, 1, 0)
    assert shared.max_results_day == 20 - 1  # doubled, then one less
    assert shared.total_credit == pytest.approx(agree.credit)

    # The rest of the way: the cancelled one and the others are wound down and assimilated.
    transition_pass(now=T0)
    assert [x[2] for x in states(WorkUnit.objects.get(pk=finished.pk))] == [
        ValidateState.NO_CHECK, ValidateState.NO_CHECK]
    assimilate_pass(now=T0)
    assert not WorkUnit.objects.filter(assimilate_state=AssimilateState.READY).exists()
    assert Campaign.objects.get(pk=finished.campaign_id).state == CampaignState.FINISHED


def _flagged_workunits(n: int) -> list[WorkUnit]:
    """``n`` work units (islands of one campaign), each with two right answers reported."""
    wus = campaign_start(campaign=make_campaign(islands=n), now=T0)
    for wu in wus:
        run_replica(wu, make_host(), engine_output(wu))
        run_replica(wu, make_host(), engine_output(wu))
    return wus


def _statements(func) -> int:
    with CaptureQueriesContext(connection) as captured:
        func()
    return len(captured.captured_queries)


def test_the_statements_of_a_pass_do_not_grow_with_its_work_units(monkeypatch):
    # Hall-of-fame entries are written one by one (each may meet an earlier find): left out.
    monkeypatch.setattr(assimilator_module, "_strategy_record", lambda **kwargs: None)
    counts = []
    for n in (2, 6):
        _flagged_workunits(n)
        transitions = _statements(lambda: transition_pass(now=T0))
        validations = _statements(lambda: validate_pass(now=T0))
        assimilations = _statements(lambda: assimilate_pass(now=T0))
        counts.append((transitions, validations, assimilations))
        assert not WorkUnit.objects.filter(need_validate=True).exists()
        assert not WorkUnit.objects.filter(assimilate_state=AssimilateState.READY).exists()
    assert counts[0] == counts[1], counts


def test_a_row_changed_under_a_batch_leaves_only_its_work_unit_for_later(monkeypatch, caplog):
    wus = _flagged_workunits(4)
    victim = wus[2]
    decide = transitioner_module._transition_decide

    def decide_and_interfere(wu, results, writes):
        decide(wu, results, writes)
        if wu.pk == victim.pk:  # another process changes it between our read and our write
            WorkUnit.objects.filter(pk=wu.pk).update(target_nresults=F("target_nresults") + 1)

    monkeypatch.setattr(transitioner_module, "_transition_decide", decide_and_interfere)
    with caplog.at_level(logging.INFO, logger="apps.workunits.transitioner"):
        assert transition_pass(now=T0) == 3
    assert "changed during its pass" in caplog.text
    flagged = set(WorkUnit.objects.filter(need_validate=True).values_list("id", flat=True))
    assert flagged == {wu.pk for wu in wus if wu.pk != victim.pk}
    assert WorkUnit.objects.get(pk=victim.pk).transition_time == T0  # still due


def test_a_work_unit_that_fails_does_not_hold_up_its_batch(monkeypatch, caplog):
    wus = _flagged_workunits(3)
    transition_pass(now=T0)
    broken = wus[1]
    WorkUnit.objects.filter(pk=broken.pk).update(payload={"broken": True})
    with caplog.at_level(logging.ERROR, logger="apps.workunits.validator"):
        assert validate_pass(now=T0) == 2
    assert f"work unit {broken.pk} failed" in caplog.text
    assert list(WorkUnit.objects.filter(need_validate=True).values_list("id", flat=True)) == [
        broken.pk]
    assert WorkUnit.objects.filter(canonical_result__isnull=False).count() == 2


def test_an_assimilator_batch_moves_each_campaign_once_and_finishes_it():
    campaign = make_campaign(islands=3)
    wus = campaign_start(campaign=campaign, now=T0)
    for wu in wus:
        run_replica(wu, make_host(), engine_output(wu))
        run_replica(wu, make_host(), engine_output(wu))
    transition_pass(now=T0)
    validate_pass(now=T0)
    assert assimilate_pass(now=T0) == 3
    campaign.refresh_from_db()
    assert campaign.epochs_done == 3 and campaign.state == CampaignState.FINISHED
    assert campaign.strategies_tried == sum(engine_output(wu)["evaluated"] for wu in wus)
    assert assimilate_pass(now=T0) == 0  # nothing twice
