"""Sinks that misbehave (issue 21): redirects, dribbled answers, 429 with Retry-After.

A webhook behind an http→https redirect must not swallow pages (urllib turns a redirected POST
into a body-less GET whose 200 looked like a delivery); a sink that answers one byte at a time
must not hold its queue past the notify timeout; a sink that says when to come back is believed.
"""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from opsagent.alerts.pipeline import AlertPipeline
from opsagent.config import Settings
from opsagent.notify.base import RETRY_AFTER_CAP, DeliveryError, post_json
from opsagent.runtime.results import CheckResult
from tests.fixtures.agent import poll

Responder = Callable[[socketserver.StreamRequestHandler, bytes], None]


class HostileSink:
    """A raw HTTP server: ``respond(handler, body)`` writes whatever bytes the test wants."""

    def __init__(self, respond: Responder) -> None:
        self.requests: list[tuple[str, bytes]] = []
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline().decode("latin-1").strip()
                length = 0
                while True:
                    header = self.rfile.readline()
                    if header in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = header.decode("latin-1").partition(":")
                    if name.lower() == "content-length":
                        length = int(value.strip())
                body = self.rfile.read(length) if length else b""
                sink.requests.append((line, body))
                try:
                    respond(self, body)
                except OSError:
                    pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _answer(status: str, headers: dict[str, str] | None = None) -> Responder:
    def respond(handler: socketserver.StreamRequestHandler, body: bytes) -> None:
        lines = [f"HTTP/1.1 {status}", "Content-Length: 2", "Connection: close",
                 *(f"{k}: {v}" for k, v in (headers or {}).items())]
        handler.wfile.write(("\r\n".join(lines) + "\r\n\r\nok").encode())

    return respond


@pytest.fixture
def final() -> Iterator[HostileSink]:
    """Where the redirects point: answers 200 to anything (a GET there used to count as a delivery)."""
    server = HostileSink(_answer("200 OK"))
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("code", ["301 Moved Permanently", "302 Found", "303 See Other"])
def test_a_redirect_that_would_drop_the_body_is_a_retryable_failure(code: str, final: HostileSink) -> None:
    """A 301/302/303 answer is not a delivery: post_json raises a retryable error naming the redirect, and nothing is re-sent as GET."""
    sink = HostileSink(_answer(code, {"Location": final.url + "/moved"}))
    try:
        with pytest.raises(DeliveryError) as caught:
            post_json("slack", sink.url, {"text": "page"}, timeout=5)
        assert not caught.value.permanent and "redirect" in caught.value.reason
        assert final.requests == []
    finally:
        sink.close()


@pytest.mark.parametrize("code", ["307 Temporary Redirect", "308 Permanent Redirect"])
def test_a_307_or_308_is_re_posted_with_its_body(code: str, final: HostileSink) -> None:
    """A 307/308 keeps the method, so the page is POSTed again to the new location, body and all."""
    sink = HostileSink(_answer(code, {"Location": final.url + "/moved"}))
    try:
        post_json("slack", sink.url, {"text": "page"}, timeout=5)
        assert final.requests == [("POST /hook/moved HTTP/1.1", b'{"text": "page"}')]
    finally:
        sink.close()


def test_a_redirecting_webhook_keeps_the_page_queued_and_shows_the_failure(tmp_path: Path, final: HostileSink) -> None:
    """Behind a 302 the page stays in Slack's outbox, each attempt counts as a failure, and the status names the redirect."""
    sink = HostileSink(_answer("302 Found", {"Location": final.url}))
    settings = Settings(agent={"name": "redir"}, alerts={"HighCPU": {"for": "0s"}},
                        notify={"slack_webhook_url": sink.url, "timeout": "2s"})
    pipeline = AlertPipeline(settings, tmp_path, backoff_base=0.01, backoff_cap=0.05)
    pipeline.start()
    try:
        pipeline.on_result(CheckResult("cpu", "task", True, 0.99, time.time(), 0.01))
        poll(lambda: pipeline.workers["slack"].failures >= 3, timeout=15)
        [stats] = pipeline.delivery()
        assert stats.sent == 0 and stats.queued == 1 and "redirect" in (stats.last_error or "")
        assert final.requests == []
    finally:
        pipeline.stop(3)
        sink.close()


def test_a_dribbling_sink_hits_the_whole_request_deadline(tmp_path: Path) -> None:
    """A sink answering one byte every half second cannot hold a request past notify.timeout: the attempt fails and is retried."""
    stop = threading.Event()

    def dribble(handler: socketserver.StreamRequestHandler, body: bytes) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Padding: " + b"x" * 200 + b"\r\n\r\nok":
            if stop.wait(0.5):
                return
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()

    sink = HostileSink(dribble)
    try:
        with pytest.raises(DeliveryError) as caught:
            post_json("slack", sink.url, {"text": "page"}, timeout=1.5)
        assert not caught.value.permanent
        assert "deadline" in caught.value.reason or "timed out" in caught.value.reason
    finally:
        stop.set()
        sink.close()


def test_retry_after_on_429_is_honoured_and_bounded(tmp_path: Path) -> None:
    """A 429 with Retry-After: 2 makes the next attempt wait at least 2 s (logged), and an absurd Retry-After is capped."""
    sink = HostileSink(_answer("429 Too Many Requests", {"Retry-After": "2"}))
    huge = HostileSink(_answer("429 Too Many Requests", {"Retry-After": "999999"}))
    settings = Settings(agent={"name": "limited"}, alerts={"HighCPU": {"for": "0s"}},
                        notify={"slack_webhook_url": sink.url, "timeout": "2s"})
    pipeline = AlertPipeline(settings, tmp_path, backoff_base=0.01, backoff_cap=0.05)
    try:
        with capture_logs() as logs:
            pipeline.start()
            pipeline.on_result(CheckResult("cpu", "task", True, 0.99, time.time(), 0.01))
            poll(lambda: any(e["event"] == "alert_delivery_failed" for e in logs), timeout=10)
        failed = [e for e in logs if e["event"] == "alert_delivery_failed"]
        assert failed[0]["retry_in"] >= 2.0
        with pytest.raises(DeliveryError) as caught:
            post_json("slack", huge.url, {"text": "page"}, timeout=5)
        assert caught.value.retry_after == RETRY_AFTER_CAP
    finally:
        pipeline.stop(3)
        sink.close()
        huge.close()
