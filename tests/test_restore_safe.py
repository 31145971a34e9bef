"""`opsagent restore` as a DR auditor checks it: copy fallback, `latest`, all-or-nothing, the production guard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opsagent.backup import commands
from opsagent.config import Settings
from tests.fixtures.backup import SourceDb, backup_config, backup_settings, new_database, slow_tools, write_config

FINGERPRINT = ("SELECT count(*) || ':' || md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) "
               "FROM {table} t")


def fingerprint(db: SourceDb, dbname: str) -> dict[str, str]:
    """Row count and md5 of the ordered rows of each table: equal means the same data."""
    return {table: db.server.psql(FINGERPRINT.format(table=table), dbname).strip()
            for table in ("public.users", "billing.invoices")}


def databases(db: SourceDb, like: str) -> list[str]:
    return db.server.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{like}' ORDER BY 1").split()


@pytest.fixture(autouse=True)
def _logs_to_stderr() -> None:
    """As the CLI does: logs on stderr, so stdout holds only the command's output."""
    from opsagent.telemetry import logging as agent_logging

    agent_logging.configure("info")


@pytest.fixture
def settings(tmp_path: Path, source_db: SourceDb) -> Settings:
    return backup_settings(tmp_path, dsn=source_db.dsn, replica=f"file://{tmp_path / 'replica'}")


def _backup(settings: Settings, capsys: pytest.CaptureFixture[str]) -> str:
    assert commands.backup_run(settings, json_out=True) == 0
    return str(json.loads(capsys.readouterr().out)["outcomes"][0]["backup_id"])


def _damage(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])


