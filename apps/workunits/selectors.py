"""Reads for the research pages: campaigns and their progress, the hall of fame with honest
statistics, the daemons' backlogs, and what a strategy's replay needs.

Every function here is a bounded number of queries whatever the table sizes (the pages assert
their query counts); per-row figures come from annotations and one grouped query per page.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import (
    Case,
    Count,
    Exists,
    F,
    FloatField,
    IntegerField,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django_q.brokers import get_broker
from django_q.models import Schedule, Task

from apps.accounts.models import Host
from worker_client.engine import Genome, backtest
from worker_client.engine.backtest import BacktestResult
from worker_client.engine.data import SECONDS_PER_YEAR
from worker_client.engine.ga import GASettings

from . import sharpe
from .data import load_dataset
from .models import Campaign, Result, Strategy, WorkUnit
from .states import (
    AssimilateState,
    CampaignState,
    FileDeleteState,
    Outcome,
    ServerState,
    ValidateState,
)
from .tasks import ASSIMILATOR, FILE_DELETER, TRANSITIONER, VALIDATOR

# --- campaigns -------------------------------------------------------------------------------


def campaign_public_queryset() -> QuerySet[Campaign]:
    """Campaigns the public may see: all but drafts (an admin is still preparing those)."""
    return Campaign.objects.exclude(state=CampaignState.DRAFT)


def campaign_list() -> QuerySet[Campaign]:
    """Public campaigns, running ones first, each with its hall-of-fame size and best
    out-of-sample Sharpe (``hall_of_fame``, ``best_out_sample_sharpe``)."""
    order = Case(When(state=CampaignState.ACTIVE, then=Value(0)),
                 When(state=CampaignState.PAUSED, then=Value(1)),
                 default=Value(2), output_field=IntegerField())
    return (campaign_public_queryset().select_related("dataset")
            .annotate(hall_of_fame=Count("strategies"),
                      best_out_sample_sharpe=Max("strategies__out_sample_sharpe"),
                      state_order=order)
            .order_by("state_order", "-priority", "-created_at", "pk"))


def campaign_get(pk: int) -> Campaign:
    """One public campaign with its data sets and hall-of-fame size (``hall_of_fame``);
    raises ``Campaign.DoesNotExist``."""
    return (campaign_public_queryset().select_related("dataset", "search_dataset")
            .annotate(hall_of_fame=Count("strategies")).get(pk=pk))


# A work unit has no state column of its own (BOINC): its state for people is read from its
# flags and its replicas, in this order (the first that holds wins).
WORKUNIT_STATES = (
    ("errored or cancelled", Q(error_mask__gt=0)),
    ("assimilated", Q(assimilate_state=AssimilateState.DONE)),
    ("waiting for the assimilator", Q(assimilate_state=AssimilateState.READY)),
    ("waiting for the validator", Q(need_validate=True)),
    ("running on hosts", Q(has_running_replica=True)),
    ("waiting for hosts", Q()),
)


def _state_filters() -> list[tuple[str, Q]]:
    """Each state's own condition: it holds and no earlier state does."""
    filters, earlier = [], Q()
    for label, condition in WORKUNIT_STATES:
        filters.append((label, condition & ~earlier if earlier else condition))
        earlier = earlier | condition if earlier else condition
    return filters


def workunit_state_counts(workunits: QuerySet[WorkUnit] | None = None) -> list[tuple[str, int]]:
    """(state label, count) in pipeline order, for ``workunits`` (default: all). One query."""
    workunits = WorkUnit.objects.all() if workunits is None else workunits
    running = Result.objects.filter(workunit=OuterRef("pk"),
                                    server_state=ServerState.IN_PROGRESS)
    counts = (workunits.annotate(has_running_replica=Exists(running))
              .aggregate(**{f"s{i}": Count("pk", filter=condition)
                            for i, (_, condition) in enumerate(_state_filters())}))
    return [(label, counts[f"s{i}"] or 0) for i, (label, _) in enumerate(WORKUNIT_STATES)]


@dataclass(frozen=True)
class IslandProgress:
    island: int
    epochs: int  # work units created
    assimilated: int
    errored: int
    last_epoch: int


@dataclass(frozen=True)
class CampaignProgress:
    workunits_by_state: list[tuple[str, int]]
    islands: list[IslandProgress]
    epochs_budget: int  # islands × epochs per island
    cpu_seconds: float  # reported by the replicas the validator accepted

    @property
    def workunits(self) -> int:
        return sum(count for _, count in self.workunits_by_state)


