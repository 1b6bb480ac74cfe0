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

One rule is stricter than BOINC's: the agreement must come from a replica reported *no earlier*
(:func:`_confirmed`). A replica reported after an agreeing answer was already on record may be a
copy of it; it is valid and credited (a copy of a correct answer cannot be told from the answer),
but it proves no computation and earns no trust. Otherwise a copier climbs to trusted by copying,
is then sent work units alone, where there is nothing to copy, and an old answer it replays
there passes every check (``bench/cheaters.py`` found this).
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import Any

from django.conf import settings as django_settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Greatest, Least
from django.utils import timezone

from apps.accounts.models import Host, Team, Volunteer
from apps.credit.services import credit_grant
from worker_client.engine import METRIC_FIELDS, OHLCV, Genome, GenomeError, evaluate_population
from worker_client.engine.ga import EpochError, GASettings, fitness_of, result_digest
from worker_client.engine.space import SearchSpace, SpaceError

from .data import load_dataset
from .models import Result, WorkUnit
from .states import (
    AssimilateState,
    ErrorMask,
    Outcome,
    ServerState,
    ValidateState,
)
from .transitioner import Conflict, checked_update

logger = logging.getLogger(__name__)

RTOL = 1e-9  # claimed against recomputed metrics; identical engines agree to the last bit
ATOL = 1e-12  # for figures that are (nearly) zero
_INT_METRICS = frozenset({"n_trades", "n_returns"})


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


def output_recheck(*, workunit: WorkUnit, output: Any, digest: str = "",
                   data: OHLCV | None = None) -> None:
    """Raise :class:`Rejected` unless ``output`` is an honest answer to ``workunit``.

    ``data`` is the work unit's in-sample bars (loaded from its data set when not given);
    ``digest`` is the digest the replica was reported with, which must be the output's own.
    """
    payload = workunit.payload
    space = SearchSpace.from_dict(payload["space"])
    settings = GASettings.from_dict(payload["settings"])
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
            evaluated=evaluated, generations=generations):
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
    payloads = (WorkUnit.objects.filter(campaign_id=workunit.campaign_id,
                                        canonical_result__digest=digest)
                .exclude(pk=workunit.pk).values_list("payload", flat=True))
    return any(payload != workunit.payload for payload in payloads)


class _Checker:
    """Re-checks replicas of one work unit, loading its bars once."""

    def __init__(self, wu: WorkUnit):
        self.wu = wu
        self._data: OHLCV | None = None
        self._replayed: dict[str, bool] = {}

    def __call__(self, r: Result) -> Rejected | None:
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
        if r.digest not in self._replayed:
            self._replayed[r.digest] = answer_of_another_workunit(workunit=self.wu,
                                                                  digest=r.digest)
        if self._replayed[r.digest]:
            return Rejected("the validated answer of another work unit, replayed")
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


def _move(r: Result, *, now: datetime, **changes: Any) -> None:
    checked_update(Result.objects.filter(pk=r.pk, server_state=r.server_state, outcome=r.outcome,
                                         validate_state=r.validate_state),
                   updated_at=now, **changes)
    for name, value in changes.items():
        setattr(r, name, value)


def _mark_valid(r: Result, wu: WorkUnit, *, confirmed: bool, now: datetime) -> None:
    _move(r, now=now, validate_state=ValidateState.VALID, granted_credit=wu.credit)
    credit_grant(result=r, now=now)
    host_record_valid(r.host_id, confirmed=confirmed, now=now)


def _mark_invalid(r: Result, *, now: datetime, rejected: Rejected | None = None) -> None:
    changes: dict[str, Any] = {"validate_state": ValidateState.INVALID}
    if rejected is not None:
        changes["error_message"] = f"rejected by the validator: {rejected.reason}"[:2000]
        if rejected.malformed:
            changes["outcome"] = Outcome.VALIDATE_ERROR
        logger.warning("validator: result %s rejected: %s", r.pk, rejected.reason)
    _move(r, now=now, **changes)
    host_record_invalid(r.host_id, now=now)


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


