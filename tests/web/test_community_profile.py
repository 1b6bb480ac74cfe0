"""A volunteer's public page: figures, credit chart, computers and strategies found; linked
from the leaderboards and team pages; nothing private on it; a few queries whatever the size."""

from __future__ import annotations

import pytest

from apps.accounts.models import Team, Volunteer
from apps.workunits.models import Strategy
from tests.factories import make_campaign, make_host, make_user, make_volunteer

pytestmark = pytest.mark.django_db


@pytest.fixture
def grace(earn_credit):
    volunteer = make_volunteer(user=make_user("grace"), display_name="Grace H.", country="GB")
    host = make_host(volunteer=volunteer, name="graces-secret-laptop", os="Linux", arch="x86_64")
    earn_credit(volunteer=volunteer, host=host, days=5)
    volunteer.refresh_from_db()
    return volunteer


def _strategy(campaign, volunteer, n: int, oos: float | None) -> Strategy:
    metrics = {"sharpe": 1.5, "total_return": 0.1, "n_trades": 3}
    return Strategy.objects.create(
        campaign=campaign, genome={"n": n}, genome_hash=f"h{n}", description=f"rule {n}",
        fitness=1.0, in_sample=metrics, out_sample=metrics, out_sample_sharpe=oos,
        found_by=volunteer)


def test_the_page_shows_figures_chart_computers_and_strategies(client, grace):
    leader = make_volunteer(display_name="Leader", total_credit=grace.total_credit + 100)
    campaign = make_campaign(name="BTC 5m")
    _strategy(campaign, grace, 1, 0.4)
    _strategy(campaign, grace, 2, None)
    _strategy(campaign, grace, 3, 1.2)
    _strategy(campaign, leader, 4, 9.9)  # someone else's

    response = client.get(f"/volunteers/{grace.pk}/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Grace H." in html and "GB" in html
    assert response.context["rank"] == 2
    assert grace.total_credit > 0 and f"{grace.total_credit:.2f}" in html
    # By out-of-sample Sharpe, the unknown last; only hers.
    assert [s.genome_hash for s in response.context["strategies"]] == ["h3", "h1", "h2"]
    assert "Linux · x86_64" in html
    assert "<polyline" in html or "<path" in html  # the credit chart is drawn
    assert "graces-secret-laptop" not in html  # a computer's name is private
    assert grace.user.email not in html


def test_leaderboards_and_team_pages_link_to_it(client, grace):
    team = Team.objects.create(name="Penguins", founder=grace.user)
    Volunteer.objects.filter(pk=grace.pk).update(team=team)
    link = f'href="/volunteers/{grace.pk}/"'

    assert link in client.get("/leaderboards/users/").content.decode()
    assert link in client.get("/leaderboards/hosts/").content.decode()
    assert link in client.get(f"/teams/{team.pk}/").content.decode()


def test_a_deactivated_or_unknown_volunteer_is_404(client, grace):
    grace.user.is_active = False
    grace.user.save(update_fields=["is_active"])

    assert client.get(f"/volunteers/{grace.pk}/").status_code == 404
    assert client.get("/volunteers/999999/").status_code == 404


def test_the_page_shows_the_viewer_a_link_to_their_account(client, grace):
    client.force_login(grace.user)
    assert 'href="/account/"' in client.get(f"/volunteers/{grace.pk}/").content.decode()


def test_in_few_queries_with_many_computers_and_strategies(client, grace,
                                                           django_assert_max_num_queries):
    campaign = make_campaign()
    for n in range(40):
        make_host(volunteer=grace)
        _strategy(campaign, grace, 100 + n, n / 10)

    with django_assert_max_num_queries(7):
        response = client.get(f"/volunteers/{grace.pk}/")

    assert response.status_code == 200
    assert len(response.context["strategies"]) == 10
