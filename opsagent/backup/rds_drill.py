"""The RDS restore drill: prove the replica-region snapshot copies can actually be restored.

A drill restores the newest agent-made snapshot copy in ``backup.replica_region`` into a
scratch instance ``opsagent-drill-<ts>``, waits until it is available (at most
``backup.rto``: a restore slower than the RTO is a failed drill), checks it (status
available, an endpoint, the snapshot's engine), records how long that took, and deletes
the scratch instance in ``finally`` whatever happened. The scratch instance is tagged
``opsagent:drill=true``; a drill that crashed before its ``finally`` leaves one behind, and
the next drill removes every such leftover before it starts. Only instances with both the
``opsagent-drill-`` id prefix and that tag are ever deleted.

Whether drills run at all is the caller's decision (``backup.rds_drill``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from opsagent.backup.errors import BackupError
from opsagent.backup.snapshots import (
    MANAGED_TAG,
    TARGET_TAG,
    ClientFactory,
    SnapshotManager,
    SnapshotRecord,
    _default_client,
    describe,
    error_code,
    slot_utc,
)
from opsagent.config import Settings
from opsagent.units import format_duration

log = structlog.get_logger("opsagent.rds_drill")

DRILL_TAG = "opsagent:drill"
DRILL_PREFIX = "opsagent-drill-"
_FAILED_STATES = {
    "failed", "incompatible-restore", "incompatible-parameters", "incompatible-network",
    "inaccessible-encryption-credentials", "storage-full", "restore-error", "deleting",
}


@dataclass(frozen=True)
class DrillOutcome:
    """One drill. ``duration_seconds`` runs from the restore request to the passed (or failed) check;
    ``started``/``finished`` are those two instants (unix). ``error`` also notes a scratch instance
    that could not be deleted (the next drill removes it)."""

    target: str
    ok: bool
    error: str | None
    duration_seconds: float
    started: float
    finished: float


class DrillCheckError(BackupError):
    """The restored instance came up but is not what the snapshot should have produced."""

    def __init__(self, instance: str, problems: list[str]) -> None:
        self.instance = instance
        self.problems = problems
        super().__init__(f"restored instance {instance} failed its check: {'; '.join(problems)}")


class DrillTimeoutError(BackupError):
    """The restore did not finish within ``backup.rto``."""

    def __init__(self, instance: str, status: str | None, waited: float, rto: float) -> None:
        self.instance = instance
        super().__init__(
            f"restored instance {instance} is still {status or 'not visible'!r} after {format_duration(waited)}, "
            f"which exceeds backup.rto ({format_duration(rto)}): a real restore would miss the RTO"
        )


def drill_instance_id(now: datetime) -> str:
    return f"{DRILL_PREFIX}{slot_utc(now).strftime('%Y%m%d%H%M%S')}"


def _tags(raw: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in raw.get("TagList") or ()}


def remove_leftovers(client: Any, region: str) -> list[str]:
    """Delete scratch instances of earlier drills that did not clean up (crashed agent)."""
    removed = []
    for page in client.get_paginator("describe_db_instances").paginate():
        for raw in page.get("DBInstances", []):
            ident = str(raw.get("DBInstanceIdentifier", ""))
            if not ident.startswith(DRILL_PREFIX):
                continue
            tags = _tags(raw) if "TagList" in raw else {
                t["Key"]: t.get("Value", "")
                for t in client.list_tags_for_resource(ResourceName=raw["DBInstanceArn"]).get("TagList", [])
            }
            if tags.get(DRILL_TAG) != "true" or str(raw.get("DBInstanceStatus", "")).lower() == "deleting":
                continue
            _delete(client, ident)
            log.info("rds_drill_leftover_removed", instance=ident, region=region)
            removed.append(ident)
    return removed


def _delete(client: Any, instance: str) -> bool:
    """Delete a scratch instance without a final snapshot; False if it does not exist."""
    try:
        client.delete_db_instance(DBInstanceIdentifier=instance, SkipFinalSnapshot=True, DeleteAutomatedBackups=True)
    except Exception as exc:
        if "NotFound" in error_code(exc):
            return False
        raise
    return True


def _check(instance: dict[str, Any], snapshot: SnapshotRecord) -> None:
    ident = str(instance.get("DBInstanceIdentifier"))
    problems = []
    status = str(instance.get("DBInstanceStatus", "")).lower()
    if status != "available":
        problems.append(f"status is {status!r}, expected 'available'")
    endpoint = instance.get("Endpoint") or {}
    if not endpoint.get("Address") or not endpoint.get("Port"):
        problems.append("it has no endpoint address/port")
    if snapshot.engine and instance.get("Engine") != snapshot.engine:
        problems.append(f"engine is {instance.get('Engine')!r}, but snapshot {snapshot.snapshot_id} is {snapshot.engine!r}")
    if problems:
        raise DrillCheckError(ident, problems)


def _wait(client: Any, instance: str, clock: Callable[[], float], sleep: Callable[[float], None],
          poll: float, rto: float) -> dict[str, Any]:
    start = clock()
    deadline = start + rto
    while True:
        found = client.describe_db_instances(DBInstanceIdentifier=instance).get("DBInstances", [])
        raw = found[0] if found else None
        status = str(raw.get("DBInstanceStatus", "")).lower() if raw else None
        if raw is not None and status == "available":
            return dict(raw)
        if status in _FAILED_STATES:
            raise DrillCheckError(instance, [f"the restore ended in state {status!r}"])
        now = clock()
        if now >= deadline:
            raise DrillTimeoutError(instance, status, now - start, rto)
        log.debug("rds_drill_waiting", instance=instance, status=status)
        sleep(min(poll, max(deadline - now, 0.0)))


def _newest_replica_snapshot(manager: SnapshotManager, region: str) -> SnapshotRecord | None:
    candidates = []
    for target in manager.backup.rds_instances:
        if manager.kind_of(target) != "rds":
            log.info("rds_drill_skipped_cluster", target=target,
                     reason="Aurora cluster snapshots are not drilled (instance restore only)")
            continue
        record = manager.newest_record("rds", target, region)
        if record is not None:
            candidates.append(record)
    return max(candidates, key=lambda r: r.data_time or 0.0, default=None)


def run_rds_drill(
    settings: Settings,
    now: datetime,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    poll_interval: float = 15.0,
    client_factory: ClientFactory = _default_client,
) -> DrillOutcome:
    """Restore the newest replica-region RDS snapshot into a scratch instance, check it, delete it.

    Never raises for an AWS problem: every failure is the outcome's ``error``.
    """
    backup = settings.backup
    region = backup.replica_region
    targets = ",".join(backup.rds_instances) or "(none)"
    begun = clock()

    def failed(target: str, error: str, started: float) -> DrillOutcome:
        finished = clock()
        log.warning("rds_drill_failed", target=target, region=region, error=error)
        return DrillOutcome(target, False, error, finished - started, started, finished)

    if not region:
        return failed(targets, "backup.replica_region is not set; the RDS drill restores the replica-region "
                               "snapshot copy, so set backup.replica_region", begun)
    try:
        client = client_factory("rds", region)
    except Exception as exc:  # noqa: BLE001
        return failed(targets, f"cannot make an RDS client for {region}: {describe(exc)}", begun)
    try:
        remove_leftovers(client, region)
    except Exception as exc:  # noqa: BLE001 - a leftover we cannot remove must not stop the drill
        log.warning("rds_drill_leftovers_failed", region=region, error=describe(exc))
    try:
        manager = SnapshotManager(settings, clock, sleep=sleep, poll_interval=poll_interval,
                                  client_factory=client_factory)
        snapshot = _newest_replica_snapshot(manager, region)
    except Exception as exc:  # noqa: BLE001
        return failed(targets, f"cannot list snapshots in {region}: {describe(exc)}", begun)
    if snapshot is None:
        return failed(targets, f"no available opsagent snapshot of {targets} in {region}; run a backup with "
                               "backup.replica_region set first", begun)

    target = snapshot.tags.get(TARGET_TAG) or snapshot.target or targets
    instance = drill_instance_id(now)
    started = clock()
    error: str | None = None
    passed = False
    finished = started
    log.info("rds_drill_started", target=target, snapshot=snapshot.snapshot_id, instance=instance, region=region)
    try:
        client.restore_db_instance_from_db_snapshot(
            DBInstanceIdentifier=instance,
            DBSnapshotIdentifier=snapshot.snapshot_id,
            MultiAZ=False,
            PubliclyAccessible=False,
            DeletionProtection=False,
            AutoMinorVersionUpgrade=False,
            Tags=[{"Key": DRILL_TAG, "Value": "true"}, {"Key": MANAGED_TAG, "Value": "true"},
                  {"Key": TARGET_TAG, "Value": target}],
        )
        restored = _wait(client, instance, clock, sleep, poll_interval, float(backup.rto))
        _check(restored, snapshot)
        finished = clock()
        if finished - started > backup.rto:
            error = (f"the restore took {format_duration(finished - started)}, longer than backup.rto "
                     f"({format_duration(backup.rto)})")
        else:
            passed = True
    except Exception as exc:  # noqa: BLE001 - the drill's verdict, not a crash
        finished = clock()
        error = describe(exc)
    finally:
        try:
            if _delete(client, instance):
                log.info("rds_drill_instance_deleted", instance=instance, region=region)
        except Exception as exc:  # noqa: BLE001
            note = f"scratch instance {instance} in {region} was not deleted ({describe(exc)}); the next drill removes it"
            log.warning("rds_drill_cleanup_failed", instance=instance, region=region, error=describe(exc))
            error = f"{error}; {note}" if error else note
    duration = finished - started
    if passed:
        log.info("rds_drill_passed", target=target, snapshot=snapshot.snapshot_id, duration_seconds=duration)
    else:
        log.warning("rds_drill_failed", target=target, snapshot=snapshot.snapshot_id, error=error,
                    duration_seconds=duration)
    return DrillOutcome(target, passed, error, duration, started, finished)
