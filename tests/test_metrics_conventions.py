"""Prometheus conventions of /metrics: OpenMetrics on request, process_* of the agent, counters from 0, real histograms."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tests.fixtures.agent import RunningAgent, make_settings, poll

Start = Callable[..., RunningAgent]
OPENMETRICS = {"Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"}


def test_openmetrics_is_negotiated_and_parses_strictly(start_agent: Start) -> None:
    """A scraper asking for OpenMetrics (as Prometheus asks) gets a strictly valid OpenMetrics body ending in `# EOF`."""
    a = start_agent({"checks": {"redis": [{"name": "cache", "url": "redis://127.0.0.1:6379/0", "interval": "1s"}]}})
    poll(lambda: a.get("/readyz").status_code == 200)
    resp = requests.get(a.url + "/metrics", headers=OPENMETRICS, timeout=10)
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert resp.text.endswith("# EOF\n")
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}  # raises on any OpenMetrics violation
    assert families["opsagent_redis_evicted_keys"].type == "counter"
    assert families["opsagent_scheduler_runs"].type == "counter"
    assert families["opsagent_check_duration_seconds"].type == "histogram"
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    plain = a.get("/metrics")
    assert plain.headers["Content-Type"].startswith("text/plain")
    assert "# EOF" not in plain.text


def test_plain_scrape_has_total_counters_deprecated_gauges_and_process_metrics(start_agent: Start) -> None:
    """The text format carries the `_total` Redis counters, the release-1 gauges marked deprecated, and process_*; promtool finds nothing."""
    a = start_agent({"checks": {"redis": [{"name": "cache", "url": "redis://127.0.0.1:6379/0", "interval": "1s"}]}})
    poll(lambda: a.get("/readyz").status_code == 200)
    body = a.get("/metrics").text
    for line in ("# TYPE opsagent_redis_evicted_keys_total counter", "# TYPE opsagent_redis_expired_keys_total counter",
                 'opsagent_redis_evicted_keys_total{check="redis",target="cache"}',
                 "# HELP opsagent_redis_evicted_keys deprecated", "# HELP opsagent_redis_expired_keys deprecated",
                 "# TYPE process_resident_memory_bytes gauge", "process_open_fds", "process_start_time_seconds"):
        assert line in body, line
    proc = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_scheduler_and_notify_counters_exist_at_zero_before_any_event(tmp_path: Path) -> None:
    """Before the first run every per-target scheduler counter and every sink's counters read 0, so rate() is 0, not empty."""
    from opsagent.runtime.agent import Agent

    agent = Agent(make_settings(tmp_path, {"notify": {"alertmanager_url": "http://127.0.0.1:9/"}}))
    body = agent.exposition.body(False).decode()
    for name in ("opsagent_scheduler_runs_total", "opsagent_scheduler_missed_runs_total",
                 "opsagent_scheduler_skipped_runs_total", "opsagent_check_timeouts_total"):
        for target in ("cpu", "memory"):
            assert f'{name}{{check="{target}",target="task"}} 0.0' in body, (name, target)
    assert 'opsagent_notify_sent_total{sink="alertmanager"} 0.0' in body
    assert 'opsagent_notify_failures_total{sink="alertmanager"} 0.0' in body
    assert "opsagent_scheduler_lateness_seconds_count 0.0" in body


def test_check_durations_land_in_the_real_histogram(tmp_path: Path) -> None:
    """Each finished run is one observation of opsagent_check_duration_seconds for its check, readable from the registry."""
    from opsagent.runtime.agent import Agent

    agent = Agent(make_settings(tmp_path, {}))
    assert agent.registry.get_sample_value("opsagent_check_duration_seconds_count", {"check": "memory"}) is None
    result = agent.run_target(("memory", "task"))
    agent.run_target(("memory", "task"))
    try:
        assert agent.registry.get_sample_value("opsagent_check_duration_seconds_count", {"check": "memory"}) == 2.0
        total = agent.registry.get_sample_value("opsagent_check_duration_seconds_sum", {"check": "memory"})
        assert total is not None and total >= result.duration
        assert agent.registry.get_sample_value("opsagent_check_duration_seconds_bucket",
                                                {"check": "memory", "le": "+Inf"}) == 2.0
        assert 'opsagent_check_duration_seconds_count{check="memory"} 2.0' in agent.exposition.body(False).decode()
    finally:
        for runner in agent.runners.values():
            runner.close()


def test_a_real_prometheus_scrapes_the_openmetrics_body(start_agent: Start) -> None:
    """Prometheus (which asks for OpenMetrics first) scrapes the agent without a parse error and stores counters and process_*."""
    from opsagent_testing.alertmanager import PrometheusServer

    a = start_agent({"checks": {"redis": [{"name": "cache", "url": "redis://127.0.0.1:6379/0", "interval": "1s"}]}})
    poll(lambda: a.get("/readyz").status_code == 200)
    prometheus = PrometheusServer(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: opsagent\n    static_configs: [{{targets: ['{a.settings.agent.listen}']}}]\n")
    prometheus.start()
    try:
        up = poll(lambda: prometheus.query('up{job="opsagent"}'), timeout=30)
        assert up[0]["value"][1] == "1"  # a body Prometheus could not parse gives up 0
        for expr in ('opsagent_redis_evicted_keys_total{target="cache"}', "process_resident_memory_bytes",
                     'opsagent_scheduler_missed_runs_total{check="cpu"}'):
            assert poll(lambda e=expr: prometheus.query(e), timeout=30), expr
    finally:
        prometheus.cleanup()
