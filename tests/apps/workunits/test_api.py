"""The worker API over HTTP (Django's test client): contract, auth, validation, throttles."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.models import Host
from apps.workunits.models import Result
from apps.workunits.states import ServerState
from tests.api import (
    ATTACH,
    DIGEST,
    HOST,
    HOST_INFO,
    SCHEDULER,
    assert_error,
    post_json,
    worker,
)
from tests.factories import make_dataset, make_host, make_volunteer, make_workunit
from worker_client import protocol

pytestmark = pytest.mark.django_db

@pytest.fixture(autouse=True)
def isolated(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.MIN_CLIENT_VERSION = "0.1.0"


# --- attach and host update --------------------------------------------------------------------


def test_attach_returns_a_host_token_once_and_stores_only_its_hash():
    volunteer = make_volunteer()

    response = post_json(worker(), ATTACH, {"account_key": volunteer.account_key,
                                            "host": HOST_INFO})

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"host_id", "token"}
    host = Host.objects.get(pk=body["host_id"])
    assert host.volunteer == volunteer
    assert host.token_hash == hashlib.sha256(body["token"].encode()).hexdigest()
    assert body["token"] not in json.dumps(list(Host.objects.values()), default=str)
    assert (host.name, host.cpu_count, host.speed) == ("rig", 8, 2.5e6)
    # The token works at once.
    host.token = body["token"]
    assert post_json(worker(host), SCHEDULER, {}).status_code == 200


def test_attach_refuses_a_wrong_account_key():
    make_volunteer()

    response = post_json(worker(), ATTACH, {"account_key": "nope", "host": HOST_INFO})

    assert_error(response, 403, "invalid_account_key")
    assert not Host.objects.exists()


def test_attach_validates_the_host_info():
    volunteer = make_volunteer()

    response = post_json(worker(), ATTACH, {"account_key": volunteer.account_key,
                                            "host": {**HOST_INFO, "cpu_count": "8"}})

    error = assert_error(response, 400, "validation_error")
    assert "cpu_count" in error["detail"]["host"]


def test_host_update_records_what_the_host_says():
    host = make_host()

    response = post_json(worker(host), HOST, {**HOST_INFO, "name": "renamed", "speed": 7.0})

    assert response.status_code == 200
    assert response.json() == {"host_id": host.pk}
    host.refresh_from_db()
    assert (host.name, host.speed, host.memory_mb) == ("renamed", 7.0, 16000)


# --- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer abc", "Token", "Token a b",
                                    "Token not-a-real-token"])
def test_missing_or_bad_tokens_get_401_in_the_error_shape(header):
    client = worker()
    if header is not None:
        client.credentials(HTTP_AUTHORIZATION=header)

    response = post_json(client, SCHEDULER, {})

    error = assert_error(response, 401)
    assert error["code"] in {"not_authenticated", "authentication_failed"}
    assert response["WWW-Authenticate"] == "Token"


def test_a_retired_host_is_refused():
    host = make_host(retired=True)

    response = post_json(worker(host), SCHEDULER, {})

    assert_error(response, 401, "host_retired")


# --- scheduler over HTTP -----------------------------------------------------------------------


def test_a_full_round_trip_speaks_the_protocol():
    workunit = make_workunit()
    host = make_host(speed=1e6)
    request = protocol.SchedulerRequest(free_slots=2, work_seconds=600.0,
                                        datasets=[workunit.campaign.dataset.sha256])

    response = post_json(worker(host), SCHEDULER, request.to_dict())

    assert response.status_code == 200, response.content
    reply = protocol.SchedulerReply.from_dict(response.json())
    [task] = reply.tasks  # one replica per volunteer per work unit
    sha = workunit.campaign.dataset.sha256
    assert task.dataset_url == f"http://testserver/api/v1/datasets/{sha}/"
    assert task.payload == workunit.payload
    assert reply.reason is None

    report = protocol.SchedulerRequest(
        results=[protocol.ReportedResult(result_id=task.result_id, status="success",
                                         output={"digest": DIGEST}, cpu_time=1.0, wall_time=1.0)],
        acks=[task.result_id])
    again = protocol.SchedulerReply.from_dict(
        post_json(worker(host), SCHEDULER, report.to_dict()).json())

    assert again.accepted == [task.result_id]
    assert Result.objects.get(pk=task.result_id).server_state == ServerState.OVER


def test_the_reply_is_exactly_what_its_output_serializer_renders():
    """The scheduler's reply skips SchedulerReplySerializer (it is the busiest endpoint): the
    service's dict must already be that serializer's rendering, for tasks, rejections and
    refusals alike."""
    from apps.workunits.serializers import SchedulerReplySerializer

    workunits = [make_workunit() for _ in range(3)]
    host = make_host()
    sha = workunits[0].campaign.dataset.sha256
    first = post_json(worker(host), SCHEDULER, {"free_slots": 3, "work_seconds": 900.0,
                                                "datasets": [sha]})
    tasks = first.json()["tasks"]
    second = post_json(worker(host), SCHEDULER, {
        "results": [{"result_id": tasks[0]["result_id"], "status": "success",
                     "output": {"digest": DIGEST}}, {"result_id": 999_999, "status": "error"}],
        "acks": [t["result_id"] for t in tasks], "free_slots": 0})
    for response in (first, second):
        assert response.status_code == 200, response.content
        body = response.json()
        assert json.dumps(body) == json.dumps(SchedulerReplySerializer(body).data)
    assert len(tasks) == 3 and second.json()["rejected"] and second.json()["reason"]


def test_an_old_client_is_told_to_upgrade(settings):
    settings.MIN_CLIENT_VERSION = "0.2.0"
    make_workunit()
    host = make_host()

    response = post_json(worker(host, version="0.1.9"), SCHEDULER, {"free_slots": 1,
                                                                    "work_seconds": 60.0})

    body = response.json()
    assert response.status_code == 200
    assert body["tasks"] == []
    assert body["reason"] == protocol.REASON_CLIENT_TOO_OLD
    assert "pipx upgrade strategy-worker" in body["message"]


def test_without_a_user_agent_the_version_attached_counts(settings):
    settings.MIN_CLIENT_VERSION = "0.2.0"
    host = make_host(client_version="0.3.0")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {host.token}")

    body = post_json(client, SCHEDULER, {"free_slots": 1, "work_seconds": 60.0}).json()

    assert body["reason"] == protocol.REASON_NO_WORK


def test_a_host_cannot_report_another_hosts_result():
    workunit = make_workunit()
    owner, intruder = make_host(), make_host()
    replica = workunit.results.first()
    Result.objects.filter(pk=replica.pk).update(server_state=ServerState.IN_PROGRESS, host=owner,
                                                sent_time=timezone.now())

    body = post_json(worker(intruder), SCHEDULER, {"results": [
        {"result_id": replica.pk, "status": "success", "output": {"digest": DIGEST}}]}).json()

    assert body["accepted"] == []
    assert body["rejected"] == [{"result_id": replica.pk, "reason": "not_sent_to_this_host"}]
    assert Result.objects.get(pk=replica.pk).server_state == ServerState.IN_PROGRESS


# --- body validation ---------------------------------------------------------------------------


def report(**fields):
    return {"result_id": 1, "status": "success", "output": {"digest": DIGEST}, **fields}


@pytest.mark.parametrize(("body", "field"), [
    ({"free_slots": "3"}, "free_slots"),
    ({"free_slots": True}, "free_slots"),
    ({"free_slots": 2.0}, "free_slots"),
    ({"free_slots": -1}, "free_slots"),
    ({"free_slots": 10**30}, "free_slots"),
    ({"work_seconds": "60"}, "work_seconds"),
    ({"work_seconds": 1e300}, "work_seconds"),
    ({"acks": [0]}, "acks"),
    ({"acks": "1,2"}, "acks"),
    ({"in_progress": [2**64]}, "in_progress"),
    ({"in_progress_complete": 1}, "in_progress_complete"),
    ({"slot_queue_seconds": [-1.0]}, "slot_queue_seconds"),
    ({"slot_queue_seconds": ["60"]}, "slot_queue_seconds"),
    ({"slot_queue_seconds": [1e9]}, "slot_queue_seconds"),
    ({"slot_queue_seconds": 60.0}, "slot_queue_seconds"),
    ({"slot_queue_seconds": [0.0] * 257}, "slot_queue_seconds"),
    ({"in_progress_complete": "true"}, "in_progress_complete"),
    ({"in_progress_complete": None}, "in_progress_complete"),
    ({"datasets": ["not-a-sha"]}, "datasets"),
    ({"protocol": 2}, "protocol"),
    ({"free_slot": 1}, "free_slot"),
    ({"results": [report()] * 33}, "results"),
    ({"results": [report(result_id="1")]}, "results"),
    ({"results": [report(status="ok")]}, "results"),
    ({"results": [report(output=None)]}, "results"),
    ({"results": [report(output={"digest": "x"})]}, "results"),
    ({"results": [report(output=[1, 2])]}, "results"),
    ({"results": [report(cpu_time=-1.0)]}, "results"),
    ({"results": [report(wall_time=1e20)]}, "results"),
    ({"results": [report(error="x" * 5000, status="error")]}, "results"),
    ({"results": [report(extra=1)]}, "results"),
    ([], "non_field_errors"),
])
def test_bad_bodies_are_refused_with_the_field_named(body, field):
    response = post_json(worker(make_host()), SCHEDULER, body)

    error = assert_error(response, 400, "validation_error")
    assert field in error["detail"], error


@pytest.mark.parametrize("raw", [
    '{"work_seconds": NaN}',
    '{"work_seconds": Infinity}',
    '{"work_seconds": -Infinity}',
    '{"free_slots": 1,',
    "[" * 100_000 + "]" * 100_000,
    b'{"free_slots": "\xff"}',
])
def test_malformed_json_is_a_parse_error(raw):
    response = post_json(worker(make_host()), SCHEDULER, raw)

    assert_error(response, 400, "parse_error")


def test_numbers_too_large_for_a_float_are_refused():
    # 1e400 is valid JSON but parses to infinity, here deep inside a result's output.
    output = json.dumps({"digest": DIGEST, "top": [{"fitness": 1.5}]}).replace("1.5", "1e400")
    raw = f'{{"results": [{{"result_id": 1, "status": "success", "output": {output}}}]}}'

    error = assert_error(post_json(worker(make_host()), SCHEDULER, raw), 400, "validation_error")

    assert "finite" in json.dumps(error["detail"])


@pytest.mark.parametrize("output", [{"digest": DIGEST, "note": "a\u0000b"},
                                    {"digest": DIGEST, "a\u0000": 1}])
def test_nul_characters_in_an_output_are_refused(output):
    response = post_json(worker(make_host()), SCHEDULER, {"results": [report(output=output)]})

    error = assert_error(response, 400, "validation_error")
    assert "NUL" in json.dumps(error["detail"])


def test_an_output_over_a_megabyte_is_refused():
    big = {"digest": DIGEST, "blob": "x" * 1_100_000}

    response = post_json(worker(make_host()), SCHEDULER, {"results": [report(output=big)]})

    error = assert_error(response, 400, "validation_error")
    assert "bytes" in json.dumps(error["detail"])


def test_bodies_over_the_upload_limit_are_refused(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000

    response = post_json(worker(make_host()), SCHEDULER, {"datasets": ["a" * 64] * 30})

    assert_error(response, 413, "request_too_large")


def test_only_json_is_accepted():
    response = worker(make_host()).post(SCHEDULER, data="free_slots=1",
                                        content_type="application/x-www-form-urlencoded")

    assert_error(response, 415)


# --- throttling --------------------------------------------------------------------------------


def test_throttled_calls_get_429_in_the_error_shape(settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {
        **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "scheduler": "2/minute"}}
    host, other = make_host(), make_host()

    statuses = [post_json(worker(host), SCHEDULER, {}).status_code for _ in range(3)]
    throttled = post_json(worker(host), SCHEDULER, {})

    assert statuses == [200, 200, 429]
    error = assert_error(throttled, 429, "throttled")
    assert int(throttled["Retry-After"]) > 0
    assert error["detail"]["retry_after"] > 0
    assert post_json(worker(other), SCHEDULER, {}).status_code == 200  # counted per host


def test_attach_is_throttled_per_client_address(settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {
        **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "attach": "1/hour"}}

    first = post_json(worker(), ATTACH, {"account_key": "x", "host": HOST_INFO})
    second = post_json(worker(), ATTACH, {"account_key": "x", "host": HOST_INFO})

    assert first.status_code == 403
    assert_error(second, 429, "throttled")


# --- data set download -------------------------------------------------------------------------


def test_a_data_set_downloads_with_its_checksum_and_etag():
    content = bytes(range(256)) * 40
    dataset = make_dataset(content=content)
    sha = hashlib.sha256(content).hexdigest()

    response = worker(make_host()).get(f"/api/v1/datasets/{sha}/",
                                       HTTP_ACCEPT="application/octet-stream")

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == content
    response.close()
    assert response["X-Checksum-Sha256"] == sha == dataset.sha256
    assert response["ETag"] == f'"{sha}"'
    assert response["Content-Type"] == "application/octet-stream"
    assert int(response["Content-Length"]) == len(content)


@pytest.mark.parametrize("if_none_match", ['"{sha}"', 'W/"{sha}"', '"other", "{sha}"', "*"])
def test_a_current_copy_gets_304(if_none_match):
    dataset = make_dataset()

    response = worker(make_host()).get(
        f"/api/v1/datasets/{dataset.sha256}/",
        HTTP_IF_NONE_MATCH=if_none_match.format(sha=dataset.sha256))

    assert response.status_code == 304
    assert response["ETag"] == f'"{dataset.sha256}"'
    assert response.content == b""


def test_a_stale_etag_gets_the_file():
    dataset = make_dataset()

    response = worker(make_host()).get(f"/api/v1/datasets/{dataset.sha256}/",
                                       HTTP_IF_NONE_MATCH=f'"{"0" * 64}"')

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == dataset.file.open("rb").read()
    response.close()
    dataset.file.close()


@pytest.mark.parametrize("sha", ["0" * 64, "not-a-sha"])
def test_unknown_data_sets_are_404_in_the_error_shape(sha):
    response = worker(make_host()).get(f"/api/v1/datasets/{sha}/",
                                       HTTP_ACCEPT="application/octet-stream")

    assert_error(response, 404, "not_found")


def test_downloads_need_a_host_token():
    dataset = make_dataset()

    response = worker().get(f"/api/v1/datasets/{dataset.sha256}/")

    assert_error(response, 401, "not_authenticated")


# --- OpenAPI -----------------------------------------------------------------------------------


def test_the_openapi_schema_generates_without_warnings(tmp_path):
    target = tmp_path / "schema.yaml"

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target),
                 stderr=io.StringIO())

    schema = target.read_text()
    for path in ("/api/v1/attach/", "/api/v1/host/", "/api/v1/scheduler/",
                 "/api/v1/datasets/{sha256}/"):
        assert path in schema
    assert "hostToken" in schema


def test_the_schema_and_docs_are_served(client):
    schema = client.get("/api/v1/schema/?format=json")
    docs = client.get("/api/v1/docs/")

    assert schema.status_code == 200
    assert "/api/v1/scheduler/" in schema.json()["paths"]
    assert docs.status_code == 200
    assert b"/api/v1/scheduler/" in docs.content and b"host token" in docs.content


def test_deadlines_are_iso_utc():
    make_workunit(delay_bound=120)

    body = post_json(worker(make_host()), SCHEDULER, {"free_slots": 1, "work_seconds": 1.0}).json()

    deadline = timezone.datetime.fromisoformat(body["tasks"][0]["deadline"])
    assert deadline.utcoffset() == timedelta(0)
