"""The validator, rule by rule: quorum, the engine re-check of claimed results, credit, trust.

Outputs are real: the engine's ``run_epoch`` runs each distinct work unit once per module (on a
small synthetic data set) and tests forge copies of its answer.
The helpers below (engine outputs, sending and reporting replicas, running the daemons) are
shared with the other daemon test modules, which import them from here.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import pytest

from apps.accounts.models import Host, Team
from apps.credit.models import CreditGrant
from apps.credit.services import credit_grant
from apps.workunits.campaigns import campaign_start
from apps.workunits.data import load_dataset
from apps.workunits.marketdata import dataset_create_synthetic
from apps.workunits.models import Campaign, Result, WorkUnit
from apps.workunits.states import (
    AssimilateState,
    CampaignState,
    ErrorMask,
    Outcome,
    ServerState,
    ValidateState,
)
from apps.workunits.transitioner import transition_pass
from apps.workunits.validator import output_recheck, validate_pass
from tests.factories import make_campaign as factory_campaign
from tests.factories import make_host as factory_host
from tests.factories import make_volunteer
from worker_client.engine import Genome
from worker_client.engine.ga import GASettings, digest_of_output, run_epoch
from worker_client.engine.space import SearchSpace

pytestmark = pytest.mark.django_db

T0 = datetime(2025, 1, 1, tzinfo=UTC)
SETTINGS = {"population_size": 8, "elite": 1, "immigrants": 1, "top_k": 4, "min_trades": 3}
_OUTPUTS: dict[str, dict] = {}


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def make_host(*, team: Team | None = None, consecutive_valid: int = 0) -> Host:
    return factory_host(volunteer=make_volunteer(team=team), consecutive_valid=consecutive_valid)


def make_campaign(**overrides) -> Campaign:
    """A draft campaign on a real (synthetic) data set, small enough to mine in milliseconds."""
    fields = {"in_sample_start": 0, "in_sample_stop": 1_500, "out_sample_stop": 2_000,
              "ga_settings": SETTINGS, "islands": 1, "generations_per_epoch": 2,
              "migrants": 2, "seed": 3, "min_quorum": 2, "target_nresults": 2,
              "budget_epochs": 1, "delay_bound": 3600}
    fields.update(overrides)
    return factory_campaign(dataset=dataset_create_synthetic(bars=2_000, seed=5),
                            state=CampaignState.DRAFT, **fields)


def make_workunit(**overrides) -> WorkUnit:
    campaign = make_campaign(**overrides)
    (wu,) = campaign_start(campaign=campaign, now=T0)
    return wu


def engine_output(wu: WorkUnit) -> dict:
    """What an honest worker reports for ``wu`` (computed once per distinct payload)."""
    key = json.dumps(wu.payload, sort_keys=True)
    if key not in _OUTPUTS:
        p = wu.payload
        data = load_dataset(wu.campaign.dataset).slice(p["start"], p["stop"])
        _OUTPUTS[key] = run_epoch(
            data, SearchSpace.from_dict(p["space"]), GASettings.from_dict(p["settings"]),
            p["seed"], [Genome.from_dict(g) for g in p["start_population"]],
            p["generations"]).to_dict()
    return copy.deepcopy(_OUTPUTS[key])


def redigest(output: dict) -> dict:
    """Give a forged output the digest it would have: a liar who knows the algorithm."""
    output["digest"] = digest_of_output(output)
    return output


def send(wu: WorkUnit, host: Host, *, now: datetime = T0) -> Result:
    result = Result.objects.filter(workunit=wu, server_state=ServerState.UNSENT).first()
    assert Result.objects.filter(pk=result.pk, server_state=ServerState.UNSENT).update(
        server_state=ServerState.IN_PROGRESS, host=host, volunteer=host.volunteer,
        sent_time=now, acked_time=now,
        report_deadline=now + timedelta(seconds=wu.delay_bound)) == 1
    return Result.objects.get(pk=result.pk)


def report(result: Result, output: dict | None, *, now: datetime = T0) -> None:
    """What the scheduler stores for a report (success with an output, or an error)."""
    fields = ({"outcome": Outcome.SUCCESS, "output": output, "digest": output["digest"]}
              if output is not None else
              {"outcome": Outcome.CLIENT_ERROR, "validate_state": ValidateState.INVALID})
    assert Result.objects.filter(pk=result.pk, server_state=ServerState.IN_PROGRESS).update(
        server_state=ServerState.OVER, received_time=now, **fields) == 1
    WorkUnit.objects.filter(pk=result.workunit_id).update(transition_time=now)


def run_replica(wu: WorkUnit, host: Host, output: dict | None, *, now: datetime = T0) -> Result:
    result = send(wu, host, now=now)
    report(result, output, now=now)
    return result


def daemons(now: datetime = T0) -> None:
    transition_pass(now=now)
    validate_pass(now=now)
    transition_pass(now=now)


def states(wu: WorkUnit) -> list[tuple[int, int, int]]:
    return list(Result.objects.filter(workunit=wu).order_by("id")
                .values_list("server_state", "outcome", "validate_state"))


def forged_metrics(wu: WorkUnit) -> dict:
    output = engine_output(wu)
    output["top"][0]["metrics"]["final_equity"] *= 1.5
    output["top"][0]["metrics"]["sharpe"] = (output["top"][0]["metrics"]["sharpe"] or 0) + 3
    return redigest(output)


# --- the digest and the re-check -------------------------------------------------------------


def test_digest_recomputed_from_an_honest_output_is_the_engines():
    wu = make_workunit()
    output = engine_output(wu)
    output_recheck(workunit=wu, output=output, digest=output["digest"])  # does not raise
    assert redigest(copy.deepcopy(output))["digest"] == output["digest"]


@pytest.mark.parametrize("forge, reason", [
    (lambda o: o.update(digest="0" * 64), "digest does not match"),
    (lambda o: o["top"][0]["metrics"].update(n_trades=o["top"][0]["metrics"]["n_trades"] + 1),
     "n_trades"),
    (lambda o: o["top"][1].update(fitness=o["top"][0]["fitness"] + 1), "fitness"),
    (lambda o: o.update(evaluated=10_000), "evaluated"),
    (lambda o: o["population"].reverse(), "rank order"),
    (lambda o: o["top"][0]["metrics"].update(sharpe=10**400), "sharpe"),  # no OverflowError
    (lambda o: o["top"][0].update(hash="f" * 64), "hash"),
    # The trials' Sharpe sums: in the digest, bounded by the strategies evaluated, coherent.
    (lambda o: o["trials"].update(sharpe_sq_sum=o["trials"]["sharpe_sq_sum"] * 2),
     "digest does not match"),
    (lambda o: o["trials"].update(n=o["evaluated"] + 1), "trials, but"),
    (lambda o: o["trials"].update(sharpe_sum=1e6), "cannot come from any set"),
    (lambda o: o.pop("trials"), "trials must hold"),
])
def test_recheck_rejects_forgeries(forge, reason):
    from apps.workunits.validator import Rejected

    wu = make_workunit()
    output = engine_output(wu)
    forge(output)
    with pytest.raises(Rejected, match=reason):
        output_recheck(workunit=wu, output=output)


# --- quorum ----------------------------------------------------------------------------------


def test_two_agreeing_results_make_a_canonical_result_and_earn_credit():
    wu = make_workunit()
    a, b = make_host(), make_host()
    ra = run_replica(wu, a, engine_output(wu))
    rb = run_replica(wu, b, engine_output(wu))
    daemons()
    wu.refresh_from_db()
    assert wu.canonical_result_id == ra.pk
    assert wu.assimilate_state == AssimilateState.READY and not wu.need_validate
    assert [s[2] for s in states(wu)] == [ValidateState.VALID, ValidateState.VALID]
    for r in (ra, rb):
        grant = CreditGrant.objects.get(result=r)
        assert grant.amount == pytest.approx(wu.credit) and wu.credit > 0
    rb.refresh_from_db()
    assert rb.granted_credit == wu.credit


def test_one_success_is_not_validated_before_quorum():
    wu = make_workunit()
    run_replica(wu, make_host(), engine_output(wu))
    transition_pass(now=T0)
    wu.refresh_from_db()
    assert not wu.need_validate
    assert validate_pass(now=T0) == 0


def test_disagreement_is_inconclusive_and_raises_target_nresults():
    wu = make_workunit()
    honest = engine_output(wu)
    other = copy.deepcopy(honest)
    other["digest"] = "1" * 64  # a different answer (it will not survive a re-check either)
    ra = run_replica(wu, make_host(), honest)
    rb = run_replica(wu, make_host(), other)
    transition_pass(now=T0)
    assert validate_pass(now=T0) == 1
    wu.refresh_from_db()
    assert wu.canonical_result_id is None and wu.target_nresults == 3
    assert [s[2] for s in states(wu)] == [ValidateState.INCONCLUSIVE] * 2
    transition_pass(now=T0)  # the extra replica
    assert Result.objects.filter(workunit=wu, server_state=ServerState.UNSENT).count() == 1
    rc = run_replica(wu, make_host(), engine_output(wu))
    daemons()
    wu.refresh_from_db()
    assert wu.canonical_result_id == ra.pk
    assert {r.pk: r.validate_state for r in Result.objects.filter(workunit=wu)} == {
        ra.pk: ValidateState.VALID, rb.pk: ValidateState.INVALID, rc.pk: ValidateState.VALID}
    assert not CreditGrant.objects.filter(result=rb).exists()


def test_quorum_of_three_needs_a_strict_majority_of_two():
    wu = make_workunit(min_quorum=3, target_nresults=3)
    other = engine_output(wu)
    other["digest"] = "2" * 64
    wrong = run_replica(wu, make_host(), other)
    right = [run_replica(wu, make_host(), engine_output(wu)) for _ in range(2)]
    daemons()
    wu.refresh_from_db()
    assert wu.canonical_result_id == right[0].pk
    wrong.refresh_from_db()
    assert wrong.validate_state == ValidateState.INVALID


def test_no_consensus_past_max_success_results_errors_the_workunit():
    wu = make_workunit(target_nresults=3, max_success_results=2, max_total_results=8)
    for i in range(3):
        output = engine_output(wu)
        output["digest"] = str(i) * 64
        run_replica(wu, make_host(), output)
    daemons()
    wu.refresh_from_db()
    assert wu.error_mask & ErrorMask.TOO_MANY_SUCCESS_RESULTS
    assert wu.assimilate_state == AssimilateState.READY
    assert [s[2] for s in states(wu)] == [ValidateState.NO_CHECK] * 3


# --- lies ------------------------------------------------------------------------------------


def test_result_that_lies_about_its_metrics_is_rejected_without_credit_and_resets_trust():
    wu = make_workunit(min_quorum=1, target_nresults=1)
    liar = make_host(consecutive_valid=25)
    bad = run_replica(wu, liar, forged_metrics(wu))
    daemons()
    bad.refresh_from_db()
    liar.refresh_from_db()
    wu.refresh_from_db()
    assert bad.validate_state == ValidateState.INVALID and "final_equity" in bad.error_message
    assert not CreditGrant.objects.exists() and bad.granted_credit == 0
    assert liar.consecutive_valid == 0 and liar.n_invalid == 1
    assert liar.volunteer.total_credit == 0
    assert wu.canonical_result_id is None
    # A replacement goes out, and the honest answer completes the work unit.
    good = run_replica(wu, make_host(), engine_output(wu))
    daemons()
    wu.refresh_from_db()
    assert wu.canonical_result_id == good.pk


def test_forged_digest_is_caught_even_with_true_metrics():
    wu = make_workunit(min_quorum=1, target_nresults=1)
    output = engine_output(wu)
    output["evaluated"] -= 1  # the summary changes, the digest claimed stays the honest one
    bad = run_replica(wu, make_host(), output)
    daemons()
    bad.refresh_from_db()
    assert bad.validate_state == ValidateState.INVALID
    assert "digest" in bad.error_message


def test_a_majority_of_liars_is_never_canonical():
    wu = make_workunit()
    forged = forged_metrics(wu)
    liars = [run_replica(wu, make_host(consecutive_valid=3), copy.deepcopy(forged))
             for _ in range(2)]
    daemons()
    wu.refresh_from_db()
    assert wu.canonical_result_id is None and wu.error_mask == 0
    for r in liars:
        r.refresh_from_db()
        assert r.validate_state == ValidateState.INVALID
        assert r.host.consecutive_valid == 0
    assert Result.objects.filter(workunit=wu, server_state=ServerState.UNSENT).count() == 2
    assert not CreditGrant.objects.exists()


def test_genome_outside_the_search_space_is_rejected():
    wu = make_workunit(min_quorum=1, target_nresults=1,
                       search_space={"indicators": ["sma", "rsi"]})
    output = engine_output(wu)
    output["population"][-1] = Genome.sma_crossover(7, 200).to_dict()  # period 7 is allowed
    sneaky = copy.deepcopy(output)
    sneaky["population"][-1]["entry"][0]["a"] = "ema(14)"  # ema is not in this space
    r = run_replica(wu, make_host(), sneaky)
    daemons()
    r.refresh_from_db()
    assert r.validate_state == ValidateState.INVALID
    assert "outside the search space" in r.error_message


def test_unreadable_output_is_a_validate_error():
    wu = make_workunit(min_quorum=1, target_nresults=1)
    r = run_replica(wu, make_host(), {"digest": "3" * 64, "top": "nothing"})
    daemons()
    r.refresh_from_db()
    assert (r.outcome, r.validate_state) == (Outcome.VALIDATE_ERROR, ValidateState.INVALID)


# --- stragglers, credit once, reliability ----------------------------------------------------


def test_straggler_with_the_canonical_answer_is_valid_and_credited():
    wu = make_workunit()
    hosts = [make_host() for _ in range(3)]
    late = send(wu, hosts[2])  # out before the others, back after them
    WorkUnit.objects.filter(pk=wu.pk).update(target_nresults=3)
    transition_pass(now=T0)
    run_replica(wu, hosts[0], engine_output(wu))
    run_replica(wu, hosts[1], engine_output(wu))
    daemons()
    report(late, engine_output(wu), now=T0 + timedelta(minutes=5))
    daemons(T0 + timedelta(minutes=5))
    late.refresh_from_db()
    assert late.validate_state == ValidateState.VALID
    assert CreditGrant.objects.filter(result=late).count() == 1
    hosts[2].refresh_from_db()
    # Reported after the answer it agrees with: it could be a copy, so no trust (test_trust.py).
    assert (hosts[2].consecutive_valid, hosts[2].n_valid) == (0, 1)


def test_straggler_with_another_answer_is_invalid():
    wu = make_workunit(target_nresults=3, max_total_results=8)
    hosts = [make_host() for _ in range(3)]
    late = send(wu, hosts[2])
    run_replica(wu, hosts[0], engine_output(wu))
    run_replica(wu, hosts[1], engine_output(wu))
    daemons()
    other = engine_output(wu)
    other["digest"] = "4" * 64
    report(late, other, now=T0 + timedelta(minutes=5))
    daemons(T0 + timedelta(minutes=5))
    late.refresh_from_db()
    assert late.validate_state == ValidateState.INVALID
    assert not CreditGrant.objects.filter(result=late).exists()


def test_credit_is_granted_once_even_if_the_validator_runs_twice():
    wu = make_workunit()
    replicas = [run_replica(wu, make_host(), engine_output(wu)) for _ in range(2)]
    daemons()
    WorkUnit.objects.filter(pk=wu.pk).update(need_validate=True)  # a duplicate delivery
    validate_pass(now=T0)
    validate_pass(now=T0)
    for r in replicas:
        r.refresh_from_db()
        assert credit_grant(result=r, now=T0) is None
        assert CreditGrant.objects.filter(result=r).count() == 1
        assert r.volunteer.total_credit == pytest.approx(wu.credit)


def test_valid_results_build_trust_only_when_another_host_agreed():
    wu = make_workunit()
    a, b = make_host(), make_host()
    Host.objects.filter(pk=a.pk).update(max_results_day=70)
    run_replica(wu, a, engine_output(wu))
    run_replica(wu, b, engine_output(wu))
    daemons()
    a.refresh_from_db()
    assert (a.consecutive_valid, a.n_valid, a.max_results_day) == (1, 1, 100)  # capped
    alone = make_workunit(min_quorum=1, target_nresults=1)
    run_replica(alone, a, engine_output(alone))
    daemons()
    a.refresh_from_db()
    assert (a.consecutive_valid, a.n_valid) == (1, 2)  # unconfirmed: no trust earned
