"""Project-level views that belong to no app."""

import logging

from django.db import Error as DatabaseError
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

logger = logging.getLogger(__name__)


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers and monitors: 200 when the database answers, else 503."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError:
        # The cause goes to the log, not to an anonymous caller.
        logger.exception("healthz: the %s database did not answer", connection.vendor)
        return JsonResponse(
            {"status": "error", "database": connection.vendor, "detail": "database unreachable"},
            status=503,
        )
    return JsonResponse({"status": "ok", "database": connection.vendor})
