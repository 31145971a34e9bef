"""Backup repositories: where backup objects and their manifests live.

Two implementations of one small interface (:mod:`opsagent.backup.store`): a
directory (``file://``, :mod:`opsagent.backup.repository_file`) and an S3
prefix (``s3://``, :mod:`opsagent.backup.repository_s3`). Layout in both::

    backups/<id>/<object>          written first, streamed
    backups/<id>/manifest.json     written last; without it the backup does not exist
    state/<name>                   small shared facts (slot markers, last run)

Objects are written through an ``ObjectWriter`` that hashes while streaming
and, on commit, has the store confirm the SHA-256 (S3: per-part
``ChecksumSHA256`` and the composite checksum of the completed upload; file:
fsync and re-read). Listing returns only backups whose manifest landed and
passed validation; ``cleanup_incomplete`` removes everything else, including
S3 multipart uploads abandoned by a killed run.
"""

from __future__ import annotations

from pathlib import Path

from opsagent.backup.errors import BackupError
from opsagent.backup.repository_file import WRITEBACK_EVERY, FileRepository
from opsagent.backup.repository_s3 import S3Repository
from opsagent.backup.store import BACKUPS, CHUNK, PART_SIZE, STATE, ObjectWriter, Repository

__all__ = ["BACKUPS", "CHUNK", "PART_SIZE", "STATE", "WRITEBACK_EVERY", "FileRepository", "ObjectWriter", "Repository",
           "S3Repository", "open_repository"]


def open_repository(url: str, region: str | None = None, kms_key_id: str | None = None) -> Repository:
    """A repository for ``file://PATH`` or ``s3://BUCKET/PREFIX``."""
    scheme, _, rest = url.partition("://")
    if scheme == "file":
        return FileRepository(url, Path(rest or "."))
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        return S3Repository(url, bucket, prefix.strip("/"), region, kms_key_id)
    raise BackupError(f"unsupported repository {url!r}; expected file://PATH or s3://BUCKET/PREFIX")


