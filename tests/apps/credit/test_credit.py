"""Credit: a pure amount per work unit, one ledger row per valid replica, BOINC's RAC."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from django.db.models import Sum

from apps.accounts.models import Host, Team, Volunteer
from apps.credit.models import CreditGrant
from apps.credit.services import credit_for_cost, credit_grant, rac_decayed, rac_update
from apps.workunits.models import Result
from apps.workunits.states import Outcome, ServerState, ValidateState
from tests.factories import make_host, make_volunteer, make_workunit

pytestmark = pytest.mark.django_db

T0 = datetime(2025, 3, 1, tzinfo=UTC)
DAY = 86_400.0
HALF_LIFE = 7 * DAY


@pytest.fixture(autouse=True)
def _fast(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def boinc_update_average(avg, avg_time, work, work_start_time, now):
    """lib/util.cpp update_average, transcribed with times as seconds (independent of ours)."""
    if avg_time:
        diff = max(now - avg_time, 0)
        diff_days = diff / DAY
        weight = math.exp(-diff * math.log(2) / HALF_LIFE)
        avg *= weight
        if 1.0 - weight > 1e-6:
            avg += (1 - weight) * (work / diff_days)
        else:
            avg += math.log(2) * work * DAY / HALF_LIFE
    elif work:
        avg = work / ((now - work_start_time) / DAY)
    return avg


def valid_result(host: Host, credit: float, *, sent: datetime) -> Result:
    wu = make_workunit(credit=credit)
    result = Result.objects.filter(workunit=wu).first()
    Result.objects.filter(pk=result.pk).update(
        host=host, volunteer=host.volunteer, server_state=ServerState.OVER,
        outcome=Outcome.SUCCESS, validate_state=ValidateState.VALID, granted_credit=credit,
        sent_time=sent, received_time=sent)
    return Result.objects.get(pk=result.pk)


def test_credit_is_a_pure_function_of_cost():
    assert credit_for_cost(0) == 0
    assert credit_for_cost(25_000_000) == pytest.approx(2.5)
    assert credit_for_cost(10) * 2 == credit_for_cost(20)
    with pytest.raises(ValueError):
        credit_for_cost(-1)


def test_rac_follows_boincs_update_average():
    ts = T0.timestamp()
    steps = [(0, 5.0, -3600), (3 * DAY, 2.0, 3 * DAY - 600), (3 * DAY + 0.001, 1.0, 0),
             (20 * DAY, 7.5, 19 * DAY)]
    avg, avg_time = 0.0, None
    expected, expected_time = 0.0, 0.0
    for at, work, start in steps:
        now = T0 + timedelta(seconds=at)
        avg = rac_update(avg=avg, avg_time=avg_time, work=work,
                         work_start=T0 + timedelta(seconds=start), now=now)
        avg_time = now
        expected = boinc_update_average(expected, expected_time, work, ts + start, ts + at)
        expected_time = ts + at
        assert avg == pytest.approx(expected, rel=1e-12)
    # A week later with no work, the average has halved.
    assert rac_decayed(avg=avg, avg_time=avg_time, now=avg_time + timedelta(days=7)) == (
        pytest.approx(avg / 2))


def test_grant_moves_totals_and_rac_of_volunteer_team_and_host_once():
    team = Team.objects.create(name="crunchers")
    host = make_host(volunteer=make_volunteer(team=team))
    first = valid_result(host, 2.0, sent=T0 - timedelta(hours=12))
    grant = credit_grant(result=first, now=T0)
    assert grant is not None and grant.amount == 2.0 and grant.team == team
    assert credit_grant(result=first, now=T0 + timedelta(hours=1)) is None  # once
    second = valid_result(host, 3.0, sent=T0)
    credit_grant(result=second, now=T0 + timedelta(days=2))
    expected_rac = boinc_update_average(2.0 / 0.5, T0.timestamp(), 3.0, T0.timestamp(),
                                        T0.timestamp() + 2 * DAY)
    for holder in (Volunteer.objects.get(pk=host.volunteer_id), Team.objects.get(pk=team.pk),
                   Host.objects.get(pk=host.pk)):
        assert holder.total_credit == 5.0
        assert holder.rac == pytest.approx(expected_rac)
        assert holder.rac_time == T0 + timedelta(days=2)
    assert CreditGrant.objects.count() == 2
    assert CreditGrant.objects.aggregate(s=Sum("amount"))["s"] == 5.0


def test_only_valid_successes_earn_credit():
    host = make_host()
    result = valid_result(host, 1.0, sent=T0)
    Result.objects.filter(pk=result.pk).update(validate_state=ValidateState.INVALID)
    result.refresh_from_db()
    with pytest.raises(ValueError):
        credit_grant(result=result, now=T0)
    assert not CreditGrant.objects.exists()


def _holders_and_results(name: str) -> tuple[list[Volunteer | Team | Host], list[Result]]:
    """Two volunteers of one team, three hosts; four valid replicas (one host twice)."""
    team = Team.objects.create(name=name)
    first, second = make_volunteer(team=team), make_volunteer(team=team)
    hosts = [make_host(volunteer=first), make_host(volunteer=first), make_host(volunteer=second)]
    results = [valid_result(host, credit, sent=T0 + timedelta(hours=i))
               for i, (host, credit) in enumerate(
                   [(hosts[0], 1.25), (hosts[1], 0.5), (hosts[0], 2.0), (hosts[2], 0.75)])]
    return [first, second, team, *hosts], results


def test_many_grants_at_once_give_the_figures_of_one_grant_after_another():
    from apps.credit.services import credit_grant_many

    now = T0 + timedelta(days=1)
    one_by_one, results_a = _holders_and_results("one by one")
    at_once, results_b = _holders_and_results("at once")
    for result in results_a:
        assert credit_grant(result=result, now=now) is not None
    grants = credit_grant_many(results=results_b, now=now)
    assert [g.result_id for g in grants] == [r.pk for r in results_b]
    for a, b in zip(one_by_one, at_once, strict=True):
        a.refresh_from_db()
        b.refresh_from_db()
        assert (a.total_credit, a.rac, a.rac_time) == (b.total_credit, b.rac, b.rac_time)
        assert b.total_credit > 0
    # Idempotent: nothing is granted twice, by either path.
    assert credit_grant_many(results=results_b, now=now) == []
    assert credit_grant(result=results_b[0], now=now) is None
    assert CreditGrant.objects.filter(result__in=results_b).count() == 4
    total = CreditGrant.objects.filter(team=at_once[2]).aggregate(s=Sum("amount"))["s"]
    assert at_once[2].total_credit == pytest.approx(total)


def test_many_grants_refuse_a_result_that_is_not_valid():
    from apps.credit.services import credit_grant_many

    _, results = _holders_and_results("refused")
    Result.objects.filter(pk=results[1].pk).update(validate_state=ValidateState.INVALID)
    results[1].refresh_from_db()
    with pytest.raises(ValueError, match="not a valid success"):
        credit_grant_many(results=results, now=T0)
    assert not CreditGrant.objects.exists()
