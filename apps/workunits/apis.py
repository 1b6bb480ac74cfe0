"""The worker API, ``/api/v1/`` (``worker_client.protocol`` is the contract).

Each view parses with its input serializer, calls one service, and renders with its output
serializer. Every error leaves in the one shape of ``portal.api``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseNotModified
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_safe
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from apps.accounts.auth import HostTokenAuthentication
from apps.accounts.models import Host
from apps.accounts.services import host_attach, host_update
from worker_client import protocol

from .models import Dataset
from .scheduler import host_detach, host_status, scheduler_request
from .serializers import (
    SHA256_RE,
    AttachReplySerializer,
    AttachSerializer,
    ErrorSerializer,
    HostInfoSerializer,
    HostReplySerializer,
    HostStatusSerializer,
    SchedulerReplySerializer,
    SchedulerRequestSerializer,
    scheduler_request_fast,
)

# A PEP 440 version's characters only, ending at a space or the end: nothing else is stored.
_USER_AGENT_VERSION = re.compile(
    rf"^{re.escape(protocol.CLIENT_NAME)}/([0-9][0-9A-Za-z.+!_-]{{0,29}})(?:[ \t]|$)")


# --- shared machinery --------------------------------------------------------------------------


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "request_too_large"


class BoundedJSONParser(JSONParser):
    """JSON only, at most ``DATA_UPLOAD_MAX_MEMORY_SIZE`` bytes, no NaN/Infinity.

    Recent DRF reads JSON through ``request.body`` (Django's size check, see
    ``WorkerApi.handle_exception``); older DRF read the raw stream and skipped it, so the limit
    is checked here as well. Too deep a document is a parse error, not a server error.
    """

    def parse(self, stream: Any, media_type: str | None = None,
              parser_context: dict[str, Any] | None = None) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = (parser_context or {}).get("request")
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0) if request else 0
        except ValueError:
            declared = 0
        if declared > limit:
            raise RequestTooLarge(f"The request body is larger than {limit:,} bytes.")
        raw = stream.read(limit + 1)
        if len(raw) > limit:
            raise RequestTooLarge(f"The request body is larger than {limit:,} bytes.")
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            return json.loads(raw.decode(encoding), parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            raise exceptions.ParseError(f"JSON parse error: {str(exc)[:200]}") from None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


class HostScopedThrottle(ScopedRateThrottle):
    """``ScopedRateThrottle`` counting per host when a host token authenticated the call (per
    client address otherwise), with rates read from settings at each request."""

    @property
    def THROTTLE_RATES(self) -> dict[str, str]:
        return api_settings.DEFAULT_THROTTLE_RATES

    def get_cache_key(self, request: Request, view: APIView) -> str:
        if isinstance(request.auth, Host):
            ident = f"host-{request.auth.pk}"
        else:
            ident = self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


class IsHost(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        return isinstance(request.auth, Host)


class FirstRendererNegotiation(BaseContentNegotiation):
    """For the binary download: whatever the client accepts, errors are rendered as JSON."""

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(self, request: Request, renderers: list[Any],
                        format_suffix: str | None = None) -> tuple[Any, str]:
        return renderers[0], renderers[0].media_type


class WorkerApi(APIView):
    """Base of the worker endpoints: JSON in and out, host token, throttled per host."""

    parser_classes = [BoundedJSONParser]
    renderer_classes = [JSONRenderer]
    authentication_classes = [HostTokenAuthentication]
    permission_classes = [IsHost]
    throttle_classes = [HostScopedThrottle]
    throttle_scope = "scheduler"

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, RequestDataTooBig):  # Django's check: answer in our error shape
            exc = RequestTooLarge(f"The request body is larger than "
                                  f"{settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes.")
        return super().handle_exception(exc)


ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="invalid request"),
    401: OpenApiResponse(ErrorSerializer, description="missing, invalid or retired host token"),
    413: OpenApiResponse(ErrorSerializer, description="request body too large"),
    429: OpenApiResponse(ErrorSerializer, description="throttled: see Retry-After"),
}


def client_version_of(request: Request, host: Host) -> str:
    """The worker's version from its User-Agent (``protocol.user_agent``), else as attached."""
    found = _USER_AGENT_VERSION.match(request.headers.get("User-Agent", ""))
    return found.group(1) if found else host.client_version


# --- endpoints ---------------------------------------------------------------------------------


class AttachApi(WorkerApi):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_scope = "attach"

    @extend_schema(
        operation_id="attach", request=AttachSerializer, auth=[],
        summary="Attach a host to a volunteer's account",
        description="Exchanges the volunteer's account key for a new host token, shown once.",
        responses={201: AttachReplySerializer, 403: OpenApiResponse(
            ErrorSerializer, description="invalid account key"),
            **{code: ERRORS[code] for code in (400, 413, 429)}})
    def post(self, request: Request) -> Response:
        data = AttachSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        host, token = host_attach(account_key=data.validated_data["account_key"],
                                  info=data.validated_data["host"])
        return Response(AttachReplySerializer({"host_id": host.pk, "token": token}).data,
                        status=status.HTTP_201_CREATED)


