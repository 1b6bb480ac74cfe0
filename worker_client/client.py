"""The one HTTP seam between the worker and the portal.

Everything the client says to the portal goes through :class:`PortalClient`: one
``requests.Session`` (connection reuse), connect and read timeouts on every call, a User-Agent
carrying the client and protocol versions, ``Authorization: Token …`` once attached, retries
with exponential backoff and jitter on what is worth retrying, and the portal's error shape
``{"error": {"code", "message"}}`` turned into :mod:`worker_client.exceptions`.

What is retried: refused or dropped connections, timeouts, 5xx and 429 (after ``Retry-After``
when the portal sends one). Repeating any call here is safe by the protocol: a report sent twice
is stored once, an ask repeated only leaves tasks the server re-sends or times out.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from . import __version__
from .exceptions import (
    AuthError,
    ClientTooOld,
    ConfigError,
    DataError,
    Interrupted,
    ProtocolError,
    ServerRefused,
    ServerUnavailable,
)
from .protocol import REASON_CLIENT_TOO_OLD, HostInfo, SchedulerReply, SchedulerRequest, user_agent

log = logging.getLogger(__name__)

API_PREFIX = "api/v1/"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
DOWNLOAD_CHUNK = 1 << 16


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    The n-th retry waits ``min(cap, base * 2**n)`` seconds, the upper half of it jittered
    ("equal jitter": never zero, so a thousand hosts do not come back in the same second), or
    the portal's ``Retry-After`` when that is longer, up to ``max_retry_after``.
    """

    attempts: int = 6  # tries in all, the first included
    base: float = 1.0  # seconds
    cap: float = 60.0
    max_retry_after: float = 600.0

    def delay(self, retry: int, rng: random.Random) -> float:
        ceiling = min(self.cap, self.base * 2**retry)
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    read: float = 60.0


