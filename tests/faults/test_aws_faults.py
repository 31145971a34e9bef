"""AWS misbehaving: throttling, 500/503, slow answers and dropped connections in front of moto.

The agent reaches the moto server only through :class:`HttpFaultProxy`
(``AWS_ENDPOINT_URL`` points at the proxy). Retries are botocore's own
(``standard`` mode, max_attempts=5): a persistent fault costs exactly six attempts
per call (the first and five retries), never a hand-written loop on top.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest
import requests
import yaml

from opsagent.backup.engine import BackupEngine
from opsagent.backup.snapshots import SnapshotManager, snapshot_id
from opsagent.config import Settings, load_config
from opsagent_testing.aws import MotoServer
from opsagent_testing.proxy import HttpFaultProxy
from tests.faults.evidence import ADMIN_TOKEN, PG_PASSWORD, figure, record
from tests.fixtures.agent import RunningAgent, poll
from tests.fixtures.backup import SourceDb

PRIMARY_BUCKET = "acme-backups"
REPLICA_BUCKET = "acme-backups-dr"
SLOT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def proxy(aws: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpFaultProxy]:
    """The fault proxy in front of a wiped moto server, with AWS_ENDPOINT_URL pointing at the proxy."""
    p = HttpFaultProxy(aws.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
    try:
        yield p
    finally:
        p.close()


def direct(aws: MotoServer, service: str, region: str = "us-east-1") -> Any:
    """A client that talks to moto without the proxy: the test's view of what really exists."""
    return boto3.client(service, region_name=region, endpoint_url=aws.url)


@pytest.fixture
def buckets(aws: MotoServer) -> None:
    direct(aws, "s3").create_bucket(Bucket=PRIMARY_BUCKET)
    direct(aws, "s3", "eu-west-1").create_bucket(Bucket=REPLICA_BUCKET,
                                                 CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})


def _config(tmp_path: Path, source: SourceDb, **extra: Any) -> dict[str, Any]:
    dsn = f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{source.server.port}/{source.dbname}"
    return {
        "agent": {"state_dir": str(tmp_path / "state"), "region": "us-east-1", **extra.pop("agent", {})},
        "checks": {"cpu": None, "memory": None, "postgres": [{"name": "main", "dsn": dsn, "interval": "30s"}]},
        "backup": {"repository": f"s3://{PRIMARY_BUCKET}/prod", "replica": f"s3://{REPLICA_BUCKET}/prod",
                   "replica_region": "eu-west-1", "postgres": ["main"], "schedule": "0 0 1 1 *", **extra},
    }


def _settings(tmp_path: Path, source: SourceDb, **extra: Any) -> Settings:
    path = tmp_path / "opsagent.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, source, **extra)))
    return load_config(path, env={})


def _objects(aws: MotoServer, bucket: str, region: str = "us-east-1") -> list[str]:
    listed = direct(aws, "s3", region).list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(o["Key"] for o in listed)


