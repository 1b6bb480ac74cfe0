"""The scheduler: one request from a host reports finished work, confirms received tasks, learns
which of its tasks to abort, gets back the tasks it lost when it lists all it holds (BOINC's
``resend_lost_results``), and asks for more (BOINC's ``process_request``, reference §4).

Everything happens in one transaction, and every state change is a conditional update whose row
count is checked, so a retried or concurrent request never applies a change twice.

Locks, and why (PostgreSQL; on SQLite ``transaction_mode=IMMEDIATE`` serialises writers and the
conditional updates alone are enough). A call waits only for its own volunteer's other calls
and for short row locks of the daemons that never wait for it in turn:

1. a transaction-scoped advisory lock per volunteer, taken first while holding nothing: the rule
   "never two replicas of one work unit for one volunteer" reads committed rows, so two hosts of
   one volunteer must not claim side by side (and one host's requests never overlap); then the
   volunteer row ``FOR KEY SHARE``, which the foreign key checks of sending a task take anyway:
   taken first, it orders this call before a validator that locks the volunteer, then its
   hosts. Foreign keys are checked as rows change, not at commit, for the same reason;
2. the work units of reported results and of lost tasks, ``FOR UPDATE SKIP LOCKED``: one a
   daemon holds right now is not woken here (its replicas are still stored, by conditional
   updates; a lost task of it is re-sent by the next call); the transitioner
   pass this call queues looks at it after commit. Waiting would stall the call behind the
   daemons, and a busy server's daemons hold many;
3. the claim: ``SELECT … FOR UPDATE OF result, workunit SKIP LOCKED`` over the partial index of
   unsent replicas. Skipping rows locked by anyone means a claim never waits, so it can never
   deadlock with another claim or a daemon;
4. the host row, written last.

Cost: a call costs the same dozen statements whether it carries one task or thirty-two (every
report in one ``UPDATE``, every ack and heartbeat in another, the claim in one ``SELECT`` and
one ``UPDATE``). The statements of the usual path are written in SQL that SQLite and PostgreSQL
both speak: the ORM spends more time building them than the database spends running them
(``bench/load.py`` measures it), and this is the portal's hottest code. The rare paths (late
reports, aborts, refusals) use the ORM.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import re
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial, reduce
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import (
    Count,
    Exists,
    ExpressionWrapper,
    F,
    FloatField,
    OuterRef,
    Q,
    QuerySet,
    Value,
)
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from apps.accounts.models import Host, Volunteer
from apps.accounts.services import host_retire
from worker_client import protocol

from .models import Campaign, Dataset, Result, WorkUnit
from .states import CampaignState, Outcome, ServerState, ValidateState
from .tasks import enqueue_transitions

MAX_TASKS_PER_REQUEST = 32
MAX_PROGRESS_ROWS = 256  # heartbeats recorded per request
UPGRADE_COMMAND = f"pipx upgrade {protocol.CLIENT_NAME}"
# Adaptive replication (reference §2.7): BOINC's CONS_VALID_UNREPLICATED.
TRUST_AFTER_CONSECUTIVE_VALID = 10

# request_delay, seconds: how long the host waits before its next call.
DELAY_INFEASIBLE = 600.0


def _delay_soon() -> float:
    """Tasks sent, or nothing asked for: come back when there is something to say."""
    return float(settings.SCHEDULER_REQUEST_DELAY)


def _delay_no_work() -> float:
    return float(settings.SCHEDULER_NO_WORK_DELAY)

DELAY_CLIENT_TOO_OLD = 3600.0
DELAY_HOST_RETIRED = 86_400.0

# Why a reported result was not stored ("rejected": the host must not report it again).
REJECT_NOT_THIS_HOST = "not_sent_to_this_host"  # unknown, unsent, or another host's
REJECT_TOO_LATE = "no_longer_needed"  # over without an answer of this host's, e.g. timed out
REJECT_MALFORMED = "malformed_report"

MAX_ERROR_MESSAGE = 4000
_ADVISORY_LOCK_NAMESPACE = 0x5348  # "SH": this module's advisory locks on PostgreSQL

# Tables, for the statements written in SQL.
_RESULT = Result._meta.db_table
_WORKUNIT = WorkUnit._meta.db_table
_CAMPAIGN = Campaign._meta.db_table
_DATASET = Dataset._meta.db_table
_HOST = Host._meta.db_table
_VOLUNTEER = Volunteer._meta.db_table
# What a call reads and writes of its host: not the credit figures the daemons move.
_HOST_COLUMNS = [f.attname for f in Host._meta.concrete_fields if f.attname in {
    "id", "volunteer_id", "cpu_count", "speed", "datasets", "retired", "consecutive_valid",
    "max_results_day", "results_today", "quota_day", "client_version"}]


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.10.2"`` → ``(0, 10, 2)``; a pre-release suffix ends the release part; trailing zeros
    are dropped, so ``"1.0"`` equals ``"1"``. Anything unparsable counts as version 0."""
    parts: list[int] = []
    for piece in version.strip().lstrip("vV").split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.end() != len(piece):
            break
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts) or (0,)


def client_is_too_old(client_version: str) -> bool:
    return version_tuple(client_version) < version_tuple(settings.MIN_CLIENT_VERSION)


