"""Credit reads: RAC decayed in SQL as in Python, leaderboard positions, credit history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from apps.accounts.models import Volunteer
from apps.credit.models import CreditGrant
from apps.credit.selectors import (
    credit_history,
    downsample,
    leaderboard_position,
    leaderboard_users,
    rac_now_expression,
)
from apps.credit.services import credit_grant, rac_decayed
from apps.workunits.models import Result
from apps.workunits.states import Outcome, ServerState, ValidateState
from tests.factories import make_campaign, make_host, make_volunteer, make_workunit

pytestmark = pytest.mark.django_db

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


@pytest.mark.parametrize("age", [None, timedelta(0), timedelta(hours=5), timedelta(days=7),
                                 timedelta(days=30), timedelta(days=3 * 365),
                                 -timedelta(hours=1)])  # a clock ahead of ours: no growth
def test_rac_decayed_in_sql_equals_the_python_decay(age):
    rac_time = None if age is None else NOW - age
    volunteer = make_volunteer(rac=80.0, rac_time=rac_time)
    in_sql = (Volunteer.objects.annotate(rac_now=rac_now_expression(now=NOW))
              .get(pk=volunteer.pk).rac_now)
    in_python = rac_decayed(avg=80.0, avg_time=rac_time, now=NOW)
    assert in_sql == pytest.approx(in_python, rel=1e-6, abs=1e-12)


def test_position_counts_the_rows_ahead_with_ties_broken_by_id():
    rows = [make_volunteer(total_credit=credit, rac=credit, rac_time=NOW)
            for credit in (5.0, 9.0, 5.0, 1.0)]
    for order in ("total", "rac"):
        board = leaderboard_users(order=order, now=NOW)
        assert [v.pk for v in board] == [rows[1].pk, rows[0].pk, rows[2].pk, rows[3].pk]
        positions = [leaderboard_position(board, order=order, pk=v.pk) for v in rows]
        assert positions == [2, 1, 3, 4]
    assert leaderboard_position(board, order="total", pk=0) is None
    with pytest.raises(ValueError):
        leaderboard_users(order="credit", now=NOW)


def _earn(volunteer, host, campaign, *, when, cost=10_000_000):
    workunit = make_workunit(campaign=campaign, replicas=1, cost=cost, credit=cost / 1e7)
    Result.objects.filter(workunit=workunit).update(
        host=host, volunteer=volunteer, server_state=ServerState.OVER, outcome=Outcome.SUCCESS,
        validate_state=ValidateState.VALID, sent_time=when - timedelta(hours=3),
        received_time=when, granted_credit=workunit.credit)
    grant = credit_grant(result=Result.objects.get(workunit=workunit), now=when)
    CreditGrant.objects.filter(pk=grant.pk).update(granted_at=when)


def test_credit_history_replays_the_grants_rac_day_by_day():
    volunteer = make_volunteer()
    host, campaign = make_host(volunteer=volunteer), make_campaign()
    start = NOW - timedelta(days=20)
    for day in (0, 1, 2, 5, 9):
        _earn(volunteer, host, campaign, when=start + timedelta(days=day))
    volunteer.refresh_from_db()
    history = credit_history(volunteer=volunteer, now=NOW)
    assert [p.day for p in history] == [
        (start + timedelta(days=d)).date() for d in (0, 1, 2, 5, 9)] + [NOW.date()]
    assert [p.total_credit for p in history] == [1.0, 2.0, 3.0, 4.0, 5.0, 5.0]
    # One grant a day: the replay is the grant service's own RAC, exactly.
    assert history[-2].rac == pytest.approx(volunteer.rac, rel=1e-12)
    assert history[-1].rac == pytest.approx(
        rac_decayed(avg=volunteer.rac, avg_time=volunteer.rac_time, now=NOW), rel=1e-9)


def test_credit_history_of_a_volunteer_without_credit_is_empty():
    assert credit_history(volunteer=make_volunteer(), now=NOW) == []


def test_credit_history_is_downsampled_to_at_most_500_points():
    volunteer = make_volunteer()
    campaign = make_campaign()
    workunits = [make_workunit(campaign=campaign, replicas=1) for _ in range(3)]
    results = [w.results.get() for w in workunits]
    # Ledger rows written directly: the history reads only the ledger.
    CreditGrant.objects.bulk_create([
        CreditGrant(result=result, volunteer=volunteer, amount=1.0) for result in results])
    for number, grant in enumerate(CreditGrant.objects.order_by("pk")):
        CreditGrant.objects.filter(pk=grant.pk).update(granted_at=NOW - timedelta(days=number))
    assert len(credit_history(volunteer=volunteer, now=NOW, max_points=2)) == 2


def test_downsample_keeps_the_first_and_last_and_at_most_max_points():
    points = list(range(1234))
    kept = downsample(points, max_points=500)
    assert len(kept) <= 500
    assert kept[0] == 0 and kept[-1] == 1233
    assert downsample(points[:10], max_points=500) == points[:10]
    assert downsample(points[:3], max_points=2) == [0, 2]
    with pytest.raises(ValueError):
        downsample(points, max_points=1)

