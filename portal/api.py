"""What every API endpoint shares: one error shape and the base classes.

Every error, whatever raised it, reaches the client as::

    {"error": {"code": "validation_error", "message": "one line for a person", "detail": {...}}}

``code`` is stable and machine-readable; ``message`` is what the worker prints.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from apps.common.errors import ApplicationError


def _first_message(detail: Any) -> str:
    if isinstance(detail, dict):
        for key, value in detail.items():
            inner = _first_message(value)
            return inner if key == "non_field_errors" else f"{key}: {inner}"
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    return str(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        body = {"code": exc.extra.get("code", "refused"), "message": exc.message,
                "detail": {k: v for k, v in exc.extra.items() if k != "code"}}
        return Response({"error": body}, status=exc.extra.get("status", 400))
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # a bug: let Django log it and answer 500
    if isinstance(exc, exceptions.ValidationError):
        code = "validation_error"
        message = _first_message(exc.detail)
        detail = exc.detail
    else:
        code = getattr(exc, "default_code", "error")
        message = _first_message(getattr(exc, "detail", str(exc)))
        detail = {}
    if response.status_code == status.HTTP_429_TOO_MANY_REQUESTS:
        detail = {"retry_after": getattr(exc, "wait", None)}
    response.data = {"error": {"code": code, "message": message, "detail": detail}}
    return response
