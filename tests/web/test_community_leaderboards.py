"""Leaderboards (users, teams, hosts; by total credit and by RAC) and the JSON stats export."""

from __future__ import annotations

import json
import math
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.accounts.models import Host, Team
from tests.factories import make_host, make_user, make_volunteer, sha256_hex

pytestmark = pytest.mark.django_db
DAY = timedelta(days=1)


def _names(response) -> list[str]:
    return [getattr(row, "display_name", None) or getattr(row, "name", None)
            for row in response.context["rows"]]


def test_users_by_total_credit_and_by_rac_as_it_stands_now(client):
    now = timezone.now()
    # "Faded" earned a lot three weeks ago: its RAC has halved three times since, to 12.5.
    make_volunteer(display_name="Faded", total_credit=900.0, rac=100.0, rac_time=now - 21 * DAY)
    make_volunteer(display_name="Steady", total_credit=300.0, rac=20.0, rac_time=now)
    make_volunteer(display_name="New", total_credit=0.0)

    by_total = client.get("/leaderboards/users/")
    assert _names(by_total) == ["Faded", "Steady", "New"]
    by_rac = client.get("/leaderboards/users/?order=rac")
    assert _names(by_rac) == ["Steady", "Faded", "New"]
    faded = by_rac.context["rows"][1]
    assert math.isclose(faded.rac_now, 12.5, rel_tol=1e-4)
    assert ">12.50<" in by_rac.content.decode()


def test_an_unknown_order_falls_back_to_total_credit(client):
    make_volunteer()
    assert client.get("/leaderboards/users/?order=evil").context["order"] == "total"


def test_ranks_run_on_across_pages_and_find_me_jumps_to_my_page(client, bulk_volunteers):
    bulk_volunteers(130, total_credit=lambda n: 1000.0 - n)
    me = make_volunteer(user=make_user("me"), display_name="Me", total_credit=940.5)
    client.force_login(me.user)
    first = client.get("/leaderboards/users/")
    assert first.context["first_rank"] == 1
    assert first.context["my_page_url"] == "?order=total&page=2#me"  # 60 are ahead of me
    second = client.get("/leaderboards/users/?order=total&page=2")
    html = second.content.decode()
    assert second.context["first_rank"] == 51
    assert '<tr class="me" id="me">' in html
    me_row = html.split('id="me">')[1].split("</tr>")[0]
    assert ">61<" in me_row and "Me" in me_row
    last = client.get("/leaderboards/users/?page=999")  # past the end: the last page
    assert last.context["rows"].number == 3


def test_ties_are_broken_by_id_so_pages_never_overlap(client, bulk_volunteers):
    bulk_volunteers(120, total_credit=5.0)
    seen = []
    for page in (1, 2, 3):
        seen += [row.pk for row in client.get(f"/leaderboards/users/?page={page}")
                 .context["rows"]]
    assert len(seen) == len(set(seen)) == 120
    assert seen == sorted(seen)


def test_deactivated_volunteers_are_left_out(client):
    make_volunteer(display_name="Shown")
    hidden = make_volunteer(user=make_user(is_active=False), display_name="Hidden")
    make_host(volunteer=hidden)
    assert _names(client.get("/leaderboards/users/")) == ["Shown"]
    assert client.get("/leaderboards/hosts/").context["rows"].paginator.count == 0


def test_teams_board_with_member_counts_and_my_team(client):
    big, small = Team.objects.create(name="Big", total_credit=50.0), Team.objects.create(
        name="Small", total_credit=5.0, rac=3.0, rac_time=timezone.now())
    for _ in range(3):
        make_volunteer(team=big)
    me = make_volunteer(team=small)
    client.force_login(me.user)
    response = client.get("/leaderboards/teams/")
    assert [(row.name, row.member_count) for row in response.context["rows"]] == [
        ("Big", 3), ("Small", 1)]
    assert response.context["my_pk"] == small.pk
    assert _names(client.get("/leaderboards/teams/?order=rac")) == ["Small", "Big"]


def test_a_volunteer_without_team_is_told_how_to_appear_on_the_teams_board(volunteer_client):
    Team.objects.create(name="Somebody")
    html = volunteer_client.get("/leaderboards/teams/").content.decode()
    assert 'id="find-me"' not in html
    assert "Join a team to appear here" in html


def test_hosts_board_highlights_all_my_hosts_and_finds_my_best(client):
    me = make_volunteer(display_name="Me")
    others = [make_host(total_credit=float(credit)) for credit in (10, 8, 6)]
    mine = [make_host(volunteer=me, total_credit=credit) for credit in (7.0, 1.0)]
    client.force_login(me.user)
    response = client.get("/leaderboards/hosts/")
    assert [row.pk for row in response.context["rows"]] == [
        others[0].pk, others[1].pk, mine[0].pk, others[2].pk, mine[1].pk]
    assert response.context["my_pk"] == mine[0].pk
    html = response.content.decode()
    assert html.count('class="me"') == 2
    assert html.count('id="me"') == 1
    assert f">{mine[0].name}<" not in html  # host names stay private: BOINC shows ids


