"""Any CloudWatch metric: one statistic over the newest complete period, against the target's own threshold.

Lambda Errors/Throttles, API Gateway 5XXError, SES Reputation.BounceRate, SNS
SMSMonthToDateSpentUSD, RDS FreeStorageSpace… are all one namespace, metric,
dimension set and statistic (recipes in ``deploy/examples/``).

``GetMetricData`` is billed per metric and rate-limited per account, so the
targets of one region share a :class:`RegionBatcher`: the first target of a
round fetches every registered metric of its region in one call, the others
read that answer. A round lasts half the shortest interval of the region's
targets, so each target still sees a fresh answer every run.

Datapoints are stamped with the start of their period; a period is complete
once its end has passed. The request's window is aligned to the longest period
of the round, so mixing 1m and 5m targets in one region costs the 1m targets up
to four minutes of freshness (one request per round is worth more). An empty answer is 0 for counting statistics (Sum,
SampleCount: AWS publishes no datapoint when nothing happened, e.g. a Lambda
that was not invoked) and a check error for the others (nothing to judge).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from opsagent import aws
from opsagent.checks.base import CheckError, Reading
from opsagent.config import CloudWatchTarget

LOOKBACK_PERIODS = 5  # CloudWatch publishes a few minutes late: look this many periods back for the newest
MAX_QUERIES = 500  # GetMetricData's limit per call
ZERO_WHEN_EMPTY = ("Sum", "SampleCount")


@dataclass(frozen=True)
class MetricQuery:
    namespace: str
    metric: str
    dimensions: tuple[tuple[str, str], ...]
    statistic: str
    period: int

    @classmethod
    def of(cls, target: CloudWatchTarget) -> MetricQuery:
        return cls(target.namespace, target.metric, tuple(sorted(target.dimensions.items())), target.statistic,
                   int(target.period))

    def as_api(self, query_id: str) -> dict[str, Any]:
        return {
            "Id": query_id,
            "MetricStat": {
                "Metric": {"Namespace": self.namespace, "MetricName": self.metric,
                           "Dimensions": [{"Name": k, "Value": v} for k, v in self.dimensions]},
                "Period": self.period,
                "Stat": self.statistic,
            },
            "ReturnData": True,
        }


@dataclass(frozen=True)
class Answer:
    """What one round found for one metric: its (period start, value) points, or the API's complaint."""

    points: tuple[tuple[float, float], ...]
    problem: str | None = None


def newest_complete(points: tuple[tuple[float, float], ...], period: int, now: float) -> tuple[float, float] | None:
    """The newest (start, value) whose period has ended by ``now``."""
    done = [p for p in points if p[0] + period <= now]
    return max(done) if done else None