class PortalClient:
    """The portal's ``/api/v1/`` as Python calls. ``server`` is the portal's base URL."""

    def __init__(self, server: str, token: str | None = None, *,
                 client_version: str = __version__,
                 retry: RetryPolicy | None = None, timeouts: Timeouts | None = None,
                 session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None) -> None:
        self.server = normalize_server_url(server)
        self.client_version = client_version
        self.retry = retry or RetryPolicy()
        self.timeouts = timeouts or Timeouts()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = user_agent(client_version)
        self.session.headers["Accept"] = "application/json"
        self.token = token

    @property
    def token(self) -> str | None:
        return self._token

    @token.setter
    def token(self, value: str | None) -> None:
        # Not a session header: it goes only to the portal's own origin (see ``_send``), never
        # to another host a URL in a reply might name.
        self._token = value

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> PortalClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the API -----------------------------------------------------------------------------

    def attach(self, *, account_key: str, host: HostInfo) -> tuple[int, str]:
        """Register this machine under the account; returns (host id, host token)."""
        body = self._json("POST", "attach/", {"account_key": account_key, "host": asdict(host)})
        try:
            return int(body["host_id"]), str(body["token"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"the portal's attach reply lacks {exc}") from None

    def update_host(self, host: HostInfo) -> int:
        body = self._json("POST", "host/", asdict(host))
        try:
            return int(body["host_id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"the portal's host reply lacks {exc}") from None

    def get_json(self, path: str) -> dict[str, Any]:
        """GET a JSON object from the portal (an API path or a site path such as
        ``/strategies/7/genome.json``)."""
        return self._json("GET", path)

    def host_status(self) -> dict[str, Any]:
        """The portal's figures for this host: credit, RAC, results valid/invalid/pending."""
        return self._json("GET", "host/")

    def detach(self) -> None:
        """Retire this host on the portal: its token stops working, its tasks are given back."""
        self._send("DELETE", "host/").close()

    def scheduler(self, request: SchedulerRequest) -> SchedulerReply:
        """Report finished results, acknowledge tasks, ask for work: one round trip."""
        body = self._json("POST", "scheduler/", request.to_dict())
        try:
            reply = SchedulerReply.from_dict(body)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"the portal's scheduler reply is malformed: {exc!r}") from None
        return reply

    def download(self, url: str, dest: Path, *, expected_sha256: str,
                 expected_size: int | None = None,
                 should_stop: Callable[[], bool] = lambda: False) -> Path:
        """Stream ``url`` into ``dest`` and check its size and sha256 before keeping it.

        The bytes go to a temporary file beside ``dest``, renamed over it only when they check
        out. Bytes that do not check out raise :class:`DataError` (the caller decides whether to
        try again); a connection that breaks off raises :class:`ServerUnavailable`, like any
        other call that cannot reach the portal; ``should_stop`` (checked per chunk) aborts
        with :class:`Interrupted`.
        """
        tmp = dest.with_name(f".{dest.name}.{random.getrandbits(32):08x}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            response = self._send("GET", url, stream=True)
            try:
                with open(tmp, "wb") as handle:
                    for chunk in response.iter_content(DOWNLOAD_CHUNK):
                        if should_stop():
                            raise Interrupted("the download was stopped")
                        handle.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                        if expected_size is not None and size > expected_size:
                            break  # already too long: no need to fetch the rest
                    handle.flush()
            except requests.RequestException as exc:
                raise ServerUnavailable(f"the download of {url} broke off ({_why(exc)})"
                                        ) from None
            finally:
                response.close()
            if expected_size is not None and size != expected_size:
                raise DataError(f"the data set from {url} has {size:,}"
                                f"{'+' if size > expected_size else ''} bytes, expected "
                                f"{expected_size:,}")
            if digest.hexdigest() != expected_sha256:
                raise DataError(f"the data set from {url} has sha256 {digest.hexdigest()[:12]}…, "
                                f"expected {expected_sha256[:12]}…")
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    # -- transport -----------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """Absolute URL for an API path (``"scheduler/"``) or a URL the portal sent."""
        if path.startswith(("http://", "https://", "/")):
            return urljoin(self.server, path)
        return urljoin(self.server, API_PREFIX + path)

    def _json(self, method: str, path: str, payload: dict[str, Any] | None = None
              ) -> dict[str, Any]:
        response = self._send(method, path, json=payload)
        try:
            body = response.json()
        except ValueError:
            raise ProtocolError(f"{method} {self.url(path)} answered {response.status_code} "
                                "with a body that is not JSON") from None
        if not isinstance(body, dict):
            raise ProtocolError(f"{method} {self.url(path)} answered a JSON "
                                f"{type(body).__name__}, not an object")
        return body

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = self.url(path)
        timeout = (self.timeouts.connect, self.timeouts.read)
        if self._token and _origin(url) == _origin(self.server):
            kwargs["headers"] = {**kwargs.get("headers", {}),
                                 "Authorization": f"Token {self._token}"}
        for attempt in range(1, self.retry.attempts + 1):
            last = attempt == self.retry.attempts
            try:
                response = self.session.request(method, url, timeout=timeout, **kwargs)
            except requests.RequestException as exc:
                if not _retryable_exception(exc):
                    raise ServerUnavailable(f"cannot talk to {self.server}: {_why(exc)}") from None
                if last:
                    raise ServerUnavailable(
                        f"cannot reach {self.server} ({_why(exc)}) after {attempt} tries; "
                        "check the server URL and your network, or try again later") from None
                wait = self.retry.delay(attempt - 1, self._rng)
                log.warning("%s %s failed (%s); retrying in %.1f s", method, url, _why(exc), wait)
                self._sleep(wait)
                continue
            if response.status_code < 400:
                return response
            if response.status_code in RETRY_STATUSES and not last:
                wait = self.retry.delay(attempt - 1, self._rng)
                retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
                if retry_after is not None:
                    wait = max(wait, min(retry_after, self.retry.max_retry_after))
                log.warning("%s %s answered %d; retrying in %.1f s", method, url,
                            response.status_code, wait)
                response.close()
                self._sleep(wait)
                continue
            raise self._error_from(response)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _error_from(self, response: requests.Response) -> Exception:
        status = response.status_code
        code, message = _error_shape(response)
        if status in RETRY_STATUSES:
            return ServerUnavailable(
                f"{self.server} keeps answering {status} ({message}) after "
                f"{self.retry.attempts} tries; try again later")
        if status == 426 or code == REASON_CLIENT_TOO_OLD:
            return ClientTooOld(
                f"{message} (this is {user_agent(self.client_version)}); upgrade with "
                "`pipx upgrade strategy-worker` or `pip install -U strategy-worker`",
                code=code, status=status)
        if status in (401, 403):
            return AuthError(message, code=code, status=status)
        return ServerRefused(f"{message} (HTTP {status}, {code})", code=code, status=status)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def normalize_server_url(server: str) -> str:
    """``https://host/`` form: a scheme is required, the path ends with one slash."""
    server = server.strip()
    if not server.startswith(("http://", "https://")):
        raise ConfigError(f"the server URL {server!r} must start with http:// or https://")
    return server.rstrip("/") + "/"


def _error_shape(response: requests.Response) -> tuple[str, str]:
    """(code, message) from the portal's error shape, or a plain description of the reply."""
    try:
        error = response.json()["error"]
        code, message = str(error.get("code") or "error"), str(error["message"])
        return code, message
    except (ValueError, KeyError, TypeError, AttributeError):
        reason = response.reason or "error"
        return "http_error", f"the server answered {response.status_code} {reason}"


def _retryable_exception(exc: requests.RequestException) -> bool:
    return isinstance(exc, requests.ConnectionError | requests.Timeout)


def _why(exc: BaseException) -> str:
    """A short reason for a requests exception, without urllib3's nested repr chain."""
    if isinstance(exc, requests.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.ReadTimeout):
        return "no answer in time"
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "nodename nor servname",
                   "getaddrinfo failed", "Connection reset", "Remote end closed",
                   "No route to host", "Network is unreachable"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__ if not text else text.splitlines()[0][:200]


def _retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
