"""Hostile bodies sent to every worker endpoint that takes one.

Each is refused with a 4xx in the one error shape (``{"error": {"code", "message",
"detail"}}``), never a 500, and leaves the database as it was: no host attached, no host
renamed, no result stored, acknowledged or moved.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.accounts.models import Host
from apps.workunits.models import Result
from apps.workunits.states import ServerState
from tests.factories import make_workunit
from tests.security.helpers import (
    ATTACH,
    DIGEST,
    HOST,
    HOST_INFO,
    SCHEDULER,
    api,
    assert_error,
    post_raw,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def replica(ada):
    """A result in progress on ada's host, ready to be reported."""
    workunit = make_workunit(replicas=1)
    Result.objects.filter(workunit=workunit).update(
        server_state=ServerState.IN_PROGRESS, host=ada.host, volunteer=ada,
        sent_time=timezone.now(), report_deadline=timezone.now() + timedelta(hours=1))
    return workunit.results.get()


def _state() -> dict[str, Any]:
    """Everything a hostile request could have changed."""
    return {
        "hosts": list(Host.objects.order_by("pk").values(
            "pk", "name", "os", "arch", "python_version", "numba_version", "cpu_count",
            "memory_mb", "client_version", "speed", "retired")),
        "results": list(Result.objects.order_by("pk").values(
            "pk", "server_state", "outcome", "output", "error_message", "acked_time",
            "fraction_done", "received_time", "cpu_time", "wall_time")),
    }


def _report(result_id: int, **fields: Any) -> dict[str, Any]:
    return {"result_id": result_id, "status": "success",
            "output": {"digest": DIGEST, "top": []}, **fields}


def _bodies(account_key: str, result_id: int) -> dict[str, dict[str, Any]]:
    """A valid body for each endpoint, to be spoiled one field at a time."""
    return {
        ATTACH: {"account_key": account_key, "host": dict(HOST_INFO)},
        HOST: dict(HOST_INFO),
        SCHEDULER: {"results": [_report(result_id)], "acks": [result_id],
                    "progress": [{"result_id": result_id, "fraction_done": 0.5}],
                    "free_slots": 1, "work_seconds": 60.0},
    }


def _send(ada: Any, url: str, body: Any, content_type: str = "application/json"):
    client = api() if url == ATTACH else api(ada.host)
    return post_raw(client, url, body, content_type)


def _refused(ada: Any, url: str, body: Any, *, status: int | None = None,
             code: str | None = None, content_type: str = "application/json") -> dict:
    before = _state()
    response = _send(ada, url, body, content_type)
    error = assert_error(response, status, code)
    assert _state() == before, "a refused request changed the database"
    return error


def test_the_valid_bodies_are_accepted(ada, replica):
    """The baseline the other tests spoil: each body, unspoiled, works."""
    for url, body in _bodies(ada.account_key, replica.pk).items():
        response = _send(ada, url, body)
        assert response.status_code in (200, 201), (url, response.content)
    assert Result.objects.get(pk=replica.pk).server_state == ServerState.OVER


# --- size and shape ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", [ATTACH, HOST, SCHEDULER])
def test_oversized_bodies_get_413(ada, url, settings):
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = json.dumps({"padding": "x" * (limit + 1)})

    error = _refused(ada, url, body, status=413, code="request_too_large")

    assert f"{limit:,}" in error["message"]


@pytest.mark.parametrize("url", [ATTACH, HOST, SCHEDULER])
def test_a_body_longer_than_its_content_length_is_cut_there_not_trusted(ada, url):
    """The declared length bounds what is read: the tail past it is never parsed."""
    client = api() if url == ATTACH else api(ada.host)
    before = _state()
    response = client.generic("POST", url, '{"a": 1}' + " " * 10, content_type="application/json",
                              CONTENT_LENGTH="4")
    assert_error(response, 400, "parse_error")
    assert _state() == before


