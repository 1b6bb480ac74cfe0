"""Reads of credit and of the project's public figures: leaderboards, the stats export, a
volunteer's credit history and hosts, the home page's live figures.

Recent average credit (RAC) is stored as of its last grant (``rac``, ``rac_time``); everything
shown here decays it to *now* in SQL (``rac_now``), with the same half-life as
``services.rac_update``, so that leaderboards can be ordered by it in the database.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TypeVar

from django.core.cache import cache
from django.db.models import (
    Case,
    Count,
    F,
    FloatField,
    Func,
    Max,
    Min,
    Q,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Exp, Greatest, Least, TruncDate

from apps.accounts.models import Host, Team, Volunteer
from apps.workunits.models import Campaign, Result, WorkUnit
from apps.workunits.states import CampaignState, Outcome, ServerState, ValidateState

from .models import CreditGrant
from .services import CREDIT_HALF_LIFE_SECONDS, rac_decayed, rac_update

LEADERBOARD_ORDERS = ("total", "rac")
# Below e^-50 (after ~500 days without credit) a RAC is 0 for every display; the floor keeps
# PostgreSQL's exp() and float multiplication from raising "underflow".
_DECAY_EXPONENT_FLOOR = -50.0
HOME_FIGURES_CACHE_SECONDS = 30
_Point = TypeVar("_Point")
CREDIT_HISTORY_MAX_POINTS = 500


class _EpochSeconds(Func):
    """Seconds since 1970-01-01 UTC of a datetime column (Django has no portable function)."""

    output_field = FloatField()
    arity = 1

    def as_sqlite(self, compiler, connection, **extra_context):
        # Django stores UTC text that julianday() reads; 2440587.5 is the Julian day of 1970.
        return self.as_sql(compiler, connection,
                           template="((julianday(%(expressions)s) - 2440587.5) * 86400.0)",
                           **extra_context)

    def as_postgresql(self, compiler, connection, **extra_context):
        return self.as_sql(compiler, connection,
                           template="EXTRACT(EPOCH FROM %(expressions)s)::double precision",
                           **extra_context)

    def as_mysql(self, compiler, connection, **extra_context):
        return self.as_sql(compiler, connection, template="UNIX_TIMESTAMP(%(expressions)s)",
                           **extra_context)


def rac_now_expression(*, now: datetime) -> Case:
    """SQL for ``services.rac_decayed(avg=rac, avg_time=rac_time, now=now)`` on a credit row."""
    decay_per_second = math.log(2) / CREDIT_HALF_LIFE_SECONDS
    seconds_since = Least(_EpochSeconds("rac_time") - Value(now.timestamp()), Value(0.0))
    exponent = Greatest(seconds_since * Value(decay_per_second), Value(_DECAY_EXPONENT_FLOOR))
    return Case(When(rac_time__isnull=True, then=F("rac")),
                default=F("rac") * Exp(exponent), output_field=FloatField())


def _ordered(rows: QuerySet, *, order: str) -> QuerySet:
    if order not in LEADERBOARD_ORDERS:
        raise ValueError(f"order must be one of {LEADERBOARD_ORDERS}, got {order!r}")
    # The id breaks ties, so that every row has one position and pages never overlap.
    key = "-total_credit" if order == "total" else F("rac_now").desc()
    return rows.order_by(key, "id")


# --- leaderboards ---------------------------------------------------------------------------


def leaderboard_users(*, order: str, now: datetime) -> QuerySet[Volunteer]:
    """Volunteers by total credit or by RAC (``rac_now``), with their team."""
    rows = (Volunteer.objects.filter(user__is_active=True).select_related("team")
            .annotate(rac_now=rac_now_expression(now=now)))
    return _ordered(rows, order=order)


def leaderboard_teams(*, order: str, now: datetime) -> QuerySet[Team]:
    """Teams by total credit or by RAC, with their member counts."""
    rows = Team.objects.annotate(
        rac_now=rac_now_expression(now=now),
        member_count=Count("members", filter=Q(members__user__is_active=True)))
    return _ordered(rows, order=order)


def leaderboard_hosts(*, order: str, now: datetime) -> QuerySet[Host]:
    """Hosts by total credit or by RAC, with their owner."""
    rows = (Host.objects.filter(volunteer__user__is_active=True).select_related("volunteer")
            .annotate(rac_now=rac_now_expression(now=now)))
    return _ordered(rows, order=order)


def leaderboard_position(rows: QuerySet, *, order: str, pk: int) -> int | None:
    """The 1-based position of row ``pk`` in a leaderboard from above, or None if absent.

    Counts the rows ahead of it under the same ordering (key descending, then id), which costs
    two queries and no window function.
    """
    key = "total_credit" if order == "total" else "rac_now"
    value = rows.filter(pk=pk).values_list(key, flat=True).first()
    if value is None:
        return None
    ahead = rows.filter(Q(**{f"{key}__gt": value}) | Q(**{key: value, "pk__lt": pk}))
    return ahead.order_by().count() + 1


# --- the stats export (BOINC's user/team/host dumps, as JSON) --------------------------------
# As in BOINC, expavg_credit is the RAC as of expavg_time; a consumer decays it to its own
# "now" with the one-week half-life. Never names, e-mails or keys of anything private.


def stats_users() -> QuerySet:
    return (Volunteer.objects.filter(user__is_active=True).order_by("id")
            .values("id", "display_name", "country", "team_id", "total_credit", "rac",
                    "rac_time", "created_at"))


def stats_teams() -> QuerySet:
    return (Team.objects.order_by("id")
            .annotate(member_count=Count("members", filter=Q(members__user__is_active=True)))
            .values("id", "name", "founder__volunteer__id", "member_count", "total_credit",
                    "rac", "rac_time", "created_at"))


def stats_hosts() -> QuerySet:
    return (Host.objects.filter(volunteer__user__is_active=True).order_by("id")
            .values("id", "volunteer_id", "volunteer__team_id", "os", "arch", "cpu_count",
                    "speed", "client_version", "total_credit", "rac", "rac_time", "created_at",
                    "retired"))


# --- a volunteer's own credit and hosts -----------------------------------------------------


@dataclass(frozen=True)
class CreditPoint:
    day: date
    total_credit: float
    rac: float


def credit_history(*, volunteer: Volunteer, now: datetime,
                   max_points: int = CREDIT_HISTORY_MAX_POINTS) -> list[CreditPoint]:
    """The volunteer's cumulative credit and RAC at the end of each day they earned credit,
    and now; at most ``max_points`` points (the first and the last are always kept).

    One query: the ledger summed per day. RAC replays ``rac_update`` once per day, as if the
    day's grants were one grant at the day's last grant time, sent when its first task was; it
    therefore ends close to, not exactly at, the stored RAC, which the page shows as the figure.
    """
    days = (CreditGrant.objects.filter(volunteer=volunteer)
            .annotate(day=TruncDate("granted_at")).values("day")
            .annotate(work=Sum("amount"), last_grant=Max("granted_at"),
                      first_sent=Min("result__sent_time"))
            .order_by("day"))
    points: list[CreditPoint] = []
    total, rac, rac_time = 0.0, 0.0, None
    for row in days:
        total += row["work"]
        rac = rac_update(avg=rac, avg_time=rac_time, work=row["work"],
                         work_start=row["first_sent"] or row["last_grant"], now=row["last_grant"])
        rac_time = row["last_grant"]
        points.append(CreditPoint(day=row["day"], total_credit=total, rac=rac))
    if rac_time is not None and now.date() != points[-1].day:
        decayed = rac_update(avg=rac, avg_time=rac_time, work=0.0, work_start=now, now=now)
        points.append(CreditPoint(day=now.date(), total_credit=total, rac=decayed))
    return downsample(points, max_points=max_points)


def downsample(points: list[_Point], *, max_points: int) -> list[_Point]:
    """Every k-th point so that at most ``max_points`` remain, always keeping the last."""
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    if len(points) <= max_points:
        return points
    step = math.ceil((len(points) - 1) / (max_points - 1))
    kept = points[:-1:step]
    return [*kept, points[-1]]


def account_hosts(*, volunteer: Volunteer, now: datetime) -> QuerySet[Host]:
    """The volunteer's hosts, working ones first, with RAC now and their results' counts:
    ``n_in_progress`` (tasks out) and ``n_pending`` (reported, awaiting validation)."""
    return (Host.objects.filter(volunteer=volunteer)
            .annotate(rac_now=rac_now_expression(now=now),
                      n_in_progress=Count("results", filter=Q(
                          results__server_state=ServerState.IN_PROGRESS)),
                      n_pending=Count("results", filter=Q(
                          results__server_state=ServerState.OVER,
                          results__outcome=Outcome.SUCCESS,
                          results__validate_state__in=[ValidateState.INIT,
                                                       ValidateState.INCONCLUSIVE])))
            .order_by("retired", F("last_contact").desc(nulls_last=True), "id"))


def rac_now(*, holder: Volunteer | Team | Host, now: datetime) -> float:
    """A credit holder's RAC decayed to now, from the row in hand (no query)."""
    return rac_decayed(avg=holder.rac, avg_time=holder.rac_time, now=now)


