"""The pure alert engine: for, hysteresis, unknown-when-down, overrides, fingerprints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from opsagent.alerts.catalog import ALARMS
from opsagent.alerts.engine import (
    AlertState,
    EngineConfig,
    Observation,
    Phase,
    Rule,
    evaluate,
    evaluate_result,
)
from opsagent.alerts.pipeline import engine_config
from opsagent.alerts.render import (
    ANNOTATION_NAMES,
    LABEL_NAMES,
    Identity,
    alert_payload,
    fingerprint,
    labels_for,
)
from opsagent.config import Settings

REDIS = Rule("RedisMemoryHigh", threshold=0.75, for_seconds=300, severity="warning")


def _config(**rules: Rule) -> EngineConfig:
    base = {r.name: r for r in (REDIS, Rule("TargetDown", 0.0, 60, "critical"))}
    base.update(rules)
    return EngineConfig(rules=base, intervals={("redis", "cache"): 15.0}, down_kinds=("redis", "postgres"))


def _run(config: EngineConfig, results: list[tuple[float, bool, float | None]], check: str = "redis",
         target: str = "cache", details: Mapping[str, Any] | None = None) -> tuple[dict, list]:
    states: dict = {}
    transitions = []
    for at, up, value in results:
        new, ts = evaluate_result(states, config, check=check, target=target, up=up, value=value,
                                  details=details or {}, at=at)
        states.update({s.key: s for s in new})
        transitions.extend(ts)
    return states, transitions


def test_alert_is_pending_until_for_has_elapsed_then_fires() -> None:
    """A breach is pending for the alarm's `for` and fires once it has lasted that long."""
    states, ts = _run(_config(), [(0, True, 0.9), (150, True, 0.9), (299, True, 0.9)])
    assert states[("RedisMemoryHigh", "redis", "cache")].phase is Phase.PENDING
    assert ts == []
    states, ts = _run(_config(), [(0, True, 0.9), (150, True, 0.9), (300, True, 0.9)])
    assert [t.kind for t in ts] == ["firing"]
    assert ts[0].state.pending_since == 0 and ts[0].state.firing_since == 300


def test_zero_for_fires_on_the_first_breaching_result() -> None:
    """An alarm with `for: 0s` fires on the very first breaching result."""
    rule = Rule("BackupStale", threshold=3600, for_seconds=0, severity="critical")
    config = EngineConfig(rules={"BackupStale": rule}, down_kinds=("redis",))
    _, ts = _run(config, [(10, True, 4000.0)], check="backup", target="main")
    assert [t.kind for t in ts] == ["firing"]


def test_one_good_result_restarts_the_for_clock() -> None:
    """A dip under the threshold while pending restarts the `for` clock (breaches must be consecutive)."""
    _, ts = _run(_config(), [(0, True, 0.9), (200, True, 0.5), (250, True, 0.9), (400, True, 0.9)])
    assert ts == []
    _, ts = _run(_config(), [(0, True, 0.9), (200, True, 0.5), (250, True, 0.9), (550, True, 0.9)])
    assert [t.kind for t in ts] == ["firing"]


def test_firing_alert_resolves_only_after_a_whole_interval_under_threshold() -> None:
    """A firing alert survives one good result and resolves after good results spanning the target's interval."""
    firing = [(0, True, 0.9), (300, True, 0.9)]
    _, ts = _run(_config(), [*firing, (315, True, 0.1)])
    assert [t.kind for t in ts] == ["firing"]
    _, ts = _run(_config(), [*firing, (315, True, 0.1), (329, True, 0.1)])
    assert [t.kind for t in ts] == ["firing"]
    states, ts = _run(_config(), [*firing, (315, True, 0.1), (330, True, 0.1)])
    assert [t.kind for t in ts] == ["firing", "resolved"]
    assert ts[1].state.resolved_at == 330
    assert states[("RedisMemoryHigh", "redis", "cache")].phase is Phase.INACTIVE


def test_a_breach_during_the_clear_interval_keeps_the_alert_firing() -> None:
    """A breach between two good results restarts the hysteresis interval."""
    _, ts = _run(_config(), [(0, True, 0.9), (300, True, 0.9), (315, True, 0.1), (320, True, 0.8),
                             (330, True, 0.1), (340, True, 0.1)])
    assert [t.kind for t in ts] == ["firing"]


