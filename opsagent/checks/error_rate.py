"""5xx responses over all requests across ``window``.

Two sources:

* an app's Prometheus endpoint (``metrics_url``): the agent scrapes the
  request counter, sums it by the status label, keeps a short history of
  ``(time, total, errors)`` samples and divides the deltas across the window.
  A counter reset (a restarted app) restarts the baseline from the new sample,
  so the ratio is never negative or inflated by a restart. Until a second
  sample exists the cumulative counters are used and ``details.basis`` says so.
* CloudWatch for an ALB (``cloudwatch.load_balancer``): ``HTTPCode_Target_5XX_Count``
  and ``RequestCount`` fetched as two plain metric queries in ONE
  ``get_metric_data`` call and divided here (metric math is not evaluated by
  every CloudWatch stand-in, and plain sums are cheaper to reason about).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from prometheus_client.parser import text_string_to_metric_families

from opsagent import __version__
from opsagent.checks.base import CheckError, Gauge, Reading
from opsagent.config import ErrorRateTarget

BASIS_DELTA = "delta over window"
BASIS_FIRST = "cumulative counters (first sample; no earlier scrape yet)"
BASIS_RESET = "cumulative counters (counter reset; baseline restarted)"
BASIS_CLOUDWATCH = "CloudWatch sums over window"
MAX_BODY_BYTES = 32 * 1024 * 1024
HISTORY_LIMIT = 10_000
# Series of the request counter read per scrape. High-cardinality route labels (a raw URL path with ids in it)
# are a common app mistake; 400 k series held per sample took a sidecar past its task's memory.
MAX_SERIES = 20_000
ROUTE_SNAPSHOTS_PER_WINDOW = 4  # per-route counts are kept this many times per window, not for every sample


def is_error_status(value: str) -> bool:
    """5xx by the usual label conventions: ``500``, ``503``, ``5xx``, ``5XX``."""
    return value[:1] == "5"


@dataclass(frozen=True)
class Sample:
    """Cumulative counters seen by one scrape at monotonic time ``at``."""

    at: float
    total: float
    errors: float
    routes: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # route -> (total, errors)


@dataclass(frozen=True)
class WindowRatio:
    ratio: float
    requests: float
    errors: float
    span_seconds: float
    basis: str


class ErrorWindow:
    """Ratio of counter deltas across a sliding window; pure, time passed in.

    The baseline is the newest sample at or before ``now - window`` (so the
    delta spans the whole window once the history is long enough), else the
    oldest sample held.
    """

    def __init__(self, window: float, limit: int = HISTORY_LIMIT) -> None:
        self.window = window
        self._samples: deque[Sample] = deque(maxlen=limit)  # totals only: routes are stripped
        self._route_snapshots: deque[Sample] = deque()  # a few samples with their per-route counts
        self._latest: Sample | None = None
        self._reset_pending = False

    def add(self, sample: Sample) -> WindowRatio:
        last = self._samples[-1] if self._samples else None
        if last is not None and (sample.total < last.total or sample.errors < last.errors):
            self._samples.clear()
            self._route_snapshots.clear()
            self._reset_pending = True
        self._latest = sample
        self._samples.append(replace(sample, routes={}) if sample.routes else sample)
        snap = self._route_snapshots[-1] if self._route_snapshots else None
        if sample.routes and (snap is None or sample.at - snap.at >= self.window / ROUTE_SNAPSHOTS_PER_WINDOW):
            self._route_snapshots.append(sample)
        horizon = sample.at - self.window
        while len(self._samples) >= 2 and self._samples[1].at <= horizon:
            self._samples.popleft()
        while len(self._route_snapshots) >= 2 and self._route_snapshots[1].at <= horizon:
            self._route_snapshots.popleft()
        if len(self._samples) == 1:
            basis = BASIS_RESET if self._reset_pending else BASIS_FIRST
            return _ratio(sample.total, sample.errors, 0.0, basis)
        self._reset_pending = False
        base = self._samples[0]
        return _ratio(sample.total - base.total, sample.errors - base.errors, sample.at - base.at, BASIS_DELTA)

    def baseline(self) -> Sample | None:
        return self._samples[0] if len(self._samples) >= 2 else None

    def baseline_routes(self) -> Mapping[str, tuple[float, float]]:
        """Per-route counts of the snapshot nearest the window's start (a window of snapshots, not of samples)."""
        latest = self._latest
        older = [s for s in self._route_snapshots if latest is None or s.at < latest.at]
        return older[0].routes if older else {}

    def latest(self) -> Sample | None:
        return self._latest