def test_damaged_primary_falls_back_to_the_intact_replica_and_says_so(
        settings: Settings, source_db: SourceDb, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With the primary copy damaged, restore reads the replica copy, says so, and the data equals the source."""
    backup_id = _backup(settings, capsys)
    _damage(tmp_path / "primary" / "backups" / backup_id / "data.dump")
    target = f"fallback_{source_db.server.port}_{os.getpid()}"  # does not exist: restore creates it
    assert commands.restore(settings, backup_id, source_db.server.dsn(target), force=False) == 0
    captured = capsys.readouterr()
    assert "from the replica copy" in captured.out and "fell back" in captured.out
    assert "primary copy" in captured.err and "damaged" in captured.err
    assert fingerprint(source_db, target) == fingerprint(source_db, source_db.dbname)
    assert databases(source_db, "opsagent_restore_%") == []


def test_from_primary_with_a_damaged_primary_fails_and_leaves_no_database(
        settings: Settings, source_db: SourceDb, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--from primary` never falls back: a damaged primary copy exits 1, and neither target nor scratch exists."""
    backup_id = _backup(settings, capsys)
    _damage(tmp_path / "primary" / "backups" / backup_id / "data.dump")
    target = f"noprimary_{source_db.server.port}_{os.getpid()}"
    assert commands.restore(settings, backup_id, source_db.server.dsn(target), force=False, source="primary") == 1
    assert "damaged" in capsys.readouterr().err
    assert databases(source_db, target) == [] and databases(source_db, "opsagent_restore_%") == []


def test_latest_restores_and_verifies_the_newest_backup(
        settings: Settings, source_db: SourceDb, capsys: pytest.CaptureFixture[str]) -> None:
    """`latest` names the newest complete backup, for restore and for `backup verify`."""
    _backup(settings, capsys)
    newest = _backup(settings, capsys)
    assert commands.backup_verify(settings, "latest") == 0
    assert capsys.readouterr().out.count("intact") == 2
    target = new_database(source_db.server, "latest")
    assert commands.restore(settings, "latest", source_db.server.dsn(target), force=False) == 0
    assert newest in capsys.readouterr().out
    assert fingerprint(source_db, target) == fingerprint(source_db, source_db.dbname)


def test_unknown_id_exits_2_and_touches_nothing(settings: Settings, source_db: SourceDb,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """An id that is not there exits 2 with one line naming it; no database is created."""
    target = f"unknown_{source_db.server.port}_{os.getpid()}"
    assert commands.restore(settings, "postgres-main-20200101T000000Z-000000", source_db.server.dsn(target),
                            force=False) == 2
    err = capsys.readouterr().err
    assert "no complete backup with id" in err and "Traceback" not in err
    assert databases(source_db, target) == []


def test_a_database_that_holds_tables_is_replaced_only_with_force(
        settings: Settings, source_db: SourceDb, capsys: pytest.CaptureFixture[str]) -> None:
    """Restoring over a non-empty database is refused; with --force it is replaced by the restored copy."""
    backup_id = _backup(settings, capsys)
    target = new_database(source_db.server, "occupied")
    source_db.server.psql("CREATE TABLE keepme (x int); INSERT INTO keepme VALUES (1)", target)
    assert commands.restore(settings, backup_id, source_db.server.dsn(target), force=False) == 1
    assert "already holds 1 table" in capsys.readouterr().err
    assert source_db.server.psql("SELECT count(*) FROM keepme", target).strip() == "1"
    assert commands.restore(settings, backup_id, source_db.server.dsn(target), force=True) == 0
    assert fingerprint(source_db, target) == fingerprint(source_db, source_db.dbname)


def test_jobs_stages_the_archive_and_restores_in_parallel(
        settings: Settings, source_db: SourceDb, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--jobs 2` stages the archive in --stage-dir, restores the same data, and removes the staged file."""
    backup_id = _backup(settings, capsys)
    stage = tmp_path / "stage"
    stage.mkdir()
    target = f"jobs_{source_db.server.port}_{os.getpid()}"
    assert commands.restore(settings, backup_id, source_db.server.dsn(target), force=False, jobs=2,
                            stage_dir=str(stage)) == 0
    assert fingerprint(source_db, target) == fingerprint(source_db, source_db.dbname)
    assert list(stage.iterdir()) == []


@pytest.mark.parametrize("spelling", ["hostaddr", "keyword", "hostname"])
def test_the_production_guard_compares_servers_not_dsn_strings(
        settings: Settings, source_db: SourceDb, spelling: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A DSN spelled differently (hostaddr=, keyword form, the host's name) for the configured database is refused."""
    backup_id = _backup(settings, capsys)
    port, db = source_db.server.port, source_db.dbname
    user = source_db.server.user
    dsn = {
        "hostaddr": f"postgresql://{user}@decoy.invalid:{port}/{db}?hostaddr=127.0.0.1",
        "keyword": f"host=127.0.0.1 port={port} dbname={db} user={user} application_name=other",
        "hostname": f"postgresql://{user}@{os.uname().nodename}:{port}/{db}",
    }[spelling]
    if spelling == "hostname":
        import socket

        try:
            if socket.gethostbyname(os.uname().nodename) != "127.0.0.1":
                dsn = f"postgresql://{user}@localhost:{port}/{db}"
        except OSError:
            dsn = f"postgresql://{user}@localhost:{port}/{db}"
    before = fingerprint(source_db, db)
    assert commands.restore(settings, backup_id, dsn, force=False) == 1
    assert "is a configured target" in capsys.readouterr().err
    assert fingerprint(source_db, db) == before


def test_kill_9_mid_restore_leaves_no_database_behind(tmp_path: Path, source_db: SourceDb,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A restore killed with SIGKILL while pg_restore runs leaves neither the target nor a scratch database."""
    config = backup_config(tmp_path, dsn=source_db.dsn)
    settings = Settings(**config)
    backup_id = _backup(settings, capsys)
    config["backup"]["pg_dump_path"] = slow_tools(tmp_path, restore_sleep=60)
    path = write_config(tmp_path, config)
    target = f"killed_{source_db.server.port}_{os.getpid()}"
    proc = subprocess.Popen([sys.executable, "-m", "opsagent", "restore", backup_id, "--target",
                             source_db.server.dsn(target), "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not databases(source_db, "opsagent_restore_%"):
            assert proc.poll() is None, "the restore ended before it could be killed"
            assert time.monotonic() < deadline, "no scratch database appeared: test is void"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 30
        while databases(source_db, "opsagent_restore_%") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert databases(source_db, "opsagent_restore_%") == []
        assert databases(source_db, target) == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_missing_primary_object_also_falls_back_to_the_replica(
        settings: Settings, source_db: SourceDb, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With the primary copy's object gone (its manifest still there), restore uses the replica copy."""
    backup_id = _backup(settings, capsys)
    (tmp_path / "primary" / "backups" / backup_id / "data.dump").unlink()
    target = f"missing_{source_db.server.port}_{os.getpid()}"
    assert commands.restore(settings, backup_id, source_db.server.dsn(target), force=False) == 0
    captured = capsys.readouterr()
    assert "from the replica copy" in captured.out and "missing" in captured.err
    assert fingerprint(source_db, target) == fingerprint(source_db, source_db.dbname)


def test_a_damaged_manifest_is_damage_not_an_unknown_id(
        settings: Settings, source_db: SourceDb, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A primary manifest that is not JSON makes verify exit 1 naming it, and restore falls back to the replica."""
    backup_id = _backup(settings, capsys)
    (tmp_path / "primary" / "backups" / backup_id / "manifest.json").write_text("{not json")
    assert commands.backup_verify(settings, backup_id) == 1
    out = capsys.readouterr().out
    assert "primary" in out and "invalid manifest: not JSON" in out and "replica" in out and "intact" in out
    target = f"badmanifest_{source_db.server.port}_{os.getpid()}"
    assert commands.restore(settings, backup_id, source_db.server.dsn(target), force=False) == 0
    assert "from the replica copy" in capsys.readouterr().out
