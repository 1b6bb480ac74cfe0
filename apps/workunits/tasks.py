"""django-q2 entry points for the server daemons (thin: IDs in, one bounded pass, idempotent).

The daemon logic lives in its own modules (transitioner, validator, assimilator, file_deleter);
these functions run one pass and, when it left work for the next daemon, enqueue that daemon
right away instead of waiting for its schedule (django-q2 schedules fire at most every ~30 s).
Passes are coalesced: while one pass of a daemon is queued and not started, nobody queues
another (:func:`enqueue_once`); each pass takes all the work it finds, in batches.
Delivery is at least once, and every pass is idempotent, so a task run twice does no harm.
The schedules (a one-minute sweeper per daemon) are declared by ``manage.py setup_schedules``.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from django_q.tasks import async_task

from .models import WorkUnit
from .states import AssimilateState

TRANSITIONER = "apps.workunits.tasks.run_transitioner"
VALIDATOR = "apps.workunits.tasks.run_validator"
ASSIMILATOR = "apps.workunits.tasks.run_assimilator"
FILE_DELETER = "apps.workunits.tasks.run_file_deleter"
TRANSITION_WORKUNITS = "apps.workunits.tasks.transition_workunits"


# A queued pass of a daemon is flagged in the cache until it starts: while one waits, the next
# report (or chained daemon) need not queue another, as it will find the same work. The flag
# expires on its own, should its task be lost.
PENDING_SECONDS = 30


def _pending_key(func: str) -> str:
    return f"daemon-pass-pending:{func}"


def _claim_pending(func: str) -> bool:
    """Flag a pass of ``func`` as queued; False if one already is. (A cache read per call; the
    write only when a pass is to be queued.)"""
    key = _pending_key(func)
    return cache.get(key) is None and cache.add(key, True, timeout=PENDING_SECONDS)


def enqueue_once(func: str) -> bool:
    """Queue one pass of ``func`` unless one is queued and not started yet; returns whether it
    queued one."""
    if not _claim_pending(func):
        return False
    async_task(func)
    return True


def _starting(func: str) -> None:
    """A pass starts: from now on, new work must queue another pass (it may come too late for
    this one's read of the state columns)."""
    cache.delete(_pending_key(func))


def enqueue_transitions(workunit_ids: Iterable[int]) -> None:
    """Ask the transitioner to look at these work units now (called once a report commits).

    Coalesced, so that reports arriving by the hundred a second do not queue a pass each: when
    no transitioner pass is queued, this queues one naming these work units (it handles them,
    waiting for any another process holds, then every due work unit). While one is queued and
    not started, it will find the work units this report made due (``transition_time`` now), so
    only those the report could not make due (another process held their row) are named to a
    pass of their own, as every report's were before.

    Not when the daemons run as ``manage.py run_daemons --loop`` (``DAEMON_RUNNER=loop``): no
    cluster would take the task, and the queue would only grow; the loop finds the work itself.
    """
    ids = sorted(set(workunit_ids))
    if not ids or settings.DAEMON_RUNNER != "qcluster":
        return
    if _claim_pending(TRANSITIONER):
        async_task(TRANSITION_WORKUNITS, ids)
        return
    not_due = list(WorkUnit.objects.filter(pk__in=ids)
                   .exclude(transition_time__lte=timezone.now()).order_by("id")
                   .values_list("id", flat=True))
    if not_due:
        async_task(TRANSITION_WORKUNITS, not_due, False)


def _chain_after_transition() -> None:
    if WorkUnit.objects.filter(need_validate=True).exists():
        enqueue_once(VALIDATOR)
    if WorkUnit.objects.filter(assimilate_state=AssimilateState.READY).exists():
        enqueue_once(ASSIMILATOR)  # errored work units go straight to the assimilator


# A work unit another process holds is not waited for (a daemon's batch may hold it for a
# while, and a waiting task holds up a cluster worker): the task is queued again, up to this many
# times, and then waits.
MAX_REQUEUES = 20


def transition_workunits(workunit_ids: list[int], sweep: bool = True, attempt: int = 0) -> int:
    """These work units, then, with ``sweep`` (the coalesced pass :func:`enqueue_transitions`
    queues), every due work unit."""
    from .transitioner import transition_pass

    if sweep:
        _starting(TRANSITIONER)
    ids = sorted(set(workunit_ids))
    wait = attempt >= MAX_REQUEUES
    handled = transition_pass(workunit_ids=ids, wait=wait)
    if handled < len(ids) and not wait:
        # Some were held by another process: once it commits, they must still be looked at
        # (handling the others again is harmless).
        async_task(TRANSITION_WORKUNITS, ids, False, attempt + 1)
    if sweep:
        handled += transition_pass()
    if handled:
        if sweep:
            # Once more: reports that committed while this pass ran may have missed it.
            enqueue_once(TRANSITIONER)
        _chain_after_transition()
    return handled


def run_transitioner() -> int:
    from .transitioner import transition_pass

    _starting(TRANSITIONER)
    handled = transition_pass()
    if handled:
        # Once more: reports that committed while this pass ran may have missed it.
        enqueue_once(TRANSITIONER)
        _chain_after_transition()
    return handled


def run_validator() -> int:
    from .validator import validate_pass

    _starting(VALIDATOR)
    handled = validate_pass()
    if handled:
        if WorkUnit.objects.filter(need_validate=True).exists():
            enqueue_once(VALIDATOR)  # more than one pass's worth
        if WorkUnit.objects.filter(assimilate_state=AssimilateState.READY).exists():
            enqueue_once(ASSIMILATOR)
        # No consensus or a rejected liar: the transitioner sends more replicas now.
        if WorkUnit.objects.filter(transition_time__lte=timezone.now()).exists():
            enqueue_once(TRANSITIONER)
    return handled


def run_assimilator() -> int:
    from .assimilator import assimilate_pass

    _starting(ASSIMILATOR)
    handled = assimilate_pass()
    if handled and WorkUnit.objects.filter(assimilate_state=AssimilateState.READY).exists():
        enqueue_once(ASSIMILATOR)  # more than one pass's worth
    return handled


def run_file_deleter() -> int:
    from .file_deleter import file_delete_pass

    return file_delete_pass()
