"""The DR posture on moto: `opsagent audit` controls, PITR lag/window (wrapped client), and their alarms."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from prometheus_client import CollectorRegistry

from opsagent.backup import commands
from opsagent.backup.audit import audit_command, longest_gap
from opsagent.backup.pitr import read_instance
from opsagent.backup.service import BackupService
from opsagent.config import Settings
from opsagent.runtime.results import ResultStore
from opsagent_testing.aws import MotoServer
from tests.fixtures.backup import SourceDb, backup_config, write_config

PRIMARY_BUCKET, REPLICA_BUCKET = "posture-primary", "posture-replica"


def rds(region: str = "us-east-1") -> Any:
    return boto3.client("rds", region_name=region)


def make_instance(name: str, **extra: Any) -> None:
    rds().create_db_instance(DBInstanceIdentifier=name, DBInstanceClass="db.t3.micro", Engine="postgres",
                             AllocatedStorage=20, MasterUsername="app", MasterUserPassword="not-a-secret-1", **extra)


@pytest.fixture(autouse=True)
def _logs_to_stderr() -> None:
    """As the CLI does: logs on stderr, so stdout holds only the command's output."""
    from opsagent.telemetry import logging as agent_logging

    agent_logging.configure("info")


def test_unencrypted_retention_0_instance_fails_those_controls_by_name(
        aws: MotoServer, tmp_path: Path) -> None:
    """`opsagent audit --json` names rds_storage_encrypted and rds_backup_retention as failed and exits 1."""
    make_instance("weak", StorageEncrypted=False, BackupRetentionPeriod=0)
    config = {"agent": {"state_dir": str(tmp_path / "state")},
              "backup": {"rds_instances": ["weak"], "replica_region": "eu-west-1"}}
    proc = subprocess.run([sys.executable, "-m", "opsagent", "audit", "--json", "--config",
                           str(write_config(tmp_path, config))], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    rows = json.loads(proc.stdout)
    failed = {r["control"] for r in rows if r["target"] == "weak" and not r["passed"]}
    assert {"rds_storage_encrypted", "rds_backup_retention"} <= failed
    assert all(set(r) == {"control", "target", "passed", "detail"} for r in rows)
    retention = next(r for r in rows if r["control"] == "rds_backup_retention")
    assert "BackupRetentionPeriod is 0" in retention["detail"]


def test_a_compliant_set_up_exits_0(aws: MotoServer, tmp_path: Path, source_db: SourceDb,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Encrypted S3 repositories, a fresh replica, a passed drill and a protected encrypted RDS instance pass every control."""
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=PRIMARY_BUCKET)
    boto3.client("s3", region_name="eu-west-1").create_bucket(
        Bucket=REPLICA_BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    key = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["Arn"]
    dr_key = boto3.client("kms", region_name="eu-west-1").create_key()["KeyMetadata"]["Arn"]
    make_instance("strong", StorageEncrypted=True, KmsKeyId=key, BackupRetentionPeriod=7, DeletionProtection=True)
    config = backup_config(tmp_path, dsn=source_db.dsn, repository=f"s3://{PRIMARY_BUCKET}/prod",
                           replica=f"s3://{REPLICA_BUCKET}/prod", replica_region="eu-west-1", kms_key_id=key,
                           replica_kms_key_id=dr_key, drill_dsn=source_db.server.dsn("postgres"),
                           rds_instances=["strong"])
    settings = Settings(**config)
    assert commands.backup_run(settings, json_out=True) == 0, capsys.readouterr().err
    assert commands.drill(settings, json_out=True) == 0, capsys.readouterr().err
    capsys.readouterr()
    code = audit_command(settings, json_out=True)
    rows = json.loads(capsys.readouterr().out)
    assert [r for r in rows if not r["passed"]] == [] and code == 0
    assert {r["target"] for r in rows} == {"main", "strong"}


def test_schedule_period_is_the_longest_gap_between_fire_times() -> None:
    """`0 3 * * */2` (Sun/Tue/Thu/Sat) leaves at most two days between backups; hourly leaves one hour."""
    now = datetime(2026, 11, 23, tzinfo=UTC).timestamp()
    assert longest_gap("0 3 * * */2", now) == 2 * 86400
    assert longest_gap("0 * * * *", now) == 3600


class _Lagging:
    """An RDS client whose LatestRestorableTime lags ``lag`` seconds (moto always answers now)."""

    def __init__(self, inner: Any, lag: float, replicated: list[dict[str, Any]] | None) -> None:
        self._inner, self._lag, self._replicated = inner, lag, replicated

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name == "describe_db_instances":
            def lagging(**kwargs: Any) -> Any:
                answer = attr(**kwargs)
                for item in answer["DBInstances"]:
                    item["LatestRestorableTime"] = datetime.fromtimestamp(time.time() - self._lag, UTC)
                return answer
            return lagging
        if name == "describe_db_instance_automated_backups" and self._replicated is not None:
            return lambda **kwargs: {"DBInstanceAutomatedBackups": self._replicated}
        return attr


def _clients(lag: float, replicated: list[dict[str, Any]] | None = None) -> Any:
    def factory(service: str, region: str) -> Any:
        client = boto3.client(service, region_name=region)
        return _Lagging(client, lag, replicated if region == "eu-west-1" else None) if service == "rds" else client
    return factory


def test_pitr_lag_past_15m_fires_pitr_stale_and_is_exported(aws: MotoServer, tmp_path: Path) -> None:
    """A LatestRestorableTime 20 minutes old gives opsagent_pitr_lag_seconds ≈ 1200 and PITRStale fires."""
    from opsagent.alerts.pipeline import AlertPipeline

    make_instance("db1", BackupRetentionPeriod=7)
    dr_latest = datetime.fromtimestamp(time.time() - 600, UTC)
    replicated = [{"DBInstanceIdentifier": "db1", "RestoreWindow": {"EarliestTime": dr_latest, "LatestTime": dr_latest}}]
    settings = Settings(agent={"state_dir": str(tmp_path / "state")},
                        backup={"rds_instances": ["db1"], "replica_region": "eu-west-1", "rds_pitr_replica": True})
    store = ResultStore()
    pipeline = AlertPipeline(settings, tmp_path / "alerts")
    store.subscribe(pipeline.on_result)
    service = BackupService(settings, store, clients=_clients(1200.0, replicated))
    service.refresh()
    registry = CollectorRegistry()
    registry.register(type("C", (), {"collect": lambda self: service.collect()})())
    lag = registry.get_sample_value("opsagent_pitr_lag_seconds", {"target": "db1"})
    assert lag is not None and 1199 <= lag <= 1230
    dr = registry.get_sample_value("opsagent_pitr_replica_lag_seconds", {"target": "db1", "region": "eu-west-1"})
    assert dr is not None and 599 <= dr <= 630
    assert registry.get_sample_value("opsagent_pitr_window_seconds", {"target": "db1"}) is not None
    assert "PITRStale" in {a["alertname"] for a in pipeline.alerts() if a["state"] == "firing"}
    row = next(t for t in service.status()["targets"] if t["target"] == "db1")
    assert row["pitr_lag_seconds"] == pytest.approx(lag, abs=30) and row["pitr_replica_lag_seconds"] is not None


def test_missing_dr_region_replication_is_said_plainly(aws: MotoServer) -> None:
    """No replicated automated backups in the DR region: the reading says so and carries no DR lag."""
    make_instance("db2", BackupRetentionPeriod=7)
    settings = Settings(backup={"rds_instances": ["db2"], "replica_region": "eu-west-1", "rds_pitr_replica": True})
    reading = read_instance(settings, "db2", time.time(), _clients(30.0, replicated=[]))
    assert reading.lag_seconds is not None and reading.lag_seconds < 120
    assert reading.replica_lag_seconds is None and "no replicated automated backups" in (reading.replica_error or "")
    unwrapped = read_instance(settings, "db2", time.time())  # moto answers HTML 500: an error, not a crash
    assert unwrapped.replica_error and unwrapped.replica_lag_seconds is None


def test_pitr_drill_restores_to_the_latest_time_and_always_deletes_the_scratch_instance(
        aws: MotoServer, capsys: pytest.CaptureFixture[str]) -> None:
    """`drill --json` with pitr_drill restores a scratch instance to its latest restorable time, passes, deletes it."""
    make_instance("db3", BackupRetentionPeriod=7)
    settings = Settings(backup={"rds_instances": ["db3"], "pitr_drill": True})
    assert commands.drill(settings, json_out=True) == 0, capsys.readouterr().err
    [drill] = json.loads(capsys.readouterr().out)["drills"]
    assert drill["kind"] == "rds_pitr" and drill["target"] == "db3-pitr" and drill["passed"]
    left = [i["DBInstanceIdentifier"] for i in rds().describe_db_instances()["DBInstances"]]
    assert not [i for i in left if i.startswith("opsagent-drill-")] and "db3" in left


def test_elasticache_without_automatic_snapshots_fails_its_control(aws: MotoServer) -> None:
    """A cache cluster with SnapshotRetentionLimit 0 fails elasticache_snapshot_retention, naming the limit."""
    from opsagent.backup.audit import run_audit

    boto3.client("elasticache", region_name="us-east-1").create_cache_cluster(
        CacheClusterId="cache1", Engine="redis", CacheNodeType="cache.t3.micro", NumCacheNodes=1,
        SnapshotRetentionLimit=0)
    settings = Settings(backup={"elasticache_clusters": ["cache1"]})
    [row] = run_audit(settings, time.time())
    assert row.control == "elasticache_snapshot_retention" and row.target == "cache1"
    assert not row.passed and "SnapshotRetentionLimit is 0" in row.detail


def test_bucket_default_encryption_counts_and_its_absence_fails(aws: MotoServer, tmp_path: Path) -> None:
    """Without backup.kms_key_id the encryption control reads the bucket's default encryption: on passes, off fails."""
    from opsagent.backup.audit import run_audit

    s3 = boto3.client("s3", region_name="us-east-1")
    for bucket in ("enc-on", "enc-off"):
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_encryption(Bucket="enc-on", ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    for bucket, passed in (("enc-on", True), ("enc-off", False)):
        settings = Settings(**backup_config(tmp_path, dsn="postgresql://a@db.invalid/app", repository=f"s3://{bucket}/p"))
        [row] = [r for r in run_audit(settings, time.time()) if r.control == "encryption"]
        assert row.passed is passed, row.detail
