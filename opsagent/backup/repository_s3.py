"""``s3://`` repositories: an S3 prefix, multipart uploads with per-part SHA-256, SSE-KMS when configured."""

from __future__ import annotations

import base64
import builtins  # the repositories have a list() method, which shadows list in their annotations
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from opsagent.backup.errors import BackupError, ObjectMissing
from opsagent.backup.manifest import MANIFEST_NAME, Manifest, ObjectInfo, valid_id
from opsagent.backup.store import (
    BACKUPS,
    CHUNK,
    PART_SIZE,
    STATE,
    ObjectWriter,
    _ManifestCache,
    _older,
    checked,
    parse_manifest,
)

log = structlog.get_logger("opsagent.backup")

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
        self._invalid: dict[str, str] = {}

    def sse_args(self) -> dict[str, str]:
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        return {}

    def _key(self, backup_id: str, name: str) -> str:
        checked(backup_id, None if name == MANIFEST_NAME else name)
        return f"{self.prefix}{BACKUPS}/{backup_id}/{name}"

    def invalid(self) -> dict[str, str]:
        return dict(self._invalid)

    def writer(self, backup_id: str, name: str) -> ObjectWriter:
        return _S3Writer(self, self._key(backup_id, name))

    def read(self, backup_id: str, name: str) -> Iterator[bytes]:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self._key(backup_id, name))["Body"]
        except self.s3.exceptions.NoSuchKey:
            raise ObjectMissing(f"backup {backup_id}: object {name} is missing from {self.url}") from None
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
        if not valid_id(backup_id):
            return None
        raw = self._get(self._key(backup_id, MANIFEST_NAME))
        if raw is None:
            return None
        return parse_manifest(raw, backup_id, self.url, self._invalid)

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
        for name in ids:
            if not valid_id(name):
                self._invalid[name] = "key prefix is not a backup id"
        return self._cache.resolve([i for i in ids if valid_id(i)], self.manifest)

    def _delete_keys(self, keys: builtins.list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            if batch:
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def delete(self, backup_id: str) -> None:
        self._cache.forget(backup_id)
        self._invalid.pop(backup_id, None)
        manifest_key = self._key(backup_id, MANIFEST_NAME)
        self.s3.delete_object(Bucket=self.bucket, Key=manifest_key)  # invisible first
        self._delete_keys(list(self._keys(f"{self.prefix}{BACKUPS}/{backup_id}/")))

    def cleanup_incomplete(self, keep_after: float | None = None) -> builtins.list[str]:
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

    def list_state(self, prefix: str) -> builtins.list[str]:
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
