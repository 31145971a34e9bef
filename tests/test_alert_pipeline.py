"""The alert pipeline: durable outbox, restart safety, sink isolation, context, metrics."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from opsagent.alerts.catalog import ALARMS
from opsagent.alerts.pipeline import AlertPipeline
from opsagent.config import Settings
from opsagent.notify.worker import backoff_delay
from opsagent.runtime.results import CheckResult
from opsagent_testing.alertmanager import AlertmanagerServer, Receiver
from opsagent_testing.servers import HangingServer


def _settings(**notify: Any) -> Settings:
    return Settings(
        agent={"name": "api-sidecar"},
        checks={
            "redis": [{"name": "cache", "url": "redis://127.0.0.1:1/0", "interval": "15s"}],
            "postgres": [{"name": "main", "dsn": "postgresql://app:pw@127.0.0.1:1/app", "interval": "15s"}],
        },
        notify={"timeout": "2s", **notify},
    )


def _redis(at: float, value: float, target: str = "cache") -> CheckResult:
    return CheckResult("redis", target, True, value, at, 0.01)


def _pg(at: float, value: float) -> CheckResult:
    return CheckResult("postgres", "main", True, value, at, 0.01)


def _fire_redis(p: AlertPipeline, start: float) -> float:
    """Breach RedisMemoryHigh for its whole 5m `for`; return the next result time."""
    at = start
    for _ in range(21):
        p.on_result(_redis(at, 0.9))
        at += 15
    return at


def _resolve_redis(p: AlertPipeline, at: float) -> float:
    for _ in range(2):
        p.on_result(_redis(at, 0.1))
        at += 15
    return at


def _summary(body: dict[str, Any]) -> tuple[str, str]:
    """(FIRING|RESOLVED, alertname) from a Slack message."""
    head = body["text"].splitlines()[0]
    return ("RESOLVED" if "RESOLVED" in head else "FIRING", head.split()[-2])


def test_sink_down_for_ten_minutes_gets_each_alerts_newest_state_once(receiver: Receiver, tmp_path: Path) -> None:
    """A Slack endpoint down for ten minutes, once back, gets each alert's current state once (superseded pages collapse), in order."""
    receiver.status = 503
    p = AlertPipeline(_settings(slack_webhook_url=receiver.url + "/hook"), tmp_path, backoff_base=0.01,
                      backoff_cap=0.05)
    p.start()
    try:
        start = time.time() - 3600
        at = _fire_redis(p, start)  # RedisMemoryHigh fires at +5m
        for i in range(5):  # PostgresConnectionsExhausted fires after 1m
            p.on_result(_pg(at + 15 * i, 0.95))
        at += 75
        at = _resolve_redis(p, at)  # RedisMemoryHigh resolves
        for i in range(2):
            p.on_result(_pg(at + 15 * i, 0.1))  # PostgresConnectionsExhausted resolves
        deadline = time.monotonic() + 5
        while p.workers["slack"].failures < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert p.workers["slack"].failures >= 5 and receiver.requests == []
        assert len(p.outboxes["slack"]) == 2 and p.delivery()[0].superseded == 2
        receiver.status = 200
        bodies = receiver.wait_for(2)
        assert [_summary(b) for b in bodies] == [
            ("RESOLVED", "RedisMemoryHigh"), ("RESOLVED", "PostgresConnectionsExhausted"),
        ]
    finally:
        p.stop(2)


