"""Several agent processes on one schedule: exactly one backup per slot, crashes do not block the next slot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from opsagent.backup.engine import primary_repository
from opsagent.config import load_config
from opsagent_testing.servers import closed_port
from tests.fixtures.backup import SourceDb, backup_config, slow_tools, write_config

ROOT = Path(__file__).resolve().parents[1]
SLOT1 = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)
SLOT2 = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)


def _agent(config: Path, slot: datetime, start_at: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from tests.fixtures.backup import slot_main; slot_main()",
         str(config), "backup", slot.isoformat(), str(start_at)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("OPSAGENT_")},
    )


def _race(config: Path, slot: datetime, n: int = 3) -> list[str]:
    start_at = time.time() + 2.0  # all three imported and waiting by then
    procs = [_agent(config, slot, start_at) for _ in range(n)]
    return sorted(p.communicate(timeout=120)[0].strip().splitlines()[-1] for p in procs)


def _wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_three_agents_take_exactly_one_backup_per_slot(tmp_path: Path, source_db: SourceDb) -> None:
    """Three agents racing for the same slot make one backup; the next slot makes exactly one more."""
    config = write_config(tmp_path, backup_config(tmp_path, dsn=source_db.dsn,
                                                  replica=f"file://{tmp_path / 'replica'}"))
    results = _race(config, SLOT1)
    assert results.count("ran") == 1, results
    assert set(results) <= {"ran", "busy", "done"}
    settings = load_config(config, env={})
    first = [m.id for m in primary_repository(settings).list()]
    assert len(first) == 1
    results = _race(config, SLOT2)
    assert results.count("ran") == 1, results
    last_run = json.loads(primary_repository(settings).get_state("last_run.json") or b"{}")
    assert last_run["slot"] == SLOT2.isoformat() and len(last_run["outcomes"]) == 1
    # Both backups fall in the same wall-clock hour, so hourly retention keeps only the second.
    assert [(d["id"], d["repository"]) for d in last_run["deleted"]] == [  # from the primary and from the replica
        (first[0], settings.backup.repository), (first[0], settings.backup.replica)]
    assert [m.id for m in primary_repository(settings).list()] == [last_run["outcomes"][0]["backup_id"]]


def test_file_only_fleet_uses_flock_and_runs_once(tmp_path: Path) -> None:
    """Without a reachable database the agents serialise on an flock beside the file repository."""
    dsn = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"
    config = write_config(tmp_path, backup_config(tmp_path, dsn=dsn))
    results = _race(config, SLOT1)
    assert results.count("ran") == 1, results
    assert (tmp_path / "primary" / ".opsagent-backup.lock").exists()


def test_killed_holder_does_not_block_next_slot_and_its_half_backup_vanishes(tmp_path: Path,
                                                                            source_db: SourceDb) -> None:
    """kill -9 of the agent mid-backup: the next slot runs, cleans the half-written backup, which is never listed."""
    slow = write_config(tmp_path, backup_config(tmp_path, dsn=source_db.dsn,
                                                pg_dump_path=slow_tools(tmp_path, dump_sleep=30)), "slow.yaml")
    holder = _agent(slow, SLOT1, time.time())
    backups = tmp_path / "primary" / "backups"

    def dumped() -> bool:
        return backups.is_dir() and any(p.stat().st_size > 0 for d in backups.iterdir() for p in d.iterdir())

    _wait_for(dumped)
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    half = [d.name for d in backups.iterdir()]
    settings = load_config(slow, env={})
    assert primary_repository(settings).list() == []  # objects without a manifest are not a backup
    normal = write_config(tmp_path, backup_config(tmp_path, dsn=source_db.dsn), "normal.yaml")
    results = _race(normal, SLOT2, n=2)
    assert results.count("ran") == 1, results
    listed = [m.id for m in primary_repository(settings).list()]
    assert len(listed) == 1 and listed[0] not in half
    assert not any((backups / h).exists() for h in half)
