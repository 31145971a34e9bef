"""The RDS/Aurora side of snapshots: one adapter driven by the declarative API-name table."""

from __future__ import annotations

from typing import Any, Protocol

import structlog

from opsagent.backup.snapshots.common import (
    ID_PREFIX,
    SLOT_TAG,
    TARGET_TAG,
    SnapshotRecord,
    _parse_slot,
    _RdsKind,
    _tag_dict,
    _unix,
    already_exists,
    error_code,
)

log = structlog.get_logger("opsagent.snapshots")


class _Adapter(Protocol):
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
            if already_exists(exc):
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
            if already_exists(exc):
                return False
            raise
        return True


