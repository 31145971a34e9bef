"""The s3:// repository against the moto server: streamed multipart, SHA-256 confirmed, SSE-KMS, cleanup."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from typing import Any

import boto3
import pytest

from opsagent.backup.engine import replicate
from opsagent.backup.errors import ChecksumMismatch
from opsagent.backup.manifest import Manifest, ObjectInfo, new_id
from opsagent.backup.repository import PART_SIZE, S3Repository, open_repository
from opsagent_testing.aws import MotoServer

PRIMARY = "opsagent-primary"
REPLICA = "opsagent-replica"


@pytest.fixture
def buckets(aws: MotoServer) -> dict[str, Any]:
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=PRIMARY)
    boto3.client("s3", region_name="eu-west-1").create_bucket(
        Bucket=REPLICA, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    key = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["KeyId"]
    dr_key = boto3.client("kms", region_name="eu-west-1").create_key()["KeyMetadata"]["KeyId"]
    return {"key": key, "dr_key": dr_key}


def _manifest(backup_id: str, info: ObjectInfo) -> Manifest:
    return Manifest(id=backup_id, kind="postgres", target="main", started=1.0, finished=2.0, size=info.size,
                    compression="none", objects=(info,), server_version="15.0", tool_version="pg_dump 15.0",
                    agent_version="test")


def _stream(repo: S3Repository, backup_id: str, data: bytes, chunk: int = 1024 * 1024) -> ObjectInfo:
    writer = repo.writer(backup_id, "data.dump")
    for i in range(0, len(data), chunk):
        writer.write(data[i:i + chunk])
    return writer.commit()


def test_multipart_object_is_confirmed_and_encrypted(buckets: dict[str, Any]) -> None:
    """A multi-part object's SHA-256 is confirmed by S3, stored with SSE-KMS, and listed after its manifest."""
    repo = open_repository(f"s3://{PRIMARY}/prod", "us-east-1", buckets["key"])
    assert isinstance(repo, S3Repository)
    data = os.urandom(2 * PART_SIZE + 12345)
    backup_id = new_id("postgres", "main", 1000.0)
    info = _stream(repo, backup_id, data)
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == len(data)
    assert repo.list() == []
    repo.write_manifest(_manifest(backup_id, info))
    assert [m.id for m in repo.list()] == [backup_id]
    head = boto3.client("s3", region_name="us-east-1").head_object(
        Bucket=PRIMARY, Key=f"prod/backups/{backup_id}/data.dump", ChecksumMode="ENABLED")
    assert head["ServerSideEncryption"] == "aws:kms" and buckets["key"] in head["SSEKMSKeyId"]
    assert head["ChecksumSHA256"].split("-")[0] == info.store_checksum.split("-")[0]
    assert b"".join(repo.read(backup_id, "data.dump")) == data


def test_streaming_upload_memory_stays_flat(buckets: dict[str, Any]) -> None:
    """Uploading 48 MiB never holds more than a few parts in memory."""
    repo = open_repository(f"s3://{PRIMARY}/prod", "us-east-1")
    block = os.urandom(1024 * 1024)
    tracemalloc.start()
    try:
        writer = repo.writer(new_id("postgres", "main", 1000.0), "data.dump")
        for _ in range(48):
            writer.write(block)
        writer.commit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * PART_SIZE, f"peak {peak / 2**20:.1f} MiB"


def test_abandoned_upload_and_orphans_are_cleaned(buckets: dict[str, Any]) -> None:
    """A killed run's multipart upload and manifest-less objects are removed by cleanup and never listed."""
    repo = open_repository(f"s3://{PRIMARY}/prod", "us-east-1")
    s3 = boto3.client("s3", region_name="us-east-1")
    done = new_id("postgres", "main", 1000.0)
    repo.write_manifest(_manifest(done, _stream(repo, done, b"complete")))
    abandoned = new_id("postgres", "main", 2000.0)
    writer = repo.writer(abandoned, "data.dump")
    writer.write(os.urandom(PART_SIZE + 1))  # one part uploaded, then the process dies
    orphan = new_id("postgres", "main", 3000.0)
    _stream(repo, orphan, b"object without manifest")
    assert s3.list_multipart_uploads(Bucket=PRIMARY).get("Uploads")
    assert [m.id for m in repo.list()] == [done]
    assert set(repo.cleanup_incomplete()) == {abandoned, orphan}
    assert not s3.list_multipart_uploads(Bucket=PRIMARY).get("Uploads")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=PRIMARY).get("Contents", [])]
    assert all(done in k for k in keys)
    assert [m.id for m in repo.list()] == [done]


def test_replication_to_another_region_writes_replica_manifest_last(buckets: dict[str, Any]) -> None:
    """A complete backup is copied to the DR bucket with the DR key, checksums verified, then marked replicated."""
    primary = open_repository(f"s3://{PRIMARY}/prod", "us-east-1", buckets["key"])
    replica = open_repository(f"s3://{REPLICA}/prod", "eu-west-1", buckets["dr_key"])
    backup_id = new_id("postgres", "main", 1000.0)
    data = os.urandom(PART_SIZE + 99)
    manifest = _manifest(backup_id, _stream(primary, backup_id, data))
    primary.write_manifest(manifest)
    copy = replicate(manifest, primary, replica, now=5000.0, region="eu-west-1")
    assert copy.replicated_at == 5000.0 and copy.region == "eu-west-1" and copy.verified
    listed = replica.list()
    assert [m.id for m in listed] == [backup_id] and listed[0].objects[0].sha256 == manifest.objects[0].sha256
    head = boto3.client("s3", region_name="eu-west-1").head_object(Bucket=REPLICA, Key=f"prod/backups/{backup_id}/data.dump")
    assert buckets["dr_key"] in head["SSEKMSKeyId"]


def test_corrupted_object_is_refused_by_replication(buckets: dict[str, Any]) -> None:
    """A primary object whose bytes no longer match the manifest is not copied and never marked replicated."""
    primary = open_repository(f"s3://{PRIMARY}/prod", "us-east-1")
    replica = open_repository(f"s3://{REPLICA}/prod", "eu-west-1")
    backup_id = new_id("postgres", "main", 1000.0)
    manifest = _manifest(backup_id, _stream(primary, backup_id, b"A" * 100_000))
    primary.write_manifest(manifest)
    boto3.client("s3", region_name="us-east-1").put_object(Bucket=PRIMARY, Key=f"prod/backups/{backup_id}/data.dump",
                                             Body=b"A" * 99_999 + b"B")
    with pytest.raises(ChecksumMismatch, match="damaged"):
        replicate(manifest, primary, replica, now=5000.0, region="eu-west-1")
    assert replica.list() == []
    assert not boto3.client("s3", region_name="eu-west-1").list_multipart_uploads(Bucket=REPLICA).get("Uploads")


def test_state_markers_list_and_delete(buckets: dict[str, Any]) -> None:
    """Slot markers in S3 are written, listed by prefix, read back and deleted."""
    repo = open_repository(f"s3://{PRIMARY}/prod", "us-east-1", buckets["key"])
    repo.put_state("slots/backup-20261125T140000Z", b"{}")
    repo.put_state("last_run.json", b"{}")
    assert repo.list_state("slots/") == ["slots/backup-20261125T140000Z"]
    assert repo.get_state("slots/backup-20261125T140000Z") == b"{}"
    repo.delete_state("slots/backup-20261125T140000Z")
    assert repo.list_state("slots/") == [] and repo.get_state("slots/backup-20261125T140000Z") is None
