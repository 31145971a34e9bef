"""Backup repositories: where backup objects and their manifests live.

Two implementations of one small interface: a directory (``file://``, the
embedded default) and an S3 prefix (``s3://bucket/prefix``). Layout in both::

    backups/<id>/<object>          written first, streamed
    backups/<id>/manifest.json     written last; without it the backup does not exist
    state/<name>                   small shared facts (slot markers, last run)

Objects are written through a :class:`ObjectWriter` that hashes while
streaming and, on commit, has the store confirm the SHA-256 (S3: per-part
``ChecksumSHA256`` and the composite checksum of the completed upload; file:
fsync and re-read). Listing returns only backups whose manifest landed;
:meth:`Repository.cleanup_incomplete` removes everything else, including S3
multipart uploads abandoned by a killed run.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import structlog

from opsagent.backup.errors import BackupError
from opsagent.backup.manifest import MANIFEST_NAME, Manifest, ObjectInfo, id_time

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
    def cleanup_incomplete(self, keep_after: float | None = None) -> list[str]: ...
    def put_state(self, name: str, data: bytes) -> None: ...
    def get_state(self, name: str) -> bytes | None: ...
    def list_state(self, prefix: str) -> list[str]: ...
    def delete_state(self, name: str) -> None: ...
    def store_checksum(self, backup_id: str, name: str) -> str | None: ...
    def lock_file(self) -> Path | None: ...


def open_repository(url: str, region: str | None = None, kms_key_id: str | None = None) -> Repository:
    """A repository for ``file://PATH`` or ``s3://BUCKET/PREFIX``."""
    scheme, _, rest = url.partition("://")
    if scheme == "file":
        return FileRepository(url, Path(rest or "."))
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        return S3Repository(url, bucket, prefix.strip("/"), region, kms_key_id)
    raise BackupError(f"unsupported repository {url!r}; expected file://PATH or s3://BUCKET/PREFIX")


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


# -- file:// -------------------------------------------------------------------------------------


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
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class FileRepository:
    """A directory; the default of ``make run`` and the stand-in for a second region."""

    def __init__(self, url: str, root: Path) -> None:
        self.url = url
        self.region: str | None = None
        self.root = root
        self._cache = _ManifestCache()

    def _dir(self, backup_id: str) -> Path:
        return self.root / BACKUPS / backup_id

    def writer(self, backup_id: str, name: str) -> ObjectWriter:
        return _FileWriter(self._dir(backup_id) / name)

    def read(self, backup_id: str, name: str) -> Iterator[bytes]:
        path = self._dir(backup_id) / name
        if not path.exists():
            raise BackupError(f"backup {backup_id}: object {name} is missing from {self.url}")
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk

    def write_manifest(self, manifest: Manifest) -> None:
        _atomic_write(self._dir(manifest.id) / MANIFEST_NAME, manifest.to_json())

    def manifest(self, backup_id: str) -> Manifest | None:
        path = self._dir(backup_id) / MANIFEST_NAME
        try:
            return Manifest.from_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("backup_manifest_unreadable", repository=self.url, backup_id=backup_id, error=str(exc))
            return None

    def list(self) -> list[Manifest]:
        base = self.root / BACKUPS
        ids = sorted(p.name for p in base.iterdir() if (p / MANIFEST_NAME).exists()) if base.is_dir() else []
        return self._cache.resolve(ids, self.manifest)

    def delete(self, backup_id: str) -> None:
        self._cache.forget(backup_id)
        (self._dir(backup_id) / MANIFEST_NAME).unlink(missing_ok=True)  # invisible first
        shutil.rmtree(self._dir(backup_id), ignore_errors=True)

    def cleanup_incomplete(self, keep_after: float | None = None) -> list[str]:
        """Remove manifest-less backups (started before ``keep_after`` if given: others may be in flight)."""
        base = self.root / BACKUPS
        removed = []
        if base.is_dir():
            for path in base.iterdir():
                if path.is_dir() and not (path / MANIFEST_NAME).exists() and _older(path.name, keep_after):
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

    def list_state(self, prefix: str) -> list[str]:
        base = self.root / STATE
        return sorted(str(p.relative_to(base)) for p in base.glob(f"{prefix}*") if p.is_file()) if base.is_dir() else []

    def delete_state(self, name: str) -> None:
        (self.root / STATE / name).unlink(missing_ok=True)

    def store_checksum(self, backup_id: str, name: str) -> str | None:
        path = self._dir(backup_id) / name
        return _sha256_file(path) if path.exists() else None

    def lock_file(self) -> Path | None:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / ".opsagent.lock"


