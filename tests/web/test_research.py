"""The research pages: campaigns, the best strategies, one strategy and its genome download,
the server's status; chart data downsampling; plotly served from the installed package.

``mined`` runs the real pipeline (engine epochs, replicas, validator, assimilator) on a small
synthetic data set, so the hall of fame, credit and canonical outputs are genuine; the
query-count tests build hundreds of rows in bulk instead.
"""

from __future__ import annotations

import json
import math
import statistics
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from django_q.models import Schedule, Task

from apps.credit.models import CreditGrant
from apps.web.charts import downsample_minmax, drawdown_of, line_series
from apps.workunits import selectors
from apps.workunits.assimilator import assimilate_pass
from apps.workunits.campaigns import campaign_start
from apps.workunits.data import load_dataset
from apps.workunits.models import Campaign, Dataset, Result, Strategy, WorkUnit
from apps.workunits.states import (
    AssimilateState,
    CampaignState,
    Outcome,
    ServerState,
    ValidateState,
)
from apps.workunits.tasks import ASSIMILATOR, TRANSITIONER, VALIDATOR
from tests.apps.workunits.test_validator import T0, daemons, engine_output, run_replica
from tests.apps.workunits.test_validator import make_campaign as make_mining_campaign
from tests.factories import make_campaign, make_host, make_volunteer, make_workunit
from worker_client.engine import Genome, backtest
from worker_client.engine.backtest import Costs
from worker_client.engine.data import SECONDS_PER_YEAR

pytestmark = pytest.mark.django_db

GENOME_DOCUMENT_KEYS = {"strategy_id", "campaign", "genome", "dataset_sha256", "start", "stop",
                        "costs", "initial_cash", "in_sample"}


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


# --- data -------------------------------------------------------------------------------------


def mine(*, name: str = "BTC momentum", islands: int = 2, epochs: int = 2) -> Campaign:
    """A campaign mined to its budget by two honest hosts (real engine outputs)."""
    campaign = make_mining_campaign(name=name, islands=islands, budget_epochs=epochs,
                                    description="Momentum rules on five-minute candles.")
    hosts = [make_host(volunteer=make_volunteer(display_name=who)) for who in ("Ada", "Grace")]
    campaign_start(campaign=campaign, now=T0)
    for _ in range(epochs):
        for wu in WorkUnit.objects.filter(campaign=campaign, canonical_result__isnull=True,
                                          error_mask=0):
            output = engine_output(wu)
            for host in hosts:
                run_replica(wu, host, output, now=T0)
        daemons(T0)
        assimilate_pass(now=T0)
    campaign.refresh_from_db()
    return campaign


@pytest.fixture
def mined() -> Campaign:
    campaign = mine()
    assert campaign.state == CampaignState.FINISHED
    assert campaign.strategies.count() >= 2, "the test data should yield a hall of fame"
    return campaign


def metrics(*, sharpe: float, total_return: float = 0.1, n_trades: int = 30,
            n_returns: int = 1_500) -> dict:
    """Engine-shaped metrics; the per-bar moments agree with the annualised Sharpe (5 m bars)."""
    per_bar = sharpe / math.sqrt(SECONDS_PER_YEAR / 300)
    return {"final_equity": 10_000 * (1 + total_return), "net_profit": 10_000 * total_return,
            "total_return": total_return, "annual_return": total_return * 2, "sharpe": sharpe,
            "sortino": sharpe * 1.3, "max_drawdown": 0.12, "calmar": 1.5, "n_trades": n_trades,
            "win_rate": 0.55, "profit_factor": 1.4, "exposure": 0.4, "avg_trade_return": 0.002,
            "return_mean": per_bar * 0.001, "return_std": 0.001, "return_skew": -0.5,
            "return_kurtosis": 12.0, "n_returns": n_returns}


def bulk_strategies(campaign: Campaign, count: int, *, workunit: WorkUnit | None = None,
                    found_by=None) -> list[Strategy]:
    genome = Genome.sma_crossover(5, 20).to_dict()
    return Strategy.objects.bulk_create([
        Strategy(campaign=campaign, genome=genome, genome_hash=f"{campaign.pk}-{i:05d}",
                 description=Genome.from_dict(genome).describe(), fitness=1 + i / count,
                 in_sample=metrics(sharpe=1 + i / count),
                 out_sample=metrics(sharpe=(i * 37 % count) / count, n_returns=500),
                 out_sample_sharpe=(i * 37 % count) / count if i % 10 else None,
                 workunit=workunit, found_by=found_by)
        for i in range(count)])


