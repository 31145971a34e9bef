"""The ElastiCache side of snapshots (clusters and replication groups)."""

from __future__ import annotations

from typing import Any

import structlog

from opsagent.backup.snapshots.common import (
    ID_PREFIX,
    SLOT_TAG,
    TARGET_TAG,
    SnapshotRecord,
    _parse_slot,
    _tag_dict,
    _unix,
    already_exists,
    error_code,
)
from opsagent.backup.snapshots.rds import _Adapter

log = structlog.get_logger("opsagent.snapshots")


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
            if already_exists(exc):
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


