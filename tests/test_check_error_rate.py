"""The error_rate check: an app's Prometheus counters (local stand-in) and ALB metrics in moto's CloudWatch."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsagent.alerts.catalog import ALARMS
from opsagent.checks.base import CheckError
from opsagent.checks.error_rate import (
    BASIS_CLOUDWATCH,
    BASIS_DELTA,
    BASIS_FIRST,
    BASIS_RESET,
    ErrorRateCheck,
    ErrorWindow,
    Sample,
    cloudwatch_queries,
    parse_counters,
)
from opsagent.config import ErrorRateTarget
from opsagent.runtime.runner import TargetRunner
from opsagent_testing.aws import MotoServer
from opsagent_testing.servers import HangingServer, closed_port
from tests.fixtures.down import assert_down_cleanly, down_beside_healthy, run_logged

LB = "app/api-prod/50dc6c495c0c9188"


class App:
    """An app stand-in: serves whatever exposition (and status) the test sets."""

    def __init__(self) -> None:
        self.body = ""
        self.status = 200
        app = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                payload = app.body.encode()
                self.send_response(app.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, counts: dict[tuple[str, str], float], metric: str = "http_requests_total",
              status_label: str = "status") -> None:
        """Publish ``{(route, status): count}`` as a counter family plus unrelated noise."""
        base = metric.removesuffix("_total")
        lines = [f"# HELP {base} Requests served.", f"# TYPE {base} counter"]
        for (route, status), value in counts.items():
            lines.append(f'{metric}{{method="GET",route="{route}",{status_label}="{status}"}} {value}')
            lines.append(f'{base}_created{{method="GET",route="{route}",{status_label}="{status}"}} 1.7e9')
        lines += ["# TYPE process_cpu_seconds_total counter", "process_cpu_seconds_total 12.5",
                  "# TYPE http_requests_in_flight gauge", "http_requests_in_flight 3"]
        self.body = "\n".join(lines) + "\n"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def app() -> Iterator[App]:
    stand_in = App()
    try:
        yield stand_in
    finally:
        stand_in.close()


def prom_target(url: str, **kw: Any) -> ErrorRateTarget:
    return ErrorRateTarget(name="api", metrics_url=url, window=kw.pop("window", "5m"), timeout=kw.pop("timeout", "2s"), **kw)


# -- Prometheus source ------------------------------------------------------------------------------


def test_ratio_of_counter_deltas_with_a_counter_reset(app: App) -> None:
    """The 5xx share is computed from counter deltas, exactly, and an app restart starts a new baseline."""
    check = ErrorRateCheck(prom_target(app.url))
    app.serve({("/a", "200"): 900, ("/a", "500"): 40, ("/b", "503"): 10, ("/b", "404"): 50})
    first = check.measure()
    assert first.details["basis"] == BASIS_FIRST
    assert first.value == pytest.approx(50 / 1000, abs=1e-6)
    assert first.source == "prometheus"

    app.serve({("/a", "200"): 900 + 1234, ("/a", "500"): 40 + 17, ("/b", "503"): 10 + 5, ("/b", "404"): 50 + 11})
    second = check.measure()
    assert second.details["basis"] == BASIS_DELTA
    assert second.value == pytest.approx(22 / 1267, abs=1e-6)
    assert (second.details["requests"], second.details["errors_5xx"]) == (1267, 22)
    alarm = ALARMS["HighErrorRate"]
    assert alarm.comparison.breached(second.value, alarm.threshold or 0)
    routes = check.context()["top_failing_routes"]
    assert [(r["route"], r["errors_5xx"]) for r in routes] == [("/a", 17), ("/b", 5)]

    app.serve({("/a", "200"): 70, ("/c", "502"): 3})  # the app restarted: every counter went down
    reset = check.measure()
    assert reset.details["basis"] == BASIS_RESET
    assert 0 <= reset.value <= 1
    assert reset.value == pytest.approx(3 / 73, abs=1e-6)

    app.serve({("/a", "200"): 70 + 400, ("/c", "502"): 3 + 9, ("/a", "500"): 1})
    after = check.measure()
    assert after.details["basis"] == BASIS_DELTA
    assert after.value == pytest.approx(10 / 410, abs=1e-6)
    gauges = {g.name: g.value for g in after.gauges}
    assert gauges["opsagent_error_rate_requests"] == 410 and gauges["opsagent_error_rate_errors"] == 10


def test_status_label_convention_is_configurable(app: App) -> None:
    """With status_label=code, 5xx-class label values like "5xx" count as errors."""
    app.serve({("/a", "2xx"): 990, ("/a", "5xx"): 10}, status_label="code")
    reading = ErrorRateCheck(prom_target(app.url, status_label="code")).measure()
    assert reading.value == pytest.approx(0.01, abs=1e-6)


def test_no_requests_in_the_window_is_zero_and_says_so(app: App) -> None:
    """Without requests across the window the value is 0 and the status explains why."""
    app.body = "# HELP http_requests Requests.\n# TYPE http_requests counter\n"
    check = ErrorRateCheck(prom_target(app.url))
    empty = check.measure()
    assert empty.value == 0 and empty.details["no_requests"] is True
    assert "no requests" in empty.details["summary"]
    app.serve({("/a", "500"): 5})
    fresh = ErrorRateCheck(prom_target(app.url))
    assert fresh.measure().value == 1.0  # first scrape: cumulative counters
    idle = fresh.measure()  # counters unchanged since the previous scrape
    assert idle.value == 0 and idle.details["no_requests"] is True


def test_wrong_metric_or_label_names_are_clear_errors(app: App) -> None:
    """A missing counter or a missing status label is an error naming the setting to fix."""
    app.serve({("/a", "200"): 1})
    with pytest.raises(CheckError, match="requests_metric"):
        ErrorRateCheck(prom_target(app.url, requests_metric="http_server_requests_total")).measure()
    with pytest.raises(CheckError, match="status_label"):
        ErrorRateCheck(prom_target(app.url, status_label="code")).measure()


def test_only_the_configured_counter_is_summed() -> None:
    """_created samples, other metrics and metrics sharing a prefix are ignored."""
    text = ('# TYPE http_requests counter\nhttp_requests_total{status="500"} 2\nhttp_requests_total{status="200"} 8\n'
            'http_requests_created{status="500"} 1.7e9\nhttp_requests_total_bytes{status="500"} 99\n'
            'other_total{status="500"} 7\n')
    sample = parse_counters(text, "http_requests_total", "status", None)
    assert (sample.total, sample.errors) == (10, 2)


# -- the window, pure ---------------------------------------------------------------------------------


def _reference(history: list[tuple[float, float, float]], window: float) -> tuple[float, float]:
    """Deltas from the newest sample at or before now-window (else the oldest) since the last reset."""
    since_reset = [history[0]]
    for prev, cur in itertools.pairwise(history):
        since_reset = [cur] if cur[1] < prev[1] or cur[2] < prev[2] else [*since_reset, cur]
    now, total, errors = since_reset[-1]
    if len(since_reset) == 1:
        return total, errors
    older = [s for s in since_reset[:-1] if s[0] <= now - window]
    base = older[-1] if older else since_reset[0]
    requests = total - base[1]
    # A restart whose new counters are not lower is undetectable: errors may outrun requests; clamp.
    return requests, max(0.0, min(errors - base[2], requests))


steps = st.lists(
    st.tuples(st.floats(0.5, 120), st.integers(0, 500), st.integers(0, 500), st.booleans()),
    min_size=1, max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(steps=steps, window=st.sampled_from([60.0, 300.0, 900.0]))
def test_window_ratio_matches_the_definition(steps: list[tuple[float, int, int, bool]], window: float) -> None:
    """Whatever the scrape timing and restarts, the ratio is in [0, 1] and equals the deltas across the window."""
    w = ErrorWindow(window)
    now, total, errors = 0.0, 0.0, 0.0
    history: list[tuple[float, float, float]] = []
    for dt, more, more_errors, reset in steps:
        now += dt
        if reset:
            total, errors = 0.0, 0.0
        errors += min(more_errors, more)
        total += more
        history.append((now, total, errors))
        got = w.add(Sample(now, total, errors))
        assert 0.0 <= got.ratio <= 1.0
        requests, errs = _reference(history, window)
        assert got.requests == requests and got.errors == errs
        assert got.ratio == pytest.approx(errs / requests if requests else 0.0)


def test_window_forgets_samples_older_than_needed() -> None:
    """A day of 15 s scrapes keeps only about one window of history."""
    w = ErrorWindow(300.0)
    for i in range(5760):
        w.add(Sample(i * 15.0, float(i), 0.0))
    base = w.baseline()
    assert base is not None and base.at == (5759 - 20) * 15.0


# -- CloudWatch source --------------------------------------------------------------------------------


def _put(client: Any, lb: str, metric: str, values: list[float], now: datetime) -> None:
    client.put_metric_data(Namespace="AWS/ApplicationELB", MetricData=[
        {"MetricName": metric, "Dimensions": [{"Name": "LoadBalancer", "Value": lb}],
         "Timestamp": now - timedelta(seconds=60 * (i + 1) + 5), "Value": v, "Unit": "Count"}
        for i, v in enumerate(values)
    ])


def test_cloudwatch_alb_ratio_is_computed_by_the_agent(aws: MotoServer) -> None:
    """ALB 5xx and request counts from CloudWatch give the exact ratio; other load balancers are not counted."""
    cw = boto3.client("cloudwatch", region_name="us-east-1")  # test set-up: not one of the agent's clients
    now = datetime.now(UTC)
    _put(cw, LB, "RequestCount", [5000, 4000, 3345], now)
    _put(cw, LB, "HTTPCode_Target_5XX_Count", [20, 17], now)
    _put(cw, "app/other/1111111111111111", "HTTPCode_Target_5XX_Count", [9999], now)
    _put(cw, "app/other/1111111111111111", "RequestCount", [10000], now)
    check = ErrorRateCheck(ErrorRateTarget(name="alb", cloudwatch={"load_balancer": LB}, window="5m", timeout="5s"))
    reading = check.measure()
    assert reading.value == pytest.approx(37 / 12345, abs=1e-6)
    assert (reading.details["requests"], reading.details["errors_5xx"]) == (12345, 37)
    assert reading.source == "cloudwatch"
    assert reading.details["basis"] == BASIS_CLOUDWATCH


def test_cloudwatch_without_traffic_is_zero(aws: MotoServer) -> None:
    """An ALB with no datapoints in the window has an error rate of 0, and the status says there were no requests."""
    check = ErrorRateCheck(ErrorRateTarget(name="alb", cloudwatch={"load_balancer": LB, "region": "us-east-1"},
                                           window="5m", timeout="5s"))
    reading = check.measure()
    assert reading.value == 0 and reading.details["no_requests"] is True


def test_cloudwatch_uses_two_plain_metric_queries() -> None:
    """The two ALB metrics are plain Sum queries (no metric math), filtered by the load balancer."""
    queries = cloudwatch_queries(ErrorRateTarget(name="alb", cloudwatch={"load_balancer": LB}))
    assert len(queries) == 2 and not any("Expression" in q for q in queries)
    metrics = {q["MetricStat"]["Metric"]["MetricName"] for q in queries}
    assert metrics == {"HTTPCode_Target_5XX_Count", "RequestCount"}
    for q in queries:
        assert q["MetricStat"]["Stat"] == "Sum"
        assert q["MetricStat"]["Metric"]["Namespace"] == "AWS/ApplicationELB"
        assert q["MetricStat"]["Metric"]["Dimensions"] == [{"Name": "LoadBalancer", "Value": LB}]


# -- down, refused, hanging: through the runner ---------------------------------------------------


def _run(url: str, deadline: float) -> tuple[Any, list[dict[str, Any]]]:
    return run_logged("error_rate", "api", lambda: ErrorRateCheck(prom_target(url, timeout=f"{deadline}s")), deadline)


@pytest.mark.parametrize("mode", ["refused", "unauthorized", "hanging"])
def test_unreachable_endpoint_is_reported_down_and_others_are_unaffected(app: App, mode: str) -> None:
    """A refused, auth-refusing or hanging metrics endpoint is down with a clear error within the deadline; a healthy one still answers."""
    hanging = HangingServer() if mode == "hanging" else None
    refusing = App() if mode == "unauthorized" else None
    try:
        if refusing is not None:
            refusing.status = 401
        app.serve({("/a", "200"): 10})
        url, expected = {
            "refused": (f"http://127.0.0.1:{closed_port()}/metrics", ("refused",)),
            "unauthorized": (refusing.url if refusing else "", ("HTTP 401",)),
            "hanging": (f"http://127.0.0.1:{hanging.port if hanging else 0}/metrics", ("did not answer within", "deadline")),
        }[mode]
        healthy = TargetRunner("error_rate", "other", lambda: ErrorRateCheck(prom_target(app.url)), deadline=2.0)
        good, result, logs = down_beside_healthy(lambda: _run(url, 1.5), healthy)
        assert good.up is True and good.value == 0 and good.duration < 1.5
        assert_down_cleanly(result, logs, 1.5, expected)
    finally:
        if hanging is not None:
            hanging.close()
        if refusing is not None:
            refusing.close()

