"""Delivery to a real, private Alertmanager through its API v2."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from opsagent.alerts.pipeline import AlertPipeline
from opsagent.config import Settings
from opsagent.runtime.results import CheckResult
from opsagent_testing.alertmanager import AlertmanagerServer


def _settings(am_url: str, name: str = "api-sidecar", repeat: str = "5m") -> Settings:
    return Settings(
        agent={"name": name, "listen": "127.0.0.1:9108", "runbook_base_url": "https://rb.example/runbooks/"},
        checks={"postgres": [{"name": "main", "dsn": "postgresql://app:pw@127.0.0.1:1/app", "interval": "15s"}]},
        notify={"alertmanager_url": am_url, "repeat_interval": repeat, "timeout": "5s"},
    )


def _pg(at: float, value: float | None, up: bool = True) -> CheckResult:
    return CheckResult("postgres", "main", up, value, at, 0.01, None if up else "connection refused")


def _feed(pipeline: AlertPipeline, start: float, values: list[float]) -> float:
    at = start
    for value in values:
        pipeline.on_result(_pg(at, value))
        at += 15
    return at


def _ours(alerts: list[dict[str, Any]], alertname: str = "PostgresConnectionsExhausted") -> list[dict[str, Any]]:
    return [a for a in alerts if a["labels"].get("alertname") == alertname]


def test_firing_alert_reaches_alertmanager_and_its_resolution_clears_it(
        alertmanager: AlertmanagerServer, tmp_path: Path) -> None:
    """An alert that fires shows up in Alertmanager with SPEC labels and annotations, and is gone once resolved."""
    pipeline = AlertPipeline(_settings(alertmanager.url), tmp_path, backoff_base=0.05)
    pipeline.start()
    try:
        start = time.time() - 600
        at = _feed(pipeline, start, [0.95] * 6)
        [alert] = alertmanager.wait_for(lambda a: len(_ours(a)) == 1)
        assert alert["labels"] == {"alertname": "PostgresConnectionsExhausted", "severity": "critical",
                                   "check": "postgres", "target": "main", "agent": "api-sidecar"}
        notes = alert["annotations"]
        assert set(notes) == {"summary", "description", "value", "threshold", "runbook_url"}
        assert notes["runbook_url"] == "https://rb.example/runbooks/PostgresConnectionsExhausted.md"
        assert notes["value"] == "95%" and notes["threshold"] == "90%"
        assert alert["generatorURL"] == "http://127.0.0.1:9108/"
        assert alert["fingerprint"]  # Alertmanager's own; ours is the label set
        _feed(pipeline, at, [0.2, 0.2])
        alertmanager.wait_for(lambda a: not _ours(a))
    finally:
        pipeline.stop(5)


def test_two_agents_reporting_the_same_target_give_one_alert(alertmanager: AlertmanagerServer, tmp_path: Path) -> None:
    """Two sidecars with the same agent name that see the same breach produce a single Alertmanager alert."""
    first = AlertPipeline(_settings(alertmanager.url), tmp_path / "a", backoff_base=0.05)
    second = AlertPipeline(_settings(alertmanager.url), tmp_path / "b", backoff_base=0.05)
    for p in (first, second):
        p.start()
    try:
        start = time.time() - 600
        _feed(first, start, [0.97] * 6)
        _feed(second, start + 3, [0.96] * 6)
        alertmanager.wait_for(lambda a: len(_ours(a)) == 1)
        deadline = time.monotonic() + 5
        while not all(p.workers["alertmanager"].sent == 1 for p in (first, second)):
            assert time.monotonic() < deadline, "both agents must have delivered their page"
            time.sleep(0.02)
        assert len(_ours(alertmanager.alerts())) == 1
        assert first.alerts()[0]["fingerprint"] == second.alerts()[0]["fingerprint"]
    finally:
        for p in (first, second):
            p.stop(5)


def test_restarted_alertmanager_learns_firing_alerts_again_from_the_repeat_send(tmp_path: Path) -> None:
    """Alertmanager loses its alerts on restart; the agent's repeat send brings a still-firing alert back."""
    am = AlertmanagerServer().start()
    now = [time.time()]
    pipeline = AlertPipeline(_settings(am.url, repeat="1m"), tmp_path, clock=lambda: now[0], backoff_base=0.05)
    pipeline.start()
    try:
        _feed(pipeline, now[0] - 600, [0.99] * 6)
        am.wait_for(lambda a: len(_ours(a)) == 1)
        am.stop()
        am.start()
        assert _ours(am.alerts()) == []
        pipeline.tick()  # the first tick sends the Watchdog heartbeat only: the page's repeat is not yet due
        am.wait_for(lambda a: len(_ours(a, "Watchdog")) == 1 and not _ours(a))
        now[0] += 61
        pipeline.tick()
        [alert] = _ours(am.wait_for(lambda a: len(_ours(a)) == 1))
        ends = time.mktime(time.strptime(alert["endsAt"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert ends > time.time() + 60  # endsAt a few repeat intervals ahead
    finally:
        pipeline.stop(5)
        am.cleanup()


def test_target_down_alert_reaches_alertmanager_without_leaking_the_dsn_password(
        alertmanager: AlertmanagerServer, tmp_path: Path) -> None:
    """A target that stops answering pages TargetDown, and the error text in it never shows the DSN password."""
    from opsagent import secrets

    secrets.register(["postgresql://app:hunter2secret@127.0.0.1:1/app"])
    pipeline = AlertPipeline(_settings(alertmanager.url), tmp_path, backoff_base=0.05)
    pipeline.start()
    try:
        start = time.time() - 600
        for i in range(6):
            pipeline.on_result(CheckResult("postgres", "main", False, None, start + 15 * i, 0.01,
                                           "connection to postgresql://app:hunter2secret@127.0.0.1:1/app failed"))
        [alert] = alertmanager.wait_for(lambda a: len(_ours(a, "TargetDown")) == 1)
        assert "hunter2secret" not in str(alert)
        assert "connection to" in alert["annotations"]["description"]
        assert pipeline.alarm_state("postgres", "main") == {"alert": "TargetDown", "threshold": 0.9, "state": "firing"}
    finally:
        pipeline.stop(5)


def test_alertmanager_down_for_ten_minutes_ends_in_the_right_state(tmp_path: Path) -> None:
    """Alerts and resolutions produced while Alertmanager was down for ten minutes all land once it is up."""
    am = AlertmanagerServer()  # not started yet: connection refused
    settings = Settings(
        agent={"name": "api-sidecar"},
        checks={"postgres": [{"name": "main", "dsn": "postgresql://app:pw@127.0.0.1:1/app"}],
                "redis": [{"name": "cache", "url": "redis://127.0.0.1:1/0"}]},
        notify={"alertmanager_url": am.url, "timeout": "2s"},
    )
    pipeline = AlertPipeline(settings, tmp_path, backoff_base=0.01, backoff_cap=0.1)
    pipeline.start()
    try:
        at = time.time() - 900
        for _ in range(21):  # ten simulated minutes: Postgres fires and resolves, Redis fires and stays
            pipeline.on_result(_pg(at, 0.95))
            pipeline.on_result(CheckResult("redis", "cache", True, 0.9, at, 0.01))
            at += 15
        for _ in range(2):
            pipeline.on_result(_pg(at, 0.1))
            at += 15
        deadline = time.monotonic() + 5
        while pipeline.workers["alertmanager"].failures < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert len(pipeline.outboxes["alertmanager"]) == 2  # Postgres's page was superseded by its resolution
        am.start()
        alerts = am.wait_for(lambda a: len(pipeline.outboxes["alertmanager"]) == 0 and len(a) == 1)
        assert alerts[0]["labels"]["alertname"] == "RedisMemoryHigh"  # no tick ran: no Watchdog either
    finally:
        pipeline.stop(5)
        am.cleanup()