def test_down_target_fires_target_down_and_leaves_value_alarm_unknown() -> None:
    """A target that stops answering fires TargetDown; its firing value alarm is neither resolved nor re-fired."""
    results = [(0, True, 0.9), (300, True, 0.9)] + [(300 + 15 * i, False, None) for i in range(1, 6)]
    states, ts = _run(_config(), results)
    assert [(t.kind, t.state.alertname) for t in ts] == [("firing", "RedisMemoryHigh"), ("firing", "TargetDown")]
    value_state = states[("RedisMemoryHigh", "redis", "cache")]
    assert value_state.phase is Phase.FIRING and value_state.unknown
    # Back up and fine: TargetDown and the value alarm both resolve after the hysteresis interval.
    states, ts2 = _run(_config(), [*results, (400, True, 0.1), (415, True, 0.1)])
    assert sorted((t.kind, t.state.alertname) for t in ts2[2:]) == [("resolved", "RedisMemoryHigh"),
                                                                     ("resolved", "TargetDown")]


def test_down_target_drops_a_pending_value_alarm() -> None:
    """A pending value alarm of a target that goes down becomes unknown instead of firing."""
    states, ts = _run(_config(), [(0, True, 0.9), (100, False, None), (400, True, 0.9)])
    assert ts == []
    assert states[("RedisMemoryHigh", "redis", "cache")].pending_since == 400


def test_synthetic_down_results_never_raise_target_down() -> None:
    """A down result from the backup subsystem (not a check kind) does not page TargetDown."""
    config = engine_config(Settings())
    _, ts = _run(config, [(0, False, None), (1000, False, None)], check="backup", target="main")
    assert ts == []


def test_disabled_alarm_never_fires_and_resolves_if_it_was_firing() -> None:
    """Disabling an alarm stops it firing; an alert already firing is resolved rather than left hanging."""
    off = Rule("RedisMemoryHigh", 0.75, 300, "warning", enabled=False)
    _, ts = _run(_config(RedisMemoryHigh=off), [(0, True, 0.99), (1000, True, 0.99)])
    assert ts == []
    firing = AlertState("RedisMemoryHigh", "redis", "cache", phase=Phase.FIRING, firing_since=5, notified=True)
    state, t = evaluate(firing, off, "redis", "cache", Observation(10, True, 0.99), 15)
    assert t is not None and t.kind == "resolved" and state.phase is Phase.INACTIVE


def test_config_overrides_change_threshold_for_and_severity() -> None:
    """`alerts.<Name>` in config re-thresholds, re-times and re-grades an alarm."""
    s = Settings(alerts={"RedisMemoryHigh": {"threshold": "50%", "for": "1m", "severity": "critical"}},
                 checks={"redis": [{"name": "cache", "url": "redis://127.0.0.1:1/0", "interval": "10s"}]})
    config = engine_config(s)
    _, ts = _run(config, [(0, True, 0.6), (60, True, 0.6)])
    assert [t.kind for t in ts] == ["firing"]
    assert ts[0].state.severity == "critical" and ts[0].state.threshold == 0.5


def test_field_alarm_compares_the_named_detail() -> None:
    """An alarm with a `field` compares that detail of the result, not its main value."""
    field_rules = [a for a in ALARMS.values() if a.field and a.for_seconds == 0]
    spec = field_rules[0]
    config = engine_config(Settings())
    _, ts = _run(config, [(0, True, 0.0)], check=spec.check or "", target="t", details={spec.field: 5})
    assert spec.name in [t.state.alertname for t in ts]


def test_stale_out_of_order_result_is_ignored() -> None:
    """A result older than the last one seen does not move an alert backwards."""
    states, _ = _run(_config(), [(0, True, 0.9), (300, True, 0.9), (100, True, 0.1), (101, True, 0.1)])
    assert states[("RedisMemoryHigh", "redis", "cache")].phase is Phase.FIRING


