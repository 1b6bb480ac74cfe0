"""The assimilator: a finished work unit's answer into its campaign (reference/boinc.md §3).

For each work unit READY for assimilation, in one transaction:

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
from datetime import datetime
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
from .transitioner import Conflict, checked_update

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


def _assimilate_canonical(wu: WorkUnit, campaign: Campaign, *, now: datetime) -> None:
    canonical = Result.objects.get(pk=wu.canonical_result_id)
    output = canonical.output
    settings = GASettings.from_dict(wu.payload["settings"])
    confirmed_by = list(
        Result.objects.filter(workunit=wu, validate_state=ValidateState.VALID,
                              volunteer__isnull=False)
        .exclude(pk=canonical.pk).order_by("id").values_list("volunteer_id", flat=True))
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
    Campaign.objects.filter(pk=campaign.pk).update(
        epochs_done=F("epochs_done") + 1, strategies_tried=F("strategies_tried")
        + output["evaluated"], candle_evaluations=F("candle_evaluations") + wu.cost,
        updated_at=now)
    if best is not None:
        Campaign.objects.filter(Q(best_fitness__isnull=True) | Q(best_fitness__lt=best),
                                pk=campaign.pk).update(best_fitness=best)


def _assimilate_one(wu_id: int, *, now: datetime) -> bool:
    with transaction.atomic():
        wu = (WorkUnit.objects.select_for_update(skip_locked=True)
              .filter(pk=wu_id, assimilate_state=AssimilateState.READY).first())
        if wu is None:
            return False
        campaign = Campaign.objects.select_related("dataset").get(pk=wu.campaign_id)
        error_mask = wu.error_mask
        if wu.canonical_result_id is not None:
            _assimilate_canonical(wu, campaign, now=now)
        else:
            if not error_mask:  # BOINC: READY with neither answer nor error
                error_mask = ErrorMask.NO_CANONICAL_RESULT
            logger.info("assimilator: work unit %s errored (mask %s); island %s continues",
                        wu.pk, int(error_mask), wu.island)
            Campaign.objects.filter(pk=campaign.pk).update(
                epochs_done=F("epochs_done") + 1, updated_at=now)
        checked_update(WorkUnit.objects.filter(pk=wu.pk, assimilate_state=AssimilateState.READY),
                       assimilate_state=AssimilateState.DONE, error_mask=error_mask,
                       updated_at=now)
        if campaign.state == CampaignState.ACTIVE and wu.epoch + 1 < campaign.budget_epochs:
            workunit_create_once(
                campaign=campaign, island=wu.island, epoch=wu.epoch + 1,
                start_population=island_start_population(campaign=campaign, island=wu.island,
                                                         epoch=wu.epoch + 1),
                now=now)
        campaign_finish_if_done(campaign=campaign, now=now)
        return True


def assimilate_pass(*, limit: int = 50, now: datetime | None = None) -> int:
    """One assimilator pass; returns how many work units it assimilated. Idempotent."""
    now = now or timezone.now()
    ids = list(WorkUnit.objects.filter(assimilate_state=AssimilateState.READY).order_by("id")
               .values_list("id", flat=True)[:limit])
    handled = 0
    for wu_id in ids:
        try:
            handled += _assimilate_one(wu_id, now=now)
        except Conflict as exc:
            logger.info("assimilator: work unit %s changed during its pass (%s)", wu_id, exc)
        except Exception:
            logger.exception("assimilator: work unit %s failed; retrying on the next pass", wu_id)
    return handled