def campaign_progress(campaign: Campaign) -> CampaignProgress:
    """Work units by state, epochs per island and CPU time donated. Three queries."""
    workunits = WorkUnit.objects.filter(campaign=campaign)
    islands = [
        IslandProgress(island=row["island"], epochs=row["epochs"],
                       assimilated=row["assimilated"], errored=row["errored"],
                       last_epoch=row["last_epoch"])
        for row in workunits.order_by().values("island").annotate(
            epochs=Count("pk"),
            assimilated=Count("pk", filter=Q(assimilate_state=AssimilateState.DONE,
                                             error_mask=0)),
            errored=Count("pk", filter=Q(error_mask__gt=0)),
            last_epoch=Max("epoch")).order_by("island")
    ]
    cpu = Result.objects.filter(workunit__campaign=campaign,
                                validate_state=ValidateState.VALID).aggregate(
        total=Sum("cpu_time"))["total"]
    return CampaignProgress(workunits_by_state=workunit_state_counts(workunits),
                            islands=islands,
                            epochs_budget=campaign.islands * campaign.budget_epochs,
                            cpu_seconds=cpu or 0.0)


@dataclass(frozen=True)
class EpochFitness:
    epoch: int
    island: int
    fitness: float


def campaign_fitness_by_epoch(campaign: Campaign) -> list[EpochFitness]:
    """The best in-sample fitness of each validated island epoch, by epoch then island.

    Read from each canonical result's output (its ``top`` list is best first, and the file
    deleter keeps canonical outputs), extracting only that one number in the database.
    """
    rows = (Result.objects.filter(workunit__campaign=campaign,
                                  workunit__canonical_result=F("pk"))
            .annotate(best=Cast(KT("output__top__0__fitness"), FloatField()))
            .filter(best__isnull=False).order_by("workunit__epoch", "workunit__island")
            .values_list("workunit__epoch", "workunit__island", "best"))
    return [EpochFitness(epoch=e, island=i, fitness=f) for e, i, f in rows]


# --- the hall of fame ------------------------------------------------------------------------


def strategy_ranked(campaign: Campaign | None = None) -> QuerySet[Strategy]:
    """Hall-of-fame strategies ranked by **out-of-sample** Sharpe (best first, unknown last).

    Never by in-sample figures: those are what the search maximised, so they are biased up by
    construction; the out-of-sample bars were never seen by any volunteer.
    """
    strategies = Strategy.objects.exclude(campaign__state=CampaignState.DRAFT)
    if campaign is not None:
        strategies = strategies.filter(campaign=campaign)
    return (strategies.select_related("campaign__dataset", "found_by")
            .order_by(F("out_sample_sharpe").desc(nulls_last=True), "-fitness", "pk"))


@dataclass(frozen=True)
class TrialsStatistics:
    """What the deflated Sharpe ratio needs to know about a campaign's search."""

    n_trials: int  # strategies tried by every volunteer together, kept or not
    n_recorded: int  # of which in the hall of fame
    sharpe_variance: float | None  # of the trials' in-sample per-bar Sharpe ratios
    variance_of_all_trials: bool  # True: of every trial; False: of the hall of fame only


def campaign_trials_statistics(campaigns: Iterable[Campaign]) -> dict[int, TrialsStatistics]:
    """Per campaign id, the number of trials and the spread of the trials' Sharpe ratios: of
    every trial, from the sums each validated epoch reports (engine format 2), or, for a
    campaign without them (mined by older clients), of the hall of fame's strategies, which,
    being selected, spread less (one grouped query for all of ``campaigns``)."""
    campaigns = list(campaigns)
    per_bar_sharpe = (Cast(KT("in_sample__return_mean"), FloatField())
                      / Cast(KT("in_sample__return_std"), FloatField()))
    positive_std = Q(std__gt=0)
    # Sums rather than VAR_SAMP: SQLite's stand-in raises on fewer than two values.
    rows = (Strategy.objects.filter(campaign__in=[c.pk for c in campaigns])
            .annotate(std=Cast(KT("in_sample__return_std"), FloatField()))
            .order_by().values("campaign_id")
            .annotate(n=Count("pk"), k=Count("pk", filter=positive_std),
                      s1=Sum(per_bar_sharpe, filter=positive_std),
                      s2=Sum(per_bar_sharpe * per_bar_sharpe, filter=positive_std)))
    found = {row["campaign_id"]: row for row in rows}
    out = {}
    for campaign in campaigns:
        row = found.get(campaign.pk, {"n": 0, "k": 0})
        of_all = campaign.trials_sharpe_n >= 2
        k, s1, s2 = ((campaign.trials_sharpe_n, campaign.trials_sharpe_sum,
                      campaign.trials_sharpe_sq_sum) if of_all
                     else (row["k"], row.get("s1"), row.get("s2")))
        variance = max((s2 - s1 * s1 / k) / (k - 1), 0.0) if k >= 2 else None
        out[campaign.pk] = TrialsStatistics(
            # Never fewer trials than strategies kept (a campaign mid-assimilation).
            n_trials=max(campaign.strategies_tried, row["n"], 1), n_recorded=row["n"],
            sharpe_variance=variance, variance_of_all_trials=of_all)
    return out


