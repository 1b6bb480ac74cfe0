"""Credit: fixed per work unit from its cost, granted once per valid replica, RAC as in BOINC.

The ledger (`CreditGrant`) is append-only with one row per result (a unique constraint), and the
cached totals on volunteer, team and host move in the same transaction as the grant, so the
totals always equal the ledger's sums. ``credit_grant_many`` grants a validator batch's replicas
with a handful of statements, with the very figures one ``credit_grant`` after another gives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from apps.accounts.models import Host, Team, Volunteer
from apps.workunits.models import Result
from apps.workunits.states import Outcome, ValidateState
from apps.workunits.transitioner import update_rows

from .models import CreditGrant

# One credit per ten million candle-evaluations: a 5,000-bar in-sample range, 48 genomes and
# 10 generations (2.6 M evaluations) earns 0.26 credit. The number is for display; only the
# ratio between work units matters.
CANDLE_EVALUATIONS_PER_CREDIT = 1e7

SECONDS_PER_DAY = 86_400.0
CREDIT_HALF_LIFE_SECONDS = 7 * SECONDS_PER_DAY  # BOINC's CREDIT_HALF_LIFE


def credit_for_cost(cost: int) -> float:
    """Credit a valid replica earns for a work unit of ``cost`` candle-evaluations (pure)."""
    if cost < 0:
        raise ValueError(f"cost must be >= 0, got {cost}")
    return cost / CANDLE_EVALUATIONS_PER_CREDIT


def rac_update(*, avg: float, avg_time: datetime | None, work: float, work_start: datetime,
               now: datetime, half_life: float = CREDIT_HALF_LIFE_SECONDS) -> float:
    """BOINC's ``update_average`` (lib/util.cpp): the new recent average credit, per day.

    The old average decays by ``w = exp(-Δt·ln2 / half_life)`` and the new work enters as
    ``(1 - w) · work / Δt_days``; when ``w`` is within 1e-6 of 1 the first-order limit
    ``ln2 · work · day / half_life`` is used instead. The very first grant sets the average to
    the work divided by the days since the job was sent (``work_start``).
    """
    if avg_time is not None:
        diff = max((now - avg_time).total_seconds(), 0.0)
        weight = math.exp(-diff * math.log(2) / half_life)
        avg *= weight
        if 1.0 - weight > 1e-6:
            avg += (1.0 - weight) * (work / (diff / SECONDS_PER_DAY))
        else:
            avg += math.log(2) * work * SECONDS_PER_DAY / half_life
        return avg
    if work:
        # A job sent and credited in the same second would divide by zero: count one second.
        days = max((now - work_start).total_seconds(), 1.0) / SECONDS_PER_DAY
        return work / days
    return avg


def rac_decayed(*, avg: float, avg_time: datetime | None, now: datetime,
                half_life: float = CREDIT_HALF_LIFE_SECONDS) -> float:
    """The average as it stands at ``now`` with no new work (what leaderboards should show)."""
    if avg_time is None:
        return avg
    diff = max((now - avg_time).total_seconds(), 0.0)
    return avg * math.exp(-diff * math.log(2) / half_life)


def _credit_holder_update(model: type[Volunteer | Team | Host], pk: int, *, amount: float,
                          work_start: datetime, now: datetime) -> None:
    # The row is locked so that two grants to one holder cannot both decay the same old
    # average; totals move with F() so they never depend on a stale read.
    holder = model.objects.select_for_update().only("rac", "rac_time").get(pk=pk)
    rac = rac_update(avg=holder.rac, avg_time=holder.rac_time, work=amount,
                     work_start=work_start, now=now)
    updated = model.objects.filter(pk=pk).update(total_credit=F("total_credit") + amount,
                                                 rac=rac, rac_time=now, updated_at=now)
    if updated != 1:  # pragma: no cover - the row was locked above
        raise RuntimeError(f"{model.__name__} {pk} vanished while granting credit")


def credit_grant(*, result: Result, now: datetime | None = None) -> CreditGrant | None:
    """Grant a valid replica its credit: one ledger row, totals and RAC moved. Idempotent.

    Returns the new grant, or None when this result already had one (the unique constraint
    decides, so two validators racing on one result grant it once).
    """
    now = now or timezone.now()
    if result.validate_state != ValidateState.VALID or result.outcome != Outcome.SUCCESS:
        raise ValueError(f"result {result.pk} is not a valid success: no credit")
    if result.volunteer_id is None:
        return None  # the volunteer deleted their account: nobody to credit
    amount = float(result.granted_credit)
    volunteer = Volunteer.objects.only("team_id").get(pk=result.volunteer_id)
    with transaction.atomic():
        try:
            with transaction.atomic():
                grant = CreditGrant.objects.create(
                    result=result, volunteer_id=volunteer.pk, host_id=result.host_id,
                    team_id=volunteer.team_id, amount=amount)
        except IntegrityError:
            return None
        work_start = result.sent_time or now
        # Always volunteer, then team, then host: one lock order, no deadlocks.
        _credit_holder_update(Volunteer, volunteer.pk, amount=amount, work_start=work_start,
                              now=now)
        if volunteer.team_id is not None:
            _credit_holder_update(Team, volunteer.team_id, amount=amount,
                                  work_start=work_start, now=now)
        if result.host_id is not None:
            _credit_holder_update(Host, result.host_id, amount=amount, work_start=work_start,
                                  now=now)
    return grant


_HOLDER_FIELDS = ("id", "total_credit", "rac", "rac_time")


def _locked_holders(model: type[Volunteer | Team | Host], ids: set[int], *fields: str
                    ) -> dict[int, Any]:
    if not ids:
        return {}
    return {h.pk: h for h in model.objects.select_for_update().filter(pk__in=ids)
            .order_by("pk").only(*_HOLDER_FIELDS, *fields)}


def credit_grant_many(*, results: Sequence[Result], now: datetime | None = None
                      ) -> list[CreditGrant]:
    """:func:`credit_grant` for many valid replicas at once: the ledger rows in one INSERT, and
    each volunteer's, team's and host's total and RAC moved by one UPDATE per table, to the
    figures the grants one after another (in ``results``' order) would give. Idempotent: a
    result that already has a grant gets none. Returns the new grants.
    """
    now = now or timezone.now()
    for result in results:
        if result.validate_state != ValidateState.VALID or result.outcome != Outcome.SUCCESS:
            raise ValueError(f"result {result.pk} is not a valid success: no credit")
    todo = list({r.pk: r for r in results if r.volunteer_id is not None}.values())
    if not todo:
        return []
    with transaction.atomic():
        # Holders locked first, volunteers, then teams, then hosts, each by id (the order
        # credit_grant and the validator keep): two grants to one holder cannot both decay the
        # same old average, and the totals computed here from the locked rows are exact.
        volunteers = _locked_holders(Volunteer, {r.volunteer_id for r in todo}, "team_id")
        teams = _locked_holders(Team, {v.team_id for v in volunteers.values()
                                       if v.team_id is not None})
        hosts = _locked_holders(Host, {r.host_id for r in todo if r.host_id is not None})
        existing = set(CreditGrant.objects.filter(result_id__in=[r.pk for r in todo])
                       .values_list("result_id", flat=True))
        todo = [r for r in todo if r.pk not in existing]
        grants = [CreditGrant(result=r, volunteer_id=r.volunteer_id, host_id=r.host_id,
                              team_id=volunteers[r.volunteer_id].team_id,
                              amount=float(r.granted_credit)) for r in todo]
        try:
            with transaction.atomic():
                CreditGrant.objects.bulk_create(grants)
        except IntegrityError:
            # Another process granted one of them since we looked: one at a time, as before.
            return [g for r in todo if (g := credit_grant(result=r, now=now)) is not None]
        touched: dict[type, dict[int, Any]] = {Volunteer: {}, Team: {}, Host: {}}
        for r, grant in zip(todo, grants, strict=True):
            work_start = r.sent_time or now
            for model, holder in ((Volunteer, volunteers[r.volunteer_id]),
                                  (Team, teams.get(grant.team_id)),
                                  (Host, hosts.get(r.host_id))):
                if holder is None:
                    continue
                holder.rac = rac_update(avg=holder.rac, avg_time=holder.rac_time,
                                        work=grant.amount, work_start=work_start, now=now)
                holder.rac_time = now
                holder.total_credit += grant.amount
                touched[model][holder.pk] = holder
        for model, holders in touched.items():
            update_rows(model, {pk: ({}, {"total_credit": h.total_credit, "rac": h.rac,
                                          "rac_time": h.rac_time}) for pk, h in holders.items()},
                        now=now)
    return grants
