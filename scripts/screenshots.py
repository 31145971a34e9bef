"""`make screenshots`: the README's two pictures of the status page, taken from real runs.

Each scene starts a real agent (this host's CPU and memory, the local
PostgreSQL and Redis, backups into file repositories in a temp dir, an
Alertmanager stand-in on loopback), waits for real results, and photographs
``/`` in the system Chromium through Playwright:

- ``docs/status-green.png``: everything answers, a backup ran and was copied.
- ``docs/status-incident.png``: the same agent with a Redis and a PostgreSQL
  target pointed at a closed port, so a target is down, the backup run fails
  for it, thresholds are lowered so alerts fire and pend, and the sink is down.

Time is compressed for the sparklines only (an hour of trend becomes a
minute); everything else is the product as it runs.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Alertmanager:
    """Accepts every POST /api/v2/alerts, like a healthy Alertmanager."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _config(workdir: Path, incident: bool, am_url: str) -> dict[str, Any]:
    closed = _free_port()
    checks: dict[str, Any] = {
        "cpu": {"interval": "1s"},
        "memory": {"interval": "1s"},
        "postgres": [{"name": "main", "dsn": PG, "interval": "2s"}],
        "redis": [{"name": "cache", "url": "redis://127.0.0.1:6379/0", "interval": "2s"}],
    }
    alerts: dict[str, Any] = {}
    backup_targets = ["main"]
    if incident:
        checks["redis"].append({"name": "sessions", "url": f"redis://127.0.0.1:{closed}/0", "interval": "2s"})
        checks["postgres"].append({"name": "orders", "dsn": f"postgresql://app:demo-pw@127.0.0.1:{closed}/orders",
                                   "interval": "2s"})
        backup_targets.append("orders")
        alerts = {"TargetDown": {"for": "0s"}, "RedisMemoryHigh": {"threshold": 0.00001, "for": "0s"},
                  "HighCPU": {"threshold": 0.0001, "for": "1h"}, "HighMemory": {"threshold": 0.01, "for": "0s"}}
    return {
        "agent": {"name": "api-sidecar", "listen": f"127.0.0.1:{_free_port()}", "state_dir": str(workdir / "state")},
        "checks": checks,
        "alerts": alerts,
        "notify": {"alertmanager_url": f"http://127.0.0.1:{closed}" if incident else am_url, "timeout": "1s"},
        "backup": {"repository": f"file://{workdir}/primary", "replica": f"file://{workdir}/replica",
                   "replica_region": "eu-west-1", "postgres": backup_targets, "rpo": "1h", "rto": "30m",
                   "schedule": "0 * * * *"},
    }


def _scene(name: str, incident: bool, out: Path, am_url: str) -> None:
    from playwright.sync_api import sync_playwright

    from opsagent.config import load_config
    from opsagent.runtime.agent import Agent
    from opsagent.web import trends

    trends.WINDOW_SECONDS = 60.0  # a minute of trend stands in for the hour
    with tempfile.TemporaryDirectory(prefix=f"opsagent-shot-{name}-") as tmp:
        workdir = Path(tmp)
        path = workdir / "opsagent.yaml"
        path.write_text(yaml.safe_dump(_config(workdir, incident, am_url)))
        agent = Agent(load_config(path, env={}))
        agent.start()
        try:
            _wait(lambda: agent.ready.is_set(), 30, "first round of checks")
            assert agent.backup is not None
            agent.backup.trigger_backup()
            _wait(lambda: agent.backup.status()["last_run"] is not None, 120, "the backup run")
            agent.backup.refresh()
            time.sleep(25)  # let the sparklines, alerts and deliveries accumulate real results
            url = f"http://{agent.settings.agent.listen}/"
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                    "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
                page = browser.new_page(viewport={"width": 1000, "height": 800})
                page.goto(url)
                page.screenshot(path=str(out), full_page=True)
                browser.close()
        finally:
            agent.stop()
    print(f"screenshots: wrote {out.relative_to(ROOT)}")


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"screenshots: gave up waiting for {what} after {timeout:.0f}s")
        time.sleep(0.2)


def main() -> int:
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    am = _Alertmanager()
    _scene("green", False, docs / "status-green.png", am.url)
    _scene("incident", True, docs / "status-incident.png", am.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
