"""Logs are structured and scrubbed; the agent's own errors reach Sentry with no secret inside."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from opsagent import secrets
from opsagent.checks.base import Reading, SimpleCheck
from opsagent.config import load_config
from opsagent.runtime.runner import TargetRunner
from opsagent.telemetry import logging as agent_logging
from opsagent.telemetry import sentry
from tests.fixtures.agent import poll
from tests.fixtures.http_stub import StubServer


def test_json_lines_off_a_terminal_with_secrets_masked() -> None:
    """Off a terminal each log line is one JSON object with event name and context, secrets masked."""
    stream = io.StringIO()
    secrets.register(["hooks.slack.test/services/T0/B0/xyzzy-secret"])
    agent_logging.configure("info", stream=stream)
    structlog.get_logger("opsagent.test").warning(
        "notify_failed", sink="slack", url="https://hooks.slack.test/services/T0/B0/xyzzy-secret",
        dsn="postgresql://app:pw-0987@db/app")
    line = stream.getvalue().strip().splitlines()[-1]
    doc = json.loads(line)
    assert doc["event"] == "notify_failed" and doc["level"] == "warning" and doc["sink"] == "slack"
    assert "xyzzy-secret" not in line and "pw-0987" not in line
    assert doc["dsn"] == "postgresql://app:***@db/app"


def test_console_output_on_a_terminal() -> None:
    """On a terminal the output is readable key=value text, not JSON."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    agent_logging.configure("info", stream=stream)
    structlog.get_logger("opsagent.test").info("agent_started", targets=3)
    text = stream.getvalue()
    assert "agent_started" in text and "targets=3" in text and not text.lstrip().startswith("{")


class Buggy(SimpleCheck):
    kind = "postgres"

    def measure(self) -> Reading:
        raise KeyError("lookup failed for postgresql://app:pg-secret-4242@db:5432/app with token tok-sentry-5151")


@pytest.fixture
def sentry_stub() -> Iterator[StubServer]:
    server = StubServer({"/api/42/envelope/": lambda: (200, "application/json", b"{}"),
                         "/api/42/store/": lambda: (200, "application/json", b"{}")})
    yield server
    server.close()


def _decode(body: bytes) -> str:
    for attempt in (gzip.decompress, lambda b: zlib.decompress(b, -15), lambda b: b):
        try:
            return attempt(body).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - try the next encoding
            continue
    return ""


def test_agent_errors_reach_sentry_scrubbed(tmp_path: Path, sentry_stub: StubServer) -> None:
    """A bug inside a check is sent through the real Sentry transport with every secret masked."""
    import sentry_sdk

    dsn = f"http://sentrykey0123456789@127.0.0.1:{sentry_stub.port}/42"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"notify: {{sentry_dsn: '{dsn}', pagerduty_routing_key: tok-sentry-5151}}\n")
    settings = load_config(cfg, env={})
    try:
        assert sentry.init(settings)
        runner = TargetRunner("postgres", "main", Buggy, deadline=5, on_bug=sentry.capture_exception)
        result = runner.run()
        assert not result.up
        sentry.flush(5)
        bodies = poll(lambda: [_decode(b) for m, p, b in sentry_stub.requests if m == "POST"], timeout=10)
    finally:
        sentry_sdk.get_client().close(timeout=2)
        sentry._enabled = False
    # An envelope is a header line (which authenticates with the DSN's public key, as
    # Sentry requires) followed by items; the event items are the error report itself.
    items = "\n".join(line for body in bodies for line in body.splitlines()[1:])
    assert "KeyError" in items
    for secret in ("pg-secret-4242", "tok-sentry-5151", "sentrykey0123456789"):
        assert secret not in items
    assert dsn not in "\n".join(bodies)
