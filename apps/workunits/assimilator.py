"""The assimilator: a finished work unit's answer into its campaign (reference/boinc.md §3).

For each work unit READY for assimilation (in batches: one transaction, a few statements for the
whole batch, the campaigns' statistics moved once per campaign):

* with a canonical result (already re-checked by the validator), its top genomes that are good
  enough enter the hall of fame with **out-of-sample metrics computed here** (the volunteers
  never see those bars), found by the canonical replica's volunteer and confirmed by the other
  valid replicas' volunteers; the campaign's statistics advance;
* an errored work unit is assimilated too: its epoch counts against the budget and the island
  continues from its last good population;
* the island's next epoch is created (own survivors plus the neighbour's best as migrants)
  while the campaign is active and its budget allows; once every island has run its budget and
  all is assimilated, the campaign is finished.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from worker_client.engine import Genome, backtest
from worker_client.engine.ga import GASettings

from .campaigns import campaign_finish_if_done, island_start_population, workunit_create_once
from .data import load_dataset
from .models import Campaign, Result, Strategy, WorkUnit
from .states import AssimilateState, CampaignState, ErrorMask, ValidateState
from .transitioner import Writes, run_batches

logger = logging.getLogger(__name__)

# A strategy enters the hall of fame only with a fitness above this (and enough trades): the
# engine scores a strategy with too few trades at or below 0.
HALL_OF_FAME_MIN_FITNESS = 0.0


def _strategy_record(*, wu: WorkUnit, campaign: Campaign, entry: dict[str, Any],
                     settings: GASettings, found_by_id: int | None,
                     confirmed_by_ids: list[int]) -> Strategy:
    genome = Genome.from_dict(entry["genome"])
    data = load_dataset(campaign.dataset)
    try:
        out = backtest(data, genome, costs=settings.costs, initial_cash=settings.initial_cash,
                       start=campaign.in_sample_stop, stop=campaign.out_sample_stop).metrics
        out_sample = out.to_dict()
        out_sharpe = out.sharpe if math.isfinite(out.sharpe) else None
    except ValueError:  # an out-of-sample range too short to trade
        out_sample, out_sharpe = {}, None
    try:
        with transaction.atomic():
            strategy = Strategy.objects.create(
                campaign=campaign, genome=genome.to_dict(), genome_hash=genome.hash,
                description=genome.describe(), fitness=entry["fitness"],
                in_sample=entry["metrics"], out_sample=out_sample,
                out_sample_sharpe=out_sharpe, workunit=wu, found_by_id=found_by_id)
    except IntegrityError:
        # Found before (by another island, or a migrant found again): it gains confirmers.
        strategy = Strategy.objects.get(campaign=campaign, genome_hash=genome.hash)
        confirmed_by_ids = [*confirmed_by_ids, *([found_by_id] if found_by_id else [])]
    confirmers = [v for v in dict.fromkeys(confirmed_by_ids) if v != strategy.found_by_id]
    if confirmers:
        strategy.confirmed_by.add(*confirmers)
    return strategy


def _assimilate_canonical(wu: WorkUnit, campaign: Campaign, canonical: Result,
                          confirmed_by: list[int], stats: _CampaignStats) -> None:
    output = canonical.output
    settings = GASettings.from_dict(wu.payload["settings"])
    best = None
    for entry in output["top"]:
        fitness = entry["fitness"]
        if fitness is None:
            continue
        best = fitness if best is None else max(best, fitness)
        if fitness > HALL_OF_FAME_MIN_FITNESS and (
                entry["metrics"]["n_trades"] >= settings.min_trades):
            _strategy_record(wu=wu, campaign=campaign, entry=entry, settings=settings,
                             found_by_id=canonical.volunteer_id, confirmed_by_ids=confirmed_by)
    stats.epochs_done += 1
    stats.strategies_tried += output["evaluated"]
    # An answer from before engine format 2 has no trials' sums: it adds none.
    trials = output.get("trials") or {}
    stats.trials_sharpe_n += int(trials.get("n", 0))
    stats.trials_sharpe_sum += float(trials.get("sharpe_sum", 0.0))
    stats.trials_sharpe_sq_sum += float(trials.get("sharpe_sq_sum", 0.0))
    stats.candle_evaluations += wu.cost
    if best is not None:
        stats.best = best if stats.best is None else max(stats.best, best)


@dataclass
class _CampaignStats:
    """What a batch adds to one campaign's statistics."""

    epochs_done: int = 0
    strategies_tried: int = 0
    candle_evaluations: int = 0
    trials_sharpe_n: int = 0
    trials_sharpe_sum: float = 0.0
    trials_sharpe_sq_sum: float = 0.0
    best: float | None = None

    def save(self, campaign: Campaign, *, now: datetime) -> None:
        Campaign.objects.filter(pk=campaign.pk).update(
            epochs_done=F("epochs_done") + self.epochs_done,
            strategies_tried=F("strategies_tried") + self.strategies_tried,
            candle_evaluations=F("candle_evaluations") + self.candle_evaluations,
            trials_sharpe_n=F("trials_sharpe_n") + self.trials_sharpe_n,
            trials_sharpe_sum=F("trials_sharpe_sum") + self.trials_sharpe_sum,
            trials_sharpe_sq_sum=F("trials_sharpe_sq_sum") + self.trials_sharpe_sq_sum,
            updated_at=now)
        if self.best is not None:
            Campaign.objects.filter(Q(best_fitness__isnull=True) | Q(best_fitness__lt=self.best),
                                    pk=campaign.pk).update(best_fitness=self.best)


