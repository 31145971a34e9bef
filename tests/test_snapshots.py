"""RDS / Aurora / ElastiCache snapshots against the moto server (reached through AWS_ENDPOINT_URL)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from opsagent import aws as aws_clients
from opsagent.backup.snapshots import (
    MANAGED_TAG,
    SLOT_TAG,
    SOURCE_REGION_TAG,
    TARGET_TAG,
    SnapshotManager,
    snapshot_id,
)
from opsagent.config import Settings

PRIMARY = "us-east-1"
REPLICA = "eu-west-1"
SLOT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def settings(**backup: Any) -> Settings:
    return Settings(agent={"region": PRIMARY}, backup=backup)


def rds(region: str = PRIMARY) -> Any:
    return boto3.client("rds", region_name=region)


def make_instance(name: str = "db1", **extra: Any) -> None:
    rds().create_db_instance(DBInstanceIdentifier=name, DBInstanceClass="db.t3.micro", Engine="postgres",
                             AllocatedStorage=20, MasterUsername="app", MasterUserPassword="not-a-secret-1",
                             **extra)


def kms_key(region: str) -> str:
    return str(boto3.client("kms", region_name=region).create_key()["KeyMetadata"]["Arn"])


def manual_snapshots(region: str) -> dict[str, dict[str, Any]]:
    return {s["DBSnapshotIdentifier"]: s for s in rds(region).describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]}


def tags_of(snapshot: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in snapshot.get("TagList", [])}


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class InProgress:
    """A real boto3 client whose describe call reports ``status`` for the first ``times`` answers.

    moto makes snapshots available immediately; this is how a slow AWS is reproduced.
    """

    def __init__(self, inner: Any, method: str, list_key: str, status_field: str, status: str, times: int) -> None:
        self._inner = inner
        self._method = method
        self._list_key = list_key
        self._field = status_field
        self._status = status
        self.remaining = times
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name != self._method:
            return attr

        def wrapped(**kwargs: Any) -> Any:
            answer = attr(**kwargs)
            self.calls += 1
            if self.remaining != 0:
                self.remaining -= 1
                for item in answer.get(self._list_key, []):
                    item[self._field] = self._status
            return answer

        return wrapped


def factory_with(service: str, wrap: Callable[[Any], Any]) -> Callable[[str, str], Any]:
    wrapped: dict[str, Any] = {}

    def make(svc: str, region: str) -> Any:
        real = aws_clients.client(svc, region)
        if svc != service:
            return real
        if region not in wrapped:
            wrapped[region] = wrap(real)
        return wrapped[region]

    return make


def test_running_a_slot_twice_makes_one_snapshot(aws: Any) -> None:
    """Re-running the same schedule slot finds that slot's snapshot instead of making a second one."""
    make_instance()
    manager = SnapshotManager(settings(rds_instances=["db1"]))
    first = manager.run_slot(SLOT)
    second = manager.run_slot(SLOT + timedelta(seconds=40))
    assert [o.snapshot_id for o in first] == ["opsagent-db1-202603011200"] == [o.snapshot_id for o in second]
    assert all(o.ok and o.error is None and o.kind == "rds" for o in first + second)
    assert list(manual_snapshots(PRIMARY)) == ["opsagent-db1-202603011200"]
    assert tags_of(manual_snapshots(PRIMARY)["opsagent-db1-202603011200"])[MANAGED_TAG] == "true"


def test_copy_lands_in_replica_region_with_tags_and_key(aws: Any) -> None:
    """The snapshot is copied to the replica region, encrypted with the replica key and tagged as the agent's."""
    make_instance()
    key = kms_key(REPLICA)
    manager = SnapshotManager(settings(rds_instances=["db1"], replica_region=REPLICA, replica_kms_key_id=key))
    (outcome,) = manager.run_slot(SLOT)
    assert outcome.ok and outcome.replica_ok is True and outcome.replica_region == REPLICA, outcome
    copy = manual_snapshots(REPLICA)["opsagent-db1-202603011200"]
    assert copy["KmsKeyId"] == key
    assert tags_of(copy) == {MANAGED_TAG: "true", TARGET_TAG: "db1", SLOT_TAG: "2026-03-01T12:00:00Z",
                             "opsagent:kind": "rds", SOURCE_REGION_TAG: PRIMARY}
    again = manager.run_slot(SLOT)
    assert again[0].replica_ok is True and len(manual_snapshots(REPLICA)) == 1