# -- s3:// ---------------------------------------------------------------------------------------


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


class _S3Writer:
    """A streamed multipart upload; each part's SHA-256 is checked by S3 on arrival."""

    def __init__(self, repo: S3Repository, key: str) -> None:
        self._repo = repo
        self.key = key
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._part_digests: list[bytes] = []
        self._hash = hashlib.sha256()
        self._size = 0
        extra = repo.sse_args()
        self._upload_id: str | None = repo.s3.create_multipart_upload(
            Bucket=repo.bucket, Key=key, ChecksumAlgorithm="SHA256", **extra
        )["UploadId"]

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self._size += len(data)
        self._buffer += data
        while len(self._buffer) >= PART_SIZE:
            part = bytes(self._buffer[:PART_SIZE])
            del self._buffer[:PART_SIZE]
            self._send(part)

    def _send(self, part: bytes) -> None:
        number = len(self._parts) + 1
        digest = hashlib.sha256(part).digest()
        answer = self._repo.s3.upload_part(
            Bucket=self._repo.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number,
            Body=part, ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(digest),
        )
        confirmed = answer.get("ChecksumSHA256")
        if confirmed != _b64(digest):
            raise BackupError(f"s3://{self._repo.bucket}/{self.key}: part {number} SHA-256 not confirmed by the store")
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": confirmed})
        self._part_digests.append(digest)

    def commit(self) -> ObjectInfo:
        if self._buffer or not self._parts:
            self._send(bytes(self._buffer))
            self._buffer = bytearray()
        s3, bucket = self._repo.s3, self._repo.bucket
        s3.complete_multipart_upload(
            Bucket=bucket, Key=self.key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
        )
        self._upload_id = None
        expected = _b64(hashlib.sha256(b"".join(self._part_digests)).digest()) + f"-{len(self._parts)}"
        head = s3.head_object(Bucket=bucket, Key=self.key, ChecksumMode="ENABLED")
        stored = head.get("ChecksumSHA256")
        # AWS answers "<base64>-<parts>" for a composite checksum; some stores omit the suffix.
        if (stored or "").split("-")[0] != expected.split("-")[0] or int(head.get("ContentLength", -1)) != self._size:
            raise BackupError(
                f"s3://{bucket}/{self.key}: the store reports checksum {stored} and size {head.get('ContentLength')}, "
                f"expected {expected} and {self._size}"
            )
        return ObjectInfo(name=self.key.rsplit("/", 1)[-1], size=self._size, sha256=self._hash.hexdigest(),
                          store_checksum=stored)

    def abort(self) -> None:
        s3, bucket = self._repo.s3, self._repo.bucket
        try:
            if self._upload_id is not None:
                s3.abort_multipart_upload(Bucket=bucket, Key=self.key, UploadId=self._upload_id)
                self._upload_id = None
            else:
                s3.delete_object(Bucket=bucket, Key=self.key)
        except Exception as exc:  # noqa: BLE001 - best effort; the next run's cleanup retries
            log.warning("backup_abort_failed", key=self.key, error=str(exc))


