"""A property test of the whole server: random requests, reports, lies, timeouts and daemon passes.

Hypothesis drives a tiny campaign (2 islands × 2 epochs) with six hosts of six volunteers through
random sequences of scheduler calls (``scheduler_request``: asking for work, reporting honest,
erroneous or forged answers), clock jumps past deadlines and transitioner, validator,
assimilator and file-deleter passes. After every step the invariants must hold:

* credit is never granted twice: exactly the VALID replicas have a ledger row, for the work
  unit's credit, and every volunteer's, team's and host's total equals its ledger sum;
* no replica is in an impossible combination of states (OVER without an outcome, an outcome
  before OVER, IN_PROGRESS without a host, VALID without SUCCESS …), no volunteer holds two
  replicas of one work unit, a canonical result is a VALID replica of its own work unit and
  excludes an error.

Then the campaign is drained (time passes, honest hosts work, the daemons run until quiet): every
work unit must end validated or errored, assimilated, and the campaign finished.
"""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from django.db import transaction
from django.db.models import Sum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.accounts.models import Host, Team, Volunteer
from apps.credit.models import CreditGrant
from apps.workunits.assimilator import assimilate_pass
from apps.workunits.campaigns import campaign_start
from apps.workunits.file_deleter import file_delete_pass
from apps.workunits.marketdata import dataset_create_synthetic
from apps.workunits.models import Campaign, Result, WorkUnit
from apps.workunits.scheduler import scheduler_request
from apps.workunits.states import (
    AssimilateState,
    CampaignState,
    Outcome,
    ServerState,
    ValidateState,
)
from apps.workunits.transitioner import transition_pass
from apps.workunits.validator import validate_pass
from tests.apps.workunits.test_validator import T0, engine_output, redigest
from tests.factories import make_campaign, make_host, make_volunteer

pytestmark = pytest.mark.django_db(transaction=False)

N_HOSTS = 6  # more volunteers than max_total_results: a work unit can always find a new one
DELAY_BOUND = 600
CLIENT = "9.9.9"


class _Rollback(Exception):
    pass


ACTIONS = st.one_of(
    st.tuples(st.just("ask"), st.integers(0, N_HOSTS - 1)),
    st.tuples(st.just("report"), st.integers(0, N_HOSTS - 1),
              st.sampled_from(["success", "success", "error", "forged"])),
    st.tuples(st.just("advance"), st.sampled_from([30, 700, 2_000])),
    st.tuples(st.sampled_from(["transition", "validate", "assimilate", "delete"])),
)


class World:
    """The campaign, its hosts (each with the tasks it holds) and the clock."""

    def __init__(self) -> None:
        team = Team.objects.create(name="the team")
        self.hosts = [make_host(volunteer=make_volunteer(team=team if i % 2 else None))
                      for i in range(N_HOSTS)]
        self.held: dict[int, list[int]] = {h.pk: [] for h in self.hosts}
        self.now = T0
        self.rng = random.Random(0)
        self.campaign = make_campaign(
            dataset=dataset_create_synthetic(bars=600, seed=9), state=CampaignState.DRAFT,
            in_sample_start=0, in_sample_stop=450, out_sample_stop=600,
            ga_settings={"population_size": 4, "elite": 1, "immigrants": 1, "top_k": 2,
                         "min_trades": 1},
            search_space={"periods": [5, 10, 20], "max_conditions": 1},
            islands=2, generations_per_epoch=1, migrants=1, budget_epochs=2, min_quorum=2,
            target_nresults=2, max_error_results=2, max_total_results=5,
            max_success_results=3, delay_bound=DELAY_BOUND)
        campaign_start(campaign=self.campaign, now=self.now)

    def call(self, host: Host, **request) -> dict:
        host.refresh_from_db()
        reply = scheduler_request(host=host, request=request, client_version=CLIENT,
                                  now=self.now, rng=self.rng)
        held = self.held[host.pk]
        for task in reply["tasks"]:
            held.append(task["result_id"])
        for result_id in [*reply["accepted"], *(r["result_id"] for r in reply["rejected"]),
                          *reply["abort"]]:
            if result_id in held:
                held.remove(result_id)
        return reply

    def ask(self, i: int) -> None:
        host = self.hosts[i]
        self.call(host, free_slots=2, work_seconds=1_000.0, in_progress=self.held[host.pk],
                  acks=self.held[host.pk])

    def report(self, i: int, kind: str) -> None:
        host = self.hosts[i]
        if not self.held[host.pk]:
            return
        result_id = self.held[host.pk][0]
        wu = Result.objects.select_related("workunit__campaign__dataset").get(
            pk=result_id).workunit
        if kind == "error":
            report = {"result_id": result_id, "status": "error", "error": "boom"}
        else:
            output = engine_output(wu)
            if kind == "forged":
                output["top"][0]["metrics"]["final_equity"] *= 2
                redigest(output)
            report = {"result_id": result_id, "status": "success", "output": output}
        self.call(host, results=[report], acks=self.held[host.pk])

    def daemons(self) -> int:
        return (transition_pass(now=self.now) + validate_pass(now=self.now)
                + assimilate_pass(now=self.now) + transition_pass(now=self.now))

    def step(self, action: tuple) -> None:
        name = action[0]
        if name == "ask":
            self.ask(action[1])
        elif name == "report":
            self.report(action[1], action[2])
        elif name == "advance":
            self.now += timedelta(seconds=action[1])
        elif name == "transition":
            transition_pass(now=self.now)
        elif name == "validate":
            validate_pass(now=self.now)
        elif name == "assimilate":
            assimilate_pass(now=self.now)
        else:
            file_delete_pass(now=self.now)

    def drain(self) -> None:
        """Let time pass and honest hosts work until the campaign is done (bounded)."""
        for _ in range(40):
            self.now += timedelta(seconds=2 * DELAY_BOUND)
            self.daemons()
            for i in range(N_HOSTS):
                self.ask(i)
                while self.held[self.hosts[i].pk]:
                    self.report(i, "success")
            self.daemons()
            check_invariants()
            campaign = Campaign.objects.get(pk=self.campaign.pk)
            if (campaign.state == CampaignState.FINISHED and not WorkUnit.objects.exclude(
                    assimilate_state=AssimilateState.DONE).exists()):
                return