def _ratio(requests: float, errors: float, span: float, basis: str) -> WindowRatio:
    errors = max(0.0, min(errors, requests))
    ratio = errors / requests if requests > 0 else 0.0
    return WindowRatio(ratio, max(0.0, requests), errors, span, basis)


def parse_counters(text: str, metric: str, status_label: str, route_label: str | None) -> Sample:
    """Sum ``metric`` over its series by status class; CheckError if the metric is absent.

    Only the lines of ``metric`` are handed to the parser, so a large exposition
    costs a string scan, not a full parse.
    """
    base = metric.removesuffix("_total")
    lines = []
    declared = False
    series = 0
    for line in text.splitlines():
        if line.startswith(metric) and line[len(metric):len(metric) + 1] in ("{", " "):
            series += 1
            if series > MAX_SERIES:
                raise CheckError(f"{metric!r} has more than {MAX_SERIES} series; a label with unbounded values "
                                 "(a raw URL path, an id) makes the exposition too large to read; fix the app's labels "
                                 "or set route_label to a bounded one")
            lines.append(line)
        elif line.startswith("# ") and line.split(" ", 3)[2:3] in ([base], [metric]):
            lines.append(line)
            declared = True
    if not lines:
        raise CheckError(f"metric {metric!r} not found in the exposition; set requests_metric to the app's request counter")
    total = errors = 0.0
    labelled = False
    routes: dict[str, tuple[float, float]] = {}
    try:
        families = list(text_string_to_metric_families("\n".join(lines) + "\n"))
    except ValueError as exc:
        raise CheckError(f"cannot parse the {metric!r} samples: {exc}") from None
    for family in families:
        for s in family.samples:
            if s.name != metric:
                continue
            status = s.labels.get(status_label)
            if status is None:
                continue
            labelled = True
            is_error = is_error_status(status)
            total += s.value
            errors += s.value if is_error else 0.0
            if route_label:
                route = s.labels.get(route_label, "")
                r_total, r_err = routes.get(route, (0.0, 0.0))
                routes[route] = (r_total + s.value, r_err + (s.value if is_error else 0.0))
    has_samples = any(s.name == metric for f in families for s in f.samples)
    if has_samples and not labelled:
        raise CheckError(f"{metric!r} has no {status_label!r} label; set status_label to the label holding the HTTP status "
                         "(e.g. code)")
    if not has_samples and not declared:
        raise CheckError(f"metric {metric!r} not found in the exposition")
    return Sample(at=0.0, total=total, errors=errors, routes=routes)


