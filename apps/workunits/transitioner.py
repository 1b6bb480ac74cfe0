"""The transitioner: BOINC's work-unit state machine (reference/boinc.md §1.5), one pass at a time.

A work unit is due when its ``transition_time`` has passed (the scheduler sets it to *now* on
every report). For each due work unit, in its own transaction with its row locked:

1. time out replicas past their deadline, and *ghosts* (sent, never acknowledged, older than
   ``GHOST_TIMEOUT_SECONDS``), as OVER/NO_REPLY, penalising the host;
2. count the replicas; a new success after the canonical result's files were deleted is
   TOO_LATE; any other new success with ``nsuccess >= min_quorum`` (or a canonical result to
   compare it with) flags ``need_validate``;
3. apply the error limits to ``error_mask``;
4. with an error: unsent replicas become OVER/DIDNT_NEED, unchecked successes NO_CHECK, and the
   work unit goes to the assimilator; otherwise create replacement replicas up to
   ``target_nresults``;
5. set the next ``transition_time``: the earliest in-progress deadline (or ghost limit), else a
   safety net of max(10 days, 1.5 × delay_bound) while the work unit is open, else never.

Every change is a conditional update whose row count is checked; a row changed under our feet
rolls the work unit's transaction back and leaves it due, so the next pass simply retries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from apps.accounts.models import Host

from .models import Result, WorkUnit
from .states import (
    AssimilateState,
    ErrorMask,
    FileDeleteState,
    Outcome,
    ServerState,
    ValidateState,
)

logger = logging.getLogger(__name__)

SAFETY_NET_MIN = timedelta(days=10)


class Conflict(Exception):
    """A row changed between our read and our conditional update: retry the work unit later."""


def ghost_timeout() -> timedelta:
    return timedelta(seconds=getattr(settings, "GHOST_TIMEOUT_SECONDS", 600))


def checked_update(queryset, expected: int = 1, **changes) -> None:
    """``queryset.update(**changes)`` that must change exactly ``expected`` rows."""
    updated = queryset.update(**changes)
    if updated != expected:
        raise Conflict(f"expected to update {expected} row(s), updated {updated}: {queryset.query}")


def host_penalize_no_reply(host_id: int | None, *, now: datetime) -> None:
    """A timeout costs the host its trust and one task of daily quota (never below 1)."""
    if host_id is None:
        return
    Host.objects.filter(pk=host_id).update(
        consecutive_valid=0, max_results_day=Greatest(F("max_results_day") - 1, 1),
        updated_at=now)


@dataclass
class _Counts:
    nunsent: int = 0
    ninprogress: int = 0
    nsuccess: int = 0  # OVER/SUCCESS and not INVALID: viable answers
    nerrors: int = 0
    nno_reply: int = 0
    ndidnt_need: int = 0
    ntotal: int = 0
    new_success: bool = False  # a success nobody has looked at yet


def _count(results: list[Result]) -> _Counts:
    c = _Counts(ntotal=len(results))
    for r in results:
        if r.server_state == ServerState.UNSENT:
            c.nunsent += 1
        elif r.server_state == ServerState.IN_PROGRESS:
            c.ninprogress += 1
        elif r.outcome == Outcome.SUCCESS:
            if r.validate_state != ValidateState.INVALID:
                c.nsuccess += 1
            if r.validate_state == ValidateState.INIT:
                c.new_success = True
        elif r.outcome in (Outcome.CLIENT_ERROR, Outcome.VALIDATE_ERROR):
            c.nerrors += 1
        elif r.outcome == Outcome.NO_REPLY:
            c.nno_reply += 1
        elif r.outcome in (Outcome.DIDNT_NEED, Outcome.CLIENT_DETACHED):
            c.ndidnt_need += 1
    return c


def _result_move(r: Result, *, now: datetime, where: dict | None = None, **changes) -> None:
    """Move one replica from the states we read to ``changes`` (conditional, checked).

    ``where`` adds conditions the row must still meet (e.g. still unacknowledged).
    """
    checked_update(Result.objects.filter(pk=r.pk, server_state=r.server_state, outcome=r.outcome,
                                         validate_state=r.validate_state, **(where or {})),
                   updated_at=now, **changes)
    for name, value in changes.items():
        setattr(r, name, value)


def _transition_one(wu_id: int, *, now: datetime, skip_locked: bool, only_due: bool) -> bool:
    """Handle one work unit; returns whether it was handled (False: locked elsewhere or not due)."""
    with transaction.atomic():
        locked = WorkUnit.objects.select_for_update(skip_locked=skip_locked).filter(pk=wu_id)
        if only_due:
            locked = locked.filter(transition_time__lte=now)
        wu = locked.first()
        if wu is None:
            return False
        results = list(Result.objects.filter(workunit=wu).order_by("id"))
        ghost_limit = now - ghost_timeout()

        # 1. Timeouts and ghosts: no reply.
        penalized = []
        for r in results:
            if r.server_state != ServerState.IN_PROGRESS:
                continue
            late = r.report_deadline is not None and r.report_deadline <= now
            ghost = (r.acked_time is None and r.sent_time is not None
                     and r.sent_time <= ghost_limit)
            if late or ghost:
                # An ack may commit after we read the row (the scheduler does not lock the
                # work unit): a ghost must still be unacknowledged when it is timed out.
                _result_move(r, now=now, where=None if late else {"acked_time__isnull": True},
                             server_state=ServerState.OVER, outcome=Outcome.NO_REPLY)
                penalized.append(r.host_id)
        # Hosts in id order: the lock order the validator keeps too.
        for host_id in sorted(h for h in penalized if h is not None):
            host_penalize_no_reply(host_id, now=now)

        # 2. Late successes and the validation trigger.
        has_canonical = wu.canonical_result_id is not None
        if has_canonical and wu.file_delete_state == FileDeleteState.DONE:
            for r in results:
                if (r.server_state == ServerState.OVER and r.outcome == Outcome.SUCCESS
                        and r.validate_state == ValidateState.INIT):
                    _result_move(r, now=now, validate_state=ValidateState.TOO_LATE, output=None,
                                 file_delete_state=FileDeleteState.DONE)
        c = _count(results)
        need_validate = wu.need_validate
        error_mask = wu.error_mask
        if c.new_success and error_mask == 0 and (has_canonical or c.nsuccess >= wu.min_quorum):
            need_validate = True

        # 3. Error limits (only while there is no answer yet).
        needed = 0
        if not has_canonical and error_mask == 0:
            if c.nerrors > wu.max_error_results:
                error_mask |= ErrorMask.TOO_MANY_ERROR_RESULTS
            if c.nsuccess > wu.max_success_results and not need_validate:
                error_mask |= ErrorMask.TOO_MANY_SUCCESS_RESULTS
            needed = max(wu.target_nresults - c.nunsent - c.ninprogress - c.nsuccess, 0)
            if needed > wu.max_total_results - c.ntotal:
                error_mask |= ErrorMask.TOO_MANY_TOTAL_RESULTS

        # 4. Wind down an errored work unit, or top it up with replicas.
        assimilate_state = wu.assimilate_state
        if error_mask:
            need_validate = False
            for r in results:
                if r.server_state == ServerState.UNSENT:
                    _result_move(r, now=now, server_state=ServerState.OVER,
                                 outcome=Outcome.DIDNT_NEED)
                elif (r.server_state == ServerState.OVER and r.outcome == Outcome.SUCCESS
                      and r.validate_state in (ValidateState.INIT, ValidateState.INCONCLUSIVE)):
                    _result_move(r, now=now, validate_state=ValidateState.NO_CHECK)
            if assimilate_state == AssimilateState.INIT:
                assimilate_state = AssimilateState.READY
        elif not has_canonical and needed:
            # A replacement after a failure goes to the front of the queue: the work unit is
            # already late, and an island's next epoch waits for it.
            retry = c.nerrors + c.nno_reply > 0
            Result.objects.bulk_create([
                Result(workunit=wu, server_state=ServerState.UNSENT,
                       priority=wu.priority + (1 if retry else 0))
                for _ in range(needed)])

        # 5. When to look again.
        deadlines = []
        for r in results:
            if r.server_state == ServerState.IN_PROGRESS:
                if r.report_deadline is not None:
                    deadlines.append(r.report_deadline)
                if r.acked_time is None and r.sent_time is not None:
                    deadlines.append(r.sent_time + ghost_timeout())
        if has_canonical or error_mask:
            next_time = None
        else:
            next_time = now + max(SAFETY_NET_MIN, timedelta(seconds=1.5 * wu.delay_bound))
        if deadlines:
            next_time = min([*deadlines, *([next_time] if next_time else [])])

        checked_update(
            WorkUnit.objects.filter(pk=wu.pk, error_mask=wu.error_mask,
                                    canonical_result_id=wu.canonical_result_id,
                                    assimilate_state=wu.assimilate_state,
                                    target_nresults=wu.target_nresults),
            need_validate=need_validate, error_mask=error_mask,
            assimilate_state=assimilate_state, transition_time=next_time, updated_at=now)
        return True


def transition_pass(*, workunit_ids: list[int] | None = None, now: datetime | None = None,
                    limit: int = 500) -> int:
    """One transitioner pass; returns how many work units it handled.

    With ``workunit_ids`` (enqueued right after a report) those work units are handled whether
    due or not, waiting for a lock another process holds; otherwise the due work units, oldest
    first, skipping any another process has locked. Safe to run in several processes at once.
    """
    now = now or timezone.now()
    if workunit_ids is not None:
        ids = sorted(set(workunit_ids))[:limit]
        skip_locked, only_due = False, False
    else:
        ids = list(WorkUnit.objects.filter(transition_time__lte=now)
                   .order_by("transition_time", "id").values_list("id", flat=True)[:limit])
        skip_locked, only_due = True, True
    handled = 0
    for wu_id in ids:
        try:
            handled += _transition_one(wu_id, now=now, skip_locked=skip_locked,
                                       only_due=only_due)
        except Conflict as exc:
            logger.info("transitioner: work unit %s changed during its pass (%s); retrying later",
                        wu_id, exc)
    return handled

