"""Input and output serializers of the worker API: the wire contract of ``worker_client.protocol``.

Inputs are strict: a field has exactly its JSON type (no ``"3"`` for 3, no ``true`` for 1, no
``3.0`` for an id), numbers are finite and bounded, strings and lists have a maximum length, and
unknown fields are refused so that a client's typo fails loudly instead of being ignored.
Serializers only validate and shape data; services do the writing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from django.core.validators import RegexValidator
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from worker_client import protocol

# The protocol's limits of one request, and the portal's own on what is inside one.
MAX_RESULTS_PER_REQUEST = protocol.MAX_RESULTS_PER_REQUEST
MAX_IDS_PER_LIST = protocol.MAX_IDS_PER_LIST
MAX_WORK_SECONDS = float(protocol.MAX_WORK_SECONDS)  # BOINC's MAX_REQ_SECS
MAX_FREE_SLOTS = protocol.MAX_FREE_SLOTS
MAX_DATASETS = 100
MAX_OUTPUT_BYTES = 1_000_000  # one result's output, as compact JSON
MAX_OUTPUT_DEPTH = 32
MAX_TASK_SECONDS = 1e8  # cpu/wall time of one task: about three years
MAX_ID = 2**63 - 1
MAX_ERROR_LENGTH = 4000
REASONS = [protocol.REASON_NO_WORK, protocol.REASON_QUOTA, protocol.REASON_CLIENT_TOO_OLD,
           protocol.REASON_HOST_RETIRED, protocol.REASON_TOO_SLOW, protocol.REASON_NOT_ASKED]

SHA256_RE = re.compile(r"[0-9a-f]{64}")
sha256_validator = RegexValidator(r"^[0-9a-f]{64}\Z", "Expected a sha256: 64 lowercase hex digits.")


# --- strict fields -----------------------------------------------------------------------------


class StrictCharField(serializers.CharField):
    """A JSON string, never a number or boolean turned into one."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictChoiceField(serializers.ChoiceField):
    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid_choice", input=str(data)[:50])
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer: not a string, a boolean or a float (even ``3.0``)."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A JSON ``true`` or ``false``: not ``1``, ``"true"`` or ``null``."""

    def to_internal_value(self, data: Any) -> bool:
        if type(data) is not bool:
            self.fail("invalid", input=str(data)[:50])
        return data


class StrictFloatField(serializers.FloatField):
    """A finite JSON number (an integer is fine); ``1e400`` parses to infinity and is refused."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


def IdField(**kwargs: Any) -> StrictIntegerField:
    return StrictIntegerField(min_value=1, max_value=MAX_ID, **kwargs)


def Sha256Field(**kwargs: Any) -> StrictCharField:
    return StrictCharField(min_length=64, max_length=64, validators=[sha256_validator], **kwargs)


@extend_schema_field(OpenApiTypes.OBJECT)
class BoundedJSONObjectField(serializers.Field):
    """A JSON object of bounded size and depth whose numbers are all finite."""

    default_error_messages = {
        "not_an_object": "Expected a JSON object.",
        "too_deep": f"Nested deeper than {MAX_OUTPUT_DEPTH} levels.",
        "not_finite": "Numbers must be finite (no NaN or Infinity).",
        "null_character": "Strings may not contain NUL characters.",
        "lone_surrogate": "Strings may not contain half of a UTF-16 surrogate pair.",
        "too_large": f"Larger than {MAX_OUTPUT_BYTES:,} bytes as JSON.",
    }

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.fail("not_an_object")
        stack: list[tuple[Any, int]] = [(data, 1)]
        while stack:  # iterative: a deep document must not exhaust the Python stack
            value, depth = stack.pop()
            if isinstance(value, dict | list):
                if depth > MAX_OUTPUT_DEPTH:
                    self.fail("too_deep")
                if isinstance(value, dict):
                    if any("\x00" in key for key in value):
                        self.fail("null_character")
                    children = value.values()
                else:
                    children = value
                stack.extend((child, depth + 1) for child in children)
            elif isinstance(value, float) and not math.isfinite(value):
                self.fail("not_finite")
            elif isinstance(value, str) and "\x00" in value:
                self.fail("null_character")  # PostgreSQL's jsonb cannot store one
        try:
            encoded = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        except UnicodeEncodeError:  # a lone surrogate, in a key or a value: jsonb refuses it
            self.fail("lone_surrogate")
        if len(encoded) > MAX_OUTPUT_BYTES:
            self.fail("too_large")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, naming them."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(str(key)[:50] for key in data if key not in self.fields)
            if unknown:
                raise serializers.ValidationError(
                    {key: ["Unknown field."] for key in unknown[:10]})
        return super().to_internal_value(data)


class StrictSerializerSchema(OpenApiSerializerExtension):
    """The schema says what ``StrictSerializer`` does: a request's unknown fields are refused."""

    target_class = StrictSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        schema: dict[str, Any] = auto_schema._map_basic_serializer(self.target, direction)
        if direction == "request":
            schema["additionalProperties"] = False
        return schema


