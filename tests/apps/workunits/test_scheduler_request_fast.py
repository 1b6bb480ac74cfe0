"""The scheduler request's fast path agrees with its serializer: it never accepts what the
serializer refuses, and what it accepts it returns exactly as the serializer would."""

from __future__ import annotations

import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.workunits.serializers import SchedulerRequestSerializer, scheduler_request_fast

SHA = "ab" * 32
OUTPUT = {"digest": "cd" * 32, "top": [{"fitness": 1.5, "metrics": {"n_trades": 3}}],
          "population": [[1, 2.5, "x"], {"deep": {"er": [None, True]}}], "evaluated": 12}

# Values that break one rule or another when put in place of a well-formed one.
ODD = [None, True, False, 0, -1, 1, 2, 7, 2**63 - 1, 2**63, 10**400, 0.0, 0.5, 1.0, 1.5, -0.0,
       1e8, 1e9, 3e6, float("inf"), float("-inf"), float("nan"), "", "1", " " + SHA, SHA + " ",
       SHA.upper(), SHA, "cd" * 32, "x\x00y", "\ud800", "é", "x" * 4001, "x" * 4000, [], [1],
       {}, {"digest": SHA}, {"digest": "cd" * 32, "n": float("nan")},
       {"digest": "cd" * 32, "s": "a\x00b"}, {"digest": "cd" * 32, "s": "a\\u0000b"},
       {"digest": "cd" * 32, "\x00": 1}, "success", "error", "other"]


def _nested(depth: int) -> dict:
    value: dict = {"digest": "cd" * 32}
    for _ in range(depth):
        value = {"digest": "cd" * 32, "d": [value]}
    return value


ODD += [_nested(15), _nested(16), _nested(17), {"digest": "cd" * 32, "big": "x" * 1_000_001}]


def well_formed(n_results: int, n_ids: int) -> dict:
    return {
        "protocol": 1,
        "results": [{"result_id": 10 + i, "status": "success" if i % 3 else "error",
                     "output": copy.deepcopy(OUTPUT) if i % 3 else None,
                     "error": "" if i % 3 else "boom", "cpu_time": 1.5, "wall_time": 2}
                    for i in range(n_results)],
        "acks": list(range(100, 100 + n_ids)),
        "in_progress": list(range(200, 200 + n_ids)),
        "in_progress_complete": n_ids % 2 == 0,
        "progress": [{"result_id": 200 + i, "fraction_done": i / max(n_ids, 1)}
                     for i in range(n_ids)],
        "free_slots": 4, "work_seconds": 3600.0,
        "slot_queue_seconds": [600 * i for i in range(min(n_ids, 4))],
        "datasets": [SHA],
    }


def _paths(value, path=()):
    """Every place in a request where a value can be swapped or a key dropped or added."""
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*path, index))


def _mutate(request: dict, draw) -> dict:
    paths = list(_paths(request))
    path = draw(st.sampled_from(paths))
    kind = draw(st.sampled_from(["replace", "drop", "add"]))
    if not path:
        return draw(st.sampled_from([[], "x", None, {}, request]))
    parent = request
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if kind == "replace":
        parent[last] = copy.deepcopy(draw(st.sampled_from(ODD)))
    elif kind == "drop":
        del parent[last]
    elif isinstance(parent, dict):
        parent[draw(st.sampled_from(["extra", "digest", "status", "output", "error"]))] = (
            copy.deepcopy(draw(st.sampled_from(ODD))))
    else:
        parent.append(copy.deepcopy(draw(st.sampled_from(ODD))))
    return request


@st.composite
def requests(draw):
    request = well_formed(draw(st.integers(0, 5)), draw(st.integers(0, 4)))
    for _ in range(draw(st.integers(0, 3))):
        request = _mutate(request, draw)
        if not isinstance(request, dict):
            break
    return request


def _serializer(data):
    serializer = SchedulerRequestSerializer(data=copy.deepcopy(data))
    try:
        valid = serializer.is_valid()
    except Exception:  # a crash is a refusal too, for this comparison
        return False, None
    return valid, serializer.validated_data if valid else None


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_the_fast_path_never_disagrees_with_the_serializer(request):
    fast = scheduler_request_fast(copy.deepcopy(request))
    if fast is None:
        return  # the serializer decides: nothing to compare
    valid, validated = _serializer(request)
    assert valid, f"the fast path accepted what the serializer refuses: {request!r}"
    assert fast == validated


def test_the_usual_requests_take_the_fast_path():
    for n_results, n_ids in [(0, 0), (1, 1), (32, 32), (5, 1000)]:
        request = json.loads(json.dumps(well_formed(n_results, n_ids)))
        fast = scheduler_request_fast(request)
        assert fast is not None
        assert fast == _serializer(request)[1]
    assert scheduler_request_fast({}) == _serializer({})[1]
    assert scheduler_request_fast({})["in_progress_complete"] is False


def test_only_a_json_boolean_marks_the_list_complete():
    for value in (1, 0, "true", None, 1.0):
        request = well_formed(0, 1) | {"in_progress_complete": value}
        assert scheduler_request_fast(request) is None
        assert not _serializer(request)[0]


def test_doubtful_requests_are_left_to_the_serializer():
    request = well_formed(2, 1)
    request["results"][1]["output"]["s"] = "back\\u0000slash"  # no NUL, but looks like one
    assert scheduler_request_fast(request) is None
    assert _serializer(request)[0]
    request = well_formed(33, 0)  # too many results: the serializer words the error
    assert scheduler_request_fast(request) is None
    assert not _serializer(request)[0]
