"""The assimilator (hall of fame, statistics, next epochs with migrants, budget) and the file
deleter."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from apps.workunits.assimilator import HALL_OF_FAME_MIN_FITNESS, assimilate_pass
from apps.workunits.campaigns import campaign_start
from apps.workunits.data import load_dataset
from apps.workunits.file_deleter import file_delete_pass
from apps.workunits.models import Campaign, Result, Strategy, WorkUnit
from apps.workunits.states import (
    AssimilateState,
    CampaignState,
    ErrorMask,
    FileDeleteState,
)
from apps.workunits.transitioner import transition_pass
from tests.apps.workunits.test_validator import (
    T0,
    daemons,
    engine_output,
    make_campaign,
    make_host,
    run_replica,
)
from worker_client.engine import Genome, backtest
from worker_client.engine.ga import GASettings

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.FILE_DELETE_DELAY_SECONDS = 3600


def distinct(genomes: list[dict]) -> list[dict]:
    """Genome dicts without repeats, first occurrence kept (a population may hold twins)."""
    seen: set[str] = set()
    out = []
    for genome in genomes:
        key = json.dumps(genome, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(genome)
    return out


def complete(wu: WorkUnit, hosts, now=T0) -> None:
    for host in hosts:
        run_replica(wu, host, engine_output(wu), now=now)
    daemons(now)


def test_canonical_answer_enters_the_hall_of_fame_with_server_computed_out_of_sample():
    campaign = make_campaign(ga_settings={"population_size": 8, "elite": 1, "immigrants": 1,
                                          "top_k": 4, "min_trades": 0})
    (wu,) = campaign_start(campaign=campaign, now=T0)
    finder, confirmer = make_host(), make_host()
    complete(wu, [finder, confirmer])
    assert assimilate_pass(now=T0) == 1
    output = engine_output(wu)
    expected = [t for t in output["top"] if t["fitness"] > HALL_OF_FAME_MIN_FITNESS]
    assert expected, "the test data set should yield at least one profitable strategy"
    assert Strategy.objects.filter(campaign=campaign).count() == len(expected)
    settings = GASettings.from_dict(wu.payload["settings"])
    data = load_dataset(campaign.dataset)
    for entry in expected:
        genome = Genome.from_dict(entry["genome"])
        strategy = Strategy.objects.get(campaign=campaign, genome_hash=genome.hash)
        assert strategy.in_sample == entry["metrics"] and strategy.fitness == entry["fitness"]
        oos = backtest(data, genome, costs=settings.costs, initial_cash=settings.initial_cash,
                       start=1_500, stop=2_000).metrics
        assert strategy.out_sample == oos.to_dict()
        assert strategy.found_by == finder.volunteer
        assert list(strategy.confirmed_by.all()) == [confirmer.volunteer]
    campaign.refresh_from_db()
    assert campaign.epochs_done == 1 and campaign.candle_evaluations == wu.cost
    assert campaign.strategies_tried == output["evaluated"]
    assert (campaign.trials_sharpe_n, campaign.trials_sharpe_sum,
            campaign.trials_sharpe_sq_sum) == (output["trials"]["n"],
                                               output["trials"]["sharpe_sum"],
                                               output["trials"]["sharpe_sq_sum"])
    assert campaign.trials_sharpe_n >= 2
    assert campaign.best_fitness == max(t["fitness"] for t in output["top"])
    wu.refresh_from_db()
    assert wu.assimilate_state == AssimilateState.DONE
    assert assimilate_pass(now=T0) == 0  # idempotent


def test_strategies_need_enough_trades():
    campaign = make_campaign(ga_settings={"population_size": 8, "elite": 1, "immigrants": 1,
                                          "top_k": 4, "min_trades": 10_000})
    (wu,) = campaign_start(campaign=campaign, now=T0)
    complete(wu, [make_host(), make_host()])
    assimilate_pass(now=T0)
    assert not Strategy.objects.exists()


def test_next_epoch_starts_from_survivors_plus_the_neighbours_best():
    campaign = make_campaign(islands=2, budget_epochs=2, migrants=2)
    wu0, wu1 = campaign_start(campaign=campaign, now=T0)
    hosts = [make_host(), make_host()]
    complete(wu0, hosts)
    assimilate_pass(now=T0)
    nxt = WorkUnit.objects.get(campaign=campaign, island=0, epoch=1)
    own = engine_output(wu0)["population"]
    # Island 1 has no assimilated epoch yet: no migrants for island 0.
    assert nxt.payload["start_population"] == distinct(own[:-2])
    assert nxt.payload["seed"] != wu0.payload["seed"]
    assert Result.objects.filter(workunit=nxt).count() == campaign.target_nresults
    complete(wu1, hosts)
    assimilate_pass(now=T0)
    nxt1 = WorkUnit.objects.get(campaign=campaign, island=1, epoch=1)
    expected = distinct(engine_output(wu1)["population"][:-2] + own[:2])
    assert nxt1.payload["start_population"] == expected  # island 0's best two came over


def test_campaign_finishes_when_every_island_has_run_its_budget():
    campaign = make_campaign(islands=2, budget_epochs=2)
    hosts = [make_host(), make_host()]
    campaign_start(campaign=campaign, now=T0)
    for _ in range(10):
        pending = WorkUnit.objects.filter(campaign=campaign, canonical_result__isnull=True,
                                          error_mask=0)
        for wu in pending:
            complete(wu, hosts)
        assimilate_pass(now=T0)
        campaign.refresh_from_db()
        if campaign.state == CampaignState.FINISHED:
            break
    assert campaign.state == CampaignState.FINISHED
    assert WorkUnit.objects.filter(campaign=campaign).count() == 4
    assert campaign.epochs_done == 4
    assert not WorkUnit.objects.filter(campaign=campaign, epoch__gte=2).exists()


def test_errored_workunit_is_assimilated_and_the_island_continues_from_its_last_good_epoch():
    campaign = make_campaign(budget_epochs=3, max_error_results=0)
    (wu0,) = campaign_start(campaign=campaign, now=T0)
    complete(wu0, [make_host(), make_host()])
    assimilate_pass(now=T0)
    wu1 = WorkUnit.objects.get(campaign=campaign, epoch=1)
    run_replica(wu1, make_host(), None)
    transition_pass(now=T0)
    wu1.refresh_from_db()
    assert wu1.error_mask == ErrorMask.TOO_MANY_ERROR_RESULTS
    assert assimilate_pass(now=T0) == 1
    wu1.refresh_from_db()
    assert wu1.assimilate_state == AssimilateState.DONE
    campaign.refresh_from_db()
    assert campaign.epochs_done == 2 and campaign.candle_evaluations == wu0.cost
    wu2 = WorkUnit.objects.get(campaign=campaign, epoch=2)
    assert wu2.payload["start_population"] == distinct(engine_output(wu0)["population"][:-2])


def test_readiness_without_an_answer_is_recorded_as_no_canonical_result():
    campaign = make_campaign()
    (wu,) = campaign_start(campaign=campaign, now=T0)
    WorkUnit.objects.filter(pk=wu.pk).update(assimilate_state=AssimilateState.READY)
    assimilate_pass(now=T0)
    wu.refresh_from_db()
    assert wu.error_mask == ErrorMask.NO_CANONICAL_RESULT


def test_a_strategy_found_again_gains_confirmers():
    a, b, c = make_host(), make_host(), make_host()
    campaign = make_campaign(ga_settings={"population_size": 8, "elite": 1, "immigrants": 1,
                                          "top_k": 4, "min_trades": 0},
                             min_quorum=1, target_nresults=1)
    (wu,) = campaign_start(campaign=campaign, now=T0)
    complete(wu, [a])
    assimilate_pass(now=T0)
    # The same island epoch again in a second campaign would be another campaign's strategy,
    # so replay it here: a fresh copy of the work unit answered by other volunteers.
    first = Strategy.objects.filter(campaign=campaign).first()
    assert first is not None and first.found_by == a.volunteer
    twin = WorkUnit.objects.create(
        campaign=campaign, island=0, epoch=7, payload=wu.payload, cost=wu.cost,
        credit=wu.credit, min_quorum=2, target_nresults=2, max_error_results=3,
        max_total_results=8, max_success_results=4, delay_bound=3600, transition_time=T0)
    Result.objects.bulk_create([Result(workunit=twin) for _ in range(2)])
    complete(twin, [b, c])
    assimilate_pass(now=T0)
    first.refresh_from_db()
    assert first.found_by == a.volunteer
    assert set(first.confirmed_by.all()) == {b.volunteer, c.volunteer}


def test_file_deleter_clears_replica_outputs_but_the_canonical_after_the_delay():
    campaign = make_campaign(target_nresults=3, max_total_results=8)
    (wu,) = campaign_start(campaign=campaign, now=T0)
    complete(wu, [make_host(), make_host(), make_host()])
    assimilate_pass(now=T0)
    wu.refresh_from_db()
    assert file_delete_pass(now=T0 + timedelta(minutes=59)) == 0
    assert file_delete_pass(now=T0 + timedelta(hours=2)) == 1
    wu.refresh_from_db()
    assert wu.file_delete_state == FileDeleteState.DONE
    for r in Result.objects.filter(workunit=wu):
        assert r.file_delete_state == FileDeleteState.DONE
        assert (r.output is not None) == (r.pk == wu.canonical_result_id)
    assert file_delete_pass(now=T0 + timedelta(hours=3)) == 0


def test_paused_campaign_creates_no_next_epoch_until_resumed():
    from apps.workunits.campaigns import campaign_pause

    campaign = make_campaign(budget_epochs=2)
    (wu,) = campaign_start(campaign=campaign, now=T0)
    campaign_pause(campaign=campaign, now=T0)
    complete(wu, [make_host(), make_host()])
    assimilate_pass(now=T0)
    assert not WorkUnit.objects.filter(campaign=campaign, epoch=1).exists()
    campaign = Campaign.objects.get(pk=campaign.pk)
    created = campaign_start(campaign=campaign, now=T0)
    assert [(w.island, w.epoch) for w in created] == [(0, 1)]
