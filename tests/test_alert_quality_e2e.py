"""Alert quality against real parts: an app's Prometheus endpoint, a real Alertmanager, real Redis.

Error-budget windows are compressed through config (``slo.window_scale: 0.01``:
1h becomes 36s, 5m becomes 3s, buckets 0.6s), so burns that take minutes in
production take seconds here; every wait is a poll with a deadline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import yaml

from opsagent.checks.redis import RedisCheck
from opsagent.config import RedisTarget
from opsagent_testing.alertmanager import AlertmanagerServer
from opsagent_testing.servers import RedisServer, closed_port
from tests.fixtures.agent import RunningAgent, poll
from tests.test_check_error_rate import App

Start = Callable[..., RunningAgent]


class CountingApp(App):
    """An app whose request counter grows with wall time at ``rps``; ``error_ratio`` of new requests are 5xx."""

    def __init__(self, rps: float, error_ratio: float = 0.0) -> None:
        super().__init__()
        self.rps, self.error_ratio = rps, error_ratio
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._ok = self._failed = 0.0

    def set_error_ratio(self, ratio: float) -> None:
        with self._lock:
            self._advance()
            self.error_ratio = ratio

    def _advance(self) -> None:
        now = time.monotonic()
        new = self.rps * (now - self._last)
        self._last = now
        self._failed += new * self.error_ratio
        self._ok += new * (1 - self.error_ratio)

    @property  # type: ignore[override] # App serves whatever .body holds; here it is computed per request
    def body(self) -> str:
        with self._lock:
            self._advance()
            ok, failed = int(self._ok), int(self._failed)
        return ("# TYPE http_requests counter\n"
                f'http_requests_total{{route="/pay",status="200"}} {ok}\n'
                f'http_requests_total{{route="/pay",status="503"}} {failed}\n')

    @body.setter
    def body(self, _value: str) -> None:
        return None


@pytest.fixture
def apps() -> Iterator[list[CountingApp]]:
    made: list[CountingApp] = []
    yield made
    for app in made:
        app.close()


@pytest.fixture
def am(alertmanager: AlertmanagerServer) -> Iterator[AlertmanagerServer]:
    """The session Alertmanager; afterwards this test's alerts (seconds old) are expired at their own start time,
    since the shared clean-up's "a minute ago" would precede their start and be refused."""
    yield alertmanager  # set up before start_agent, so the agent has stopped when this runs
    current = alertmanager.alerts()
    if current:
        body = [{"labels": a["labels"], "annotations": a.get("annotations", {}), "startsAt": a["startsAt"],
                 "endsAt": a["startsAt"]} for a in current]
        requests.post(f"{alertmanager.url}/api/v2/alerts", json=body, timeout=5).raise_for_status()
        alertmanager.wait_for(lambda alerts: not alerts)


def _am_alerts(am: AlertmanagerServer, alertname: str) -> list[dict[str, Any]]:
    return [a for a in am.alerts() if a["labels"].get("alertname") == alertname]


