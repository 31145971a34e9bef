"""The RDS restore drill against the moto server: restore, check, always delete the scratch instance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from structlog.testing import capture_logs

from opsagent import aws as aws_clients
from opsagent.backup.rds_drill import DRILL_TAG, run_rds_drill
from opsagent.backup.snapshots import SnapshotManager
from opsagent.config import Settings
from tests.test_snapshots import (
    PRIMARY,
    REPLICA,
    SLOT,
    FakeTime,
    InProgress,
    make_instance,
    rds,
)

NOW = SLOT + timedelta(hours=3, minutes=30)


def settings(**backup: Any) -> Settings:
    return Settings(agent={"region": PRIMARY},
                    backup={"rds_instances": ["db1"], "replica_region": REPLICA, "rds_drill": True, **backup})


def instances(region: str = REPLICA) -> dict[str, dict[str, Any]]:
    return {i["DBInstanceIdentifier"]: i for i in rds(region).describe_db_instances()["DBInstances"]}


def snapshot_db1(config: Settings, *slots: datetime) -> None:
    make_instance()
    manager = SnapshotManager(config)
    for slot in slots or (SLOT,):
        assert manager.run_slot(slot)[0].replica_ok is True


class Tampered:
    """A real RDS client whose instance descriptions are altered by ``change`` (a restore gone wrong)."""

    def __init__(self, inner: Any, change: dict[str, Any]) -> None:
        self._inner = inner
        self._change = change

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name != "describe_db_instances":
            return attr

        def wrapped(**kwargs: Any) -> Any:
            answer = attr(**kwargs)
            for item in answer.get("DBInstances", []):
                if item["DBInstanceIdentifier"].startswith("opsagent-drill-"):
                    item.update(self._change)
            return answer

        return wrapped


def test_drill_restores_newest_replica_snapshot_and_deletes_it(aws: Any) -> None:
    """The drill restores the newest replica-region snapshot, passes, and leaves no scratch instance behind."""
    config = settings()
    snapshot_db1(config, SLOT - timedelta(hours=1), SLOT)
    with capture_logs() as logs:
        outcome = run_rds_drill(config, NOW)
    assert outcome.ok and outcome.error is None and outcome.target == "db1", outcome
    assert outcome.duration_seconds == outcome.finished - outcome.started >= 0
    started = next(e for e in logs if e["event"] == "rds_drill_started")
    assert started["snapshot"] == "opsagent-db1-202603011200"
    assert started["instance"] == "opsagent-drill-20260301153000"
    assert any(e["event"] == "rds_drill_instance_deleted" for e in logs)
    assert instances() == {}


def test_failed_check_still_deletes_the_scratch_instance(aws: Any) -> None:
    """A restored instance with the wrong engine and no endpoint fails the drill and is still deleted."""
    config = settings()
    snapshot_db1(config)

    def factory(svc: str, region: str) -> Any:
        real = aws_clients.client(svc, region)
        return Tampered(real, {"Engine": "mysql", "Endpoint": {}}) if svc == "rds" else real

    outcome = run_rds_drill(config, NOW, client_factory=factory)
    assert not outcome.ok
    assert "engine is 'mysql', but snapshot opsagent-db1-202603011200 is 'postgres'" in (outcome.error or "")
    assert "no endpoint" in (outcome.error or "")
    assert instances() == {}


def test_restore_slower_than_rto_fails_and_is_deleted(aws: Any) -> None:
    """A restore still 'creating' when backup.rto runs out fails the drill, and the scratch instance is deleted."""
    config = settings(rto="10m")
    snapshot_db1(config)
    fake = FakeTime()

    def factory(svc: str, region: str) -> Any:
        real = aws_clients.client(svc, region)
        return InProgress(real, "describe_db_instances", "DBInstances", "DBInstanceStatus", "creating", -1)

    outcome = run_rds_drill(config, NOW, clock=fake.clock, sleep=fake.sleep, poll_interval=60, client_factory=factory)
    assert not outcome.ok and "exceeds backup.rto (10m)" in (outcome.error or "")
    assert outcome.duration_seconds == 600
    assert instances() == {}


def test_slow_restore_within_rto_records_its_time(aws: Any) -> None:
    """A restore that takes a while but finishes within the RTO passes and reports how long it took."""
    config = settings(rto="1h")
    snapshot_db1(config)
    fake = FakeTime()

    def factory(svc: str, region: str) -> Any:
        real = aws_clients.client(svc, region)
        return InProgress(real, "describe_db_instances", "DBInstances", "DBInstanceStatus", "creating", 4)

    outcome = run_rds_drill(config, NOW, clock=fake.clock, sleep=fake.sleep, poll_interval=30, client_factory=factory)
    assert outcome.ok and outcome.duration_seconds == 120
    assert instances() == {}


def test_leftovers_of_a_crashed_drill_are_removed_next_time(aws: Any) -> None:
    """A scratch instance a crashed drill left behind is deleted by the next drill; other instances are not."""
    config = settings()
    snapshot_db1(config)
    replica = rds(REPLICA)
    replica.restore_db_instance_from_db_snapshot(DBInstanceIdentifier="opsagent-drill-20260228033000",
                                                 DBSnapshotIdentifier="opsagent-db1-202603011200",
                                                 Tags=[{"Key": DRILL_TAG, "Value": "true"}])
    replica.restore_db_instance_from_db_snapshot(DBInstanceIdentifier="opsagent-drill-not-ours",
                                                 DBSnapshotIdentifier="opsagent-db1-202603011200")
    replica.restore_db_instance_from_db_snapshot(DBInstanceIdentifier="someone-elses-restore",
                                                 DBSnapshotIdentifier="opsagent-db1-202603011200",
                                                 Tags=[{"Key": DRILL_TAG, "Value": "true"}])
    with capture_logs() as logs:
        outcome = run_rds_drill(config, NOW)
    assert outcome.ok, outcome
    assert [e["instance"] for e in logs if e["event"] == "rds_drill_leftover_removed"] == [
        "opsagent-drill-20260228033000"]
    assert set(instances()) == {"opsagent-drill-not-ours", "someone-elses-restore"}


def test_drill_without_a_replica_snapshot_fails_clearly(aws: Any) -> None:
    """With no snapshot copy in the replica region the drill fails and says to run a backup first."""
    make_instance()
    outcome = run_rds_drill(settings(), NOW)
    assert not outcome.ok and outcome.target == "db1"
    assert outcome.error == ("no available opsagent snapshot of db1 in eu-west-1; run a backup with "
                             "backup.replica_region set first")


def test_drill_without_replica_region_fails_clearly(aws: Any) -> None:
    """Without backup.replica_region the drill fails and names the key to set."""
    config = Settings(agent={"region": PRIMARY}, backup={"rds_instances": ["db1"]})
    outcome = run_rds_drill(config, NOW)
    assert not outcome.ok and "set backup.replica_region" in (outcome.error or "")


def test_drill_restores_in_the_replica_region_only(aws: Any) -> None:
    """The scratch instance is made in the replica region; the primary region only ever holds the source."""
    config = settings()
    snapshot_db1(config)
    seen: list[tuple[str, str]] = []

    def factory(svc: str, region: str) -> Any:
        seen.append((svc, region))
        return aws_clients.client(svc, region)

    assert run_rds_drill(config, datetime(2026, 3, 2, tzinfo=UTC), client_factory=factory).ok
    assert set(instances(PRIMARY)) == {"db1"}
    assert ("rds", REPLICA) in seen and boto3.client("rds", region_name=REPLICA).describe_db_instances()[
        "DBInstances"] == []
