"""Freshness per target: newest backup, newest replica copy, RPO now — typed rows, computed from ``now``.

Pages never lie: a target without any complete backup has ``rpo_seconds =
None`` (not "seconds since the agent started"), and the synthetic ``backup``
reading carries ``details["newest"] = None`` so the alert text can say "no
complete backup exists"; its *value* is still the age since the agent started,
so ``BackupStale`` fires once ``rpo`` has passed with nothing to restore.

A manifest stamped more than :data:`SKEW_TOLERANCE` after ``now`` was written
by an agent whose clock runs ahead: it is not counted for the RPO (it would
make the RPO negative and mute ``BackupStale``) and is reported instead
(``BackupClockSkew``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from opsagent.backup.manifest import Manifest, iso

SKEW_TOLERANCE = 300.0


@dataclass(frozen=True)
class Copy:
    """The newest complete backup (or replica copy) of a target, as /status shows it."""

    id: str | None
    timestamp: float
    size: int | None = None
    verified: bool = True
    checksum: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "time": iso(self.timestamp), "timestamp": self.timestamp, "size": self.size,
                "verified": self.verified, "checksum": self.checksum}


@dataclass(frozen=True)
class Freshness:
    kind: str
    target: str
    newest: Copy | None
    replica: Copy | None
    replica_configured: bool
    region: str | None
    rpo_seconds: float | None  # None: no complete backup exists
    age_for_alarm: float  # what BackupStale compares: RPO, or time since agent start when none exists
    replica_age_seconds: float | None
    replica_age_for_alarm: float | None
    size_bytes: int | None = None
    duration_seconds: float | None = None
    future: list[str] = field(default_factory=list)  # ids stamped after now + tolerance (clock skew)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "target": self.target,
            "newest_backup": self.newest.to_dict() if self.newest else None,
            "newest_replica": self.replica.to_dict() if self.replica else None,
            "rpo_seconds": self.rpo_seconds,
            "replica_age_seconds": self.replica_age_seconds,
            "region": self.region,
            "size_bytes": self.size_bytes,
            "duration_seconds": self.duration_seconds,
            "future_backups": list(self.future),
        }


def _copy(m: Manifest) -> Copy:
    return Copy(id=m.id, timestamp=m.finished, size=m.size, verified=m.verified, checksum=m.checksum)


def newest_by_target(manifests: Iterable[Manifest], now: float, *, verified_only: bool = False
                     ) -> tuple[dict[tuple[str, str], Manifest], dict[tuple[str, str], list[str]]]:
    """Newest manifest per (kind, target) not from the future, and the future ones per key."""
    newest: dict[tuple[str, str], Manifest] = {}
    future: dict[tuple[str, str], list[str]] = {}
    for m in manifests:
        key = (m.kind, m.target)
        if verified_only and not m.verified:
            continue
        if m.finished > now + SKEW_TOLERANCE:
            future.setdefault(key, []).append(m.id)
            continue
        if key not in newest or m.finished >= newest[key].finished:
            newest[key] = m
    return newest, future


def postgres_row(name: str, newest: Manifest | None, copy: Manifest | None, *, now: float, started: float,
                 replica_configured: bool, region: str | None, future: list[str]) -> Freshness:
    rpo = now - newest.finished if newest else None
    replica_age = (now - copy.finished if copy else None) if replica_configured else None
    return Freshness(
        kind="postgres", target=name, newest=_copy(newest) if newest else None,
        replica=_copy(copy) if copy and replica_configured else None, replica_configured=replica_configured,
        region=region, rpo_seconds=rpo, age_for_alarm=rpo if rpo is not None else now - started,
        replica_age_seconds=replica_age,
        replica_age_for_alarm=(replica_age if replica_age is not None else now - started) if replica_configured else None,
        size_bytes=newest.size if newest else None,
        duration_seconds=(newest.finished - newest.started) if newest else None, future=future)


def snapshot_row(snap: dict[str, Any], *, now: float, started: float) -> Freshness:
    t, rt = snap.get("time"), snap.get("replica_time")
    replica_configured = bool(snap.get("region"))
    rpo = now - t if t else None
    replica_age = (now - rt if rt else None) if replica_configured else None
    return Freshness(
        kind=str(snap.get("kind", "rds")), target=str(snap.get("target")),
        newest=Copy(id=snap.get("snapshot_id"), timestamp=t) if t else None,
        replica=Copy(id=None, timestamp=rt) if rt else None, replica_configured=replica_configured,
        region=snap.get("region"), rpo_seconds=rpo, age_for_alarm=rpo if rpo is not None else now - started,
        replica_age_seconds=replica_age,
        replica_age_for_alarm=(replica_age if replica_age is not None else now - started) if replica_configured else None)
