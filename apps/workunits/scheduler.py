"""The scheduler: one request from a host reports finished work, confirms received tasks, learns
which of its tasks to abort, and asks for more (BOINC's ``process_request``, reference §4).

Everything happens in one transaction, and every state change is a conditional update whose row
count is checked, so a retried or concurrent request never applies a change twice.

Locks, and why (PostgreSQL; on SQLite ``transaction_mode=IMMEDIATE`` serialises writers and the
conditional updates alone are enough):

1. a transaction-scoped advisory lock per volunteer, taken first while holding nothing: the rule
   "never two replicas of one work unit for one volunteer" reads committed rows, so two hosts of
   one volunteer must not claim side by side (and one host's requests never overlap);
2. the work units of reported results, in id order, before their replicas (the daemons' order);
3. the claim: ``SELECT … FOR UPDATE OF result, workunit SKIP LOCKED`` over the partial index of
   unsent replicas. Skipping rows locked by anyone means a claim never waits, so it can never
   deadlock with another claim or a daemon;
4. the host row, written last.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
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
from django.db.models.functions import Coalesce, Least
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import Host
from apps.accounts.services import host_retire
from worker_client import protocol

from .models import Result, WorkUnit
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
        host = Host.objects.get(pk=host.pk)  # fresh, now that this volunteer's calls are serial

        reports = _dedupe_reports(request.get("results", []))
        in_progress = set(request.get("in_progress", []))
        rows = _rows_of_host(host, set(reports) | in_progress)
        abort = sorted(in_progress - _still_needed(host, rows, in_progress))
        _lock_workunits({rows[pk].workunit_id for pk in (set(reports) | set(abort)) if pk in rows})

        accepted, rejected, touched = _record_reports(host, reports, rows, client_version, now)
        touched |= _release_aborted(host, abort, rows, now)
        # A result stored by this request is over: acking it too could change nothing.
        _record_acks(host, set(request.get("acks", [])) - set(accepted), now)
        _record_progress(host, request.get("progress", []), now)
        if touched:
            WorkUnit.objects.filter(pk__in=touched).update(transition_time=now, updated_at=now)
            _wake_transitioner(sorted(touched))

        tasks, reason, message, delay = _send_work(
            host=host, request=request, client_version=client_version, now=now, rng=rng,
            url_base=url_base)

        host.last_contact = now
        host.datasets = list(request.get("datasets", host.datasets))
        if client_version:
            host.client_version = client_version[:30]
        host.save(update_fields=["last_contact", "datasets", "client_version", "results_today",
                                 "quota_day"])
    return {"tasks": tasks, "accepted": accepted, "rejected": rejected, "abort": abort,
            "request_delay": delay, "reason": reason, "message": message}


def _wake_transitioner(workunit_ids: list[int]) -> None:
    """Enqueue a transitioner pass for these work units, visible only once this commits.

    With django-q2's ORM broker on this database the queue row is written inside this
    transaction: it becomes visible exactly at commit (and vanishes on rollback) without a second
    transaction and commit of its own. Any other broker (Redis), or sync mode (the task would run
    at once, inside this transaction), enqueues on commit.
    """
    from django_q.conf import Conf

    if not Conf.SYNC and connection.alias == Conf.ORM:
        enqueue_transitions(workunit_ids)
    else:
        transaction.on_commit(partial(enqueue_transitions, workunit_ids))


# --- locks -------------------------------------------------------------------------------------


def _lock_volunteer(volunteer_id: int) -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                           [_ADVISORY_LOCK_NAMESPACE, volunteer_id % 2**31])
    # SQLite: the IMMEDIATE transaction already holds the database's only write lock.


def _lock_workunits(workunit_ids: set[int]) -> None:
    if workunit_ids and connection.features.has_select_for_update:
        list(WorkUnit.objects.select_for_update().filter(pk__in=workunit_ids)
             .order_by("pk").values_list("pk", flat=True))


# --- reports, acks, aborts ---------------------------------------------------------------------


def _dedupe_reports(reports: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    by_id: dict[int, dict[str, Any]] = {}
    for report in reports:
        by_id.setdefault(report["result_id"], report)  # the first report of an id counts
    return by_id


def _rows_of_host(host: Host, ids: set[int]) -> dict[int, Result]:
    if not ids:
        return {}
    rows = Result.objects.filter(pk__in=ids, host=host).select_related("workunit").only(
        "pk", "host", "workunit", "server_state", "outcome", "validate_state", "received_time",
        "sent_time", "workunit__canonical_result", "workunit__error_mask")  # not the outputs
    return {row.pk: row for row in rows}


def _still_needed(host: Host, rows: dict[int, Result], in_progress: set[int]) -> set[int]:
    """The ids among ``in_progress`` that this host should keep running."""
    return {pk for pk in in_progress
            if pk in rows and rows[pk].server_state == ServerState.IN_PROGRESS
            and rows[pk].workunit.canonical_result_id is None
            and rows[pk].workunit.error_mask == 0}


def _record_reports(host: Host, reports: dict[int, dict[str, Any]], rows: dict[int, Result],
                    client_version: str, now: datetime
                    ) -> tuple[list[int], list[dict[str, Any]], set[int]]:
    accepted: list[int] = []
    rejected: list[dict[str, Any]] = []
    touched: set[int] = set()
    for result_id, report in reports.items():
        row = rows.get(result_id)
        if row is None:  # unknown, or sent to another host: never applied
            rejected.append({"result_id": result_id, "reason": REJECT_NOT_THIS_HOST})
            continue
        verdict = _record_report(host, row, report, client_version, now)
        if verdict is None:
            accepted.append(result_id)
        elif verdict == "changed":
            accepted.append(result_id)
            touched.add(row.workunit_id)
        else:
            rejected.append({"result_id": result_id, "reason": verdict})
    return accepted, rejected, touched


def _report_fields(host: Host, row: Result, report: dict[str, Any], client_version: str,
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


def _record_report(host: Host, row: Result, report: dict[str, Any], client_version: str,
                   now: datetime) -> str | None:
    """Store one report of this host's replica: "changed", None (a harmless repeat) or why not."""
    fields = _report_fields(host, row, report, client_version, now)
    if fields is None:
        return REJECT_MALFORMED
    if row.server_state == ServerState.IN_PROGRESS:
        changed = Result.objects.filter(
            pk=row.pk, host=host, server_state=ServerState.IN_PROGRESS,
        ).update(server_state=ServerState.OVER, **fields)
        if changed == 1:
            return "changed"
        # Lost a race (timed out between our read and our update): judge it as it is now.
        row.refresh_from_db(fields=["server_state", "outcome", "validate_state",
                                    "received_time"])
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


