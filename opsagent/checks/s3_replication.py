"""S3 cross-region replication: the rule is enabled and old objects really reached the replica.

A per-object ``ReplicationStatus`` only says what S3 believes; what a disaster
recovery needs is the object in the destination bucket. So the check lists both
buckets (each in key order, page by page) and merge-joins the two listings in
constant memory: an object written to the source more than ``rpo`` ago that is
absent from the destination, or there with another size, is *missing*; a newer
absent one is merely *pending*. The reading's value is the number of missing
objects (``S3ReplicationLagging``); ``details["replication_disabled"]`` is 1 when
no enabled rule replicates to the destination (``S3ReplicationDisabled``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from opsagent import aws
from opsagent.checks.base import Gauge, Reading, SimpleCheck
from opsagent.config import S3ReplicationTarget

SAMPLE_KEYS = 5


class ObjectInfo(NamedTuple):
    key: str
    size: int
    modified: float  # unix seconds


@dataclass
class Comparison:
    """The outcome of comparing a source listing with its replica listing."""

    checked: int = 0
    missing: int = 0
    pending: int = 0
    oldest_missing: float | None = None  # LastModified of the oldest missing object
    sample: list[str] = field(default_factory=list)
    complete: bool = True  # False when max_objects stopped the scan early

    def oldest_missing_age(self, now: float) -> float:
        return max(0.0, now - self.oldest_missing) if self.oldest_missing is not None else 0.0


def compare_listings(source: Iterable[ObjectInfo], destination: Iterable[ObjectInfo], now: float, rpo: float,
                     limit: int | None = None) -> Comparison:
    """Merge-join two listings sorted by key; objects older than ``now - rpo`` must be in the destination.

    Both inputs must be in ascending key order (S3 lists in UTF-8 binary order, which
    equals Python's code-point order). Extra destination objects are ignored:
    deletions are not necessarily replicated.
    """
    cutoff = now - rpo
    result = Comparison()
    dest_iter = iter(destination)
    dest = next(dest_iter, None)
    for obj in source:
        if limit is not None and result.checked >= limit:
            result.complete = False
            break
        result.checked += 1
        while dest is not None and dest.key < obj.key:
            dest = next(dest_iter, None)
        present = dest is not None and dest.key == obj.key and dest.size == obj.size
        if present:
            continue
        if obj.modified <= cutoff:
            result.missing += 1
            if result.oldest_missing is None or obj.modified < result.oldest_missing:
                result.oldest_missing = obj.modified
            if len(result.sample) < SAMPLE_KEYS:
                result.sample.append(obj.key)
        else:
            result.pending += 1
    return result


def rule_state(configuration: Mapping[str, Any] | None, destination_bucket: str) -> tuple[bool, str, list[str]]:
    """(enabled, prefix the enabled rules cover, statuses of rules to this destination).

    ``configuration`` is ``get_bucket_replication``'s ``ReplicationConfiguration``, or
    None when the bucket has none. With several enabled rules the compared prefix is
    their common prefix; rules filtering on tags cannot be evaluated from a listing,
    so a target whose rule filters on tags should set ``prefix`` itself.
    """
    if not configuration:
        return False, "", []
    wanted = f"arn:aws:s3:::{destination_bucket}"
    statuses: list[str] = []
    prefixes: list[str] = []
    for rule in configuration.get("Rules", []):
        if rule.get("Destination", {}).get("Bucket") != wanted:
            continue
        status = str(rule.get("Status", ""))
        statuses.append(f"{rule.get('ID', '?')}={status}")
        if status == "Enabled":
            prefixes.append(_rule_prefix(rule))
    enabled = bool(prefixes)
    return enabled, os.path.commonprefix(prefixes) if enabled else "", statuses  # noqa: RUF071 - S3 prefixes are strings: character-wise is right


def _rule_prefix(rule: Mapping[str, Any]) -> str:
    flt = rule.get("Filter")
    if isinstance(flt, Mapping):
        if "Prefix" in flt:
            return str(flt["Prefix"])
        if isinstance(flt.get("And"), Mapping):
            return str(flt["And"].get("Prefix", ""))
        return ""
    return str(rule.get("Prefix", ""))


class S3ReplicationCheck(SimpleCheck):
    kind: ClassVar[str] = "s3_replication"

    def __init__(self, target: S3ReplicationTarget, clock: Callable[[], float] = time.time) -> None:
        self.target = target
        self._clock = clock
        self.source_region = target.region
        self.destination_region = target.destination_region or target.region
        self._timeout = min(15.0, target.deadline)

    def _client(self, region: str | None) -> Any:
        return aws.client("s3", region, timeout=self._timeout, max_attempts=3)

    def _configuration(self) -> Mapping[str, Any] | None:
        s3 = self._client(self.source_region)
        try:
            answer = s3.get_bucket_replication(Bucket=self.target.bucket)
        except s3.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ReplicationConfigurationNotFoundError":
                return None
            raise
        configuration: Mapping[str, Any] = answer.get("ReplicationConfiguration", {})
        return configuration

    def _listing(self, region: str | None, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        pages = self._client(region).get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000})
        for page in pages:
            for item in page.get("Contents", []):
                yield ObjectInfo(item["Key"], int(item.get("Size", 0)), item["LastModified"].timestamp())

    def measure(self) -> Reading:
        enabled, rule_prefix, statuses = rule_state(self._configuration(), self.target.destination_bucket)
        prefix = self.target.prefix or rule_prefix
        now = self._clock()
        result = compare_listings(
            self._listing(self.source_region, self.target.bucket, prefix),
            self._listing(self.destination_region, self.target.destination_bucket, prefix),
            now, self.target.rpo, self.target.max_objects,
        )
        oldest_age = result.oldest_missing_age(now)
        details: dict[str, Any] = {
            "bucket": self.target.bucket,
            "destination_bucket": self.target.destination_bucket,
            "prefix": prefix,
            "replication_disabled": 0 if enabled else 1,
            "replication_configured": bool(statuses),
            "rules": statuses,
            "checked_objects": result.checked,
            "missing_objects": result.missing,
            "pending_objects": result.pending,
            "oldest_missing_age_seconds": round(oldest_age, 3),
            "missing_sample": result.sample,
            "complete": result.complete,
            "rpo_seconds": self.target.rpo,
        }
        gauges = (
            Gauge("opsagent_s3_replication_missing_objects", float(result.missing), {},
                  "Source objects older than the RPO absent from the destination"),
            Gauge("opsagent_s3_replication_pending_objects", float(result.pending), {},
                  "Source objects younger than the RPO not yet in the destination"),
            Gauge("opsagent_s3_replication_checked_objects", float(result.checked), {},
                  "Source objects compared in the last run"),
            Gauge("opsagent_s3_replication_oldest_missing_age_seconds", oldest_age, {},
                  "Age of the oldest source object missing from the destination"),
            Gauge("opsagent_s3_replication_rule_enabled", 1.0 if enabled else 0.0, {},
                  "1 when an enabled replication rule targets the destination bucket"),
        )
        return Reading(float(result.missing), details, gauges, source="s3 listings")