def team_members_ranked(*, team: Team, now: datetime) -> QuerySet[Volunteer]:
    """A team's members, biggest credit first, with RAC now."""
    return (Volunteer.objects.filter(team=team, user__is_active=True)
            .annotate(rac_now=rac_now_expression(now=now)).order_by("-total_credit", "id"))


# --- the home page's live figures -----------------------------------------------------------


@dataclass(frozen=True)
class SiteFigures:
    volunteers: int
    hosts_active_24h: int
    candle_evaluations_per_second: float
    strategies_tried: int
    workunits_in_progress: int


def site_figures(*, now: datetime) -> SiteFigures:
    """The project's figures at ``now``, cached briefly: the throughput sum scans the last
    hour's replicas, and the home page is the most visited page."""
    key = "credit:site_figures"
    figures = cache.get(key)
    if figures is None:
        figures = _site_figures(now=now)
        cache.set(key, figures, HOME_FIGURES_CACHE_SECONDS)
    return figures


def _site_figures(*, now: datetime) -> SiteFigures:
    hour_ago = now - timedelta(hours=1)
    # Every successful replica did the whole work unit's candle-evaluations (WorkUnit.cost),
    # whether or not a quorum has confirmed it yet: that is compute done.
    evaluations = (Result.objects.filter(outcome=Outcome.SUCCESS, received_time__gte=hour_ago,
                                         received_time__lte=now)
                   .aggregate(total=Sum("workunit__cost"))["total"]) or 0
    return SiteFigures(
        volunteers=Volunteer.objects.filter(user__is_active=True).count(),
        hosts_active_24h=Host.objects.filter(retired=False,
                                             last_contact__gte=now - timedelta(hours=24)).count(),
        candle_evaluations_per_second=evaluations / 3600.0,
        strategies_tried=Campaign.objects.aggregate(total=Sum("strategies_tried"))["total"] or 0,
        workunits_in_progress=(WorkUnit.objects
                               .filter(results__server_state=ServerState.IN_PROGRESS)
                               .values("pk").distinct().count()),
    )


def campaigns_current(*, limit: int = 6) -> QuerySet[Campaign]:
    """Campaigns running or paused, most important first, with their data sets."""
    return (Campaign.objects.filter(state__in=[CampaignState.ACTIVE, CampaignState.PAUSED])
            .select_related("dataset").order_by("-priority", "-created_at", "id")[:limit])
