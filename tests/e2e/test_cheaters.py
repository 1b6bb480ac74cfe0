"""Cheaters, bounded: ``bench/cheaters.py``'s simulation run small on the test database.

Honest hosts compute with the worker's engine; cheating hosts forge; every host speaks the real
protocol (``POST /api/v1/scheduler/`` through Django's test client) and the real daemons run
after each round, on a simulated clock. The targets: no forged result accepted, no credit for
one, every kind turned away; copying a correct answer is analysed in its own test. The last two
tests pin down, as strict xfails, the answers no check of ours catches yet.
"""

from __future__ import annotations

import random

import pytest

from apps.accounts.models import Host
from apps.credit.models import CreditGrant
from apps.workunits.data import load_dataset
from apps.workunits.models import Result
from apps.workunits.states import ValidateState
from bench.cheaters import (
    COPY,
    COPY_FALLBACK,
    HONEST,
    NEVER_SENT,
    Figures,
    forge_lazy_client,
    forge_skipped_ga,
    run_scenario,
)
from tests.apps.workunits.test_validator import (
    daemons,
    engine_output,
    make_host,
    make_workunit,
    run_replica,
)

pytestmark = pytest.mark.django_db

FORGERS = ["invented_fitness", "replay", "skipped_ga", "random_best"]
TURNED_AWAY = ("refused", "re-check", "outvoted", "unchecked")


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


def turned_away(fig: Figures, kind: str) -> int:
    return sum(fig.fates[kind][fate] for fate in TURNED_AWAY)


def test_every_kind_of_forgery_is_turned_away_and_earns_nothing():
    fig = run_scenario(share=1 / 3, kinds=FORGERS, n_hosts=12, rounds=12, seed=7)

    assert fig.hosts == {HONEST: 8, **dict.fromkeys(FORGERS, 1)}
    for kind in [*FORGERS, NEVER_SENT]:
        assert fig.submitted.get(kind, 0) > 0, kind
        assert fig.fates[kind]["accepted"] == 0, (kind, fig.fates[kind])
        assert fig.fates[kind]["pending"] == 0, (kind, fig.fates[kind])
        assert turned_away(fig, kind) == fig.submitted[kind], (kind, fig.fates[kind])
    # A task never sent to the host never gets stored; the others are judged on their merits,
    # and most by the validator itself, not merely lost with a work unit that errored.
    assert fig.fates[NEVER_SENT]["refused"] == fig.submitted[NEVER_SENT]
    for kind in FORGERS:
        assert fig.fates[kind]["refused"] == 0
        assert fig.fates[kind]["re-check"] + fig.fates[kind]["outvoted"] > 0, kind
    assert fig.forged_accepted == 0 and not fig.failed
    assert fig.cheater_credit == fig.forged_credit == 0.0
    cheaters = Host.objects.filter(pk__in=[pk for kind in FORGERS for pk in fig.host_ids[kind]])
    assert not CreditGrant.objects.filter(host__in=cheaters).exists()
    assert set(cheaters.values_list("consecutive_valid", "total_credit")) == {(0, 0.0)}
    assert fig.honest_credit > 0 and fig.validated > 0


def test_two_agreeing_forgers_make_a_false_quorum_that_the_recheck_breaks():
    # Two hosts inflate the same honest answer the same way: identical digests, a majority
    # whenever both hold a work unit's two replicas. Only the server's backtest stops them.
    fig = run_scenario(share=0.5, kinds=["invented_fitness"], n_hosts=4, rounds=14, seed=3)

    fates = fig.fates["invented_fitness"]
    assert fates["re-check"] > 0, fates
    assert fates["accepted"] == 0 and fig.forged_credit == 0.0
    assert Result.objects.filter(error_message__startswith="rejected by the validator: top[0] "
                                 "claims").exists()


def test_copying_an_honest_answer_is_credited_but_never_earns_trust():
    """Copying, as this project decides it: a copier that reports, for a task it was itself
    sent, the answer an honest host already reported has a correct answer. No quorum can reject
    it (BOINC cannot either), so it is valid and credited. What it must not get is trust: a
    replica reported after the answer it agrees with earns none, so a copier is never sent a
    work unit alone, where it would have nothing to copy and would replay an old answer."""
    fig = run_scenario(share=0.3, kinds=[COPY], n_hosts=10, rounds=16, seed=5)

    assert fig.hosts == {HONEST: 7, COPY: 3}
    assert fig.copies_submitted > 0
    assert fig.copies_valid == fig.copies_submitted  # correct answers: accepted
    assert fig.copy_credit > 0 and fig.copy_credit == pytest.approx(fig.cheater_credit)
    trust = fig.cheater_trust[COPY]
    assert trust["consecutive_valid_max"] == 0  # valid many times, trusted never
    assert trust["alone"] == 0
    # Stuck without an honest answer to copy, a copier replays an old one: outvoted, unpaid.
    assert fig.fates[COPY_FALLBACK]["accepted"] == 0
    assert fig.forged_credit == 0.0 and not fig.failed


# --- known limits -----------------------------------------------------------------------------
# The re-check proves every claimed figure against the bars; it cannot prove that the answer is
# the GA's (random genomes scored truthfully, no generation run, an earlier answer replayed).
# Only a disagreeing honest replica exposes such an answer. Closing this needs the trajectory
# to be checkable (per-generation commitments the server spot-checks by replaying one
# generation) or server replays of whole epochs: see the cheaters report.

SELF_CONSISTENT = ("an answer that is self-consistent but not the GA's passes the re-check; only "
                   "a disagreeing replica exposes it")


@pytest.mark.xfail(strict=True, reason=f"{SELF_CONSISTENT}: a host trusted to run alone has "
                   "none (adaptive replication's accepted risk; `--kinds sleeper`)")
def test_a_trusted_host_alone_cannot_pass_off_a_self_consistent_wrong_answer():
    wu = make_workunit(min_quorum=1, target_nresults=1)  # as the scheduler leaves it, trusted
    forged = forge_skipped_ga(wu.payload, load_dataset(wu.campaign.dataset), random.Random(1))
    assert forged["digest"] != engine_output(wu)["digest"]
    liar = run_replica(wu, make_host(consecutive_valid=50), forged)
    daemons()
    assert Result.objects.get(pk=liar.pk).validate_state != ValidateState.VALID


@pytest.mark.xfail(strict=True, reason=f"{SELF_CONSISTENT}: two hosts running one lazy cheat "
                   "client agree with each other (the collusion limit; `--kinds lazy_client`)")
def test_two_hosts_running_the_same_lazy_client_cannot_form_a_quorum():
    wu = make_workunit()
    forged = forge_lazy_client(wu.payload, load_dataset(wu.campaign.dataset))
    assert forged["digest"] != engine_output(wu)["digest"]
    liars = [run_replica(wu, make_host(), forged) for _ in range(2)]
    daemons()
    assert not Result.objects.filter(pk__in=[r.pk for r in liars],
                                     validate_state=ValidateState.VALID).exists()