def test_burst_and_quiet_failure_page_through_a_real_alertmanager(am: AlertmanagerServer, apps: list[CountingApp],
                                                                  start_agent: Start) -> None:
    """With compressed windows a 100 %-error burst pages ErrorBudgetBurn (critical, window 1h/5m) and a 0.5 req/s
    service failing 90 % pages ErrorBudgetLowVolume, both in a real Alertmanager with the SPEC labels."""
    busy, quiet = CountingApp(rps=200), CountingApp(rps=0.5, error_ratio=0.9)
    apps.extend([busy, quiet])
    slo = {"objective": "99.9%", "min_events": 20, "window_scale": 0.01}
    agent = start_agent({
        "agent": {"name": "api-sidecar"},
        "checks": {"error_rate": [
            {"name": "api", "metrics_url": busy.url, "interval": "1s", "slo": slo},
            {"name": "admin", "metrics_url": quiet.url, "interval": "1s", "slo": slo}]},
        "notify": {"alertmanager_url": am.url, "timeout": "2s"},
    })
    poll(lambda: any(w["state"] == "ok" for w in _slo(agent, "api")["windows"]), timeout=30)  # judged healthy first
    assert _am_alerts(am, "ErrorBudgetBurn") == []
    busy.set_error_ratio(1.0)
    fired = am.wait_for(lambda alerts: any(
        a["labels"].get("alertname") == "ErrorBudgetBurn" and a["labels"].get("target") == "api"
        and a["labels"].get("window") == "1h/5m" for a in alerts), timeout=30)
    burn = next(a for a in fired if a["labels"].get("window") == "1h/5m" and a["labels"]["target"] == "api")
    assert {k: burn["labels"][k] for k in ("severity", "check", "agent")} == {
        "severity": "critical", "check": "error_rate", "agent": "api-sidecar"}
    assert "burn rate" in burn["annotations"]["description"]
    low = am.wait_for(lambda alerts: any(
        a["labels"].get("alertname") == "ErrorBudgetLowVolume" and a["labels"].get("target") == "admin"
        for a in alerts), timeout=40)
    assert not any(a["labels"].get("target") == "admin" and a["labels"].get("window") == "1h/5m" for a in low)
    metrics = agent.get("/metrics").text
    assert 'opsagent_error_rate_requests_total{target="api"}' in metrics
    assert "# TYPE opsagent_error_rate_errors_total counter" in metrics
    assert 'opsagent_error_budget_burn_rate{target="api",window="5m"}' in metrics
    linted = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True, text=True, timeout=60)
    assert linted.returncode == 0 and "opsagent_error" not in linted.stdout + linted.stderr, linted.stdout + linted.stderr


def _slo(agent: RunningAgent, target: str) -> dict[str, Any]:
    return next(row for row in agent.status()["quality"]["slo"] if row["target"] == target)


def test_a_filling_redis_pages_with_its_forecast_in_a_real_alertmanager(am: AlertmanagerServer,
                                                                        start_agent: Start) -> None:
    """Redis memory rising steadily pages RedisMemoryHigh with "≈… to 100 % at the current rate" in its description,
    and exports opsagent_exhaustion_seconds for it."""
    server = RedisServer(maxmemory="64mb").start()
    stop = threading.Event()
    client = redis.Redis.from_url(server.url())

    def fill() -> None:
        i = 0
        while not stop.wait(0.05):
            client.set(f"k{i}", b"x" * 40_000)  # ~0.8 MB/s: a steady, fittable rise
            i += 1

    writer = threading.Thread(target=fill, daemon=True)
    try:
        writer.start()
        agent = start_agent({
            "checks": {"redis": [{"name": "cache", "url": server.url(), "interval": "1s"}]},
            "alerts": {"RedisMemoryHigh": {"threshold": "8%", "for": "5s"}},
            "notify": {"alertmanager_url": am.url, "timeout": "2s"},
        })
        fired = am.wait_for(lambda alerts: any(
            a["labels"].get("alertname") == "RedisMemoryHigh" for a in alerts), timeout=40)
        page = next(a for a in fired if a["labels"]["alertname"] == "RedisMemoryHigh")
        assert "to 100 % at the current rate" in page["annotations"]["description"]
        assert 'opsagent_exhaustion_seconds{check="redis",target="cache"}' in agent.get("/metrics").text
    finally:
        stop.set()
        writer.join(5)
        client.close()
        server.cleanup()