def _uploads(aws: MotoServer, bucket: str, region: str = "us-east-1") -> list[Any]:
    return list(direct(aws, "s3", region).list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def _is_s3_write(r: dict[str, Any]) -> bool:
    return r["method"] in ("PUT", "POST") and "/backups/" in r["path"]


def _pg_dump_children() -> list[psutil.Process]:
    return [c for c in psutil.Process().children(recursive=True) if "pg_dump" in (c.name() or "")]


def test_transient_s3_faults_are_retried_and_the_backup_completes(
        proxy: HttpFaultProxy, buckets: None, source_db: SourceDb, tmp_path: Path, aws: MotoServer) -> None:
    """Throttling, 500, 503, a slow answer and dropped connections on S3 are absorbed by botocore's retries: one complete, verified backup in each region."""
    proxy.inject("throttle", lambda r: _is_s3_write(r) and "uploads" in r["query"], times=2)
    proxy.inject("503", lambda r: _is_s3_write(r) and "partNumber" in r["query"], times=2)
    proxy.inject("500", lambda r: r["method"] == "HEAD", times=1)
    proxy.inject("drop", lambda r: r["method"] == "GET" and "list-type" in r["query"], times=2)
    proxy.inject("slow", lambda r: r["method"] == "PUT" and "manifest.json" in r["path"], times=1, delay=2.0)
    proxy.inject("drop_after", lambda r: _is_s3_write(r) and "uploadId" in r["query"] and r["method"] == "POST",
                 times=1)  # CompleteMultipartUpload done by S3, answer lost
    settings = _settings(tmp_path, source_db)
    report = BackupEngine(settings).run()
    record("cli", json.dumps(report.to_dict()))
    assert report.ok, report.to_dict()
    faulted = [s for s in proxy.seen if s.fault]
    assert len(faulted) >= 8, [(s.action, s.fault) for s in faulted]
    primary = [k for k in _objects(aws, PRIMARY_BUCKET) if "/backups/" in k]
    replica = [k for k in _objects(aws, REPLICA_BUCKET, "eu-west-1") if "/backups/" in k]
    assert len([k for k in primary if k.endswith("manifest.json")]) == 1, primary
    assert len([k for k in replica if k.endswith("manifest.json")]) == 1, replica
    assert _uploads(aws, PRIMARY_BUCKET) == [] and _uploads(aws, REPLICA_BUCKET, "eu-west-1") == []
    figure("aws_transient_faults", {"injected": len(faulted), "requests": len(proxy.seen)})


def test_persistent_s3_failure_is_cleaned_reported_and_pages_backup_failed(
        proxy: HttpFaultProxy, buckets: None, source_db: SourceDb, tmp_path: Path, aws: MotoServer,
        start_agent: Callable[..., RunningAgent]) -> None:
    """When S3 keeps answering 503 SlowDown the run gives up after botocore's five retries, leaves no half backup, upload or pg_dump behind, and BackupFailed fires naming SlowDown."""
    proxy.inject("throttle", _is_s3_write, times=10_000)
    config = _config(tmp_path, source_db, agent={"admin_token": ADMIN_TOKEN})
    running = start_agent(config)
    sessions_before = int(source_db.server.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"))
    r = requests.post(running.url + "/backup", timeout=5, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 202

    def backup_failed() -> dict[str, Any] | None:
        doc = running.status()
        record("status", json.dumps(doc))
        return next((a for a in doc["alerts"] if a["alertname"] == "BackupFailed" and a["state"] == "firing"), None)

    alert = poll(backup_failed, timeout=90, interval=0.5)
    text = json.dumps(alert)
    record("alert", text)
    assert "SlowDown" in text or "reduce your request rate" in text, text
    # botocore's standard mode: a bounded number of attempts at the failing call, spread out by its backoff.
    attempts = [s for s in proxy.seen if s.fault]
    assert len(attempts) == 6, [(s.action, s.fault) for s in attempts]  # first attempt + max_attempts=5 retries
    spread = attempts[-1].at - attempts[0].at
    assert spread > 1.0, f"retries not backed off: {spread:.2f}s for {len(attempts)} attempts"
    assert not [k for k in _objects(aws, PRIMARY_BUCKET) if k.endswith("manifest.json")]
    assert _uploads(aws, PRIMARY_BUCKET) == []
    poll(lambda: not _pg_dump_children(), timeout=10)
    poll(lambda: int(source_db.server.psql(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")) <= sessions_before, timeout=10)
    assert running.get("/healthz").status_code == 200
    # S3 comes back: the next run completes and nothing half-written is listed.
    proxy.clear()
    poll(lambda: running.agent.backup.trigger_backup(), timeout=30, interval=0.5)
    poll(lambda: any(k.endswith("manifest.json") for k in _objects(aws, REPLICA_BUCKET, "eu-west-1")), timeout=60,
         interval=0.5)
    manifests = [k for k in _objects(aws, PRIMARY_BUCKET) if k.endswith("manifest.json")]
    assert len(manifests) == 1, manifests
    figure("aws_persistent_failure", {"attempts": len(attempts), "backoff_spread_seconds": round(spread, 2)})


def _make_instance(aws: MotoServer) -> None:
    direct(aws, "rds").create_db_instance(
        DBInstanceIdentifier="db1", DBInstanceClass="db.t3.micro", Engine="postgres", AllocatedStorage=20,
        MasterUsername="app", MasterUserPassword=PG_PASSWORD)


def _managed_snapshots(aws: MotoServer, region: str) -> list[str]:
    found = direct(aws, "rds", region).describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]
    return sorted(s["DBSnapshotIdentifier"] for s in found)


def test_lost_create_answer_and_throttling_make_no_duplicate_snapshot(proxy: HttpFaultProxy, aws: MotoServer) -> None:
    """A CreateDBSnapshot whose answer is lost, throttled describes and a dropped copy leave exactly one snapshot per region for the slot, also when the slot is re-run."""
    _make_instance(aws)
    proxy.inject("drop_after", "CreateDBSnapshot", times=1)
    proxy.inject("throttle", "DescribeDBSnapshots", times=3)
    proxy.inject("throttle", "DescribeDBClusters", times=1)
    proxy.inject("drop_after", "CopyDBSnapshot", times=1)
    proxy.inject("503", "CopyDBSnapshot", times=1)
    settings = Settings(agent={"region": "us-east-1"}, backup={"rds_instances": ["db1"], "replica_region": "eu-west-1"})
    (outcome,) = SnapshotManager(settings, sleep=lambda s: None, poll_interval=0.01).run_slot(SLOT)
    assert outcome.ok and outcome.replica_ok, outcome
    assert proxy.count("CreateDBSnapshot") >= 2 and proxy.count("CopyDBSnapshot") >= 3
    expected = [snapshot_id("db1", SLOT)]
    assert _managed_snapshots(aws, "us-east-1") == expected
    assert _managed_snapshots(aws, "eu-west-1") == expected
    (again,) = SnapshotManager(settings, sleep=lambda s: None, poll_interval=0.01).run_slot(SLOT)
    assert again.ok and _managed_snapshots(aws, "us-east-1") == expected
    assert _managed_snapshots(aws, "eu-west-1") == expected


def test_snapshot_api_down_reports_the_aws_reason(proxy: HttpFaultProxy, aws: MotoServer) -> None:
    """RDS answering 500 on every CreateDBSnapshot fails the target with the AWS error code, after botocore's first attempt and five retries."""
    _make_instance(aws)
    proxy.inject("500", "CreateDBSnapshot", times=10_000)
    settings = Settings(agent={"region": "us-east-1"}, backup={"rds_instances": ["db1"]})
    (outcome,) = SnapshotManager(settings, sleep=lambda s: None, poll_interval=0.01).run_slot(SLOT)
    assert not outcome.ok and outcome.error and "InternalFailure" in outcome.error, outcome
    assert proxy.count("CreateDBSnapshot") == 6  # botocore: the first attempt plus max_attempts=5 retries
    assert _managed_snapshots(aws, "us-east-1") == []
