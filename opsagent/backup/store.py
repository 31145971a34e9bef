"""What every backup repository shares: the interface, name checks at the boundary, the manifest cache.

Implementations: :mod:`opsagent.backup.repository_file` (``file://``) and
:mod:`opsagent.backup.repository_s3` (``s3://``); :mod:`opsagent.backup.repository`
opens one from a URL. Every id and object name is checked (one path segment of a
fixed pattern) before it is used as a path or key; a manifest that fails validation
is reported by :meth:`Repository.invalid` and never acted on.
"""


from __future__ import annotations

import builtins  # the repositories have a list() method, which shadows list in their annotations
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import structlog

from opsagent.backup.errors import BackupError
from opsagent.backup.manifest import (
    InvalidManifest,
    Manifest,
    ObjectInfo,
    id_time,
    valid_id,
    valid_object_name,
)

log = structlog.get_logger("opsagent.backup")

CHUNK = 1024 * 1024  # read/write granularity
PART_SIZE = 8 * 1024 * 1024  # S3 multipart part size (>= 5 MiB, the S3 minimum for all but the last)
BACKUPS = "backups"
STATE = "state"


class ObjectWriter(Protocol):
    def write(self, data: bytes) -> None: ...
    def commit(self) -> ObjectInfo:
        """Finish the object and return what the store confirmed; raise if it disagrees."""
        ...
    def abort(self) -> None: ...


class Repository(Protocol):
    url: str
    region: str | None

    def writer(self, backup_id: str, name: str) -> ObjectWriter: ...
    def read(self, backup_id: str, name: str) -> Iterator[bytes]: ...
    def write_manifest(self, manifest: Manifest) -> None: ...
    def manifest(self, backup_id: str) -> Manifest | None: ...
    def list(self) -> list[Manifest]: ...
    def delete(self, backup_id: str) -> None: ...
    def cleanup_incomplete(self, keep_after: float | None = None) -> builtins.list[str]: ...
    def put_state(self, name: str, data: bytes) -> None: ...
    def get_state(self, name: str) -> bytes | None: ...
    def list_state(self, prefix: str) -> builtins.list[str]: ...
    def delete_state(self, name: str) -> None: ...
    def store_checksum(self, backup_id: str, name: str) -> str | None: ...
    def lock_file(self) -> Path | None: ...
    def invalid(self) -> dict[str, str]:
        """Backups whose manifest was found but refused at the last listing: id (or key) -> reason."""
        ...


def checked(backup_id: str, name: str | None = None) -> None:
    """Refuse an id or object name that is not one path segment of the fixed pattern, before any I/O."""
    if not valid_id(backup_id):
        raise BackupError(f"{backup_id!r} is not a backup id; refusing to use it as a path")
    if name is not None and not valid_object_name(name):
        raise BackupError(f"backup {backup_id}: {name!r} is not an object name; refusing to use it as a path")


def parse_manifest(raw: bytes, backup_id: str, url: str, invalid: dict[str, str]) -> Manifest | None:
    """The manifest, or None (and the reason in ``invalid``) when it cannot be trusted."""
    try:
        manifest = Manifest.from_json(raw, expected_id=backup_id)
    except InvalidManifest as exc:
        invalid[backup_id] = f"invalid manifest: {exc}"
        log.warning("backup_manifest_invalid", repository=url, backup_id=backup_id, error=str(exc))
        return None
    invalid.pop(backup_id, None)
    return manifest


class _ManifestCache:
    """Manifests never change once written: read each one once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, Manifest] = {}

    def resolve(self, ids: list[str], load: Any) -> list[Manifest]:
        out: list[Manifest] = []
        with self._lock:
            for key in list(self._by_id):
                if key not in ids:
                    del self._by_id[key]
        for backup_id in ids:
            cached = self._by_id.get(backup_id)
            if cached is None:
                cached = load(backup_id)
                if cached is None:
                    continue
                with self._lock:
                    self._by_id[backup_id] = cached
            out.append(cached)
        out.sort(key=lambda m: (m.finished, m.id))
        return out

    def forget(self, backup_id: str) -> None:
        with self._lock:
            self._by_id.pop(backup_id, None)


def _older(backup_id: str, keep_after: float | None) -> bool:
    """True when ``backup_id`` was started before ``keep_after`` (always, when no limit is given)."""
    if keep_after is None:
        return True
    started = id_time(backup_id)
    return started is not None and started < keep_after