@dataclass(frozen=True)
class StrategyStatistics:
    """A strategy's significance. Sharpe ratios per bar unless named ``annual``."""

    deflated_sharpe: float | None  # in-sample Sharpe against the best of n_trials lucky ones
    in_sample_psr: float | None  # in-sample Sharpe against 0 (no deflation)
    out_sample_psr: float | None  # out-of-sample Sharpe against 0
    n_trials: int
    n_observations: int  # in-sample bars
    trials_variance: float | None
    variance_of_all_trials: bool  # V from every trial (else from the hall of fame only)
    luck_benchmark_annual: float | None  # SR0, annualised: what the luckiest trial shows


def _moments(metrics: dict[str, Any]) -> tuple[float | None, int, float, float]:
    sr = sharpe.per_observation_sharpe(mean=metrics.get("return_mean"),
                                       std=metrics.get("return_std"))
    n = int(metrics.get("n_returns") or 0)
    skew, kurt = metrics.get("return_skew"), metrics.get("return_kurtosis")
    # Undefined moments (a flat equity curve) leave the normal's 0 and 3.
    return sr, n, skew if skew is not None else 0.0, kurt if kurt is not None else 3.0


def strategy_statistics(strategy: Strategy, trials: TrialsStatistics) -> StrategyStatistics:
    """PSR and DSR of one strategy from its stored metrics (no query, no backtest).

    Computed on per-bar returns, T = the in-sample bars: the only returns the hall of fame
    keeps moments of. V is the recorded trials' Sharpe variance, never below the variance
    chance alone gives a Sharpe estimate over T bars (``sharpe.floored_sharpe_variance``).
    """
    sr, n, skew, kurt = _moments(strategy.in_sample or {})
    dsr = psr = variance = luck = None
    if sr is not None and n >= 2:
        variance = sharpe.floored_sharpe_variance(trials.sharpe_variance, n_observations=n)
        dsr = sharpe.deflated_sharpe_ratio(sharpe=sr, n_observations=n, n_trials=trials.n_trials,
                                           trials_variance=variance, skewness=skew,
                                           kurtosis=kurt)
        psr = sharpe.probabilistic_sharpe_ratio(sharpe=sr, n_observations=n, skewness=skew,
                                                kurtosis=kurt)
        bars_per_year = SECONDS_PER_YEAR / strategy.campaign.dataset.bar_seconds
        luck = (sharpe.expected_max_sharpe(n_trials=trials.n_trials, trials_variance=variance)
                * math.sqrt(bars_per_year))
    out_sr, out_n, out_skew, out_kurt = _moments(strategy.out_sample or {})
    out_psr = None
    if out_sr is not None:
        out_psr = sharpe.probabilistic_sharpe_ratio(sharpe=out_sr, n_observations=out_n,
                                                    skewness=out_skew, kurtosis=out_kurt)
    return StrategyStatistics(deflated_sharpe=dsr, in_sample_psr=psr, out_sample_psr=out_psr,
                              n_trials=trials.n_trials, n_observations=n,
                              trials_variance=variance,
                              variance_of_all_trials=trials.variance_of_all_trials,
                              luck_benchmark_annual=luck)


def strategy_with_statistics(strategies: Iterable[Strategy],
                             ) -> list[tuple[Strategy, StrategyStatistics]]:
    """Each strategy with its statistics: one query, for the campaigns among them."""
    strategies = list(strategies)
    campaigns = {s.campaign_id: s.campaign for s in strategies}.values()
    trials = campaign_trials_statistics(campaigns)
    return [(s, strategy_statistics(s, trials[s.campaign_id])) for s in strategies]


def strategy_get(pk: int) -> Strategy:
    """One public strategy with its campaign, data sets, work unit and finder (one query)."""
    return (Strategy.objects.exclude(campaign__state=CampaignState.DRAFT)
            .select_related("campaign__dataset", "campaign__search_dataset", "workunit",
                            "found_by")
            .get(pk=pk))