def check_invariants() -> None:
    grants = {g.result_id: g for g in CreditGrant.objects.all()}
    pairs: set[tuple[int, int]] = set()
    for r in Result.objects.select_related("workunit"):
        over = r.server_state == ServerState.OVER
        assert (r.outcome != Outcome.INIT) == over, f"result {r.pk}: outcome {r.outcome}"
        if not over:
            assert r.validate_state == ValidateState.INIT
        if r.server_state == ServerState.IN_PROGRESS:
            assert r.host_id and r.sent_time and r.report_deadline
        if r.server_state == ServerState.UNSENT:
            assert r.host_id is None and r.workunit.canonical_result_id is None
        if r.validate_state in (ValidateState.VALID, ValidateState.INCONCLUSIVE,
                                ValidateState.NO_CHECK, ValidateState.TOO_LATE):
            assert r.outcome == Outcome.SUCCESS, f"result {r.pk}"
        if r.outcome in (Outcome.NO_REPLY, Outcome.DIDNT_NEED):
            assert r.validate_state == ValidateState.INIT
        if r.validate_state == ValidateState.VALID:
            assert r.pk in grants and grants[r.pk].amount == r.granted_credit == r.workunit.credit
        else:
            assert r.pk not in grants and r.granted_credit == 0
        if r.volunteer_id is not None:
            assert (r.workunit_id, r.volunteer_id) not in pairs, "two replicas for a volunteer"
            pairs.add((r.workunit_id, r.volunteer_id))
    for wu in WorkUnit.objects.select_related("canonical_result"):
        if wu.canonical_result_id is not None:
            assert wu.canonical_result.workunit_id == wu.pk
            assert wu.canonical_result.validate_state == ValidateState.VALID
            assert wu.error_mask == 0
    for model, field in ((Volunteer, "volunteer"), (Team, "team"), (Host, "host")):
        for holder in model.objects.all():
            ledger = CreditGrant.objects.filter(**{field: holder}).aggregate(
                s=Sum("amount"))["s"] or 0.0
            assert holder.total_credit == pytest.approx(ledger, abs=1e-12)


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.GHOST_TIMEOUT_SECONDS = 300


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(actions=st.lists(ACTIONS, max_size=25))
def test_random_histories_keep_the_invariants_and_every_workunit_ends(actions):
    try:
        with transaction.atomic():  # each example starts from an empty database
            world = World()
            for action in actions:
                world.step(action)
                check_invariants()
            world.drain()
            campaign = Campaign.objects.get(pk=world.campaign.pk)
            assert campaign.state == CampaignState.FINISHED
            workunits = list(WorkUnit.objects.filter(campaign=campaign))
            assert len(workunits) == 4
            for wu in workunits:
                assert (wu.canonical_result_id is not None) != (wu.error_mask != 0), wu
                assert wu.assimilate_state == AssimilateState.DONE
            raise _Rollback
    except _Rollback:
        pass
