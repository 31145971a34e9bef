"""Every alert sink down or slow for ten minutes (time-compressed), then back.

Ten minutes of 15-second results are fed on an injected clock while Slack
answers 503, PagerDuty sits behind a proxy that delays every byte past the
notify timeout, and Alertmanager's port refuses connections (a
:class:`FaultProxy` in front of a real Alertmanager). Once they return, each
sink gets every alert's current state, in order, exactly once: pages that were
superseded while the sink was down (fired, then resolved) collapse to the newest.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from opsagent.alerts.pipeline import AlertPipeline
from opsagent.config import load_config
from opsagent.runtime.results import CheckResult
from opsagent_testing.alertmanager import AlertmanagerServer, Receiver
from opsagent_testing.proxy import FaultProxy
from tests.faults.evidence import (
    PAGERDUTY_KEY,
    PG_PASSWORD,
    REDIS_PASSWORD,
    SLACK_PATH,
    record,
)
from tests.fixtures.agent import poll

STEP = 15.0

# (step range, check, target, up, value): what each target reports over forty 15 s steps (ten minutes).
SCRIPT: list[tuple[range, str, str, bool, float | None]] = [
    (range(2, 7), "redis", "cache1", True, 0.9),
    (range(10, 15), "postgres", "db", False, None),
    (range(18, 31), "redis", "cache2", True, 0.9),
    (range(24, 27), "redis", "cache1", False, None),
]
EXPECTED = [  # each alert's newest state, in the order they resolved
    ("RESOLVED", "RedisMemoryHigh", "cache1"), ("RESOLVED", "TargetDown", "db"),
    ("RESOLVED", "TargetDown", "cache1"), ("RESOLVED", "RedisMemoryHigh", "cache2"),
]


def _result(step: int, check: str, target: str, start: float) -> CheckResult:
    for steps, c, t, up, value in SCRIPT:
        if c == check and t == target and step in steps:
            return CheckResult(check, target, up, value, start + step * STEP, 0.01, error=None if up else "refused")
    return CheckResult(check, target, True, 0.1, start + step * STEP, 0.01)


def _slack(body: dict[str, Any]) -> tuple[str, str, str]:
    head = body["text"].splitlines()[0].strip("*")
    state = "RESOLVED" if "RESOLVED" in head else "FIRING"
    alertname, where = head.split()[-2:]
    return state, alertname, where.split("/")[-1]


def _collapse(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PagerDuty's view: consecutive repeats of one (action, dedup_key) are one event."""
    out: list[dict[str, Any]] = []
    for r in list(requests):
        body = r["body"]
        if not out or (out[-1]["event_action"], out[-1]["dedup_key"]) != (body["event_action"], body["dedup_key"]):
            out.append(body)
    return out


def test_sinks_down_for_ten_minutes_receive_each_alerts_newest_state_in_order_once(
        tmp_path: Path, alertmanager: AlertmanagerServer) -> None:
    """After a ten-minute outage of Slack (503), PagerDuty (too slow) and Alertmanager (refused), each ends with every alert's newest state once, in order; PagerDuty's re-sends of what it got too slowly collapse by dedup_key."""
    slack, pagerduty = Receiver(), Receiver()
    pd_proxy = FaultProxy(pagerduty.port, mode="delay", delay=3.0)
    am_proxy = FaultProxy(alertmanager.port, mode="refuse")
    slack.status = 503
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({
        "agent": {"name": "outage-test"},
        "checks": {
            "redis": [{"name": n, "url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0", "interval": "15s"}
                      for n in ("cache1", "cache2")],
            "postgres": [{"name": "db", "dsn": f"postgresql://app:{PG_PASSWORD}@127.0.0.1:1/app", "interval": "15s"}],
        },
        "alerts": {"TargetDown": {"for": "0s"}, "RedisMemoryHigh": {"for": "0s"}},
        "notify": {"slack_webhook_url": slack.url + SLACK_PATH, "pagerduty_routing_key": PAGERDUTY_KEY,
                   "pagerduty_url": f"http://127.0.0.1:{pd_proxy.port}/v2/enqueue",
                   "alertmanager_url": f"http://127.0.0.1:{am_proxy.port}", "timeout": "2s"},
    }))
    settings = load_config(config, env={})
    clock = [time.time() - 3600]
    pipeline = AlertPipeline(settings, tmp_path / "state", clock=lambda: clock[0], backoff_base=0.05, backoff_cap=0.2)
    pipeline.start()
    try:
        start = clock[0]
        for step in range(40):
            clock[0] = start + step * STEP
            for check, target in (("redis", "cache1"), ("redis", "cache2"), ("postgres", "db")):
                pipeline.on_result(_result(step, check, target, start))
            pipeline.tick()
        poll(lambda: all(w.failures >= 3 for w in pipeline.workers.values()), timeout=30, interval=0.1)
        assert slack.requests == []  # PagerDuty may have received some: too slow to answer, they are re-sent
        assert len(pipeline.outboxes["slack"]) == len(EXPECTED)  # eight transitions, four current states
        failures = {name: w.failures for name, w in pipeline.workers.items()}

        slack.status = 200
        pd_proxy.set_mode("pass")
        am_proxy.set_mode("pass")
        bodies = slack.wait_for(len(EXPECTED), timeout=30)
        assert [_slack(b) for b in bodies] == EXPECTED
        # A sink too slow to answer did receive some messages, so they were re-sent (at-least-once):
        # PagerDuty collapses those by dedup_key, and what remains is every event, in order.
        poll(lambda: all(len(box) == 0 for box in pipeline.outboxes.values()), timeout=30, interval=0.1)
        # PagerDuty received some messages too slowly during the outage (counted failed, so re-sent or
        # superseded): per incident its events keep their order and the last one resolves it.
        events = _collapse(pagerduty.requests)
        by_key: dict[str, list[str]] = {}
        for e in events:
            by_key.setdefault(e["dedup_key"], []).append(e["event_action"])
        assert len(by_key) == len(EXPECTED) and all(actions[-1] == "resolve" for actions in by_key.values())
        # Alertmanager learnt the firings and their resolutions: nothing of this agent is active there.
        poll(lambda: not alertmanager.alerts(filter=['agent="outage-test"', 'alertname!="Watchdog"'], active="true"),
             timeout=15)
        time.sleep(0.5)  # anything duplicated would have arrived by now
        assert len(slack.requests) == len(EXPECTED) and _collapse(pagerduty.requests) == events
        for b in bodies:
            record("alert", json.dumps(b))
        for e in events:
            record("alert", json.dumps({k: v for k, v in e.items() if k != "routing_key"}))
    finally:
        pipeline.stop(3)
        pd_proxy.close()
        am_proxy.close()
        slack.close()
        pagerduty.close()
    assert failures["slack"] >= 3 and failures["pagerduty"] >= 3 and failures["alertmanager"] >= 3