def scheduler_request(*, host: Host, request: dict[str, Any], client_version: str,
                      now: datetime | None = None, rng: random.Random | None = None,
                      url_base: str = "") -> dict[str, Any]:
    """Handle one scheduler call of ``host``; return a ``protocol.SchedulerReply`` as a dict.

    ``request`` is a validated ``protocol.SchedulerRequest`` dict. ``rng`` draws adaptive
    replication's spot checks (``random.SystemRandom`` unless a test passes a seeded one).
    ``url_base`` (scheme and host, e.g. ``https://portal.example``) makes data set URLs absolute.
    """
    now = now or timezone.now()
    rng = rng or random.SystemRandom()
    with transaction.atomic():
        _lock_volunteer(host.volunteer_id)
        host = _fresh_host(host.pk)  # now that this volunteer's calls are serial

        reports = _dedupe_reports(request.get("results", []))
        in_progress = set(request.get("in_progress", []))
        rows = _rows_of_host(host, set(reports) | in_progress)
        abort = sorted(pk for pk in in_progress if not _still_needed(rows.get(pk)))
        # Read before anything is sent in this call: a task claimed below is never "lost".
        lost = (_lost_rows(host, set(reports) | in_progress)
                if request.get("in_progress_complete") else [])
        locked = _lock_workunits(
            {rows[pk].workunit_id for pk in (set(reports) | set(abort)) if pk in rows}
            | {row.task.workunit_id for row in lost}, wait=False)

        accepted, rejected, touched = _record_reports(host, reports, rows, client_version, now)
        touched |= _release_aborted(host, abort, rows, now)
        # A result stored by this request is over: acking it too could change nothing.
        _record_acks_and_progress(host, set(request.get("acks", [])) - set(accepted),
                                  request.get("progress", []), now)
        # A lost task whose work unit a daemon holds right now waits for the next call.
        resent, given_up = _resend_lost(
            host, [row for row in lost if row.task.workunit_id in locked],
            can_send=not (client_is_too_old(client_version) or host.retired), now=now,
            url_base=url_base)
        touched |= given_up
        if touched:
            due = touched & locked
            if due:
                _execute(f"UPDATE {_WORKUNIT} SET transition_time = %s, updated_at = %s "
                         f"WHERE id{_in(due)}", [_db_time(now), _db_time(now), *_ids(due)])
            _wake_transitioner(sorted(touched))

        if resent:
            # The re-sent tasks fill the request first, and queue on the host's slots, as if
            # the host had held them.
            queue = sorted(request.get("slot_queue_seconds", []))
            for task in resent if queue else ():
                heapq.heapreplace(queue, queue[0] + _runtime(host, task["cost"]))
            request = {**request, "slot_queue_seconds": queue,
                       "free_slots": max(0, int(request.get("free_slots", 0)) - len(resent)),
                       "work_seconds": max(0.0, float(request.get("work_seconds", 0.0)) - sum(
                           _runtime(host, task["cost"]) for task in resent))}
        tasks, reason, message, delay = _send_work(
            host=host, request=request, client_version=client_version, now=now, rng=rng,
            url_base=url_base)
        if resent:
            plural = "s" if len(resent) != 1 else ""
            said = f"Re-sent {len(resent)} lost task{plural}."
            message = f"{said} {message}" if tasks else said
            tasks = resent + tasks
            reason = None
            delay = min(delay, _delay_soon())

        host.datasets = list(request.get("datasets", host.datasets))
        if client_version:
            host.client_version = client_version[:30]
        _execute(f"UPDATE {_HOST} SET last_contact = %s, datasets = %s, client_version = %s, "
                 "results_today = %s, quota_day = %s, updated_at = %s WHERE id = %s",
                 [_db_time(now), _db_value(Host, "datasets", host.datasets), host.client_version,
                  host.results_today, connection.ops.adapt_datefield_value(host.quota_day),
                  _db_time(timezone.now()), host.pk])
    return {"tasks": tasks, "accepted": accepted, "rejected": rejected, "abort": abort,
            "request_delay": delay, "reason": reason, "message": message}


def _wake_transitioner(workunit_ids: list[int]) -> None:
    """Enqueue a transitioner pass for these work units once this call commits.

    After the commit, never inside it: the coalescing flag (``tasks.enqueue_transitions``) must
    be read once this call's changes are visible, or a pass that starts in between could miss
    them; and written inside, with the database cache, it would make concurrent calls wait on
    each other's uncommitted flag row.
    """
    transaction.on_commit(partial(enqueue_transitions, workunit_ids))


# --- SQL helpers -------------------------------------------------------------------------------


def _of_host() -> str:
    """``host_id`` equal to a parameter, in a statement that also lists the rows' ids. Written
    so that PostgreSQL finds the rows by those ids: "host_id = …" could lead its planner to
    walk every replica the host ever ran, a list that only grows."""
    if connection.vendor == "postgresql":
        return "host_id IS NOT DISTINCT FROM %s"
    return "host_id = %s"


def _in(values: Collection[int]) -> str:
    """`` IN (%s, …)`` for a list of ids on SQLite; `` = ANY(%s)`` with the ids as one array on
    PostgreSQL, so that a statement's text does not change with the number of ids and it can
    be prepared once. Pair it with :func:`_ids` for the parameters (never empty: callers
    check)."""
    if connection.vendor == "postgresql":
        return " = ANY(%s::bigint[])"
    return f" IN ({', '.join(['%s'] * len(values))})"


def _ids(values: Collection[int]) -> list[Any]:
    """The parameters of :func:`_in`."""
    return [list(values)] if connection.vendor == "postgresql" else list(values)


def _query(sql: str, params: Sequence[Any] = (), *, prepare: bool = True
           ) -> list[tuple[Any, ...]]:
    """The rows of a query (see :func:`_run`)."""
    return _run(sql, params, prepare=prepare, fetch=True)


def _execute(sql: str, params: Sequence[Any] = (), *, prepare: bool = True) -> int:
    """Run a statement; returns how many rows it changed (see :func:`_run`)."""
    return _run(sql, params, prepare=prepare, fetch=False)


def _run(sql: str, params: Sequence[Any], *, prepare: bool, fetch: bool) -> Any:
    """One statement of the usual path, through Django's connection and in its transaction.

    On PostgreSQL a statement whose text is fixed is prepared once per connection (a
    server-side binding cursor): planning was most of what these short statements cost the
    database. Django's query log (``CaptureQueriesContext``, the debug toolbar) still sees it.
    """
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if fetch else cursor.rowcount
    import psycopg

    def execute(sql: str, params: Sequence[Any], many: bool, context: dict[str, Any]) -> Any:
        # No parameters: the simple protocol, which takes several statements at once.
        cursor.execute(sql, params or None, prepare=prepare or None)
        return cursor.fetchall() if fetch else cursor.rowcount

    started = time.monotonic()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        # Django's execute wrappers (connection.execute_wrapper) see these statements too.
        chain = reduce(lambda inner, wrapper: partial(wrapper, inner),
                       connection.execute_wrappers, execute)
        result = chain(sql, params, False, {"connection": connection, "cursor": cursor})
    if connection.queries_logged:
        connection.queries_log.append({"sql": f"{sql} -- {list(params)!r}"[:2000],
                                       "time": f"{time.monotonic() - started:.3f}"})
    return result


def _db_time(value: datetime | None) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def _db_value(model: Any, name: str, value: Any) -> Any:
    """``value`` as the database stores ``model.name`` (JSON, a time …)."""
    return model._meta.get_field(name).get_db_prep_save(value, connection)