def _release_aborted(host: Host, abort: list[int], rows: dict[int, Result],
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


def _record_acks(host: Host, acks: Collection[int], now: datetime) -> None:
    if acks:
        Result.objects.filter(
            pk__in=set(acks), host=host, server_state=ServerState.IN_PROGRESS,
            acked_time__isnull=True,
        ).update(acked_time=now, updated_at=now)


def _record_progress(host: Host, progress: Sequence[dict[str, Any]], now: datetime) -> None:
    """Heartbeats of long tasks: how far each has come (shown on the portal's pages)."""
    for entry in progress[:MAX_PROGRESS_ROWS]:
        Result.objects.filter(
            pk=entry["result_id"], host=host, server_state=ServerState.IN_PROGRESS,
        ).update(fraction_done=entry["fraction_done"], progress_time=now, updated_at=now)


def host_status(*, host: Host) -> dict[str, Any]:
    """The portal's figures for one host, for ``strategy-worker status``."""
    counts = Result.objects.filter(host=host).aggregate(
        in_progress=Count("pk", filter=Q(server_state=ServerState.IN_PROGRESS)),
        pending=Count("pk", filter=Q(server_state=ServerState.OVER, outcome=Outcome.SUCCESS,
                                     validate_state=ValidateState.INIT)))
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

    limit = min(free_slots, quota_left, MAX_TASKS_PER_REQUEST)
    claimed = _claim(host=host, limit=limit, work_seconds=work_seconds,
                     datasets=list(request.get("datasets", [])), now=now)
    if not claimed:
        if host.speed > 0 and _candidates(host, feasible_only=False).exists():
            return _refusal(
                protocol.REASON_TOO_SLOW,
                "There is work, but none this host could finish before its deadline at its "
                f"measured speed ({host.speed:,.0f} candle-evaluations/s).", DELAY_INFEASIBLE)
        return _refusal(protocol.REASON_NO_WORK, "No work is available right now.",
                        _delay_no_work())

    host.results_today += len(claimed)
    for row in claimed:
        _maybe_trust_alone(host, row, now, rng)
    tasks = [_task(row, now, url_base) for row in claimed]
    plural = "s" if len(tasks) != 1 else ""
    return tasks, None, f"Sent {len(tasks)} task{plural}.", _delay_soon()


def _candidates(host: Host, *, feasible_only: bool = True, datasets: Sequence[str] = (),
                local: bool | None = None) -> QuerySet[Result]:
    """Unsent replicas this host may get, best first: priority (higher first), then age."""
    rows = Result.objects.filter(
        server_state=ServerState.UNSENT,
        workunit__campaign__state=CampaignState.ACTIVE,
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
    if local is not None and datasets:
        # The data set a task carries is the campaign's in-sample file (``task_dataset``).
        held = (Q(workunit__campaign__search_dataset__sha256__in=list(datasets))
                | Q(workunit__campaign__search_dataset__isnull=True,
                    workunit__campaign__dataset__sha256__in=list(datasets)))
        rows = rows.filter(held) if local else rows.exclude(held)
    return rows.order_by("-priority", "pk")


def _locked_batches(rows: QuerySet[Result], batch_size: int) -> Iterator[list[Result]]:
    """Batches of candidates, each locked for this transaction; rows others hold are skipped."""
    if connection.features.has_select_for_update_skip_locked:
        of = ("self", "workunit") if connection.features.has_select_for_update_of else ()
        rows = rows.select_for_update(skip_locked=True, of=of)
    rows = rows.select_related("workunit__campaign__dataset",
                               "workunit__campaign__search_dataset")
    seen: list[int] = []
    for _ in range(8):  # bounded: a request never scans the whole table
        batch = list(rows.exclude(pk__in=seen)[:batch_size])
        if not batch:
            return
        yield batch
        if len(batch) < batch_size:
            return
        seen.extend(row.pk for row in batch)


def _claim(*, host: Host, limit: int, work_seconds: float, datasets: list[str],
           now: datetime) -> list[Result]:
    """Claim up to ``limit`` replicas, about ``work_seconds`` of work, held data sets first."""
    claimed: list[Result] = []
    workunits: set[int] = set()
    estimated = 0.0

    def covered() -> bool:
        # BOINC sends until the request is covered: the last task may overshoot it.
        return len(claimed) >= limit or (host.speed > 0 and estimated >= work_seconds)

    passes = [True, False] if datasets else [None]  # locality first (BOINC's "lite" +10)
    for local in passes:
        for batch in _locked_batches(_candidates(host, datasets=datasets, local=local),
                                     batch_size=min(2 * limit + 2, 100)):
            remaining = batch
            while remaining:
                # Pick, in order, what would cover the request; claim the picks in one go.
                picked: list[Result] = []
                picked_cost = 0.0
                rest: list[Result] = []
                for index, row in enumerate(remaining):
                    if row.workunit_id in workunits or any(
                            row.workunit_id == other.workunit_id for other in picked):
                        continue  # a sibling is already in this reply
                    picked.append(row)
                    if host.speed > 0:
                        picked_cost += row.workunit.cost / host.speed
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
                        estimated += row.workunit.cost / host.speed
                if covered():
                    return claimed
                remaining = rest  # only if a pick was lost to another request
    return claimed


def _claim_rows(host: Host, rows: list[Result], now: datetime) -> list[Result]:
    """Send ``rows`` (of distinct work units) to ``host``: one conditional UPDATE per deadline
    (one in practice), its row count checked; returns the rows won, in order."""
    by_deadline: dict[datetime, list[Result]] = {}
    for row in rows:
        deadline = now + timedelta(
            seconds=row.workunit.delay_bound + settings.RESULT_GRACE_SECONDS)
        by_deadline.setdefault(deadline, []).append(row)
    won: set[int] = set()
    for deadline, group in by_deadline.items():
        ids = [row.pk for row in group]
        changed = Result.objects.filter(pk__in=ids, server_state=ServerState.UNSENT).update(
            server_state=ServerState.IN_PROGRESS, host=host, volunteer_id=host.volunteer_id,
            sent_time=now, report_deadline=deadline, acked_time=None, updated_at=now)
        if changed == len(ids):
            group_won = ids
        else:
            # Another request sent some first (the rows are locked on PostgreSQL and writers
            # are serial on SQLite, so this is a safeguard): keep those we sent just now.
            group_won = list(Result.objects.filter(
                pk__in=ids, server_state=ServerState.IN_PROGRESS, host=host, sent_time=now,
                report_deadline=deadline, updated_at=now).values_list("pk", flat=True))
        if not group_won:
            continue
        won.update(group_won)
        # Wake the transitioner by the deadline (BOINC: min(existing, deadline)).
        WorkUnit.objects.filter(
            pk__in=[row.workunit_id for row in group if row.pk in won]).update(
            transition_time=Least(Coalesce(F("transition_time"), Value(deadline)),
                                  Value(deadline)),
            updated_at=now)
        for row in group:
            if row.pk in won:
                row.server_state, row.host = ServerState.IN_PROGRESS, host
                row.volunteer_id = host.volunteer_id
                row.sent_time, row.report_deadline = now, deadline
    return [row for row in rows if row.pk in won]


def _maybe_trust_alone(host: Host, row: Result, now: datetime, rng: random.Random) -> None:
    """Adaptive replication (reference §2.7): a long-trusted host may run a work unit alone.

    Only when this is the work unit's first replica sent; trusted with probability
    1 - 1/consecutive_valid, so even a trusted host is spot-checked now and then.
    """
    workunit = row.workunit
    valid_run = host.consecutive_valid
    if workunit.min_quorum < 2 or valid_run < TRUST_AFTER_CONSECUTIVE_VALID:
        return
    if Result.objects.filter(workunit_id=workunit.pk, sent_time__isnull=False).exclude(
            pk=row.pk).exists():
        return
    if rng.random() >= 1.0 - 1.0 / valid_run:
        return
    changed = WorkUnit.objects.filter(pk=workunit.pk, min_quorum=workunit.min_quorum).update(
        min_quorum=1, target_nresults=1, updated_at=now)
    if changed != 1:
        return
    workunit.min_quorum = workunit.target_nresults = 1
    siblings = Result.objects.filter(workunit_id=workunit.pk,
                                     server_state=ServerState.UNSENT).exclude(pk=row.pk)
    if connection.features.has_select_for_update_skip_locked:
        # A sibling another request holds is left to it; the validator retires leftovers.
        siblings = siblings.select_for_update(skip_locked=True)
    for pk in list(siblings.values_list("pk", flat=True)):
        Result.objects.filter(pk=pk, server_state=ServerState.UNSENT).update(
            server_state=ServerState.OVER, outcome=Outcome.DIDNT_NEED, updated_at=now)


def _task(row: Result, now: datetime, url_base: str) -> dict[str, Any]:
    workunit = row.workunit
    dataset = workunit.campaign.task_dataset
    deadline = (now + timedelta(seconds=workunit.delay_bound)).astimezone(UTC)
    return {
        "result_id": row.pk,
        "name": f"c{workunit.campaign_id}_i{workunit.island}_e{workunit.epoch}_{row.pk}",
        "payload": workunit.payload,
        "dataset_sha256": dataset.sha256,
        "dataset_url": url_base + reverse("api:dataset", kwargs={"sha256": dataset.sha256}),
        "dataset_size": dataset.size_bytes,
        "deadline": deadline.isoformat(timespec="seconds"),
        "credit": workunit.credit,
        "cost": workunit.cost,
    }
