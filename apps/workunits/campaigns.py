"""Campaigns' lifecycle and the work they generate (BOINC's work generator).

A campaign is a set of GA islands; each island advances one *epoch* (one work unit) at a
time: epoch 0 starts from random genomes, every later epoch from the previous epoch's validated
population plus migrants (see the assimilator). Every state move is a conditional update on the
campaign's state that must change exactly one row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, Max
from django.utils import timezone

from apps.common.errors import ApplicationError
from apps.credit.services import credit_for_cost
from worker_client.engine import Genome
from worker_client.engine.ga import GASettings
from worker_client.engine.space import SearchSpace
from worker_client.protocol import ENGINE_FORMAT, TASK_KIND

from .data import load_dataset
from .marketdata import dataset_get_or_create
from .models import Campaign, Result, WorkUnit
from .states import CAMPAIGN_MOVES, AssimilateState, CampaignState, ErrorMask, ServerState


def _campaign_move(campaign: Campaign, to: CampaignState, *, now: datetime) -> None:
    sources = [state for state, moves in CAMPAIGN_MOVES.items() if to in moves]
    updated = Campaign.objects.filter(pk=campaign.pk, state__in=sources).update(
        state=to, updated_at=now)
    if updated != 1:
        current = Campaign.objects.filter(pk=campaign.pk).values_list("state", flat=True).first()
        raise ApplicationError(
            f"campaign {campaign.name!r} is {current}: it cannot become {to.label}",
            extra={"state": current})
    campaign.state = to


def campaign_start(*, campaign: Campaign, now: datetime | None = None) -> list[WorkUnit]:
    """Activate a draft or paused campaign; returns the work units this created.

    A first start creates epoch 0 of every island; a resume creates the next epoch of each
    island whose last epoch was assimilated while the campaign was paused.
    """
    now = now or timezone.now()
    if campaign.search_dataset_id is None:
        _campaign_make_search_dataset(campaign=campaign, now=now)
    with transaction.atomic():
        _campaign_move(campaign, CampaignState.ACTIVE, now=now)
        return campaign_advance_islands(campaign=campaign, now=now)


def _campaign_make_search_dataset(*, campaign: Campaign, now: datetime) -> None:
    """Store the bars before the out-of-sample range as their own file, for the volunteers.

    Work units need only [in_sample_start, in_sample_stop); a host that never downloads the
    later bars cannot tune anything to them, so out-of-sample figures stay honest. The file is
    named by its content (idempotent), written before the row that points at it.
    """
    full = campaign.dataset
    dataset, _ = dataset_get_or_create(data=load_dataset(full).slice(0, campaign.in_sample_stop),
                                       symbol=full.symbol, timeframe=full.timeframe,
                                       exchange=full.exchange)
    Campaign.objects.filter(pk=campaign.pk, search_dataset__isnull=True).update(
        search_dataset=dataset, updated_at=now)
    campaign.refresh_from_db(fields=["search_dataset"])


def campaign_pause(*, campaign: Campaign, now: datetime | None = None) -> None:
    """Stop generating new epochs; work already out runs to its end and is assimilated."""
    _campaign_move(campaign, CampaignState.PAUSED, now=now or timezone.now())


def campaign_finish(*, campaign: Campaign, now: datetime | None = None) -> int:
    """Finish the campaign; cancels its unfinished work units. Returns how many were cancelled.

    A cancelled work unit gets the CANCELLED error bit and is due for the transitioner now,
    which retires its unsent replicas and hands it to the assimilator (BOINC's cancel).
    """
    now = now or timezone.now()
    with transaction.atomic():
        _campaign_move(campaign, CampaignState.FINISHED, now=now)
        return WorkUnit.objects.filter(
            campaign=campaign, canonical_result__isnull=True, error_mask=0,
            assimilate_state=AssimilateState.INIT,
        ).update(error_mask=F("error_mask").bitor(ErrorMask.CANCELLED), transition_time=now,
                 updated_at=now)


def campaign_finish_if_done(*, campaign: Campaign, now: datetime | None = None) -> bool:
    """Finish the campaign once every island has run its budget and all is assimilated.

    The cheap test comes first: while any work unit of the campaign is not assimilated (the
    usual case) one probe of a partial index answers, whatever the campaign's size; the epochs
    are counted only once all is assimilated.
    """
    now = now or timezone.now()
    if WorkUnit.objects.filter(campaign=campaign).exclude(
            assimilate_state=AssimilateState.DONE).exists():
        return False
    last_epochs = list(WorkUnit.objects.filter(campaign=campaign).values("island")
                       .annotate(last=Max("epoch")).values_list("island", "last"))
    if len(last_epochs) < campaign.islands:
        return False
    if any(last + 1 < campaign.budget_epochs for _, last in last_epochs):
        return False
    updated = Campaign.objects.filter(
        pk=campaign.pk, state__in=[CampaignState.ACTIVE, CampaignState.PAUSED],
    ).update(state=CampaignState.FINISHED, updated_at=now)
    if updated:
        campaign.state = CampaignState.FINISHED
    return bool(updated)


def campaign_advance_islands(*, campaign: Campaign, now: datetime | None = None,
                             ) -> list[WorkUnit]:
    """Create each island's next epoch where it is due (idempotent).

    An island is due when it has no work unit yet (epoch 0, random start) or when its last
    epoch is assimilated and the budget allows another; the start population then comes from
    :func:`island_start_population`. Used by start/resume; the assimilator advances one island
    at a time with the same rule.
    """
    now = now or timezone.now()
    created = []
    for island in range(campaign.islands):
        last = (WorkUnit.objects.filter(campaign=campaign, island=island)
                .order_by("-epoch").first())
        if last is None:
            epoch, population = 0, []
        elif (last.assimilate_state == AssimilateState.DONE
              and last.epoch + 1 < campaign.budget_epochs):
            epoch = last.epoch + 1
            population = island_start_population(campaign=campaign, island=island, epoch=epoch)
        else:
            continue
        wu = workunit_create_once(campaign=campaign, island=island, epoch=epoch,
                                  start_population=population, now=now)
        if wu is not None:
            created.append(wu)
    return created


def _last_good_output(campaign: Campaign, island: int, before_epoch: int | None = None,
                      ) -> dict[str, Any] | None:
    """The validated output of the island's latest assimilated epoch with a canonical result."""
    wus = WorkUnit.objects.filter(campaign=campaign, island=island,
                                  assimilate_state=AssimilateState.DONE,
                                  canonical_result__isnull=False)
    if before_epoch is not None:
        wus = wus.filter(epoch__lt=before_epoch)
    wu = wus.select_related("canonical_result").order_by("-epoch").first()
    return wu.canonical_result.output if wu is not None else None


def island_start_population(*, campaign: Campaign, island: int, epoch: int,
                            ) -> list[Genome]:
    """The start population of an island's epoch (the island-model GA's migration).

    The island's last validated final population (in rank order) minus its worst ``migrants``,
    then the best ``migrants`` of the neighbouring island (``island - 1`` mod n) from its
    latest assimilated epoch, skipping genomes already present. An island whose epochs have
    all failed starts from scratch (the engine fills the population with random genomes).
    """
    own_output = _last_good_output(campaign, island, before_epoch=epoch)
    own = [Genome.from_dict(g) for g in own_output["population"]] if own_output else []
    migrants = campaign.migrants
    if migrants and own:
        own = own[: max(len(own) - migrants, 0)]
    neighbour = (island - 1) % campaign.islands
    incoming: list[Genome] = []
    if migrants and neighbour != island:
        neighbour_output = _last_good_output(campaign, neighbour)
        if neighbour_output:
            incoming = [Genome.from_dict(g) for g in neighbour_output["population"][:migrants]]
    population: list[Genome] = []
    seen: set[str] = set()
    for genome in [*own, *incoming]:
        if genome.hash not in seen:
            seen.add(genome.hash)
            population.append(genome)
    return population


def epoch_seed(campaign_seed: int, island: int, epoch: int) -> int:
    """A seed for one island epoch, derived from the campaign's seed (63 bits, non-negative)."""
    digest = hashlib.sha256(f"{campaign_seed}:{island}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def workunit_create(*, campaign: Campaign, island: int, epoch: int,
                    start_population: Sequence[Genome], now: datetime | None = None,
                    ) -> WorkUnit:
    """One island epoch with its ``target_nresults`` unsent replicas (payload per protocol.py)."""
    now = now or timezone.now()
    space = SearchSpace.from_dict(campaign.search_space)
    settings = GASettings.from_dict(campaign.ga_settings)
    for genome in start_population:
        space.check(genome)
    generations = campaign.generations_per_epoch
    payload = {
        "kind": TASK_KIND,
        "engine": ENGINE_FORMAT,
        "dataset_sha256": campaign.task_dataset.sha256,
        "start": campaign.in_sample_start,
        "stop": campaign.in_sample_stop,
        "seed": epoch_seed(campaign.seed, island, epoch),
        "generations": generations,
        "space": space.to_dict(),
        "settings": settings.to_dict(),
        "start_population": [g.to_dict() for g in start_population],
    }
    bars = campaign.in_sample_stop - campaign.in_sample_start
    cost = bars * settings.population_size * (generations + 1)
    with transaction.atomic():
        wu = WorkUnit.objects.create(
            campaign=campaign, island=island, epoch=epoch, payload=payload, cost=cost,
            credit=credit_for_cost(cost), min_quorum=campaign.min_quorum,
            target_nresults=campaign.target_nresults,
            max_error_results=campaign.max_error_results,
            max_total_results=campaign.max_total_results,
            max_success_results=campaign.max_success_results,
            delay_bound=campaign.delay_bound, priority=campaign.priority, transition_time=now)
        Result.objects.bulk_create([
            Result(workunit=wu, server_state=ServerState.UNSENT, priority=wu.priority)
            for _ in range(wu.target_nresults)])
    return wu


def workunit_create_once(*, campaign: Campaign, island: int, epoch: int,
                         start_population: Sequence[Genome], now: datetime | None = None,
                         ) -> WorkUnit | None:
    """:func:`workunit_create`, or None when that island epoch already exists (idempotent)."""
    try:
        with transaction.atomic():
            return workunit_create(campaign=campaign, island=island, epoch=epoch,
                                   start_population=start_population, now=now)
    except IntegrityError:
        if WorkUnit.objects.filter(campaign=campaign, island=island, epoch=epoch).exists():
            return None
        raise
