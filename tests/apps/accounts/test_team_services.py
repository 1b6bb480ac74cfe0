"""Teams: founding, joining and leaving, each a conditional move of one volunteer's team."""

from __future__ import annotations

import pytest

from apps.accounts.models import Team, Volunteer
from apps.accounts.selectors import host_owned_by, team_get, team_list, volunteer_for_user
from apps.accounts.services import team_create, team_join, team_leave
from apps.common.errors import ApplicationError
from tests.factories import make_host, make_user, make_volunteer

pytestmark = pytest.mark.django_db


def test_the_founder_joins_the_team_they_found():
    founder = make_volunteer()
    team = team_create(founder=founder, name="  Night   Owls ", description=" Hoot. ")
    assert (team.name, team.description, team.founder) == ("Night Owls", "Hoot.", founder.user)
    assert Volunteer.objects.get(pk=founder.pk).team == team
    assert founder.team == team


def test_founding_moves_the_founder_out_of_their_old_team():
    old = Team.objects.create(name="Old")
    founder = make_volunteer(team=old)
    team = team_create(founder=founder, name="New")
    assert Volunteer.objects.get(pk=founder.pk).team == team


@pytest.mark.parametrize(("name", "code"), [("", "invalid_team_name"),
                                            ("   ", "invalid_team_name"),
                                            ("x" * 101, "invalid_team_name"),
                                            ("owls", "team_name_taken")])
def test_founding_refuses_bad_or_taken_names(name, code):
    Team.objects.create(name="Owls")
    founder = make_volunteer()
    with pytest.raises(ApplicationError) as caught:
        team_create(founder=founder, name=name)
    assert caught.value.extra["code"] == code
    assert Team.objects.count() == 1
    assert Volunteer.objects.get(pk=founder.pk).team is None


def test_join_switch_and_leave():
    first, second = Team.objects.create(name="First"), Team.objects.create(name="Second")
    volunteer = make_volunteer()
    team_join(volunteer=volunteer, team=first)
    with pytest.raises(ApplicationError, match="already in First"):
        team_join(volunteer=volunteer, team=first)
    team_join(volunteer=volunteer, team=second)
    assert Volunteer.objects.get(pk=volunteer.pk).team == second
    team_leave(volunteer=volunteer)
    assert Volunteer.objects.get(pk=volunteer.pk).team is None
    with pytest.raises(ApplicationError, match="not in a team"):
        team_leave(volunteer=volunteer)


def test_a_stale_copy_cannot_move_a_volunteer_twice():
    # Two tabs read the volunteer with no team; the first join wins, the second is refused.
    first, second = Team.objects.create(name="First"), Team.objects.create(name="Second")
    volunteer = make_volunteer()
    stale = Volunteer.objects.get(pk=volunteer.pk)
    team_join(volunteer=volunteer, team=first)
    with pytest.raises(ApplicationError) as caught:
        team_join(volunteer=stale, team=second)
    assert caught.value.extra == {"code": "conflict", "status": 409}
    assert Volunteer.objects.get(pk=volunteer.pk).team == first


def test_leaving_keeps_the_teams_credit_and_founder():
    founder = make_volunteer()
    team = team_create(founder=founder, name="Keepers")
    Team.objects.filter(pk=team.pk).update(total_credit=42.0)
    team_leave(volunteer=founder)
    team.refresh_from_db()
    assert (team.total_credit, team.founder) == (42.0, founder.user)


def test_selectors_scope_hosts_to_their_owner_and_count_active_members():
    owner, other = make_volunteer(), make_volunteer()
    host = make_host(volunteer=owner)
    assert host_owned_by(volunteer=owner, host_id=host.pk) == host
    assert host_owned_by(volunteer=other, host_id=host.pk) is None
    team = Team.objects.create(name="Counted")
    make_volunteer(team=team)
    make_volunteer(team=team, user=make_user(is_active=False))
    assert team_get(team_id=team.pk).member_count == 1
    assert team_get(team_id=0) is None
    assert [t.name for t in team_list(search="count")] == ["Counted"]
    assert volunteer_for_user(owner.user) == owner
    assert volunteer_for_user(make_user()) is None
