"""HTTP on ``agent.listen``: /metrics, /healthz, /readyz, /status, /, POST /backup.

A small stdlib threading server: each connection has its own thread, a
socket timeout and a deadline for its request head, and there are at most
``_Server.max_connections`` of them, so a slow or hostile client never blocks
/metrics for others.
Nothing here measures: every answer is read from state the scheduler keeps.
"""

from __future__ import annotations

import heapq
import hmac
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import structlog

from opsagent import secrets
from opsagent.web.status import status_html, status_json

if TYPE_CHECKING:
    from opsagent.runtime.agent import Agent

log = structlog.get_logger("opsagent.http")

MAX_BODY = 64 * 1024
GET_PATHS = ("/metrics", "/healthz", "/readyz", "/status", "/")
POST_PATHS = ("/backup",)
_RUNBOOK_PATH = re.compile(r"^/runbooks/([A-Za-z0-9]+)(?:\.md)?$")


class _Deadlines:
    """One thread for every request head's deadline (a Timer per request cost a thread start per scrape).

    Deadlines are armed in arrival order with the same length, so the earliest is nearly always the
    oldest: a heap with lazy removal, and the thread sleeps until the earliest one that is still armed.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, Callable[[], None]] = {}
        self._next = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, seconds: float, expire: Callable[[], None]) -> int:
        with self._cond:
            self._next += 1
            token = self._next
            self._armed[token] = expire
            due = time.monotonic() + seconds
            heapq.heappush(self._heap, (due, token))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="http-deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0][1] == token:
                self._cond.notify()
            return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._armed.pop(token, None)

    def expire_oldest(self) -> bool:
        """Cut off the connection that has waited longest for a request head now; False if none waits."""
        with self._cond:
            while self._heap:
                _, token = heapq.heappop(self._heap)
                expire = self._armed.pop(token, None)
                if expire is not None:
                    break
            else:
                return False
        expire()
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _serve(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                due, token = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                expire = self._armed.pop(token)
            expire()



class _Server(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them.

    At the limit, a new connection first makes room by cutting off the one that has waited longest
    for its request head (a slowloris client, or an idle keep-alive one): a flood of silent clients
    cannot grow the thread count without bound, nor lock Prometheus out. Only when every connection is
    busy answering is the newcomer refused.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    max_connections = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._active = 0
        self._active_lock = threading.Lock()
        self.head_deadlines = _Deadlines()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._active_lock:
            full = self._active >= self.max_connections
        if full and not self.head_deadlines.expire_oldest():
            log.warning("http_connection_refused", reason="every connection is busy", limit=self.max_connections)
            self.shutdown_request(request)
            return
        with self._active_lock:
            self._active += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self._active_lock:
                self._active -= 1
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1


class Handler(BaseHTTPRequestHandler):
    server_version = "opsagent"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 10  # seconds a client may stay silent per read
    header_deadline = 10.0  # seconds a client may take to send a whole request line and headers
    agent: Agent

    # -- slowloris: a client trickling header bytes never trips the per-read timeout, so the
    # whole request head gets a deadline; past it the socket is shut down under the reader.

    def handle_one_request(self) -> None:
        deadlines: _Deadlines = self.server.head_deadlines  # type: ignore[attr-defined]
        self._head_token = deadlines.arm(self.header_deadline, self._cut_off)
        try:
            super().handle_one_request()
        finally:
            deadlines.disarm(self._head_token)

    def parse_request(self) -> bool:
        try:
            return super().parse_request()  # reads the headers: still under the deadline
        finally:
            self.server.head_deadlines.disarm(self._head_token)  # type: ignore[attr-defined]

    def _cut_off(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return  # access logs are noise for a sidecar scraped every 15 s

    # -- plumbing ----------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _text(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, (text + "\n").encode(), headers=headers)

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json")

    @property
    def _path(self) -> str:
        return self.path.split("?", 1)[0]

    def _discard_body(self) -> bool:
        """Read (and drop) a request body; refuse oversized or malformed lengths."""
        raw = self.headers.get("Content-Length")
        if raw is None:
            return True
        try:
            length = int(raw)
        except ValueError:
            self._text(400, "bad Content-Length")
            return False
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self._text(413, f"request body too large (limit {MAX_BODY} bytes)")
            return False
        self.rfile.read(length)
        return True

    def _not_allowed(self, allowed: str) -> None:
        self._text(405, f"method {self.command} not allowed on {self._path}; allowed: {allowed}", {"Allow": allowed})

    # -- methods -----------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        path = self._path
        agent = self.agent
        try:
            if path == "/metrics":
                gzip_ok = "gzip" in (self.headers.get("Accept-Encoding") or "")
                openmetrics_ok = agent.exposition.wants_openmetrics(self.headers.get("Accept"))
                body = agent.exposition.body(gzip_ok, openmetrics_ok)
                self._send(200, body, agent.exposition.content_type_for(openmetrics_ok),
                           {"Content-Encoding": "gzip"} if gzip_ok else None)
            elif path == "/healthz":
                ok, reason = agent.health()
                self._text(200 if ok else 503, reason)
            elif path == "/readyz":
                ready = agent.ready.is_set()
                self._text(200 if ready else 503, "ready" if ready else "first round of checks still running")
            elif path == "/status":
                self._send(200, status_json(agent), "application/json")
            elif path == "/":
                self._send(200, status_html(agent), "text/html; charset=utf-8")
            elif (m := _RUNBOOK_PATH.match(path)) is not None:
                self._runbook(m.group(1))
            elif path in POST_PATHS:
                self._not_allowed("POST")
            else:
                self._text(404, f"no such path: {path[:200]}; try /, /status, /metrics, /healthz, /readyz")
        except BrokenPipeError:
            pass
        except Exception as exc:  # noqa: BLE001 - one bad page must not kill the server thread silently
            log.error("http_handler_failed", path=path[:200], error=secrets.scrub(f"{type(exc).__name__}: {exc}"))
            self._text(500, "internal error; see the agent's log")

    do_HEAD = do_GET

    def _runbook(self, name: str) -> None:
        from opsagent.runbooks import read_runbook

        try:
            text = read_runbook(name)
        except KeyError:
            self._text(404, f"no runbook named {name}")
            return
        self._send(200, text.encode(), "text/markdown; charset=utf-8")

    def do_POST(self) -> None:  # noqa: N802
        path = self._path
        if path in GET_PATHS or _RUNBOOK_PATH.match(path):
            self._discard_body()
            self._not_allowed("GET, HEAD")
            return
        if path not in POST_PATHS:
            self._discard_body()
            self._text(404, f"no such path: {path[:200]}")
            return
        if not self._discard_body():
            return
        token = self.agent.settings.agent.admin_token
        if token is None:
            self._text(404, "POST endpoints are disabled: no agent.admin_token is configured")
            return
        given = self.headers.get("Authorization") or ""
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            self._text(401, "missing or wrong bearer token", {"WWW-Authenticate": 'Bearer realm="opsagent"'})
            return
        backup = self.agent.backup
        if backup is None:
            self._text(409, "no backups are configured (backup.repository, rds_instances or elasticache_clusters)")
            return
        if backup.trigger_backup():
            self._json(202, {"started": True})
        else:
            self._json(409, {"started": False, "reason": "a backup run is already in progress"})

    def _other(self) -> None:
        self._discard_body()
        path = self._path
        if path in GET_PATHS or _RUNBOOK_PATH.match(path):
            self._not_allowed("GET, HEAD")
        elif path in POST_PATHS:
            self._not_allowed("POST")
        else:
            self._text(404, f"no such path: {path[:200]}")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other


class HttpServer:
    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="http", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.head_deadlines.close()


def serve(agent: Agent) -> HttpServer:
    handler = type("AgentHandler", (Handler,), {"agent": agent})
    server_cls = _Server
    if ":" in agent.settings.agent.listen_host:
        server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    server = server_cls((agent.settings.agent.listen_host, agent.settings.agent.listen_port), handler)
    return HttpServer(server)
