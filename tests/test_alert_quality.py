"""Alert quality (SPEC §9.4): flap detection, clear_for/recovery_threshold, error budgets, forecasts, holds.

Pure parts are property-tested against references; the pipeline is driven with
simulated time (results carry their own ``at``), so hours of traffic take
milliseconds and nothing sleeps.
"""

from __future__ import annotations

import itertools
import random
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from opsagent.alerts import flapping
from opsagent.alerts.burnrate import PAIRS, MinuteBuckets, judge, judge_low_volume
from opsagent.alerts.engine import AlertState, Observation, Phase, Rule, evaluate
from opsagent.alerts.forecast import describe, exhaustion_seconds
from opsagent.alerts.pipeline import AlertPipeline
from opsagent.alerts.silences import Silence, SilenceStore
from opsagent.checks.pgbouncer import pool_saturation
from opsagent.checks.postgres import replication_lag_max
from opsagent.checks.redis import eviction_unsafe
from opsagent.config import Settings, load_config
from opsagent.rules import render_rules
from opsagent.runtime.results import CheckResult

PROM_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


# -- flap detection --------------------------------------------------------------------------------


def _nagios_reference(history: str) -> float:
    """flapping.c's loop over a full 21-entry history (oldest first), transcribed literally."""
    entries = len(history)
    curved_changes = 0.0
    last = history[0]
    for x in range(1, entries):
        if last != history[x]:
            curved_changes += ((x - 1) * (1.25 - 0.75)) / (entries - 2) + 0.75
        last = history[x]
    return curved_changes * 100.0 / (entries - 1)


def test_flap_scores_match_the_published_examples() -> None:
    """Nagios' examples: a steady history scores 0 %, one that changes on every check 100 %, and newer changes weigh more."""
    assert flapping.percent_state_change("0" * 21) == 0.0
    assert flapping.percent_state_change("01" * 10 + "0") == pytest.approx(100.0)
    newest = flapping.percent_state_change("0" * 20 + "1")
    oldest = flapping.percent_state_change("1" + "0" * 20)
    assert newest == pytest.approx(1.25 * 100 / 20) and oldest == pytest.approx(0.75 * 100 / 20)
    # 7 changes out of 20 transitions: 35 % unweighted; the weighting keeps it within 0.75x-1.25x of that.
    seven = "000111000111000110001"
    assert sum(a != b for a, b in itertools.pairwise(seven)) == 7
    assert 0.75 * 35 <= flapping.percent_state_change(seven) <= 1.25 * 35


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="01", min_size=1, max_size=30))
def test_flap_score_equals_the_nagios_algorithm_for_any_history(history: str) -> None:
    """For any history the score is Nagios' (a short history padded with its oldest state, as Nagios initialises it)."""
    kept = history[-21:]
    padded = kept[0] * (21 - len(kept)) + kept
    assert flapping.percent_state_change(history) == pytest.approx(_nagios_reference(padded))


def _alternate(rule: Rule, results: int, interval: float = 15.0, start: float = 0.0) -> tuple[AlertState | None, list[str], float]:
    state: AlertState | None = None
    kinds = []
    at = start
    for i in range(results):
        breach = i % 2 == 0
        state, t = evaluate(state, rule, "cpu", "task", Observation(at, breach, 0.9 if breach else 0.1), interval)
        if t is not None:
            kinds.append(t.kind)
        at += interval
    return state, kinds, at


def test_target_flapping_every_interval_for_ten_minutes_pages_once_and_shows_flapping() -> None:
    """Breaching on every other 15s result for ten minutes gives one page, and the alert is marked flapping."""
    state, kinds, _ = _alternate(Rule("HighCPU", 0.8, 0, "warning"), results=40)
    assert kinds == ["firing"]
    assert state is not None and state.phase is Phase.FIRING and state.flapping


