"""The file deleter / purger: drop replica outputs nobody needs any more, after a delay.

Once a work unit is assimilated and ``FILE_DELETE_DELAY_SECONDS`` have passed since its last
activity (its assimilation, or the last replica received, whichever is later), the outputs of its
finished replicas are cleared — all but the canonical result's, which the hall of fame and the
island's next epochs read — and the work unit and those replicas are marked
``file_delete_state = DONE``. A replica still out then is left alone; if it reports later, the
transitioner marks it TOO_LATE and drops its output (reference/boinc.md §1.5 step 3).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from .models import Result, WorkUnit
from .states import AssimilateState, FileDeleteState, ServerState
from .transitioner import checked_update


def file_delete_pass(*, now: datetime | None = None, limit: int = 500) -> int:
    """One pass; returns how many work units had their files deleted."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.FILE_DELETE_DELAY_SECONDS)
    candidates = list(
        WorkUnit.objects.filter(assimilate_state=AssimilateState.DONE,
                                file_delete_state=FileDeleteState.INIT, updated_at__lte=cutoff)
        .annotate(last_received=Max("results__received_time"))
        .order_by("id").values_list("id", "last_received")[:limit])
    handled = 0
    for wu_id, last_received in candidates:
        if last_received is not None and last_received > cutoff:
            continue
        with transaction.atomic():
            wu = (WorkUnit.objects.select_for_update(skip_locked=True)
                  .filter(pk=wu_id, file_delete_state=FileDeleteState.INIT).first())
            if wu is None:
                continue
            (Result.objects.filter(workunit=wu, server_state=ServerState.OVER)
             .exclude(file_delete_state=FileDeleteState.DONE)
             .exclude(pk=wu.canonical_result_id or 0)
             .update(output=None, file_delete_state=FileDeleteState.DONE, updated_at=now))
            if wu.canonical_result_id is not None:
                Result.objects.filter(pk=wu.canonical_result_id).update(
                    file_delete_state=FileDeleteState.DONE, updated_at=now)
            checked_update(WorkUnit.objects.filter(pk=wu.pk,
                                                   file_delete_state=FileDeleteState.INIT),
                           file_delete_state=FileDeleteState.DONE, updated_at=now)
            handled += 1
    return handled