# --- inputs ------------------------------------------------------------------------------------


class HostInfoSerializer(StrictSerializer):
    """``protocol.HostInfo``."""

    name = StrictCharField(min_length=1, max_length=100)
    os = StrictCharField(max_length=50, allow_blank=True)
    arch = StrictCharField(max_length=30, allow_blank=True)
    python_version = StrictCharField(max_length=30, allow_blank=True)
    numba_version = StrictCharField(max_length=30, allow_blank=True)
    cpu_count = StrictIntegerField(min_value=1, max_value=4096)
    memory_mb = StrictIntegerField(min_value=0, max_value=2**31 - 1)
    client_version = StrictCharField(max_length=30, allow_blank=True)
    speed = StrictFloatField(min_value=0.0, max_value=1e15, required=False, default=0.0,
                             help_text="measured candle-evaluations per second; 0 if unknown")


class AttachSerializer(StrictSerializer):
    account_key = StrictCharField(min_length=1, max_length=200, trim_whitespace=True)
    host = HostInfoSerializer()


class ReportedResultSerializer(StrictSerializer):
    """``protocol.ReportedResult``: ``output`` is the engine's ``EpochResult.to_dict()``."""

    result_id = IdField()
    status = StrictChoiceField(choices=["success", "error"])
    output = BoundedJSONObjectField(required=False, allow_null=True, default=None)
    error = StrictCharField(max_length=MAX_ERROR_LENGTH, required=False, allow_blank=True,
                            default="", trim_whitespace=False)
    cpu_time = StrictFloatField(min_value=0.0, max_value=MAX_TASK_SECONDS, required=False,
                                default=0.0)
    wall_time = StrictFloatField(min_value=0.0, max_value=MAX_TASK_SECONDS, required=False,
                                 default=0.0)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["status"] == "success":
            output = attrs.get("output")
            if output is None:
                raise serializers.ValidationError({"output": ["Required when status is success."]})
            digest = output.get("digest")
            if not isinstance(digest, str) or not SHA256_RE.fullmatch(digest):
                raise serializers.ValidationError(
                    {"output": ["Needs a digest: a sha256, 64 lowercase hex digits."]})
        else:
            attrs["output"] = None  # an error carries no answer to keep
        return attrs


class TaskProgressSerializer(StrictSerializer):
    """``protocol.TaskProgress``: the heartbeat of a long task."""

    result_id = IdField()
    fraction_done = StrictFloatField(min_value=0.0, max_value=1.0)


class SchedulerRequestSerializer(StrictSerializer):
    """``protocol.SchedulerRequest``."""

    protocol = StrictIntegerField(min_value=1, max_value=1000, required=False,
                                  default=protocol.PROTOCOL_VERSION)
    results = ReportedResultSerializer(many=True, required=False, default=list,
                                       max_length=MAX_RESULTS_PER_REQUEST)
    acks = serializers.ListField(child=IdField(), required=False, default=list,
                                 max_length=MAX_IDS_PER_LIST)
    in_progress = serializers.ListField(child=IdField(), required=False, default=list,
                                        max_length=MAX_IDS_PER_LIST)
    in_progress_complete = StrictBooleanField(
        required=False, default=False,
        help_text="`in_progress` and `results` name every task the host holds: the portal "
                  "re-sends those they lack (lost replies) or gives them up when their deadline "
                  "cannot be met")
    progress = TaskProgressSerializer(many=True, required=False, default=list,
                                      max_length=MAX_IDS_PER_LIST)
    free_slots = StrictIntegerField(min_value=0, max_value=MAX_FREE_SLOTS, required=False,
                                    default=0)
    work_seconds = StrictFloatField(min_value=0.0, max_value=MAX_WORK_SECONDS, required=False,
                                    default=0.0)
    slot_queue_seconds = serializers.ListField(
        child=StrictFloatField(min_value=0.0, max_value=MAX_WORK_SECONDS), required=False,
        default=list, max_length=MAX_FREE_SLOTS,
        help_text="per slot of the host, the seconds of work queued there: a task is sent "
                  "only if it can finish before its deadline behind that queue")
    datasets = serializers.ListField(child=Sha256Field(), required=False, default=list,
                                     max_length=MAX_DATASETS)

    def validate_protocol(self, value: int) -> int:
        if value != protocol.PROTOCOL_VERSION:
            raise serializers.ValidationError(
                f"This portal speaks protocol {protocol.PROTOCOL_VERSION}, not {value}. "
                f"Install the matching worker: pipx upgrade {protocol.CLIENT_NAME}")
        return value


