"""``file://`` repositories: a directory, the default of ``make run`` and the stand-in for a second region."""

from __future__ import annotations

import builtins  # the repositories have a list() method, which shadows list in their annotations
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opsagent.backup.errors import BackupError, ObjectMissing
from opsagent.backup.manifest import MANIFEST_NAME, Manifest, ObjectInfo, valid_id
from opsagent.backup.store import (
    BACKUPS,
    CHUNK,
    STATE,
    ObjectWriter,
    _ManifestCache,
    _older,
    checked,
    parse_manifest,
)
from opsagent.textio import atomic_write


def _start_writeback() -> Any:
    """glibc's ``sync_file_range`` (start writing a range out, without waiting), or None elsewhere."""
    try:
        import ctypes

        fn = ctypes.CDLL("libc.so.6", use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return fn


_SYNC_FILE_RANGE = _start_writeback()
_SYNC_FILE_RANGE_WRITE = 2
WRITEBACK_EVERY = 8 * 1024 * 1024


class _FileWriter:
    """Hashes while writing; every WRITEBACK_EVERY bytes the kernel is told to start writing them out.

    pg_dump is CPU-bound on compression and the disk idles meanwhile: starting writeback as the
    object grows leaves the commit's fsync only the tail, instead of the whole object at the end.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "wb")
        self._hash = hashlib.sha256()
        self._size = 0
        self._flushed = 0  # bytes handed to writeback

    def write(self, data: bytes) -> None:
        self._fh.write(data)
        self._hash.update(data)
        self._size += len(data)
        if _SYNC_FILE_RANGE is not None and self._size - self._flushed >= WRITEBACK_EVERY:
            self._fh.flush()
            _SYNC_FILE_RANGE(self._fh.fileno(), self._flushed, self._size - self._flushed, _SYNC_FILE_RANGE_WRITE)
            self._flushed = self._size

    def commit(self) -> ObjectInfo:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        expected = self._hash.hexdigest()
        stored = _sha256_file(self.path)  # the store's confirmation: what is on disk now
        if stored != expected:
            raise BackupError(f"{self.path}: written bytes do not read back (SHA-256 mismatch); check the disk")
        return ObjectInfo(name=self.path.name, size=self._size, sha256=expected, store_checksum=stored)

    def abort(self) -> None:
        try:
            if not self._fh.closed:
                self._fh.close()  # flushing buffered bytes fails on a full disk: still remove the file
        except OSError:
            pass
        finally:
            self.path.unlink(missing_ok=True)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


class FileRepository:
    """A directory; the default of ``make run`` and the stand-in for a second region."""

    def __init__(self, url: str, root: Path) -> None:
        self.url = url
        self.region: str | None = None
        self.root = root
        self._cache = _ManifestCache()
        self._invalid: dict[str, str] = {}

    def _dir(self, backup_id: str) -> Path:
        checked(backup_id)
        return self.root / BACKUPS / backup_id

    def invalid(self) -> dict[str, str]:
        return dict(self._invalid)

    def writer(self, backup_id: str, name: str) -> ObjectWriter:
        checked(backup_id, name)
        return _FileWriter(self._dir(backup_id) / name)

    def read(self, backup_id: str, name: str) -> Iterator[bytes]:
        checked(backup_id, name)
        path = self._dir(backup_id) / name
        if not path.exists():
            raise ObjectMissing(f"backup {backup_id}: object {name} is missing from {self.url}")
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk

    def write_manifest(self, manifest: Manifest) -> None:
        _atomic_write(self._dir(manifest.id) / MANIFEST_NAME, manifest.to_json())

    def manifest(self, backup_id: str) -> Manifest | None:
        if not valid_id(backup_id):
            return None
        path = self._dir(backup_id) / MANIFEST_NAME
        try:
            if path.is_symlink() or not path.is_file():
                return None
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return parse_manifest(raw, backup_id, self.url, self._invalid)

    def list(self) -> list[Manifest]:
        base = self.root / BACKUPS
        found = sorted(p.name for p in base.iterdir() if (p / MANIFEST_NAME).exists()) if base.is_dir() else []
        for name in found:
            if not valid_id(name):
                self._invalid[name] = "directory name is not a backup id"
        return self._cache.resolve([i for i in found if valid_id(i)], self.manifest)

    def delete(self, backup_id: str) -> None:
        self._cache.forget(backup_id)
        self._invalid.pop(backup_id, None)
        (self._dir(backup_id) / MANIFEST_NAME).unlink(missing_ok=True)  # invisible first
        shutil.rmtree(self._dir(backup_id), ignore_errors=True)

    def cleanup_incomplete(self, keep_after: float | None = None) -> builtins.list[str]:
        """Remove manifest-less backups (started before ``keep_after`` if given: others may be in flight)."""
        base = self.root / BACKUPS
        removed = []
        if base.is_dir():
            for path in base.iterdir():
                if path.is_dir() and not path.is_symlink() and not (path / MANIFEST_NAME).exists() \
                        and _older(path.name, keep_after):
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path.name)
        return removed

    def put_state(self, name: str, data: bytes) -> None:
        _atomic_write(self.root / STATE / name, data)

    def get_state(self, name: str) -> bytes | None:
        try:
            return (self.root / STATE / name).read_bytes()
        except FileNotFoundError:
            return None

    def list_state(self, prefix: str) -> builtins.list[str]:
        base = self.root / STATE
        return sorted(str(p.relative_to(base)) for p in base.glob(f"{prefix}*") if p.is_file()) if base.is_dir() else []

    def delete_state(self, name: str) -> None:
        (self.root / STATE / name).unlink(missing_ok=True)

    def store_checksum(self, backup_id: str, name: str) -> str | None:
        checked(backup_id, name)
        path = self._dir(backup_id) / name
        return _sha256_file(path) if path.exists() else None

    def lock_file(self) -> Path | None:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / ".opsagent.lock"