@pytest.mark.parametrize("url", [ATTACH, HOST, SCHEDULER])
@pytest.mark.parametrize("raw", [
    "{", '{"a": 1', "{'a': 1}", '{"a": 1}}', "nul", "[1, 2,]", '{"a": 01}', "\ufeff{}",
    b"\xff\xfe{\x00}\x00", b'{"name": "\xc3\x28"}', "{" * 50_000 + "}" * 50_000,
    "[" * 5_000 + "]" * 5_000, "1" * 5_000,
], ids=lambda raw: repr(raw[:12]))
def test_malformed_json_is_a_parse_error(ada, url, raw):
    error = _refused(ada, url, raw)
    assert error["code"] in {"parse_error", "validation_error"}, error


@pytest.mark.parametrize("url", [ATTACH, HOST, SCHEDULER])
@pytest.mark.parametrize("raw", ["null", "true", "1", '"text"', "[]", "[{}]", "1e308"])
def test_json_that_is_not_an_object_is_refused(ada, url, raw):
    _refused(ada, url, raw, status=400)


@pytest.mark.parametrize("url", [ATTACH, HOST, SCHEDULER])
@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_tokens_are_parse_errors(ada, replica, url, token):
    body = json.dumps(_bodies(ada.account_key, replica.pk)[url])
    for number in ('"speed": 2500000.0', '"work_seconds": 60.0'):
        body = body.replace(number, number.split(":")[0] + f": {token}")

    _refused(ada, url, body, status=400, code="parse_error")


@pytest.mark.parametrize("where", ["fitness", "nested"])
@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
def test_non_finite_numbers_inside_an_output_are_refused(ada, replica, token, where):
    inner = f'{{"fitness": {token}}}' if where == "fitness" else f'[[[{{"x": [{token}]}}]]]'
    raw = (f'{{"results": [{{"result_id": {replica.pk}, "status": "success", '
           f'"output": {{"digest": "{DIGEST}", "top": {inner}}}}}]}}')

    _refused(ada, SCHEDULER, raw, status=400)


def test_deep_nesting_inside_an_output_is_refused(ada, replica):
    deep: Any = 1
    for _ in range(200):
        deep = [deep]
    body = {"results": [_report(replica.pk, output={"digest": DIGEST, "deep": deep})]}

    error = _refused(ada, SCHEDULER, body, status=400, code="validation_error")

    assert "deeper" in json.dumps(error["detail"])


@pytest.mark.parametrize("url", [ATTACH, HOST, SCHEDULER])
def test_many_unknown_fields_are_refused_and_the_answer_stays_small(ada, url):
    body = {f"field{i}": i for i in range(20_000)}

    response = _send(ada, url, body)

    assert_error(response, 400, "validation_error")
    assert len(response.content) < 2_000


# --- numbers -----------------------------------------------------------------------------------

HUGE = [2**63, 2**70, -(2**70), 10**400, 1e308, -1e308, 1.5, True, "3", None, [], {}]


@pytest.mark.parametrize("value", HUGE, ids=repr)
@pytest.mark.parametrize(("url", "path"), [
    (ATTACH, ("host", "cpu_count")), (ATTACH, ("host", "memory_mb")),
    (ATTACH, ("host", "speed")), (HOST, ("cpu_count",)), (HOST, ("memory_mb",)),
    (HOST, ("speed",)), (SCHEDULER, ("free_slots",)), (SCHEDULER, ("work_seconds",)),
    (SCHEDULER, ("acks", 0)), (SCHEDULER, ("results", 0, "result_id")),
    (SCHEDULER, ("results", 0, "cpu_time")), (SCHEDULER, ("progress", 0, "fraction_done")),
    (SCHEDULER, ("progress", 0, "result_id")),
], ids=lambda value: value if isinstance(value, str) else ".".join(map(str, value)))
def test_huge_or_mistyped_numbers_are_refused(ada, replica, url, path, value):
    body = _bodies(ada.account_key, replica.pk)[url]
    if value == 1.5 and path[-1] in {"speed", "work_seconds", "cpu_time"}:
        value = -1.5  # 1.5 is a fine float there; a negative one is not
    if value == 1.5 and path[-1] == "fraction_done":
        value = 1.5000001
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value

    _refused(ada, url, body, status=400, code="validation_error")


