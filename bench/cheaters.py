"""Cheaters against the real portal: forged results accepted, credit they earn, redundancy's cost.

    .venv/bin/python bench/cheaters.py [--share 0.1 0.3] [--hosts 30] [--rounds 30]
                                       [--kinds …] [--database postgres://…] [--seed 1]

A share of the simulated hosts cheat; the others compute every task for real with the worker's
own code (``worker_client.compute.parse_payload``, then ``engine.ga.run_epoch``; replicas of one
work unit reuse the first computation, which the engine's determinism makes bit-identical).
Every host speaks the real protocol to the real portal: ``POST /api/v1/scheduler/`` through
Django's test client (host-token authentication, the serializers, the scheduler service), and
after each round of requests the real daemons run until idle (transitioner, validator,
assimilator, as ``manage.py run_daemons --once`` does). Time is simulated: a round is one
minute, so deadlines (15 minutes) and timeouts happen within the run; the clock is the only
thing faked.

The forgeries (reference/boinc.md §7). Each cheating host sends one kind for its tasks:

``invented_fitness``  computes the epoch, then inflates the best genome's fitness and metrics and
                      recomputes the digest to match.
``random_best``       computes nothing: random genomes, one claimed as best with invented figures.
``skipped_ga``        skips the GA but scores random genomes truthfully: a self-consistent answer
                      (every claim matches the bars) that is not the task's answer.
``replay``            sends an old answer: the validated output of an earlier work unit
                      (whichever it picks at random, so two replayers may send the same one).
``copy``              computes nothing and reports, as its own, the answer an honest host has
                      already reported for the same work unit (a leak or an accomplice); with
                      nothing to copy after a few rounds it replays an old answer instead.
``sleeper``           (not in the default set) computes honestly until trusted to run alone,
                      then sends ``skipped_ga`` answers: the risk adaptive replication accepts.
``lazy_client``       (not in the default set) a shared cheat client: runs no generation from
                      the task's own seed and start population and claims the full epoch. Its
                      answers are self-consistent and identical on every host that runs it, so
                      two such hosts on one work unit form a quorum: the collusion limit no
                      quorum can beat.

and every cheating host, every round, also tries ``never_sent``: a correct answer reported for a
task it was never sent (in turn: another host's task in progress, an unsent replica, an id that
does not exist).

Cheaters take their material (other hosts' answers, earlier outputs, other hosts' task ids)
straight from the database: they get more than a real cheater could see. Adaptive replication's
spot checks draw from the scheduler's own ``SystemRandom``, so figures vary a little run to run.

One throwaway database (a temporary SQLite file, or a PostgreSQL database created and dropped
with ``--database``) holds a no-cheater baseline and one run per ``--share``. Each run mines one
campaign for ``--rounds`` rounds, then stops new epochs and lets the work out finish. It prints
forged results submitted and accepted by kind, credit earned by cheaters, cheaters' trust, the
honest hosts' credit and the redundancy: replicas per validated work unit against the quorum and
the baseline, and how many work units trusted hosts ran alone. Exit status 1 if any forged result
was accepted as valid or earned credit. Copying a correct answer is reported on its own line: it
is not a forged result (see the closing note of the output).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HONEST = "honest"
# Dealt out in this order: with few cheaters, the first kinds are the ones present.
FORGERIES = ("copy", "invented_fitness", "replay", "skipped_ga", "random_best")
OPTIONAL = ("sleeper", "lazy_client")
KINDS = FORGERIES + OPTIONAL
COPY = "copy"
NEVER_SENT = "never_sent"  # tried by every cheater, every round
COPY_FALLBACK = "copy→replay"  # what a copier sends when there was nothing to copy

ROUND = timedelta(minutes=1)
T0 = datetime(2025, 3, 3, tzinfo=UTC)  # a Monday, 00:00 UTC: no quota day ends mid-run
COPY_PATIENCE = 3  # rounds a copier waits for an answer to copy
DRAIN_ROUNDS = 40  # at most, after new epochs stop: every deadline falls inside
TRUSTED = 10  # consecutive valid results before a host may run alone (scheduler's rule)

# A small campaign: an epoch computes in milliseconds, so a run is about the portal.
CAMPAIGN = {
    "in_sample_start": 0, "in_sample_stop": 1_500, "out_sample_stop": 2_000,
    "generations_per_epoch": 2, "migrants": 1, "min_quorum": 2, "target_nresults": 2,
    "max_error_results": 3, "max_total_results": 8, "max_success_results": 4,
    "delay_bound": 900,
    "ga_settings": {"population_size": 8, "elite": 1, "immigrants": 1, "top_k": 4,
                    "min_trades": 3},
}


# --- the simulated clock and the portal ---------------------------------------------------------


class Clock:
    """Simulated UTC time; ``django.utils.timezone.now`` reads it while a run is on."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@contextlib.contextmanager
def simulated_time(clock: Clock) -> Iterator[None]:
    with mock.patch("django.utils.timezone.now", clock):
        yield


