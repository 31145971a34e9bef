"""The sqs check against the moto server (SQS queue attributes, CloudWatch AWS/SQS metrics)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from opsagent.alerts.verdict import verdict
from opsagent.checks.base import CheckError
from opsagent.checks.sqs import SqsCheck, oldest_age, region_from_url
from opsagent.config import Settings, SqsTarget
from opsagent.runtime.runner import TargetRunner

REGION = "eu-west-1"


def make_queue(name: str) -> str:
    return str(boto3.client("sqs", region_name=REGION).create_queue(QueueName=name)["QueueUrl"])


def send(url: str, n: int) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    for i in range(n):
        sqs.send_message(QueueUrl=url, MessageBody=f"job {i}")


def publish_age(queue: str, points: list[tuple[float, float]]) -> None:
    """Stand in for SQS publishing ApproximateAgeOfOldestMessage: (seconds ago, age) pairs."""
    now = datetime.now(UTC)
    boto3.client("cloudwatch", region_name=REGION).put_metric_data(Namespace="AWS/SQS", MetricData=[
        {"MetricName": "ApproximateAgeOfOldestMessage", "Dimensions": [{"Name": "QueueName", "Value": queue}],
         "Value": age, "Timestamp": now - timedelta(seconds=ago), "Unit": "Seconds"}
        for ago, age in points
    ])


def target(url: str, dlq: str | None = None) -> SqsTarget:
    return SqsTarget(name="jobs", queue_url=url, dlq_url=dlq, region=REGION)


def test_reads_depth_from_attributes_and_age_from_cloudwatch(aws: Any) -> None:
    """Visible messages come from the queue, the oldest message's age from the newest CloudWatch datapoint, and the DLQ depth is reported."""
    url, dlq = make_queue("payouts"), make_queue("payouts-dlq")
    send(url, 3)
    send(dlq, 2)
    publish_age("payouts", [(600, 120.0), (120, 840.0)])
    check = SqsCheck(target(url, dlq))
    reading = check.measure()
    assert reading.value == 840.0
    assert reading.details["visible_messages"] == 3
    assert reading.details["dlq_visible_messages"] == 2
    gauges = {g.name: g.value for g in reading.gauges}
    assert gauges["opsagent_sqs_visible_messages"] == 3
    assert gauges["opsagent_sqs_oldest_message_age_seconds"] == 840.0
    assert gauges["opsagent_sqs_dlq_visible_messages"] == 2


def test_both_alarms_breach_on_an_old_message_and_a_non_empty_dlq(aws: Any) -> None:
    """An oldest message of 15 minutes breaches SQSMessageAgeHigh and a message in the DLQ is seen by SQSDeadLetterQueueNotEmpty's field."""
    url, dlq = make_queue("emails"), make_queue("emails-dlq")
    send(url, 1)
    send(dlq, 1)
    publish_age("emails", [(60, 900.0)])
    spec = target(url, dlq)
    runner = TargetRunner("sqs", "jobs", lambda: SqsCheck(spec), deadline=10)
    result = runner.run()
    settings = Settings()
    v = verdict(settings, result)
    assert (v.alert, v.breached, v.threshold) == ("SQSMessageAgeHigh", True, 600.0)
    dlq_alarm = settings.alarm("SQSDeadLetterQueueNotEmpty")
    assert dlq_alarm.spec.comparison.breached(result.details[dlq_alarm.spec.field], dlq_alarm.threshold)


def test_an_empty_queue_has_no_old_message_whatever_the_late_metric_says(aws: Any) -> None:
    """A drained queue reads age 0 at once, although CloudWatch still shows the old age for a few minutes."""
    url = make_queue("drained")
    publish_age("drained", [(60, 1800.0)])
    reading = SqsCheck(target(url)).measure()
    assert reading.value == 0.0
    assert reading.details["dlq_visible_messages"] == 0


def test_visible_messages_without_any_age_datapoint_is_an_error(aws: Any) -> None:
    """Messages waiting but no CloudWatch age at all fails the check with what to look at, instead of reading 0."""
    url = make_queue("unmetered")
    send(url, 2)
    with pytest.raises(CheckError, match="GetMetricData"):
        SqsCheck(target(url)).measure()


def test_a_missing_queue_makes_the_target_down(aws: Any) -> None:
    """A queue URL that does not exist is reported down with SQS's own reason."""
    url = make_queue("real")
    spec = target(url.replace("/real", "/gone"))
    runner = TargetRunner("sqs", "jobs", lambda: SqsCheck(spec), deadline=10)
    result = runner.run()
    assert not result.up
    assert result.error is not None
    assert "NonExistentQueue" in result.error or "does not exist" in result.error


def test_the_region_comes_from_a_real_queue_url() -> None:
    """Region is read from sqs.REGION.amazonaws.com (and legacy REGION.queue.amazonaws.com) URLs, and left to boto3 otherwise."""
    assert region_from_url("https://sqs.ap-southeast-1.amazonaws.com/123456789012/jobs") == "ap-southeast-1"
    assert region_from_url("https://eu-west-2.queue.amazonaws.com/123456789012/jobs") == "eu-west-2"
    assert region_from_url("http://127.0.0.1:4566/123456789012/jobs") is None
    check = SqsCheck(SqsTarget(name="q", queue_url="https://sqs.us-west-2.amazonaws.com/123456789012/jobs"))
    assert check.region == "us-west-2" and check.queue == "jobs"


@given(st.lists(st.tuples(st.integers(0, 10_000), st.floats(0, 1e6)), min_size=1, max_size=20, unique_by=lambda p: p[0]))
def test_the_newest_datapoint_wins_in_any_order(points: list[tuple[int, float]]) -> None:
    """Whatever order CloudWatch returns datapoints in, the age reported is the newest datapoint's."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    stamped = [(base + timedelta(seconds=s), v) for s, v in points]
    newest = max(points)[1]
    assert oldest_age(stamped, queue_empty=False, visible=1, name="q")[0] == newest
    assert oldest_age(stamped, queue_empty=True, visible=0, name="q")[0] == 0.0


def test_a_dead_letter_message_fires_its_alarm_after_one_minute(aws: Any) -> None:
    """Through the alert engine, a message sitting in the DLQ is pending at first and fires SQSDeadLetterQueueNotEmpty after its 1m `for`."""
    from opsagent.alerts.engine import evaluate_result
    from opsagent.alerts.pipeline import engine_config

    url, dlq = make_queue("kyc"), make_queue("kyc-dlq")
    send(dlq, 1)
    reading = SqsCheck(target(url, dlq)).measure()
    config = engine_config(Settings())
    states: dict[Any, Any] = {}
    fired: list[str] = []
    for at in (1000.0, 1030.0, 1061.0):
        new, transitions = evaluate_result(states, config, check="sqs", target="jobs", up=True, value=reading.value,
                                           details=reading.details, at=at)
        states.update({s.key: s for s in new})
        fired += [f"{t.kind}:{t.state.alertname}@{at:g}" for t in transitions]
    assert fired == ["firing:SQSDeadLetterQueueNotEmpty@1061"]
