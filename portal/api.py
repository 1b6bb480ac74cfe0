"""What every API endpoint shares: one error shape and the base classes.

Every error, whatever raised it, reaches the client as::

    {"error": {"code": "validation_error", "message": "one line for a person", "detail": {...}}}

``code`` is stable and machine-readable; ``message`` is what the worker prints.

Messages may quote what the client sent (an unknown field's name, a refused choice). JSON can
carry a lone UTF-16 surrogate (``"\\ud800"``), which Python parses but UTF-8 cannot encode: such
characters are shown as their ``\\udXXX`` escape, or rendering the 400 would fail with a 500.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
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


def _encodable(value: Any) -> Any:
    """``value`` with every string UTF-8-encodable (lone surrogates become ``\\udXXX``)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_encodable(key): _encodable(inner) for key, inner in value.items()}
    if isinstance(value, list | tuple):
        return [_encodable(inner) for inner in value]
    return value


def _error(code: str, message: str, detail: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": _encodable(message),
                      "detail": _encodable(detail)}}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        return Response(_error(exc.extra.get("code", "refused"), exc.message,
                               {k: v for k, v in exc.extra.items() if k != "code"}),
                        status=exc.extra.get("status", 400))
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
    response.data = _error(code, message, detail)
    return response


def not_found(request: HttpRequest, path: str = "") -> JsonResponse:
    """Any other path under the API: a 404 in the error shape, not the site's HTML page.

    A path missing only its final slash is named, since a POST cannot follow a redirect.
    """
    message = f"No API endpoint at {request.path}."
    if not request.path.endswith("/"):
        message += f" Did you mean {request.path}/ (with the final slash)?"
    return JsonResponse(_error("not_found", message, {}), status=404)
