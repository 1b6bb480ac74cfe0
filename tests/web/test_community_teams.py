"""Teams on the site: list, found, join, leave, the team page."""

from __future__ import annotations

import pytest

from apps.accounts.models import Team
from tests.factories import make_user, make_volunteer

pytestmark = pytest.mark.django_db


def test_founding_a_team_makes_the_founder_its_first_member(volunteer_client, volunteer):
    response = volunteer_client.post("/teams/new/", {"name": "  Penguins  ",
                                                     "description": "Spare cores."})
    team = Team.objects.get()
    assert response["Location"] == f"/teams/{team.pk}/"
    assert (team.name, team.description, team.founder) == ("Penguins", "Spare cores.",
                                                           volunteer.user)
    volunteer.refresh_from_db()
    assert volunteer.team == team
    page = volunteer_client.get(response["Location"]).content.decode()
    assert "You founded Penguins and are its first member." in page
    assert "founded by Ada" in page


def test_team_names_are_unique_whatever_their_case(volunteer_client):
    Team.objects.create(name="Penguins")
    response = volunteer_client.post("/teams/new/", {"name": "PENGUINS"})
    assert response.status_code == 200
    assert "There is already a team called &#x27;PENGUINS&#x27;." in response.content.decode()
    assert Team.objects.count() == 1


def test_a_blank_team_name_is_refused(volunteer_client):
    response = volunteer_client.post("/teams/new/", {"name": "   "})
    assert "This field is required." in response.context["form"].errors["name"]


def test_joining_and_leaving(volunteer_client, volunteer):
    first, second = Team.objects.create(name="First"), Team.objects.create(name="Second")
    assert volunteer_client.get(f"/teams/{first.pk}/join/").status_code == 405
    volunteer_client.post(f"/teams/{first.pk}/join/")
    volunteer.refresh_from_db()
    assert volunteer.team == first

    response = volunteer_client.post(f"/teams/{first.pk}/join/", follow=True)
    assert "You are already in First." in response.content.decode()

    volunteer_client.post(f"/teams/{second.pk}/join/")  # switching teams
    volunteer.refresh_from_db()
    assert volunteer.team == second

    response = volunteer_client.post("/teams/leave/")
    assert response["Location"] == f"/teams/{second.pk}/"
    volunteer.refresh_from_db()
    assert volunteer.team is None
    response = volunteer_client.post("/teams/leave/", follow=True)
    assert "You are not in a team." in response.content.decode()
    assert volunteer_client.post("/teams/999999/join/").status_code == 404


def test_anonymous_visitors_see_teams_but_cannot_join(client):
    team = Team.objects.create(name="Open")
    assert client.get("/teams/").status_code == 200
    page = client.get(f"/teams/{team.pk}/").content.decode()
    assert "Log in to join" in page
    assert client.post(f"/teams/{team.pk}/join/")["Location"].startswith("/login/")
    assert client.get("/teams/999999/").status_code == 404


def test_the_team_list_is_searchable_and_paginated(client):
    Team.objects.bulk_create([Team(name=f"Team {number:03d}", total_credit=number)
                              for number in range(120)])
    page = client.get("/teams/").context["teams"]
    assert (len(page.object_list), page.paginator.num_pages) == (50, 3)
    assert page.object_list[0].name == "Team 119"  # biggest credit first
    found = client.get("/teams/?q=team 00").context["teams"]
    assert sorted(team.name for team in found) == [f"Team 00{n}" for n in range(10)]


def test_the_team_page_lists_members_by_credit_in_few_queries(
        client, volunteer, bulk_volunteers, django_assert_max_num_queries):
    team = Team.objects.create(name="Big", founder=volunteer.user)
    bulk_volunteers(200, prefix="member", team=team, total_credit=float)
    volunteer.team = team
    volunteer.save(update_fields=["team"])
    client.force_login(volunteer.user)
    # session, user, viewer's volunteer, team (+ founder, member count), member count, page
    with django_assert_max_num_queries(6):
        response = client.get(f"/teams/{team.pk}/?page=2")
    members = response.context["members"]
    assert members.paginator.count == 201
    assert members.object_list[0].display_name == "Member 149"
    assert response.context["team"].member_count == 201
    assert ">51<" in response.content.decode()  # ranks go on across pages


def test_a_deactivated_members_profile_is_not_shown(client):
    team = Team.objects.create(name="Quiet")
    make_volunteer(team=team, display_name="Visible")
    make_volunteer(user=make_user(is_active=False), team=team, display_name="Gone")
    response = client.get(f"/teams/{team.pk}/")
    assert [m.display_name for m in response.context["members"]] == ["Visible"]
    assert response.context["team"].member_count == 1
