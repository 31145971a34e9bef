"""The ``cloudwatch`` kind on the moto server: any metric, newest complete period, one GetMetricData per region per round."""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

from opsagent.alerts.verdict import verdict
from opsagent.checks.base import CheckError
from opsagent.checks.cloudwatch import Answer, CloudWatchCheck, MetricQuery, RegionBatcher, batcher
from opsagent.config import CloudWatchTarget, Settings
from opsagent.runtime.results import CheckResult
from opsagent.runtime.runner import TargetRunner
from opsagent_testing.servers import HangingServer, closed_port
from tests.fixtures.down import assert_down_cleanly, down_beside_healthy, run_logged

PERIOD = 300


def last_complete_period(now: float) -> float:
    return math.floor(now / PERIOD) * PERIOD - PERIOD


def put(region: str, namespace: str, metric: str, dims: dict[str, str], values: list[tuple[float, float]]) -> None:
    boto3.client("cloudwatch", region_name=region).put_metric_data(Namespace=namespace, MetricData=[
        {"MetricName": metric, "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()],
         "Timestamp": datetime.fromtimestamp(at, tz=UTC), "Value": value} for at, value in values])


def target(name: str, namespace: str, metric: str, dims: dict[str, str], statistic: str, threshold: float,
           **kw: Any) -> CloudWatchTarget:
    return CloudWatchTarget.model_validate({"name": name, "namespace": namespace, "metric": metric,
                                            "dimensions": dims, "statistic": statistic, "threshold": threshold,
                                            "period": "5m", **kw})


def test_targets_of_one_region_share_one_request_per_round(aws: Any) -> None:
    """Lambda errors, SES bounce rate and RDS storage of one region are read in one GetMetricData; another region makes its own."""
    now = time.time()
    done = last_complete_period(now)
    put("us-east-1", "AWS/Lambda", "Errors", {"FunctionName": "token-gen"}, [(done + 10, 2), (done + 70, 3)])
    put("us-east-1", "AWS/SES", "Reputation.BounceRate", {}, [(done + 30, 0.04)])
    put("us-east-1", "AWS/RDS", "FreeStorageSpace", {"DBInstanceIdentifier": "main"}, [(done + 30, 5e9)])
    put("eu-west-1", "AWS/ApiGateway", "5XXError", {"ApiName": "payments"}, [(done + 30, 7)])
    east, west = RegionBatcher("us-east-1"), RegionBatcher("eu-west-1")
    checks = [
        CloudWatchCheck(target("lambda", "AWS/Lambda", "Errors", {"FunctionName": "token-gen"}, "Sum", 0), shared=east),
        CloudWatchCheck(target("ses", "AWS/SES", "Reputation.BounceRate", {}, "Average", 0.05), shared=east),
        CloudWatchCheck(target("disk", "AWS/RDS", "FreeStorageSpace", {"DBInstanceIdentifier": "main"}, "Minimum",
                               1e10, comparison="below"), shared=east),
        CloudWatchCheck(target("api", "AWS/ApiGateway", "5XXError", {"ApiName": "payments"}, "Sum", 0,
                               region="eu-west-1"), shared=west),
    ]
    values = [c.measure().value for c in checks]
    assert values == [5.0, 0.04, 5e9, 7.0]
    assert (east.calls, west.calls) == (1, 1)
    for c in checks:
        c.close()


def test_the_newest_complete_period_wins_over_the_current_partial_one(aws: Any) -> None:
    """A datapoint of the period still in progress is ignored; the newest finished period is reported."""
    now = time.time()
    done = last_complete_period(now)
    put("us-east-1", "AWS/Lambda", "Throttles", {"FunctionName": "notify"},
        [(done - PERIOD + 5, 1), (done + 5, 4), (math.floor(now / PERIOD) * PERIOD + 1, 100)])
    check = CloudWatchCheck(target("t", "AWS/Lambda", "Throttles", {"FunctionName": "notify"}, "Sum", 0),
                            shared=RegionBatcher("us-east-1"))
    reading = check.measure()
    assert reading.value == 4.0
    assert reading.details["datapoint"] == datetime.fromtimestamp(done, tz=UTC).isoformat()


def test_no_datapoint_is_zero_for_counts_and_an_error_for_averages(aws: Any) -> None:
    """A Lambda that was not invoked has 0 errors; a rate with no datapoint is an error naming the metric."""
    shared = RegionBatcher("us-east-1")
    quiet = CloudWatchCheck(target("q", "AWS/Lambda", "Errors", {"FunctionName": "idle"}, "Sum", 0), shared=shared)
    assert quiet.measure().value == 0.0
    rate = CloudWatchCheck(target("r", "AWS/SES", "Reputation.ComplaintRate", {}, "Average", 0.001), shared=shared)
    with pytest.raises(CheckError, match=r"Reputation\.ComplaintRate Average: no datapoint"):
        rate.measure()


