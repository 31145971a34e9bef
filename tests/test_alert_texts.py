"""Pages that never contradict themselves (SPEC §9.2): what firing and resolved texts say."""

from __future__ import annotations

from pathlib import Path

from opsagent.alerts.engine import AlertState, Phase
from opsagent.alerts.pipeline import AlertPipeline
from opsagent.alerts.render import Identity, alert_message
from opsagent.config import Settings
from opsagent.runtime.results import CheckResult
from tests.fixtures.texts import breach_statements

IDENT = Identity("api", "https://rb.example/", "http://agent:9108/")
BEGAN, FIRED, RESOLVED_AT = 1_700_000_000.0, 1_700_000_300.0, 1_700_000_900.0


def _resolved(alertname: str, check: str, value: float, threshold: float, **kw: object) -> AlertState:
    return AlertState(alertname, check, "main", phase=Phase.FIRING, threshold=threshold, value=value,
                      pending_since=BEGAN, firing_since=FIRED, resolved_at=RESOLVED_AT, **kw)  # type: ignore[arg-type]


def test_a_resolution_says_resolved_with_the_value_now_and_the_threshold_and_no_breach() -> None:
    """A resolved connections alarm reads "resolved", gives the value now and the threshold, and no longer says it is running out."""
    state = _resolved("PostgresConnectionsExhausted", "postgres", 0.03704, 0.9)
    notes = alert_message(state, "resolved", IDENT, at=RESOLVED_AT).annotations
    assert "resolved" in notes["description"]
    assert "value now 3.704%" in notes["description"] and "threshold 90%" in notes["description"]
    assert notes["value"] == "3.704%" and notes["threshold"] == "90%"
    assert breach_statements(notes["description"] + " " + notes["summary"]) == []


def test_since_is_when_the_breach_began_not_when_the_alert_fired() -> None:
    """A page that fired after its `for` window says "since" the first breaching reading, and startsAt is that time too."""
    state = AlertState("HighCPU", "cpu", "task", phase=Phase.FIRING, threshold=0.8, value=0.95,
                       pending_since=BEGAN, firing_since=FIRED)
    message = alert_message(state, "firing", IDENT, at=FIRED)
    assert "since 2023-11-14T22:13:20" in message.annotations["description"]
    assert message.to_json()["startsAt"] == "2023-11-14T22:13:20.000Z"
    resolved = alert_message(_resolved("HighCPU", "cpu", 0.2, 0.8), "resolved", IDENT, at=RESOLVED_AT)
    assert "it began 2023-11-14T22:13:20" in resolved.annotations["description"]


def test_boolean_alarms_state_the_reason_not_value_1_above_threshold_0() -> None:
    """BackupFailed and RestoreDrillFailed pages give the run's reason; their resolutions say the last run succeeded."""
    for alertname, check, reason in (("BackupFailed", "backup_run", "pg_dump: connection refused"),
                                     ("RestoreDrillFailed", "drill", "drill took 9000s, longer than the RTO 7200s")):
        firing = AlertState(alertname, check, "main", phase=Phase.FIRING, threshold=0.0, value=1.0, error=reason,
                            pending_since=BEGAN, firing_since=BEGAN)
        description = alert_message(firing, "firing", IDENT, at=BEGAN).annotations["description"]
        assert reason in description and "threshold" not in description and "value 1" not in description
        notes = alert_message(_resolved(alertname, check, 0.0, 0.0), "resolved", IDENT, at=RESOLVED_AT).annotations
        assert "resolved" in notes["description"] and "the last run succeeded" in notes["description"]
        assert breach_statements(notes["description"]) == []


def test_target_down_resolved_says_the_target_answers_again() -> None:
    """A TargetDown resolution says the target answers its check again, not that the check failed."""
    state = _resolved("TargetDown", "redis", 1.0, 0.0, error="connection refused")
    notes = alert_message(state, "resolved", IDENT, at=RESOLVED_AT).annotations
    assert "answers its check again" in notes["description"] and "connection refused" not in notes["description"]
    assert notes["value"] == "up" and breach_statements(notes["description"]) == []


def test_a_resolution_of_a_disabled_alarm_claims_neither_breach_nor_recovery_value() -> None:
    """An alert resolved because its alarm was disabled says it is no longer evaluated, not "value 95% >= 90%"."""
    state = _resolved("PostgresConnectionsExhausted", "postgres", 0.95, 0.9)
    notes = alert_message(state, "resolved", IDENT, at=RESOLVED_AT).annotations
    assert "no longer evaluated" in notes["description"] and notes["value"] == "unknown"
    assert breach_statements(notes["description"]) == []


def test_backup_stale_with_no_complete_backup_says_so(tmp_path: Path) -> None:
    """With no complete backup of a target (the backup result's newest is None), BackupStale says "no complete backup exists"."""
    settings = Settings(agent={"name": "api"}, backup={"rpo": "1h", "postgres": []})
    pipeline = AlertPipeline(settings, tmp_path)
    pipeline.on_result(CheckResult("backup", "main", True, 4000.0, BEGAN, 0.0, details={"kind": "postgres",
                                                                                        "newest": None}))
    [alert] = [a for a in pipeline.alerts() if a["alertname"] == "BackupStale"]
    description = alert["annotations"]["description"]
    assert "no complete backup exists" in description and "older than" not in description
    assert alert["since"] == BEGAN


def test_backup_stale_fires_rpo_after_the_agents_start_when_no_backup_exists_and_no_age_is_given(tmp_path: Path) -> None:
    """A backup result without an age (no complete backup: null RPO) still fires BackupStale once `rpo` has passed since the agent started."""
    settings = Settings(agent={"name": "api"}, backup={"rpo": "1h", "postgres": []})
    pipeline = AlertPipeline(settings, tmp_path, clock=lambda: BEGAN)
    no_backup = {"kind": "postgres", "newest": None}
    pipeline.on_result(CheckResult("backup", "main", True, None, BEGAN + 1800, 0.0, details=no_backup))
    assert not [a for a in pipeline.alerts() if a["alertname"] == "BackupStale"]
    pipeline.on_result(CheckResult("backup", "main", True, None, BEGAN + 3700, 0.0, details=no_backup))
    [alert] = [a for a in pipeline.alerts() if a["alertname"] == "BackupStale"]
    assert alert["state"] == "firing" and "no complete backup exists" in alert["annotations"]["description"]


def test_a_lifetime_error_ratio_never_pages(tmp_path: Path) -> None:
    """The first scrape of an app (lifetime counters, 50 % 5xx since it started) pages nothing even with `for: 0s`; a real window does."""
    settings = Settings(agent={"name": "api"}, alerts={"HighErrorRate": {"for": "0s"}},
                        checks={"error_rate": [{"name": "api", "metrics_url": "http://127.0.0.1:1/metrics"}]})
    pipeline = AlertPipeline(settings, tmp_path)
    lifetime = {"basis": "cumulative counters (first sample; no earlier scrape yet)"}
    pipeline.on_result(CheckResult("error_rate", "api", True, 0.5, BEGAN, 0.01, details=lifetime))
    assert pipeline.alerts() == []
    assert pipeline.alarm_state("error_rate", "api")["state"] == "unknown"
    pipeline.on_result(CheckResult("error_rate", "api", True, 0.2, BEGAN + 15, 0.01,
                                   details={"basis": "delta over window"}))
    assert [a["alertname"] for a in pipeline.alerts()] == ["HighErrorRate"]
