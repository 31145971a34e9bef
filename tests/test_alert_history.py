"""The alert history: every page that goes out is remembered, newest first, across restarts."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from opsagent.alerts.history import HISTORY_FILE, AlertEvent, AlertHistory
from opsagent.alerts.pipeline import AlertPipeline
from opsagent.config import Settings
from opsagent.runtime.results import CheckResult


def _event(at: float, kind: str = "fired") -> AlertEvent:
    return AlertEvent(at=at, kind=kind, alertname="HighCPU", check="cpu", target="task", severity="warning")  # type: ignore[arg-type]


def test_history_keeps_the_newest_events_newest_first_and_survives_a_restart(tmp_path: Path) -> None:
    """A restarted agent shows the same last 100 transitions, newest first."""
    history = AlertHistory(tmp_path, size=100)
    for i in range(130):
        history.record(_event(float(i)))
    again = AlertHistory(tmp_path, size=100)
    recent = again.recent()
    assert len(recent) == 100
    assert [e.at for e in recent[:3]] == [129.0, 128.0, 127.0]
    assert recent[-1].at == 30.0


def test_a_damaged_history_file_is_logged_and_the_history_starts_empty(tmp_path: Path) -> None:
    """Half a JSON document never stops the agent; it says so in the log."""
    (tmp_path / HISTORY_FILE).write_text('{"events": [{"at": 1, "kind": "fir')
    with capture_logs() as logs:
        history = AlertHistory(tmp_path)
    assert history.recent() == []
    assert any(e["event"] == "alert_history_unreadable" for e in logs)


def test_the_pipeline_records_fired_and_resolved_pages_with_breach_start_and_duration(tmp_path: Path) -> None:
    """A fired page is recorded with when the breach began; its resolution with how long it fired."""
    settings = Settings(checks={"redis": [{"name": "cache", "url": "redis://127.0.0.1:1/0", "interval": "15s"}]})
    pipeline = AlertPipeline(settings, tmp_path)
    at = 1_000.0
    for _ in range(21):  # RedisMemoryHigh: 5m for
        pipeline.on_result(CheckResult("redis", "cache", True, 0.9, at, 0.01))
        at += 15
    for _ in range(2):
        pipeline.on_result(CheckResult("redis", "cache", True, 0.1, at, 0.01))
        at += 15
    events = [e for e in pipeline.history() if e.alertname == "RedisMemoryHigh"]
    assert [e.kind for e in events] == ["resolved", "fired"]
    resolved, fired = events
    assert fired.since == 1_000.0 and fired.at == 1_300.0
    assert resolved.duration_seconds == resolved.at - 1_300.0 > 0
    assert [e.kind for e in AlertPipeline(settings, tmp_path).history() if e.alertname == "RedisMemoryHigh"] == \
        ["resolved", "fired"]
