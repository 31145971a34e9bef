"""HTTP on ``agent.listen``: the sockets, threads, deadlines and limits (routes live in :mod:`opsagent.web.app`).

A small stdlib threading server: each connection has its own thread and a
socket timeout, and every phase in which a client sets the pace (sending the
request head, sending a body, reading the answer) has a deadline. There are at
most ``_Server.max_connections`` connections; at the limit the one that has
waited longest on its client, whatever it waits for, is cut off to make room,
so neither slow senders nor slow readers can lock /healthz and /metrics out.
Request framing is strict (one Content-Length, no Transfer-Encoding), so no
second request can be smuggled inside a first, and a body is read only after
the route and the bearer token accepted it.
"""

from __future__ import annotations

import heapq
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from opsagent import secrets
from opsagent.web.app import App, Request, Response

log = structlog.get_logger("opsagent.http")

MAX_BODY = 64 * 1024


class _Deadlines:
    """One thread for every client-paced deadline (request head, body, response write) (a Timer per request cost a thread start per scrape).

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
        """Cut off the connection that has waited longest on its client now; False if none waits."""
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
    on its client (a slowloris head, a trickled body, an answer the client does not read, an idle
    keep-alive): a flood of slow clients of any kind cannot grow the thread count without bound, nor
    lock Prometheus and the health check out. Only when every connection is busy computing an answer
    is the newcomer refused.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    max_connections = 256

    def __init__(self, address: tuple[str, int], app: App) -> None:
        super().__init__(address, Handler)
        self.app = app
        self._active = 0
        self._active_lock = threading.Lock()
        self.deadlines = _Deadlines()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._active_lock:
            full = self._active >= self.max_connections
        if full and not self.deadlines.expire_oldest():
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

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is routine (no traceback on stderr); anything else is logged."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return
        log.error("http_connection_failed", error=secrets.scrub(f"{type(exc).__name__}: {exc}"))

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Refused(Exception):
    """A request whose framing is refused before routing (the response says why)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class Handler(BaseHTTPRequestHandler):
    """One connection: parse under deadlines, route through the server's :class:`App`, answer under a deadline."""

    server: _Server
    server_version = "opsagent"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 10  # seconds a client may stay silent per read
    header_deadline = 10.0  # seconds a client may take to send a whole request line and headers
    body_deadline = 10.0  # seconds an admitted client may take to send its body
    write_deadline = 10.0  # seconds a client may take to read an answer

    def setup(self) -> None:
        super().setup()
        try:  # keep-alive scrapers would otherwise wait ~40 ms per answer (Nagle + delayed ACK)
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    # -- deadlines: a client trickling bytes never trips the per-read timeout, so each client-paced
    # phase gets a deadline; past it the socket is shut down under the reader or writer.

    def handle_one_request(self) -> None:
        self._head_token = self.server.deadlines.arm(self.header_deadline, self._cut_off)
        try:
            super().handle_one_request()
        finally:
            self.server.deadlines.disarm(self._head_token)

    def parse_request(self) -> bool:
        try:
            return super().parse_request()  # reads the headers: still under the deadline
        finally:
            self.server.deadlines.disarm(self._head_token)

    def _cut_off(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _within(self, seconds: float, work: Callable[[], Any]) -> Any:
        token = self.server.deadlines.arm(seconds, self._cut_off)
        try:
            return work()
        finally:
            self.server.deadlines.disarm(token)

    def log_message(self, format: str, *args: Any) -> None:
        return  # access logs are noise for a sidecar scraped every 15 s

    # -- one request ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            length = self._body_length()
        except _Refused as refused:
            self.close_connection = True
            self._write(refused.response)
            self._drop_body()
            return
        app = self.server.app
        headers = {key.lower(): value for key, value in self.headers.items()}
        resolved = app.resolve(self.command, path)
        refusal = resolved if isinstance(resolved, Response) else app.admit(resolved[0], headers)
        if refusal is not None or isinstance(resolved, Response):
            if length:
                self.close_connection = True  # the body is never read: the connection cannot be reused
            self._write(refusal if refusal is not None else resolved)  # type: ignore[arg-type]  # one is set
            if length:
                self._drop_body()
            return
        route, match = resolved
        if length and not self._within(self.body_deadline, lambda: self._read_body(length)):
            return
        request = Request(self.command, path, headers, match)
        try:
            response = route.handler(request)
        except Exception as exc:  # noqa: BLE001 - one bad page must not kill the server thread silently
            log.error("http_handler_failed", path=path[:200], error=secrets.scrub(f"{type(exc).__name__}: {exc}"))
            response = Response.text(500, "internal error; see the agent's log")
        self._write(response)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _dispatch

    def _body_length(self) -> int:
        """The declared body length; refuses every framing two parsers could read differently."""
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get_all("Transfer-Encoding"):
            if lengths:
                raise _Refused(Response.text(400, "Transfer-Encoding together with Content-Length is refused"))
            raise _Refused(Response.text(411, "chunked request bodies are not accepted; send Content-Length"))
        if not lengths:
            return 0
        if len(lengths) > 1:
            raise _Refused(Response.text(400, "more than one Content-Length header"))
        raw = lengths[0].strip()
        if not raw.isdigit() or not raw.isascii():
            raise _Refused(Response.text(400, "bad Content-Length"))
        length = int(raw)
        if length > MAX_BODY:
            raise _Refused(Response.text(413, f"request body too large (limit {MAX_BODY} bytes)"))
        return length

    def _read_body(self, length: int) -> bool:
        try:
            body = self.rfile.read(length)
        except OSError:
            body = b""
        if len(body) < length:
            self.close_connection = True
            return False
        return True

    def _drop_body(self) -> None:
        """Discard what a refused client already sent (without waiting), so closing does not reset the answer."""
        try:
            self.connection.settimeout(0.0)
            dropped = 0
            while dropped <= MAX_BODY and (chunk := self.connection.recv(65536)):
                dropped += len(chunk)
        except OSError:
            pass

    def _write(self, response: Response) -> None:
        head = [f"{self.protocol_version} {response.status} {self.responses.get(response.status, ('',))[0]}",
                f"Server: {self.version_string()}", f"Date: {self.date_time_string()}",
                f"Content-Type: {response.content_type}", f"Content-Length: {len(response.body)}",
                "Cache-Control: no-store"]
        head += [f"{key}: {value}" for key, value in response.headers]
        if self.close_connection:
            head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace")
        if self.command != "HEAD":
            data += response.body
        try:
            self._within(self.write_deadline, lambda: self.wfile.write(data))
        except OSError:  # the client went away or was cut off at the deadline
            self.close_connection = True


class HttpServer:
    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="http", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.deadlines.close()


def serve(app: App, host: str, port: int) -> HttpServer:
    """Listen on ``host:port`` (IPv6 when the host is) and answer from ``app`` in a background thread."""
    server_cls = _Server6 if ":" in host else _Server
    return HttpServer(server_cls((host, port), app))
