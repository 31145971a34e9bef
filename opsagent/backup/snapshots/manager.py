"""SnapshotManager: one snapshot per slot per target, its cross-region copy, retention, newest per target."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import structlog

from opsagent.backup.retention import Item, keep_for_target
from opsagent.backup.snapshots.common import (
    _FAILED_STATES,
    _RDS_KINDS,
    TARGET_TAG,
    ClientFactory,
    SnapshotCopyError,
    SnapshotFailedError,
    SnapshotOutcome,
    SnapshotRecord,
    SnapshotTimeoutError,
    _default_client,
    _is_kms_problem,
    already_exists,
    describe,
    error_code,
    managed_tags,
    slot_utc,
    snapshot_id,
)
from opsagent.backup.snapshots.elasticache import _ElastiCacheAdapter
from opsagent.backup.snapshots.rds import _Adapter, _RdsAdapter
from opsagent.config import RetentionPolicy, Settings

log = structlog.get_logger("opsagent.snapshots")


class SnapshotManager:
    """Snapshots, cross-region copies and retention for ``backup.rds_instances`` / ``elasticache_clusters``.

    ``clock``/``sleep``/``poll_interval`` drive the wait loops (tests pass a fake clock);
    ``client_factory(service, region)`` makes boto3 clients (default :func:`agent.aws.client`).
    """

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        *,
        sleep: Callable[[float], None] = time.sleep,
        poll_interval: float = 15.0,
        client_factory: ClientFactory = _default_client,
    ) -> None:
        self.settings = settings
        self.backup = settings.backup
        self.region = settings.agent.region
        self.replica_region = self.backup.replica_region or None
        self.wait_timeout = float(self.backup.snapshot_wait_timeout)
        self._clock = clock
        self._sleep = sleep
        self._poll = poll_interval
        self._client = client_factory
        self._rds = {k: _RdsAdapter(v) for k, v in _RDS_KINDS.items()}
        self._elasticache = _ElastiCacheAdapter()
        self._kinds: dict[str, str] = {}  # RDS id -> "rds" | "aurora", resolved on first use

    # -- targets --

    def kind_of(self, target: str) -> str:
        """An id in ``rds_instances`` that names an Aurora (or Multi-AZ) DB cluster gets cluster snapshots."""
        kind = self._kinds.get(target)
        if kind is None:
            try:
                found = self._client("rds", self.region).describe_db_clusters(DBClusterIdentifier=target)
                kind = "aurora" if found.get("DBClusters") else "rds"
            except Exception as exc:
                if "NotFound" not in error_code(exc):
                    raise
                kind = "rds"
            self._kinds[target] = kind
        return kind

    def _adapter(self, kind: str) -> _Adapter:
        return self._elasticache if kind == "elasticache" else self._rds[kind]

    # -- one slot --

    def run_slot(self, slot: datetime) -> list[SnapshotOutcome]:
        """Snapshot, wait and copy every configured target for ``slot``; one target's failure never raises."""
        configured: list[tuple[str | None, str]] = [(None, t) for t in self.backup.rds_instances]
        configured.extend(("elasticache", t) for t in self.backup.elasticache_clusters)
        if not configured:
            return []
        with ThreadPoolExecutor(max_workers=min(4, len(configured)), thread_name_prefix="opsagent-snapshot") as pool:
            return list(pool.map(lambda kt: self._run_target(kt[0], kt[1], slot), configured))

    def _run_target(self, kind: str | None, target: str, slot: datetime) -> SnapshotOutcome:
        started = self._clock()
        snap_id = snapshot_id(target, slot)
        resolved = kind or "rds"
        replica_region = self.replica_region if self.replica_region != self.region else None
        try:
            resolved = kind or self.kind_of(target)
            adapter = self._adapter(resolved)
            client = self._client(adapter.service, self.region)
            created = adapter.create(client, target, snap_id, managed_tags(resolved, target, slot))
            log.info("snapshot_started" if created else "snapshot_exists", kind=resolved, target=target,
                     snapshot=snap_id, region=self.region)
            record = self._wait(adapter, client, self.region, snap_id)
            log.info("snapshot_available", kind=resolved, target=target, snapshot=snap_id, region=self.region)
        except Exception as exc:  # noqa: BLE001 - one target's failure is its outcome, not the run's
            error = describe(exc)
            log.warning("snapshot_failed", kind=resolved, target=target, snapshot=snap_id, region=self.region,
                        error=error)
            return SnapshotOutcome(resolved, target, snap_id, False, error, started, self._clock(),
                                   None, None if resolved == "elasticache" else replica_region)
        if replica_region is None:
            return SnapshotOutcome(resolved, target, snap_id, True, None, started, self._clock(), None, None)
        if resolved == "elasticache":
            replica_ok, export_error = self._export_elasticache(client, record)
            return SnapshotOutcome(resolved, target, snap_id, True, export_error, started, self._clock(),
                                   replica_ok, None if replica_ok is None else self.region)
        try:
            self._copy(self._rds[resolved], record, slot, replica_region)
        except Exception as exc:  # noqa: BLE001
            error = describe(exc)
            log.warning("snapshot_copy_failed", kind=resolved, target=target, snapshot=snap_id,
                        region=replica_region, error=error)
            return SnapshotOutcome(resolved, target, snap_id, True, error, started, self._clock(),
                                   False, replica_region)
        return SnapshotOutcome(resolved, target, snap_id, True, None, started, self._clock(), True, replica_region)

    def _wait(self, adapter: _Adapter, client: Any, region: str, snap_id: str) -> SnapshotRecord:
        """Poll until the snapshot is available; raise on a failure state or at the deadline."""
        start = self._clock()
        deadline = start + self.wait_timeout
        status: str | None = None
        while True:
            record = adapter.get(client, region, snap_id)
            status = record.status if record else None
            if record is not None and status == "available":
                return record
            if status in _FAILED_STATES:
                raise SnapshotFailedError(snap_id, region, status or "")
            now = self._clock()
            if now >= deadline:
                raise SnapshotTimeoutError(snap_id, region, status, now - start)
            log.debug("snapshot_waiting", snapshot=snap_id, region=region, status=status)
            self._sleep(min(self._poll, max(deadline - now, 0.0)))

    def _copy(self, adapter: _RdsAdapter, source: SnapshotRecord, slot: datetime, region: str) -> SnapshotRecord:
        kms_key = self.backup.replica_kms_key_id
        if source.encrypted and not kms_key:
            raise SnapshotCopyError(
                source.snapshot_id, region, None,
                f"the snapshot is encrypted (KMS key {source.kms_key_id}) and KMS keys are regional: "
                f"set backup.replica_kms_key_id to a key in {region}",
            )
        if kms_key and kms_key.startswith("arn:") and kms_key.split(":")[3:4] != [region]:
            raise SnapshotCopyError(
                source.snapshot_id, region, kms_key,
                f"backup.replica_kms_key_id {kms_key} is not a key in {region}; "
                f"the destination region needs its own KMS key",
            )
        client = self._client("rds", region)
        tags = managed_tags(source.kind, source.tags.get(TARGET_TAG) or source.target or "", slot, self.region)
        try:
            started = adapter.copy(client, source, self.region, kms_key, tags)
        except Exception as exc:
            if _is_kms_problem(exc):
                raise SnapshotCopyError(
                    source.snapshot_id, region, kms_key,
                    f"KMS key {kms_key or '(none)'} is not usable in {region} ({describe(exc)}); "
                    f"the destination region needs its own key: set backup.replica_kms_key_id to a key in {region}",
                ) from exc
            raise
        log.info("snapshot_copy_started" if started else "snapshot_copy_exists", kind=source.kind,
                 snapshot=source.snapshot_id, region=region, source_region=self.region)
        record = self._wait(adapter, client, region, source.snapshot_id)
        log.info("snapshot_copied", kind=source.kind, snapshot=source.snapshot_id, region=region)
        return record

    def _export_elasticache(self, client: Any, record: SnapshotRecord) -> tuple[bool | None, str | None]:
        """ElastiCache cannot copy a snapshot to another region; its API can only export one to an
        S3 bucket in the snapshot's own region. With an ``s3://`` repository we export there (a copy
        outside ElastiCache, but not a replica-region copy: ``replica_ok`` stays None). Without one,
        or when the endpoint does not support export, the copy is reported as not possible
        (``replica_ok`` None) with the reason; an export that fails otherwise is ``False``."""
        repo = self.backup.repository or ""
        parts = urlsplit(repo)
        if parts.scheme != "s3":
            msg = (f"ElastiCache snapshot {record.snapshot_id} cannot be copied to {self.replica_region}: "
                   f"ElastiCache only exports snapshots to an S3 bucket in {self.region}; "
                   "set backup.repository to an s3:// bucket there to export them")
            log.info("snapshot_copy_unsupported", kind="elasticache", snapshot=record.snapshot_id, reason=msg)
            return None, msg
        key = "/".join(p for p in (parts.path.strip("/"), "elasticache", record.snapshot_id) if p)
        try:
            client.copy_snapshot(SourceSnapshotName=record.snapshot_id, TargetSnapshotName=key,
                                 TargetBucket=parts.netloc)
        except Exception as exc:  # noqa: BLE001
            if already_exists(exc):
                return None, None
            unsupported = type(exc).__name__ == "ResponseParserError" or error_code(exc) in (
                "InvalidParameterValue", "InvalidParameterCombination", "InvalidSnapshotState",
                "NotImplemented", "InternalFailure")
            why = ("it answered with an error page instead of an AWS response"
                   if type(exc).__name__ == "ResponseParserError" else describe(exc))
            msg = (f"ElastiCache snapshot {record.snapshot_id}: export to s3://{parts.netloc}/{key} is not "
                   f"supported by this endpoint ({why}); no copy outside ElastiCache was made, "
                   f"the snapshot itself is available in {self.region}")
            if unsupported:
                log.warning("snapshot_copy_unsupported", kind="elasticache", snapshot=record.snapshot_id, reason=msg)
                return None, msg
            log.warning("snapshot_copy_failed", kind="elasticache", snapshot=record.snapshot_id, error=describe(exc))
            return False, f"ElastiCache snapshot {record.snapshot_id}: export failed: {describe(exc)}"
        log.info("snapshot_exported", kind="elasticache", snapshot=record.snapshot_id, bucket=parts.netloc, key=key)
        return None, None

    # -- listing and retention --

    def managed(self, kind: str, target: str, region: str) -> list[SnapshotRecord]:
        """The agent's own snapshots of ``target`` in ``region`` (any status)."""
        adapter = self._adapter(kind)
        return adapter.list_managed(self._client(adapter.service, region), region, target)

    def _regions(self, kind: str) -> list[str]:
        regions = [self.region]
        if self.replica_region and self.replica_region != self.region and kind != "elasticache":
            regions.append(self.replica_region)
        return regions

    def apply_retention(self, now: datetime) -> None:
        """Delete the agent's own snapshots the GFS policy no longer keeps, per target and region.

        Never touches untagged snapshots, never deletes a target's newest snapshot in a region,
        and leaves snapshots that are not ``available`` (in progress) alone. A failure is logged
        per target and does not stop the others.
        """
        policy = self.backup.retention
        for kind, target in self._safe_targets():
            for region in self._regions(kind):
                try:
                    self._retain(kind, target, region, now, policy)
                except Exception as exc:  # noqa: BLE001
                    log.warning("snapshot_retention_failed", kind=kind, target=target, region=region,
                                error=describe(exc))

    def _retain(self, kind: str, target: str, region: str, now: datetime, policy: RetentionPolicy) -> None:
        adapter = self._adapter(kind)
        client = self._client(adapter.service, region)
        # Only available snapshots compete: one still being made never displaces the newest usable one.
        records = [r for r in adapter.list_managed(client, region, target)
                   if r.data_time is not None and r.status == "available"]
        if not records:
            return
        # The slot (same tag on the original and its copy) orders both regions identically.
        items = [Item(r.snapshot_id, target, r.slot.timestamp() if r.slot else r.data_time or 0.0) for r in records]
        keep = keep_for_target(items, policy.model_dump(), slot_utc(now).timestamp())
        for record in records:
            if record.snapshot_id in keep:
                continue
            adapter.delete(client, record.snapshot_id)
            log.info("snapshot_deleted", kind=kind, target=target, snapshot=record.snapshot_id, region=region,
                     reason="retention")

    def _safe_targets(self) -> list[tuple[str, str]]:
        out = []
        for target in self.backup.rds_instances:
            try:
                out.append((self.kind_of(target), target))
            except Exception as exc:  # noqa: BLE001
                log.warning("snapshot_target_unresolved", target=target, error=describe(exc))
        out.extend(("elasticache", t) for t in self.backup.elasticache_clusters)
        return out

    def newest(self) -> list[dict[str, Any]]:
        """Per configured target, the newest available snapshot and its newest copy in the replica region.

        Entries: ``{kind, target, snapshot_id, time, replica_time, region, primary_region}``. Times are
        unix seconds of when the data was taken (``replica_time``: of the newest replica-region copy's
        original). ``region`` is the replica region the copies are expected in, None when no copy is
        configured or possible (ElastiCache), so no replica age applies; ``primary_region`` is where
        the snapshots are taken. ``snapshot_id``/``time`` are None for a target without a snapshot
        yet; ``error`` is added when AWS could not be asked.
        """
        out: list[dict[str, Any]] = []
        for kind, target in self._safe_targets():
            replicated = len(self._regions(kind)) > 1
            entry: dict[str, Any] = {"kind": kind, "target": target, "snapshot_id": None, "time": None,
                                     "replica_time": None, "region": self.replica_region if replicated else None,
                                     "primary_region": self.region}
            try:
                primary = self.newest_record(kind, target, self.region)
                if primary is not None:
                    entry["snapshot_id"] = primary.snapshot_id
                    entry["time"] = primary.data_time
                if replicated and self.replica_region:
                    replica = self.newest_record(kind, target, self.replica_region)
                    entry["replica_time"] = replica.data_time if replica else None
            except Exception as exc:  # noqa: BLE001
                entry["error"] = describe(exc)
                log.warning("snapshot_list_failed", kind=kind, target=target, error=entry["error"])
            out.append(entry)
        return out

    def newest_record(self, kind: str, target: str, region: str) -> SnapshotRecord | None:
        """The newest available managed snapshot of ``target`` in ``region``."""
        available = [r for r in self.managed(kind, target, region) if r.status == "available"]
        return max(available, key=lambda r: r.data_time or 0.0, default=None)