# --- pure helpers -----------------------------------------------------------------------------


def test_downsample_keeps_short_series_whole():
    assert downsample_minmax([3.0, 1.0, 2.0], 1_000).tolist() == [0, 1, 2]


def test_downsample_bounds_the_points_and_keeps_extremes_and_ends():
    rng = np.random.default_rng(1)
    y = np.cumsum(rng.standard_normal(100_003))
    y[54_321] = y.max() + 50  # a spike
    y[12_345] = y.min() - 50  # a crash
    keep = downsample_minmax(y, 1_000)
    assert len(keep) <= 1_000
    assert np.all(np.diff(keep) > 0), "indices are strictly increasing: the order is kept"
    assert keep[0] == 0 and keep[-1] == len(y) - 1
    assert {54_321, 12_345} <= set(keep.tolist())
    # Every bucket's range survives: the downsampled drawdown is the true maximum drawdown.
    equity = np.exp(y / 100)
    assert drawdown_of(equity[keep]).min() == pytest.approx(drawdown_of(equity).min())


def test_downsample_handles_nan_and_rejects_tiny_budgets():
    y = np.full(5_000, np.nan)
    y[2_500] = 1.0
    keep = downsample_minmax(y, 100)
    assert len(keep) <= 100 and 2_500 in keep.tolist()
    with pytest.raises(ValueError):
        downsample_minmax(y, 3)


def test_line_series_rounds_and_writes_missing_values_as_null():
    series = line_series("equity", [1, 2, 3], [1.23456, math.inf, 2.0], digits=2)
    assert series == {"name": "equity", "x": [1, 2, 3], "y": [1.23, None, 2.0]}
    with pytest.raises(ValueError):
        line_series("bad", [1, 2], [1.0])


# --- plotly, served by the portal itself --------------------------------------------------------


def test_plotly_is_found_in_the_installed_package_and_collected(settings, tmp_path):
    found = finders.find("vendor/plotly.min.js")
    assert found and Path(found).stat().st_size > 1_000_000
    assert Path(found).parent.parent.name == "plotly"
    settings.STATIC_ROOT = tmp_path / "static"
    call_command("collectstatic", interactive=False, verbosity=0)
    assert (tmp_path / "static" / "vendor" / "plotly.min.js").is_file()
    assert (tmp_path / "static" / "js" / "charts.js").is_file()


def test_pages_load_charts_from_the_portal_not_a_cdn(client, mined):
    strategy = mined.strategies.first()
    for url in (reverse("campaign_detail", args=[mined.pk]),
                reverse("strategy_detail", args=[strategy.pk])):
        html = client.get(url).content.decode()
        assert '<script src="/static/vendor/plotly.min.js"></script>' in html
        assert '<script src="/static/js/charts.js"></script>' in html
        assert "cdn" not in html.lower() and 'src="http' not in html
    response = client.get("/static/vendor/plotly.min.js")  # whitenoise, from the finder
    assert response.status_code == 200
    assert b"plotly" in b"".join(response.streaming_content)[:2_000].lower()


# --- campaigns --------------------------------------------------------------------------------