def test_replica_key_missing_in_destination_region_is_named(aws: Any) -> None:
    """A replica KMS key that does not exist in the destination region fails the copy with a message naming it."""
    make_instance()
    missing = f"arn:aws:kms:{REPLICA}:123456789012:key/00000000-0000-0000-0000-000000000000"
    manager = SnapshotManager(settings(rds_instances=["db1"], replica_region=REPLICA, replica_kms_key_id=missing))
    (outcome,) = manager.run_slot(SLOT)
    assert outcome.ok and outcome.replica_ok is False
    assert outcome.error is not None
    assert missing in outcome.error and REPLICA in outcome.error and "its own" in outcome.error
    assert manual_snapshots(REPLICA) == {}


def test_encrypted_snapshot_without_replica_key_says_which_key_to_set(aws: Any) -> None:
    """Copying an encrypted snapshot with no replica-region key asks for backup.replica_kms_key_id."""
    make_instance(StorageEncrypted=True, KmsKeyId=kms_key(PRIMARY))
    manager = SnapshotManager(settings(rds_instances=["db1"], replica_region=REPLICA))
    (outcome,) = manager.run_slot(SLOT)
    assert outcome.ok and outcome.replica_ok is False
    assert "backup.replica_kms_key_id" in (outcome.error or "") and REPLICA in (outcome.error or "")


def test_replica_key_from_the_wrong_region_is_refused(aws: Any) -> None:
    """A primary-region key configured as the replica key is refused before calling AWS."""
    make_instance()
    primary_key = kms_key(PRIMARY)
    manager = SnapshotManager(settings(rds_instances=["db1"], replica_region=REPLICA, replica_kms_key_id=primary_key))
    (outcome,) = manager.run_slot(SLOT)
    assert outcome.replica_ok is False and "is not a key in eu-west-1" in (outcome.error or "")


def test_aurora_cluster_gets_cluster_snapshots_and_copies(aws: Any) -> None:
    """An id naming an Aurora cluster gets a cluster snapshot, copied to the replica region."""
    rds().create_db_cluster(DBClusterIdentifier="aurora1", Engine="aurora-postgresql", MasterUsername="app",
                            MasterUserPassword="not-a-secret-1")
    manager = SnapshotManager(settings(rds_instances=["aurora1"], replica_region=REPLICA))
    (outcome,) = manager.run_slot(SLOT)
    assert outcome.kind == "aurora" and outcome.ok and outcome.replica_ok is True, outcome
    for region in (PRIMARY, REPLICA):
        found = rds(region).describe_db_cluster_snapshots(SnapshotType="manual")["DBClusterSnapshots"]
        assert [s["DBClusterSnapshotIdentifier"] for s in found] == ["opsagent-aurora1-202603011200"]
        assert tags_of(found[0])[MANAGED_TAG] == "true"
    assert manual_snapshots(PRIMARY) == {}
    assert manager.run_slot(SLOT)[0].ok
    assert len(rds().describe_db_cluster_snapshots(SnapshotType="manual")["DBClusterSnapshots"]) == 1


@pytest.mark.parametrize("repository, expected", [
    ("s3://acme-backups/prod", "not supported by this endpoint"),
    ("file:///var/lib/opsagent", "set backup.repository to an s3:// bucket"),
])
def test_elasticache_snapshot_is_made_and_unsupported_copy_reported(aws: Any, repository: str, expected: str) -> None:
    """An ElastiCache snapshot is taken and tagged; a copy the API cannot make is reported, not crashed on."""
    ec = boto3.client("elasticache", region_name=PRIMARY)
    ec.create_cache_cluster(CacheClusterId="cache1", Engine="redis", CacheNodeType="cache.t3.micro", NumCacheNodes=1)
    manager = SnapshotManager(settings(elasticache_clusters=["cache1"], replica_region=REPLICA,
                                       repository=repository))
    with capture_logs() as logs:
        (outcome,) = manager.run_slot(SLOT)
    assert outcome.kind == "elasticache" and outcome.ok and outcome.replica_ok is None, outcome
    assert expected in (outcome.error or "")
    assert any(e["event"] == "snapshot_copy_unsupported" for e in logs)
    snaps = ec.describe_snapshots()["Snapshots"]
    assert [s["SnapshotName"] for s in snaps] == ["opsagent-cache1-202603011200"]
    tags = {t["Key"]: t["Value"] for t in ec.list_tags_for_resource(ResourceName=snaps[0]["ARN"])["TagList"]}
    assert tags[MANAGED_TAG] == "true" and tags[TARGET_TAG] == "cache1"
    assert manager.run_slot(SLOT)[0].ok and len(ec.describe_snapshots()["Snapshots"]) == 1