def _assimilate_batch(ids: list[int], *, now: datetime) -> int:
    """Assimilate these work units in one transaction (those another process holds, or no
    longer ready, are skipped); returns how many were assimilated.

    The work units are marked done first, then each island's next epoch is created in work
    unit order. An epoch's start population reads its own island's latest answer (the one
    assimilated here) and the neighbour island's latest assimilated answer, which may be one
    this batch assimilates after it in id order: the same start population as if the batch had
    been assimilated before any of its next epochs was made (order between islands is not
    promised anyway: several assimilators run side by side).
    """
    with transaction.atomic():
        wus = list(WorkUnit.objects.select_for_update(skip_locked=True)
                   .filter(pk__in=ids, assimilate_state=AssimilateState.READY).order_by("id"))
        if not wus:
            return 0
        campaigns = {c.pk: c for c in Campaign.objects.select_related("dataset")
                     .filter(pk__in={wu.campaign_id for wu in wus})}
        canonical_ids = [wu.canonical_result_id for wu in wus
                         if wu.canonical_result_id is not None]
        canonicals = {r.pk: r for r in Result.objects.filter(pk__in=canonical_ids)
                      .only("id", "output", "volunteer_id")}
        confirmers: dict[int, list[int]] = {}
        for wu_id, result_id, volunteer_id in (
                Result.objects.filter(workunit_id__in=[wu.pk for wu in wus],
                                      validate_state=ValidateState.VALID,
                                      volunteer__isnull=False)
                .order_by("id").values_list("workunit_id", "id", "volunteer_id")):
            if result_id not in canonicals:
                confirmers.setdefault(wu_id, []).append(volunteer_id)
        stats: dict[int, _CampaignStats] = {pk: _CampaignStats() for pk in campaigns}
        writes = Writes(now)
        for wu in wus:
            campaign = campaigns[wu.campaign_id]
            error_mask = wu.error_mask
            if wu.canonical_result_id is not None:
                _assimilate_canonical(wu, campaign, canonicals[wu.canonical_result_id],
                                      confirmers.get(wu.pk, []), stats[campaign.pk])
            else:
                if not error_mask:  # BOINC: READY with neither answer nor error
                    error_mask = ErrorMask.NO_CANONICAL_RESULT
                logger.info("assimilator: work unit %s errored (mask %s); island %s continues",
                            wu.pk, int(error_mask), wu.island)
                stats[campaign.pk].epochs_done += 1
            writes.update_workunit(wu.pk, where={"assimilate_state": AssimilateState.READY},
                                   assimilate_state=AssimilateState.DONE, error_mask=error_mask)
        writes.flush()
        for pk in sorted(campaigns):  # campaigns' rows in id order: one lock order for all
            stats[pk].save(campaigns[pk], now=now)
        for wu in wus:
            campaign = campaigns[wu.campaign_id]
            if campaign.state == CampaignState.ACTIVE and wu.epoch + 1 < campaign.budget_epochs:
                workunit_create_once(
                    campaign=campaign, island=wu.island, epoch=wu.epoch + 1,
                    start_population=island_start_population(campaign=campaign,
                                                             island=wu.island,
                                                             epoch=wu.epoch + 1),
                    now=now)
        for pk in sorted(campaigns):
            campaign_finish_if_done(campaign=campaigns[pk], now=now)
        return len(wus)


def assimilate_pass(*, limit: int = 200, now: datetime | None = None) -> int:
    """One assimilator pass; returns how many work units it assimilated. Idempotent.

    Work units are assimilated in batches (``BATCH_SIZE`` to a transaction); a batch that fails
    is retried one work unit at a time, and a work unit that fails alone stays ready for the
    next pass.
    """
    now = now or timezone.now()
    ids = list(WorkUnit.objects.filter(assimilate_state=AssimilateState.READY).order_by("id")
               .values_list("id", flat=True)[:limit])
    return run_batches(ids, partial(_assimilate_batch, now=now), name="assimilator",
                       catch_all=True)