class Portal:
    """The worker API through Django's test client, plus the daemons, as one host sees them."""

    def __init__(self) -> None:
        from django.test import Client

        from worker_client import __version__
        from worker_client.protocol import user_agent

        self.client = Client()
        self.user_agent = user_agent(__version__)

    def scheduler(self, token: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post(
            "/api/v1/scheduler/", data=json.dumps(body), content_type="application/json",
            secure=True, HTTP_AUTHORIZATION=f"Token {token}", HTTP_USER_AGENT=self.user_agent)
        if response.status_code != 200:
            raise RuntimeError(f"scheduler call failed: HTTP {response.status_code} "
                               f"{response.content[:500]!r}")
        return response.json()

    @staticmethod
    def run_daemons(now: datetime) -> None:
        """Rounds of transitioner, validator and assimilator until one finds nothing to do."""
        from apps.workunits.assimilator import assimilate_pass
        from apps.workunits.transitioner import transition_pass
        from apps.workunits.validator import validate_pass

        for _ in range(50):
            done = (transition_pass(now=now) + validate_pass(now=now, limit=500)
                    + assimilate_pass(now=now, limit=500))
            if not done:
                return


# --- what hosts compute, and what cheaters can find out ------------------------------------------


class Engine:
    """Honest answers: the worker's payload parser and the engine's ``run_epoch``."""

    def __init__(self) -> None:
        self._answers: dict[str, dict[str, Any]] = {}
        self._data: dict[str, Any] = {}

    def bars(self, sha256: str) -> Any:
        if sha256 not in self._data:
            from apps.workunits.models import Dataset
            from worker_client.datafile import read_candles

            dataset = Dataset.objects.get(sha256=sha256)
            self._data[sha256] = read_candles(dataset.file.path, expected_sha256=sha256)
        return self._data[sha256]

    def answer(self, payload: dict[str, Any], sha256: str) -> dict[str, Any]:
        from worker_client.compute import parse_payload
        from worker_client.engine.ga import run_epoch

        key = json.dumps(payload, sort_keys=True)
        if key not in self._answers:
            spec = parse_payload(payload, dataset_sha256=sha256)
            data = self.bars(sha256).slice(spec.start, spec.stop)
            self._answers[key] = run_epoch(data, spec.space, spec.settings, spec.seed,
                                           spec.population, spec.generations).to_dict()
        return self._answers[key]  # shared: whoever alters an answer copies it first


def redigest(output: dict[str, Any]) -> dict[str, Any]:
    """A forger who knows the algorithm gives its output the digest that matches it."""
    from worker_client.engine.ga import digest_of_output

    output["digest"] = digest_of_output(output)
    return output


def forge_invented_fitness(honest: dict[str, Any]) -> dict[str, Any]:
    output = copy.deepcopy(honest)
    best = output["top"][0]
    metrics = best["metrics"]
    metrics["sharpe"] = (metrics["sharpe"] or 0.0) + 2.0
    metrics["total_return"] = (metrics["total_return"] or 0.0) * 1.5 + 0.2
    metrics["final_equity"] = (metrics["final_equity"] or 0.0) * 1.2
    best["fitness"] = (best["fitness"] or 0.0) + 2.0
    return redigest(output)


def forge_random_best(payload: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    import numpy as np

    from worker_client.engine import METRIC_FIELDS
    from worker_client.engine.ga import GASettings
    from worker_client.engine.space import SearchSpace

    space = SearchSpace.from_dict(payload["space"])
    settings = GASettings.from_dict(payload["settings"])
    draw = np.random.default_rng(rng.getrandbits(63))
    genomes: list[Any] = []
    while len(genomes) < settings.population_size:
        genome = space.random_genome(draw)
        if genome.hash not in {g.hash for g in genomes}:
            genomes.append(genome)
    top = []
    for rank, genome in enumerate(genomes[:settings.top_k]):
        fitness = 4.0 - 0.25 * rank  # a Sharpe no honest epoch on these bars comes near
        metrics: dict[str, Any] = {name: 0.1 for name in METRIC_FIELDS}
        metrics.update(sharpe=fitness, sortino=fitness * 1.3, total_return=0.9,
                       final_equity=19_000.0, n_trades=60, n_returns=1_499, win_rate=0.6)
        top.append({"genome": genome.to_dict(), "hash": genome.hash, "fitness": fitness,
                    "metrics": metrics})
    # The trials' Sharpe sums, invented too: plausible, and coherent enough to pass the check.
    evaluated = settings.population_size * (payload["generations"] + 1)
    trials = {"n": evaluated, "sharpe_sum": 0.002 * evaluated,
              "sharpe_sq_sum": 0.0004 * evaluated}
    output = {"population": [g.to_dict() for g in genomes], "top": top,
              "evaluated": evaluated, "generations": payload["generations"],
              "trials": trials, "digest": ""}
    return redigest(output)


def forge_skipped_ga(payload: dict[str, Any], bars: Any, rng: random.Random) -> dict[str, Any]:
    """Random genomes scored truthfully, passed off as the evolved epoch."""
    from worker_client.engine.ga import GASettings, run_epoch
    from worker_client.engine.space import SearchSpace

    data = bars.slice(payload["start"], payload["stop"])
    result = run_epoch(data, SearchSpace.from_dict(payload["space"]),
                       GASettings.from_dict(payload["settings"]), rng.getrandbits(62), [], 0)
    output = result.to_dict()
    output["generations"] = payload["generations"]  # claims the work it did not do
    return redigest(output)


def forge_lazy_client(payload: dict[str, Any], bars: Any) -> dict[str, Any]:
    """The task's own start, no generation run, the full epoch claimed: the same on every host."""
    from worker_client.engine import Genome
    from worker_client.engine.ga import GASettings, run_epoch
    from worker_client.engine.space import SearchSpace

    data = bars.slice(payload["start"], payload["stop"])
    result = run_epoch(data, SearchSpace.from_dict(payload["space"]),
                       GASettings.from_dict(payload["settings"]), payload["seed"],
                       [Genome.from_dict(g) for g in payload["start_population"]], 0)
    output = result.to_dict()
    output["generations"] = payload["generations"]
    return redigest(output)


class Leak:
    """What the cheaters are handed: read straight from the database (more than they'd see)."""

    def __init__(self, campaign_id: int, honest_host_ids: set[int], rng: random.Random) -> None:
        self.campaign_id = campaign_id
        self.honest_host_ids = honest_host_ids
        self.rng = rng

    def honest_answer(self, result_id: int) -> dict[str, Any] | None:
        """An honest host's reported answer to the same work unit as ``result_id``."""
        from apps.workunits.models import Result
        from apps.workunits.states import Outcome, ServerState

        workunit_id = Result.objects.filter(pk=result_id).values_list("workunit_id", flat=True)
        return (Result.objects.filter(workunit_id__in=workunit_id, server_state=ServerState.OVER,
                                      outcome=Outcome.SUCCESS, host_id__in=self.honest_host_ids)
                .order_by("received_time").values_list("output", flat=True).first())

    def old_answer(self, result_id: int) -> dict[str, Any] | None:
        """The validated output of an earlier work unit of the campaign, picked at random."""
        from apps.workunits.models import Result, WorkUnit

        workunit_id = Result.objects.get(pk=result_id).workunit_id
        earlier = list(WorkUnit.objects.filter(campaign_id=self.campaign_id,
                                               canonical_result__isnull=False)
                       .exclude(pk=workunit_id).values_list("canonical_result_id", flat=True))
        if not earlier:
            return None
        return Result.objects.get(pk=self.rng.choice(earlier)).output

    def never_sent_target(self, host_id: int, *, which: int
                          ) -> tuple[int, dict[str, Any]] | None:
        """A result id never sent to ``host_id``, with its work unit's payload: ``which`` 0,
        another host's replica in progress; 1, an unsent replica; 2, an id that does not exist
        (with the payload of the campaign's latest work unit)."""
        from apps.workunits.models import Result, WorkUnit
        from apps.workunits.states import ServerState

        if which == 2:
            last = Result.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
            payload = (WorkUnit.objects.filter(campaign_id=self.campaign_id).order_by("-pk")
                       .values_list("payload", flat=True).first())
            return last + 1_000, payload
        state = ServerState.IN_PROGRESS if which == 0 else ServerState.UNSENT
        rows = list(Result.objects.filter(workunit__campaign_id=self.campaign_id,
                                          server_state=state)
                    .exclude(host_id=host_id).values_list("pk", "workunit__payload")[:20])
        return self.rng.choice(rows) if rows else None

    @staticmethod
    def consecutive_valid(host_id: int) -> int:
        from apps.accounts.models import Host

        return Host.objects.get(pk=host_id).consecutive_valid


# --- the hosts ------------------------------------------------------------------------------------


@dataclass
class Held:
    task: dict[str, Any]
    since: int  # the round it arrived


@dataclass
class SimHost:
    kind: str
    host_id: int
    volunteer_id: int
    token: str
    rng: random.Random
    held: dict[int, Held] = field(default_factory=dict)
    outbox: list[dict[str, Any]] = field(default_factory=list)  # reports for the next call
    acks: list[int] = field(default_factory=list)


@dataclass
class Tally:
    submitted: Counter = field(default_factory=Counter)  # forged reports sent, by kind
    refused: Counter = field(default_factory=Counter)  # refused by the scheduler, by kind
    stored: dict[int, str] = field(default_factory=dict)  # result id -> kind, stored forgeries
    copies: set[int] = field(default_factory=set)  # result ids stored with a copied answer
    computed: set[int] = field(default_factory=set)  # stored honest answers of cheating hosts
    abandoned: int = 0  # copies given up (nothing to copy, nothing to replay)


class Simulation:
    """One campaign mined by honest hosts and cheaters, round by round."""

    def __init__(self, *, campaign: Any, hosts: list[SimHost], rng: random.Random,
                 engine: Engine) -> None:
        self.campaign = campaign
        self.hosts = hosts
        self.rng = rng
        self.engine = engine
        self.portal = Portal()
        self.tally = Tally()
        self.leak = Leak(campaign.pk, {h.host_id for h in hosts if h.kind == HONEST}, rng)
        self.sha256 = campaign.task_dataset.sha256

    # One round: every host calls once, in a random order, each at its own instant.
    def round(self, number: int, clock: Clock) -> None:
        start = T0 + number * ROUND
        order = list(self.hosts)
        self.rng.shuffle(order)
        for index, host in enumerate(order):
            clock.now = start + timedelta(milliseconds=10 * (index + 1))
            self._prepare(host, number)
            self._call(host, number)
        clock.now = start + ROUND / 2
        self.portal.run_daemons(clock.now)

    def _call(self, host: SimHost, number: int) -> None:
        reports = host.outbox
        kinds = [report.pop("_kind") for report in reports]
        asks = not host.held  # one task at a time
        body = {"results": reports, "acks": host.acks, "in_progress": sorted(host.held),
                "free_slots": 1 if asks else 0, "work_seconds": 3600.0 if asks else 0.0,
                "datasets": [self.sha256]}
        reply = self.portal.scheduler(host.token, body)
        host.outbox, host.acks = [], []
        refused = {r["result_id"] for r in reply["rejected"]}
        for report, kind in zip(reports, kinds, strict=True):
            if kind == HONEST:
                if report["result_id"] in refused:
                    raise RuntimeError(f"an honest report was refused: {reply['rejected']}")
                if host.kind != HONEST:
                    self.tally.computed.add(report["result_id"])  # a sleeper, still honest
                continue
            if report["result_id"] in refused:
                self.tally.refused[kind] += 1
            elif kind == COPY:
                self.tally.copies.add(report["result_id"])
            else:
                self.tally.stored[report["result_id"]] = kind
        for result_id in reply["abort"]:
            host.held.pop(result_id, None)
        for task in reply["tasks"]:
            host.acks.append(task["result_id"])
            host.held[task["result_id"]] = Held(task, since=number)

    def _report(self, host: SimHost, result_id: int, output: dict[str, Any], kind: str) -> None:
        host.outbox.append({"result_id": result_id, "status": "success", "output": output,
                            "cpu_time": 1.0, "wall_time": 1.0, "_kind": kind})
        if kind != HONEST:
            self.tally.submitted[kind] += 1

    def _prepare(self, host: SimHost, number: int) -> None:
        """Decide, for each task held, whether to report it on this call and with what."""
        if host.kind != HONEST:
            self._try_never_sent(host, number)
        for result_id, held in list(host.held.items()):
            output, kind = self._answer(host, result_id, held, number)
            if output is None and kind == "abandon":
                del host.held[result_id]
                self.tally.abandoned += 1
            elif output is not None:
                del host.held[result_id]
                self._report(host, result_id, output, kind)

    def _try_never_sent(self, host: SimHost, number: int) -> None:
        """Report a correct answer for a task never sent to ``host`` (a different target each
        round: another host's task in progress, an unsent replica, an id that does not exist)."""
        target = self.leak.never_sent_target(host.host_id, which=number % 3)
        if target is not None:
            result_id, payload = target
            self._report(host, result_id, self.engine.answer(payload, self.sha256), NEVER_SENT)

    def _answer(self, host: SimHost, result_id: int, held: Held, number: int
                ) -> tuple[dict[str, Any] | None, str]:
        payload, sha256 = held.task["payload"], held.task["dataset_sha256"]
        kind = host.kind
        if kind == "sleeper" and self.leak.consecutive_valid(host.host_id) < TRUSTED:
            kind = HONEST  # building trust
        if kind == HONEST:
            return self.engine.answer(payload, sha256), HONEST
        if kind == "invented_fitness":
            return forge_invented_fitness(self.engine.answer(payload, sha256)), kind
        if kind == "random_best":
            return forge_random_best(payload, host.rng), kind
        if kind in ("skipped_ga", "sleeper"):
            return forge_skipped_ga(payload, self.engine.bars(sha256), host.rng), kind
        if kind == "lazy_client":
            return forge_lazy_client(payload, self.engine.bars(sha256)), kind
        if kind == "replay":
            return self.leak.old_answer(result_id), kind  # None: nothing to replay yet, wait
        if kind == COPY:
            answer = self.leak.honest_answer(result_id)
            if answer is not None:
                return answer, COPY
            if number - held.since < COPY_PATIENCE:
                return None, "wait"
            old = self.leak.old_answer(result_id)
            return (old, COPY_FALLBACK) if old is not None else (None, "abandon")
        raise ValueError(f"unknown kind {kind!r}")


# --- a run and its figures ----------------------------------------------------------------------


@dataclass
class Figures:
    share: float
    kinds: list[str]
    hosts: dict[str, int]  # kind -> count
    host_ids: dict[str, list[int]]  # kind -> the hosts' ids
    rounds: int
    seconds: float = 0.0
    submitted: dict[str, int] = field(default_factory=dict)
    # What became of the forged results, by kind: fate -> count (see FATES).
    fates: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    copies_submitted: int = 0
    copies_valid: int = 0
    copies_abandoned: int = 0
    cheater_credit: float = 0.0  # everything the cheating hosts earned, of which:
    forged_credit: float = 0.0  # for forged results
    copy_credit: float = 0.0  # for copies of honest answers
    computed_credit: float = 0.0  # for answers they computed (sleepers, before they cheat)
    cheater_trust: dict[str, dict[str, float]] = field(default_factory=dict)
    honest_credit: float = 0.0
    honest_credit_per_host: float = 0.0
    honest_trusted: int = 0
    validated: int = 0
    errored: dict[str, int] = field(default_factory=dict)  # error bit -> work units
    honest_unchecked: int = 0  # honest answers never checked (their work unit errored)
    unfinished: int = 0
    replicas_sent: int = 0  # replicas of validated work units sent to hosts
    honest_computed: int = 0  # of those, reported by honest hosts
    alone: int = 0  # validated work units run by one trusted host alone
    late_validated: int = 0  # validated work units created in the last third of the rounds
    late_alone: int = 0
    late_replicas: int = 0

    @property
    def forged_accepted(self) -> int:
        return sum(fates["accepted"] for fates in self.fates.values())

    @property
    def failed(self) -> bool:
        return self.forged_accepted > 0 or self.forged_credit > 0


def make_host(label: str, index: int, kind: str, seed: int) -> SimHost:
    """A volunteer with one host attached through the portal's service (no password hashing)."""
    from django.contrib.auth import get_user_model

    from apps.accounts.models import Volunteer
    from apps.accounts.selectors import secret_hash
    from apps.accounts.services import host_attach, new_secret
    from worker_client import __version__

    user = get_user_model().objects.create_user(username=f"{label}-{kind}-{index}",
                                                email=f"{label}{index}@example.org")
    key = new_secret()
    volunteer = Volunteer.objects.create(user=user, display_name=f"{kind} {index}",
                                         account_key_hash=secret_hash(key),
                                         account_key_hint=key[:6])
    host, token = host_attach(account_key=key, info={
        "name": f"{label}-{index}", "os": "Linux", "arch": "x86_64", "python_version": "3.11",
        "numba_version": "0.60", "cpu_count": 1, "memory_mb": 2048,
        "client_version": __version__})
    return SimHost(kind=kind, host_id=host.pk, volunteer_id=volunteer.pk, token=token,
                   rng=random.Random(seed * 1_000 + index))


def assign_kinds(n_hosts: int, share: float, kinds: list[str]) -> list[str]:
    """``round(share · n)`` cheaters, the kinds dealt out in turn; the rest honest."""
    cheaters = round(share * n_hosts)
    return [kinds[i % len(kinds)] for i in range(cheaters)] + [HONEST] * (n_hosts - cheaters)


def run_scenario(*, share: float, kinds: list[str], n_hosts: int = 30, rounds: int = 30,
                 seed: int = 1, label: str | None = None, dataset: Any = None) -> Figures:
    """Mine one campaign with ``share`` of ``n_hosts`` cheating; return the figures.

    Needs a migrated database (Django set up); ``MEDIA_ROOT`` must be writable.
    """
    from apps.workunits.campaigns import campaign_start
    from apps.workunits.marketdata import dataset_create_synthetic
    from apps.workunits.models import Campaign

    label = label or f"s{int(share * 100)}-{secrets.token_hex(2)}"
    rng = random.Random(seed)
    clock = Clock(T0)
    started = time.perf_counter()
    with simulated_time(clock):
        dataset = dataset or dataset_create_synthetic(bars=2_000, seed=5)
        campaign = Campaign.objects.create(
            name=f"cheaters {label}", dataset=dataset, islands=n_hosts, budget_epochs=10_000,
            seed=seed, **CAMPAIGN)
        campaign_start(campaign=campaign, now=T0)
        kind_list = assign_kinds(n_hosts, share, kinds)
        rng.shuffle(kind_list)
        hosts = [make_host(label, i, kind, seed) for i, kind in enumerate(kind_list)]
        sim = Simulation(campaign=campaign, hosts=hosts, rng=rng, engine=Engine())
        for number in range(rounds):
            sim.round(number, clock)
        # No new epochs: the work out finishes (replacements still go out), then it stops.
        Campaign.objects.filter(pk=campaign.pk).update(budget_epochs=0)
        for number in range(rounds, rounds + DRAIN_ROUNDS):
            sim.round(number, clock)
            if not _open_workunits(campaign):
                break
        figures = collect(sim, share=share, kinds=kinds, rounds=rounds)
    figures.seconds = time.perf_counter() - started
    return figures


def _open_workunits(campaign: Any) -> int:
    from apps.workunits.models import WorkUnit
    from apps.workunits.states import AssimilateState

    return WorkUnit.objects.filter(campaign=campaign).exclude(
        assimilate_state=AssimilateState.DONE).count()


# How a forged result ended: refused by the scheduler (never stored), failed the validator's
# re-check against the bars, outvoted by the honest quorum, never checked (its work unit errored),
# accepted as valid, or still pending when the run ended.
FATES = ("refused", "re-check", "outvoted", "unchecked", "accepted", "pending")


def _fate(validate_state: int, error_message: str) -> str:
    from apps.workunits.states import ValidateState

    if validate_state == ValidateState.VALID:
        return "accepted"
    if validate_state == ValidateState.INVALID:
        return "re-check" if error_message.startswith("rejected by the validator") else "outvoted"
    if validate_state in (ValidateState.INIT, ValidateState.INCONCLUSIVE):
        return "pending"
    return "unchecked"


def collect(sim: Simulation, *, share: float, kinds: list[str], rounds: int) -> Figures:
    from django.db.models import Count, Q, Sum

    from apps.accounts.models import Host
    from apps.credit.models import CreditGrant
    from apps.workunits.models import Result, WorkUnit
    from apps.workunits.states import ErrorMask, ValidateState

    hosts_by_kind: dict[str, list[SimHost]] = defaultdict(list)
    for host in sim.hosts:
        hosts_by_kind[host.kind].append(host)
    tally = sim.tally
    fig = Figures(share=share, kinds=list(kinds), rounds=rounds,
                  hosts={kind: len(group) for kind, group in hosts_by_kind.items()},
                  host_ids={kind: [h.host_id for h in group]
                            for kind, group in hosts_by_kind.items()})
    fig.submitted = dict(tally.submitted)
    for kind, n in tally.refused.items():
        fig.fates[kind]["refused"] = n
    rows = Result.objects.filter(pk__in=tally.stored).values_list("pk", "validate_state",
                                                                  "error_message")
    for result_id, state, error in rows:
        fig.fates[tally.stored[result_id]][_fate(state, error)] += 1
    fig.copies_submitted = tally.submitted.get(COPY, 0)
    fig.copies_valid = Result.objects.filter(pk__in=tally.copies,
                                             validate_state=ValidateState.VALID).count()
    fig.copies_abandoned = tally.abandoned

    def credit(**where: Any) -> float:
        # The ledger, not the cached totals: what was granted.
        return CreditGrant.objects.filter(**where).aggregate(s=Sum("amount"))["s"] or 0.0

    honest = hosts_by_kind.get(HONEST, [])
    fig.cheater_credit = credit(host_id__in=[h.host_id for h in sim.hosts if h.kind != HONEST])
    fig.forged_credit = credit(result_id__in=list(tally.stored))
    fig.copy_credit = credit(result_id__in=list(tally.copies))
    fig.computed_credit = credit(result_id__in=list(tally.computed))
    fig.honest_credit = credit(host_id__in=[h.host_id for h in honest])
    fig.honest_credit_per_host = fig.honest_credit / len(honest) if honest else 0.0
    fig.honest_trusted = Host.objects.filter(pk__in=[h.host_id for h in honest],
                                             consecutive_valid__gte=TRUSTED).count()
    for kind, group in hosts_by_kind.items():
        if kind == HONEST:
            continue
        rows = list(Host.objects.filter(pk__in=[h.host_id for h in group]).values(
            "consecutive_valid", "max_results_day", "n_invalid", "n_valid"))
        fig.cheater_trust[kind] = {
            "consecutive_valid_max": max(r["consecutive_valid"] for r in rows),
            "quota_mean": sum(r["max_results_day"] for r in rows) / len(rows),
            "invalid": sum(r["n_invalid"] for r in rows),
            "valid": sum(r["n_valid"] for r in rows),
            "alone": Result.objects.filter(host_id__in=[h.host_id for h in group],
                                           workunit__min_quorum=1).count(),
        }

    workunits = WorkUnit.objects.filter(campaign=sim.campaign)
    validated = workunits.filter(canonical_result__isnull=False)
    fig.validated = validated.count()
    for mask in workunits.filter(error_mask__gt=0).values_list("error_mask", flat=True):
        for bit in ErrorMask:
            if mask & bit and bit != ErrorMask.CANCELLED:
                fig.errored[bit.name.lower()] = fig.errored.get(bit.name.lower(), 0) + 1
    fig.honest_unchecked = Result.objects.filter(
        workunit__campaign=sim.campaign, host_id__in=[h.host_id for h in honest],
        validate_state=ValidateState.NO_CHECK).count()
    fig.unfinished = _open_workunits(sim.campaign)
    honest_ids = [h.host_id for h in honest]
    sent = Result.objects.filter(workunit__in=validated, sent_time__isnull=False)
    fig.replicas_sent = sent.count()
    fig.honest_computed = sent.filter(host_id__in=honest_ids, received_time__isnull=False).count()
    fig.alone = validated.filter(min_quorum=1).count()
    late_from = T0 + ROUND * (2 * rounds // 3)
    late = validated.filter(created_at__gte=late_from, created_at__lt=T0 + ROUND * rounds)
    counts = late.aggregate(n=Count("pk"), alone=Count("pk", filter=Q(min_quorum=1)))
    fig.late_validated, fig.late_alone = counts["n"], counts["alone"]
    fig.late_replicas = Result.objects.filter(workunit__in=late, sent_time__isnull=False).count()
    return fig


# --- printing -----------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def print_figures(fig: Figures, baseline: Figures | None) -> None:
    cheaters = sum(n for kind, n in fig.hosts.items() if kind != HONEST)
    title = (f"{fig.share:.0%} cheaters ({cheaters} of {sum(fig.hosts.values())} hosts)"
             if cheaters else f"baseline: no cheaters ({sum(fig.hosts.values())} honest hosts)")
    print(f"\n== {title}: {fig.rounds} rounds + drain, {fig.seconds:.1f} s ==")
    if cheaters:
        print(f"  forged results      {'submitted':>9}  " + "  ".join(f"{f:>9}" for f in FATES))
        kinds = [k for k in [*FORGERIES, COPY_FALLBACK, *OPTIONAL, NEVER_SENT]
                 if k != COPY and (k in fig.submitted or fig.hosts.get(k))]
        for kind in kinds:
            print(f"    {kind:<16} {fig.submitted.get(kind, 0):>9}  "
                  + "  ".join(f"{fig.fates[kind][f]:>9}" for f in FATES))
        print(f"  forged results accepted as valid: {fig.forged_accepted}   (target 0)")
        print(f"  credit earned by cheating hosts: {fig.cheater_credit:.4f}: for forged results "
              f"{fig.forged_credit:.4f} (target 0), for copies of honest answers "
              f"{fig.copy_credit:.4f}, for answers they computed {fig.computed_credit:.4f}")
        if fig.hosts.get(COPY):
            print(f"  copies of an honest answer: {fig.copies_submitted} submitted, "
                  f"{fig.copies_valid} valid: {fig.copy_credit / fig.hosts[COPY]:.4f} credit per "
                  f"copier vs {fig.honest_credit_per_host:.4f} per honest host; "
                  f"{fig.copies_abandoned} tasks given up")
        print("  cheaters' trust afterwards: max consecutive valid · mean daily quota · "
              "invalid · valid · ran alone")
        for kind, trust in fig.cheater_trust.items():
            print(f"    {kind:<18} {trust['consecutive_valid_max']:>3.0f} · "
                  f"{trust['quota_mean']:>5.1f} · {trust['invalid']:>4.0f} · "
                  f"{trust['valid']:>4.0f} · {trust['alone']:>3.0f}")
    honest = fig.hosts.get(HONEST, 0)
    print(f"  honest hosts: {honest}, credit {fig.honest_credit:.3f} "
          f"({fig.honest_credit_per_host:.4f} each); {fig.honest_trusted} trusted "
          f"(≥ {TRUSTED} consecutive valid)")
    errored = ", ".join(f"{n} {name}" for name, n in sorted(fig.errored.items())) or "none"
    print(f"  work units: {fig.validated} validated, {fig.unfinished} unfinished, errored: "
          f"{errored}; honest answers lost with them: {fig.honest_unchecked}")
    print(f"  replicas sent per validated work unit: {_ratio(fig.replicas_sent, fig.validated)} "
          f"(quorum {CAMPAIGN['min_quorum']}; an honest host alone: 1)"
          + (f"; baseline {_ratio(baseline.replicas_sent, baseline.validated)}"
             if baseline else ""))
    print(f"  honest replicas computed per validated work unit: "
          f"{_ratio(fig.honest_computed, fig.validated)}"
          + (f"; baseline {_ratio(baseline.honest_computed, baseline.validated)}"
             if baseline else ""))
    print(f"  run alone by a trusted host: {fig.alone} of {fig.validated} "
          f"({_ratio(100 * fig.alone, fig.validated)} %); in the last third of the rounds "
          f"{fig.late_alone} of {fig.late_validated}, "
          f"{_ratio(fig.late_replicas, fig.late_validated)} replicas per work unit")


# --- the throwaway database ---------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@contextlib.contextmanager
def throwaway_database(database: str | None) -> Iterator[None]:
    """Point Django at a new SQLite file (default) or a new PostgreSQL database; remove it after.

    Django is set up and the database migrated inside the block; nothing else is touched.
    """
    workdir = Path(tempfile.mkdtemp(prefix="strategy-cheaters-"))
    env = {"DJANGO_SETTINGS_MODULE": "portal.settings", "DJANGO_DEBUG": "0",
           "DJANGO_SECRET_KEY": secrets.token_urlsafe(50), "DJANGO_ALLOWED_HOSTS": "testserver",
           "DJANGO_SECURE_SSL_REDIRECT": "0", "MEDIA_ROOT": str(workdir / "media"),
           "THROTTLE_SCHEDULER": "1000000/minute", "DJANGO_LOG_LEVEL": "ERROR"}
    admin = None
    name = f"strategy_cheaters_{os.getpid()}_{secrets.token_hex(3)}"
    if database:
        import psycopg

        parts = urlsplit(database)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("--database: a PostgreSQL on loopback only")
        admin = psycopg.connect(host=parts.hostname, port=parts.port or 5432,
                                user=parts.username or "postgres", password=parts.password,
                                dbname=parts.path.lstrip("/") or "postgres", autocommit=True)
        admin.execute(f'CREATE DATABASE "{name}"')
        env["DATABASE_URL"] = _with_database(database, name)
    else:
        env["DATABASE_URL"] = f"sqlite:///{workdir / 'cheaters.sqlite3'}"
    os.environ.update(env)
    os.environ.pop("PYTEST_VERSION", None)
    try:
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0, interactive=False)
        call_command("createcachetable", verbosity=0)
        yield
    finally:
        from django.db import connections

        connections.close_all()
        if admin is not None:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()
        shutil.rmtree(workdir, ignore_errors=True)


# --- the command --------------------------------------------------------------------------------


def run_bench(*, shares: list[float], kinds: list[str], n_hosts: int, rounds: int, seed: int,
              database: str | None) -> int:
    with throwaway_database(database):
        from django.db import connection

        from apps.workunits.marketdata import dataset_create_synthetic

        print(f"database: {connection.vendor} (throwaway); {n_hosts} hosts, {rounds} rounds of "
              f"one simulated minute; kinds: {', '.join(kinds)}, and never_sent by every "
              f"cheater\nfates of forged results: refused = by the scheduler (not this host's "
              f"task); re-check = its claims fail the validator's backtest; outvoted = its "
              f"digest lost to the honest quorum; unchecked = its work unit errored; pending = "
              f"undecided when the run ended", flush=True)
        with simulated_time(Clock(T0)):
            dataset = dataset_create_synthetic(bars=2_000, seed=5)
        baseline = run_scenario(share=0.0, kinds=kinds, n_hosts=n_hosts, rounds=rounds,
                                seed=seed, label="base", dataset=dataset)
        print_figures(baseline, None)
        runs = []
        for share in shares:
            fig = run_scenario(share=share, kinds=kinds, n_hosts=n_hosts, rounds=rounds,
                               seed=seed, label=f"s{round(share * 100)}", dataset=dataset)
            print_figures(fig, baseline)
            runs.append(fig)
    failed = [fig for fig in runs if fig.failed]
    copiers = [fig.cheater_trust[COPY] for fig in runs if COPY in fig.cheater_trust]
    if copiers:
        print(f"\nCopying: a copier reports, for a task it was itself sent, the answer an honest "
              f"host already reported. The answer is correct, so no quorum can reject it "
              f"(BOINC cannot either): it is valid and credited, and not counted above as a "
              f"forged result. It earns no trust, because only a replica reported no later than "
              f"the one that confirms it counts towards running alone: copiers ended with at "
              f"most {max(c['consecutive_valid_max'] for c in copiers):.0f} consecutive valid "
              f"and ran {sum(c['alone'] for c in copiers):.0f} work units alone, where there "
              f"would be nothing to copy.")
    if failed:
        print(f"FAIL: forged results accepted, or credit for them, at "
              f"{', '.join(f'{f.share:.0%}' for f in failed)}")
        return 1
    print("OK: no forged result accepted, no credit for a forged result.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--share", type=float, nargs="+", default=[0.1, 0.3],
                        help="shares of cheating hosts, one run each (default 0.1 0.3)")
    parser.add_argument("--hosts", type=int, default=30,
                        help="simulated hosts (30; 50 puts every kind in the 10%% run)")
    parser.add_argument("--rounds", type=int, default=30,
                        help="rounds (simulated minutes) of mining before the drain (30)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(FORGERIES),
                        help="forgeries to deal out (default: all but sleeper and lazy_client)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database", default=None,
                        help="a loopback PostgreSQL URL whose server may create and drop a "
                             "database (default: a temporary SQLite file)")
    args = parser.parse_args(argv)
    if any(not 0 < share < 1 for share in args.share):
        parser.error("--share: each share must be between 0 and 1")
    if args.hosts < 2 or args.rounds < 3:
        parser.error("--hosts must be at least 2 and --rounds at least 3")
    return run_bench(shares=args.share, kinds=args.kinds, n_hosts=args.hosts,
                     rounds=args.rounds, seed=args.seed, database=args.database)


if __name__ == "__main__":
    sys.exit(main())
