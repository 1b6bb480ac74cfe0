"""Credit: fixed per work unit from its cost, granted once per valid replica, RAC as in BOINC.

The ledger (`CreditGrant`) is append-only with one row per result (a unique constraint), and the
cached totals on volunteer, team and host move in the same transaction as the grant, so the
totals always equal the ledger's sums.
"""

from __future__ import annotations

import math
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from apps.accounts.models import Host, Team, Volunteer
from apps.workunits.models import Result
from apps.workunits.states import Outcome, ValidateState

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
