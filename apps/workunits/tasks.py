"""django-q2 entry points for the server daemons (thin: IDs in, one bounded pass, idempotent).

The daemon logic lives in the service modules; these functions only run a pass. The full set
(transitioner, validator, assimilator, file deleter) and their schedules come with the daemons.
"""

from __future__ import annotations

from collections.abc import Iterable

from django_q.tasks import async_task


def enqueue_transitions(workunit_ids: Iterable[int]) -> None:
    """Ask the transitioner to look at these work units now (called on commit of a report)."""
    ids = sorted(set(workunit_ids))
    if ids:
        async_task("apps.workunits.tasks.transition_workunits", ids)


def transition_workunits(workunit_ids: list[int]) -> int:
    from .transitioner import transition_pass

    return transition_pass(workunit_ids=workunit_ids)
