"""A faulty network on loopback: an HTTP reverse proxy in front of the live server.

It forwards each request to the upstream portal and can, on demand:

* go **down** — its listening socket is closed, so clients get "connection refused", exactly
  what a portal that is stopped (or a network that refuses) looks like — and come back **up**
  on the same port;
* **corrupt** the next ``n`` data set downloads (one byte flipped: the length stays right, so
  only the sha256 check can catch it);
* **drop** a share of requests (the connection is closed without an answer) or **delay** them;
* **lose** the next scheduler replies that carry tasks: the portal has handled the call, but
  the connection breaks before its reply gets through (``drop_task_replies``), or the reply is
  **held** until the test says so (``hold_task_replies``: kill the worker meanwhile, and it dies
  without ever seeing the tasks it was sent).

It records every exchange (method, path, status, and the result ids of scheduler reports that
were answered) so tests can count what crossed the wire.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate"}


@dataclass
class Exchange:
    method: str
    path: str
    status: int  # 0: dropped
    reported: list[int] = field(default_factory=list)  # result ids a scheduler call reported
    accepted: list[int] = field(default_factory=list)  # ... and the portal acknowledged
    tasks: list[int] = field(default_factory=list)  # result ids of the tasks a reply carried
    lost: bool = False  # the reply never got through


class FaultProxy:
    def __init__(self, upstream: str, *, seed: int = 0) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.port = _free_port()
        self.exchanges: list[Exchange] = []
        self.corrupt_downloads = 0
        self.drop_rate = 0.0
        self.delay = 0.0
        self.down_when_hosts_have_tasks = 0  # go down once this many hosts received a task
        self.drop_task_replies = 0
        self.hold_task_replies = 0
        self.holding = threading.Event()  # set while a held reply waits for ``release``
        self.release = threading.Event()
        self._hosts_with_tasks: set[str] = set()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"  # the host name live_server allows

    # -- up and down ----------------------------------------------------------------------------

    def up(self) -> None:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def down(self) -> None:
        """Stop listening and cut open (keep-alive) connections: every request is refused
        until ``up()``."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            connections, self._connections = set(self._connections), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def __enter__(self) -> FaultProxy:
        self.up()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    # -- what crossed -----------------------------------------------------------------------------

    def record(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)

    def count(self, *, path_prefix: str, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for e in self.exchanges if e.path.startswith(path_prefix)
                       and (status is None or e.status == status))

    def accepted_reports(self) -> list[int]:
        """Every result id the portal acknowledged, once per acknowledgement."""
        with self._lock:
            return [rid for e in self.exchanges for rid in e.accepted]

    def take_corruption(self) -> bool:
        with self._lock:
            if self.corrupt_downloads > 0:
                self.corrupt_downloads -= 1
                return True
            return False

    def saw_tasks_for(self, host_token: str) -> None:
        """Called after a reply carrying tasks went out; may take the network down."""
        with self._lock:
            self._hosts_with_tasks.add(host_token)
            trigger = 0 < self.down_when_hosts_have_tasks <= len(self._hosts_with_tasks)
            if trigger:
                self.down_when_hosts_have_tasks = 0
        if trigger:  # not from this handler thread: shutdown() waits for serve_forever()
            threading.Thread(target=self.down, daemon=True).start()

    def lost_tasks(self) -> list[int]:
        """Result ids of the tasks in replies that never got through."""
        with self._lock:
            return [rid for e in self.exchanges if e.lost for rid in e.tasks]

    def sent_tasks(self) -> list[int]:
        """Result ids of the tasks in replies that got through."""
        with self._lock:
            return [rid for e in self.exchanges if not e.lost for rid in e.tasks]

    def lose_reply(self) -> bool:
        """Whether to lose this reply carrying tasks; a held one waits here for ``release``."""
        with self._lock:
            if self.drop_task_replies > 0:
                self.drop_task_replies -= 1
                return True
            if self.hold_task_replies <= 0:
                return False
            self.hold_task_replies -= 1
        self.holding.set()
        self.release.wait(120)
        return True

    def should_drop(self) -> bool:
        with self._lock:
            return self.drop_rate > 0 and self._rng.random() < self.drop_rate


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.owner.opened(self.connection)

    def _forward(self) -> None:
        proxy = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if proxy.delay:
            time.sleep(proxy.delay)
        if proxy.should_drop():
            proxy.record(Exchange(self.command, self.path, 0))
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port,
                                              timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        # The Host header stays the proxy's: URLs the portal builds point back through it.
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        payload = response.read()
        upstream.close()
        exchange = Exchange(self.command, self.path, response.status)
        if "/datasets/" in self.path and response.status == 200 and payload \
                and proxy.take_corruption():
            middle = len(payload) // 2
            payload = payload[:middle] + bytes([payload[middle] ^ 0xFF]) + payload[middle + 1:]
        carried_tasks = False
        if self.path.endswith("/scheduler/") and body and response.status == 200:
            try:
                exchange.reported = [r["result_id"] for r in json.loads(body).get("results", [])]
                reply = json.loads(payload)
                exchange.accepted = list(reply.get("accepted", []))
                exchange.tasks = [t["result_id"] for t in reply.get("tasks", [])]
                carried_tasks = bool(exchange.tasks)
            except (ValueError, KeyError, TypeError):
                pass
        if carried_tasks and proxy.lose_reply():
            exchange.lost = True
            proxy.record(exchange)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        proxy.record(exchange)
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()
        if carried_tasks:
            proxy.saw_tasks_for(self.headers.get("Authorization", ""))

    do_GET = do_POST = do_DELETE = do_PUT = _forward


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
