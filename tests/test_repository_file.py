"""The file:// repository: manifest last, incomplete backups invisible and cleaned."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsagent.backup.errors import BackupError
from opsagent.backup.manifest import Manifest, ObjectInfo, new_id
from opsagent.backup.repository import FileRepository, open_repository


def _manifest(backup_id: str, info: ObjectInfo, finished: float = 2000.0) -> Manifest:
    return Manifest(id=backup_id, kind="postgres", target="main", started=finished - 1, finished=finished,
                    size=info.size, compression="none", objects=(info,), server_version="15.0",
                    tool_version="pg_dump 15.0", agent_version="test")


def _write(repo: FileRepository, backup_id: str, data: bytes) -> ObjectInfo:
    writer = repo.writer(backup_id, "data.dump")
    for i in range(0, len(data), 1000):
        writer.write(data[i:i + 1000])
    return writer.commit()


def test_backup_exists_only_once_its_manifest_is_written(tmp_path: Path) -> None:
    """Objects alone are not a backup: list shows it only after the manifest lands."""
    repo = open_repository(f"file://{tmp_path}")
    assert isinstance(repo, FileRepository)
    backup_id = new_id("postgres", "main", 1000.0)
    info = _write(repo, backup_id, b"x" * 5000)
    assert repo.list() == []
    repo.write_manifest(_manifest(backup_id, info))
    listed = repo.list()
    assert [m.id for m in listed] == [backup_id]
    assert listed[0].objects[0].sha256 == info.sha256 and listed[0].size == 5000


def test_incomplete_backup_is_cleaned_and_complete_one_kept(tmp_path: Path) -> None:
    """A half-written backup (no manifest) is removed by cleanup; complete ones are untouched."""
    repo = FileRepository(f"file://{tmp_path}", tmp_path)
    done = new_id("postgres", "main", 1000.0)
    repo.write_manifest(_manifest(done, _write(repo, done, b"complete")))
    half = new_id("postgres", "main", 2000.0)
    writer = repo.writer(half, "data.dump")
    writer.write(b"partial")  # the process dies here
    assert [m.id for m in repo.list()] == [done]
    assert repo.cleanup_incomplete() == [half]
    assert not (tmp_path / "backups" / half).exists()
    assert [m.id for m in repo.list()] == [done]


def test_delete_hides_backup_before_removing_objects(tmp_path: Path) -> None:
    """Deleting removes the manifest and the objects; the backup is gone from the listing."""
    repo = FileRepository(f"file://{tmp_path}", tmp_path)
    backup_id = new_id("postgres", "main", 1000.0)
    repo.write_manifest(_manifest(backup_id, _write(repo, backup_id, b"abc")))
    repo.delete(backup_id)
    assert repo.list() == []
    assert not (tmp_path / "backups" / backup_id).exists()


def test_reading_a_missing_object_names_it(tmp_path: Path) -> None:
    """Reading an object that is not there fails with the backup id and object name."""
    repo = FileRepository(f"file://{tmp_path}", tmp_path)
    with pytest.raises(BackupError, match=r"data\.dump is missing"):
        list(repo.read("postgres-main-20260101T000000Z-abcdef", "data.dump"))


def test_state_round_trips(tmp_path: Path) -> None:
    """Small shared facts (slot markers) are stored and read back; unknown ones read as None."""
    repo = FileRepository(f"file://{tmp_path}", tmp_path)
    assert repo.get_state("slots/backup-x") is None
    repo.put_state("slots/backup-x", b"{}")
    assert repo.get_state("slots/backup-x") == b"{}"


def test_relative_file_url_is_relative_to_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """file://./var/backups (the make run default) lands under the current directory."""
    monkeypatch.chdir(tmp_path)
    repo = open_repository("file://./var/backups/primary")
    repo.put_state("probe", b"1")
    assert (tmp_path / "var" / "backups" / "primary" / "state" / "probe").read_bytes() == b"1"


def test_unlocked_cleanup_spares_recent_incomplete_backups(tmp_path: Path) -> None:
    """Without a fleet lock, cleanup removes only half-written backups started before the cut-off."""
    repo = FileRepository(f"file://{tmp_path}", tmp_path)
    old, recent = new_id("postgres", "main", 1000.0), new_id("postgres", "main", 90_000.0)
    for backup_id in (old, recent):
        repo.writer(backup_id, "data.dump").write(b"partial")
    assert repo.cleanup_incomplete(keep_after=50_000.0) == [old]
    assert (tmp_path / "backups" / recent).exists()


def test_an_object_larger_than_the_writeback_step_reads_back_whole(tmp_path: Path) -> None:
    """Writeback started every few MiB while writing never changes what is stored: a 20 MiB object reads back intact."""
    import hashlib
    import os

    from opsagent.backup.repository import WRITEBACK_EVERY

    repo = open_repository(f"file://{tmp_path}")
    backup_id = new_id("postgres", "main", 1000.0)
    data = os.urandom(WRITEBACK_EVERY * 2 + 12345)
    writer = repo.writer(backup_id, "data.dump")
    for i in range(0, len(data), 1 << 20):
        writer.write(data[i:i + (1 << 20)])
    info = writer.commit()
    assert info.size == len(data) and info.sha256 == hashlib.sha256(data).hexdigest() == info.store_checksum
    assert b"".join(repo.read(backup_id, "data.dump")) == data