def _aware(value: Any) -> datetime | None:
    """A time read by SQL: aware on PostgreSQL; naive UTC (or text) on SQLite."""
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_datetime(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _json(value: Any) -> Any:
    """A JSON column read by SQL (text on both databases, as Django's own reads get it)."""
    return json.loads(value) if isinstance(value, str | bytes) else value


# --- locks -------------------------------------------------------------------------------------


def _lock_volunteer(volunteer_id: int) -> None:
    if connection.vendor == "postgresql":
        # Sending a task checks its volunteer's and its host's rows (foreign keys: FOR KEY
        # SHARE), and the validator locks a volunteer, then its hosts. Checked at commit, or
        # host first, each could wait for the other: the volunteer row is locked here, first,
        # and the keys are checked as rows change (see the module's notes on locks).
        _execute("SET CONSTRAINTS ALL IMMEDIATE; SELECT pg_advisory_xact_lock("
                 f"{_ADVISORY_LOCK_NAMESPACE:d}, {volunteer_id % 2**31:d}); SELECT 1 FROM "
                 f"{_VOLUNTEER} WHERE id = {volunteer_id:d} FOR KEY SHARE", prepare=False)
    # SQLite: the IMMEDIATE transaction already holds the database's only write lock.


def _lock_workunits(workunit_ids: set[int], *, wait: bool = True) -> set[int]:
    """Lock these work units in id order (the daemons' order); returns those locked. Without
    ``wait``, one another transaction holds is skipped (PostgreSQL; SQLite has one writer)."""
    if workunit_ids and connection.features.has_select_for_update:
        ids = sorted(workunit_ids)
        skip = "" if wait else " SKIP LOCKED"
        return {pk for (pk,) in _query(
            f"SELECT id FROM {_WORKUNIT} WHERE id{_in(ids)} ORDER BY id FOR UPDATE{skip}",
            _ids(ids))}
    return set(workunit_ids)


def _fresh_host(host_id: int) -> Host:
    """The host row as it is now, with the columns a call reads (the rest stays deferred)."""
    rows = _query(f"SELECT {', '.join(_HOST_COLUMNS)} FROM {_HOST} WHERE id = %s", [host_id])
    if not rows:
        raise Host.DoesNotExist(f"host {host_id} is gone")
    values = dict(zip(_HOST_COLUMNS, rows[0], strict=True))
    values["datasets"] = _json(values["datasets"])
    values["retired"] = bool(values["retired"])
    if isinstance(values["quota_day"], str):
        values["quota_day"] = date.fromisoformat(values["quota_day"])
    return Host.from_db(connection.alias, _HOST_COLUMNS, [values[c] for c in _HOST_COLUMNS])


# --- reports, acks, aborts ---------------------------------------------------------------------


@dataclass(slots=True)
class _Held:
    """A replica of this host that its request names (reported, or said to be running)."""

    pk: int
    workunit_id: int
    server_state: int
    outcome: int
    validate_state: int
    sent_time: datetime | None
    received_time: datetime | None
    decided: bool  # its work unit has a canonical result or an error: no answer is needed


def _dedupe_reports(reports: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    by_id: dict[int, dict[str, Any]] = {}
    for report in reports:
        by_id.setdefault(report["result_id"], report)  # the first report of an id counts
    return by_id


def _rows_of_host(host: Host, ids: set[int]) -> dict[int, _Held]:
    if not ids:
        return {}
    # By primary key only, the host checked here: "host_id = …" in SQL could lead the planner
    # to walk every replica the host ever ran, a list that grows without end.
    rows = _query(
        f"SELECT r.id, r.host_id, r.workunit_id, r.server_state, r.outcome, r.validate_state, "
        f"r.sent_time, r.received_time, w.canonical_result_id IS NOT NULL OR w.error_mask <> 0 "
        f"FROM {_RESULT} r JOIN {_WORKUNIT} w ON w.id = r.workunit_id "
        f"WHERE r.id{_in(ids)}", _ids(ids))
    return {pk: _Held(pk, wu, state, outcome, validate, _aware(sent), _aware(received),
                      bool(decided))
            for pk, host_id, wu, state, outcome, validate, sent, received, decided in rows
            if host_id == host.pk}


def _still_needed(row: _Held | None) -> bool:
    """Whether the host should keep running this task (it is one of its own, in progress, and
    its work unit is still open)."""
    return row is not None and row.server_state == ServerState.IN_PROGRESS and not row.decided


def _record_reports(host: Host, reports: dict[int, dict[str, Any]], rows: dict[int, _Held],
                    client_version: str, now: datetime
                    ) -> tuple[list[int], list[dict[str, Any]], set[int]]:
    """Store the reports; the usual case (this host's replicas still in progress) in one UPDATE.

    Returns the ids accepted (stored now, or stored before: a harmless repeat), the rejections
    with their reasons, both in report order, and the work units whose replicas changed.
    """
    verdicts: dict[int, str | None] = {}
    fresh: dict[int, dict[str, Any]] = {}
    for result_id, report in reports.items():
        row = rows.get(result_id)
        if row is None:  # unknown, or sent to another host: never applied
            verdicts[result_id] = REJECT_NOT_THIS_HOST
            continue
        fields = _report_fields(host, row, report, client_version, now)
        if fields is None:
            verdicts[result_id] = REJECT_MALFORMED
        elif row.server_state == ServerState.IN_PROGRESS:
            fresh[result_id] = fields
        else:
            verdicts[result_id] = _judge_report(host, row, fields)
    stored = _store_reports(host, fresh, now) if fresh else set()
    for result_id, fields in fresh.items():
        if result_id in stored:
            verdicts[result_id] = "changed"
        else:
            # Lost a race (timed out between our read and our update): judge it as it is now.
            row = rows[result_id]
            ((row.server_state, row.outcome, row.validate_state, received),) = _query(
                f"SELECT server_state, outcome, validate_state, received_time FROM {_RESULT} "
                "WHERE id = %s", [result_id])
            row.received_time = _aware(received)
            verdicts[result_id] = _judge_report(host, row, fields)

    accepted: list[int] = []
    rejected: list[dict[str, Any]] = []
    touched: set[int] = set()
    for result_id in reports:
        verdict = verdicts[result_id]
        if verdict is None:
            accepted.append(result_id)
        elif verdict == "changed":
            accepted.append(result_id)
            touched.add(rows[result_id].workunit_id)
        else:
            rejected.append({"result_id": result_id, "reason": verdict})
    return accepted, rejected, touched


def _report_fields(host: Host, row: _Held, report: dict[str, Any], client_version: str,
                   now: datetime) -> dict[str, Any] | None:
    """The columns a report writes, with BOINC's sanity clamps on times; None if malformed."""
    wall = _finite(report.get("wall_time"))
    cpu = _finite(report.get("cpu_time"))
    if row.sent_time is not None:  # a task cannot have run longer than it was out
        wall = min(wall, max((now - row.sent_time).total_seconds(), 0.0))
    if wall == 0.0:
        wall = cpu
    cpu = min(cpu, wall * max(host.cpu_count, 1))
    fields: dict[str, Any] = {"received_time": now, "cpu_time": cpu, "wall_time": wall,
                              "client_version": client_version[:30], "updated_at": now}
    if report.get("status") == "success":
        output = report.get("output")
        digest = output.get("digest") if isinstance(output, dict) else None
        if not isinstance(digest, str) or not 0 < len(digest) <= 64:
            return None
        fields.update(outcome=Outcome.SUCCESS, output=output, digest=digest)
    elif report.get("status") == "error":
        fields.update(outcome=Outcome.CLIENT_ERROR, validate_state=ValidateState.INVALID,
                      error_message=str(report.get("error", ""))[:MAX_ERROR_MESSAGE])
    else:
        return None
    return fields


def _store_reports(host: Host, fresh: dict[int, dict[str, Any]], now: datetime) -> set[int]:
    """Move this host's replicas from in progress to over with their reports, in one
    conditional UPDATE (a ``CASE`` for each column whose value differs between rows); returns
    the ids it changed. A row no longer in progress (timed out since we read it) is left alone.
    """
    ids = list(fresh)
    columns: dict[str, dict[int, Any]] = {}
    for result_id, fields in fresh.items():
        for name, value in fields.items():
            columns.setdefault(name, {})[result_id] = value
    assignments, params = ["server_state = %s"], [ServerState.OVER]
    for name, values in columns.items():
        first = next(iter(values.values()))
        if len(values) == len(ids) and all(value is first or (
                not isinstance(value, dict | list) and value == first)
                for value in values.values()):
            assignments.append(f"{name} = %s")  # the same for every row
            params.append(_db_value(Result, name, first))
        else:
            sql, case_params = _per_row(name, values)
            assignments.append(f"{name} = {sql}")
            params += case_params
    changed = _execute(
        f"UPDATE {_RESULT} SET {', '.join(assignments)} "
        f"WHERE id{_in(ids)} AND {_of_host()} AND server_state = %s",
        [*params, *_ids(ids), host.pk, ServerState.IN_PROGRESS],
        prepare=False)  # its CASEs change with the number of reports
    if changed == len(ids):
        return set(ids)
    # Our own rows are recognisable: nobody else stores this host's reports (its calls are
    # serial), and none was stored at this instant before.
    return {pk for (pk,) in _query(
        f"SELECT id FROM {_RESULT} WHERE id{_in(ids)} AND {_of_host()} "
        "AND server_state = %s AND received_time = %s",
        [*_ids(ids), host.pk, ServerState.OVER, _db_time(now)])}


def _per_row(name: str, values: dict[int, Any]) -> tuple[str, list[Any]]:
    """``CASE id WHEN … THEN … ELSE column END`` for one column of ``Result``: each listed row
    gets its own value, the others keep theirs."""
    field = Result._meta.get_field(name)
    params: list[Any] = []
    for pk, value in values.items():
        params += [pk, field.get_db_prep_save(value, connection)]
    cast = f"::{field.db_type(connection)}" if connection.vendor == "postgresql" else ""
    return (f"(CASE id{' WHEN %s THEN %s' * len(values)} ELSE {field.column} END){cast}",
            params)


def _judge_report(host: Host, row: _Held, fields: dict[str, Any]) -> str | None:
    """A report of a replica that is not (or no longer) in progress: None if it was stored
    before (a harmless repeat), "changed" if a late success is still taken, else why not."""
    if row.server_state != ServerState.OVER:
        return REJECT_NOT_THIS_HOST  # unsent: cannot be this host's answer
    if row.received_time is not None:
        return None  # already stored: the reply carrying our ack was lost
    if (row.outcome == Outcome.NO_REPLY and row.validate_state == ValidateState.INIT
            and fields["outcome"] == Outcome.SUCCESS):
        # Late, but BOINC still accepts it: the transitioner and validator compare it.
        changed = Result.objects.filter(
            pk=row.pk, host=host, server_state=ServerState.OVER, outcome=Outcome.NO_REPLY,
            validate_state=ValidateState.INIT, received_time__isnull=True,
        ).update(**fields)
        if changed == 1:
            return "changed"
    return REJECT_TOO_LATE


def _release_aborted(host: Host, abort: list[int], rows: dict[int, _Held],
                     now: datetime) -> set[int]:
    """Replicas still in progress here whose work unit is decided end as "didn't need".

    Without this the host's abort would surface as a missed deadline, which costs it trust.
    """
    touched: set[int] = set()
    for pk in abort:
        row = rows.get(pk)
        if row is None or row.server_state != ServerState.IN_PROGRESS:
            continue
        changed = Result.objects.filter(
            pk=pk, host=host, server_state=ServerState.IN_PROGRESS,
        ).update(server_state=ServerState.OVER, outcome=Outcome.DIDNT_NEED, updated_at=now)
        if changed == 1:
            touched.add(row.workunit_id)
    return touched


def _record_acks_and_progress(host: Host, acks: Collection[int],
                              progress: Sequence[dict[str, Any]], now: datetime) -> None:
    """Acknowledged tasks and the heartbeats of long tasks (how far each has come, shown on
    the portal's pages), for this host's replicas in progress, in one UPDATE."""
    fractions: dict[int, float] = {}
    for entry in progress[:MAX_PROGRESS_ROWS]:
        fractions[entry["result_id"]] = entry["fraction_done"]  # the last one counts
    acks = sorted(set(acks))
    if not acks and not fractions:
        return
    when = _db_time(now)
    assignments, params = ["updated_at = %s"], [when]
    conditions, condition_params = [], []
    if acks:
        # Only the first ack counts: an acknowledged row keeps its time.
        assignments.append(f"acked_time = CASE WHEN id{_in(acks)} "
                           "AND acked_time IS NULL THEN %s ELSE acked_time END")
        params += [*_ids(acks), when]
        conditions.append(f"(id{_in(acks)} AND acked_time IS NULL)")
        condition_params += _ids(acks)
    if fractions:
        sql, case_params = _per_row("fraction_done", fractions)
        assignments += [f"fraction_done = {sql}",
                        f"progress_time = CASE WHEN id{_in(fractions)} THEN %s "
                        "ELSE progress_time END"]
        params += [*case_params, *_ids(fractions), when]
        conditions.append(f"id{_in(fractions)}")
        condition_params += _ids(fractions)
    _execute(f"UPDATE {_RESULT} SET {', '.join(assignments)} "
             f"WHERE ({' OR '.join(conditions)}) AND {_of_host()} AND server_state = %s",
             [*params, *condition_params, host.pk, ServerState.IN_PROGRESS],
             prepare=not fractions)  # a heartbeat's CASE changes with their number


@dataclass(slots=True)
class _Lost:
    """A replica in progress on this host that its complete list of tasks lacks."""

    task: _Candidate
    dataset: _TaskDataset
    sent_time: datetime | None
    report_deadline: datetime | None
    decided: bool  # its work unit has a canonical result or an error: no answer is needed


def _lost_rows(host: Host, held: set[int]) -> list[_Lost]:
    """This host's replicas in progress that it does not hold (BOINC's ``resend_lost_work``),
    the oldest first, at most what one reply carries: the rest are found by the next calls."""
    sql = (f"SELECT r.id, r.workunit_id, w.campaign_id, w.island, w.epoch, w.payload, w.cost, "
           f"w.credit, w.min_quorum, w.delay_bound, r.sent_time, r.report_deadline, "
           f"w.canonical_result_id IS NOT NULL OR w.error_mask <> 0, "
           f"COALESCE(s.sha256, d.sha256), COALESCE(s.size_bytes, d.size_bytes) "
           f"FROM {_RESULT} r JOIN {_WORKUNIT} w ON w.id = r.workunit_id "
           f"JOIN {_CAMPAIGN} c ON c.id = w.campaign_id JOIN {_DATASET} d ON d.id = c.dataset_id "
           f"LEFT JOIN {_DATASET} s ON s.id = c.search_dataset_id "
           # The index on (host, server_state): only this host's replicas in progress are read.
           f"WHERE r.host_id = %s AND r.server_state = %s")
    params: list[Any] = [host.pk, ServerState.IN_PROGRESS]
    if held:
        sql += f" AND NOT (r.id{_in(held)})"
        params += _ids(held)
    sql += " ORDER BY r.id LIMIT %s"
    params.append(MAX_TASKS_PER_REQUEST)
    return [_Lost(_Candidate(*row[:10]), _TaskDataset(row[13], row[14]), _aware(row[10]),
                  _aware(row[11]), bool(row[12]))
            for row in _query(sql, params)]


def _runtime(host: Host, cost: float) -> float:
    """Estimated seconds of one core for a task of ``cost`` on this host; 0 if unmeasured."""
    return cost / host.speed if host.speed > 0 else 0.0


def _resend_lost(host: Host, lost: list[_Lost], *, can_send: bool, now: datetime,
                 url_base: str) -> tuple[list[dict[str, Any]], set[int]]:
    """Send the lost tasks again, the same replicas (BOINC's ``resend_lost_results``, reference
    §4.6); returns the tasks, and the work units whose replicas were given up or released.

    A task keeps its deadline. BOINC moves it later (half the original window from now), but
    from the replica's last send time, so a task lost again and again would have its deadline
    pushed on for ever; our leases are short, and a task lost early still has most of its
    window. A task the host cannot finish by its deadline at its measured speed (or a host that
    may not get work) is given up instead: its report deadline is set in the past, so the
    transitioner, woken at commit, times it out and sends a replacement at once rather than at
    the deadline. A task whose work unit is decided is released as "didn't need", as an abort
    is. Each move is a conditional update of a replica still in progress on this host, whose
    work unit this call holds.
    """
    tasks: list[dict[str, Any]] = []
    touched: set[int] = set()
    grace = timedelta(seconds=settings.RESULT_GRACE_SECONDS)
    urls: dict[str, str] = {}
    for row in lost:
        task = row.task
        of_this_host = Result.objects.filter(pk=task.pk, host=host,
                                             server_state=ServerState.IN_PROGRESS)
        if row.decided:
            if of_this_host.update(server_state=ServerState.OVER, outcome=Outcome.DIDNT_NEED,
                                   updated_at=now) == 1:
                touched.add(task.workunit_id)
            continue
        # The deadline the host was told: the report deadline without the grace period.
        deadline = (row.report_deadline - grace if row.report_deadline is not None
                    else now + timedelta(seconds=task.delay_bound))
        window = (deadline - now).total_seconds()
        if not can_send or window <= 0 or _runtime(host, task.cost) > window:
            if of_this_host.update(report_deadline=now - timedelta(seconds=1),
                                   updated_at=now) == 1:
                touched.add(task.workunit_id)
            continue
        # A new send: a new sent time, and no ack until the host confirms it again, as a first
        # send (unacknowledged, it counts as a ghost when the transitioner next looks at its
        # work unit, at its deadline at the latest), or the host's next complete list finds it
        # missing again. Its work unit was read
        # undecided before this call locked it: a validator may have decided it in between.
        if of_this_host.filter(workunit__canonical_result__isnull=True,
                               workunit__error_mask=0).update(
                sent_time=now, acked_time=None, updated_at=now) == 1:
            tasks.append(_task(task, row.dataset, now, url_base, urls, deadline=deadline))
        elif of_this_host.update(server_state=ServerState.OVER, outcome=Outcome.DIDNT_NEED,
                                 updated_at=now) == 1:
            touched.add(task.workunit_id)
    return tasks, touched


def host_status(*, host: Host) -> dict[str, Any]:
    """The portal's figures for one host, for ``strategy-worker status``: ``pending`` counts
    results reported and waiting for a quorum, undecided ones included, as the account page."""
    counts = Result.objects.filter(host=host).aggregate(
        in_progress=Count("pk", filter=Q(server_state=ServerState.IN_PROGRESS)),
        pending=Count("pk", filter=Q(
            server_state=ServerState.OVER, outcome=Outcome.SUCCESS,
            validate_state__in=[ValidateState.INIT, ValidateState.INCONCLUSIVE])))
    return {"host_id": host.pk, "name": host.name, "total_credit": host.total_credit,
            "rac": host.rac, "n_valid": host.n_valid, "n_invalid": host.n_invalid,
            "n_errors": host.n_errors, "speed": host.speed, **counts}


@transaction.atomic
def host_detach(*, host: Host, now: datetime | None = None) -> int:
    """The host leaves: its token is revoked and its tasks in progress go back to the pool at
    once (BOINC's "client detached"), instead of waiting for their deadlines. Returns how many
    tasks were given back."""
    now = now or timezone.now()
    _lock_volunteer(host.volunteer_id)
    host_retire(host=host)
    rows = list(Result.objects.filter(host=host, server_state=ServerState.IN_PROGRESS)
                .values_list("pk", "workunit_id"))
    _lock_workunits({workunit_id for _, workunit_id in rows})
    touched = {workunit_id for pk, workunit_id in rows
               if Result.objects.filter(pk=pk, server_state=ServerState.IN_PROGRESS).update(
                   server_state=ServerState.OVER, outcome=Outcome.CLIENT_DETACHED,
                   updated_at=now) == 1}
    if touched:
        WorkUnit.objects.filter(pk__in=touched).update(transition_time=now, updated_at=now)
        _wake_transitioner(sorted(touched))
    return len(touched)  # one replica per volunteer and work unit: one per task


def _finite(value: Any) -> float:
    try:
        number = float(value or 0.0)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) and number > 0 else 0.0


# --- sending work ------------------------------------------------------------------------------


def _refusal(reason: str, message: str, delay: float
             ) -> tuple[list[dict[str, Any]], str, str, float]:
    return [], reason, message, delay


@dataclass(frozen=True, slots=True)
class _TaskDataset:
    """The data set a campaign's tasks carry (``Campaign.task_dataset``)."""

    sha256: str
    size: int


@dataclass(slots=True)
class _Candidate:
    """An unsent replica the claim read, with what its task needs of its work unit."""

    pk: int
    workunit_id: int
    campaign_id: int
    island: int
    epoch: int
    payload: Any  # JSON text as read; parsed once it is sent
    cost: int
    credit: float
    min_quorum: int
    delay_bound: int


def _active_campaigns() -> dict[int, _TaskDataset]:
    """Active campaigns and the data set each one's tasks carry: one small query, so that the
    claim needs neither the campaign nor the data set tables."""
    rows = _query(
        f"SELECT c.id, s.sha256, s.size_bytes, d.sha256, d.size_bytes FROM {_CAMPAIGN} c "
        f"JOIN {_DATASET} d ON d.id = c.dataset_id "
        f"LEFT JOIN {_DATASET} s ON s.id = c.search_dataset_id WHERE c.state = %s",
        [CampaignState.ACTIVE.value])
    return {pk: _TaskDataset(search_sha, search_size) if search_sha is not None
            else _TaskDataset(sha, size)
            for pk, search_sha, search_size, sha, size in rows}


def _send_work(*, host: Host, request: dict[str, Any], client_version: str, now: datetime,
               rng: random.Random, url_base: str
               ) -> tuple[list[dict[str, Any]], str | None, str, float]:
    today = now.astimezone(UTC).date()
    if host.quota_day != today:
        host.quota_day, host.results_today = today, 0
    if client_is_too_old(client_version):
        return _refusal(
            protocol.REASON_CLIENT_TOO_OLD,
            f"This worker ({client_version or 'unknown version'}) is older than the portal "
            f"accepts ({settings.MIN_CLIENT_VERSION}). Upgrade it with: {UPGRADE_COMMAND}",
            DELAY_CLIENT_TOO_OLD)
    if host.retired:
        return _refusal(protocol.REASON_HOST_RETIRED,
                        "This host was retired; attach it again with your account key.",
                        DELAY_HOST_RETIRED)
    quota_left = host.max_results_day - host.results_today
    if quota_left <= 0:
        midnight = datetime.combine(today + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
        return _refusal(protocol.REASON_QUOTA,
                        f"This host's daily quota of {host.max_results_day} tasks is reached; "
                        "more after midnight UTC.",
                        max((midnight - now).total_seconds(), _delay_no_work()))
    free_slots = int(request.get("free_slots", 0))
    work_seconds = float(request.get("work_seconds", 0.0))
    if free_slots <= 0 or work_seconds <= 0:
        return _refusal(protocol.REASON_NOT_ASKED, "No work was asked for.", _delay_soon())

    slot_queue = [float(seconds) for seconds in request.get("slot_queue_seconds", [])]
    campaigns = _active_campaigns()
    limit = min(free_slots, quota_left, MAX_TASKS_PER_REQUEST)
    claimed = _claim(host=host, campaigns=campaigns, limit=limit, work_seconds=work_seconds,
                     slot_queue=slot_queue, datasets=set(request.get("datasets", [])),
                     now=now) if campaigns else []
    if not claimed:
        if host.speed > 0 and campaigns and _candidates(
                host, campaign_ids=list(campaigns), feasible_only=False).exists():
            queued = min(slot_queue, default=0.0)
            held = (f" after the {queued:,.0f} s of work it already holds" if queued > 0
                    else "")
            return _refusal(
                protocol.REASON_TOO_SLOW,
                "There is work, but none this host could finish before its deadline at its "
                f"measured speed ({host.speed:,.0f} candle-evaluations/s){held}.",
                DELAY_INFEASIBLE)
        return _refusal(protocol.REASON_NO_WORK, "No work is available right now.",
                        _delay_no_work())

    host.results_today += len(claimed)
    _maybe_trust_alone(host, claimed, now, rng)
    urls: dict[str, str] = {}
    tasks = [_task(row, campaigns[row.campaign_id], now, url_base, urls) for row in claimed]
    plural = "s" if len(tasks) != 1 else ""
    return tasks, None, f"Sent {len(tasks)} task{plural}.", _delay_soon()


def _candidates(host: Host, *, campaign_ids: list[int], feasible_only: bool = True
                ) -> QuerySet[Result]:
    """Unsent replicas of these campaigns this host may get, best first (the claim's rules, as
    a queryset: :func:`_candidate_batch` is the same query written out)."""
    rows = Result.objects.filter(
        server_state=ServerState.UNSENT,
        workunit__campaign_id__in=campaign_ids,
        workunit__error_mask=0,
        workunit__canonical_result__isnull=True,
    ).filter(
        # One replica per volunteer per work unit (BOINC's one_result_per_user_per_wu).
        ~Exists(Result.objects.filter(workunit_id=OuterRef("workunit_id"),
                                      volunteer_id=host.volunteer_id)),
    )
    if feasible_only and host.speed > 0:
        # Estimated runtime cost / speed must fit in the deadline: cost <= delay_bound * speed.
        rows = rows.filter(workunit__cost__lte=ExpressionWrapper(
            F("workunit__delay_bound") * Value(float(host.speed)), output_field=FloatField()))
    return rows.order_by("-priority", "pk")


def _candidate_batch(host: Host, campaign_ids: list[int], seen: list[int],
                     batch_size: int, queued: float = 0.0) -> list[_Candidate]:
    """The next unsent replicas this host may get, best first (priority, then age), locked for
    this transaction; rows another transaction holds are skipped, never waited for."""
    sql = [f"SELECT r.id, r.workunit_id, w.campaign_id, w.island, w.epoch, w.payload, w.cost, "
           f"w.credit, w.min_quorum, w.delay_bound "
           f"FROM {_RESULT} r JOIN {_WORKUNIT} w ON w.id = r.workunit_id "
           f"WHERE r.server_state = %s AND w.campaign_id{_in(campaign_ids)} "
           f"AND w.error_mask = 0 AND w.canonical_result_id IS NULL "
           # One replica per volunteer per work unit (BOINC's one_result_per_user_per_wu).
           # "LIMIT 1 OFFSET 0" keeps each NOT EXISTS a probe of one index per candidate: as
           # an anti-join, PostgreSQL may instead read every replica the volunteer ever ran.
           f"AND NOT EXISTS (SELECT 1 FROM {_RESULT} o WHERE o.workunit_id = r.workunit_id "
           f"AND o.volunteer_id = %s LIMIT 1 OFFSET 0) "
           # One replica per work unit in a reply: its best unsent one, so that the rows locked
           # are the rows sent, not their siblings too.
           f"AND NOT EXISTS (SELECT 1 FROM {_RESULT} s WHERE s.workunit_id = r.workunit_id "
           f"AND s.server_state = %s AND (s.priority > r.priority "
           f"OR (s.priority = r.priority AND s.id < r.id)) LIMIT 1 OFFSET 0)"]
    params: list[Any] = [ServerState.UNSENT, *_ids(campaign_ids), host.volunteer_id,
                         ServerState.UNSENT]
    if host.speed > 0:
        # The work queued on the host's slot free first, then this task's estimated runtime
        # (cost / speed), must fit in the deadline: cost <= (delay_bound - queued) * speed.
        sql.append("AND w.cost <= (w.delay_bound - %s) * %s")
        params += [float(queued), float(host.speed)]
    if seen:
        sql.append(f"AND NOT (r.id{_in(seen)})")
        params += _ids(seen)
    sql.append("ORDER BY r.priority DESC, r.id LIMIT %s")
    params.append(batch_size)
    if connection.features.has_select_for_update_skip_locked:
        sql.append("FOR UPDATE OF r, w SKIP LOCKED")
    return [_Candidate(*row) for row in _query(" ".join(sql), params)]


def _claim(*, host: Host, campaigns: dict[int, _TaskDataset], limit: int, work_seconds: float,
           datasets: set[str], now: datetime, slot_queue: Sequence[float] = ()
           ) -> list[_Candidate]:
    """Claim up to ``limit`` replicas, about ``work_seconds`` of work, held data sets first.

    ``slot_queue`` holds, per slot of the host, the seconds of work queued there. On a measured
    host each task goes, in thought, on the slot free first and must finish there before its
    deadline; that slot is then busy for the task's runtime too (BOINC's deadline check with
    the client's ``estimated_delay``, which it grows by each job it sends). Without a queue
    (an older client) a task's runtime alone must fit.
    """
    claimed: list[_Candidate] = []
    workunits: set[int] = set()
    estimated = 0.0
    # When each slot is free; a pick that another request wins meanwhile (rare) still counts,
    # which errs towards sending less.
    free_at = sorted(slot_queue) if host.speed > 0 else []

    def fits(row: _Candidate) -> bool:
        if host.speed <= 0:
            return True
        runtime = row.cost / host.speed
        if not free_at:
            return runtime <= row.delay_bound
        if free_at[0] + runtime > row.delay_bound:
            return False
        heapq.heapreplace(free_at, free_at[0] + runtime)
        return True

    def covered() -> bool:
        # BOINC sends until the request is covered: the last task may overshoot it.
        return len(claimed) >= limit or (host.speed > 0 and estimated >= work_seconds)

    # Locality first (BOINC's "lite" +10): campaigns whose data set the host holds, then the
    # rest. Split by campaign up front, so that a pass never scans for rows it cannot use.
    local = [pk for pk, dataset in campaigns.items() if dataset.sha256 in datasets]
    other = [pk for pk in campaigns if pk not in set(local)]
    batch_size = limit  # one row per work unit: the rows locked are the rows sent
    for campaign_ids in (ids for ids in (local, other) if ids):
        seen: list[int] = []
        for _ in range(8):  # bounded: a request never scans the whole table
            batch = _candidate_batch(host, campaign_ids, seen, batch_size,
                                     free_at[0] if free_at else 0.0)
            remaining = batch
            while remaining:
                # Pick, in order, what would cover the request; claim the picks in one go.
                picked: list[_Candidate] = []
                picked_units: set[int] = set()
                picked_cost = 0.0
                rest: list[_Candidate] = []
                for index, row in enumerate(remaining):
                    if row.workunit_id in workunits or row.workunit_id in picked_units:
                        continue  # a sibling is already in this reply
                    if not fits(row):
                        continue  # not in time behind the host's queue and this reply
                    picked.append(row)
                    picked_units.add(row.workunit_id)
                    if host.speed > 0:
                        picked_cost += row.cost / host.speed
                    if (len(claimed) + len(picked) >= limit
                            or (host.speed > 0 and estimated + picked_cost >= work_seconds)):
                        rest = remaining[index + 1:]
                        break
                if not picked:
                    break
                for row in _claim_rows(host, picked, now):
                    claimed.append(row)
                    workunits.add(row.workunit_id)
                    if host.speed > 0:
                        estimated += row.cost / host.speed
                if covered():
                    return claimed
                remaining = rest  # only if a pick was lost to another request
            if len(batch) < batch_size:
                break
            seen += [row.pk for row in batch]
    return claimed


def _claim_rows(host: Host, rows: list[_Candidate], now: datetime) -> list[_Candidate]:
    """Send ``rows`` (of distinct work units) to ``host``: one conditional UPDATE per deadline
    (one in practice), its row count checked; returns the rows won, in order."""
    by_deadline: dict[datetime, list[_Candidate]] = {}
    for row in rows:
        deadline = now + timedelta(seconds=row.delay_bound + settings.RESULT_GRACE_SECONDS)
        by_deadline.setdefault(deadline, []).append(row)
    won: set[int] = set()
    for deadline, group in by_deadline.items():
        ids = [row.pk for row in group]
        changed = _execute(
            f"UPDATE {_RESULT} SET server_state = %s, host_id = %s, volunteer_id = %s, "
            f"sent_time = %s, report_deadline = %s, acked_time = NULL, updated_at = %s "
            f"WHERE id{_in(ids)} AND server_state = %s",
            [ServerState.IN_PROGRESS, host.pk, host.volunteer_id, _db_time(now),
             _db_time(deadline), _db_time(now), *_ids(ids), ServerState.UNSENT])
        if changed == len(ids):
            group_won = ids
        else:
            # Another request sent some first (the rows are locked on PostgreSQL and writers
            # are serial on SQLite, so this is a safeguard): keep those we sent just now.
            group_won = [pk for (pk,) in _query(
                f"SELECT id FROM {_RESULT} WHERE id{_in(ids)} AND server_state = %s "
                f"AND {_of_host()} AND sent_time = %s AND report_deadline = %s",
                [*_ids(ids), ServerState.IN_PROGRESS, host.pk, _db_time(now), _db_time(deadline)])]
        if not group_won:
            continue
        won.update(group_won)
        # Wake the transitioner by the deadline (BOINC: min(existing, deadline)).
        units = sorted({row.workunit_id for row in group if row.pk in won})
        _execute(f"UPDATE {_WORKUNIT} SET transition_time = CASE WHEN transition_time IS NULL "
                 "OR transition_time > %s THEN %s ELSE transition_time END, updated_at = %s "
                 f"WHERE id{_in(units)}",
                 [_db_time(deadline), _db_time(deadline), _db_time(now), *_ids(units)])
    return [row for row in rows if row.pk in won]


def _maybe_trust_alone(host: Host, claimed: list[_Candidate], now: datetime,
                       rng: random.Random) -> None:
    """Adaptive replication (reference §2.7): a long-trusted host may run a work unit alone.

    Only when this is the work unit's first replica sent; trusted with probability
    1 - 1/consecutive_valid, so even a trusted host is spot-checked now and then. The claimed
    work units are locked (the claim's ``FOR UPDATE OF``), so the checks hold until commit.
    """
    valid_run = host.consecutive_valid
    if valid_run < TRUST_AFTER_CONSECUTIVE_VALID:
        return
    eligible = [row for row in claimed if row.min_quorum >= 2]
    if not eligible:
        return
    claimed_ids = [row.pk for row in claimed]  # one per work unit
    units = [row.workunit_id for row in eligible]
    replicated = {wu for (wu,) in _query(
        f"SELECT DISTINCT workunit_id FROM {_RESULT} WHERE workunit_id{_in(units)} "
        f"AND sent_time IS NOT NULL AND NOT (id{_in(claimed_ids)})",
        [*_ids(units), *_ids(claimed_ids)])}
    # One draw per first replica, in claim order (a seeded rng replays the same choices).
    alone = [row for row in eligible
             if row.workunit_id not in replicated and rng.random() < 1.0 - 1.0 / valid_run]
    if not alone:
        return
    by_quorum: dict[int, list[int]] = {}
    for row in alone:
        by_quorum.setdefault(row.min_quorum, []).append(row.workunit_id)
    changed = sum(_execute(
        f"UPDATE {_WORKUNIT} SET min_quorum = 1, target_nresults = 1, updated_at = %s "
        f"WHERE id{_in(ids)} AND min_quorum = %s", [_db_time(now), *_ids(ids), quorum])
        for quorum, ids in by_quorum.items())
    single = sorted(row.workunit_id for row in alone)
    if changed != len(alone):  # a safeguard: the claim holds these work units' locks
        single = [wu for (wu,) in _query(
            f"SELECT id FROM {_WORKUNIT} WHERE id{_in(single)} AND min_quorum = 1",
            _ids(single))]
        if not single:
            return
    for row in alone:
        if row.workunit_id in single:
            row.min_quorum = 1
    lock = (" FOR UPDATE SKIP LOCKED" if connection.features.has_select_for_update_skip_locked
            else "")
    # A sibling another request holds is left to it; the validator retires leftovers.
    siblings = [pk for (pk,) in _query(
        f"SELECT id FROM {_RESULT} WHERE workunit_id{_in(single)} AND server_state = %s "
        f"AND NOT (id{_in(claimed_ids)}){lock}",
        [*_ids(single), ServerState.UNSENT, *_ids(claimed_ids)])]
    if siblings:
        _execute(f"UPDATE {_RESULT} SET server_state = %s, outcome = %s, updated_at = %s "
                 f"WHERE id{_in(siblings)} AND server_state = %s",
                 [ServerState.OVER, Outcome.DIDNT_NEED, _db_time(now), *_ids(siblings),
                  ServerState.UNSENT])


def _task(row: _Candidate, dataset: _TaskDataset, now: datetime, url_base: str,
          urls: dict[str, str], *, deadline: datetime | None = None) -> dict[str, Any]:
    url = urls.get(dataset.sha256)
    if url is None:
        url = urls[dataset.sha256] = url_base + reverse(
            "api:dataset", kwargs={"sha256": dataset.sha256})
    deadline = (deadline or now + timedelta(seconds=row.delay_bound)).astimezone(UTC)
    return {
        "result_id": row.pk,
        "name": f"c{row.campaign_id}_i{row.island}_e{row.epoch}_{row.pk}",
        "payload": _json(row.payload),
        "dataset_sha256": dataset.sha256,
        "dataset_url": url,
        "dataset_size": dataset.size,
        "deadline": deadline.isoformat(timespec="seconds"),
        "credit": row.credit,
        "cost": row.cost,
    }
