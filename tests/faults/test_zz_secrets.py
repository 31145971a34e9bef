"""The last word of the fault suite: no secret in anything the agent said.

A real daemon (`opsagent run`) and the CLI run with a recognisable secret in
every DSN, URL, token and the Sentry DSN, against targets that fail and sinks
that record what they get; then every log line, status page, alert payload,
Sentry event and CLI output captured during the whole fault suite is scanned.
Named ``test_zz_*`` so it runs after the other fault modules.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from opsagent_testing.alertmanager import Receiver
from opsagent_testing.servers import closed_port, free_port
from tests.faults.evidence import (
    ADMIN_TOKEN,
    BOUNCER_PASSWORD,
    PAGERDUTY_KEY,
    PG_PASSWORD,
    REDIS_PASSWORD,
    SECRETS,
    SENTRY_KEY,
    SLACK_PATH,
    record,
    records,
)
from tests.fixtures.agent import poll


class SentryStub:
    """A local Sentry ingest endpoint: keeps every envelope the SDK posts, decompressed."""

    def __init__(self) -> None:
        self.envelopes: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                stub.envelopes.append(body.decode("utf-8", errors="replace"))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sentry() -> Iterator[SentryStub]:
    stub = SentryStub()
    yield stub
    stub.close()


def _config(tmp_path: Path, slack: Receiver, pagerduty: Receiver, sentry: SentryStub) -> dict[str, Any]:
    return {
        "agent": {"name": "secret-scan", "listen": f"127.0.0.1:{free_port()}", "admin_token": ADMIN_TOKEN,
                  "state_dir": str(tmp_path / "state")},
        "checks": {
            "cpu": {"interval": "1s"}, "memory": {"interval": "1s"},
            "postgres": [{"name": "db", "dsn": f"postgresql://app:{PG_PASSWORD}@127.0.0.1:{closed_port()}/app",
                          "interval": "1s", "timeout": "1s"}],
            "redis": [{"name": "cache", "url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{closed_port()}/0",
                       "interval": "1s", "timeout": "1s"}],
            "pgbouncer": [{"name": "pool", "dsn": f"postgresql://stats:{BOUNCER_PASSWORD}@127.0.0.1:{closed_port()}/pgbouncer",
                           "interval": "1s", "timeout": "1s"}],
            "error_rate": [{"name": "api", "interval": "1s", "timeout": "1s",
                            "metrics_url": f"http://scrape:{ADMIN_TOKEN}@127.0.0.1:{closed_port()}/metrics"}],
        },
        "alerts": {"TargetDown": {"for": "0s"}},
        "notify": {"slack_webhook_url": slack.url + SLACK_PATH, "pagerduty_routing_key": PAGERDUTY_KEY,
                   "pagerduty_url": f"{pagerduty.url}/v2/enqueue",
                   "sentry_dsn": f"http://{SENTRY_KEY}@127.0.0.1:{sentry.port}/1", "sentry_alerts": True,
                   "timeout": "2s"},
        "backup": {"repository": f"file://{tmp_path / 'repo'}", "postgres": ["db"], "schedule": "0 0 1 1 *",
                   "drill_dsn": f"postgresql://drill:{PG_PASSWORD}@127.0.0.1:{closed_port()}/postgres"},
    }


def _cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "opsagent", *args, "--config", str(config)], capture_output=True,
                          text=True, timeout=60, env=_clean_env())
    record("cli", proc.stdout + proc.stderr)
    return proc


def test_a_secret_laden_daemon_and_cli_run_against_failing_targets(tmp_path: Path, sentry: SentryStub) -> None:
    """The daemon pages, reports to Sentry, serves its pages and the CLI prints its tables while every configured secret is in play."""
    slack, pagerduty = Receiver(), Receiver()
    config = tmp_path / "opsagent.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path, slack, pagerduty, sentry)))
    listen = yaml.safe_load(config.read_text())["agent"]["listen"]
    url = f"http://{listen}"
    proc = subprocess.Popen([sys.executable, "-m", "opsagent", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_clean_env())
    try:
        poll(lambda: _ok(url + "/readyz"), timeout=30, interval=0.2)
        r = requests.post(url + "/backup", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
        assert r.status_code == 202
        poll(lambda: len(slack.requests) >= 5, timeout=30, interval=0.2)  # four TargetDown + BackupFailed
        poll(lambda: any("BackupFailed" in json.dumps(b) for b in slack.requests), timeout=30, interval=0.2)
        poll(lambda: len(sentry.envelopes) >= 5, timeout=30, interval=0.2)
        for path in ("/status", "/", "/metrics", "/runbooks/TargetDown", "/healthz"):
            record("status", requests.get(url + path, timeout=5).text)
        record("status", requests.post(url + "/backup", headers={"Authorization": "Bearer nope"}, timeout=5).text)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        slack.close()
        pagerduty.close()
    record("log", out + err)
    assert proc.returncode == 0, err[-2000:]
    for r in slack.requests:  # the webhook path is the receiver's own URL; the body is what the agent said
        record("alert", json.dumps(r["body"]))
    for r in pagerduty.requests:  # PagerDuty must get its routing key; everything else is scanned
        record("alert", json.dumps({k: v for k, v in r["body"].items() if k != "routing_key"}))
        assert r["body"]["routing_key"] == PAGERDUTY_KEY
    for envelope in sentry.envelopes:
        # The DSN's public key in the envelope's trace header is Sentry's own authentication, sent only to the
        # DSN's host; everything else in the event is scanned.
        record("sentry", envelope.replace(f'"public_key":"{SENTRY_KEY}"', '"public_key":"<dsn key>"'))
    for args in (("config", "show"), ("check", "--json"), ("backup", "run", "--json"), ("backup", "list", "--json"),
                 ("drill", "--json"), ("restore", "nosuch", "--target", f"postgresql://x:{PG_PASSWORD}@127.0.0.1:1/x")):
        _cli(*args, config=config)
    shown = _cli("config", "show", config=config)
    assert shown.returncode == 0 and "***" in shown.stdout


def _clean_env() -> dict[str, str]:
    """The test runner's environment without OPSAGENT_* switches (the agent rejects unknown ones)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OPSAGENT_")}


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_zz_no_secret_in_anything_captured_during_the_fault_suite() -> None:
    """Not one log line, status page, alert payload, Sentry event or CLI output of the whole fault suite contains a configured secret."""
    captured = records()
    kinds = {source for source, _ in captured}
    assert {"log", "status", "alert", "sentry", "cli"} <= kinds, f"evidence missing: only {sorted(kinds)}"
    total = sum(len(text) for _, text in captured)
    assert total > 20_000, f"only {total} characters captured: the scan would prove nothing"
    leaks = [(source, secret, text[max(0, text.find(secret) - 120):text.find(secret) + 60])
             for source, text in captured for secret in SECRETS if secret in text]
    from tests.faults.evidence import figure

    figure("secret_scan", {"records": len(captured), "characters": total, "by_source": {
        k: sum(1 for s, _ in captured if s == k) for k in sorted(kinds)}, "leaks": len(leaks)})
    assert not leaks, "\n".join(f"{source}: {secret} in …{context}…" for source, secret, context in leaks[:10])
    assert "***" in "".join(text for source, text in captured if source in ("log", "cli", "status"))