def test_flapping_alert_stops_re_paging_and_resolves_once_when_settled() -> None:
    """With clear_for 0s every good result would resolve; once flapping is detected no page or resolution goes out
    until the target settles, then it resolves exactly once."""
    rule = Rule("HighCPU", 0.8, 0, "warning", clear_for=0)
    state, kinds, at = _alternate(rule, results=40)
    assert state is not None and state.flapping and state.phase is Phase.FIRING
    first_flap = next(i for i in range(1, 41) if _alternate(rule, i)[0].flapping)  # type: ignore[union-attr]
    assert len(kinds) <= first_flap  # nothing after detection
    without = _alternate(Rule("HighCPU", 0.8, 0, "warning", clear_for=0, flap_detection=False), results=40)[1]
    assert kinds.count("firing") < without.count("firing") == 20
    after: list[str] = []
    for _ in range(30):  # settled: good results only
        state, t = evaluate(state, rule, "cpu", "task", Observation(at, False, 0.1), 15)
        at += 15
        if t is not None:
            after.append(t.kind)
    assert after == ["resolved"] and not state.flapping


# -- clear_for and recovery_threshold ---------------------------------------------------------------


def _feed(rule: Rule, values: list[float], interval: float = 15.0) -> list[tuple[int, str]]:
    state: AlertState | None = None
    out = []
    for i, v in enumerate(values):
        state, t = evaluate(state, rule, "redis", "cache", Observation(i * interval, v > rule.threshold, v), interval)
        if t is not None:
            out.append((i, t.kind))
    return out


def test_clear_for_keeps_an_alert_firing_until_the_value_is_back_that_long() -> None:
    """With clear_for 1m a firing alert resolves only after a full minute of good results, not after one interval."""
    rule = Rule("RedisMemoryHigh", 0.75, 0, "warning", clear_for=60, flap_detection=False)
    assert _feed(rule, [0.9, 0.1, 0.1, 0.1, 0.1, 0.1]) == [(0, "firing"), (5, "resolved")]
    assert _feed(Rule("RedisMemoryHigh", 0.75, 0, "warning", flap_detection=False), [0.9, 0.1, 0.1]) == [
        (0, "firing"), (2, "resolved")]


def test_recovery_threshold_holds_a_value_hovering_just_under_the_threshold() -> None:
    """A value that dips just under 75 % but stays above the 65 % recovery threshold does not resolve (no re-page churn)."""
    rule = Rule("RedisMemoryHigh", 0.75, 0, "warning", recovery_threshold=0.65, flap_detection=False)
    assert _feed(rule, [0.8, 0.74, 0.76, 0.72, 0.74, 0.70]) == [(0, "firing")]
    assert _feed(rule, [0.8, 0.74, 0.6, 0.6]) == [(0, "firing"), (3, "resolved")]


def test_clear_for_and_recovery_threshold_are_config_keys_with_clear_errors() -> None:
    """alerts.X.clear_for and recovery_threshold reach the engine; a bad recovery_threshold names its key."""
    s = Settings(alerts={"RedisMemoryHigh": {"clear_for": "10m", "recovery_threshold": "60%"}})
    alarm = s.alarm("RedisMemoryHigh")
    assert alarm.clear_for == 600 and alarm.recovery_threshold == pytest.approx(0.6)
    with pytest.raises(ValueError, match=r"alerts.RedisMemoryHigh.recovery_threshold"):
        Settings(alerts={"RedisMemoryHigh": {"recovery_threshold": "160%"}})


# -- burn rates ------------------------------------------------------------------------------------