def test_one_missing_target_does_not_stop_the_others(aws: Any) -> None:
    """A configured id that does not exist fails alone; the other targets still get their snapshots."""
    make_instance()
    outcomes = {o.target: o for o in SnapshotManager(settings(rds_instances=["ghost", "db1"])).run_slot(SLOT)}
    assert outcomes["db1"].ok
    assert not outcomes["ghost"].ok and "ghost" in (outcomes["ghost"].error or "")


def test_slow_snapshot_is_waited_for(aws: Any) -> None:
    """A snapshot still being created is polled until it becomes available."""
    make_instance()
    fake = FakeTime()
    proxies: list[InProgress] = []

    def wrap(real: Any) -> Any:
        proxies.append(InProgress(real, "describe_db_snapshots", "DBSnapshots", "Status", "creating", 3))
        return proxies[-1]

    manager = SnapshotManager(settings(rds_instances=["db1"]), fake.clock, sleep=fake.sleep, poll_interval=10,
                              client_factory=factory_with("rds", wrap))
    (outcome,) = manager.run_slot(SLOT)
    assert outcome.ok and outcome.finished - outcome.started == 30
    assert fake.slept == [10, 10, 10]


def test_snapshot_wait_deadline_gives_a_clear_error(aws: Any) -> None:
    """A snapshot that stays 'creating' past backup.snapshot_wait_timeout fails with a message saying so."""
    make_instance()
    fake = FakeTime()
    manager = SnapshotManager(
        settings(rds_instances=["db1"], snapshot_wait_timeout="1m"), fake.clock, sleep=fake.sleep, poll_interval=25,
        client_factory=factory_with("rds", lambda real: InProgress(
            real, "describe_db_snapshots", "DBSnapshots", "Status", "creating", -1)),
    )
    (outcome,) = manager.run_slot(SLOT)
    assert not outcome.ok
    assert outcome.error == ("snapshot opsagent-db1-202603011200 in us-east-1 is still 'creating' after 1m; it may "
                             "still finish (the next run picks it up), or raise backup.snapshot_wait_timeout if "
                             "snapshots of this size take longer")
    assert fake.slept == [25, 25, 10]


def test_failed_copy_state_is_reported(aws: Any) -> None:
    """A copy that AWS marks failed makes replica_ok False while the primary snapshot stays ok."""
    make_instance()

    def make(svc: str, region: str) -> Any:
        real = aws_clients.client(svc, region)
        if region == REPLICA:
            return InProgress(real, "describe_db_snapshots", "DBSnapshots", "Status", "failed", -1)
        return real

    manager = SnapshotManager(settings(rds_instances=["db1"], replica_region=REPLICA), client_factory=make)
    (outcome,) = manager.run_slot(SLOT)
    assert outcome.ok and outcome.replica_ok is False and "ended in state 'failed'" in (outcome.error or "")


def test_retention_deletes_only_own_snapshots_and_keeps_newest(aws: Any) -> None:
    """Retention removes the agent's surplus snapshots in both regions and never touches other snapshots."""
    make_instance()
    manager = SnapshotManager(settings(rds_instances=["db1"], replica_region=REPLICA,
                                       retention={"hourly": 2, "daily": 2, "weekly": 0}))
    slots = [SLOT - timedelta(hours=h) for h in (0, 1, 2, 3, 25, 26)]
    for slot in slots:
        assert manager.run_slot(slot)[0].replica_ok is True
    rds().create_db_snapshot(DBSnapshotIdentifier="people-made-this", DBInstanceIdentifier="db1")
    # An agent-looking id without the agent's tags is someone else's too.
    rds().create_db_snapshot(DBSnapshotIdentifier="opsagent-db1-200001010000", DBInstanceIdentifier="db1")
    manager.apply_retention(SLOT + timedelta(minutes=5))
    kept = {snapshot_id("db1", SLOT), snapshot_id("db1", SLOT - timedelta(hours=1)),
            snapshot_id("db1", SLOT - timedelta(hours=25))}
    assert set(manual_snapshots(PRIMARY)) == kept | {"people-made-this", "opsagent-db1-200001010000"}
    assert set(manual_snapshots(REPLICA)) == kept