@pytest.mark.parametrize("url", ["/leaderboards/users/", "/leaderboards/users/?order=rac",
                                 "/leaderboards/teams/?order=rac", "/leaderboards/hosts/",
                                 "/leaderboards/hosts/?order=rac&page=3"])
def test_leaderboards_with_hundreds_of_rows_take_a_fixed_number_of_queries(
        client, url, bulk_volunteers, django_assert_max_num_queries):
    now = timezone.now()
    teams = Team.objects.bulk_create([Team(name=f"T{number}", total_credit=number,
                                           rac=number, rac_time=now - number * DAY)
                                      for number in range(300)])
    crowd = bulk_volunteers(300, total_credit=float, rac=float,
                            rac_time=lambda n: now - n * timedelta(hours=3),
                            team=lambda n: teams[n % 300])
    Host.objects.bulk_create([
        Host(volunteer=crowd[n % 300], name=f"h{n}", token_hash=sha256_hex(f"h{n}"),
             total_credit=n, rac=n % 17, rac_time=now) for n in range(400)])
    me = crowd[123]
    client.force_login(me.user)
    # session, user, viewer, count, page, viewer's position (2) [+ best host on the hosts board]
    with django_assert_max_num_queries(8):
        response = client.get(url)
    assert response.status_code == 200
    assert len(response.context["rows"].object_list) == 50
    my_page = client.get(url.split("?")[0] + response.context["my_page_url"].split("#")[0])
    assert 'id="me"' in my_page.content.decode()


# --- the stats export -----------------------------------------------------------------------


def test_stats_users_export(client):
    team = Team.objects.create(name="Penguins")
    volunteer = make_volunteer(display_name="Ada", country="GB", team=team, total_credit=12.5,
                               rac=3.0, rac_time=timezone.now())
    response = client.get("/stats/users.json")
    assert response["Content-Type"] == "application/json"
    assert "public" in response["Cache-Control"]
    body = response.json()
    assert (body["kind"], body["count"], body["page"], body["num_pages"], body["next"]) == (
        "users", 1, 1, 1, None)
    assert body["credit_half_life_days"] == 7
    [row] = body["results"]
    assert row == {"id": volunteer.pk, "name": "Ada", "country": "GB", "team_id": team.pk,
                   "total_credit": 12.5, "expavg_credit": 3.0,
                   "expavg_time": volunteer.rac_time.isoformat(),
                   "create_time": volunteer.created_at.isoformat()}
    text = response.content.decode()
    assert volunteer.user.email not in text
    assert volunteer.account_key_hint not in text


def test_stats_teams_and_hosts_exports(client):
    founder = make_volunteer()
    team = Team.objects.create(name="Penguins", founder=founder.user, total_credit=4.0)
    founder.team = team
    founder.save(update_fields=["team"])
    host = make_host(volunteer=founder, name="secret-name", os="Linux", arch="x86_64",
                     cpu_count=16, speed=5e7)
    [team_row] = client.get("/stats/teams.json").json()["results"]
    assert team_row | {"create_time": None} == {
        "id": team.pk, "name": "Penguins", "founder_id": founder.pk, "member_count": 1,
        "total_credit": 4.0, "expavg_credit": 0.0, "expavg_time": None, "create_time": None}
    response = client.get("/stats/hosts.json")
    [host_row] = response.json()["results"]
    assert {key: host_row[key] for key in ("id", "user_id", "team_id", "os", "arch",
                                            "cpu_count", "speed", "retired")} == {
        "id": host.pk, "user_id": founder.pk, "team_id": team.pk, "os": "Linux",
        "arch": "x86_64", "cpu_count": 16, "speed": 5e7, "retired": False}
    assert "secret-name" not in response.content.decode()
    assert host.token_hash not in response.content.decode()


def test_stats_export_is_paginated(client, bulk_volunteers):
    bulk_volunteers(1005)
    first = client.get("/stats/users.json").json()
    assert (first["count"], first["num_pages"], len(first["results"])) == (1005, 2, 1000)
    assert first["next"] == "http://testserver/stats/users.json?page=2"
    second = client.get("/stats/users.json?page=2").json()
    assert len(second["results"]) == 5 and second["next"] is None
    ids = [row["id"] for row in first["results"] + second["results"]]
    assert ids == sorted(ids) and len(set(ids)) == 1005
    missing = client.get("/stats/users.json?page=3")
    assert missing.status_code == 404
    assert json.loads(missing.content)["detail"].startswith("No such page")
    assert client.get("/stats/users.json?page=x").status_code == 404
