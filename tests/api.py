"""What tests of the worker API share: its URLs, a host's description, a client speaking as a
worker, and the portal's one error shape."""

from __future__ import annotations

import json
from typing import Any

from rest_framework.test import APIClient

from worker_client import protocol

ATTACH = "/api/v1/attach/"
HOST = "/api/v1/host/"
SCHEDULER = "/api/v1/scheduler/"
DIGEST = "ab" * 32
HOST_INFO = {"name": "rig", "os": "Linux", "arch": "x86_64", "python_version": "3.11.7",
             "numba_version": "0.60.0", "cpu_count": 8, "memory_mb": 16000,
             "client_version": "0.1.0", "speed": 2.5e6}


def worker(host: Any = None, version: str = "0.1.0") -> APIClient:
    """A client with the worker's User-Agent, and ``host``'s token if given."""
    client = APIClient(HTTP_USER_AGENT=protocol.user_agent(version))
    if host is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Token {host.token}")
    return client


def post_json(client: APIClient, url: str, body: Any, content_type: str = "application/json"):
    """POST ``body`` as it is when text or bytes (malformed on purpose), else as JSON."""
    raw = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.generic("POST", url, raw, content_type=content_type)


def assert_error(response: Any, status: int | None = None, code: str | None = None) -> dict:
    """The response is the portal's one error shape with a 4xx status (``status`` if given)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:500])
    if status is not None:
        assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = json.loads(response.content)
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "detail"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["detail"], dict)
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]