def test_retention_with_nothing_to_keep_still_keeps_the_newest(aws: Any) -> None:
    """A 0/0/0 policy still leaves each target its newest snapshot in each region."""
    make_instance()
    manager = SnapshotManager(settings(rds_instances=["db1"], replica_region=REPLICA,
                                       retention={"hourly": 0, "daily": 0, "weekly": 0}))
    for hours in (2, 1, 0):
        manager.run_slot(SLOT - timedelta(hours=hours))
    manager.apply_retention(SLOT + timedelta(days=400))
    assert list(manual_snapshots(PRIMARY)) == [snapshot_id("db1", SLOT)]
    assert list(manual_snapshots(REPLICA)) == [snapshot_id("db1", SLOT)]


def test_newest_reports_snapshot_and_replica_times(aws: Any) -> None:
    """newest() gives each target its newest snapshot and when its replica-region copy's data was taken."""
    make_instance()
    make_instance("db2")
    manager = SnapshotManager(settings(rds_instances=["db1", "db2"], replica_region=REPLICA))
    manager.run_slot(SLOT - timedelta(hours=1))
    manager.run_slot(SLOT)
    rds().delete_db_snapshot(DBSnapshotIdentifier=snapshot_id("db2", SLOT))
    rds().delete_db_snapshot(DBSnapshotIdentifier=snapshot_id("db2", SLOT - timedelta(hours=1)))
    by_target = {e["target"]: e for e in manager.newest()}
    db1 = by_target["db1"]
    assert db1["snapshot_id"] == snapshot_id("db1", SLOT) and db1["kind"] == "rds"
    assert db1["region"] == REPLICA and db1["primary_region"] == PRIMARY
    primary = manual_snapshots(PRIMARY)[snapshot_id("db1", SLOT)]["SnapshotCreateTime"].timestamp()
    assert db1["time"] == pytest.approx(primary) and db1["replica_time"] == pytest.approx(primary)
    assert by_target["db2"]["snapshot_id"] is None and by_target["db2"]["time"] is None
    assert by_target["db2"]["replica_time"] is not None


def test_snapshot_errors_never_show_secrets(aws: Any) -> None:
    """An AWS error that echoes a registered secret is scrubbed before it reaches the outcome."""
    from opsagent import secrets

    secrets.register(["ghost-secret-name"])
    (outcome,) = SnapshotManager(settings(rds_instances=["ghost-secret-name"])).run_slot(SLOT)
    assert not outcome.ok and "ghost-secret-name" not in (outcome.error or "") and "***" in (outcome.error or "")


def test_newest_without_replica_region_has_no_replica_region(aws: Any) -> None:
    """Without backup.replica_region a target's entry names no replica region, so no replica age applies."""
    make_instance()
    ec = boto3.client("elasticache", region_name=PRIMARY)
    ec.create_cache_cluster(CacheClusterId="cache1", Engine="redis", CacheNodeType="cache.t3.micro", NumCacheNodes=1)
    manager = SnapshotManager(settings(rds_instances=["db1"], elasticache_clusters=["cache1"]))
    outcomes = manager.run_slot(SLOT)
    assert all(o.ok and o.replica_ok is None and o.replica_region is None and o.error is None for o in outcomes)
    entries = {e["kind"]: e for e in manager.newest()}
    assert set(entries) == {"rds", "elasticache"}
    assert all(e["region"] is None and e["replica_time"] is None for e in entries.values())
    assert entries["elasticache"]["snapshot_id"] == snapshot_id("cache1", SLOT)
    assert entries["elasticache"]["time"] == SLOT.timestamp()


