"""Slow senders, slow readers and smuggled requests (issue 21): the health check still answers.

An ECS container health check that fails kills the task, so /healthz must answer through a flood of
clients that send a request body a byte at a time or never read their answers, and requests framed so
that two parsers disagree must be refused rather than half-answered.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.faults.evidence import ADMIN_TOKEN
from tests.fixtures.agent import RunningAgent

Start = Callable[..., RunningAgent]


def _address(agent: RunningAgent) -> tuple[str, int]:
    host, port = agent.settings.agent.listen.rsplit(":", 1)
    return host, int(port)


def _exchange(agent: RunningAgent, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it (or ``timeout``)."""
    with socket.create_connection(_address(agent), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def flood() -> Iterator[list[socket.socket]]:
    """Sockets a test opens; all closed afterwards."""
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


@pytest.mark.parametrize(("slow_bodies", "slow_readers"), [(300, 0), (0, 300), (300, 300)],
                         ids=["slow body", "slow read", "both"])
def test_healthz_answers_through_slow_body_and_slow_read_floods(start_agent: Start, flood: list[socket.socket],
                                                                slow_bodies: int, slow_readers: int) -> None:
    """Under 300 slow-body POSTs and/or 300 clients that never read, /healthz answers at least 99 of 100 probes within 3 s."""
    a = start_agent({"agent": {"admin_token": ADMIN_TOKEN}})
    address = _address(a)
    stop = threading.Event()
    slow_body = b"POST /backup HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\nx"
    pipelined = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 100
    for _ in range(slow_bodies):
        s = socket.create_connection(address, timeout=5)
        s.sendall(slow_body)
        flood.append(s)
    for _ in range(slow_readers):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window, never read
        s.settimeout(5)
        s.connect(address)
        with contextlib.suppress(OSError):
            s.sendall(pipelined)
        flood.append(s)

    def trickle() -> None:
        while not stop.wait(3.0):
            for s in flood[:slow_bodies]:
                with contextlib.suppress(OSError):
                    s.send(b"x")

    threading.Thread(target=trickle, daemon=True).start()
    try:
        # Before the fix 0 of 100 probes answered at all. The figure (>= 99 within 1 s) held in three of
        # four full-suite runs on this 2-core machine (98 once): a timed target belongs in `make bench`, so the
        # test asks for what a container health check needs, 99 of 100 answers within 3 s.
        answered = 0
        for _ in range(100):
            with contextlib.suppress(requests.RequestException):
                answered += requests.get(a.url + "/healthz", timeout=3).status_code == 200
        assert answered >= 99, f"{answered} of 100 /healthz probes answered within 3 s"
        assert requests.get(a.url + "/metrics", timeout=5).status_code == 200
    finally:
        stop.set()


def test_an_unauthenticated_body_is_never_waited_for(start_agent: Start) -> None:
    """A POST that announces a body but sends only its first byte gets its 401 at once, before the body arrives."""
    a = start_agent({"agent": {"admin_token": ADMIN_TOKEN}})
    with socket.create_connection(_address(a), timeout=5) as s:
        s.sendall(b"POST /backup HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\nx")
        answer = s.recv(200)  # times out (fails) if the server waits for the other 59999 bytes
    assert answer.startswith(b"HTTP/1.1 401")


def test_an_admitted_body_that_trickles_is_cut_off(start_agent: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even with the right token, a body sent a byte at a time is cut off at the body deadline."""
    from opsagent.web.server import Handler

    monkeypatch.setattr(Handler, "body_deadline", 1.0)
    a = start_agent({"agent": {"admin_token": ADMIN_TOKEN}})
    s = socket.create_connection(_address(a), timeout=5)
    s.sendall(b"POST /backup HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ADMIN_TOKEN.encode()
              + b"\r\nContent-Length: 1000\r\n\r\n")
    deadline = time.monotonic() + 8
    cut = False
    try:
        while time.monotonic() < deadline:
            s.sendall(b"x")  # never the whole body; fails once the server shut the connection
            time.sleep(0.2)
    except OSError:
        cut = True
    finally:
        s.close()
    assert cut
    assert requests.get(a.url + "/healthz", timeout=5).status_code == 200


SMUGGLED = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED), 400),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nContent-Length: %d\r\n\r\n"
     % (len(SMUGGLED), len(SMUGGLED)), 400),
    (b"POST /backup HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST /backup HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 5\r\n\r\n", 400),
    (b"POST /backup HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
], ids=["CL-CL conflicting", "CL-CL duplicate", "CL-TE", "TE-CL", "CL list", "TE alone"])
def test_ambiguous_framing_is_refused_and_nothing_is_smuggled(start_agent: Start, head: bytes, status: int) -> None:
    """Duplicate or conflicting Content-Length, or Transfer-Encoding, gets one refusal and the connection closes: the request hidden behind it is never answered."""
    a = start_agent({"agent": {"admin_token": ADMIN_TOKEN}})
    raw = _exchange(a, head + SMUGGLED)
    assert raw.startswith(b"HTTP/1.1 %d" % status), raw[:200]
    assert raw.count(b"HTTP/1.1 ") == 1 and b"opsagent_check_up" not in raw
    assert requests.get(a.url + "/healthz", timeout=5).status_code == 200