# --- the scheduler request's fast path --------------------------------------------------------

_REQUEST_FIELDS = frozenset(SchedulerRequestSerializer._declared_fields)
_REPORT_FIELDS = frozenset(ReportedResultSerializer._declared_fields)
_PROGRESS_FIELDS = frozenset(TaskProgressSerializer._declared_fields)
_SURROGATE = re.compile("[\ud800-\udfff]")


def scheduler_request_fast(data: Any) -> dict[str, Any] | None:
    """What ``SchedulerRequestSerializer`` validates ``data`` to, when ``data`` plainly keeps
    every one of its rules; None at the least doubt, and the serializer then decides (and words
    the errors).

    The scheduler is the busiest endpoint, and the serializer's nested fields cost more than
    the rest of a call that reports thirty results; these checks are the same rules in a few
    plain loops. ``data`` must come from ``json.loads`` (only dict, list, str, int, float, bool
    and None inside). ``tests/apps/workunits/test_scheduler_request_fast.py`` checks on
    generated requests that this never accepts what the serializer refuses and returns exactly
    what it returns.
    """
    if type(data) is not dict or not data.keys() <= _REQUEST_FIELDS:
        return None
    version = data.get("protocol", protocol.PROTOCOL_VERSION)
    if type(version) is not int or version != protocol.PROTOCOL_VERSION:
        return None
    results = _plain_list(data.get("results", []), MAX_RESULTS_PER_REQUEST)
    acks = _id_list(data.get("acks", []))
    in_progress = _id_list(data.get("in_progress", []))
    in_progress_complete = data.get("in_progress_complete", False)
    progress = _plain_list(data.get("progress", []), MAX_IDS_PER_LIST)
    datasets = _plain_list(data.get("datasets", []), MAX_DATASETS)
    free_slots = data.get("free_slots", 0)
    work_seconds = data.get("work_seconds", 0.0)
    slot_queue = _plain_list(data.get("slot_queue_seconds", []), MAX_FREE_SLOTS)
    if (results is None or acks is None or in_progress is None or progress is None
            or type(in_progress_complete) is not bool
            or datasets is None or not _is_int(free_slots, 0, MAX_FREE_SLOTS)
            or not _is_number(work_seconds, 0.0, MAX_WORK_SECONDS) or slot_queue is None
            or not all(_is_number(seconds, 0.0, MAX_WORK_SECONDS) for seconds in slot_queue)):
        return None
    reports = []
    for item in results:
        report = _report(item)
        if report is None:
            return None
        reports.append(report)
    beats = []
    for item in progress:
        if (type(item) is not dict or item.keys() != _PROGRESS_FIELDS
                or not _is_int(item["result_id"], 1, MAX_ID)
                or not _is_number(item["fraction_done"], 0.0, 1.0)):
            return None
        beats.append({"result_id": item["result_id"],
                      "fraction_done": float(item["fraction_done"])})
    for sha in datasets:
        if type(sha) is not str or not SHA256_RE.fullmatch(sha):
            return None
    return {"protocol": version, "results": reports, "acks": acks, "in_progress": in_progress,
            "in_progress_complete": in_progress_complete, "progress": beats,
            "free_slots": free_slots, "work_seconds": float(work_seconds),
            "slot_queue_seconds": [float(seconds) for seconds in slot_queue],
            "datasets": list(datasets)}


def _report(item: Any) -> dict[str, Any] | None:
    if type(item) is not dict or not item.keys() <= _REPORT_FIELDS:
        return None
    result_id = item.get("result_id")
    status = item.get("status")
    error = item.get("error", "")
    cpu_time = item.get("cpu_time", 0.0)
    wall_time = item.get("wall_time", 0.0)
    output = item.get("output")
    if (not _is_int(result_id, 1, MAX_ID) or type(status) is not str
            or status not in ("success", "error") or type(error) is not str
            or len(error) > MAX_ERROR_LENGTH or "\x00" in error
            or (not error.isascii() and _SURROGATE.search(error))
            or not _is_number(cpu_time, 0.0, MAX_TASK_SECONDS)
            or not _is_number(wall_time, 0.0, MAX_TASK_SECONDS)
            or (output is not None and not _plain_output(output))):
        return None
    if status == "success":
        digest = output.get("digest") if output is not None else None
        if type(digest) is not str or not SHA256_RE.fullmatch(digest):
            return None
    else:
        output = None  # an error carries no answer to keep
    return {"result_id": result_id, "status": status, "output": output, "error": error,
            "cpu_time": float(cpu_time), "wall_time": float(wall_time)}