def _check_set(wu: WorkUnit, results: list[Result], check: _Checker, *, now: datetime) -> None:
    viable = [r for r in results
              if r.server_state == ServerState.OVER and r.outcome == Outcome.SUCCESS
              and r.validate_state in (ValidateState.INIT, ValidateState.INCONCLUSIVE)]
    wu_changes: dict[str, Any] = {"need_validate": False}
    if len(viable) < wu.min_quorum:
        checked_update(WorkUnit.objects.filter(pk=wu.pk, need_validate=True), **wu_changes,
                       updated_at=now)
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
            _mark_invalid(r, now=now, rejected=rejected[r.pk])
    if agreeing:
        canonical = agreeing[0]
        agreeing_ids = {r.pk for r in agreeing}
        for r in viable:
            if r.pk in agreeing_ids:
                _mark_valid(r, wu, confirmed=_confirmed(r, agreeing), now=now)
            elif r.pk not in rejected:
                _mark_invalid(r, now=now)
        for r in results:
            if r.server_state == ServerState.UNSENT:
                _move(r, now=now, server_state=ServerState.OVER, outcome=Outcome.DIDNT_NEED)
        wu_changes.update(canonical_result=canonical, assimilate_state=AssimilateState.READY,
                          transition_time=now)
        checked_update(WorkUnit.objects.filter(pk=wu.pk, need_validate=True,
                                               canonical_result__isnull=True, error_mask=0),
                       **wu_changes, updated_at=now)
        return

    remaining = [r for r in viable if r.pk not in rejected]
    for r in remaining:
        if r.validate_state == ValidateState.INIT:
            _move(r, now=now, validate_state=ValidateState.INCONCLUSIVE)
    error_mask = wu.error_mask
    if len(remaining) > wu.max_success_results:
        error_mask |= ErrorMask.TOO_MANY_SUCCESS_RESULTS
    elif len(remaining) >= wu.target_nresults:
        wu_changes["target_nresults"] = len(remaining) + 1
    # The transitioner sends the extra replica (or replaces the liars), or winds the work
    # unit down on error, right away.
    wu_changes.update(error_mask=error_mask, transition_time=now)
    checked_update(WorkUnit.objects.filter(pk=wu.pk, need_validate=True,
                                           target_nresults=wu.target_nresults,
                                           canonical_result__isnull=True, error_mask=wu.error_mask),
                   **wu_changes, updated_at=now)


def _check_stragglers(wu: WorkUnit, results: list[Result], check: _Checker, *,
                      now: datetime) -> None:
    canonical = next(r for r in results if r.pk == wu.canonical_result_id)
    for r in results:
        if (r.pk == canonical.pk or r.server_state != ServerState.OVER
                or r.outcome != Outcome.SUCCESS
                or r.validate_state not in (ValidateState.INIT, ValidateState.INCONCLUSIVE)):
            continue
        if _digest_key(r) != _digest_key(canonical):
            _mark_invalid(r, now=now)
            continue
        problem = check(r)
        if problem is None:
            # Reported after the canonical answer was on record: valid, but no proof of work.
            _mark_valid(r, wu, confirmed=False, now=now)
        else:
            _mark_invalid(r, now=now, rejected=problem)
    checked_update(WorkUnit.objects.filter(pk=wu.pk, need_validate=True),
                   need_validate=False, updated_at=now)


def _lock_credit_holders(results: list[Result]) -> None:
    """Lock every volunteer, team and host this pass may credit or judge, in one global order.

    Credit grants and reliability updates touch these rows result by result; taking the locks
    up front — volunteers, then teams, then hosts, each by id, the order ``credit_grant`` uses
    for one result — keeps two validators (or a validator and a transitioner, which locks hosts
    only) from ever waiting on each other in a cycle.
    """
    if not results:
        return
    volunteer_ids = sorted({r.volunteer_id for r in results if r.volunteer_id is not None})
    team_ids = sorted(set(Volunteer.objects.filter(pk__in=volunteer_ids, team__isnull=False)
                          .values_list("team_id", flat=True)))
    host_ids = sorted({r.host_id for r in results if r.host_id is not None})
    for model, ids in ((Volunteer, volunteer_ids), (Team, team_ids), (Host, host_ids)):
        if ids:
            list(model.objects.select_for_update().filter(pk__in=ids).order_by("pk")
                 .values_list("pk", flat=True))


def _validate_one(wu_id: int, *, now: datetime) -> bool:
    with transaction.atomic():
        wu = (WorkUnit.objects.select_for_update(skip_locked=True)
              .filter(pk=wu_id, need_validate=True).first())
        if wu is None:
            return False
        results = list(Result.objects.filter(workunit=wu).order_by("id"))
        _lock_credit_holders([r for r in results if r.server_state == ServerState.OVER])
        check = _Checker(wu)
        if wu.error_mask:
            # The transitioner winds errored work units down; nothing to validate.
            checked_update(WorkUnit.objects.filter(pk=wu.pk, need_validate=True),
                           need_validate=False, updated_at=now)
        elif wu.canonical_result_id is not None:
            _check_stragglers(wu, results, check, now=now)
        else:
            _check_set(wu, results, check, now=now)
        return True


def validate_pass(*, limit: int = 100, now: datetime | None = None) -> int:
    """One validator pass over work units flagged ``need_validate``; returns how many it handled.

    Safe in several processes at once: each work unit is locked (skipped when another process
    holds it) and every change is conditional. A work unit that fails (an unreadable data set,
    say) stays flagged and is retried by the next pass.
    """
    now = now or timezone.now()
    ids = list(WorkUnit.objects.filter(need_validate=True).order_by("id")
               .values_list("id", flat=True)[:limit])
    handled = 0
    for wu_id in ids:
        try:
            handled += _validate_one(wu_id, now=now)
        except Conflict as exc:
            logger.info("validator: work unit %s changed during its pass (%s); retrying later",
                        wu_id, exc)
        except Exception:
            logger.exception("validator: work unit %s failed; retrying on the next pass", wu_id)
    return handled
