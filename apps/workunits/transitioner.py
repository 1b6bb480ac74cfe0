"""The transitioner: BOINC's work-unit state machine (reference/boinc.md §1.5), one pass at a time.

A work unit is due when its ``transition_time`` has passed (the scheduler sets it to *now* on
every report). Due work units are handled in batches (``BATCH_SIZE``): one transaction locks the
batch's rows, reads all their replicas with one query, decides each work unit in memory, and
writes the decisions with a few set-based statements (:class:`Writes`). For each work unit:

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
rolls the batch back, which is then retried one work unit at a time (:func:`run_batches`), so
that only the work unit that changed is left due for the next pass.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Field, Model
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
BATCH_SIZE = 100  # work units per transaction


class Conflict(Exception):
    """A row changed between our read and our conditional update: retry the work unit later."""


def ghost_timeout() -> timedelta:
    return timedelta(seconds=getattr(settings, "GHOST_TIMEOUT_SECONDS", 600))


def checked_update(queryset, expected: int = 1, **changes) -> None:
    """``queryset.update(**changes)`` that must change exactly ``expected`` rows."""
    updated = queryset.update(**changes)
    if updated != expected:
        raise Conflict(f"expected to update {expected} row(s), updated {updated}: {queryset.query}")


def host_penalize_no_reply(host_id: int | None, *, now: datetime, times: int = 1) -> None:
    """A timeout costs the host its trust and one task of daily quota (never below 1), for each
    of ``times`` timeouts."""
    if host_id is None:
        return
    Host.objects.filter(pk=host_id).update(
        consecutive_valid=0, max_results_day=Greatest(F("max_results_day") - times, 1),
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


class Writes:
    """Changes decided for a batch of work units, applied at the end with few statements.

    Every change stays conditional: rows that were read in the same states are moved together by
    one ``UPDATE … WHERE id IN (…) AND <states as read>`` whose row count must be the number of
    rows, else :class:`Conflict` (the batch rolls back and is retried one work unit at a time).
    """

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.results: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.workunits: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.new_results: list[Result] = []
        self.penalized: Counter[int] = Counter()

    def move_result(self, r: Result, *, where: dict[str, Any] | None = None,
                    **changes: Any) -> None:
        """Move one replica from the states we read to ``changes``; ``where`` adds conditions
        the row must still meet (e.g. still unacknowledged)."""
        if r.pk in self.results:  # a second move of one row: one update from the first states
            first_where, first_changes = self.results[r.pk]
            first_where.update(where or {})
            first_changes.update(changes)
        else:
            self.results[r.pk] = ({"server_state": r.server_state, "outcome": r.outcome,
                                   "validate_state": r.validate_state, **(where or {})},
                                  dict(changes))
        for name, value in changes.items():
            setattr(r, name, value)

    def update_workunit(self, pk: int, *, where: dict[str, Any], **changes: Any) -> None:
        if pk in self.workunits:
            raise RuntimeError(f"work unit {pk} updated twice in one batch")
        self.workunits[pk] = (where, changes)

    def flush(self) -> None:
        update_rows(Result, self.results, now=self.now)
        # Hosts in id order: the lock order the validator keeps too.
        for host_id in sorted(self.penalized):
            host_penalize_no_reply(host_id, now=self.now, times=self.penalized[host_id])
        if self.new_results:
            Result.objects.bulk_create(self.new_results)
        update_rows(WorkUnit, self.workunits, now=self.now)


ROWS_PER_STATEMENT = 200


def _column(model: type[Model], name: str) -> tuple[Field, str]:
    field = model._meta.get_field(name)
    return field, connection.ops.quote_name(field.column)


def _ids_sql(ids: Iterable[int]) -> str:
    """Row ids written into the statement (integers from our own reads): a statement with
    hundreds of placeholders costs psycopg more to parse than to send."""
    return ", ".join(str(int(pk)) for pk in ids)


def _literal(field: Field, value: Any) -> tuple[str, list[Any]]:
    """An integer (a state, a count, an id) written into the statement; anything else bound."""
    if isinstance(value, int) and not isinstance(value, bool):  # states are int choices
        return str(int(value)), []
    return "%s", [field.get_db_prep_save(value, connection)]


def _set_sql(model: type[Model], name: str, values: list[tuple[int, Any]]
             ) -> tuple[str, list[Any]]:
    """``column = value`` when every row gets one value, else ``column = CASE id WHEN … END``."""
    field, column = _column(model, name)
    first = values[0][1]
    if all(type(v) is type(first) and v == first for _, v in values):
        sql, params = _literal(field, first)
        return f"{column} = {sql}", params
    whens, params = [], []
    for pk, value in values:
        sql, value_params = _literal(field, value)
        whens.append(f" WHEN {int(pk)} THEN {sql}")
        params += value_params
    cast = f"::{field.db_type(connection)}" if connection.vendor == "postgresql" else ""
    return f"{column} = (CASE id{''.join(whens)} ELSE {column} END){cast}", params


def _where_sql(model: type[Model], name: str, value: Any) -> tuple[str, list[Any]]:
    """One condition of a ``filter()``-style ``where``: ``column = value`` or ``__isnull``."""
    if name.endswith("__isnull"):
        _, column = _column(model, name.removesuffix("__isnull"))
        return f"{column} IS {'' if value else 'NOT '}NULL", []
    field, column = _column(model, name)
    if value is None:
        return f"{column} IS NULL", []
    sql, params = _literal(field, value)
    return f"{column} = {sql}", params


def update_rows(model: type[Model], rows: dict[int, tuple[dict[str, Any], dict[str, Any]]], *,
                now: datetime) -> None:
    """Apply ``{pk: (where, changes)}``: one checked UPDATE per set of rows that name the same
    conditions and change the same columns (``updated_at`` too). Values that differ between rows
    go through a ``CASE``; conditions that differ, through ``(id IN … AND column = …) OR …``.

    Written as SQL: the ORM's ``Case(When(…))`` costs milliseconds of Python per row.
    """
    groups: dict[tuple[Any, ...], list[tuple[int, dict[str, Any], dict[str, Any]]]] = {}
    for pk, (where, changes) in rows.items():
        groups.setdefault((tuple(sorted(where)), tuple(sorted(changes))), []).append(
            (pk, where, changes))
    table = connection.ops.quote_name(model._meta.db_table)
    for (where_names, names), members in groups.items():
        for i in range(0, len(members), ROWS_PER_STATEMENT):
            chunk = members[i:i + ROWS_PER_STATEMENT]
            sets, params = [], []
            for name in (*names, "updated_at"):
                sql, values = _set_sql(model, name, [
                    (pk, now if name == "updated_at" else ch[name]) for pk, _, ch in chunk])
                sets.append(sql)
                params += values
            conditions = [f"id IN ({_ids_sql(pk for pk, _, _ in chunk)})"]
            for name in where_names:
                by_value: dict[Any, list[int]] = {}
                for pk, where, _ in chunk:
                    by_value.setdefault(where[name], []).append(pk)
                either = []
                for value, pks in by_value.items():
                    sql, values = _where_sql(model, name, value)
                    if len(by_value) == 1:
                        either.append(sql)
                    else:
                        either.append(f"(id IN ({_ids_sql(pks)}) AND {sql})")
                    params += values
                conditions.append(either[0] if len(either) == 1
                                  else "(" + " OR ".join(either) + ")")
            with connection.cursor() as cursor:
                cursor.execute(f"UPDATE {table} SET {', '.join(sets)} "
                               f"WHERE {' AND '.join(conditions)}", params)
                updated = cursor.rowcount
            if updated != len(chunk):
                raise Conflict(f"expected to update {len(chunk)} {model.__name__} row(s), "
                               f"updated {updated}")


WORKUNIT_FIELDS = ("id", "canonical_result_id", "file_delete_state", "need_validate",
                   "error_mask", "min_quorum", "max_error_results", "max_success_results",
                   "target_nresults", "max_total_results", "assimilate_state", "priority",
                   "delay_bound")
RESULT_FIELDS = ("id", "workunit_id", "server_state", "outcome", "validate_state", "host_id",
                 "report_deadline", "acked_time", "sent_time")


def _transition_decide(wu: WorkUnit, results: list[Result], writes: Writes) -> None:
    """Decide one work unit's transition into ``writes`` (steps 1-5 of the module's notes)."""
    now = writes.now
    ghost_limit = now - ghost_timeout()

    # 1. Timeouts and ghosts: no reply.
    for r in results:
        if r.server_state != ServerState.IN_PROGRESS:
            continue
        late = r.report_deadline is not None and r.report_deadline <= now
        ghost = (r.acked_time is None and r.sent_time is not None
                 and r.sent_time <= ghost_limit)
        if late or ghost:
            # An ack may commit after we read the row (the scheduler does not lock the
            # work unit): a ghost must still be unacknowledged when it is timed out.
            writes.move_result(r, where=None if late else {"acked_time__isnull": True},
                               server_state=ServerState.OVER, outcome=Outcome.NO_REPLY)
            if r.host_id is not None:
                writes.penalized[r.host_id] += 1

    # 2. Late successes and the validation trigger.
    has_canonical = wu.canonical_result_id is not None
    if has_canonical and wu.file_delete_state == FileDeleteState.DONE:
        for r in results:
            if (r.server_state == ServerState.OVER and r.outcome == Outcome.SUCCESS
                    and r.validate_state == ValidateState.INIT):
                writes.move_result(r, validate_state=ValidateState.TOO_LATE, output=None,
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
                writes.move_result(r, server_state=ServerState.OVER, outcome=Outcome.DIDNT_NEED)
            elif (r.server_state == ServerState.OVER and r.outcome == Outcome.SUCCESS
                  and r.validate_state in (ValidateState.INIT, ValidateState.INCONCLUSIVE)):
                writes.move_result(r, validate_state=ValidateState.NO_CHECK)
        if assimilate_state == AssimilateState.INIT:
            assimilate_state = AssimilateState.READY
    elif not has_canonical and needed:
        # A replacement after a failure goes to the front of the queue: the work unit is
        # already late, and an island's next epoch waits for it.
        retry = c.nerrors + c.nno_reply > 0
        writes.new_results += [
            Result(workunit_id=wu.pk, server_state=ServerState.UNSENT,
                   priority=wu.priority + (1 if retry else 0))
            for _ in range(needed)]

    # 5. When to look again.
    if has_canonical or error_mask:
        next_time = None
    else:
        next_time = now + max(SAFETY_NET_MIN, timedelta(seconds=1.5 * wu.delay_bound))
    writes.update_workunit(
        wu.pk, where={"error_mask": wu.error_mask, "canonical_result_id": wu.canonical_result_id,
                      "assimilate_state": wu.assimilate_state,
                      "target_nresults": wu.target_nresults},
        need_validate=need_validate, error_mask=error_mask, assimilate_state=assimilate_state,
        transition_time=next_look(results, now=now, default=next_time))


def next_look(results: list[Result], *, now: datetime, default: datetime | None
              ) -> datetime | None:
    """The earliest in-progress deadline (or ghost limit) of the replicas, else ``default``."""
    deadlines = []
    for r in results:
        if r.server_state == ServerState.IN_PROGRESS:
            if r.report_deadline is not None:
                deadlines.append(r.report_deadline)
            if r.acked_time is None and r.sent_time is not None:
                deadlines.append(r.sent_time + ghost_timeout())
    if deadlines:
        return min([*deadlines, *([default] if default else [])])
    return default


def results_by_workunit(results: Iterable[Result]) -> dict[int, list[Result]]:
    grouped: dict[int, list[Result]] = {}
    for r in results:
        grouped.setdefault(r.workunit_id, []).append(r)
    return grouped


def _transition_batch(ids: list[int], *, now: datetime, skip_locked: bool, only_due: bool
                      ) -> int:
    """Handle these work units in one transaction, their rows locked; returns how many were
    handled (those locked elsewhere, or no longer due, are not)."""
    with transaction.atomic():
        locked = WorkUnit.objects.select_for_update(skip_locked=skip_locked).filter(pk__in=ids)
        if only_due:
            locked = locked.filter(transition_time__lte=now)
        # Locked in id order: the order every locker of several work units keeps.
        wus = list(locked.order_by("id").only(*WORKUNIT_FIELDS))
        if not wus:
            return 0
        grouped = results_by_workunit(
            Result.objects.filter(workunit_id__in=[wu.pk for wu in wus])
            .order_by("id").only(*RESULT_FIELDS))
        writes = Writes(now)
        for wu in wus:
            _transition_decide(wu, grouped.get(wu.pk, []), writes)
        writes.flush()
        return len(wus)


def transition_pass(*, workunit_ids: list[int] | None = None, now: datetime | None = None,
                    limit: int = 500, wait: bool = True) -> int:
    """One transitioner pass; returns how many work units it handled.

    With ``workunit_ids`` (enqueued right after a report) those work units are handled whether
    due or not, waiting for a lock another process holds (unless not ``wait``: then they are
    skipped, and the caller sees fewer handled); otherwise the due work units, oldest first,
    skipping any another process has locked. Safe to run in several processes at once.
    """
    now = now or timezone.now()
    if workunit_ids is not None:
        ids = sorted(set(workunit_ids))[:limit]
        skip_locked, only_due = not wait, False
    else:
        ids = list(WorkUnit.objects.filter(transition_time__lte=now)
                   .order_by("transition_time", "id").values_list("id", flat=True)[:limit])
        skip_locked, only_due = True, True
    return run_batches(ids, partial(_transition_batch, now=now, skip_locked=skip_locked,
                                    only_due=only_due), name="transitioner")


# PostgreSQL's deadlock, serialization failure and lock-not-available: another transaction won.
_LOCK_CONFLICTS = frozenset({"40P01", "40001", "55P03"})


def _lost_to_another_transaction(exc: DatabaseError) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) in _LOCK_CONFLICTS


def run_batches(ids: list[int], handle: Callable[[list[int]], int], *, name: str,
                batch: int = BATCH_SIZE, catch_all: bool = False) -> int:
    """``handle`` the work units ``batch`` at a time; a batch that fails (a row changed under
    our feet, a deadlock with a scheduler call — a batch may lock several replicas of one host,
    in an order of its own — or with ``catch_all`` anything else) is rolled back and retried one
    work unit at a time, so that one bad work unit never holds up the others. Returns how many
    were handled."""
    handled = 0
    for i in range(0, len(ids), batch):
        chunk = ids[i:i + batch]
        try:
            handled += handle(chunk)
            continue
        except Conflict as exc:
            if len(chunk) == 1:
                logger.info("%s: work unit %s changed during its pass (%s); retrying later",
                            name, chunk[0], exc)
                continue
        except DatabaseError as exc:
            if not (catch_all or _lost_to_another_transaction(exc)):
                raise
            if len(chunk) == 1:
                logger.warning("%s: work unit %s: %s; retrying on the next pass", name,
                               chunk[0], exc)
                continue
        except Exception:
            if not catch_all:
                raise
            if len(chunk) == 1:
                logger.exception("%s: work unit %s failed; retrying on the next pass", name,
                                 chunk[0])
                continue
        for wu_id in chunk:
            handled += run_batches([wu_id], handle, name=name, batch=1, catch_all=catch_all)
    return handled
