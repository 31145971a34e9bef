"""An unreachable fleet-lock database: a configured lock is never replaced by flock; in-flight backups survive."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from opsagent.backup import commands
from opsagent.backup.manifest import new_id
from opsagent.backup.service import BackupService
from opsagent.runtime.results import ResultStore
from opsagent_testing.servers import closed_port
from tests.fixtures.backup import SourceDb, backup_settings


def _in_flight(tmp_path: Path) -> Path:
    """What a live holder streaming a dump looks like in a file repository: a recent, manifest-less backup."""
    path = tmp_path / "primary" / "backups" / new_id("postgres", "main", time.time() - 60) / "data.dump"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"partial dump of the holder")
    return path


def test_a_configured_lock_that_is_unreachable_skips_the_run_and_says_so(
        tmp_path: Path, source_db: SourceDb, capsys: pytest.CaptureFixture[str]) -> None:
    """With backup.lock_dsn down, `backup run` exits 1 naming the lock and a scheduled slot is skipped, not run."""
    lock_dsn = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"
    settings = backup_settings(tmp_path, dsn=source_db.dsn, lock_dsn=lock_dsn)
    partial = _in_flight(tmp_path)
    assert commands.backup_run(settings, json_out=True) == 1
    assert "backup.lock_dsn" in capsys.readouterr().err
    service = BackupService(settings, ResultStore())
    with capture_logs() as logs:
        assert service.run_slot("backup", datetime.now(UTC).replace(minute=0, second=0, microsecond=0)) == "busy"
    skipped = [e for e in logs if e["event"] == "backup_slot_skipped"]
    assert skipped and "unreachable" in skipped[0]["reason"]
    assert partial.exists() and not any(e["event"] == "backup_dump_started" for e in logs)


def test_a_fallback_lock_never_removes_a_recent_in_flight_backup(tmp_path: Path) -> None:
    """When the first target's database (the implicit lock) is down and flock is used, a live holder's dump stays."""
    dsn = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"
    settings = backup_settings(tmp_path, dsn=dsn, retry={"attempts": 1})
    partial = _in_flight(tmp_path)
    service = BackupService(settings, ResultStore())
    service.run_slot("backup", datetime.now(UTC).replace(minute=0, second=0, microsecond=0))
    assert service.lock_mechanism == "flock"
    assert partial.exists()
