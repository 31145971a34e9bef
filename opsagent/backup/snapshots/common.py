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

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from opsagent import aws, secrets
from opsagent.backup.errors import BackupError
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


class SnapshotError(BackupError):
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


def already_exists(exc: BaseException) -> bool:
    """AWS says the thing we asked to create exists (``DBSnapshotAlreadyExists``, ``SnapshotAlreadyExistsFault``…):
    for slot-derived ids that means this slot's work was done already."""
    return "AlreadyExists" in error_code(exc)


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


