"""SQS queue health: depth from queue attributes, age of the oldest message from CloudWatch.

``ApproximateAgeOfOldestMessage`` is not a queue attribute: SQS publishes it only as
a CloudWatch metric (``AWS/SQS``, dimension ``QueueName``, one-minute resolution,
a few minutes late). The reading's value is that age in seconds (what
``SQSMessageAgeHigh`` compares); the dead-letter queue's depth goes into
``details["dlq_visible_messages"]`` for ``SQSDeadLetterQueueNotEmpty``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import urlsplit

from opsagent import aws
from opsagent.checks.base import CheckError, Gauge, Reading, SimpleCheck
from opsagent.config import SqsTarget

# How far back to look for the newest age datapoint: SQS metrics arrive late and
# an idle queue publishes less often.
AGE_LOOKBACK_SECONDS = 900.0

# queue attribute -> (details key, gauge name, help)
_ATTRIBUTES: Mapping[str, tuple[str, str, str]] = {
    "ApproximateNumberOfMessages": (
        "visible_messages", "opsagent_sqs_visible_messages", "Messages available for retrieval"),
    "ApproximateNumberOfMessagesNotVisible": (
        "in_flight_messages", "opsagent_sqs_in_flight_messages", "Messages received but not yet deleted"),
    "ApproximateNumberOfMessagesDelayed": (
        "delayed_messages", "opsagent_sqs_delayed_messages", "Messages not yet available because of a delay"),
}

_REGION_IN_HOST = re.compile(r"^(?:sqs\.)?([a-z]{2}(?:-gov)?-[a-z]+-\d)\.(?:queue\.)?amazonaws\.com(?:\.cn)?$")


def queue_name(url: str) -> str:
    """The queue's name is the last path segment of its URL."""
    name = urlsplit(url).path.rstrip("/").rpartition("/")[2]
    if not name:
        raise CheckError(f"cannot find a queue name in {url!r}; expected https://sqs.REGION.amazonaws.com/ACCOUNT/NAME")
    return name


def region_from_url(url: str) -> str | None:
    """``https://sqs.eu-west-1.amazonaws.com/…`` -> ``eu-west-1``; None for other hosts (endpoints, tests)."""
    match = _REGION_IN_HOST.match(urlsplit(url).hostname or "")
    return match.group(1) if match else None


def oldest_age(datapoints: list[tuple[datetime, float]], queue_empty: bool, visible: int, name: str) -> tuple[float, str]:
    """Pick the age to report from CloudWatch datapoints (any order) and the live queue depth.

    An empty queue has no old message whatever the late metric still says; a queue
    with visible messages but no datapoint at all is an error, not "age 0".
    """
    if queue_empty:
        return 0.0, "queue empty"
    if not datapoints:
        if visible == 0:
            return 0.0, "no datapoint, nothing visible"
        raise CheckError(
            f"no ApproximateAgeOfOldestMessage datapoint for queue {name!r} in the last "
            f"{AGE_LOOKBACK_SECONDS / 60:g}m although {visible} messages are visible; "
            "check that CloudWatch has AWS/SQS metrics for it and that the agent may call cloudwatch:GetMetricData"
        )
    newest = max(datapoints, key=lambda p: p[0])
    return float(newest[1]), newest[0].astimezone(UTC).isoformat()


class SqsCheck(SimpleCheck):
    kind: ClassVar[str] = "sqs"

    def __init__(self, target: SqsTarget, clock: Callable[[], float] = time.time) -> None:
        self.target = target
        self._clock = clock
        self.queue_url = str(target.queue_url)
        self.dlq_url = str(target.dlq_url) if target.dlq_url else None
        self.queue = queue_name(self.queue_url)
        self.region = target.region or region_from_url(self.queue_url)
        self._timeout = min(10.0, target.deadline)
        self._attribute_names = list(_ATTRIBUTES)

    def _client(self, service: str) -> Any:
        return aws.client(service, self.region, timeout=self._timeout, max_attempts=2)

    def _age_datapoints(self) -> list[tuple[datetime, float]]:
        end = datetime.fromtimestamp(self._clock(), tz=UTC)
        answer = self._client("cloudwatch").get_metric_data(
            MetricDataQueries=[{
                "Id": "age",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "AWS/SQS",
                        "MetricName": "ApproximateAgeOfOldestMessage",
                        "Dimensions": [{"Name": "QueueName", "Value": self.queue}],
                    },
                    "Period": 60,
                    "Stat": "Maximum",
                },
                "ReturnData": True,
            }],
            StartTime=end - timedelta(seconds=AGE_LOOKBACK_SECONDS),
            EndTime=end + timedelta(seconds=60),
            ScanBy="TimestampDescending",
        )
        points: list[tuple[datetime, float]] = []
        for result in answer.get("MetricDataResults", []):
            points.extend(zip(result.get("Timestamps", []), result.get("Values", [])))
        return points

    def measure(self) -> Reading:
        sqs = self._client("sqs")
        attributes = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=self._attribute_names)
        found = attributes.get("Attributes", {})
        details: dict[str, Any] = {"queue": self.queue}
        gauges: list[Gauge] = []
        for attribute, (key, gauge, help_text) in _ATTRIBUTES.items():
            count = int(found.get(attribute, 0))
            details[key] = count
            gauges.append(Gauge(gauge, float(count), {}, help_text))
        queue_empty = details["visible_messages"] == 0 and details["in_flight_messages"] == 0
        age, age_from = oldest_age([] if queue_empty else self._age_datapoints(), queue_empty,
                                   details["visible_messages"], self.queue)
        details["oldest_message_age_seconds"] = age
        details["age_datapoint"] = age_from
        gauges.append(Gauge("opsagent_sqs_oldest_message_age_seconds", age, {},
                            "ApproximateAgeOfOldestMessage from CloudWatch (0 when the queue is empty)"))
        if self.dlq_url is not None:
            dlq = sqs.get_queue_attributes(QueueUrl=self.dlq_url, AttributeNames=["ApproximateNumberOfMessages"])
            dlq_count = int(dlq.get("Attributes", {}).get("ApproximateNumberOfMessages", 0))
            details["dlq_visible_messages"] = dlq_count
            details["dlq"] = queue_name(self.dlq_url)
            gauges.append(Gauge("opsagent_sqs_dlq_visible_messages", float(dlq_count), {},
                                "Messages waiting in the dead-letter queue"))
        else:
            details["dlq_visible_messages"] = 0
        return Reading(age, details, tuple(gauges), source="sqs+cloudwatch")

    def context(self) -> Mapping[str, Any]:
        return {"queue_url": self.queue_url, "dlq_url": self.dlq_url, "region": self.region}
