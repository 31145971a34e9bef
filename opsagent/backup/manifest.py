"""The manifest: the last thing written, and the only thing that makes a backup exist.

SPEC §7: kind, target, start/end time, size, compression, SHA-256 of each
object, source server version and tool version. The drill's expectations
(per-table row counts and content checksums, taken in the dump's snapshot)
travel with it. A replica copy gets its own manifest, written after the copy's
checksums were verified there.
"""

from __future__ import annotations

import json
import math
import re
import secrets as _random
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT = 1
_ID = re.compile(r"^[a-z]+-[A-Za-z0-9_.\-]+-\d{8}T\d{6}Z-[0-9a-f]{6}$")
_OBJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")  # one path segment, no "..", no "/"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class InvalidManifest(ValueError):
    """A manifest that parses but cannot be trusted (wrong types, a name that is a path); never acted on."""


def _require(ok: bool, reason: str) -> None:
    if not ok:
        raise InvalidManifest(reason)


def _object(raw: object) -> ObjectInfo:
    _require(isinstance(raw, dict), "an object entry is not a mapping")
    assert isinstance(raw, dict)
    name, size, sha256 = raw.get("name"), raw.get("size"), raw.get("sha256")
    _require(isinstance(name, str) and bool(_OBJECT_NAME.match(name)) and name != MANIFEST_NAME,
             f"object name {name!r} is not a single file name of letters, digits, '.', '_' and '-'")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidManifest(f"object {name}: size {size!r} is not a byte count")
    _require(isinstance(sha256, str) and bool(_SHA256.match(sha256)), f"object {name}: sha256 is not 64 hex digits")
    store = raw.get("store_checksum")
    _require(store is None or isinstance(store, str), f"object {name}: store_checksum is not a string")
    return ObjectInfo(name=str(name), size=int(size), sha256=str(sha256), store_checksum=store)


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
    trigger: str | None = None  # "manual" (backup run, POST /backup) or "schedule"; None in older manifests

    def to_json(self) -> bytes:
        data = asdict(self)
        data["format"] = FORMAT
        data["started_at"] = iso(self.started)
        data["finished_at"] = iso(self.finished)
        return json.dumps(data, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, expected_id: str | None = None) -> Manifest:
        """Parse and validate before anything acts on it; InvalidManifest names the first problem.

        ``expected_id`` is the backup the manifest was read from: a manifest naming another backup's id
        (and so its objects) is refused.
        """
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise InvalidManifest(f"not JSON ({exc})") from None
        _require(isinstance(data, dict), "not a JSON object")
        backup_id = data.get("id")
        _require(isinstance(backup_id, str) and valid_id(backup_id), f"id {backup_id!r} is not a backup id")
        _require(expected_id is None or backup_id == expected_id,
                 f"id {backup_id!r} is not the backup it was found in ({expected_id})")
        for key in ("kind", "target", "compression"):
            _require(isinstance(data.get(key), str), f"{key} is missing or not a string")
        for key in ("started", "finished"):
            value = data.get(key)
            _require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                     f"{key} is not a time in seconds")
        size = data.get("size")
        _require(isinstance(size, int) and not isinstance(size, bool) and size >= 0, "size is not a byte count")
        objects = data.get("objects")
        _require(isinstance(objects, list) and len(objects) > 0, "objects is missing or empty")
        tables = data.get("tables") or {}
        _require(isinstance(tables, dict), "tables is not a mapping")
        try:
            table_stats = {str(k): TableStats(**v) for k, v in tables.items()}
        except TypeError as exc:
            raise InvalidManifest(f"tables: {exc}") from None
        replicated_at = data.get("replicated_at")
        _require(replicated_at is None or isinstance(replicated_at, (int, float)), "replicated_at is not a time")
        return cls(
            id=str(backup_id),
            kind=data["kind"],
            target=data["target"],
            started=float(data["started"]),
            finished=float(data["finished"]),
            size=int(size),
            compression=data["compression"],
            objects=tuple(_object(o) for o in objects),
            server_version=data.get("server_version"),
            tool_version=data.get("tool_version"),
            agent_version=str(data.get("agent_version", "?")),
            tables=table_stats,
            verified=bool(data.get("verified", True)),
            replicated_at=float(replicated_at) if replicated_at is not None else None,
            region=data.get("region"),
            compression_level=data.get("compression_level"),
            dump_format=data.get("dump_format", "custom"),
            compressed_by=data.get("compressed_by", "pg_dump"),
            trigger=data.get("trigger") if isinstance(data.get("trigger"), str) else None,
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


def valid_id(backup_id: object) -> bool:
    """One path segment of the fixed id pattern: safe to use as a directory or key name."""
    return isinstance(backup_id, str) and bool(_ID.match(backup_id))


def valid_object_name(name: object) -> bool:
    return isinstance(name, str) and bool(_OBJECT_NAME.match(name)) and name != MANIFEST_NAME


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