class CountingBatcher(RegionBatcher):
    """A batcher whose request is recorded and answered locally (or held until ``release`` is set)."""

    def __init__(self, clock: Any = time.time, release: threading.Event | None = None) -> None:
        super().__init__("us-east-1", clock)
        self.asked: list[list[str]] = []
        self.release = release

    def _fetch(self, queries: list[MetricQuery], now: float, timeout: float) -> dict[MetricQuery, Answer]:
        self.asked.append(sorted(q.metric for q in queries))
        if self.release is not None:
            self.release.wait(timeout)
        return {q: Answer(((now - 2 * PERIOD, 1.0),)) for q in queries}


def test_a_round_lasts_half_the_shortest_interval() -> None:
    """Within half an interval every target reads the last request's answer; after it the next run asks again, for the current members only."""
    clock = [10_000.0]
    batcher = CountingBatcher(clock=lambda: clock[0])
    a = CloudWatchCheck(target("a", "N", "A", {}, "Sum", 0, interval="60s"), clock=lambda: clock[0], shared=batcher)
    b = CloudWatchCheck(target("b", "N", "B", {}, "Sum", 0, interval="60s"), clock=lambda: clock[0], shared=batcher)
    a.measure()
    b.measure()
    clock[0] += 20
    a.measure()
    assert batcher.asked == [["A", "B"]]
    clock[0] += 15
    b.close()
    a.measure()
    assert batcher.asked == [["A", "B"], ["A"]]


def test_per_target_threshold_and_comparison_decide_the_verdict() -> None:
    """Free storage below its target's threshold breaches CloudWatchMetricBreached; above it is ok."""
    settings = Settings(checks={"cloudwatch": [
        {"name": "disk", "namespace": "AWS/RDS", "metric": "FreeStorageSpace", "statistic": "Minimum",
         "threshold": 1e10, "comparison": "below"}]})

    def state(value: float) -> str:
        return verdict(settings, CheckResult("cloudwatch", "disk", True, value, 0.0, 0.1)).state

    assert (state(5e9), state(2e10)) == ("breached", "ok")


@pytest.mark.parametrize("mode", ["refused", "hanging"])
def test_unreachable_cloudwatch_is_down_within_the_deadline(aws: Any, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """A refused or hanging CloudWatch endpoint makes the target down within its deadline with a clear error."""
    hanging = HangingServer() if mode == "hanging" else None
    port = hanging.port if hanging else closed_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    try:
        result, logs = run_logged("cloudwatch", "x", lambda: CloudWatchCheck(
            target("x", "AWS/Lambda", "Errors", {}, "Sum", 0, timeout="2s"), shared=RegionBatcher("us-east-1")), 2.0)
        assert_down_cleanly(result, logs, 2.0, ("connect", "timeout", "deadline", "read"))
    finally:
        if hanging is not None:
            hanging.close()


def test_a_hung_region_never_delays_another_region() -> None:
    """While one region's request hangs past its deadline, a target of another region answers at once."""
    release = threading.Event()
    hung, fine = CountingBatcher(release=release), CountingBatcher()
    slow = TargetRunner("cloudwatch", "slow", lambda: CloudWatchCheck(
        target("slow", "AWS/Lambda", "Errors", {}, "Sum", 0), shared=hung), deadline=1.0)
    quick = TargetRunner("cloudwatch", "quick", lambda: CloudWatchCheck(
        target("quick", "AWS/SNS", "SMSMonthToDateSpentUSD", {}, "Maximum", 90), shared=fine), deadline=1.0)
    try:
        good, result, logs = down_beside_healthy(lambda: run_logged("cloudwatch", "slow", lambda: CloudWatchCheck(
            target("slow", "AWS/Lambda", "Errors", {}, "Sum", 0), shared=hung), 1.0), quick)
        assert good.up and good.value == 1.0 and good.duration < 0.5
        assert_down_cleanly(result, logs, 1.0, ("deadline", "timed out", "did not finish"))
    finally:
        release.set()
        slow.close()


def test_a_target_without_region_shares_the_request_of_its_environment_region(aws: Any) -> None:
    """With AWS_DEFAULT_REGION=us-east-1, a target without region and one with region us-east-1 cost one request."""
    done = last_complete_period(time.time())
    put("us-east-1", "AWS/Lambda", "Errors", {"FunctionName": "a"}, [(done + 1, 1)])
    put("us-east-1", "AWS/Lambda", "Errors", {"FunctionName": "b"}, [(done + 1, 2)])
    shared = batcher("us-east-1")
    before = shared.calls
    implicit = CloudWatchCheck(target("a", "AWS/Lambda", "Errors", {"FunctionName": "a"}, "Sum", 0))
    explicit = CloudWatchCheck(target("b", "AWS/Lambda", "Errors", {"FunctionName": "b"}, "Sum", 0, region="us-east-1"))
    try:
        assert (implicit.measure().value, explicit.measure().value) == (1.0, 2.0)
        assert shared.calls - before == 1
    finally:
        implicit.close()
        explicit.close()
