"""The s3_replication check against the moto server, which stores replication rules but copies nothing.

Tests copy objects themselves to stand in for S3 replication, and move the
check's clock forward to make objects older than the RPO.
"""

from __future__ import annotations

import time
from typing import Any

import boto3
from hypothesis import given
from hypothesis import strategies as st

from opsagent.alerts.verdict import verdict
from opsagent.checks.s3_replication import (
    ObjectInfo,
    S3ReplicationCheck,
    compare_listings,
    rule_state,
)
from opsagent.config import S3ReplicationTarget, Settings
from opsagent.runtime.runner import TargetRunner

SRC_REGION, DST_REGION = "us-east-1", "eu-west-1"
SRC, DST = "kyc-documents", "kyc-documents-dr"


def buckets(rule_status: str | None = "Enabled") -> tuple[Any, Any]:
    src = boto3.client("s3", region_name=SRC_REGION)
    dst = boto3.client("s3", region_name=DST_REGION)
    src.create_bucket(Bucket=SRC)
    dst.create_bucket(Bucket=DST, CreateBucketConfiguration={"LocationConstraint": DST_REGION})
    src.put_bucket_versioning(Bucket=SRC, VersioningConfiguration={"Status": "Enabled"})
    dst.put_bucket_versioning(Bucket=DST, VersioningConfiguration={"Status": "Enabled"})
    if rule_status is not None:
        src.put_bucket_replication(Bucket=SRC, ReplicationConfiguration={
            "Role": "arn:aws:iam::123456789012:role/s3-replication",
            "Rules": [{"ID": "dr", "Priority": 1, "Status": rule_status, "Filter": {"Prefix": ""},
                       "DeleteMarkerReplication": {"Status": "Disabled"},
                       "Destination": {"Bucket": f"arn:aws:s3:::{DST}"}}],
        })
    return src, dst


def replicate(dst: Any, key: str, body: bytes) -> None:
    """Do what S3 replication would have done for one object."""
    dst.put_object(Bucket=DST, Key=key, Body=body)


def check(rpo: str = "15m", ahead: float = 0.0, **kw: Any) -> S3ReplicationCheck:
    spec = S3ReplicationTarget(name="kyc", bucket=SRC, destination_bucket=DST, region=SRC_REGION,
                               destination_region=DST_REGION, rpo=rpo, **kw)
    return S3ReplicationCheck(spec, clock=lambda: time.time() + ahead)


def test_a_fully_replicated_bucket_reads_zero_missing(aws: Any) -> None:
    """Every source object present in the destination reads 0 missing objects and an enabled rule."""
    src, dst = buckets()
    for i in range(5):
        src.put_object(Bucket=SRC, Key=f"users/{i}/passport.pdf", Body=b"x" * i)
        replicate(dst, f"users/{i}/passport.pdf", b"x" * i)
    reading = check(ahead=3600).measure()
    assert reading.value == 0
    assert reading.details["replication_disabled"] == 0
    assert reading.details["checked_objects"] == 5
    assert reading.details["complete"] is True


def test_an_unreplicated_object_is_pending_until_older_than_the_rpo(aws: Any) -> None:
    """An object missing from the replica is only pending while young, and counts as missing (with its key) once older than the RPO."""
    src, dst = buckets()
    src.put_object(Bucket=SRC, Key="users/1/selfie.jpg", Body=b"img")
    src.put_object(Bucket=SRC, Key="users/2/selfie.jpg", Body=b"img")
    replicate(dst, "users/2/selfie.jpg", b"img")
    young = check().measure()
    assert (young.value, young.details["pending_objects"]) == (0, 1)
    old = check(ahead=20 * 60).measure()
    assert old.value == 1
    assert old.details["missing_sample"] == ["users/1/selfie.jpg"]
    assert old.details["oldest_missing_age_seconds"] >= 20 * 60 - 5
    assert {g.name: g.value for g in old.gauges}["opsagent_s3_replication_missing_objects"] == 1


def test_a_replica_with_another_size_counts_as_missing(aws: Any) -> None:
    """A destination object whose size differs from the source (truncated copy) is not a replica."""
    src, dst = buckets()
    src.put_object(Bucket=SRC, Key="contract.pdf", Body=b"complete document")
    replicate(dst, "contract.pdf", b"compl")
    assert check(ahead=3600).measure().value == 1


def test_a_bucket_without_replication_raises_the_disabled_flag(aws: Any) -> None:
    """A source bucket with no replication configuration sets replication_disabled for S3ReplicationDisabled."""
    buckets(rule_status=None)
    reading = check().measure()
    assert reading.details["replication_disabled"] == 1
    assert reading.details["replication_configured"] is False
    alarm = Settings().alarm("S3ReplicationDisabled")
    assert alarm.spec.comparison.breached(reading.details[alarm.spec.field], alarm.threshold)