class ErrorRateCheck:
    """5xx / all requests over ``window`` from Prometheus counters or ALB CloudWatch metrics."""

    kind: ClassVar[str] = "error_rate"

    def __init__(self, target: ErrorRateTarget) -> None:
        self.target = target
        self._timeout = max(0.5, target.deadline * 0.8)
        self._window = ErrorWindow(target.window)
        self._request: urllib.request.Request | None = None
        if target.metrics_url is not None:
            self._request = urllib.request.Request(
                target.metrics_url,
                headers={"Accept": "text/plain;version=0.0.4", "User-Agent": f"opsagent/{__version__}"},
            )
        self._cloudwatch_queries: list[dict[str, Any]] = []
        if target.cloudwatch is not None:
            self._cloudwatch_queries = cloudwatch_queries(target)

    def measure(self) -> Reading:
        if self._request is not None:
            return self._measure_prometheus()
        return self._measure_cloudwatch(datetime.now(UTC))

    # -- Prometheus ------------------------------------------------------------------------

    def _scrape(self) -> str:
        assert self._request is not None
        try:
            with urllib.request.urlopen(self._request, timeout=self._timeout) as resp:
                body: bytes = resp.read(MAX_BODY_BYTES + 1)
                charset = resp.headers.get_content_charset() or "utf-8"
        except urllib.error.HTTPError as exc:
            exc.close()
            raise CheckError(f"metrics endpoint answered HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:  # refused, DNS, TLS: say which, without urllib's wrapper
            raise CheckError(f"cannot reach the metrics endpoint: {exc.reason}") from None
        except TimeoutError:
            raise CheckError(f"metrics endpoint did not answer within {self._timeout:g}s") from None
        if len(body) > MAX_BODY_BYTES:
            raise CheckError(f"metrics endpoint answered more than {MAX_BODY_BYTES} bytes")
        return body.decode(charset, errors="replace")

    def _measure_prometheus(self) -> Reading:
        t = self.target
        parsed = parse_counters(self._scrape(), t.requests_metric, t.status_label, t.route_label)
        sample = Sample(time.monotonic(), parsed.total, parsed.errors, parsed.routes)
        result = self._window.add(sample)
        return self._with_counters(self._reading(result, "prometheus"), sample)

    # -- CloudWatch ------------------------------------------------------------------------

    def _measure_cloudwatch(self, now: datetime) -> Reading:
        from opsagent import aws

        assert self.target.cloudwatch is not None
        client = aws.client("cloudwatch", self.target.cloudwatch.region, timeout=self._timeout, max_attempts=2)
        end = now.replace(microsecond=0)
        sums = {"errors": 0.0, "requests": 0.0}
        kwargs: dict[str, Any] = {
            "MetricDataQueries": self._cloudwatch_queries,
            "StartTime": end - timedelta(seconds=self.target.window),
            "EndTime": end,
        }
        for _page in range(10):
            resp = client.get_metric_data(**kwargs)
            for series in resp.get("MetricDataResults", []):
                if series.get("Id") in sums:
                    sums[series["Id"]] += float(sum(series.get("Values", [])))
            token = resp.get("NextToken")
            if not token:
                break
            kwargs["NextToken"] = token
        result = _ratio(sums["requests"], sums["errors"], self.target.window, BASIS_CLOUDWATCH)
        return self._reading(result, "cloudwatch")

    # -- shared ------------------------------------------------------------------------------

    def _reading(self, r: WindowRatio, source: str) -> Reading:
        details: dict[str, Any] = {
            "window_seconds": self.target.window,
            "requests": r.requests,
            "errors_5xx": r.errors,
            "basis": r.basis,
            "span_seconds": round(r.span_seconds, 3),
            "summary": (f"{r.errors:g} of {r.requests:g} requests were 5xx ({r.ratio:.3%})" if r.requests > 0
                        else "no requests in the window; error rate taken as 0"),
        }
        if r.requests <= 0:
            details["no_requests"] = True
        gauges = (
            Gauge("opsagent_error_rate_requests", r.requests, help="requests counted across the window"),
            Gauge("opsagent_error_rate_errors", r.errors, help="5xx responses counted across the window"),
            Gauge("opsagent_error_rate_window_seconds", float(self.target.window), help="configured window"),
        )
        return Reading(value=r.ratio, details=details, gauges=gauges, source=source)

    @staticmethod
    def _with_counters(reading: Reading, sample: Sample) -> Reading:
        """Add the app's cumulative counters: error budgets (SPEC §9.4) count their increase per minute,
        and Prometheus evaluates the same burn-rate rules over the exported counters."""
        details = {**reading.details, "requests_total": sample.total, "errors_total": sample.errors}
        gauges = (*reading.gauges,
                  Gauge("opsagent_error_rate_requests_total", sample.total, help="requests the app counted (cumulative)",
                        check_label=False),
                  Gauge("opsagent_error_rate_errors_total", sample.errors, help="5xx responses the app counted (cumulative)",
                        check_label=False))
        return Reading(value=reading.value, details=details, gauges=gauges, source=reading.source)

    def context(self) -> Mapping[str, Any]:
        """Top failing routes across the window (Prometheus source with a route label)."""
        latest = self._window.latest()
        if latest is None or not latest.routes:
            return {}
        before = self._window.baseline_routes()
        rows: list[dict[str, Any]] = []
        for route, (total, errors) in latest.routes.items():
            b_total, b_errors = before.get(route, (0.0, 0.0))
            d_total, d_errors = (total - b_total, errors - b_errors) if total >= b_total else (total, errors)
            if d_errors > 0:
                rows.append({"route": route, "errors_5xx": d_errors, "requests": d_total,
                             "ratio": round(d_errors / d_total, 6) if d_total > 0 else None})
        rows.sort(key=lambda r: r["errors_5xx"], reverse=True)
        return {"top_failing_routes": rows[:10]} if rows else {}

    def close(self) -> None:
        return None


def cloudwatch_queries(target: ErrorRateTarget) -> list[dict[str, Any]]:
    """Two plain MetricStat queries (Sum per minute); summed by the agent."""
    cw = target.cloudwatch
    assert cw is not None
    dims = [{"Name": "LoadBalancer", "Value": cw.load_balancer}]
    if cw.target_group:
        dims.append({"Name": "TargetGroup", "Value": cw.target_group})

    def query(qid: str, metric: str) -> dict[str, Any]:
        return {
            "Id": qid,
            "MetricStat": {
                "Metric": {"Namespace": "AWS/ApplicationELB", "MetricName": metric, "Dimensions": dims},
                "Period": 60,
                "Stat": "Sum",
            },
            "ReturnData": True,
        }

    return [query("errors", "HTTPCode_Target_5XX_Count"), query("requests", "RequestCount")]
