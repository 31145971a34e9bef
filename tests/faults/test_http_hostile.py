"""Hostile HTTP clients: wrong methods, huge bodies, slowloris, path traversal, bad tokens.

Each gets the right 4xx and none of them stops /metrics answering everyone else.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from tests.faults.evidence import ADMIN_TOKEN, PG_PASSWORD, record
from tests.fixtures.agent import RunningAgent, make_settings, poll


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    """One agent for the module: hostile clients must not be able to hurt it for the next test either."""
    agent = RunningAgent(make_settings(tmp_path_factory.mktemp("http"), {
        "agent": {"admin_token": ADMIN_TOKEN},
        "checks": {"postgres": [{"name": "db", "dsn": f"postgresql://app:{PG_PASSWORD}@127.0.0.1:1/app",
                                 "interval": "1s", "timeout": "1s"}]},
    }))
    try:
        poll(lambda: agent.agent.ready.is_set(), timeout=15)
        yield agent
    finally:
        agent.stop()


def _raw(agent: RunningAgent, data: bytes, timeout: float = 5.0) -> bytes:
    host, port = agent.settings.agent.listen.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        with contextlib.suppress(socket.timeout, ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def _metrics_ok(agent: RunningAgent) -> float:
    started = time.monotonic()
    r = requests.get(agent.url + "/metrics", timeout=5)
    assert r.status_code == 200 and "opsagent_check_up" in r.text
    return time.monotonic() - started


@pytest.mark.parametrize(("method", "path", "status"), [
    ("PUT", "/metrics", 405), ("DELETE", "/status", 405), ("PATCH", "/", 405), ("POST", "/healthz", 405),
    ("GET", "/backup", 405), ("OPTIONS", "/readyz", 405), ("DELETE", "/backup", 405), ("PUT", "/nowhere", 404),
])
def test_wrong_methods_get_405_with_allow(running: RunningAgent, method: str, path: str, status: int) -> None:
    """A method a path does not take is answered 405 with an Allow header (404 for unknown paths), never 500."""
    r = requests.request(method, running.url + path, timeout=5)
    assert r.status_code == status
    if status == 405:
        assert r.headers.get("Allow")
    record("http", r.text)
    _metrics_ok(running)


def test_admin_token_missing_or_wrong_is_401(running: RunningAgent) -> None:
    """POST /backup without the bearer token, with a wrong one or another scheme is refused with 401; the right one gets past auth."""
    url = running.url + "/backup"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN_TOKEN}"},
                    {"Authorization": f"Bearer {ADMIN_TOKEN}x"}, {"Authorization": f"bearer{ADMIN_TOKEN}"},
                    {"Authorization": "Bearer " + "A" * 5000}):
        r = requests.post(url, headers=headers, timeout=5)
        assert r.status_code == 401, headers
        assert ADMIN_TOKEN not in r.text
    ok = requests.post(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
    assert ok.status_code == 409  # authorised; this agent has no backups configured
    _metrics_ok(running)


def test_oversized_and_malformed_bodies_are_refused(running: RunningAgent) -> None:
    """A body over the limit gets 413 without being read, a malformed length 400, and the server keeps answering."""
    big = _raw(running, b"POST /backup HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\nConnection: close\r\n\r\n")
    assert _status(big) == 413
    neg = _raw(running, b"POST /backup HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\nConnection: close\r\n\r\n")
    assert _status(neg) in (400, 413)
    bad = _raw(running, b"POST /backup HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\nConnection: close\r\n\r\n")
    assert _status(bad) == 400
    r = requests.post(running.url + "/backup", data=b"x" * (1024 * 1024), timeout=10,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 413
    huge_header = _raw(running, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\nConnection: close\r\n\r\n")
    assert _status(huge_header) in (400, 431)
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    assert _status(_raw(running, b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + many + b"Connection: close\r\n\r\n")) in (400, 431)
    tls = _raw(running, b"\x16\x03\x01\x02\x00garbage-tls-hello\r\nConnection: close\r\n\r\n")
    assert b"Error code: 400" in tls  # no parsable version: the stdlib answers HTTP/0.9-style, still a 400
    _metrics_ok(running)


@pytest.mark.parametrize("path", [
    "/runbooks/../../../../etc/passwd", "/runbooks/..%2F..%2F..%2Fetc%2Fpasswd", "/runbooks/%2e%2e/pyproject.toml",
    "/../../../etc/passwd", "//etc/passwd", "/runbooks/TargetDown.md/../../../etc/passwd",
    "/runbooks/TargetDown%00.md", "/runbooks/..\\..\\etc\\passwd", "/status/../../etc/passwd",
    "/runbooks/" + "A" * 5000,
])
def test_path_traversal_finds_nothing(running: RunningAgent, path: str) -> None:
    """Traversal attempts on the runbook and status pages get 404 and never a file from outside the runbooks."""
    raw = _raw(running, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert _status(raw) in (400, 404), raw[:200]
    assert b"root:" not in raw and b"[project]" not in raw
    record("http", raw)


def test_runbook_page_still_served(running: RunningAgent) -> None:
    """The legitimate runbook path keeps working next to the refused ones."""
    r = running.get("/runbooks/TargetDown.md")
    assert r.status_code == 200 and "TargetDown" in r.text


def test_slowloris_clients_do_not_starve_metrics(running: RunningAgent) -> None:
    """Two hundred clients trickling headers a byte at a time and fifty idle half-open ones leave /metrics answering within two seconds."""
    host, port = running.settings.agent.listen.rsplit(":", 1)
    stop = threading.Event()
    socks: list[socket.socket] = []
    for _ in range(250):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)

    def trickle() -> None:
        while not stop.is_set():
            for s in socks[:200]:
                with contextlib.suppress(OSError):
                    s.sendall(b"X")
            stop.wait(0.5)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        times = [_metrics_ok(running) for _ in range(20)]
        assert max(times) < 2.0, times
        assert running.get("/healthz").status_code == 200
    finally:
        stop.set()
        t.join(2)
        for s in socks:
            s.close()
    _metrics_ok(running)


def test_idle_half_open_client_is_cut_off(running: RunningAgent) -> None:
    """A client that sends half a request and goes silent is disconnected by the server's read timeout."""
    host, port = running.settings.agent.listen.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        data = s.recv(100)
        waited = time.monotonic() - started
    assert data == b"" and waited < 15, (data, waited)