def strategy_confirmations(strategy: Strategy) -> tuple[list[Result], list[Any]]:
    """(the valid replicas of the work unit that found it, with host and volunteer, canonical
    first; every volunteer who confirmed it, also in later work units). Two queries."""
    replicas: list[Result] = []
    if strategy.workunit_id is not None:
        canonical_id = strategy.workunit.canonical_result_id if strategy.workunit else None
        replicas = list(Result.objects.filter(workunit_id=strategy.workunit_id,
                                              validate_state=ValidateState.VALID)
                        .select_related("host", "volunteer").order_by("received_time", "pk"))
        replicas.sort(key=lambda r: r.pk != canonical_id)
    confirmers = list(strategy.confirmed_by.order_by("display_name", "pk"))
    return replicas, confirmers


@dataclass(frozen=True)
class ReplaySpec:
    """What the volunteers ran for this strategy's in-sample figures, and so what a replay
    needs: the task data set, the bar range, costs and cash, from its work unit's payload
    (the campaign's current settings only when the work unit is gone)."""

    dataset_sha256: str
    start: int
    stop: int
    settings: GASettings


def strategy_replay_spec(strategy: Strategy) -> ReplaySpec:
    payload = strategy.workunit.payload if strategy.workunit is not None else None
    campaign = strategy.campaign
    if payload and "settings" in payload:
        return ReplaySpec(dataset_sha256=payload["dataset_sha256"], start=payload["start"],
                          stop=payload["stop"],
                          settings=GASettings.from_dict(payload["settings"]))
    return ReplaySpec(dataset_sha256=campaign.task_dataset.sha256,
                      start=campaign.in_sample_start, stop=campaign.in_sample_stop,
                      settings=GASettings.from_dict(campaign.ga_settings))


def strategy_genome_document(strategy: Strategy) -> dict[str, Any]:
    """The genome download: exactly what ``strategy-worker replay`` reads (keep the shape)."""
    spec = strategy_replay_spec(strategy)
    in_sample = strategy.in_sample or {}
    return {
        "strategy_id": strategy.pk,
        "campaign": strategy.campaign.name,
        "genome": Genome.from_dict(strategy.genome).to_dict(),
        "dataset_sha256": spec.dataset_sha256,
        "start": spec.start,
        "stop": spec.stop,
        "costs": {"fee": spec.settings.fee, "slippage": spec.settings.slippage},
        "initial_cash": float(spec.settings.initial_cash),
        "in_sample": {"trades": int(in_sample.get("n_trades") or 0),
                      "total_return": in_sample.get("total_return"),
                      "sharpe": in_sample.get("sharpe")},
    }


@dataclass(frozen=True)
class StrategyBacktests:
    """The strategy re-run on the server: in-sample and out-of-sample, each from flat."""

    timestamps: Any  # int64 seconds, bar open times of the whole data set
    initial_cash: float
    in_sample: BacktestResult
    out_sample: BacktestResult | None  # None when the range is too short to trade


def strategy_backtests(strategy: Strategy) -> StrategyBacktests:
    """Backtest the genome on the campaign's full data set, in-sample then out-of-sample.

    Two runs, as the figures in the tables were made (the volunteers' in-sample run, the
    assimilator's out-of-sample run), so the trades shown are the trades those figures count
    and the in-sample trades are those a replay reproduces. Indicators never read ahead, so
    the full data set gives the same in-sample bars as the task data set volunteers hold.
    """
    campaign = strategy.campaign
    spec = strategy_replay_spec(strategy)
    data = load_dataset(campaign.dataset)
    genome = Genome.from_dict(strategy.genome)
    run = {"costs": spec.settings.costs, "initial_cash": spec.settings.initial_cash}
    in_sample = backtest(data, genome, start=spec.start, stop=spec.stop, **run)
    try:
        out_sample = backtest(data, genome, start=campaign.in_sample_stop,
                              stop=campaign.out_sample_stop, **run)
    except ValueError:
        out_sample = None
    return StrategyBacktests(timestamps=data.timestamp, initial_cash=spec.settings.initial_cash,
                             in_sample=in_sample,
                             out_sample=out_sample)


# --- the server's daemons --------------------------------------------------------------------


