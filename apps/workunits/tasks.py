"""django-q2 entry points for the server daemons (thin: IDs in, one bounded pass, idempotent).

The daemon logic lives in its own modules (transitioner, validator, assimilator, file_deleter);
these functions run one pass and, when it left work for the next daemon, enqueue that daemon
right away instead of waiting for its schedule (django-q2 schedules fire at most every ~30 s).
Delivery is at least once, and every pass is idempotent, so a task run twice does no harm.
The schedules (a one-minute sweeper per daemon) are declared by ``manage.py setup_schedules``.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.utils import timezone
from django_q.tasks import async_task

from .models import WorkUnit
from .states import AssimilateState

TRANSITIONER = "apps.workunits.tasks.run_transitioner"
VALIDATOR = "apps.workunits.tasks.run_validator"
ASSIMILATOR = "apps.workunits.tasks.run_assimilator"
FILE_DELETER = "apps.workunits.tasks.run_file_deleter"


def enqueue_transitions(workunit_ids: Iterable[int]) -> None:
    """Ask the transitioner to look at these work units now (called on commit of a report).

    Not when the daemons run as ``manage.py run_daemons --loop`` (``DAEMON_RUNNER=loop``): no
    cluster would take the task, and the queue would only grow; the loop finds the work itself.
    """
    ids = sorted(set(workunit_ids))
    if ids and settings.DAEMON_RUNNER == "qcluster":
        async_task("apps.workunits.tasks.transition_workunits", ids)


def _chain_after_transition() -> None:
    if WorkUnit.objects.filter(need_validate=True).exists():
        async_task(VALIDATOR)
    elif WorkUnit.objects.filter(assimilate_state=AssimilateState.READY).exists():
        async_task(ASSIMILATOR)  # errored work units go straight to the assimilator


def transition_workunits(workunit_ids: list[int]) -> int:
    from .transitioner import transition_pass

    handled = transition_pass(workunit_ids=workunit_ids)
    if handled:
        _chain_after_transition()
    return handled


def run_transitioner() -> int:
    from .transitioner import transition_pass

    handled = transition_pass()
    if handled:
        _chain_after_transition()
    return handled


def run_validator() -> int:
    from .validator import validate_pass

    handled = validate_pass()
    if handled:
        if WorkUnit.objects.filter(assimilate_state=AssimilateState.READY).exists():
            async_task(ASSIMILATOR)
        # No consensus or a rejected liar: the transitioner sends more replicas now.
        if WorkUnit.objects.filter(transition_time__lte=timezone.now()).exists():
            async_task(TRANSITIONER)
    return handled


def run_assimilator() -> int:
    from .assimilator import assimilate_pass

    return assimilate_pass()


def run_file_deleter() -> int:
    from .file_deleter import file_delete_pass

    return file_delete_pass()