@pytest.mark.parametrize("number", [2**70, -(2**70), 1e308, 5e-324, -0.0, 10**300])
def test_huge_but_finite_numbers_inside_an_output_are_stored(ada, replica, number):
    output = {"digest": DIGEST, "top": [{"fitness": number, "trades": 3}]}

    response = _send(ada, SCHEDULER, {"results": [_report(replica.pk, output=output)]})

    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == [replica.pk]
    stored = Result.objects.get(pk=replica.pk).output["top"][0]["fitness"]
    # PostgreSQL's jsonb keeps numbers as decimals: 1e308 comes back as the integer 10**308.
    assert stored == number or float(stored) == float(number)


def test_an_id_at_the_top_of_the_bigint_range_is_simply_not_this_hosts(ada):
    body = {"results": [_report(2**63 - 1)], "acks": [2**63 - 1], "in_progress": [2**63 - 1]}

    response = _send(ada, SCHEDULER, body)

    assert response.status_code == 200, response.content
    assert response.json()["rejected"] == [{"result_id": 2**63 - 1,
                                            "reason": "not_sent_to_this_host"}]


# --- strings -----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [ATTACH, HOST, SCHEDULER])
@pytest.mark.parametrize("raw", [
    '{"\\ud800": 1}',
    '{"results": [{"\\udfff": 1}]}',
    '{"host": {"\\ud83d": 1}}',
    '{"results": [{"result_id": 1, "status": "\\ud800"}]}',
    '{"account_key": "\\udc00", "host": {"name": "\\ud800"}}',
], ids=["top-key", "result-key", "host-key", "choice", "values"])
def test_lone_surrogates_are_refused_not_echoed_into_a_500(ada, url, raw):
    """JSON may escape half a UTF-16 pair: Python parses it, UTF-8 cannot encode it. An error
    message quoting it (an unknown field's name, a refused choice) must still render."""
    error = _refused(ada, url, raw, status=400, code="validation_error")
    json.dumps(error, ensure_ascii=False).encode("utf-8")  # encodable: no lone surrogate left


@pytest.mark.parametrize("text", ["\\ud800", "a\\udfffb", "\\ud83d"])
@pytest.mark.parametrize("where", ["value", "key"])
def test_lone_surrogates_inside_an_output_are_refused(ada, replica, text, where):
    output = (f'{{"digest": "{DIGEST}", "note": "{text}"}}' if where == "value" else
              f'{{"digest": "{DIGEST}", "{text}": 1}}')
    raw = f'{{"results": [{{"result_id": {replica.pk}, "status": "success", "output": {output}}}]}}'

    _refused(ada, SCHEDULER, raw, status=400, code="validation_error")


@pytest.mark.parametrize("where", ["value", "key"])
def test_an_emoji_escaped_as_a_surrogate_pair_inside_an_output_is_fine(ada, replica, where):
    """The pair is one character (U+1F600): refusing lone surrogates must not refuse it."""
    output = (f'{{"digest": "{DIGEST}", "note": "\\ud83d\\ude00"}}' if where == "value" else
              f'{{"digest": "{DIGEST}", "\\ud83d\\ude00": 1}}')
    raw = f'{{"results": [{{"result_id": {replica.pk}, "status": "success", "output": {output}}}]}}'

    response = _send(ada, SCHEDULER, raw)

    assert response.status_code == 200, response.content
    stored = Result.objects.get(pk=replica.pk).output
    assert "\U0001f600" in json.dumps(stored, ensure_ascii=False)


@pytest.mark.parametrize("url", [ATTACH, HOST])
@pytest.mark.parametrize("field", ["name", "os", "arch", "python_version", "client_version"])
@pytest.mark.parametrize("text", ["a\x00b", "\x00", "x" * 101, "a\ud800", 7, ["x"], {"x": 1}],
                         ids=["nul-inside", "nul", "too-long", "surrogate", "int", "list", "obj"])
def test_host_strings_with_nul_surrogates_wrong_types_or_too_long_are_refused(
        ada, url, field, text):
    body = _bodies(ada.account_key, 1)[url]
    (body["host"] if url == ATTACH else body)[field] = text

    _refused(ada, url, body, status=400, code="validation_error")


