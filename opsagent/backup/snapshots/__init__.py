"""RDS, Aurora and ElastiCache snapshots (see :mod:`opsagent.backup.snapshots.common` for why it looks like this).

``common`` holds ids, tags, errors and records; ``rds`` and ``elasticache`` the
two API adapters; ``manager`` the :class:`SnapshotManager` the engine and the
service use.
"""

from __future__ import annotations

from opsagent.backup.snapshots.common import (
    ID_PREFIX,
    KIND_TAG,
    MANAGED_TAG,
    SLOT_FORMAT,
    SLOT_TAG,
    SOURCE_REGION_TAG,
    TARGET_TAG,
    ClientFactory,
    SnapshotCopyError,
    SnapshotError,
    SnapshotFailedError,
    SnapshotOutcome,
    SnapshotRecord,
    SnapshotTimeoutError,
    _default_client,
    describe,
    error_code,
    managed_tags,
    slot_utc,
    snapshot_id,
)
from opsagent.backup.snapshots.manager import SnapshotManager

__all__ = ["ID_PREFIX", "KIND_TAG", "MANAGED_TAG", "SLOT_FORMAT", "SLOT_TAG", "SOURCE_REGION_TAG", "TARGET_TAG",
           "ClientFactory", "SnapshotCopyError", "SnapshotError", "SnapshotFailedError", "SnapshotManager",
           "SnapshotOutcome", "SnapshotRecord", "SnapshotTimeoutError", "_default_client", "describe", "error_code",
           "managed_tags", "slot_utc", "snapshot_id"]