def test_campaign_list_shows_public_campaigns_running_first(client):
    finished = make_campaign(name="Old search", state=CampaignState.FINISHED,
                             strategies_tried=1_234_567, candle_evaluations=5 * 10**12)
    active = make_campaign(name="Live search", state=CampaignState.ACTIVE)
    make_campaign(name="Secret draft", state=CampaignState.DRAFT)
    response = client.get(reverse("campaign_list"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "Secret draft" not in html
    assert html.index(active.name) < html.index(finished.name)
    assert "1,234,567" in html and "5 T" in html


def test_campaign_detail_shows_data_ranges_progress_chart_and_volunteers(client, mined):
    response = client.get(reverse("campaign_detail", args=[mined.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    context = response.context
    # Ranges, with dates: bars [0, 1500) then [1500, 2000) of five-minute candles.
    in_sample = context["ranges"]["in_sample"]
    out_sample = context["ranges"]["out_sample"]
    first = mined.dataset.first_bar
    assert in_sample[:2] == (0, 1_500) and out_sample[:2] == (1_500, 2_000)
    assert out_sample[2] == first + timedelta(minutes=5 * 1_500)
    assert out_sample[2].strftime("%Y-%m-%d %H:%M") in html
    # Progress: every work unit assimilated, two epochs per island.
    states = dict(context["progress"].workunits_by_state)
    assert states["assimilated"] == 4 and sum(states.values()) == 4
    assert [(i.island, i.epochs, i.assimilated) for i in context["progress"].islands] == [
        (0, 2, 2), (1, 2, 2)]
    # The fitness chart: best so far, best of each epoch, and one line per island.
    chart = json.loads(html.split('id="fitness-chart-data" type="application/json">')[1]
                       .split("</script>")[0])
    names = [s["name"] for s in chart["series"]]
    assert names == ["best so far", "best of the epoch", "island 0", "island 1"]
    assert chart["series"][0]["x"] == [0, 1]
    best = [wu.canonical_result.output["top"][0]["fitness"]
            for wu in WorkUnit.objects.filter(campaign=mined).select_related("canonical_result")]
    assert max(chart["series"][0]["y"]) == pytest.approx(max(best), abs=1e-6)
    # Top volunteers from the ledger: both hosts earned the same credit for four work units.
    volunteers = context["top_volunteers"]
    assert {v.display_name for v in volunteers} == {"Ada", "Grace"}
    assert all(v.results == 4 for v in volunteers)
    total = sum(CreditGrant.objects.filter(volunteer_id=volunteers[0].volunteer_id)
                .values_list("amount", flat=True))
    assert volunteers[0].credit == pytest.approx(total)
    assert "Momentum rules on five-minute candles." in html
    assert "population size" in html  # the GA settings, defaults filled in


def test_draft_and_missing_campaigns_are_not_found(client):
    draft = make_campaign(state=CampaignState.DRAFT)
    assert client.get(reverse("campaign_detail", args=[draft.pk])).status_code == 404
    assert client.get(reverse("campaign_detail", args=[draft.pk + 99])).status_code == 404
    assert client.get(reverse("campaign_strategies", args=[draft.pk])).status_code == 404


def test_workunit_states_read_from_flags_and_replicas():
    campaign = make_campaign()
    waiting = make_workunit(campaign=campaign)
    running = make_workunit(campaign=campaign)
    Result.objects.filter(workunit=running).update(server_state=ServerState.IN_PROGRESS)
    make_workunit(campaign=campaign, need_validate=True)
    make_workunit(campaign=campaign, assimilate_state=AssimilateState.READY)
    make_workunit(campaign=campaign, assimilate_state=AssimilateState.DONE)
    make_workunit(campaign=campaign, assimilate_state=AssimilateState.DONE, error_mask=16)
    counts = dict(selectors.workunit_state_counts(WorkUnit.objects.filter(campaign=campaign)))
    assert counts == {"errored or cancelled": 1, "assimilated": 1,
                      "waiting for the assimilator": 1, "waiting for the validator": 1,
                      "running on hosts": 1, "waiting for hosts": 1}
    assert waiting.pk


# --- the best strategies ------------------------------------------------------------------------


def test_strategies_are_ranked_by_out_of_sample_sharpe_not_in_sample(client):
    campaign = make_campaign(strategies_tried=10_000)
    low_in_high_out, high_in_low_out, unknown_out = bulk_strategies(campaign, 3)
    Strategy.objects.filter(pk=low_in_high_out.pk).update(
        out_sample_sharpe=2.0, in_sample=metrics(sharpe=0.5))
    Strategy.objects.filter(pk=high_in_low_out.pk).update(
        out_sample_sharpe=-1.0, in_sample=metrics(sharpe=6.0))
    Strategy.objects.filter(pk=unknown_out.pk).update(out_sample_sharpe=None)
    response = client.get(reverse("strategy_list"))
    ranked = [s.pk for s, _ in response.context["rows"]]
    assert ranked == [low_in_high_out.pk, high_in_low_out.pk, unknown_out.pk]
    html = response.content.decode()
    assert "Ranked by out-of-sample Sharpe ratio" in html
    assert response.context["page"].paginator.count == 3


def test_the_dsr_uses_the_campaigns_true_number_of_trials():
    few = make_campaign(strategies_tried=10)
    many = make_campaign(strategies_tried=10_000_000)
    for campaign in (few, many):
        bulk_strategies(campaign, 5)
    rows = selectors.strategy_with_statistics(
        Strategy.objects.filter(campaign__in=[few, many]).select_related("campaign__dataset")
        .order_by("pk"))
    by_campaign = {}
    for strategy, stats in rows:
        by_campaign.setdefault(strategy.campaign_id, []).append((strategy, stats))
    for (s_few, st_few), (s_many, st_many) in zip(by_campaign[few.pk], by_campaign[many.pk],
                                                  strict=True):
        assert s_few.in_sample == s_many.in_sample
        assert st_few.n_trials == 10 and st_many.n_trials == 10_000_000
        assert st_many.deflated_sharpe < st_few.deflated_sharpe <= st_few.in_sample_psr
        assert st_many.luck_benchmark_annual > st_few.luck_benchmark_annual > 0


def test_the_dsr_takes_v_from_every_trial_when_the_epochs_reported_them():
    from apps.workunits import sharpe

    sharpes = [0.01, -0.02, 0.03, 0.0, 0.05]  # per-bar Sharpe ratios of every trial
    campaign = make_campaign(strategies_tried=5, trials_sharpe_n=5,
                             trials_sharpe_sum=sum(sharpes),
                             trials_sharpe_sq_sum=sum(x * x for x in sharpes))
    (strategy,) = bulk_strategies(campaign, 1)

    trials = selectors.campaign_trials_statistics([campaign])[campaign.pk]
    stats = selectors.strategy_statistics(strategy, trials)

    assert trials.variance_of_all_trials and stats.variance_of_all_trials
    assert trials.sharpe_variance == pytest.approx(statistics.variance(sharpes))
    n = strategy.in_sample["n_returns"]
    assert stats.trials_variance == pytest.approx(
        max(statistics.variance(sharpes), sharpe.null_sharpe_variance(n)))
    older = make_campaign(strategies_tried=5)  # mined before epochs reported their trials
    bulk_strategies(older, 3)
    assert not selectors.campaign_trials_statistics([older])[older.pk].variance_of_all_trials


def test_statistics_match_the_sharpe_module_for_one_strategy():
    from apps.workunits import sharpe

    campaign = make_campaign(strategies_tried=500)
    (strategy,) = bulk_strategies(campaign, 1)
    trials = selectors.campaign_trials_statistics([campaign])[campaign.pk]
    assert trials.n_trials == 500 and trials.n_recorded == 1 and trials.sharpe_variance is None
    stats = selectors.strategy_statistics(strategy, trials)
    m = strategy.in_sample
    sr = m["return_mean"] / m["return_std"]
    variance = 1 / (m["n_returns"] - 1)  # one recorded trial: the floor, chance alone
    assert stats.trials_variance == pytest.approx(variance)
    assert stats.deflated_sharpe == pytest.approx(sharpe.deflated_sharpe_ratio(
        sharpe=sr, n_observations=m["n_returns"], n_trials=500, trials_variance=variance,
        skewness=m["return_skew"], kurtosis=m["return_kurtosis"]))


def test_campaign_strategies_page_lists_only_that_campaign(client, mined):
    other = make_campaign(name="Other search")
    bulk_strategies(other, 3)
    response = client.get(reverse("campaign_strategies", args=[mined.pk]))
    assert response.status_code == 200
    assert {s.campaign_id for s, _ in response.context["rows"]} == {mined.pk}
    assert len(response.context["rows"]) == mined.strategies.count()


def test_strategy_pages_paginate(client):
    campaign = make_campaign()
    bulk_strategies(campaign, 60)
    page3 = client.get(reverse("strategy_list"), {"page": 3})
    assert len(page3.context["rows"]) == 10
    assert page3.context["page"].start_index() == 51
    assert client.get(reverse("strategy_list"), {"page": "x"}).status_code == 200


# --- one strategy -------------------------------------------------------------------------------


def test_strategy_detail_rules_charts_trades_and_confirmations(client, mined):
    strategy = selectors.strategy_ranked(mined).first()
    response = client.get(reverse("strategy_detail", args=[strategy.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    context = response.context
    assert escape(Genome.from_dict(strategy.genome).describe()) in html
    # Equity: in-sample then out-of-sample, the boundary marked at the first out-of-sample bar.
    equity = context["equity_chart"]
    assert [s["name"] for s in equity["series"]] == ["in-sample", "out-of-sample"]
    timestamps = load_dataset(mined.dataset).timestamp
    assert equity["markers"] == [{"x": int(timestamps[1_500]) * 1000,
                                  "label": "out-of-sample →"}]
    assert equity["series"][1]["x"][0] == equity["markers"][0]["x"]
    assert equity["series"][0]["y"][-1] == pytest.approx(strategy.in_sample["final_equity"],
                                                         abs=0.01)
    drawdown = context["drawdown_chart"]["series"][0]
    assert min(drawdown["y"]) <= 0 and max(drawdown["y"]) == 0
    assert 'id="equity-chart-data"' in html and 'id="drawdown-chart-data"' in html
    # The trades are those the in-sample and out-of-sample figures count.
    assert context["in_sample_trades"] == strategy.in_sample["n_trades"]
    assert context["trade_count"] == (strategy.in_sample["n_trades"]
                                      + strategy.out_sample["n_trades"])
    # Found by the canonical replica's volunteer, confirmed by the other valid replica's.
    replicas = context["replicas"]
    assert len(replicas) == 2 and replicas[0].pk == strategy.workunit.canonical_result_id
    assert {r.volunteer.display_name for r in replicas} == {"Ada", "Grace"}
    assert strategy.found_by.display_name in html
    assert [v.pk for v in context["confirmers"]] == [
        r.volunteer_id for r in replicas if r.volunteer_id != strategy.found_by_id]
    # The one replay command, with the absolute portal URL.
    assert (f"strategy-worker replay --server http://testserver --strategy {strategy.pk}"
            in html)
    assert "out-of-sample bars never leave the" in html


def test_strategy_curves_are_cached(client, mined, monkeypatch):
    strategy = mined.strategies.first()
    url = reverse("strategy_detail", args=[strategy.pk])
    assert client.get(url).status_code == 200

    def fail(_strategy):
        raise AssertionError("the second view should use the cached curves")

    monkeypatch.setattr("apps.web.charts.strategy_backtests", fail)
    assert client.get(url).status_code == 200


def test_strategy_trades_paginate(client, mined):
    strategy = max(mined.strategies.all(), key=lambda s: s.in_sample["n_trades"])
    response = client.get(reverse("strategy_detail", args=[strategy.pk]), {"trades": 2})
    trades = response.context["trades"]
    assert trades.number == min(2, trades.paginator.num_pages)
    assert len(trades.object_list) <= 50


def test_genome_json_has_the_replay_contract_and_replays_to_the_same_trades(client, mined):
    strategy = selectors.strategy_ranked(mined).first()
    response = client.get(reverse("strategy_genome", args=[strategy.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    document = json.loads(response.content)
    assert set(document) == GENOME_DOCUMENT_KEYS
    assert document["strategy_id"] == strategy.pk and isinstance(document["strategy_id"], int)
    assert document["campaign"] == mined.name
    assert document["genome"] == Genome.from_dict(strategy.genome).to_dict()
    # The data set volunteers may download: the in-sample bars only.
    assert document["dataset_sha256"] == mined.search_dataset.sha256
    assert document["dataset_sha256"] != mined.dataset.sha256
    assert (document["start"], document["stop"]) == (0, 1_500)
    assert document["costs"] == {"fee": 0.001, "slippage": 0.0005}  # GASettings defaults
    assert document["initial_cash"] == 10_000.0 and isinstance(document["initial_cash"], float)
    assert set(document["in_sample"]) == {"trades", "total_return", "sharpe"}
    assert isinstance(document["in_sample"]["trades"], int)
    # What `strategy-worker replay` will do: the same trades and figures from the document alone.
    task_data = load_dataset(Dataset.objects.get(sha256=document["dataset_sha256"]))
    replayed = backtest(task_data, Genome.from_dict(document["genome"]),
                        costs=Costs(**document["costs"]), initial_cash=document["initial_cash"],
                        start=document["start"], stop=document["stop"]).metrics
    assert replayed.n_trades == document["in_sample"]["trades"]
    assert replayed.total_return == document["in_sample"]["total_return"]
    assert replayed.sharpe == document["in_sample"]["sharpe"]


def test_strategies_of_drafts_and_missing_ones_are_not_found(client):
    draft = make_campaign(state=CampaignState.DRAFT)
    (strategy,) = bulk_strategies(draft, 1)
    for name in ("strategy_detail", "strategy_genome"):
        assert client.get(reverse(name, args=[strategy.pk])).status_code == 404
        assert client.get(reverse(name, args=[strategy.pk + 99])).status_code == 404
    assert client.get(reverse("strategy_list")).context["rows"] == []


# --- server status ------------------------------------------------------------------------------


def test_server_status_shows_daemons_backlogs_states_and_active_hosts(client):
    now = timezone.now()
    campaign = make_campaign()
    make_workunit(campaign=campaign, need_validate=True, transition_time=now - timedelta(1))
    make_workunit(campaign=campaign, assimilate_state=AssimilateState.READY)
    make_host(last_contact=now - timedelta(minutes=5), speed=2e6)
    make_host(last_contact=now - timedelta(hours=3))
    Task.objects.create(id="a1", name="a1", func=VALIDATOR, started=now - timedelta(minutes=2),
                        stopped=now - timedelta(minutes=2), success=True, result=3)
    Task.objects.create(id="a2", name="a2", func=ASSIMILATOR, started=now - timedelta(hours=2),
                        stopped=now - timedelta(hours=2), success=False, result="boom")
    Schedule.objects.create(name="transitioner", func=TRANSITIONER,
                            schedule_type=Schedule.MINUTES, minutes=1, repeats=-1,
                            next_run=now + timedelta(seconds=30))
    response = client.get(reverse("server_status"))
    assert response.status_code == 200
    daemons_by_name = {d.name: d for d in response.context["daemons"]}
    assert list(daemons_by_name) == ["transitioner", "validator", "assimilator", "file deleter"]
    assert daemons_by_name["transitioner"].backlog == 1  # the one with a past transition time
    assert daemons_by_name["transitioner"].every_minutes == 1
    assert daemons_by_name["validator"].backlog == 1
    assert daemons_by_name["validator"].last_run_ok and daemons_by_name["validator"].last_found == 3
    assert daemons_by_name["assimilator"].backlog == 1
    assert daemons_by_name["assimilator"].last_run_ok is False
    assert daemons_by_name["assimilator"].last_failure is not None
    assert daemons_by_name["file deleter"].last_run is None
    hosts = response.context["hosts"]
    assert (hosts.active, hosts.total, hosts.active_speed) == (1, 2, 2e6)
    states = dict(response.context["workunits_by_state"])
    assert states["waiting for the validator"] == 1
    assert states["waiting for the assimilator"] == 1
    results = response.context["results_by_state"]
    assert results == [("unsent", "-", 4)]  # two work units of two replicas
    html = response.content.decode()
    assert "no recorded run" in html and "hosts active in the last hour" in html


# --- query counts with hundreds of rows ---------------------------------------------------------


@pytest.fixture
def crowded():
    """A finished campaign with 300 work units, 600 replicas, 600 credit grants from 40
    volunteers, 400 strategies (one found and confirmed by many), and 150 more campaigns."""
    dataset = make_mining_campaign().dataset  # a real data set: the detail page backtests
    campaign = make_campaign(dataset=dataset, name="Crowded", state=CampaignState.FINISHED,
                             in_sample_stop=1_500, out_sample_stop=2_000,
                             strategies_tried=2_000_000, islands=10, budget_epochs=30)
    volunteers = [make_volunteer(display_name=f"Volunteer {i:02d}") for i in range(40)]
    hosts = [make_host(volunteer=v) for v in volunteers]
    payload = {"dataset_sha256": dataset.sha256, "start": 0, "stop": 1_500, "settings": {}}
    workunits = WorkUnit.objects.bulk_create([
        WorkUnit(campaign=campaign, island=i % 10, epoch=i // 10, payload=payload, cost=10**8,
                 credit=10.0, min_quorum=2, target_nresults=2, max_error_results=3,
                 max_total_results=8, max_success_results=4, delay_bound=3600,
                 assimilate_state=AssimilateState.DONE) for i in range(300)])
    output = {"top": [{"fitness": 1.0}], "population": [], "evaluated": 100}
    results = Result.objects.bulk_create([
        Result(workunit=wu, host=hosts[(2 * i + k) % 40], volunteer=volunteers[(2 * i + k) % 40],
               server_state=ServerState.OVER, outcome=Outcome.SUCCESS,
               validate_state=ValidateState.VALID, received_time=T0, granted_credit=10.0,
               cpu_time=60.0, output={**output, "top": [{"fitness": 1.0 + i / 300}]})
        for i, wu in enumerate(workunits) for k in range(2)])
    for wu, result in zip(workunits, results[::2], strict=True):
        wu.canonical_result = result
    WorkUnit.objects.bulk_update(workunits, ["canonical_result"])
    CreditGrant.objects.bulk_create([
        CreditGrant(result=r, volunteer_id=r.volunteer_id, host_id=r.host_id, amount=10.0)
        for r in results])
    strategies = bulk_strategies(campaign, 400, workunit=workunits[0], found_by=volunteers[0])
    strategies[0].confirmed_by.add(*volunteers[1:])
    for i in range(150):
        make_campaign(name=f"Campaign {i:03d}", state=CampaignState.FINISHED,
                      dataset=dataset)
    return campaign, strategies


def test_big_pages_make_a_bounded_number_of_queries(client, crowded,
                                                    django_assert_max_num_queries):
    campaign, strategies = crowded
    client.get(reverse("strategy_detail", args=[strategies[0].pk]))  # warm the curves cache
    pages = {
        "campaign_list": (reverse("campaign_list"), 2),
        "campaign_detail": (reverse("campaign_detail", args=[campaign.pk]), 8),
        "strategy_list": (reverse("strategy_list"), 3),
        "campaign_strategies": (reverse("campaign_strategies", args=[campaign.pk]), 4),
        "strategy_detail": (reverse("strategy_detail", args=[strategies[0].pk]), 4),
        "strategy_genome": (reverse("strategy_genome", args=[strategies[0].pk]), 1),
        "server_status": (reverse("server_status"), 11),
    }
    for name, (url, most) in pages.items():
        with django_assert_max_num_queries(most, info=name):
            response = client.get(url)
        assert response.status_code == 200, name
    detail = client.get(reverse("campaign_detail", args=[campaign.pk])).context
    assert len(detail["top_volunteers"]) == 10
    assert detail["top_volunteers"][0].results == 15  # 600 replicas over 40 volunteers
    assert len(detail["fitness_chart"]["series"]) == 2  # ten islands: no line per island
    strategy = client.get(reverse("strategy_detail", args=[strategies[0].pk])).context
    assert len(strategy["confirmers"]) == 39


def test_strategy_page_survives_a_missing_data_file(client, mined, caplog):
    strategy = mined.strategies.first()
    Path(mined.dataset.file.path).unlink()
    from apps.workunits.data import clear_cache

    clear_cache()
    response = client.get(reverse("strategy_detail", args=[strategy.pk]))
    assert response.status_code == 200
    assert "not readable on this server" in response.content.decode()
    assert "cannot backtest it" in caplog.text


def test_genome_json_falls_back_to_the_campaign_when_the_work_unit_is_gone(client, mined):
    strategy = mined.strategies.first()
    Strategy.objects.filter(pk=strategy.pk).update(workunit=None)
    document = client.get(reverse("strategy_genome", args=[strategy.pk])).json()
    assert document["dataset_sha256"] == mined.task_dataset.sha256
    assert (document["start"], document["stop"]) == (mined.in_sample_start, mined.in_sample_stop)
    assert document["costs"] == {"fee": 0.001, "slippage": 0.0005}
