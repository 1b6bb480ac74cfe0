"""Schemathesis runs the worker API's own OpenAPI schema against the portal.

The schema is the one the portal serves (``/api/v1/schema/``, drf-spectacular); requests go
through the real WSGI application (middleware, authentication, throttles, the error handler)
with a real host token, in this test's database transaction. Every operation gets schema-valid
and schema-violating requests (``mode: all``), bounded by ``MAX_EXAMPLES`` per operation and
a per-request deadline, and each response must be:

- never a server error (``not_a_server_error``);
- a documented status code with a documented content type;
- shaped as the schema says (``response_schema_conformance``), errors included;
- a 4xx for a request the schema forbids (``negative_data_rejection``).

A fresh host (and its token) is made for every request: ``DELETE /host/`` retires the host it
is sent for, and a retired token would turn every later request into a 401.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from apps.workunits.models import Result
from apps.workunits.states import ServerState
from tests.factories import make_campaign, make_host, make_volunteer, make_workunit

pytestmark = pytest.mark.django_db

MAX_EXAMPLES = 150  # per operation: about 1,400 requests, 20 s on SQLite, 30 s on PostgreSQL
DEADLINE = timedelta(seconds=5)  # per request; a typical one takes a few milliseconds
CALLS: defaultdict[str, Counter[str]] = defaultdict(Counter)  # the figures printed at the end

CONFIG = schemathesis.Config.from_dict({
    "generation": {"mode": "all", "max-examples": MAX_EXAMPLES},
    "checks": {"enabled": False,
               **{name: {"enabled": True} for name in (
                   "not_a_server_error", "status_code_conformance", "content_type_conformance",
                   "response_schema_conformance", "negative_data_rejection")}},
})
# Loaded at collection, through the portal itself; schemathesis's WSGI client says "localhost".
with override_settings(ALLOWED_HOSTS=["localhost"]):
    schema = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json",
                                            get_wsgi_application(), config=CONFIG)


@pytest.fixture(autouse=True)
def _fuzzing_settings(settings):
    # As Django's test client does: a request must not close the connection that holds this
    # test's transaction (its autocommit is off, which close_old_connections takes for broken).
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    settings.ALLOWED_HOSTS = ["localhost"]
    # The fuzzer sends far more than a real host would: its throttles must not hide the API.
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {
        scope: "100000/minute" for scope in settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]}}
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def campaign():
    """Work on offer, and a data set that exists (its file too)."""
    campaign = make_campaign()
    for _ in range(3):
        make_workunit(campaign=campaign)
    return campaign


def _aim_at_real_rows(case: Any, *, volunteer: Any, replica: Result, campaign: Any) -> None:
    """Point half of the schema-valid requests at rows that exist: the real account key, a
    result this host really holds, a data set really stored. Random values alone would only
    ever reach the "not found" branches."""
    if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
        return  # a schema-violating request stays exactly as generated
    body = case.body if isinstance(case.body, dict) else {}
    coin = len(json.dumps(body, default=str)) % 2  # deterministic, about half of the cases
    if case.operation.path == "/api/v1/attach/" and coin and "account_key" in body:
        body["account_key"] = volunteer.account_key
    elif case.operation.path == "/api/v1/scheduler/" and coin:
        for field in ("results", "progress"):
            if body.get(field):
                body[field][0]["result_id"] = replica.pk
        for field in ("acks", "in_progress"):
            if body.get(field):
                body[field][0] = replica.pk
    elif case.operation.path == "/api/v1/datasets/{sha256}/":
        sha256 = str(case.path_parameters.get("sha256", ""))
        if sha256[:1] in "02468ace":
            case.path_parameters["sha256"] = campaign.dataset.sha256


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=DEADLINE, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_the_worker_api_keeps_its_schema_and_never_fails(case, campaign):
    volunteer = make_volunteer()
    host = make_host(volunteer=volunteer)
    workunit = make_workunit(campaign=campaign, replicas=1)
    replica = workunit.results.get()
    Result.objects.filter(pk=replica.pk).update(
        server_state=ServerState.IN_PROGRESS, host=host, volunteer=volunteer,
        sent_time=timezone.now(), report_deadline=timezone.now() + timedelta(hours=1))
    _aim_at_real_rows(case, volunteer=volunteer, replica=replica, campaign=campaign)

    # buffered: read the body and close it, as a WSGI server does (a file download included).
    response = case.call_and_validate(headers={"Authorization": f"Token {host.token}"},
                                      buffered=True)

    mode = case.meta.generation.mode.value if case.meta is not None else "explicit"
    CALLS[f"{case.operation.method.upper()} {case.operation.path}"][
        f"{mode} {response.status_code}"] += 1


@pytest.fixture(scope="module", autouse=True)
def _report_figures(request):
    """One line per operation in the test output: requests sent, by generation mode and status."""
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None or not CALLS:
        return
    total = sum(sum(counts.values()) for counts in CALLS.values())
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\nschemathesis: {len(CALLS)} operations, {total} requests "
                            f"(by generation mode and status):")
        for operation, counts in sorted(CALLS.items()):
            shown = ", ".join(f"{key}: {count}" for key, count in sorted(counts.items()))
            reporter.write_line(f"  {operation}: {sum(counts.values())} ({shown})")


def test_the_schema_forbids_the_unknown_fields_the_api_refuses():
    components = schema.raw_schema["components"]["schemas"]
    requests = {name: body for name, body in components.items() if name.endswith("Request")}
    assert requests
    assert {name: body.get("additionalProperties") for name, body in requests.items()} == {
        name: False for name in requests}