_RDS_ID = re.compile(r"^[a-z](?!.*--)[a-z0-9-]{0,253}[a-z0-9]$")


@given(
    target=st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,20}(-[A-Za-z0-9]{1,10}){0,3}", fullmatch=True),
    slot=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31),
                      timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))])),
    seconds=st.integers(min_value=0, max_value=59),
)
def test_snapshot_ids_are_valid_and_one_per_minute_slot(target: str, slot: datetime, seconds: int) -> None:
    """Any slot time within one UTC minute names the same valid RDS/ElastiCache snapshot id."""
    start = slot.replace(second=0, microsecond=0)
    ident = snapshot_id(target, start)
    assert _RDS_ID.match(ident), ident
    assert snapshot_id(target, start + timedelta(seconds=seconds)) == ident
    assert snapshot_id(target, start + timedelta(minutes=1)) != ident
    assert ident.endswith(start.astimezone(UTC).strftime("%Y%m%d%H%M"))


def test_aurora_retention_deletes_surplus_cluster_snapshots_in_both_regions(aws: Any) -> None:
    """Cluster snapshots beyond the policy go in both regions; the newest stays."""
    rds().create_db_cluster(DBClusterIdentifier="aurora1", Engine="aurora-postgresql", MasterUsername="app",
                            MasterUserPassword="not-a-secret-1")
    manager = SnapshotManager(settings(rds_instances=["aurora1"], replica_region=REPLICA,
                                       retention={"hourly": 1, "daily": 0, "weekly": 0}))
    for hours in (2, 1, 0):
        assert manager.run_slot(SLOT - timedelta(hours=hours))[0].ok
    manager.apply_retention(SLOT + timedelta(minutes=5))
    for region in (PRIMARY, REPLICA):
        found = rds(region).describe_db_cluster_snapshots(SnapshotType="manual")["DBClusterSnapshots"]
        assert [s["DBClusterSnapshotIdentifier"] for s in found] == [snapshot_id("aurora1", SLOT)], region


def test_elasticache_retention_deletes_only_own_surplus_snapshots(aws: Any) -> None:
    """ElastiCache snapshots beyond the policy are deleted; the newest and other people's stay."""
    ec = boto3.client("elasticache", region_name=PRIMARY)
    ec.create_cache_cluster(CacheClusterId="cache1", Engine="redis", CacheNodeType="cache.t3.micro", NumCacheNodes=1)
    manager = SnapshotManager(settings(elasticache_clusters=["cache1"], retention={"hourly": 1, "daily": 0, "weekly": 0}))
    for hours in (2, 1, 0):
        assert manager.run_slot(SLOT - timedelta(hours=hours))[0].ok
    ec.create_snapshot(CacheClusterId="cache1", SnapshotName="people-made-this")
    manager.apply_retention(SLOT + timedelta(minutes=5))
    names = {s["SnapshotName"] for s in ec.describe_snapshots()["Snapshots"]}
    assert names == {snapshot_id("cache1", SLOT), "people-made-this"}


class WithoutTagLists:
    """A real RDS client whose describe answers omit TagList, as some API versions and partitions do."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not name.startswith("describe_"):
            return attr

        def wrapped(**kwargs: Any) -> Any:
            answer = attr(**kwargs)
            for value in answer.values():
                for item in value if isinstance(value, list) else ():
                    if isinstance(item, dict):
                        item.pop("TagList", None)
            return answer

        return wrapped


def test_retention_reads_tags_when_describe_omits_them(aws: Any) -> None:
    """Without TagList in describe answers the agent asks for tags, so retention still spares foreign snapshots."""
    make_instance()
    manager = SnapshotManager(settings(rds_instances=["db1"], retention={"hourly": 1, "daily": 0, "weekly": 0}),
                              client_factory=factory_with("rds", WithoutTagLists))
    for hours in (1, 0):
        assert manager.run_slot(SLOT - timedelta(hours=hours))[0].ok
    rds().create_db_snapshot(DBSnapshotIdentifier="opsagent-db1-200001010000", DBInstanceIdentifier="db1")
    manager.apply_retention(SLOT + timedelta(minutes=5))
    assert set(manual_snapshots(PRIMARY)) == {snapshot_id("db1", SLOT), "opsagent-db1-200001010000"}
