"""The cached /metrics renderer gives exactly what prometheus_client would render, and follows changes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from opsagent.checks.base import Gauge
from opsagent.runtime.results import CheckResult, ResultStore
from opsagent.telemetry.metrics import ResultsCollector


def result(check: str, target: str, value: float | None, at: float, **labels: str) -> CheckResult:
    gauges = (Gauge("opsagent_test_connections", 3.0 + at, {"state": "idle", **labels}, 'help with "quotes"\\'),
              Gauge("opsagent_test_bytes", 1024.0 * at, {}, "bytes"))
    return CheckResult(check, target, value is not None, value, at, 0.01, error=None if value is not None else "down",
                       gauges=gauges if value is not None else ())


def reference(collector: ResultsCollector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


def test_cached_render_equals_prometheus_client_render_across_updates() -> None:
    """After every kind of change (new target, new value, target down, odd label text) the bytes are identical."""
    store = ResultStore()
    stats: dict[str, dict[tuple[str, str], int]] = {"opsagent_scheduler_runs_total": {}}
    collector = ResultsCollector(store, lambda: stats)
    steps = [
        result("postgres", "main", 0.5, 1.0),
        result("redis", "cache", 0.25, 2.0, db='0"\n\\x'),
        result("postgres", "main", 0.75, 3.0),
        result("redis", "cache", None, 4.0),
        result("postgres", "replica", 0.1, 5.0),
    ]
    for i, step in enumerate(steps):
        store.record(step)
        stats["opsagent_scheduler_runs_total"][step.key] = i + 1
        assert collector.render() == reference(collector), f"after step {i}"
    assert b'opsagent_check_up{check="redis",target="cache"} 0.0' in collector.render()
    assert b'opsagent_check_value{check="postgres",target="main"} 0.75' in collector.render()


def test_exposition_rerenders_on_change_and_gzip_follows() -> None:
    """After a change both the plain and the gzip body show the new value; without a change they are reused."""
    import gzip

    from prometheus_client import Gauge as PromGauge

    from opsagent.telemetry.metrics import Exposition

    registry = CollectorRegistry(auto_describe=False)
    gauge = PromGauge("opsagent_test_value", "test", registry=registry)
    version = [0]
    exposition = Exposition(registry, lambda: version[0], max_age=3600)
    gauge.set(1)
    first = exposition.body(False)
    assert b"opsagent_test_value 1.0" in first
    gauge.set(2)
    assert exposition.body(False) is first  # nothing announced the change: the cached body is served
    version[0] += 1
    assert b"opsagent_test_value 2.0" in exposition.body(False)
    assert b"opsagent_test_value 2.0" in gzip.decompress(exposition.body(True))
    gauge.set(3)
    version[0] += 1
    assert b"opsagent_test_value 3.0" in gzip.decompress(exposition.body(True))
    assert b"opsagent_test_value 3.0" in exposition.body(False)


def test_results_of_one_shape_reuse_their_line_layout_and_stay_identical() -> None:
    """A target reporting the same gauges with new numbers, then a changed set of gauges, always renders as prometheus_client would."""
    store = ResultStore()
    collector = ResultsCollector(store)

    def by_state(at: float, states: tuple[str, ...], extra: bool = False) -> CheckResult:
        gauges = tuple(Gauge("opsagent_test_connections", at * (i + 1), {"state": st}, "by state")
                       for i, st in enumerate(states))
        if extra:
            gauges += (Gauge("opsagent_test_lag_seconds", at / 3, {}, "lag"),)
        return CheckResult("postgres", "main", True, at / 10, 1000.0 + at, 0.01, gauges=gauges)

    steps = [by_state(1.0, ("idle", "active", 'o"dd')), by_state(2.5, ("idle", "active", 'o"dd')),
             by_state(7.0, ("idle", "active", 'o"dd')), by_state(8.0, ("idle", "active"), extra=True),
             by_state(9.0, ("idle", "active"), extra=True), by_state(1e-9, ("idle", "active", 'o"dd'))]
    for i, step in enumerate(steps):
        store.record(step)
        assert collector.render() == reference(collector), f"after step {i}"
    assert b'opsagent_test_connections{check="postgres",state="active",target="main"} 2e-09' in collector.render()


def test_reading_counters_render_as_counters_next_to_their_deprecated_gauges() -> None:
    """A reading's Counter renders as a `_total` counter beside the release-1 gauge of the same count, as prometheus_client would."""
    from opsagent.checks.base import Counter

    store = ResultStore()
    collector = ResultsCollector(store)
    for at in (1.0, 2.0):
        store.record(CheckResult("redis", "cache", True, 0.5, at, 0.01, gauges=(
            Gauge("opsagent_redis_evicted_keys", 7.0 * at, {}, "deprecated, removed in release 3"),
            Counter("opsagent_redis_evicted_keys_total", 7.0 * at, {}, "keys evicted"))))
        body = collector.render()
        assert body == reference(collector)
    assert b"# TYPE opsagent_redis_evicted_keys_total counter\n" in body
    assert b'opsagent_redis_evicted_keys_total{check="redis",target="cache"} 14.0\n' in body
    assert b"# TYPE opsagent_redis_evicted_keys gauge\n" in body