def test_a_disabled_rule_raises_the_disabled_flag(aws: Any) -> None:
    """A replication rule to the destination with Status Disabled counts as no replication, and says which rule."""
    buckets(rule_status="Disabled")
    reading = check().measure()
    assert reading.details["replication_disabled"] == 1
    assert reading.details["rules"] == ["dr=Disabled"]


def test_the_prefix_limits_what_is_compared(aws: Any) -> None:
    """With a prefix only objects under it are compared."""
    src, _ = buckets()
    src.put_object(Bucket=SRC, Key="kyc/a.pdf", Body=b"a")
    src.put_object(Bucket=SRC, Key="tmp/b.pdf", Body=b"b")
    reading = check(ahead=3600, prefix="tmp/").measure()
    assert (reading.value, reading.details["checked_objects"]) == (1, 1)


def test_the_scan_stops_at_max_objects_and_says_so(aws: Any) -> None:
    """A bucket larger than max_objects is compared only up to the limit and the reading says it is incomplete."""
    src, _ = buckets()
    for i in range(4):
        src.put_object(Bucket=SRC, Key=f"k{i}", Body=b"1")
    reading = check(ahead=3600, max_objects=3).measure()
    assert reading.details["checked_objects"] == 3
    assert reading.details["complete"] is False


def test_a_missing_bucket_makes_the_target_down(aws: Any) -> None:
    """A source bucket that does not exist is reported down, not healthy."""
    spec = S3ReplicationTarget(name="kyc", bucket="no-such-bucket", destination_bucket=DST, region=SRC_REGION)
    runner = TargetRunner("s3_replication", "kyc", lambda: S3ReplicationCheck(spec), deadline=10)
    result = runner.run()
    assert not result.up
    assert verdict(Settings(), result).alert == "TargetDown"


def test_rules_to_other_destinations_do_not_count() -> None:
    """Only an enabled rule whose destination is the configured bucket counts, and its prefix is used."""
    config = {"Rules": [
        {"ID": "other", "Status": "Enabled", "Destination": {"Bucket": "arn:aws:s3:::elsewhere"}},
        {"ID": "dr", "Status": "Enabled", "Filter": {"And": {"Prefix": "kyc/", "Tags": []}},
         "Destination": {"Bucket": f"arn:aws:s3:::{DST}"}},
    ]}
    assert rule_state(config, DST) == (True, "kyc/", ["dr=Enabled"])
    assert rule_state(config, "third")[0] is False
    assert rule_state(None, DST) == (False, "", [])


_keys = st.text(alphabet="ab/é1", min_size=1, max_size=4)


@given(
    source=st.dictionaries(_keys, st.tuples(st.integers(0, 3), st.integers(0, 100)), max_size=25),
    copied=st.sets(_keys, max_size=25),
)
def test_the_merge_join_agrees_with_a_set_comparison(source: dict[str, tuple[int, int]], copied: set[str]) -> None:
    """For any two sorted listings, missing and pending objects match a naive set-based comparison."""
    now, rpo = 100.0, 50.0
    src = [ObjectInfo(k, size, float(age)) for k, (size, age) in sorted(source.items())]
    dst = sorted(
        [ObjectInfo(k, source[k][0] if k in source and len(k) % 2 else 9, 0.0) for k in copied],
        key=lambda o: o.key,
    )
    present = {(o.key, o.size) for o in dst}
    absent = [o for o in src if (o.key, o.size) not in present]
    result = compare_listings(src, dst, now, rpo)
    assert result.missing == sum(1 for o in absent if o.modified <= now - rpo)
    assert result.pending == len(absent) - result.missing
    assert result.checked == len(src)


def test_missing_replication_pages_at_once_through_the_engine(aws: Any) -> None:
    """Through the alert engine, a bucket without replication fires S3ReplicationDisabled on the first reading, and old unreplicated objects fire S3ReplicationLagging."""
    from opsagent.alerts.engine import evaluate_result
    from opsagent.alerts.pipeline import engine_config

    src, _ = buckets(rule_status=None)
    src.put_object(Bucket=SRC, Key="users/9/id.pdf", Body=b"id")
    reading = check(ahead=3600).measure()
    _, transitions = evaluate_result({}, engine_config(Settings()), check="s3_replication", target="kyc", up=True,
                                     value=reading.value, details=reading.details, at=5000.0)
    assert sorted((t.kind, t.state.alertname, t.state.severity) for t in transitions) == [
        ("firing", "S3ReplicationDisabled", "critical"), ("firing", "S3ReplicationLagging", "critical")]