def daemon_backlogs(*, now: datetime) -> dict[str, int]:
    """Work each daemon would find now, from the state columns it polls. One query."""
    file_delete_cutoff = now - timedelta(seconds=settings.FILE_DELETE_DELAY_SECONDS)
    return WorkUnit.objects.aggregate(
        transitioner=Count("pk", filter=Q(transition_time__lte=now)),
        validator=Count("pk", filter=Q(need_validate=True)),
        assimilator=Count("pk", filter=Q(assimilate_state=AssimilateState.READY)),
        file_deleter=Count("pk", filter=Q(assimilate_state=AssimilateState.DONE,
                                          file_delete_state=FileDeleteState.INIT,
                                          updated_at__lte=file_delete_cutoff)),
    )


def result_state_counts() -> list[tuple[str, str, int]]:
    """(server state, outcome, count) of all replicas, in state order. One query."""
    rows = (Result.objects.order_by().values("server_state", "outcome")
            .annotate(n=Count("pk")).order_by("server_state", "outcome"))
    return [(ServerState(row["server_state"]).label, Outcome(row["outcome"]).label, row["n"])
            for row in rows]


@dataclass(frozen=True)
class HostActivity:
    active: int  # hosts that contacted the scheduler since the cutoff
    total: int  # hosts not retired
    active_speed: float  # their summed measured speed, candle-evaluations per second


def host_activity(*, since: datetime) -> HostActivity:
    """Hosts active since ``since`` (the scheduler stamps ``last_contact``). One query."""
    row = Host.objects.filter(retired=False).aggregate(
        total=Count("pk"), active=Count("pk", filter=Q(last_contact__gte=since)),
        speed=Sum("speed", filter=Q(last_contact__gte=since)))
    return HostActivity(active=row["active"], total=row["total"],
                        active_speed=row["speed"] or 0.0)


@dataclass(frozen=True)
class DaemonStatus:
    name: str
    backlog: int  # work units it would find now (from the state columns it polls)
    last_run: datetime | None  # the last pass recorded by django-q2 (success or failure)
    last_run_ok: bool | None
    last_found: int | None  # work units that pass handled (what the task returned)
    last_failure: datetime | None
    next_run: datetime | None  # of its sweeper schedule
    every_minutes: int | None


# The transitioner also runs on demand, for the work units a report touched (tasks.py).
TRANSITION_WORKUNITS = "apps.workunits.tasks.transition_workunits"

# name -> (backlog key, the django-q2 functions that run its passes)
DAEMONS = {
    "transitioner": ("transitioner", (TRANSITIONER, TRANSITION_WORKUNITS)),
    "validator": ("validator", (VALIDATOR,)),
    "assimilator": ("assimilator", (ASSIMILATOR,)),
    "file deleter": ("file_deleter", (FILE_DELETER,)),
}


def daemon_statuses(*, now: datetime) -> list[DaemonStatus]:
    """Each daemon's backlog, last recorded pass and next sweep. Seven queries.

    Passes run by ``manage.py run_daemons`` (instead of the django-q2 cluster) leave no record
    here: their last run shows as unknown while the backlog still tells the truth.
    """
    backlogs = daemon_backlogs(now=now)
    funcs = [func for _, daemon_funcs in DAEMONS.values() for func in daemon_funcs]
    failures = dict(Task.objects.filter(func__in=funcs, success=False).order_by()
                    .values("func").annotate(last=Max("stopped")).values_list("func", "last"))
    schedules = {row["func"]: row for row in Schedule.objects.filter(func__in=funcs)
                 .values("func", "next_run", "minutes")}
    statuses = []
    for name, (backlog_key, daemon_funcs) in DAEMONS.items():
        # One query per daemon, a bounded four: the latest pass with what it returned.
        last = (Task.objects.filter(func__in=daemon_funcs).order_by("-stopped")
                .only("stopped", "success", "result").first())
        found = last.result if last is not None and isinstance(last.result, int) else None
        schedule = schedules.get(daemon_funcs[0], {})
        last_failures = [failures[f] for f in daemon_funcs if failures.get(f)]
        statuses.append(DaemonStatus(
            name=name, backlog=backlogs[backlog_key],
            last_run=last.stopped if last else None, last_run_ok=last.success if last else None,
            last_found=found, last_failure=max(last_failures, default=None),
            next_run=schedule.get("next_run"), every_minutes=schedule.get("minutes")))
    return statuses


def task_queue_size() -> int | None:
    """Tasks waiting in the django-q2 broker (ORM or Redis); None when it cannot be asked."""
    try:
        return get_broker().queue_size()
    except Exception:  # a broker down must not take the status page with it
        return None