def test_fingerprint_is_stable_and_depends_on_every_label() -> None:
    """Two agents with the same name give one fingerprint; another target or agent name gives another."""
    state = AlertState("HighCPU", "cpu", "task", severity="warning")
    a = fingerprint(labels_for(state, "api"))
    assert a == fingerprint(dict(reversed(list(labels_for(state, "api").items()))))
    assert a == fingerprint(labels_for(AlertState("HighCPU", "cpu", "task", severity="warning", value=0.99), "api"))
    assert a != fingerprint(labels_for(state, "worker"))
    assert a != fingerprint(labels_for(AlertState("HighCPU", "cpu", "other", severity="warning"), "api"))
    assert len(a) == 16 and int(a, 16) >= 0


def test_alert_carries_exactly_the_specified_labels_and_annotations() -> None:
    """Every alert has labels alertname/severity/check/target/agent and the five SPEC annotations."""
    state = AlertState("PostgresConnectionsExhausted", "postgres", "main", phase=Phase.FIRING, severity="critical",
                       threshold=0.9, value=0.95, pending_since=1_700_000_000, firing_since=1_700_000_060)
    ident = Identity("api", "https://runbooks.example/rb/", "http://agent:9108/")
    payload = alert_payload(state, "firing", ident, at=1_700_000_100, context={"top_holders": [{"user": "app"}]})
    assert set(payload["labels"]) == set(LABEL_NAMES)
    assert set(payload["annotations"]) == set(ANNOTATION_NAMES)
    notes = payload["annotations"]
    assert notes["runbook_url"] == "https://runbooks.example/rb/PostgresConnectionsExhausted.md"
    assert notes["value"] == "95%" and notes["threshold"] == "90%"
    assert "main" in notes["description"] and "95% >= threshold 90%" in notes["description"]
    assert "since 2023-11-14T22:13:20" in notes["description"]  # since the breach began (pending_since, UTC)
    assert "user=app" in notes["description"]
    assert payload["startsAt"] == "2023-11-14T22:13:20.000Z"


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(min_value=1, max_value=120), st.booleans()), min_size=1, max_size=60),
    for_seconds=st.sampled_from([0, 30, 60, 300]),
    interval=st.sampled_from([0, 15, 60]),
)
def test_transitions_follow_for_and_hysteresis(steps: list[tuple[int, bool]], for_seconds: int, interval: int) -> None:
    """For any sequence of readings, alerts alternate firing/resolved, fire only after `for`, clear only after the interval."""
    rule = Rule("HighCPU", 0.8, for_seconds, "warning", flap_detection=False)  # flapping: test_alert_quality.py
    state: AlertState | None = None
    firing = False
    at = 0
    run_start: float | None = None  # start of the current run of consecutive breaching results
    clear_start: float | None = None  # start of the current run of good results
    for dt, breach in steps:
        at += dt
        if breach:
            run_start = at if run_start is None else run_start
            clear_start = None
        else:
            clear_start = at if clear_start is None else clear_start
            run_start = None
        state, t = evaluate(state, rule, "cpu", "task", Observation(at, breach, 0.9 if breach else 0.1), interval)
        if t is not None:
            assert t.kind == ("resolved" if firing else "firing")
            firing = not firing
            if t.kind == "firing":
                assert run_start is not None and at - run_start >= for_seconds
            else:
                assert clear_start is not None and at - clear_start >= interval
        elif not firing:
            assert not (breach and at - (run_start or at) >= for_seconds and run_start is not None), "missed a firing"
        else:
            assert breach or (interval > 0 and at - (clear_start or at) < interval), "missed a resolution"
        assert (state.phase is Phase.FIRING) == firing


def test_severity_change_does_not_orphan_an_active_alert() -> None:
    """A firing alert keeps its severity label until it resolves, so its resolution matches the page that was sent."""
    firing = AlertState("HighCPU", "cpu", "task", phase=Phase.FIRING, severity="warning", firing_since=0, notified=True)
    critical = Rule("HighCPU", 0.8, 300, "critical")
    state, t = evaluate(firing, critical, "cpu", "task", Observation(10, False, 0.1), 0)
    assert t is not None and t.kind == "resolved" and t.state.severity == "warning"
    state, _ = evaluate(state, critical, "cpu", "task", Observation(20, True, 0.9), 0)
    assert state.severity == "critical"