def _reference_totals(events: list[tuple[float, float, float]], now: float, buckets: int, width: float) -> tuple[float, float]:
    """Brute force: every event whose minute bucket is among the last ``buckets`` ending with now's."""
    last = int(now // width)
    req = sum(r for t, r, _ in events if last - buckets < int(t // width) <= last and t <= now)
    err = sum(e for t, _, e in events if last - buckets < int(t // width) <= last and t <= now)
    return req, err


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(st.tuples(st.floats(0.5, 400), st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=80),
    objective=st.sampled_from([0.99, 0.995, 0.999]),
    min_events=st.integers(1, 60),
    scale=st.sampled_from([1 / 60, 0.01, 0.1]),
)
def test_burn_rates_equal_a_brute_force_reference(steps: list[tuple[float, int, int]], objective: float,
                                                  min_events: int, scale: float) -> None:
    """Over any random series, every window pair's burn rates and verdict equal a brute-force recount of the raw events."""
    buckets = MinuteBuckets(scale)
    events: list[tuple[float, float, float]] = []
    at = 0.0
    for dt, requests, errors in steps:
        at += dt
        errors = min(errors, requests)
        buckets.add(at, requests, errors)
        events.append((at, requests, errors))
    budget = 1 - objective
    for verdict in judge(buckets, at, objective, min_events, scale):
        for seconds, got_burn in ((verdict.pair.long_seconds, verdict.long_burn),
                                  (verdict.pair.short_seconds, verdict.short_burn)):
            req, err = _reference_totals(events, at, round(seconds * scale / buckets.width), buckets.width)
            assert got_burn == pytest.approx((err / req) / budget if req else 0.0)
        long_req, long_err = _reference_totals(events, at, round(verdict.pair.long_seconds * scale / buckets.width),
                                               buckets.width)
        short_req, short_err = _reference_totals(events, at, round(verdict.pair.short_seconds * scale / buckets.width),
                                                 buckets.width)
        if long_req < min_events or short_req < min_events:
            assert verdict.breaching is None
        else:
            assert verdict.breaching == (long_err / long_req / budget > verdict.pair.factor
                                         and short_err / short_req / budget > verdict.pair.factor)


def _slo_settings(tmp_path: Path, **slo: Any) -> Settings:
    policy = {"objective": "99.9%", "min_events": 20, **slo}
    return Settings(agent={"name": "api-sidecar", "state_dir": str(tmp_path)},
                    checks={"error_rate": [{"name": "api", "metrics_url": "http://127.0.0.1:1/metrics",
                                            "interval": "15s", "slo": policy}]})


class Traffic:
    """The app's cumulative counters, advanced by a rate and error ratio, as results at simulated times."""

    def __init__(self, pipeline: AlertPipeline, at: float = 1_800_000_000.0) -> None:
        self.p, self.at, self.requests, self.errors = pipeline, at, 0.0, 0.0

    def run(self, seconds: float, rps: float, error_ratio: float, step: float = 15.0) -> list[dict[str, Any]]:
        """Feed results every ``step`` seconds; return the fired pages (history events) during the run."""
        before = len([e for e in self.p.history(1000) if e.kind == "fired"])
        end = self.at + seconds
        while self.at < end:
            self.at += step
            self.requests += rps * step
            self.errors += rps * step * error_ratio
            self.p.on_result(CheckResult("error_rate", "api", True, 0.0, self.at, 0.01, details={
                "requests_total": self.requests, "errors_total": round(self.errors)}))
        fired = [e for e in self.p.history(1000) if e.kind == "fired"]
        return [{"alertname": e.alertname, "severity": e.severity, "at": e.at} for e in fired[: len(fired) - before]]


def test_a_total_outage_at_99_9_percent_pages_error_budget_burn_critical_within_two_minutes(tmp_path: Path) -> None:
    """After an hour of healthy traffic, 100 % errors page ErrorBudgetBurn (critical, window 1h/5m) within 2 minutes."""
    p = AlertPipeline(_slo_settings(tmp_path), tmp_path)
    traffic = Traffic(p)
    assert traffic.run(3600, rps=10, error_ratio=0.0) == []
    outage_start = traffic.at
    pages = traffic.run(120, rps=10, error_ratio=1.0)
    assert any(pg["alertname"] == "ErrorBudgetBurn" and pg["severity"] == "critical" for pg in pages)
    assert max(pg["at"] for pg in pages) - outage_start <= 120
    windows = {a["labels"].get("window") for a in p.alerts() if a["alertname"] == "ErrorBudgetBurn"}
    assert "1h/5m" in windows
    burn = next(a for a in p.alerts() if a["labels"].get("window") == "1h/5m")
    assert burn["labels"]["severity"] == "critical" and "burn rate" in burn["annotations"]["description"]


def test_a_trickle_of_errors_well_inside_the_budget_never_pages_for_hours(tmp_path: Path) -> None:
    """0.05 % errors (half the 0.1 % budget) for six hours never pages any burn-rate window or the low-volume alarm."""
    p = AlertPipeline(_slo_settings(tmp_path), tmp_path)
    assert Traffic(p).run(6 * 3600, rps=20, error_ratio=0.0005, step=60) == []
    assert [a for a in p.alerts() if a["alertname"].startswith("ErrorBudget")] == []


def test_a_quiet_service_failing_90_percent_is_caught_by_the_low_volume_alarm(tmp_path: Path) -> None:
    """0.5 req/s at 90 % errors, below min_events in 5 minutes, pages ErrorBudgetLowVolume within 5 minutes."""
    p = AlertPipeline(_slo_settings(tmp_path, min_events=200), tmp_path)
    traffic = Traffic(p)
    traffic.run(1800, rps=0.5, error_ratio=0.0)
    start = traffic.at
    pages = traffic.run(300, rps=0.5, error_ratio=0.9)
    low = [pg for pg in pages if pg["alertname"] == "ErrorBudgetLowVolume"]
    assert low and low[0]["at"] - start <= 300
    assert not any(a["labels"].get("window") == "1h/5m" for a in p.alerts())  # too few requests to judge


def test_error_budget_buckets_survive_an_agent_restart(tmp_path: Path) -> None:
    """A restarted agent still knows the last hour's errors: the burn continues instead of starting from zero."""
    first = AlertPipeline(_slo_settings(tmp_path), tmp_path)
    traffic = Traffic(first)
    traffic.run(600, rps=10, error_ratio=0.0)
    first.stop(1)
    second = AlertPipeline(_slo_settings(tmp_path), tmp_path)
    status = second.quality.status(traffic.at)["slo"][0]
    assert status["windows"][0]["requests_long"] >= 10 * 500


def test_windows_show_insufficient_data_until_they_hold_min_events(tmp_path: Path) -> None:
    """Before any traffic every window pair is insufficient_data on /status, and nothing pages."""
    p = AlertPipeline(_slo_settings(tmp_path), tmp_path)
    states = [w["state"] for w in p.quality.status(1_800_000_000.0)["slo"][0]["windows"]]
    assert states == ["insufficient_data"] * len(PAIRS)


def test_the_shipped_slo_rules_are_what_rules_export_prints_and_pass_promtool_test() -> None:
    """deploy/prometheus/slo-rules.yml equals `rules export` of slo-example.yaml, and its promtool unit test passes."""
    expected = render_rules(load_config(PROM_DIR / "slo-example.yaml", env={}))
    assert (PROM_DIR / "slo-rules.yml").read_text() == expected, "regenerate: opsagent rules export --config " \
        "deploy/prometheus/slo-example.yaml > deploy/prometheus/slo-rules.yml"
    tested = subprocess.run(["promtool", "test", "rules", "slo-rules.test.yml"], capture_output=True, text=True,
                            timeout=60, cwd=PROM_DIR)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_agent_judges_the_promtool_scenario_like_the_exported_rules() -> None:
    """Replaying slo-rules.test.yml's series through the agent's evaluation fires the same windows at the same times."""
    unit = yaml.safe_load((PROM_DIR / "slo-rules.test.yml").read_text())
    settings_ = load_config(PROM_DIR / "slo-example.yaml", env={})
    for case in unit["tests"]:
        series = {}
        for s in case["input_series"]:
            target = s["series"].split('target="')[1].split('"')[0]
            series.setdefault(target, {})["errors" if "errors_total" in s["series"] else "requests"] = _expand(s["values"])
        for target, counters in series.items():
            policy = next(t.slo for t in settings_.checks.error_rate if t.name == target)
            assert policy is not None
            buckets = MinuteBuckets()
            for minute in range(1, len(counters["requests"])):
                buckets.add(minute * 60.0, counters["requests"][minute] - counters["requests"][minute - 1],
                            counters["errors"][minute] - counters["errors"][minute - 1])
                for check in case["alert_rule_test"]:
                    if _minutes(check["eval_time"]) != minute:
                        continue
                    mine = [a for a in check["exp_alerts"] if a["exp_labels"]["target"] == target]
                    if check["alertname"] == "ErrorBudgetBurn":
                        fired = {v.pair.name for v in judge(buckets, minute * 60.0, policy.objective,
                                                            policy.min_events) if v.breaching}
                        assert fired == {a["exp_labels"]["window"] for a in mine}, (target, minute)
                    else:
                        low = judge_low_volume(buckets, minute * 60.0, policy.objective, policy.min_events,
                                               policy.low_volume_errors)
                        assert low.breaching == bool(mine), (target, minute)


def _expand(values: str) -> list[float]:
    out: list[float] = []
    for part in values.split():
        start, _, rest = part.partition("+")
        step, _, count = rest.partition("x")
        out.extend(float(start) + float(step) * i for i in range(int(count) + 1))
    return out


def _minutes(text: str) -> int:
    return int(text.removesuffix("m"))


# -- forecasts -------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(start=st.floats(0.0, 0.9), slope=st.floats(1e-5, 1e-2), n=st.integers(5, 40))
def test_a_linear_rise_forecasts_the_exact_time_to_100_percent(start: float, slope: float, n: int) -> None:
    """On any exactly linear rising series the forecast is (1 - newest) / slope seconds."""
    points = [(15.0 * i, start + slope * 15.0 * i) for i in range(n)]
    expected = (1 - points[-1][1]) / slope
    got = exhaustion_seconds(points)
    if points[-1][1] >= 1:
        assert got == 0.0
    elif expected <= 7 * 86400:
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_noise_a_flat_or_falling_trend_gives_no_forecast() -> None:
    """The R² gate refuses a noisy series; flat and falling ones never reach 100 %."""
    rng = random.Random(7)
    noisy = [(15.0 * i, 0.5 + rng.uniform(-0.2, 0.2) + 0.0001 * i) for i in range(30)]
    assert exhaustion_seconds(noisy) is None
    assert exhaustion_seconds([(15.0 * i, 0.5) for i in range(30)]) is None
    assert exhaustion_seconds([(15.0 * i, 0.9 - 0.001 * i) for i in range(30)]) is None
    assert exhaustion_seconds([(0, 0.1), (15, 0.2)]) is None  # too few points to trust


def test_a_page_that_fires_says_how_long_until_100_percent(tmp_path: Path) -> None:
    """A PostgresConnectionsExhausted page carries "≈N min to 100 % at the current rate" and the metric is exported."""
    s = Settings(agent={"state_dir": str(tmp_path)},
                 checks={"postgres": [{"name": "main", "dsn": "postgresql://u@127.0.0.1:1/db", "interval": "15s"}]})
    p = AlertPipeline(s, tmp_path)
    at = 1_800_000_000.0
    for i in range(13):  # +0.5 points per 15s: 90 % at the 9th result, fires after its 1m `for`
        p.on_result(CheckResult("postgres", "main", True, 0.86 + 0.005 * i, at + 15 * i, 0.01))
    assert describe(37 * 60) == "≈37 min to 100 % at the current rate"
    assert [e.alertname for e in p.history() if e.kind == "fired"] == ["PostgresConnectionsExhausted"]
    (alert,) = p.alerts()
    assert "≈4 min to 100 % at the current rate" in alert["annotations"]["description"]
    samples = {m.name: m.samples for m in p.collect()}
    (sample,) = samples["opsagent_exhaustion_seconds"]
    assert sample.labels == {"check": "postgres", "target": "main"}
    assert sample.value == pytest.approx((1 - (0.86 + 0.005 * 12)) / (0.005 / 15), rel=1e-6)


# -- maintenance windows and silences ------------------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def _two_redis(tmp_path: Path, now: float, **extra: Any) -> Settings:
    return Settings(agent={"state_dir": str(tmp_path)}, checks={"redis": [
        {"name": "cache", "url": "redis://127.0.0.1:1/0", "interval": "15s"},
        {"name": "sessions", "url": "redis://127.0.0.1:1/1", "interval": "15s"}]},
        alerts={"RedisMemoryHigh": {"for": "0s"}}, **extra)


def test_a_maintenance_window_holds_pages_of_its_target_only_and_the_page_shows_it(tmp_path: Path) -> None:
    """During maintenance of `cache`, its breach is shown as silenced and not paged; `sessions` still pages."""
    now = 1_800_000_000.0
    window = [{"match": {"target": "cache"}, "start": _iso(now - 60), "end": _iso(now + 600), "comment": "resize"}]
    p = AlertPipeline(_two_redis(tmp_path, now, maintenance=window), tmp_path, clock=lambda: now)
    for target in ("cache", "sessions"):
        p.on_result(CheckResult("redis", target, True, 0.95, now, 0.01))
    assert [e.target for e in p.history() if e.kind == "fired"] == ["sessions"]
    shown = {a["target"]: a for a in p.alerts()}
    assert shown["cache"]["silenced"] is True and shown["cache"]["silenced_by"]["source"] == "maintenance"
    assert shown["sessions"]["silenced"] is False
    holds = p.quality.status(now)["silences"]
    assert holds[0]["match"] == {"target": "cache"} and holds[0]["active"] and holds[0]["comment"] == "resize"


def test_a_breach_still_firing_when_maintenance_ends_is_paged_then(tmp_path: Path) -> None:
    """A held alert that still fires after the window closes is paged on the next tick; one resolved meanwhile never is."""
    clock = [1_800_000_000.0]
    window = [{"match": {"target": "cache"}, "start": _iso(clock[0] - 60), "end": _iso(clock[0] + 60)}]
    p = AlertPipeline(_two_redis(tmp_path, clock[0], maintenance=window), tmp_path, clock=lambda: clock[0])
    p.on_result(CheckResult("redis", "cache", True, 0.95, clock[0], 0.01))
    p.tick()
    assert [e for e in p.history() if e.kind == "fired"] == []
    clock[0] += 120
    p.tick()
    assert [(e.kind, e.target) for e in p.history()] == [("fired", "cache")]


def test_a_silence_from_the_store_holds_pages_the_daemon_already_runs_with(tmp_path: Path) -> None:
    """A silence written to state_dir after the pipeline started holds that target's next page without a restart."""
    now = 1_800_000_000.0
    p = AlertPipeline(_two_redis(tmp_path, now), tmp_path, clock=lambda: now)
    SilenceStore(tmp_path).add(Silence(match={"target": "sessions"}, starts_at=now - 1, ends_at=now + 7200,
                                       comment="deploy"), now)
    for target in ("cache", "sessions"):
        p.on_result(CheckResult("redis", target, True, 0.95, now, 0.01))
    assert [e.target for e in p.history() if e.kind == "fired"] == ["cache"]
    assert {a["target"]: a["silenced"] for a in p.alerts()} == {"cache": False, "sessions": True}


def test_maintenance_config_errors_name_the_key() -> None:
    """An end before its start, a naive time or an empty match is a config error naming maintenance."""
    for bad in ({"match": {"target": "x"}, "start": "2026-12-01T10:00:00Z", "end": "2026-12-01T09:00:00Z"},
                {"match": {"target": "x"}, "start": "2026-12-01T10:00:00", "end": "2026-12-01T11:00:00"},
                {"match": {}, "start": "2026-12-01T10:00:00Z", "end": "2026-12-01T11:00:00Z"}):
        with pytest.raises(ValueError, match="maintenance"):
            Settings(maintenance=[bad])


# -- the new alarms' measurements ------------------------------------------------------------------


def test_replica_lag_alarm_reads_a_replicas_own_lag_or_a_primarys_slowest_replica() -> None:
    """PostgresReplicaLagHigh compares a replica's lag, or on a primary the worst replay_lag; a lone primary has none."""
    assert replication_lag_max(True, 75.0, None) == 75.0
    assert replication_lag_max(False, None, 90.5) == 90.5
    assert replication_lag_max(False, None, None) is None


def test_pool_saturation_is_the_busiest_pools_active_share() -> None:
    """PgBouncerPoolSaturated compares the busiest pool's sv_active / pool_size (pools without a size ignored)."""
    pools = [{"sv_active": 9, "pool_size": 10}, {"sv_active": 1, "pool_size": 20}, {"sv_active": 3, "pool_size": 0}]
    assert pool_saturation(pools) == 0.9
    assert pool_saturation([]) is None


def test_only_noeviction_is_safe_for_a_queue() -> None:
    """Any maxmemory_policy other than noeviction (or none reported) is unsafe for a Redis backing a queue."""
    assert eviction_unsafe("noeviction") == 0
    assert [eviction_unsafe(p) for p in ("allkeys-lru", "volatile-ttl", None)] == [1, 1, 1]


def test_a_severity_override_applies_to_every_window_pair_in_agent_and_rules(tmp_path: Path) -> None:
    """alerts.ErrorBudgetBurn.severity replaces the per-pair severities, in the agent's pages and the exported rules."""
    s = Settings(agent={"state_dir": str(tmp_path)}, alerts={"ErrorBudgetBurn": {"severity": "warning"}},
                 checks={"error_rate": [{"name": "api", "metrics_url": "http://127.0.0.1:1/metrics", "interval": "15s",
                                         "slo": {"objective": "99.9%"}}]})
    rules = [r for r in yaml.safe_load(render_rules(s))["groups"][0]["rules"] if r["alert"] == "ErrorBudgetBurn"]
    assert [r["labels"]["severity"] for r in rules] == ["warning"] * 4
    p = AlertPipeline(s, tmp_path)
    traffic = Traffic(p)
    traffic.run(600, rps=10, error_ratio=0.0)
    pages = traffic.run(120, rps=10, error_ratio=1.0)
    assert pages and {pg["severity"] for pg in pages if pg["alertname"] == "ErrorBudgetBurn"} == {"warning"}


def test_a_restarted_agent_neither_repages_nor_forgets_a_burning_window(tmp_path: Path) -> None:
    """ErrorBudgetBurn alerts (one per window label) survive a restart: no second page, and they still resolve."""
    first = AlertPipeline(_slo_settings(tmp_path), tmp_path)
    traffic = Traffic(first)
    traffic.run(3600, rps=10, error_ratio=0.0)
    assert traffic.run(120, rps=10, error_ratio=1.0)
    firing = sorted(a["labels"]["window"] for a in first.alerts() if a["alertname"] == "ErrorBudgetBurn")
    first.stop(1)
    second = AlertPipeline(_slo_settings(tmp_path), tmp_path)
    assert sorted(a["labels"]["window"] for a in second.alerts() if a["alertname"] == "ErrorBudgetBurn") == firing
    traffic.p = second
    assert traffic.run(60, rps=10, error_ratio=1.0) == []  # still burning: no new page
    traffic.run(7 * 3600, rps=10, error_ratio=0.0, step=60)  # past the 6h short window of the slowest pair
    resolved = [e for e in second.history(1000) if e.kind == "resolved" and e.alertname == "ErrorBudgetBurn"]
    assert len(resolved) == len(firing) and not [a for a in second.alerts() if a["alertname"] == "ErrorBudgetBurn"]


def test_a_flapping_target_shows_state_flapping_on_status_and_pages_once(tmp_path: Path) -> None:
    """Ten minutes of a Redis swinging across its threshold every 15s: one page, and /status says flapping."""
    s = Settings(agent={"state_dir": str(tmp_path)}, alerts={"RedisMemoryHigh": {"for": "0s"}},
                 checks={"redis": [{"name": "cache", "url": "redis://127.0.0.1:1/0", "interval": "15s"}]})
    p = AlertPipeline(s, tmp_path)
    for i in range(40):
        p.on_result(CheckResult("redis", "cache", True, 0.9 if i % 2 == 0 else 0.5, 1_800_000_000.0 + 15 * i, 0.01))
    assert [e.kind for e in p.history()] == ["fired"]
    (alert,) = p.alerts()
    assert alert["state"] == "flapping" and alert["flap_percent"] > 50
    assert p.alarm_state("redis", "cache")["state"] == "flapping"
