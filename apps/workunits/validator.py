"""The validator: quorum on digests, an engine re-check of every answer it trusts, credit.

For each work unit flagged ``need_validate`` (reference/boinc.md §2):

* **Quorum.** The viable answers (OVER/SUCCESS, not INVALID) are grouped by digest in the order
  they arrived; the first group with a strict majority of ``min_quorum``
  (``floor(min_quorum/2) + 1`` replicas) wins.
* **Re-check.** Before a replica of the winning group is trusted, the server checks its output
  against the engine (:func:`output_recheck`): the genomes parse and lie inside the search
  space, the claimed metrics of the top genomes (and the ranking of the best few of the final
  population) match a fresh ``evaluate_population`` on the same bars, and the digest matches the
  one recomputed from the output. A replica that lies is INVALID, earns nothing and loses its
  host's trust; when the liars were the majority, nobody is canonical. What it cannot see is an
  answer that is self-consistent but not the GA's (random genomes scored truthfully, an earlier
  epoch's answer replayed): only a disagreeing replica exposes that, so a host trusted to run
  alone can pass one off (adaptive replication's accepted risk; ``bench/cheaters.py --kinds
  sleeper`` measures it). One such answer is caught for certain: another work unit's,
  replayed (:func:`answer_of_another_workunit`).
* **Consensus.** The first honest replica of the group becomes canonical; its group is VALID
  and earns the work unit's credit (once: the ledger's unique constraint), the other answers are
  INVALID, unsent replicas are not needed any more, and the work unit goes to the assimilator.
* **No consensus.** Answers become INCONCLUSIVE and ``target_nresults`` grows past the number
  of answers (BOINC's rule), so the transitioner sends one more replica; past
  ``max_success_results`` answers the work unit errors instead.
* **Stragglers.** A success that arrives after the canonical result is VALID (and credited) if
  it has the canonical digest and passes the same re-check, INVALID otherwise; it earns no trust.

Host reliability follows BOINC: valid → ``n_valid + 1`` and the daily quota doubled up to its
cap, and ``consecutive_valid + 1`` only when another host agreed (trust is earned only by
agreement, so a host alone on a work unit cannot raise its own); invalid → trust reset
(``consecutive_valid = 0``), ``n_invalid + 1`` and one task less of daily quota.

Work units are validated in batches (``VALIDATE_BATCH_SIZE`` to a transaction): their rows,
replicas, campaigns and the validated answers a replay check needs are read with a few queries;
each work unit is decided in memory exactly as alone (in id order, a later one seeing the answers
validated before it); the decisions are written with a few set-based statements, the credit
grants with :func:`apps.credit.services.credit_grant_many`, and the hosts' reliability figures
moved in decision order. A batch that fails is retried one work unit at a time.

One rule is stricter than BOINC's: the agreement must come from a replica reported *no earlier*
(:func:`_confirmed`). A replica reported after an agreeing answer was already on record may be a
copy of it; it is valid and credited (a copy of a correct answer cannot be told from the answer),
but it proves no computation and earns no trust. Otherwise a copier climbs to trusted by copying,
is then sent work units alone, where there is nothing to copy, and an old answer it replays
there passes every check (``bench/cheaters.py`` found this).
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime
from functools import lru_cache, partial
from typing import Any

from django.conf import settings as django_settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Greatest, Least
from django.utils import timezone

from apps.accounts.models import Host, Team, Volunteer
from apps.credit.services import credit_grant_many
from worker_client.engine import METRIC_FIELDS, OHLCV, Genome, GenomeError, evaluate_population
from worker_client.engine.ga import (
    EpochError,
    GASettings,
    TrialsSharpe,
    fitness_of,
    result_digest,
)
from worker_client.engine.space import SearchSpace, SpaceError

from .data import load_dataset
from .models import Campaign, Result, WorkUnit
from .states import (
    AssimilateState,
    ErrorMask,
    Outcome,
    ServerState,
    ValidateState,
)
from .transitioner import Writes, results_by_workunit, run_batches, update_rows

logger = logging.getLogger(__name__)

RTOL = 1e-9  # claimed against recomputed metrics; identical engines agree to the last bit
ATOL = 1e-12  # for figures that are (nearly) zero
_INT_METRICS = frozenset({"n_trades", "n_returns"})
# Work units to a transaction: the re-checks of a batch run while its work units are locked.
VALIDATE_BATCH_SIZE = 50


class Rejected(Exception):
    """An output the server does not believe. ``malformed``: not even readable as an answer."""

    def __init__(self, reason: str, *, malformed: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.malformed = malformed


# --- the re-check -------------------------------------------------------------------------


def _claim_matches(claimed: Any, actual: float, *, integer: bool = False) -> bool:
    if claimed is None:  # the JSON form of an infinite or undefined figure
        return not math.isfinite(actual)
    if isinstance(claimed, bool) or not isinstance(claimed, int | float):
        return False
    if isinstance(claimed, int) and abs(claimed) > 2**53:
        return False  # no figure is that large, and math.isclose would overflow on it
    if integer:
        return isinstance(claimed, int) and math.isfinite(actual) and claimed == int(actual)
    return math.isfinite(actual) and math.isclose(claimed, actual, rel_tol=RTOL, abs_tol=ATOL)


def _parse_genome(raw: Any, space: SearchSpace, where: str) -> Genome:
    try:
        genome = Genome.from_dict(raw)
    except GenomeError as exc:
        raise Rejected(f"{where}: {exc}", malformed=True) from None
    try:
        space.check(genome)
    except GenomeError as exc:
        raise Rejected(f"{where} lies outside the search space: {exc}") from None
    return genome


# A campaign's work units share its search space and GA settings: parsed (and checked) once.
@lru_cache(maxsize=256)
def _space(raw: str) -> SearchSpace:
    return SearchSpace.from_dict(json.loads(raw))


@lru_cache(maxsize=256)
def _settings(raw: str) -> GASettings:
    return GASettings.from_dict(json.loads(raw))


def output_recheck(*, workunit: WorkUnit, output: Any, digest: str = "",
                   data: OHLCV | None = None) -> None:
    """Raise :class:`Rejected` unless ``output`` is an honest answer to ``workunit``.

    ``data`` is the work unit's in-sample bars (loaded from its data set when not given);
    ``digest`` is the digest the replica was reported with, which must be the output's own.
    """
    payload = workunit.payload
    space = _space(json.dumps(payload["space"], sort_keys=True))
    settings = _settings(json.dumps(payload["settings"], sort_keys=True))
    if not isinstance(output, dict):
        raise Rejected("the output is not an object", malformed=True)
    population_raw, top_raw = output.get("population"), output.get("top")
    evaluated, generations = output.get("evaluated"), output.get("generations")
    claimed_digest = output.get("digest")
    if not (isinstance(population_raw, list) and isinstance(top_raw, list)
            and isinstance(evaluated, int) and isinstance(generations, int)
            and isinstance(claimed_digest, str)):
        raise Rejected("the output lacks population, top, evaluated, generations or digest",
                       malformed=True)
    if digest and claimed_digest != digest:
        raise Rejected("the reported digest is not the output's")
    if generations != payload["generations"]:
        raise Rejected(f"ran {generations} generations, the task asked {payload['generations']}")
    if len(population_raw) != settings.population_size:
        raise Rejected(f"final population of {len(population_raw)}, "
                       f"expected {settings.population_size}")
    max_evaluated = settings.population_size * (generations + 1)
    if not 1 <= evaluated <= max_evaluated:
        raise Rejected(f"claims {evaluated} strategies evaluated, at most {max_evaluated} "
                       "are possible")
    if len(top_raw) != min(settings.top_k, evaluated):
        raise Rejected(f"top list of {len(top_raw)}, expected {min(settings.top_k, evaluated)}")
    # The trials' Sharpe sums cannot be re-run (every genome of the epoch would be); the digest
    # covers them, so a quorum agrees on them, and no more trials than strategies evaluated.
    try:
        trials = TrialsSharpe.from_dict(output.get("trials"))
    except EpochError as exc:
        raise Rejected(str(exc), malformed=True) from None
    if trials.n > evaluated:
        raise Rejected(f"Sharpe ratios of {trials.n} trials, but {evaluated} evaluated")
    population = [_parse_genome(g, space, f"population[{i}]")
                  for i, g in enumerate(population_raw)]
    top: list[tuple[Genome, dict[str, Any]]] = []
    for i, entry in enumerate(top_raw):
        if not (isinstance(entry, dict) and isinstance(entry.get("metrics"), dict)
                and set(entry["metrics"]) == set(METRIC_FIELDS)):
            raise Rejected(f"top[{i}] is not a scored genome", malformed=True)
        genome = _parse_genome(entry.get("genome"), space, f"top[{i}]")
        if entry.get("hash") != genome.hash:
            raise Rejected(f"top[{i}]: the hash is not the genome's")
        top.append((genome, entry))
    if len({g.hash for g, _ in top}) != len(top):
        raise Rejected("the top list repeats a genome")

    # Re-run the claimed top genomes and the whole final population: it seeds the island's
    # next epoch and the neighbour's migrants, so none of it may be taken on trust.
    top_hashes = {g.hash for g, _ in top}
    extra = [g for g in dict.fromkeys(population) if g.hash not in top_hashes]
    genomes = [g for g, _ in top] + extra
    if data is None:
        data = load_dataset(workunit.campaign.dataset).slice(payload["start"], payload["stop"])
    rows = evaluate_population(data, genomes, costs=settings.costs,
                               initial_cash=settings.initial_cash)
    fitness = fitness_of(rows, settings)
    recomputed_top = []
    for i, (genome, entry) in enumerate(top):
        row = rows[i]
        for name in METRIC_FIELDS:
            if not _claim_matches(entry["metrics"][name], float(row[name]),
                                  integer=name in _INT_METRICS):
                raise Rejected(f"top[{i}] claims {name}={entry['metrics'][name]!r}, the "
                               f"server computes {float(row[name])!r}")
        if not _claim_matches(entry.get("fitness"), float(fitness[i])):
            raise Rejected(f"top[{i}] claims fitness {entry.get('fitness')!r}, the server "
                           f"computes {float(fitness[i])!r}")
        recomputed_top.append({
            "genome": genome.hash, "fitness": float(fitness[i]),
            "metrics": {name: (int(row[name]) if name in _INT_METRICS else float(row[name]))
                        for name in METRIC_FIELDS}})
    ranks = [(-t["fitness"], t["genome"]) for t in recomputed_top]
    if ranks != sorted(ranks):
        raise Rejected("the top list is not in rank order")
    # The top list is the best of everything evaluated, the final population among it: no
    # genome of the population outside the list may rank above the list's last entry.
    if len(top) < settings.top_k:
        if any(g.hash not in top_hashes for g in population):
            raise Rejected("a genome of the final population is missing from the top list")
    else:
        for j, genome in enumerate(extra):
            if (-float(fitness[len(top) + j]), genome.hash) < ranks[-1]:
                raise Rejected(f"{genome.hash[:12]} of the final population ranks above the "
                               "top list it is missing from")
    # The final population comes ranked best first, as the engine ranks it.
    fitness_by_hash = {g.hash: float(f) for g, f in zip(genomes, fitness, strict=True)}
    population_ranks = [(-fitness_by_hash[g.hash], g.hash) for g in population]
    if population_ranks != sorted(population_ranks):
        raise Rejected("the final population is not in rank order")
    # The digest over the server's own figures: agreement on it is agreement on the answer.
    if claimed_digest != result_digest(
            population_hashes=[g.hash for g in population],
            top=[(t["genome"], t["fitness"], t["metrics"]) for t in recomputed_top],
            evaluated=evaluated, generations=generations, trials=trials):
        raise Rejected("the digest does not match the output")


def answer_of_another_workunit(*, workunit: WorkUnit, digest: str) -> bool:
    """Whether ``digest`` is the validated answer of another task of the campaign.

    Every island epoch has its own seed and start population, so an honest answer is its work
    unit's alone; another work unit's validated answer reported here is a replay. The re-check
    cannot see one (the bars, the space and the settings are the campaign's), and two hosts
    replaying the same answer would otherwise agree with each other. Only *validated* answers
    count: were any reported answer to count, one cheater could block a work unit by reporting
    its honest answer (which it computed) for another work unit first. A work unit with the very
    same payload (not made by the campaign's services, which seed each epoch apart) has the very
    same answer, so it is not another task.
    """
    return _Replays([workunit], {digest}).replayed(workunit, digest)


class _Replays:
    """The validated answers with given digests in given campaigns, read with one query (an
    index on the replicas' digest keeps it independent of the tables' size), plus the answers
    this batch validates as it goes: a work unit later in the batch sees them as it would
    have, had each been validated in its own transaction."""

    def __init__(self, wus: list[WorkUnit], digests: set[str]) -> None:
        self.known: dict[tuple[int, str], list[tuple[int, Any]]] = {}
        campaign_ids = {wu.campaign_id for wu in wus}
        if digests:
            for wu_id, campaign_id, digest, payload in (
                    WorkUnit.objects.filter(campaign_id__in=campaign_ids,
                                            canonical_result__digest__in=digests)
                    .values_list("id", "campaign_id", "canonical_result__digest", "payload")):
                self.known.setdefault((campaign_id, digest), []).append((wu_id, payload))

    def add(self, wu: WorkUnit, digest: str) -> None:
        self.known.setdefault((wu.campaign_id, digest), []).append((wu.pk, wu.payload))

    def replayed(self, wu: WorkUnit, digest: str) -> bool:
        return any(wu_id != wu.pk and payload != wu.payload
                   for wu_id, payload in self.known.get((wu.campaign_id, digest), []))


class _Checker:
    """Re-checks replicas of one work unit, loading its bars once."""

    def __init__(self, wu: WorkUnit, replays: _Replays | None = None):
        self.wu = wu
        self._data: OHLCV | None = None
        self._replays = replays
        self._replayed: dict[str, bool] = {}
        self._verdicts: dict[tuple[str, str], Rejected | None] = {}

    def __call__(self, r: Result) -> Rejected | None:
        # The re-check is a pure function of the work unit, the output and the digest: a
        # replica that reports the very same output (byte for byte in canonical JSON, so that
        # ``1``, ``1.0`` and ``true`` stay apart) gets the verdict of the first one, without
        # running the engine again.
        key = (r.digest, json.dumps(r.output, sort_keys=True))
        if key not in self._verdicts:
            self._verdicts[key] = self._recheck(r)
        problem = self._verdicts[key]
        if problem is not None:
            return problem
        if r.digest not in self._replayed:
            replays = self._replays or _Replays([self.wu], {r.digest})
            self._replayed[r.digest] = replays.replayed(self.wu, r.digest)
        if self._replayed[r.digest]:
            return Rejected("the validated answer of another work unit, replayed")
        return None

    def _recheck(self, r: Result) -> Rejected | None:
        if self._data is None:
            p = self.wu.payload
            self._data = load_dataset(self.wu.campaign.dataset).slice(p["start"], p["stop"])
        try:
            output_recheck(workunit=self.wu, output=r.output, digest=r.digest, data=self._data)
        except Rejected as exc:
            return exc
        except (EpochError, SpaceError) as exc:  # the work unit's own payload: our fault
            raise RuntimeError(f"work unit {self.wu.pk} has an unusable payload: {exc}") from exc
        except (ArithmeticError, TypeError, ValueError, KeyError) as exc:
            # Anything else the reported output makes the re-check trip over is the output's
            # fault: judging it malformed keeps one bad replica from holding up the queue.
            return Rejected(f"the output cannot be checked: {type(exc).__name__}: {exc}",
                            malformed=True)
        return None


# --- state changes -------------------------------------------------------------------------


def quota_cap() -> int:
    return getattr(django_settings, "DAILY_RESULT_QUOTA", 100)


def host_record_valid(host_id: int | None, *, confirmed: bool, now: datetime) -> None:
    if host_id is None:
        return
    changes: dict[str, Any] = {
        "n_valid": F("n_valid") + 1,
        # Doubled up to the cap, never lowered by it (an operator may have raised one host).
        "max_results_day": Least(F("max_results_day") * 2,
                                 Greatest(F("max_results_day"), quota_cap())),
        "updated_at": now,
    }
    if confirmed:
        changes["consecutive_valid"] = F("consecutive_valid") + 1
    Host.objects.filter(pk=host_id).update(**changes)


def host_record_invalid(host_id: int | None, *, now: datetime) -> None:
    if host_id is None:
        return
    Host.objects.filter(pk=host_id).update(
        consecutive_valid=0, n_invalid=F("n_invalid") + 1,
        max_results_day=Greatest(F("max_results_day") - 1, 1), updated_at=now)


_HOST_RELIABILITY = ("n_valid", "n_invalid", "consecutive_valid", "max_results_day")


def _hosts_record(hosts: dict[int, Host], events: list[tuple[int, bool, bool]], *,
                  now: datetime) -> None:
    """Apply reliability events ``(host id, valid, confirmed)`` in their order to the locked
    host rows (the very rules of :func:`host_record_valid` and :func:`host_record_invalid`),
    then write each host's figures with one statement for all."""
    cap = quota_cap()
    touched: dict[int, Host] = {}
    for host_id, valid, confirmed in events:
        host = hosts[host_id]
        if valid:
            host.n_valid += 1
            host.max_results_day = min(host.max_results_day * 2, max(host.max_results_day, cap))
            if confirmed:
                host.consecutive_valid += 1
        else:
            host.consecutive_valid = 0
            host.n_invalid += 1
            host.max_results_day = max(host.max_results_day - 1, 1)
        touched[host_id] = host
    update_rows(Host, {pk: ({}, {name: getattr(host, name) for name in _HOST_RELIABILITY})
                       for pk, host in touched.items()}, now=now)


class _ValidatorWrites(Writes):
    """The transitioner's batched writes, plus credit grants and host reliability events, in
    the order the validator decides them."""

    def __init__(self, now: datetime) -> None:
        super().__init__(now)
        self.granted: list[Result] = []
        self.host_events: list[tuple[int, bool, bool]] = []

    def flush_all(self, hosts: dict[int, Host]) -> None:
        super().flush()
        credit_grant_many(results=self.granted, now=self.now)
        _hosts_record(hosts, self.host_events, now=self.now)


def _mark_valid(r: Result, wu: WorkUnit, writes: _ValidatorWrites, *, confirmed: bool) -> None:
    writes.move_result(r, validate_state=ValidateState.VALID, granted_credit=wu.credit)
    writes.granted.append(r)
    if r.host_id is not None:
        writes.host_events.append((r.host_id, True, confirmed))


def _mark_invalid(r: Result, writes: _ValidatorWrites, *, rejected: Rejected | None = None
                  ) -> None:
    changes: dict[str, Any] = {"validate_state": ValidateState.INVALID}
    if rejected is not None:
        changes["error_message"] = f"rejected by the validator: {rejected.reason}"[:2000]
        if rejected.malformed:
            changes["outcome"] = Outcome.VALIDATE_ERROR
        logger.warning("validator: result %s rejected: %s", r.pk, rejected.reason)
    writes.move_result(r, **changes)
    if r.host_id is not None:
        writes.host_events.append((r.host_id, False, False))


def _confirmed(r: Result, agreeing: list[Result]) -> bool:
    """Whether another agreeing replica was reported no earlier than ``r``: only then does the
    agreement show that ``r`` was computed rather than copied from an answer already on record
    (reports at the same instant cannot have copied each other)."""
    if r.received_time is None:
        return False
    return any(other.pk != r.pk and other.received_time is not None
               and other.received_time >= r.received_time for other in agreeing)


def _digest_key(r: Result) -> str:
    if r.digest:
        return r.digest
    if isinstance(r.output, dict) and isinstance(r.output.get("digest"), str):
        return r.output["digest"]
    return f"no digest: result {r.pk}"  # never matches another replica


def _viable(r: Result) -> bool:
    return (r.server_state == ServerState.OVER and r.outcome == Outcome.SUCCESS
            and r.validate_state in (ValidateState.INIT, ValidateState.INCONCLUSIVE))


def _check_set(wu: WorkUnit, results: list[Result], check: _Checker, writes: _ValidatorWrites,
               replays: _Replays) -> None:
    now = writes.now
    viable = [r for r in results if _viable(r)]
    if len(viable) < wu.min_quorum:
        writes.update_workunit(wu.pk, where={"need_validate": True}, need_validate=False)
        return
    threshold = wu.min_quorum // 2 + 1
    groups: dict[str, list[Result]] = {}
    for r in viable:
        groups.setdefault(_digest_key(r), []).append(r)
    rejected: dict[int, Rejected] = {}
    agreeing: list[Result] = []
    for members in groups.values():
        if len(members) < threshold:
            continue
        honest = []
        for r in members:
            problem = check(r)
            if problem is None:
                honest.append(r)
            else:
                rejected[r.pk] = problem
        if len(honest) >= threshold:
            agreeing = honest
            break

    for r in viable:
        if r.pk in rejected:
            _mark_invalid(r, writes, rejected=rejected[r.pk])
    if agreeing:
        canonical = agreeing[0]
        agreeing_ids = {r.pk for r in agreeing}
        for r in viable:
            if r.pk in agreeing_ids:
                _mark_valid(r, wu, writes, confirmed=_confirmed(r, agreeing))
            elif r.pk not in rejected:
                _mark_invalid(r, writes)
        for r in results:
            if r.server_state == ServerState.UNSENT:
                writes.move_result(r, server_state=ServerState.OVER, outcome=Outcome.DIDNT_NEED)
        writes.update_workunit(
            wu.pk, where={"need_validate": True, "canonical_result__isnull": True,
                          "error_mask": 0},
            need_validate=False, canonical_result_id=canonical.pk,
            assimilate_state=AssimilateState.READY, transition_time=now)
        replays.add(wu, canonical.digest)  # a later work unit of the batch must see it
        return

    remaining = [r for r in viable if r.pk not in rejected]
    for r in remaining:
        if r.validate_state == ValidateState.INIT:
            writes.move_result(r, validate_state=ValidateState.INCONCLUSIVE)
    wu_changes: dict[str, Any] = {"need_validate": False}
    error_mask = wu.error_mask
    if len(remaining) > wu.max_success_results:
        error_mask |= ErrorMask.TOO_MANY_SUCCESS_RESULTS
    elif len(remaining) >= wu.target_nresults:
        wu_changes["target_nresults"] = len(remaining) + 1
    # The transitioner sends the extra replica (or replaces the liars), or winds the work
    # unit down on error, right away.
    wu_changes.update(error_mask=error_mask, transition_time=now)
    writes.update_workunit(
        wu.pk, where={"need_validate": True, "target_nresults": wu.target_nresults,
                      "canonical_result__isnull": True, "error_mask": wu.error_mask},
        **wu_changes)


def _check_stragglers(wu: WorkUnit, results: list[Result], check: _Checker,
                      writes: _ValidatorWrites) -> None:
    canonical = next(r for r in results if r.pk == wu.canonical_result_id)
    for r in results:
        if r.pk == canonical.pk or not _viable(r):
            continue
        if _digest_key(r) != _digest_key(canonical):
            _mark_invalid(r, writes)
            continue
        problem = check(r)
        if problem is None:
            # Reported after the canonical answer was on record: valid, but no proof of work.
            _mark_valid(r, wu, writes, confirmed=False)
        else:
            _mark_invalid(r, writes, rejected=problem)
    writes.update_workunit(wu.pk, where={"need_validate": True}, need_validate=False)


def _lock_credit_holders(results: list[Result]) -> dict[int, Host]:
    """Lock every volunteer, team and host this batch may credit or judge, in one global order;
    returns the hosts' rows (their reliability figures, read under the lock).

    Credit grants and reliability updates touch these rows; taking the locks up front —
    volunteers, then teams, then hosts, each by id, the order ``credit_grant`` uses for one
    result — keeps two validators (or a validator and a transitioner, which locks hosts only)
    from ever waiting on each other in a cycle.
    """
    volunteer_ids = sorted({r.volunteer_id for r in results if r.volunteer_id is not None})
    host_ids = sorted({r.host_id for r in results if r.host_id is not None})
    if volunteer_ids:
        team_ids = sorted({team_id for (_, team_id) in Volunteer.objects.select_for_update()
                           .filter(pk__in=volunteer_ids).order_by("pk")
                           .values_list("pk", "team_id") if team_id is not None})
        if team_ids:
            list(Team.objects.select_for_update().filter(pk__in=team_ids).order_by("pk")
                 .values_list("pk", flat=True))
    if not host_ids:
        return {}
    return {h.pk: h for h in Host.objects.select_for_update().filter(pk__in=host_ids)
            .order_by("pk").only("id", *_HOST_RELIABILITY)}


def _validate_batch(ids: list[int], *, now: datetime) -> int:
    """Validate these work units in one transaction (those another process holds, or no longer
    flagged, are skipped); returns how many were handled.

    The engine re-checks run with only the work units locked; the volunteers, teams and hosts
    are locked afterwards, for the short time the decisions are written.
    """
    with transaction.atomic():
        wus = list(WorkUnit.objects.select_for_update(skip_locked=True)
                   .filter(pk__in=ids, need_validate=True).order_by("id"))
        if not wus:
            return 0
        campaigns = {c.pk: c for c in Campaign.objects.select_related("dataset")
                     .filter(pk__in={wu.campaign_id for wu in wus})}
        for wu in wus:
            wu.campaign = campaigns[wu.campaign_id]
        grouped = results_by_workunit(
            Result.objects.filter(workunit_id__in=[wu.pk for wu in wus]).order_by("id"))
        replays = _Replays([wu for wu in wus if not wu.error_mask],
                           {r.digest for rs in grouped.values() for r in rs
                            if _viable(r) and r.digest})
        writes = _ValidatorWrites(now)
        for wu in wus:
            results = grouped.get(wu.pk, [])
            check = _Checker(wu, replays)
            if wu.error_mask:
                # The transitioner winds errored work units down; nothing to validate.
                writes.update_workunit(wu.pk, where={"need_validate": True},
                                       need_validate=False)
            elif wu.canonical_result_id is not None:
                _check_stragglers(wu, results, check, writes)
            else:
                _check_set(wu, results, check, writes, replays)
        hosts = _lock_credit_holders([r for rs in grouped.values() for r in rs
                                      if r.server_state == ServerState.OVER])
        writes.flush_all(hosts)
        return len(wus)


def validate_pass(*, limit: int = 200, now: datetime | None = None) -> int:
    """One validator pass over work units flagged ``need_validate``; returns how many it handled.

    Safe in several processes at once: each work unit is locked (skipped when another process
    holds it) and every change is conditional. Work units are validated in batches
    (``BATCH_SIZE`` to a transaction); a batch that fails is retried one work unit at a time,
    and a work unit that fails alone (an unreadable data set, say) stays flagged and is retried
    by the next pass.
    """
    now = now or timezone.now()
    ids = list(WorkUnit.objects.filter(need_validate=True).order_by("id")
               .values_list("id", flat=True)[:limit])
    return run_batches(ids, partial(_validate_batch, now=now), name="validator",
                       batch=VALIDATE_BATCH_SIZE, catch_all=True)
