"""The research pages: campaigns, the best strategies, one strategy, the server's status.

Views parse the request, call selectors, and render; figures are computed in
``apps.workunits.selectors`` (statistics) and ``apps.web.charts`` (chart data).
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_safe

from apps.workunits import selectors
from apps.workunits.models import Campaign, Strategy
from worker_client.engine import Genome
from worker_client.engine.ga import GASettings
from worker_client.engine.space import SearchSpace

from . import charts
from .paging import page_of, server_url
from .selectors_research import campaign_top_volunteers

CAMPAIGNS_PER_PAGE = 20
STRATEGIES_PER_PAGE = 25
TRADES_PER_PAGE = 50
ACTIVE_HOST_WINDOW = timedelta(hours=1)

logger = logging.getLogger(__name__)


def _campaign_or_404(pk: int) -> Campaign:
    try:
        return selectors.campaign_get(pk)
    except Campaign.DoesNotExist:
        raise Http404("No such campaign.") from None


def _strategy_or_404(pk: int) -> Strategy:
    try:
        return selectors.strategy_get(pk)
    except Strategy.DoesNotExist:
        raise Http404("No such strategy.") from None


@require_safe
def campaign_list(request: HttpRequest) -> HttpResponse:
    page = page_of(request, selectors.campaign_list(), per_page=CAMPAIGNS_PER_PAGE)
    return render(request, "web/research/campaign_list.html", {"page": page})


def _words(settings: dict) -> list[tuple[str, object]]:
    return [(key.replace("_", " "), value) for key, value in settings.items()]


def _search_settings(campaign: Campaign) -> tuple[dict, dict]:
    """The GA settings and the search space as the engine reads them (defaults filled in)."""
    try:
        ga = GASettings.from_dict(campaign.ga_settings).to_dict()
    except ValueError:  # settings of an older engine: show them as stored
        ga = dict(campaign.ga_settings)
    try:
        space = SearchSpace.from_dict(campaign.search_space).to_dict()
    except ValueError:
        space = dict(campaign.search_space)
    return ga, space


@require_safe
def campaign_detail(request: HttpRequest, pk: int) -> HttpResponse:
    campaign = _campaign_or_404(pk)
    progress = selectors.campaign_progress(campaign)
    fitness = charts.fitness_chart(campaign, selectors.campaign_fitness_by_epoch(campaign))
    top = selectors.strategy_with_statistics(selectors.strategy_ranked(campaign)[:5])
    ga_settings, space = _search_settings(campaign)
    dataset = campaign.dataset
    bar = timedelta(seconds=dataset.bar_seconds)
    context = {
        "campaign": campaign,
        "dataset": dataset,
        "ranges": {
            "in_sample": (campaign.in_sample_start, campaign.in_sample_stop,
                          dataset.first_bar + bar * campaign.in_sample_start,
                          dataset.first_bar + bar * campaign.in_sample_stop),
            "out_sample": (campaign.in_sample_stop, campaign.out_sample_stop,
                           dataset.first_bar + bar * campaign.in_sample_stop,
                           dataset.first_bar + bar * campaign.out_sample_stop),
        },
        "progress": progress,
        "fitness_chart": fitness,
        "top_strategies": top,
        "top_volunteers": campaign_top_volunteers(campaign),
        "ga_settings": _words(ga_settings),
        "fitness_name": ga_settings.get("fitness", "sharpe"),
        "space": _words(space),
    }
    return render(request, "web/research/campaign_detail.html", context)


def _strategy_table(request: HttpRequest, campaign: Campaign | None) -> HttpResponse:
    page = page_of(request, selectors.strategy_ranked(campaign), per_page=STRATEGIES_PER_PAGE)
    rows = selectors.strategy_with_statistics(page.object_list)
    return render(request, "web/research/strategy_list.html",
                  {"page": page, "rows": rows, "campaign": campaign})


@require_safe
def strategy_list(request: HttpRequest) -> HttpResponse:
    return _strategy_table(request, None)


@require_safe
def campaign_strategies(request: HttpRequest, pk: int) -> HttpResponse:
    return _strategy_table(request, _campaign_or_404(pk))


@require_safe
def strategy_detail(request: HttpRequest, pk: int) -> HttpResponse:
    strategy = _strategy_or_404(pk)
    ((_, statistics),) = selectors.strategy_with_statistics([strategy])
    replicas, confirmers = selectors.strategy_confirmations(strategy)
    try:
        curves = charts.strategy_curves(strategy)
    except (OSError, ValueError):  # the data set's file is missing or damaged on this server
        logger.exception("strategy %s: cannot backtest it for its charts", strategy.pk)
        curves = None
    trades = page_of(request, curves["trades"] if curves else [], per_page=TRADES_PER_PAGE,
                     param="trades")
    base_url = server_url(request)
    spec = selectors.strategy_replay_spec(strategy)
    context = {
        "strategy": strategy,
        "campaign": strategy.campaign,
        "statistics": statistics,
        "rules": Genome.from_dict(strategy.genome).describe(),
        "replicas": replicas,
        "confirmers": confirmers,
        "curves_missing": curves is None,
        "equity_chart": curves["equity"] if curves else {"series": []},
        "drawdown_chart": curves["drawdown"] if curves else {"series": []},
        "trades": trades,
        "trade_count": len(curves["trades"]) if curves else None,
        "in_sample_trades": (curves["in_sample_trades"] if curves
                             else (strategy.in_sample or {}).get("n_trades")),
        "replay_spec": spec,
        "replay_command": f"strategy-worker replay --server {base_url} --strategy {strategy.pk}",
        "genome_json": json.dumps(strategy.genome, indent=2, sort_keys=True),
    }
    return render(request, "web/research/strategy_detail.html", context)


@require_safe
def strategy_genome(request: HttpRequest, pk: int) -> JsonResponse:
    """The genome with everything ``strategy-worker replay`` needs (see the selector)."""
    document = selectors.strategy_genome_document(_strategy_or_404(pk))
    response = JsonResponse(document, json_dumps_params={"indent": 2})
    response["Content-Disposition"] = f'inline; filename="strategy-{pk}.genome.json"'
    return response


@require_safe
def server_status(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    context = {
        "now": now,
        "daemons": selectors.daemon_statuses(now=now),
        "queue_size": selectors.task_queue_size(),
        "workunits_by_state": selectors.workunit_state_counts(),
        "results_by_state": selectors.result_state_counts(),
        "hosts": selectors.host_activity(since=now - ACTIVE_HOST_WINDOW),
    }
    return render(request, "web/research/server_status.html", context)