class RegionBatcher:
    """One ``GetMetricData`` per round for every cloudwatch target of one region."""

    def __init__(self, region: str | None, clock: Callable[[], float] = time.time) -> None:
        self.region = region
        self._clock = clock
        self._lock = threading.Lock()
        self._members: dict[MetricQuery, dict[int, float]] = {}  # query -> {member id: interval}
        self._answers: dict[MetricQuery, Answer] = {}
        self._fetched_at = -math.inf
        self.calls = 0  # GetMetricData requests made (exported in details for the curious and the tests)

    def join(self, member: int, query: MetricQuery, interval: float) -> None:
        with self._lock:
            self._members.setdefault(query, {})[member] = interval

    def leave(self, member: int, query: MetricQuery) -> None:
        with self._lock:
            holders = self._members.get(query, {})
            holders.pop(member, None)
            if not holders:
                self._members.pop(query, None)

    def _round_seconds(self) -> float:
        intervals = [i for holders in self._members.values() for i in holders.values()]
        return min(intervals, default=60.0) / 2

    def answer(self, query: MetricQuery, timeout: float) -> Answer:
        """This round's answer for ``query``, fetching every member's metric when the round is over."""
        with self._lock:
            now = self._clock()
            if now - self._fetched_at >= self._round_seconds() or query not in self._answers:
                self._answers = self._fetch(list(self._members) or [query], now, timeout)
                self._fetched_at = now
            return self._answers.get(query, Answer((), "the metric was not part of this round's request"))

    def _fetch(self, queries: list[MetricQuery], now: float, timeout: float) -> dict[MetricQuery, Answer]:
        client = aws.client("cloudwatch", self.region, timeout=timeout, max_attempts=2)
        # Aligned to the longest period so that its buckets are whole periods of the clock (12:05-12:10,
        # not 12:07-12:12): CloudWatch buckets from StartTime. Shorter periods that divide it stay aligned.
        longest = max(q.period for q in queries)
        end = math.floor(now / longest) * longest
        start = end - longest * LOOKBACK_PERIODS
        answers: dict[MetricQuery, Answer] = {}
        for first in range(0, len(queries), MAX_QUERIES):
            chunk = queries[first:first + MAX_QUERIES]
            ids = {f"q{i}": q for i, q in enumerate(chunk)}
            self.calls += 1
            reply = client.get_metric_data(
                MetricDataQueries=[q.as_api(i) for i, q in ids.items()],
                StartTime=datetime.fromtimestamp(start, tz=UTC),
                EndTime=datetime.fromtimestamp(end, tz=UTC),
                ScanBy="TimestampDescending",
            )
            for result in reply.get("MetricDataResults", []):
                query = ids.get(str(result.get("Id")))
                if query is None:
                    continue
                points = tuple((ts.timestamp(), float(v))
                               for ts, v in zip(result.get("Timestamps", []), result.get("Values", []), strict=False))
                status = result.get("StatusCode", "Complete")
                problem = None if status in ("Complete", "PartialData") else (
                    f"CloudWatch answered {status}: " + "; ".join(m.get("Value", "") for m in result.get("Messages", [])))
                answers[query] = Answer(points, problem)
        return answers


_batchers: dict[str | None, RegionBatcher] = {}
_batchers_lock = threading.Lock()


def batcher(region: str | None) -> RegionBatcher:
    """The process's one batcher for ``region``."""
    with _batchers_lock:
        found = _batchers.get(region)
        if found is None:
            found = _batchers[region] = RegionBatcher(region)
        return found


class CloudWatchCheck:
    kind: ClassVar[str] = "cloudwatch"

    def __init__(self, target: CloudWatchTarget, clock: Callable[[], float] = time.time,
                 shared: RegionBatcher | None = None) -> None:
        self.target = target
        self._clock = clock
        self.query = MetricQuery.of(target)
        # A target without a region shares the batcher of the region the boto3 chain would pick from the
        # environment, so "region: us-east-1" and no region in us-east-1 are one request, not two.
        region = target.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        self._batcher = shared if shared is not None else batcher(region)
        self._batcher.join(id(self), self.query, target.interval)
        self._timeout = max(1.0, min(10.0, target.deadline * 0.8))
        self._label = f"{target.namespace} {target.metric} {target.statistic}"

    def measure(self) -> Reading:
        answer = self._batcher.answer(self.query, self._timeout)
        if answer.problem:
            raise CheckError(f"{self._label}: {answer.problem}")
        now = self._clock()
        newest = newest_complete(answer.points, self.query.period, now)
        details: dict[str, Any] = {"metric": self._label, "dimensions": dict(self.target.dimensions),
                                   "period_seconds": self.query.period, "threshold": self.target.threshold,
                                   "comparison": self.target.comparison}
        if newest is None:
            if self.target.statistic not in ZERO_WHEN_EMPTY:
                raise CheckError(f"{self._label}: no datapoint in the last {LOOKBACK_PERIODS} complete periods "
                                 f"for dimensions {dict(self.target.dimensions)}; check the names and the region")
            details["datapoint"] = "none (counted as 0)"
            return Reading(value=0.0, details=details, source="cloudwatch")
        details["datapoint"] = datetime.fromtimestamp(newest[0], tz=UTC).isoformat()
        return Reading(value=newest[1], details=details, source="cloudwatch")

    def context(self) -> Mapping[str, Any]:
        return {"metric": self._label, "region": self.target.region}

    def close(self) -> None:
        self._batcher.leave(id(self), self.query)