def _is_int(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _is_number(value: Any, low: float, high: float) -> bool:
    # NaN fails the comparison, infinity the bound.
    return (type(value) is float or type(value) is int) and low <= value <= high


def _plain_list(value: Any, max_length: int) -> list[Any] | None:
    return value if type(value) is list and len(value) <= max_length else None


def _id_list(value: Any) -> list[int] | None:
    if type(value) is not list or len(value) > MAX_IDS_PER_LIST:
        return None
    for item in value:
        if not _is_int(item, 1, MAX_ID):
            return None
    return list(value)


def _plain_output(output: Any) -> bool:
    """``BoundedJSONObjectField``'s rules: the walk only checks depth, and one compact
    ``json.dumps`` refuses NaN and infinity, measures the size and shows any NUL as ``\\u0000``
    (a string holding a backslash and "u0000" looks the same: a doubt, so the field decides)."""
    if type(output) is not dict:
        return False
    stack: list[tuple[Any, int]] = [(output, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_OUTPUT_DEPTH:
            return False
        for child in (value.values() if type(value) is dict else value):
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    try:
        text = json.dumps(output, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    # Non-ASCII is escaped, so any surrogate shows as "\\udXXX": a doubt, the field decides.
    return len(text) <= MAX_OUTPUT_BYTES and "\\u0000" not in text and "\\ud" not in text


# --- outputs -----------------------------------------------------------------------------------


class AttachReplySerializer(serializers.Serializer):
    host_id = serializers.IntegerField()
    token = serializers.CharField(help_text="shown once: send it as `Authorization: Token …`")


class HostReplySerializer(serializers.Serializer):
    host_id = serializers.IntegerField()


class HostStatusSerializer(serializers.Serializer):
    """What ``strategy-worker status`` shows of the portal's records for this host."""

    host_id = serializers.IntegerField()
    name = serializers.CharField()
    total_credit = serializers.FloatField()
    rac = serializers.FloatField(help_text="recent average credit (one-week half-life)")
    n_valid = serializers.IntegerField()
    n_invalid = serializers.IntegerField()
    n_errors = serializers.IntegerField()
    in_progress = serializers.IntegerField(help_text="tasks sent and not yet reported")
    pending = serializers.IntegerField(help_text="results reported, waiting for validation")
    speed = serializers.FloatField()


class TaskSerializer(serializers.Serializer):
    """``protocol.Task``."""

    result_id = serializers.IntegerField()
    name = serializers.CharField()
    payload = serializers.JSONField(help_text="the island epoch to run")
    dataset_sha256 = serializers.CharField()
    dataset_url = serializers.CharField()
    dataset_size = serializers.IntegerField()
    deadline = serializers.CharField(help_text="ISO 8601, UTC")
    credit = serializers.FloatField(help_text="granted if the result is validated")
    cost = serializers.IntegerField(help_text="candle-evaluations, an upper bound")


class RejectedResultSerializer(serializers.Serializer):
    result_id = serializers.IntegerField()
    reason = serializers.CharField()


class SchedulerReplySerializer(serializers.Serializer):
    """``protocol.SchedulerReply``."""

    tasks = TaskSerializer(many=True)
    accepted = serializers.ListField(child=serializers.IntegerField(),
                                     help_text="stored: delete them locally")
    rejected = RejectedResultSerializer(many=True, help_text="never report these again")
    abort = serializers.ListField(child=serializers.IntegerField(),
                                  help_text="tasks in progress here that are no longer needed")
    request_delay = serializers.FloatField(help_text="seconds to wait before the next call")
    reason = serializers.ChoiceField(choices=REASONS, allow_null=True,
                                     help_text="why no task was sent; null when tasks were sent")
    message = serializers.CharField(allow_blank=True)


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    detail = serializers.DictField()


class ErrorSerializer(serializers.Serializer):
    """The one error shape of every endpoint (``portal.api``)."""

    error = ErrorBodySerializer()