@pytest.mark.parametrize("url", [ATTACH, HOST])
@pytest.mark.parametrize("name", [
    "evil\u202etxt.exe",  # RIGHT-TO-LEFT OVERRIDE: reverses what follows on every page
    "a\u2066b\u2069",  # LEFT-TO-RIGHT ISOLATE … POP DIRECTIONAL ISOLATE
    "\x1b[31mred\x1b[0m",  # a terminal escape sequence
    "two\nlines", "tab\there", "bell\x07", "zero\u200bwidth", "\ufeffbom",
], ids=["rlo", "isolate", "ansi", "newline", "tab", "bell", "zwsp", "bom"])
def test_host_names_with_control_or_bidi_characters_are_refused(ada, url, name):
    body = _bodies(ada.account_key, 1)[url]
    (body["host"] if url == ATTACH else body)["name"] = name

    _refused(ada, url, body, status=400, code="invalid_host_info")


@pytest.mark.parametrize("name", ["Ада's 🖥️ rig", "محطة العمل", "מחשב", "👩🏽‍💻 station",
                                  "Zürich-Ⅻ", "東京の計算機"])
def test_host_names_in_any_script_with_emoji_are_kept_exactly(ada, name):
    response = _send(ada, ATTACH, {"account_key": ada.account_key,
                                   "host": {**HOST_INFO, "name": name}})

    assert response.status_code == 201, response.content
    assert Host.objects.get(pk=response.json()["host_id"]).name == name
    status = api(ada.host).get(HOST)
    assert status.status_code == 200


# --- content types -----------------------------------------------------------------------------


@pytest.mark.parametrize("url", [ATTACH, HOST, SCHEDULER])
@pytest.mark.parametrize("content_type", [
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz", "text/plain",
    "application/xml", "text/html", "application/octet-stream", "application/jsonx",
    "application/json-patch+json", "",
])
def test_anything_but_json_is_unsupported_media_type(ada, replica, url, content_type):
    body = json.dumps(_bodies(ada.account_key, replica.pk)[url])

    _refused(ada, url, body, status=415, code="unsupported_media_type",
             content_type=content_type)


@pytest.mark.parametrize("url", [ATTACH, HOST, SCHEDULER])
@pytest.mark.parametrize("charset", ["utf-16", "utf-32", "cp500"])
def test_a_charset_that_garbles_the_body_is_a_parse_error(ada, replica, url, charset):
    """(An unknown charset is ignored, as Django does: the body is read as UTF-8.)"""
    body = json.dumps(_bodies(ada.account_key, replica.pk)[url])

    _refused(ada, url, body, status=400, content_type=f"application/json; charset={charset}")


@pytest.mark.parametrize("url", [ATTACH, HOST, SCHEDULER])
@pytest.mark.parametrize("method", ["PUT", "PATCH", "TRACE"])
def test_methods_an_endpoint_does_not_have_are_405_in_the_error_shape(ada, url, method):
    client = api() if url == ATTACH else api(ada.host)
    before = _state()

    response = client.generic(method, url, "{}", content_type="application/json")

    assert_error(response, 405, "method_not_allowed")
    assert _state() == before


@pytest.mark.parametrize("path", ["/api/v1/scheduler", "/api/v1/nope/", "/api/v1/datasets/",
                                  "/api/v1/datasets/%2e%2e%2f/", "/api/v1/host/x/",
                                  "/api/v1/" + "a" * 5000])
def test_paths_the_api_does_not_have_are_404_in_the_error_shape(ada, path):
    response = api(ada.host).post(path, "{}", content_type="application/json")
    error = assert_error(response, 404, "not_found")
    if path == "/api/v1/scheduler":
        assert "final slash" in error["message"]


@pytest.mark.parametrize("version", ["1.0\x00x", "1.0\x1b[31m", "1.0\x7f"])
def test_a_user_agent_version_with_control_characters_is_not_stored(ada, version):
    from rest_framework.test import APIClient

    client = APIClient(HTTP_USER_AGENT=f"strategy-worker/{version} (protocol 1)")
    client.credentials(HTTP_AUTHORIZATION=f"Token {ada.host.token}")

    response = client.post(SCHEDULER, {}, format="json")

    assert response.status_code == 200
    ada.host.refresh_from_db()
    assert ada.host.client_version.isprintable(), repr(ada.host.client_version)