def _silence(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opsagent", "silence", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60)


def _config(tmp_path: Path, am_url: str) -> Path:
    path = tmp_path / "opsagent.yaml"
    path.write_text(yaml.safe_dump({
        "agent": {"name": "api-sidecar", "state_dir": str(tmp_path / "state")},
        "checks": {"redis": [{"name": "cache", "url": "redis://127.0.0.1:6379/0"}]},
        "notify": {"alertmanager_url": am_url, "timeout": "2s"}}))
    return path


def test_silence_creates_an_alertmanager_silence_and_an_agent_hold(tmp_path: Path,
                                                                   alertmanager: AlertmanagerServer) -> None:
    """`opsagent silence --target cache --for 2h` creates a matching Alertmanager silence and the agent's own hold."""
    done = _silence(_config(tmp_path, alertmanager.url), "--target", "cache", "--for", "2h", "--comment", "resize",
                    "--json")
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    silences = requests.get(f"{alertmanager.url}/api/v2/silences", timeout=5).json()
    ours = next(s for s in silences if s["id"] == created["alertmanager_id"])
    assert {(m["name"], m["value"]) for m in ours["matchers"]} == {("target", "cache"), ("agent", "api-sidecar")}
    assert ours["comment"] == "resize" and ours["status"]["state"] == "active"
    stored = json.loads((tmp_path / "state" / "silences.json").read_text())["silences"]
    assert [s["match"] for s in stored] == [{"target": "cache"}]
    assert 7190 <= stored[0]["ends_at"] - stored[0]["starts_at"] <= 7200


def test_silence_refuses_unknown_targets_and_bad_durations_and_survives_a_dead_alertmanager(tmp_path: Path) -> None:
    """An unknown target or duration exits 2 naming it; an unreachable Alertmanager exits 1 but the agent still holds."""
    config = _config(tmp_path, f"http://127.0.0.1:{closed_port()}")
    unknown = _silence(config, "--target", "nope", "--for", "2h")
    assert unknown.returncode == 2 and "no configured target named 'nope'" in unknown.stderr
    bad = _silence(config, "--target", "cache", "--for", "soon")
    assert bad.returncode == 2 and "--for" in bad.stderr and "Traceback" not in bad.stderr
    dead = _silence(config, "--target", "cache", "--for", "30m")
    assert dead.returncode == 1 and "Alertmanager silence failed" in dead.stderr
    assert json.loads((tmp_path / "state" / "silences.json").read_text())["silences"][0]["match"] == {"target": "cache"}


def test_a_redis_backing_a_queue_with_an_evicting_policy_is_flagged_from_info() -> None:
    """A `role: queue` Redis running allkeys-lru reports eviction_policy_unsafe=1 (INFO memory, no CONFIG); a cache does not."""
    server = RedisServer(maxmemory="16mb").start()  # allkeys-lru
    try:
        queue = RedisCheck(RedisTarget(name="jobs", url=server.url(), role="queue"))
        cache = RedisCheck(RedisTarget(name="cache", url=server.url()))
        try:
            assert queue.measure().details["eviction_policy_unsafe"] == 1
            assert cache.measure().details["eviction_policy_unsafe"] == 0
        finally:
            queue.close()
            cache.close()
    finally:
        server.cleanup()


def test_the_status_page_shows_a_maintenance_window_and_the_alert_it_holds(start_agent: Start) -> None:
    """During maintenance of `cache` its firing alert is silenced on /status and the page names the window;
    `sessions`, on the same Redis, is not held."""
    now = time.time()
    iso = lambda ts: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))  # noqa: E731 - a local formatter
    agent = start_agent({
        "checks": {"redis": [{"name": "cache", "url": "redis://127.0.0.1:6379/0", "interval": "1s"},
                             {"name": "sessions", "url": "redis://127.0.0.1:6379/1", "interval": "1s"}]},
        "alerts": {"RedisMemoryHigh": {"threshold": "0%", "for": "0s"}},
        "maintenance": [{"match": {"target": "cache"}, "start": iso(now - 60), "end": iso(now + 3600),
                         "comment": "node resize"}],
    })
    poll(lambda: len([a for a in agent.status()["alerts"] if a["alertname"] == "RedisMemoryHigh"]) == 2, timeout=20)
    held = {a["target"]: a["silenced"] for a in agent.status()["alerts"] if a["alertname"] == "RedisMemoryHigh"}
    assert held == {"cache": True, "sessions": False}
    page = agent.get("/").text
    assert "silenced by maintenance until" in page and "Maintenance windows and silences" in page
    assert "node resize" in page and "target=cache" in page
