"""RDS, Aurora and ElastiCache snapshots: one per schedule slot, copied to the replica region.

Why it looks like this:

* The snapshot id is derived from the slot (``opsagent-<target>-<YYYYmmddHHMM>``), so a
  re-run of a slot (a retry, a second agent of the fleet) finds ``...AlreadyExists`` and
  treats it as done instead of making a second snapshot.
* Everything the agent creates carries ``opsagent:managed=true`` plus its target and slot;
  retention and ``newest()`` only ever look at snapshots carrying those tags, so snapshots
  made by people or by AWS automated backups are never touched.
* Waiting is a poll with a deadline on an injected clock/sleep (``backup.snapshot_wait_timeout``),
  not a boto3 waiter, so a stuck snapshot becomes a clear error and tests need no real time.
* Cross-region copies of encrypted snapshots need a key that lives in the destination
  region; that failure is turned into :class:`SnapshotCopyError`, which says so.
* RDS and Aurora differ only in API names, so they share one code path driven by a
  declarative table (:data:`_RDS_KINDS`); ElastiCache has its own small adapter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import structlog

from opsagent import aws, secrets
from opsagent.backup.retention import Item, keep_for_target
from opsagent.config import RetentionPolicy, Settings
from opsagent.units import format_duration

log = structlog.get_logger("opsagent.snapshots")

MANAGED_TAG = "opsagent:managed"
TARGET_TAG = "opsagent:target"
SLOT_TAG = "opsagent:slot"
KIND_TAG = "opsagent:kind"
SOURCE_REGION_TAG = "opsagent:source-region"
ID_PREFIX = "opsagent-"
SLOT_FORMAT = "%Y%m%d%H%M"
_SLOT_TAG_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

ClientFactory = Callable[[str, str], Any]


def _default_client(service: str, region: str) -> Any:
    return aws.client(service, region)


# -- errors ---------------------------------------------------------------------------------------


class SnapshotError(Exception):
    """A snapshot step failed; the message names the snapshot, the region and what to fix."""


class SnapshotTimeoutError(SnapshotError):
    """A snapshot (or copy) did not become available before the deadline."""

    def __init__(self, snapshot: str, region: str, status: str | None, waited: float) -> None:
        self.snapshot = snapshot
        self.region = region
        self.status = status
        self.waited = waited
        super().__init__(
            f"snapshot {snapshot} in {region} is still {status or 'not visible'!r} after "
            f"{format_duration(waited)}; it may still finish (the next run picks it up), or raise "
            "backup.snapshot_wait_timeout if snapshots of this size take longer"
        )


class SnapshotFailedError(SnapshotError):
    """AWS reports the snapshot in a terminal failure state."""

    def __init__(self, snapshot: str, region: str, status: str) -> None:
        self.snapshot = snapshot
        self.region = region
        self.status = status
        super().__init__(f"snapshot {snapshot} in {region} ended in state {status!r}")


class SnapshotCopyError(SnapshotError):
    """A cross-region copy failed; usually a KMS key that does not exist in the destination region."""

    def __init__(self, snapshot: str, region: str, kms_key: str | None, reason: str) -> None:
        self.snapshot = snapshot
        self.region = region
        self.kms_key = kms_key
        self.reason = reason
        super().__init__(f"copying snapshot {snapshot} to {region} failed: {reason}")


def describe(exc: BaseException) -> str:
    """One scrubbed human line for an exception (a ClientError shows its AWS code and message)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and isinstance(response.get("Error"), dict):
        err = response["Error"]
        text = f"{err.get('Code', type(exc).__name__)}: {err.get('Message', '')}".strip()
    elif isinstance(exc, SnapshotError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return secrets.scrub(" ".join(text.split())[:600])


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _is_kms_problem(exc: BaseException) -> bool:
    code = error_code(exc)
    return code.startswith("KMSKeyNotAccessible") or (
        code in ("InvalidParameterValue", "InvalidParameterCombination", "KMSAccessDeniedFault")
        and "kms" in describe(exc).lower()
    )


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotOutcome:
    """One target's result for one slot.

    ``ok`` is the primary-region snapshot (created or already there, and available);
    ``replica_ok`` the copy in ``replica_region`` (None: no copy configured or possible).
    ``error`` describes the first problem, of the snapshot or of its copy (also a copy that
    is not possible, while ``ok`` stays True).
    """

    kind: str  # "rds" | "aurora" | "elasticache"
    target: str
    snapshot_id: str | None
    ok: bool
    error: str | None
    started: float
    finished: float
    replica_ok: bool | None
    replica_region: str | None


@dataclass(frozen=True)
class SnapshotRecord:
    """A snapshot as AWS describes it, normalised across RDS, Aurora and ElastiCache."""

    kind: str
    target: str | None
    snapshot_id: str
    arn: str | None
    region: str
    status: str
    time: float | None  # when the snapshot was taken (unix)
    source_time: float | None  # for copies: when the original was taken
    slot: datetime | None
    engine: str | None
    encrypted: bool
    kms_key_id: str | None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def managed(self) -> bool:
        return self.tags.get(MANAGED_TAG) == "true" and self.snapshot_id.lower().startswith(ID_PREFIX)

    @property
    def data_time(self) -> float | None:
        """When the data in this snapshot was captured (a copy: its original's time)."""
        return self.source_time or self.time or (self.slot.timestamp() if self.slot else None)


# -- pure helpers ---------------------------------------------------------------------------------


def slot_utc(slot: datetime) -> datetime:
    """The slot as an aware UTC datetime (a naive datetime is taken to be UTC)."""
    if slot.tzinfo is None:
        return slot.replace(tzinfo=UTC)
    return slot.astimezone(UTC)


def snapshot_id(target: str, slot: datetime) -> str:
    """The deterministic snapshot id of ``target`` for ``slot``: ``opsagent-<target>-<YYYYmmddHHMM>``."""
    return f"{ID_PREFIX}{target.lower()}-{slot_utc(slot).strftime(SLOT_FORMAT)}"


def managed_tags(kind: str, target: str, slot: datetime, source_region: str | None = None) -> list[dict[str, str]]:
    tags = {
        MANAGED_TAG: "true",
        TARGET_TAG: target,
        SLOT_TAG: slot_utc(slot).strftime(_SLOT_TAG_FORMAT),
        KIND_TAG: kind,
    }
    if source_region:
        tags[SOURCE_REGION_TAG] = source_region
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _parse_slot(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, _SLOT_TAG_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def _unix(value: Any) -> float | None:
    if isinstance(value, datetime):
        return slot_utc(value).timestamp() if value.tzinfo is None else value.timestamp()
    return None


# -- RDS and Aurora: one code path, two name tables -----------------------------------------------


@dataclass(frozen=True)
class _RdsKind:
    kind: str
    create: str
    describe: str
    copy: str
    delete: str
    id_param: str
    source_param: str
    list_key: str
    result_key: str
    arn_field: str
    encrypted_field: str
    copy_source: str
    copy_target: str


_RDS_KINDS = {
    "rds": _RdsKind(
        kind="rds", create="create_db_snapshot", describe="describe_db_snapshots", copy="copy_db_snapshot",
        delete="delete_db_snapshot", id_param="DBSnapshotIdentifier", source_param="DBInstanceIdentifier",
        list_key="DBSnapshots", result_key="DBSnapshot", arn_field="DBSnapshotArn", encrypted_field="Encrypted",
        copy_source="SourceDBSnapshotIdentifier", copy_target="TargetDBSnapshotIdentifier",
    ),
    "aurora": _RdsKind(
        kind="aurora", create="create_db_cluster_snapshot", describe="describe_db_cluster_snapshots",
        copy="copy_db_cluster_snapshot", delete="delete_db_cluster_snapshot",
        id_param="DBClusterSnapshotIdentifier", source_param="DBClusterIdentifier",
        list_key="DBClusterSnapshots", result_key="DBClusterSnapshot", arn_field="DBClusterSnapshotArn",
        encrypted_field="StorageEncrypted", copy_source="SourceDBClusterSnapshotIdentifier",
        copy_target="TargetDBClusterSnapshotIdentifier",
    ),
}

_FAILED_STATES = {"failed", "error", "incompatible-restore", "incompatible-parameters", "deleted", "deleting"}


def _tag_dict(tag_list: Iterable[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in tag_list or ()}


class _Adapter:
    """What the manager needs from one kind of snapshot API."""

    kind: str
    service: str

    def create(self, client: Any, target: str, snap_id: str, tags: list[dict[str, str]]) -> bool: ...
    def get(self, client: Any, region: str, snap_id: str) -> SnapshotRecord | None: ...
    def list_managed(self, client: Any, region: str, target: str) -> list[SnapshotRecord]: ...
    def delete(self, client: Any, snap_id: str) -> None: ...


class _RdsAdapter(_Adapter):
    service = "rds"

    def __init__(self, names: _RdsKind) -> None:
        self.names = names
        self.kind = names.kind

    def create(self, client: Any, target: str, snap_id: str, tags: list[dict[str, str]]) -> bool:
        """Start the snapshot; False when this slot's snapshot already exists (a re-run)."""
        n = self.names
        try:
            getattr(client, n.create)(**{n.id_param: snap_id, n.source_param: target, "Tags": tags})
        except Exception as exc:
            if "AlreadyExists" in error_code(exc):
                return False
            raise
        return True

    def _record(self, raw: dict[str, Any], region: str, tags: dict[str, str] | None = None) -> SnapshotRecord:
        n = self.names
        tags = _tag_dict(raw.get("TagList")) if tags is None else tags
        return SnapshotRecord(
            kind=self.kind,
            target=tags.get(TARGET_TAG) or raw.get(n.source_param),
            snapshot_id=raw[n.id_param],
            arn=raw.get(n.arn_field),
            region=region,
            status=str(raw.get("Status", "")).lower(),
            time=_unix(raw.get("SnapshotCreateTime")),
            source_time=_unix(raw.get("OriginalSnapshotCreateTime")),
            slot=_parse_slot(tags.get(SLOT_TAG)),
            engine=raw.get("Engine"),
            encrypted=bool(raw.get(n.encrypted_field)),
            kms_key_id=raw.get("KmsKeyId"),
            tags=tags,
        )

    def _tags(self, client: Any, raw: dict[str, Any]) -> dict[str, str]:
        if "TagList" in raw:
            return _tag_dict(raw["TagList"])
        arn = raw.get(self.names.arn_field)
        if not arn:
            return {}
        return _tag_dict(client.list_tags_for_resource(ResourceName=arn).get("TagList"))

    def get(self, client: Any, region: str, snap_id: str) -> SnapshotRecord | None:
        n = self.names
        try:
            found = getattr(client, n.describe)(**{n.id_param: snap_id}).get(n.list_key, [])
        except Exception as exc:
            if "NotFound" in error_code(exc):
                return None
            raise
        if not found:
            return None
        return self._record(found[0], region, self._tags(client, found[0]))

    def list_managed(self, client: Any, region: str, target: str) -> list[SnapshotRecord]:
        n = self.names
        out = []
        prefix = f"{ID_PREFIX}{target.lower()}-"
        for page in client.get_paginator(n.describe).paginate(SnapshotType="manual"):
            for raw in page.get(n.list_key, []):
                if not str(raw.get(n.id_param, "")).lower().startswith(prefix):
                    continue
                record = self._record(raw, region, self._tags(client, raw))
                if record.managed and record.tags.get(TARGET_TAG) == target:
                    out.append(record)
        return out

    def delete(self, client: Any, snap_id: str) -> None:
        n = self.names
        getattr(client, n.delete)(**{n.id_param: snap_id})

    def copy(self, client: Any, source: SnapshotRecord, source_region: str, kms_key: str | None,
             tags: list[dict[str, str]]) -> bool:
        """Start the cross-region copy from the destination region; False if it already exists there."""
        n = self.names
        params: dict[str, Any] = {
            n.copy_source: source.arn,
            n.copy_target: source.snapshot_id,
            "SourceRegion": source_region,
            "CopyTags": True,
            "Tags": tags,
        }
        if kms_key:
            params["KmsKeyId"] = kms_key
        try:
            getattr(client, n.copy)(**params)
        except Exception as exc:
            if "AlreadyExists" in error_code(exc):
                return False
            raise
        return True


class _ElastiCacheAdapter(_Adapter):
    """ElastiCache snapshots; a target is a replication group id or a cache cluster id."""

    kind = "elasticache"
    service = "elasticache"

    def __init__(self) -> None:
        self._group: dict[str, bool] = {}

    def _is_group(self, client: Any, target: str) -> bool:
        if target not in self._group:
            try:
                client.describe_replication_groups(ReplicationGroupId=target)
                self._group[target] = True
            except Exception as exc:
                if "NotFound" not in error_code(exc):
                    raise
                self._group[target] = False
        return self._group[target]

    def create(self, client: Any, target: str, snap_id: str, tags: list[dict[str, str]]) -> bool:
        source = "ReplicationGroupId" if self._is_group(client, target) else "CacheClusterId"
        try:
            client.create_snapshot(SnapshotName=snap_id, Tags=tags, **{source: target})
        except Exception as exc:
            if "AlreadyExists" in error_code(exc):
                return False
            raise
        return True

    def _record(self, client: Any, raw: dict[str, Any], region: str) -> SnapshotRecord:
        arn = raw.get("ARN")
        tags = _tag_dict(client.list_tags_for_resource(ResourceName=arn).get("TagList")) if arn else {}
        node_times = [_unix(n.get("SnapshotCreateTime")) for n in raw.get("NodeSnapshots") or ()]
        taken = max((t for t in node_times if t is not None), default=None)
        slot = _parse_slot(tags.get(SLOT_TAG))
        return SnapshotRecord(
            kind=self.kind,
            target=tags.get(TARGET_TAG) or raw.get("ReplicationGroupId") or raw.get("CacheClusterId"),
            snapshot_id=raw["SnapshotName"],
            arn=arn,
            region=region,
            status=str(raw.get("SnapshotStatus", "")).lower(),
            time=taken if taken is not None else (slot.timestamp() if slot else None),
            source_time=None,
            slot=slot,
            engine=raw.get("Engine"),
            encrypted=bool(raw.get("KmsKeyId")),
            kms_key_id=raw.get("KmsKeyId"),
            tags=tags,
        )

    def get(self, client: Any, region: str, snap_id: str) -> SnapshotRecord | None:
        try:
            found = client.describe_snapshots(SnapshotName=snap_id).get("Snapshots", [])
        except Exception as exc:
            if "NotFound" in error_code(exc):
                return None
            raise
        return self._record(client, found[0], region) if found else None

    def list_managed(self, client: Any, region: str, target: str) -> list[SnapshotRecord]:
        out = []
        prefix = f"{ID_PREFIX}{target.lower()}-"
        for page in client.get_paginator("describe_snapshots").paginate(SnapshotSource="manual"):
            for raw in page.get("Snapshots", []):
                if not str(raw.get("SnapshotName", "")).lower().startswith(prefix):
                    continue
                record = self._record(client, raw, region)
                if record.managed and record.tags.get(TARGET_TAG) == target:
                    out.append(record)
        return out

    def delete(self, client: Any, snap_id: str) -> None:
        client.delete_snapshot(SnapshotName=snap_id)


# -- the manager ----------------------------------------------------------------------------------


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
            replica_ok, error = self._export_elasticache(client, record)
            return SnapshotOutcome(resolved, target, snap_id, True, error, started, self._clock(),
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
            if "AlreadyExists" in error_code(exc):
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