class HostApi(WorkerApi):
    @extend_schema(operation_id="host_update", request=HostInfoSerializer,
                   summary="Update what the host says about itself",
                   description="Platform, versions and measured speed (candle-evaluations "
                               "per second), which the scheduler uses for deadlines.",
                   responses={200: HostReplySerializer, **ERRORS})
    def post(self, request: Request) -> Response:
        data = HostInfoSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        host = host_update(host=request.auth, info=data.validated_data)
        return Response(HostReplySerializer({"host_id": host.pk}).data)

    @extend_schema(operation_id="host_status", summary="This host's credit and results",
                   responses={200: HostStatusSerializer, **ERRORS})
    def get(self, request: Request) -> Response:
        return Response(HostStatusSerializer(host_status(host=request.auth)).data)

    @extend_schema(operation_id="host_detach", request=None,
                   summary="Detach: retire this host and give back its tasks",
                   description="The token stops working at once; tasks in progress go to other "
                               "hosts without waiting for their deadlines.",
                   responses={204: None, **ERRORS})
    def delete(self, request: Request) -> Response:
        host_detach(host=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SchedulerApi(WorkerApi):
    @extend_schema(
        operation_id="scheduler", request=SchedulerRequestSerializer,
        summary="Report finished tasks and ask for work",
        description="One round trip: stores reported results (reporting one twice is harmless), "
                    "records acknowledged tasks, lists tasks to abort, re-sends the tasks a "
                    "complete `in_progress` list lacks (lost replies), and sends new tasks that "
                    "meet their deadline behind `slot_queue_seconds`. When it sends none, "
                    "`reason` says why. The worker's version is read from its "
                    "User-Agent (`strategy-worker/<version> …`).",
        responses={200: SchedulerReplySerializer, **ERRORS})
    def post(self, request: Request) -> Response:
        validated = scheduler_request_fast(request.data)  # the usual request, checked quickly
        if validated is None:
            data = SchedulerRequestSerializer(data=request.data)
            data.is_valid(raise_exception=True)
            validated = data.validated_data
        reply = scheduler_request(host=request.auth, request=validated,
                                  client_version=client_version_of(request, request.auth),
                                  url_base=request.build_absolute_uri("/").rstrip("/"))
        # The service returns SchedulerReplySerializer's shape with its types already (a test
        # holds it to that), so the reply is rendered as it is: the busiest endpoint skips a
        # pass over every task's fields.
        return Response(reply)


class DatasetDownloadApi(WorkerApi):
    throttle_scope = "download"
    content_negotiation_class = FirstRendererNegotiation

    @extend_schema(
        operation_id="dataset_download", summary="Download a data set's candle file",
        description="Streams the file. `ETag` is the quoted sha256 and `X-Checksum-Sha256` the "
                    "sha256; send `If-None-Match` to get 304 when the copy held is current.",
        parameters=[OpenApiParameter("sha256", OpenApiTypes.STR, OpenApiParameter.PATH,
                                     description="the data set's sha256 (64 hex digits)")],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY,
                   304: OpenApiResponse(description="not modified"),
                   404: OpenApiResponse(ErrorSerializer, description="no such data set"),
                   401: ERRORS[401], 429: ERRORS[429]})
    def get(self, request: Request, sha256: str) -> HttpResponse:
        if not SHA256_RE.fullmatch(sha256):
            raise exceptions.NotFound("No such data set.")
        # A read by primary key of content: no selector module of its own yet.
        dataset = Dataset.objects.filter(sha256=sha256).first()
        if dataset is None or not dataset.file:
            raise exceptions.NotFound("No such data set.")
        etag = f'"{dataset.sha256}"'
        if _etag_matches(request.headers.get("If-None-Match", ""), dataset.sha256):
            response: HttpResponse = HttpResponseNotModified()
        else:
            try:
                handle = dataset.file.open("rb")
            except FileNotFoundError:
                raise exceptions.NotFound("The data set's file is missing on the server.") from None
            response = FileResponse(handle, content_type="application/octet-stream",
                                    as_attachment=True, filename=f"{dataset.sha256}.candles")
        response["ETag"] = etag
        response["X-Checksum-Sha256"] = dataset.sha256
        # Content named by its hash never changes; only this host may cache it.
        response["Cache-Control"] = "private, max-age=31536000, immutable"
        return response


def _etag_matches(header: str, sha256: str) -> bool:
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        tag = tag.removeprefix("W/")
        if tag == f'"{sha256}"':
            return True
    return False


# --- human-readable docs -----------------------------------------------------------------------


@require_safe
def api_docs(request: HttpRequest) -> HttpResponse:
    """A plain page listing the endpoints from the OpenAPI schema (no CDN, no JavaScript)."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    rows = []
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = ", ".join(sorted(operation.get("responses", {})))
            needs_token = any("hostToken" in option for option in operation.get("security", []))
            auth = ("host token" if needs_token else
                    "account key, in the body" if operation.get("operationId") == "attach" else
                    "none")
            rows.append((method.upper(), path, operation.get("summary", ""),
                         operation.get("description", ""), auth, responses))
    table = format_html_join(
        "\n", "<tr><td><code>{}</code></td><td><code>{}</code></td><td><b>{}</b><br>{}</td>"
        "<td>{}</td><td>{}</td></tr>", rows)
    info = schema.get("info", {})
    page = format_html(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title>"
        "<style>body{{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;"
        "padding:0 1rem}}table{{border-collapse:collapse;width:100%}}td,th{{border:1px solid "
        "#ccc;padding:.4rem;vertical-align:top;text-align:left}}</style></head><body>"
        "<h1>{title} v{version}</h1><p>{description}</p>"
        "<p>Machine-readable schema: <a href='{schema}'>OpenAPI (YAML)</a> · "
        "<a href='{schema}?format=json'>JSON</a>. Authenticate worker calls with "
        "<code>Authorization: Token &lt;host token&gt;</code>. Every error has the shape "
        "<code>{{\"error\": {{\"code\", \"message\", \"detail\"}}}}</code>.</p>"
        "<table><tr><th>method</th><th>path</th><th>what</th><th>auth</th><th>responses</th>"
        "</tr>{table}</table></body></html>",
        title=info.get("title", "API"), version=info.get("version", ""),
        description=info.get("description", ""), schema=reverse("api:schema"),
        table=table)
    return HttpResponse(page)
