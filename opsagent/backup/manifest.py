"""The manifest: the last thing written, and the only thing that makes a backup exist.

SPEC §7: kind, target, start/end time, size, compression, SHA-256 of each
object, source server version and tool version. The drill's expectations
(per-table row counts and content checksums, taken in the dump's snapshot)
travel with it. A replica copy gets its own manifest, written after the copy's
checksums were verified there.
"""

from __future__ import annotations

import json
import re
import secrets as _random
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT = 1
_ID = re.compile(r"^[a-z]+-[A-Za-z0-9_.\-]+-\d{8}T\d{6}Z-[0-9a-f]{6}$")


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    sha256: str  # hex digest of the whole object, computed while streaming
    store_checksum: str | None = None  # what the store confirmed (S3 ChecksumSHA256, composite for multipart)


@dataclass(frozen=True)
class TableStats:
    rows: int
    checksum: str
    method: str = "md5"  # how the checksum was taken (agent.backup.pgstats); manifests before methods: md5


@dataclass(frozen=True)
class Manifest:
    id: str
    kind: str
    target: str
    started: float
    finished: float
    size: int
    compression: str
    objects: tuple[ObjectInfo, ...]
    server_version: str | None
    tool_version: str | None
    agent_version: str
    tables: dict[str, TableStats] = field(default_factory=dict)
    verified: bool = True  # every object's checksum confirmed by the store where this manifest lives
    replicated_at: float | None = None  # set on replica-side manifests
    region: str | None = None
    # Release 2 (issue 22). ``compression`` names the method (zstd, gzip, lz4, none) and ``compressed_by`` who
    # applied it: "agent" (every object is a stream of that codec) or "pg_dump" (inside the archive, which
    # pg_restore reads). Manifests before release 2 hold a description ("pg_dump custom format, gzip level 6"):
    # pg_dump compressed those, as the default below says.
    compression_level: int | None = None
    dump_format: str = "custom"  # pg_dump --format: "custom" (one archive, data.dump) or "directory" (-Fd -j N)
    compressed_by: str = "pg_dump"

    def to_json(self) -> bytes:
        data = asdict(self)
        data["format"] = FORMAT
        data["started_at"] = iso(self.started)
        data["finished_at"] = iso(self.finished)
        return json.dumps(data, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        data: dict[str, Any] = json.loads(raw)
        return cls(
            id=data["id"],
            kind=data["kind"],
            target=data["target"],
            started=float(data["started"]),
            finished=float(data["finished"]),
            size=int(data["size"]),
            compression=data["compression"],
            objects=tuple(ObjectInfo(**o) for o in data["objects"]),
            server_version=data.get("server_version"),
            tool_version=data.get("tool_version"),
            agent_version=data.get("agent_version", "?"),
            tables={k: TableStats(**v) for k, v in (data.get("tables") or {}).items()},
            verified=bool(data.get("verified", True)),
            replicated_at=data.get("replicated_at"),
            region=data.get("region"),
            compression_level=data.get("compression_level"),
            dump_format=data.get("dump_format", "custom"),
            compressed_by=data.get("compressed_by", "pg_dump"),
        )

    def as_replica(self, replicated_at: float, region: str | None) -> Manifest:
        return replace(self, replicated_at=replicated_at, region=region, verified=True)

    @property
    def checksum(self) -> str:
        """One checksum to show for the whole backup (its first object's SHA-256)."""
        return self.objects[0].sha256 if self.objects else ""

    def summary(self) -> dict[str, Any]:
        """What ``backup list`` and /status show."""
        return {
            "id": self.id,
            "kind": self.kind,
            "target": self.target,
            "time": iso(self.finished),
            "timestamp": self.finished,
            "size": self.size,
            "checksum": self.checksum,
            "verified": self.verified,
            "replicated_at": iso(self.replicated_at) if self.replicated_at else None,
        }


def new_id(kind: str, target: str, at: float) -> str:
    """Sortable by time within a target, unique across agents (random suffix)."""
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{kind}-{target}-{stamp}-{_random.token_hex(3)}"


def id_time(backup_id: str) -> float | None:
    """When the backup with this id was started (its id carries the UTC stamp); None if unparsable."""
    match = re.search(r"-(\d{8}T\d{6}Z)-[0-9a-f]{6}$", backup_id)
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()


def valid_id(backup_id: str) -> bool:
    return bool(_ID.match(backup_id))


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
