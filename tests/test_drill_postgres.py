"""Restore drills into scratch databases on a private PostgreSQL: pass, damaged backup, RTO, kill -9 leftovers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from opsagent.backup.drill import SCRATCH_PREFIX, Drill
from opsagent.backup.engine import BackupEngine, replica_repository
from opsagent.backup.service import BackupService
from opsagent.config import load_config
from opsagent.runtime.results import ResultStore
from opsagent_testing.servers import PostgresServer
from tests.fixtures.backup import (
    SourceDb,
    backup_config,
    backup_settings,
    slow_tools,
    write_config,
)

ROOT = Path(__file__).resolve().parents[1]


def _scratch_dbs(server: PostgresServer) -> list[str]:
    out = server.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{SCRATCH_PREFIX}%'")
    return out.split()


def _backed_up(tmp_path: Path, source_db: SourceDb, **kw: object):  # type: ignore[no-untyped-def]
    settings = backup_settings(tmp_path, dsn=source_db.dsn, replica=f"file://{tmp_path / 'replica'}",
                               drill_dsn=source_db.server.dsn("postgres"), **kw)
    report = BackupEngine(settings).run()
    assert report.ok, report.to_dict()
    return settings, report.outcomes[0].backup_id


def test_drill_restores_newest_replica_backup_verifies_and_drops_scratch(tmp_path: Path, source_db: SourceDb) -> None:
    """A drill restores the newest replica copy, matches every table's rows and checksum, and leaves nothing behind."""
    settings, backup_id = _backed_up(tmp_path, source_db)
    [report] = Drill(settings).run()
    assert report.ok and not report.failed, report.error
    assert report.backup_id == backup_id and report.source == settings.backup.replica
    assert report.tables == 3 and report.scratch_database.startswith(SCRATCH_PREFIX)
    assert 0 < report.duration_seconds < report.rto_seconds
    assert _scratch_dbs(source_db.server) == []


def test_corrupted_replica_object_fails_drill_with_clear_reason(tmp_path: Path, source_db: SourceDb) -> None:
    """A replica object damaged after replication fails the drill, naming the damaged backup; scratch is dropped."""
    settings, backup_id = _backed_up(tmp_path, source_db)
    obj = tmp_path / "replica" / "backups" / backup_id / "data.dump"
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.write_bytes(bytes(data))
    [report] = Drill(settings).run()
    assert not report.ok
    assert f"backup {backup_id} is damaged" in (report.error or "")
    assert "manifest recorded" in (report.error or "")
    assert _scratch_dbs(source_db.server) == []


def test_drill_slower_than_rto_fails_and_is_reported(tmp_path: Path, source_db: SourceDb) -> None:
    """A drill that restores correctly but takes longer than the RTO counts as failed, with both times shown."""
    settings, _ = _backed_up(tmp_path, source_db, rto="1ms")
    store = ResultStore()
    service = BackupService(settings, store)
    service._run_drill()
    service.refresh()
    result = store.get("drill", "main")
    assert result is not None and result.value == 1.0
    assert "longer than the RTO" in result.details["error"]
    registry = CollectorRegistry()

    class Adapter:
        def collect(self):  # type: ignore[no-untyped-def]
            return service.collect()

    registry.register(Adapter())  # type: ignore[arg-type]
    assert registry.get_sample_value("opsagent_drill_last_success", {"target": "main"}) == 0.0
    assert registry.get_sample_value("opsagent_drill_last_duration_seconds", {"target": "main"}) > 0.001
    drill = service.status()["last_drill"]
    assert drill["passed"] is False and drill["rto_target_seconds"] == 0.001 and drill["rto_achieved_seconds"] > 0.001