class S3Repository:
    """An S3 prefix; SSE-KMS when a key is configured."""

    def __init__(self, url: str, bucket: str, prefix: str, region: str | None, kms_key_id: str | None) -> None:
        from opsagent import aws

        if not bucket:
            raise BackupError(f"repository {url!r} names no bucket; expected s3://BUCKET/PREFIX")
        self.url = url
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.region = region
        self.kms_key_id = kms_key_id
        self.s3 = aws.client("s3", region, timeout=60.0)
        self._cache = _ManifestCache()

    def sse_args(self) -> dict[str, str]:
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        return {}

    def _key(self, backup_id: str, name: str) -> str:
        return f"{self.prefix}{BACKUPS}/{backup_id}/{name}"

    def writer(self, backup_id: str, name: str) -> ObjectWriter:
        return _S3Writer(self, self._key(backup_id, name))

    def read(self, backup_id: str, name: str) -> Iterator[bytes]:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self._key(backup_id, name))["Body"]
        except self.s3.exceptions.NoSuchKey:
            raise BackupError(f"backup {backup_id}: object {name} is missing from {self.url}") from None
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def _put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256", **self.sse_args())

    def _get(self, key: str) -> bytes | None:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        except self.s3.exceptions.NoSuchKey:
            return None
        try:
            return bytes(body.read())
        finally:
            body.close()

    def write_manifest(self, manifest: Manifest) -> None:
        self._put(self._key(manifest.id, MANIFEST_NAME), manifest.to_json())

    def manifest(self, backup_id: str) -> Manifest | None:
        raw = self._get(self._key(backup_id, MANIFEST_NAME))
        if raw is None:
            return None
        try:
            return Manifest.from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("backup_manifest_unreadable", repository=self.url, backup_id=backup_id, error=str(exc))
            return None

    def _keys(self, prefix: str) -> Iterator[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"]

    def _grouped(self) -> dict[str, list[str]]:
        base = f"{self.prefix}{BACKUPS}/"
        groups: dict[str, list[str]] = {}
        for key in self._keys(base):
            backup_id, _, _name = key[len(base):].partition("/")
            groups.setdefault(backup_id, []).append(key)
        return groups

    def list(self) -> list[Manifest]:
        ids = sorted(i for i, keys in self._grouped().items() if any(k.endswith("/" + MANIFEST_NAME) for k in keys))
        return self._cache.resolve(ids, self.manifest)

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            if batch:
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def delete(self, backup_id: str) -> None:
        self._cache.forget(backup_id)
        manifest_key = self._key(backup_id, MANIFEST_NAME)
        self.s3.delete_object(Bucket=self.bucket, Key=manifest_key)  # invisible first
        self._delete_keys(list(self._keys(f"{self.prefix}{BACKUPS}/{backup_id}/")))

    def cleanup_incomplete(self, keep_after: float | None = None) -> list[str]:
        """Remove manifest-less objects and abandoned multipart uploads (see FileRepository)."""
        removed = []
        for backup_id, keys in self._grouped().items():
            if not any(k.endswith("/" + MANIFEST_NAME) for k in keys) and _older(backup_id, keep_after):
                self._delete_keys(keys)
                removed.append(backup_id)
        base = f"{self.prefix}{BACKUPS}/"
        pages = self.s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=base)
        for page in pages:
            for upload in page.get("Uploads", []):
                backup_id = upload["Key"][len(base):].partition("/")[0]
                if not _older(backup_id, keep_after):
                    continue
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                if backup_id not in removed:
                    removed.append(backup_id)
        return removed

    def put_state(self, name: str, data: bytes) -> None:
        self._put(f"{self.prefix}{STATE}/{name}", data)

    def get_state(self, name: str) -> bytes | None:
        return self._get(f"{self.prefix}{STATE}/{name}")

    def list_state(self, prefix: str) -> list[str]:
        base = f"{self.prefix}{STATE}/"
        return sorted(key[len(base):] for key in self._keys(base + prefix))

    def delete_state(self, name: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=f"{self.prefix}{STATE}/{name}")

    def store_checksum(self, backup_id: str, name: str) -> str | None:
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=self._key(backup_id, name), ChecksumMode="ENABLED")
        except self.s3.exceptions.ClientError:
            return None
        value = head.get("ChecksumSHA256")
        return str(value) if value else None

    def lock_file(self) -> Path | None:
        return None
