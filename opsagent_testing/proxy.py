"""Loopback fault proxies: put one between the agent and a real server, then break the wire.

:class:`FaultProxy` is a TCP proxy on 127.0.0.1 whose mode is switched at run
time and applies to new *and* established connections, because the agent keeps
one persistent connection per target and a fault that only hits new
connections would never reach it:

``pass``       bytes flow both ways untouched
``blackhole``  connections are accepted, nothing is forwarded or answered (a hung target)
``delay``      every chunk is held ``delay`` seconds before it is forwarded (a slow target)
``reset``      the connection is reset (RST) as soon as the server sends anything: mid-query
``garbage``    the server's answer is replaced by random bytes
``refuse``     the listening socket is closed and established connections are reset (a dead target)

:class:`HttpFaultProxy` sits in front of the moto server (tests point
``AWS_ENDPOINT_URL`` at it) and injects AWS-shaped failures into matching
requests: throttling (``Throttling`` 400 for query APIs, ``ThrottlingException``
for JSON APIs, ``SlowDown`` 503 for S3), 500, 503, a slow answer, a dropped
connection before or after the request reached the server. Every request it
saw is recorded so tests can count retries and duplicate calls.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

MODES = ("pass", "blackhole", "delay", "reset", "garbage", "refuse")


def _rst(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER 0): the peer sees ECONNRESET."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """A TCP proxy 127.0.0.1:``port`` → ``upstream``, mode switchable with :meth:`set_mode`."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", mode: str = "pass",
                 delay: float = 0.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = mode
        self.delay = delay
        self.connections_total = 0
        self._lock = threading.Lock()
        self._conns: set[tuple[socket.socket, socket.socket | None]] = set()
        self._closed = threading.Event()
        self._listener: socket.socket | None = None
        self.port = 0
        self._listen()
        if mode == "refuse":  # the port is reserved; connections to it are refused until set_mode()
            self._unlisten()

    # -- control ---------------------------------------------------------------------------------

    def set_mode(self, mode: str, delay: float | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        if delay is not None:
            self.delay = delay
        previous, self.mode = self.mode, mode
        if mode == "refuse":
            self._unlisten()
            self._reset_all()
        elif previous == "refuse":
            self._listen()

    def retarget(self, upstream_port: int) -> None:
        """Point new connections at another server port (a restarted target on a new port)."""
        self.upstream = (self.upstream[0], upstream_port)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def close(self) -> None:
        self._closed.set()
        self._unlisten()
        self._reset_all()

    # -- plumbing --------------------------------------------------------------------------------

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self.port = int(sock.getsockname()[1])
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), name=f"fault-proxy-{self.port}", daemon=True).start()

    def _unlisten(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _reset_all(self) -> None:
        with self._lock:
            conns, self._conns = set(self._conns), set()
        for client, server in conns:
            _rst(client)
            if server is not None:
                _rst(server)

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self._listener is not listener:
                _rst(client)
                return
            self.connections_total += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        server: socket.socket | None = None
        pair: tuple[socket.socket, socket.socket | None] = (client, None)
        try:
            if self.mode == "garbage":
                self._garbage(client)
                return
            if self.mode != "blackhole":
                try:
                    server = socket.create_connection(self.upstream, timeout=5)
                except OSError:
                    _rst(client)
                    return
            pair = (client, server)
            with self._lock:
                self._conns.add(pair)
            self._pump(client, server)
        finally:
            with self._lock:
                self._conns.discard(pair)
            with contextlib.suppress(OSError):
                client.close()
            if server is not None:
                with contextlib.suppress(OSError):
                    server.close()

    def _garbage(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            client.settimeout(2)
            client.recv(65536)
            client.sendall(os.urandom(256) + b"\r\n\x00garbage\xff" * 8)
        _rst(client)

    def _pump(self, client: socket.socket, server: socket.socket | None) -> None:
        """Forward until either side closes; the mode is re-read for every chunk."""
        socks = [client] + ([server] if server is not None else [])
        while not self._closed.is_set():
            try:
                readable, _, _ = select.select(socks, [], [], 0.2)
            except (OSError, ValueError):
                return
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                mode = self.mode
                from_server = sock is server
                if mode == "blackhole" or server is None:
                    continue  # swallowed: the peer waits forever
                if mode == "reset" and from_server:
                    _rst(client)
                    _rst(server)
                    return
                if mode == "garbage" and from_server:
                    data = os.urandom(len(data))
                if mode == "delay" and self.delay > 0:
                    time.sleep(self.delay)
                try:
                    (client if from_server else server).sendall(data)
                except OSError:
                    return


# -- HTTP (AWS) ------------------------------------------------------------------------------------

FAULTS = ("throttle", "500", "503", "slow", "drop", "drop_after")


@dataclass
class Rule:
    """Inject ``fault`` into the next ``times`` requests for which ``match`` is true."""

    fault: str
    match: Callable[[dict[str, Any]], bool]
    times: int = 1
    delay: float = 0.0
    hits: int = 0
    hit: threading.Event = field(default_factory=threading.Event)  # set on the first matching request


@dataclass
class Seen:
    method: str
    path: str
    action: str
    fault: str | None
    status: int | None
    at: float = field(default_factory=time.monotonic)


def _action(method: str, path: str, query: str, body: bytes, headers: Any) -> str:
    """The AWS operation name: ``Action=`` for query APIs, ``X-Amz-Target`` for JSON ones, else METHOD path."""
    target = headers.get("X-Amz-Target")
    if target:
        return str(target).rsplit(".", 1)[-1]
    for source in (query, body.decode("latin-1") if body[:200].lstrip()[:1] not in (b"<", b"{") else ""):
        action = parse_qs(source).get("Action")
        if action:
            return action[0]
    return f"{method} {path.split('?', 1)[0]}"


class HttpFaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream_url`` (the moto server)."""

    def __init__(self, upstream_url: str) -> None:
        host_port = upstream_url.split("://", 1)[1].rstrip("/")
        self.upstream_host, _, port = host_port.partition(":")
        self.upstream_port = int(port or 80)
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _handle(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()

    def inject(self, fault: str, match: Callable[[dict[str, Any]], bool] | str | None = None, times: int = 1,
               delay: float = 0.0) -> Rule:
        """Add a rule; ``match`` may be an operation name (``CreateDBSnapshot``, ``PUT``) or a predicate."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        if match is None:
            pred: Callable[[dict[str, Any]], bool] = lambda r: True  # noqa: E731
        elif isinstance(match, str):
            name = match
            pred = lambda r: r["action"] == name or r["action"].startswith(name + " ") or r["method"] == name  # noqa: E731
        else:
            pred = match
        rule = Rule(fault, pred, times, delay)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.seen.clear()

    def count(self, action: str, faulted: bool | None = None) -> int:
        with self._lock:
            return sum(1 for s in self.seen if s.action == action and (faulted is None or (s.fault is not None) == faulted))

    def close(self) -> None:
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()

    # -- one request -----------------------------------------------------------------------------

    def _pick(self, request: dict[str, Any]) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.hits < rule.times and rule.match(request):
                    rule.hits += 1
                    rule.hit.set()
                    return rule
        return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        try:
            self._handle_one(h)
        except OSError:  # the client died mid-request (a killed agent): nothing to answer
            h.close_connection = True

    def _handle_one(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = _read_chunked(h)
        path, _, query = h.path.partition("?")
        request = {"method": h.command, "path": path, "query": query, "headers": h.headers, "body": body,
                   "action": _action(h.command, path, query, body, h.headers)}
        rule = self._pick(request)
        fault = rule.fault if rule else None
        status: int | None = None
        try:
            if fault == "drop":
                h.close_connection = True
                _rst(h.connection)
                return
            if fault == "slow" and self._closed.wait(rule.delay if rule else 0):
                _rst(h.connection)  # closed meanwhile: a held request never reaches the next test's server
                return
            if fault in ("throttle", "500", "503"):
                status = self._fail(h, fault, request)
                return
            status, headers, payload = self._forward(h, body)
            if fault == "drop_after":  # the server did the work; the client never hears of it
                h.close_connection = True
                _rst(h.connection)
                return
            h.send_response(status)
            for key, value in headers:
                if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                    h.send_header(key, value)
            upstream_length = next((v for k, v in headers if k.lower() == "content-length"), None)
            h.send_header("Content-Length", upstream_length if h.command == "HEAD" and upstream_length
                          else str(len(payload)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(payload)
        finally:
            with self._lock:
                self.seen.append(Seen(h.command, path, request["action"], fault, status))

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in ("transfer-encoding", "content-length")}
            headers["Content-Length"] = str(len(body))
            conn.request(h.command, h.path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def _fail(self, h: BaseHTTPRequestHandler, fault: str, request: dict[str, Any]) -> int:
        action = request["action"]
        json_api = bool(request["headers"].get("X-Amz-Target"))
        s3 = " " in action  # no Action / target: a REST (S3) call
        if fault == "throttle":
            if s3:
                status, code, msg = 503, "SlowDown", "Please reduce your request rate."
            else:
                status, code, msg = 400, ("ThrottlingException" if json_api else "Throttling"), "Rate exceeded"
        elif fault == "500":
            status, code, msg = 500, "InternalError" if s3 else "InternalFailure", "We encountered an internal error."
        else:
            status, code, msg = 503, "ServiceUnavailable", "Service is unable to handle request."
        if json_api:
            payload = f'{{"__type":"{code}","message":"{msg}"}}'.encode()
            ctype = "application/x-amz-json-1.1"
        elif s3:
            payload = f"<Error><Code>{code}</Code><Message>{msg}</Message><RequestId>fault</RequestId></Error>".encode()
            ctype = "application/xml"
        else:
            payload = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{msg}</Message></Error>"
                       f"<RequestId>fault-{random.randrange(10**6)}</RequestId></ErrorResponse>").encode()
            ctype = "text/xml"
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)
        return status


def _read_chunked(h: BaseHTTPRequestHandler) -> bytes:
    out = bytearray()
    while True:
        line = h.rfile.readline().strip()
        size = int(line.split(b";")[0] or b"0", 16)
        if size == 0:
            while h.rfile.readline().strip():
                pass
            return bytes(out)
        out += h.rfile.read(size)
        h.rfile.readline()