def test_passing_drill_sets_metrics_and_status(tmp_path: Path, source_db: SourceDb) -> None:
    """A passing drill shows its duration, success timestamp and RTO achieved next to the target."""
    settings, _ = _backed_up(tmp_path, source_db)
    store = ResultStore()
    service = BackupService(settings, store)
    service._run_drill()
    service.refresh()
    assert store.get("drill", "main").value == 0.0
    registry = CollectorRegistry()

    class Adapter:
        def collect(self):  # type: ignore[no-untyped-def]
            return service.collect()

    registry.register(Adapter())  # type: ignore[arg-type]
    assert registry.get_sample_value("opsagent_drill_last_success", {"target": "main"}) == 1.0
    assert registry.get_sample_value("opsagent_drill_last_success_timestamp_seconds", {"target": "main"}) > 0
    status = service.status()
    assert status["last_drill"]["passed"] and status["rto_achieved_seconds"] < status["rto_target_seconds"]


def test_drill_killed_mid_restore_leaves_nothing_after_next_drill(tmp_path: Path, source_db: SourceDb) -> None:
    """kill -9 during a drill leaves a scratch database; the next drill drops it and passes."""
    settings, _ = _backed_up(tmp_path, source_db)
    config = backup_config(tmp_path, dsn=source_db.dsn, replica=f"file://{tmp_path / 'replica'}",
                           drill_dsn=source_db.server.dsn("postgres"),
                           pg_dump_path=slow_tools(tmp_path, restore_sleep=30))
    path = write_config(tmp_path, config, "slow.yaml")
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from opsagent.config import load_config; from opsagent.backup.drill import Drill; "
         "Drill(load_config(sys.argv[1], env={})).run()", str(path)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while not _scratch_dbs(source_db.server):
        assert time.monotonic() < deadline and proc.poll() is None, "drill never created its scratch database"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    leftover = _scratch_dbs(source_db.server)
    assert len(leftover) == 1
    [report] = Drill(load_config(write_config(tmp_path, backup_config(
        tmp_path, dsn=source_db.dsn, replica=f"file://{tmp_path / 'replica'}",
        drill_dsn=source_db.server.dsn("postgres")), "normal.yaml"), env={})).run()
    assert report.ok, report.error
    assert _scratch_dbs(source_db.server) == []
    assert replica_repository(settings) is not None


def test_drill_without_drill_dsn_says_what_to_set(tmp_path: Path, source_db: SourceDb) -> None:
    """Asking for a drill with no drill_dsn fails with a message naming backup.drill_dsn."""
    settings = backup_settings(tmp_path, dsn=source_db.dsn)
    [report] = Drill(settings).run()
    assert not report.ok and "backup.drill_dsn" in (report.error or "")


def test_drill_dsn_on_a_target_server_is_a_config_error_unless_allowed(tmp_path: Path) -> None:
    """`drill_dsn` on the server of a configured target exits 2 naming the key, unless drill_on_target_server."""
    config = backup_config(tmp_path, dsn="postgresql://app@db.internal:5432/app",
                           drill_dsn="postgresql://admin@db.internal:5432/postgres", drill_on_target_server=False)
    path = write_config(tmp_path, config)
    proc = subprocess.run([sys.executable, "-m", "opsagent", "config", "validate", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "backup.drill_dsn" in proc.stderr and "drill_on_target_server" in proc.stderr
    config["backup"]["drill_on_target_server"] = True
    path = write_config(tmp_path, config)
    proc = subprocess.run([sys.executable, "-m", "opsagent", "config", "validate", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_drill_on_a_target_server_spelled_differently_is_refused_at_run_time(
        tmp_path: Path, source_db: SourceDb) -> None:
    """A drill_dsn naming the target's server by the host's own name (same system_identifier) fails the drill."""
    import socket

    import pytest

    from opsagent.config import Settings

    host = os.uname().nodename
    if socket.gethostbyname(host) != "127.0.0.1":
        pytest.skip("the host's name does not resolve to 127.0.0.1 here")
    config = backup_config(tmp_path, dsn=source_db.dsn, replica=f"file://{tmp_path / 'replica'}")
    config["backup"].update(drill_dsn=f"postgresql://{source_db.server.user}@{host}:{source_db.server.port}/postgres",
                            drill_on_target_server=False)
    settings = Settings(**config)  # the config check compares spellings; this one it cannot see through
    assert BackupEngine(settings).run().ok
    [report] = Drill(settings).run()
    assert not report.ok and "drill_on_target_server" in (report.error or "")
    assert _scratch_dbs(source_db.server) == []