def test_restarted_agent_neither_repages_nor_forgets_to_resolve(receiver: Receiver, tmp_path: Path) -> None:
    """After a restart, a still-breaching alert is not paged again and its later resolution is still sent."""
    settings = _settings(slack_webhook_url=receiver.url + "/hook")
    first = AlertPipeline(settings, tmp_path, backoff_base=0.01)
    first.start()
    at = _fire_redis(first, time.time() - 3600)
    receiver.wait_for(1)
    first.stop(2)

    second = AlertPipeline(settings, tmp_path, backoff_base=0.01)
    second.start()
    try:
        assert [a["state"] for a in second.alerts()] == ["firing"]
        for _ in range(5):
            second.on_result(_redis(at, 0.95))
            at += 15
        _resolve_redis(second, at)
        bodies = receiver.wait_for(2)
        assert [_summary(b) for b in bodies] == [("FIRING", "RedisMemoryHigh"), ("RESOLVED", "RedisMemoryHigh")]
        deadline = time.monotonic() + 5
        while len(second.outboxes["slack"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(second.outboxes["slack"]) == 0 and len(receiver.requests) == 2  # no duplicate page queued
    finally:
        second.stop(2)


def test_alert_queued_before_a_crash_is_delivered_once_after_restart(receiver: Receiver, tmp_path: Path) -> None:
    """A page that was queued but not yet sent when the agent died is sent by the next agent, exactly once."""
    settings = _settings(slack_webhook_url=receiver.url + "/hook")
    crashed = AlertPipeline(settings, tmp_path)  # workers never started: the process "dies" before delivery
    _fire_redis(crashed, time.time() - 3600)
    assert len(crashed.outboxes["slack"]) == 1

    restarted = AlertPipeline(settings, tmp_path, backoff_base=0.01)
    restarted.start()
    try:
        receiver.wait_for(1)
        deadline = time.monotonic() + 5
        while len(restarted.outboxes["slack"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(restarted.outboxes["slack"]) == 0 and len(receiver.requests) == 1
    finally:
        restarted.stop(2)


def test_a_hanging_sink_delays_neither_the_other_sinks_nor_evaluation(
        receiver: Receiver, hanging_server: HangingServer, tmp_path: Path) -> None:
    """With PagerDuty hanging, Slack still gets the page at once, results are evaluated at once, and stop() is bounded."""
    settings = _settings(slack_webhook_url=receiver.url + "/hook", pagerduty_routing_key="rk-123456",
                         pagerduty_url=f"http://127.0.0.1:{hanging_server.port}/v2/enqueue", timeout="30s")
    p = AlertPipeline(settings, tmp_path, backoff_base=0.01)
    p.start()
    stopped = False
    try:
        began = time.monotonic()
        _fire_redis(p, time.time() - 3600)
        assert time.monotonic() - began < 2.0
        receiver.wait_for(1, timeout=5)
        assert len(p.outboxes["pagerduty"]) == 1
        began = time.monotonic()
        p.stop(1.0)
        stopped = True
        assert time.monotonic() - began < 2.0
        assert len(p.outboxes["pagerduty"]) == 1  # still on disk for the next start
    finally:
        if not stopped:
            p.stop(1)


def test_context_is_gathered_once_on_firing_and_shown_in_the_page(receiver: Receiver, tmp_path: Path) -> None:
    """The responder sees live context (e.g. eviction policy) gathered once, when the alert fires."""
    calls: list[tuple[str, str]] = []

    def context(check: str, target: str) -> dict[str, Any]:
        calls.append((check, target))
        return {"maxmemory_policy": "noeviction", "top_keys": [{"key": "sessions", "bytes": 1024}]}

    p = AlertPipeline(_settings(slack_webhook_url=receiver.url + "/hook"), tmp_path, context=context,
                      backoff_base=0.01)
    p.start()
    try:
        _fire_redis(p, time.time() - 3600)
        [body] = receiver.wait_for(1)
        assert calls == [("redis", "cache")]
        assert "maxmemory_policy: noeviction" in body["text"] and "key=sessions" in body["text"]
        assert "noeviction" in p.alerts()[0]["annotations"]["description"]
    finally:
        p.stop(2)


def test_slow_context_does_not_hold_up_other_targets(tmp_path: Path) -> None:
    """While one target's context call hangs, results of other targets are evaluated immediately."""
    release = threading.Event()
    entered = threading.Event()

    def context(check: str, target: str) -> dict[str, Any]:
        if target == "cache":
            entered.set()
            release.wait(10)
        return {"who": target}

    p = AlertPipeline(_settings(), tmp_path, context=context, context_timeout=3.0)
    worker = threading.Thread(target=_fire_redis, args=(p, 1000.0))
    worker.start()
    try:
        assert entered.wait(5)
        began = time.monotonic()
        for i in range(5):
            p.on_result(_pg(2000 + 15 * i, 0.95))
        assert time.monotonic() - began < 1.0
        assert {a["alertname"]: a["state"] for a in p.alerts()}["PostgresConnectionsExhausted"] == "firing"
    finally:
        release.set()
        worker.join(10)


def test_context_that_times_out_still_pages_without_it(tmp_path: Path) -> None:
    """A context callback that never returns delays the page by the context timeout at most."""
    p = AlertPipeline(_settings(), tmp_path, context=lambda c, t: time.sleep(30) or {}, context_timeout=0.2)
    began = time.monotonic()
    _fire_redis(p, 1000.0)
    assert time.monotonic() - began < 2.0
    [alert] = p.alerts()
    assert alert["state"] == "firing" and "Context" not in alert["annotations"]["description"]


def test_status_views_and_metrics_show_pending_and_firing(alertmanager: AlertmanagerServer, tmp_path: Path) -> None:
    """/status sees pending and firing alerts and /metrics carries opsagent_alert_firing and delivery counters."""
    p = AlertPipeline(_settings(alertmanager_url=alertmanager.url), tmp_path, backoff_base=0.01)
    registry = CollectorRegistry()
    registry.register(p)
    p.start()
    try:
        start = time.time() - 3600
        p.on_result(_redis(start, 0.9))
        [pending] = p.alerts()
        assert pending["state"] == "pending" and pending["since"] == start and pending["value"] == 0.9
        assert p.alarm_state("redis", "cache") == {"alert": "RedisMemoryHigh", "threshold": 0.75, "state": "pending"}
        assert registry.get_sample_value("opsagent_alert_firing",
                                         {"alertname": "RedisMemoryHigh", "target": "cache", "severity": "warning"}) is None
        _fire_redis(p, start + 15)
        [firing] = p.alerts()
        assert set(firing) >= {"alertname", "state", "labels", "annotations", "value", "threshold", "severity",
                               "since", "fingerprint"}
        assert firing["state"] == "firing" and firing["severity"] == "warning"
        assert registry.get_sample_value("opsagent_alert_firing",
                                         {"alertname": "RedisMemoryHigh", "target": "cache", "severity": "warning"}) == 1
        alertmanager.wait_for(lambda a: len(a) == 1)
        deadline = time.monotonic() + 5
        while registry.get_sample_value("opsagent_notify_sent_total", {"sink": "alertmanager"}) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert registry.get_sample_value("opsagent_notify_queue_depth", {"sink": "alertmanager"}) == 0
        assert registry.get_sample_value("opsagent_notify_failures_total", {"sink": "alertmanager"}) == 0
        p.on_result(CheckResult("redis", "cache", False, None, start + 400, 0.01, "timeout"))
        assert p.alarm_state("redis", "cache")["state"] in ("pending", "firing")
    finally:
        p.stop(2)


def test_down_target_without_target_down_shows_value_alarm_unknown(tmp_path: Path) -> None:
    """With TargetDown disabled, a down target's row shows its value alarm as unknown."""
    settings = Settings(checks={"redis": [{"name": "cache", "url": "redis://127.0.0.1:1/0"}]},
                        alerts={"TargetDown": {"enabled": False}})
    p = AlertPipeline(settings, tmp_path)
    p.on_result(CheckResult("redis", "cache", False, None, 1000.0, 0.01, "refused"))
    assert p.alarm_state("redis", "cache") == {"alert": "RedisMemoryHigh", "threshold": 0.75, "state": "unknown"}
    assert p.alerts() == []


def test_disabling_an_alarm_resolves_it_after_restart(receiver: Receiver, tmp_path: Path) -> None:
    """An alert firing when the agent restarts with that alarm disabled gets its resolution sent."""
    first = AlertPipeline(_settings(slack_webhook_url=receiver.url + "/hook"), tmp_path, backoff_base=0.01)
    first.start()
    _fire_redis(first, time.time() - 3600)
    receiver.wait_for(1)
    first.stop(2)
    disabled = Settings(agent={"name": "api-sidecar"},
                        checks={"redis": [{"name": "cache", "url": "redis://127.0.0.1:1/0"}]},
                        alerts={"RedisMemoryHigh": {"enabled": False}},
                        notify={"slack_webhook_url": receiver.url + "/hook"})
    second = AlertPipeline(disabled, tmp_path, backoff_base=0.01)
    second.start()
    try:
        bodies = receiver.wait_for(2)
        assert _summary(bodies[1]) == ("RESOLVED", "RedisMemoryHigh")
        assert second.alerts() == []
    finally:
        second.stop(2)


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    """Retry delays double per attempt, vary randomly, and never exceed the cap."""
    import random

    rng = random.Random(7)
    delays = [backoff_delay(a, 1.0, 60.0, rng) for a in range(12)]
    assert 0.5 <= delays[0] <= 1.0 and 4.0 <= delays[3] <= 8.0
    assert all(30.0 <= d <= 60.0 for d in delays[6:])
    assert len({round(d, 6) for d in delays[6:]}) > 1


_VALUES = st.lists(st.sampled_from([0.1, 0.9, 0.9, None]), min_size=1, max_size=50)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=_VALUES, cut=st.integers(min_value=0, max_value=50))
def test_a_restart_anywhere_changes_nothing_the_on_call_receives(values: list[float | None], cut: int) -> None:
    """Whatever the readings and wherever the agent restarts, the pages and resolutions queued are the same as without a restart."""
    settings_ = Settings(checks={"redis": [{"name": "cache", "url": "redis://127.0.0.1:1/0", "interval": "15s"}]},
                         alerts={"RedisMemoryHigh": {"for": "30s"}, "TargetDown": {"for": "15s"}},
                         notify={"slack_webhook_url": "http://127.0.0.1:9/hook"})

    def feed(p: AlertPipeline, items: list[tuple[int, float | None]]) -> None:
        for i, value in items:
            up = value is not None
            p.on_result(CheckResult("redis", "cache", up, value, 1000.0 + 15 * i, 0.01, None if up else "down"))

    def sent(directory: Path) -> list[tuple[str, str]]:
        box = AlertPipeline(settings_, directory).outboxes["slack"]
        return [(m["status"], m["labels"]["alertname"]) for m in box.pending()]

    items = list(enumerate(values))
    with tempfile.TemporaryDirectory() as once, tempfile.TemporaryDirectory() as twice:
        feed(AlertPipeline(settings_, Path(once)), items)
        feed(AlertPipeline(settings_, Path(twice)), items[:cut])
        feed(AlertPipeline(settings_, Path(twice)), items[cut:])
        assert sent(Path(twice)) == sent(Path(once))
        for alertname in ("RedisMemoryHigh", "TargetDown"):  # undelivered: only each alert's newest state stays
            assert len([s for s, name in sent(Path(once)) if name == alertname]) <= 1


def test_status_row_of_a_kind_with_several_alarms_shows_the_one_firing(tmp_path: Path) -> None:
    """For a kind with two alarms, the /status row names whichever of them fires, with its threshold."""
    settings_ = Settings(checks={"redis": [{"name": "cache", "url": "redis://127.0.0.1:1/0"}]})
    p = AlertPipeline(settings_, tmp_path)
    multi = next(kind for kind in ("sqs", "bullmq", "s3_replication")
                 if sum(a.check == kind for a in ALARMS.values()) >= 2)
    second = [a for a in ALARMS.values() if a.check == multi][1]
    assert second.field is not None
    first = next(a for a in ALARMS.values() if a.check == multi)
    assert p.alarm_state(multi, "q")["alert"] == first.name
    for i in range(30):
        p.on_result(CheckResult(multi, "q", True, 0.0, 1000.0 + 60 * i, 0.01, details={second.field: 5}))
    assert p.alarm_state(multi, "q") == {"alert": second.name, "threshold": p.config.rules[second.name].threshold,
                                         "state": "firing"}


def test_backup_failure_page_says_why(tmp_path: Path) -> None:
    """A BackupFailed page carries the failed run's reason, with secrets masked."""
    from opsagent import secrets

    secrets.register(["postgresql://app:s3cretpw@db/app"])
    p = AlertPipeline(_settings(), tmp_path)
    p.on_result(CheckResult("backup_run", "main", True, 1.0, 1000.0, 0.0,
                            details={"error": "pg_dump: connection to postgresql://app:s3cretpw@db/app refused"}))
    [alert] = p.alerts()
    assert alert["alertname"] == "BackupFailed" and alert["state"] == "firing"
    description = alert["annotations"]["description"]
    assert "pg_dump: connection to" in description and "s3cretpw" not in description
