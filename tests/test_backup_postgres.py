"""pg_dump backups end to end against a real private PostgreSQL: dump, replicate, retain, restore."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import boto3
import pytest

from opsagent import secrets
from opsagent.backup import pgdump, pgtools
from opsagent.backup.engine import BackupEngine, primary_repository, replica_repository
from opsagent.backup.errors import ToolTooOld
from opsagent_testing.aws import MotoServer
from opsagent_testing.servers import PostgresServer, closed_port
from tests.fixtures.backup import SourceDb, backup_settings, new_database, table_dump


def test_backup_restores_into_fresh_database_with_identical_contents(tmp_path: Path, source_db: SourceDb) -> None:
    """A backup restored into a fresh database gives exactly the same rows in every table."""
    settings = backup_settings(tmp_path, dsn=source_db.dsn, replica=f"file://{tmp_path / 'replica'}")
    report = BackupEngine(settings).run()
    assert report.ok, report.to_dict()
    outcome = report.outcomes[0]
    assert outcome.replica_ok is True
    repo = primary_repository(settings)
    manifest = repo.manifest(outcome.backup_id or "")
    assert manifest is not None
    target_db = new_database(source_db.server, "restored")
    result = pgdump.restore_stream(repo.read(manifest.id, "data.dump"), source_db.server.dsn(target_db))
    assert result.pg_restore_error is None and result.sha256 == manifest.objects[0].sha256
    assert table_dump(source_db.server, target_db) == table_dump(source_db.server, source_db.dbname)


def test_manifest_records_what_spec_requires(tmp_path: Path, source_db: SourceDb) -> None:
    """The manifest names kind, target, times, size, compression, per-object SHA-256, server and tool versions."""
    settings = backup_settings(tmp_path, dsn=source_db.dsn)
    report = BackupEngine(settings).run()
    manifest = primary_repository(settings).list()[0]
    assert (manifest.kind, manifest.target) == ("postgres", "main")
    assert manifest.started <= manifest.finished and manifest.size == manifest.objects[0].size > 0
    assert manifest.compression == "zstd" and manifest.dump_format == "custom" and len(manifest.objects[0].sha256) == 64
    assert manifest.server_version.startswith("15") and manifest.tool_version.startswith("pg_dump 15")
    assert manifest.tables["public.users"].rows == 3000
    assert manifest.tables["billing.invoices"].rows == 5000
    assert manifest.tables["public.empty_table"].rows == 0
    raw = (tmp_path / "primary" / "backups" / manifest.id / "manifest.json").read_text()
    assert '"started_at"' in raw and '"sha256"' in raw
    assert report.outcomes[0].replica_ok is None  # no replica configured


def test_stats_are_taken_in_the_dump_snapshot(private_pg: PostgresServer, tmp_path: Path) -> None:
    """Rows written while pg_dump runs are in neither the dump nor the recorded counts (one snapshot)."""
    from tests.fixtures.backup import make_source

    src = make_source(private_pg)
    repo = primary_repository(backup_settings(tmp_path, dsn=src.dsn))
    inserted = []

    def progress(_done: int) -> None:
        if not inserted:
            src.psql("INSERT INTO public.users VALUES (99999, 'late', 0, '{}')")
            inserted.append(True)

    manifest = pgdump.dump(src.dsn, "main", repo, progress=progress)
    assert inserted and manifest.tables["public.users"].rows == 3000
    restored = new_database(private_pg, "snap")
    pgdump.restore_stream(repo.read(manifest.id, "data.dump"), private_pg.dsn(restored))
    assert private_pg.psql("SELECT count(*) FROM public.users", restored) == "3000"


def _fake_old_pg_dump(tmp_path: Path) -> str:
    script = tmp_path / "pg_dump"
    script.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 12.18'\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_pg_dump_older_than_server_is_refused(tmp_path: Path, source_db: SourceDb) -> None:
    """An older pg_dump than the server's major version fails the backup with a clear message and no backup."""
    settings = backup_settings(tmp_path, dsn=source_db.dsn, pg_dump_path=_fake_old_pg_dump(tmp_path))
    report = BackupEngine(settings).run()
    assert not report.ok
    error = report.outcomes[0].error or ""
    assert "pg_dump 12.18 is older than the server's major version 15" in error
    assert "postgresql-client-15" in error
    assert primary_repository(settings).list() == []


def test_newest_tool_at_least_server_major_is_chosen() -> None:
    """Among installed pg_dump versions the newest usable one wins; none usable is a clear error."""
    tools = [pgtools.Tool("/a/13", "13.2", 13), pgtools.Tool("/a/16", "16.1", 16), pgtools.Tool("/a/15", "15.4", 15)]
    assert pgtools.choose(tools, 15, "pg_dump").path == "/a/16"
    with pytest.raises(ToolTooOld, match=r"pg_dump 16\.1 is older than the server's major version 17"):
        pgtools.choose(tools, 17, "pg_dump")


def test_unreachable_database_fails_without_leaking_password(tmp_path: Path) -> None:
    """A database that does not answer fails its backup with a reason that never shows the DSN password."""
    dsn = f"postgresql://app:hunter2secret@127.0.0.1:{closed_port()}/app"
    secrets.register([dsn])
    settings = backup_settings(tmp_path, dsn=dsn)
    report = BackupEngine(settings).run()
    assert not report.ok and report.outcomes[0].error
    assert "hunter2secret" not in str(report.to_dict())
    assert primary_repository(settings).list() == []


def test_retention_runs_in_both_repositories_and_keeps_newest(tmp_path: Path, source_db: SourceDb) -> None:
    """With hourly 1 and nothing else, a second run in the same hour expires the first backup in both places."""
    settings = backup_settings(tmp_path, dsn=source_db.dsn, replica=f"file://{tmp_path / 'replica'}",
                               retention={"hourly": 1, "daily": 0, "weekly": 0})
    first = BackupEngine(settings).run(None, "schedule")
    second = BackupEngine(settings).run(None, "schedule")
    assert first.ok and second.ok
    newest = second.outcomes[0].backup_id
    assert [m.id for m in primary_repository(settings).list()] == [newest]
    replica = replica_repository(settings)
    assert replica is not None and [m.id for m in replica.list()] == [newest]
    assert [(d.id, d.repository) for d in second.deleted] == [
        (first.outcomes[0].backup_id, settings.backup.repository), (first.outcomes[0].backup_id, settings.backup.replica)]


def test_s3_backup_replicates_to_second_region(tmp_path: Path, source_db: SourceDb, aws: MotoServer) -> None:
    """With S3 repositories in two regions, a run backs up, copies with the DR key and lists in both."""
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="acme-backups")
    boto3.client("s3", region_name="eu-west-1").create_bucket(
        Bucket="acme-backups-dr", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    dr_key = boto3.client("kms", region_name="eu-west-1").create_key()["KeyMetadata"]["KeyId"]
    settings = backup_settings(tmp_path, dsn=source_db.dsn, repository="s3://acme-backups/prod",
                               replica="s3://acme-backups-dr/prod", replica_region="eu-west-1",
                               replica_kms_key_id=dr_key)
    report = BackupEngine(settings).run()
    assert report.ok, report.to_dict()
    replica = replica_repository(settings)
    assert replica is not None
    copies = replica.list()
    assert [m.id for m in copies] == [report.outcomes[0].backup_id]
    assert copies[0].region == "eu-west-1" and copies[0].replicated_at is not None
    restored = new_database(source_db.server, "from_s3")
    result = pgdump.restore_stream(replica.read(copies[0].id, "data.dump"), source_db.server.dsn(restored))
    assert result.pg_restore_error is None
    assert table_dump(source_db.server, restored) == table_dump(source_db.server, source_db.dbname)
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1")


def test_failed_replication_is_reported_and_caught_up_next_run(tmp_path: Path, source_db: SourceDb) -> None:
    """A replica that cannot be written fails the run; once it is back, the next run copies the missed backup too."""
    blocker = tmp_path / "dr"
    blocker.write_text("not a directory")  # the replica path is unusable
    settings = backup_settings(tmp_path, dsn=source_db.dsn, replica=f"file://{blocker / 'replica'}")
    now = [1_800_000_000.0]
    first = BackupEngine(settings, clock=lambda: now[0]).run()
    assert not first.ok and first.outcomes[0].ok and first.outcomes[0].replica_ok is False
    assert first.outcomes[0].replica_error
    blocker.unlink()
    now[0] += 7200
    second = BackupEngine(settings, clock=lambda: now[0]).run()
    assert second.ok, second.to_dict()
    replica = replica_repository(settings)
    assert replica is not None
    assert {m.id for m in replica.list()} == {first.outcomes[0].backup_id, second.outcomes[0].backup_id}


def test_dump_memory_stays_flat_as_the_database_grows(private_pg: PostgresServer, tmp_path: Path) -> None:
    """Backing up a database whose dump is many MiB holds about one chunk in memory, not the dump."""
    import tracemalloc

    big = new_database(private_pg, "big")
    private_pg.psql("CREATE TABLE blob AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) "
                    "|| md5((g * 31)::text) AS v FROM generate_series(1, 150000) g", big)
    repo = primary_repository(backup_settings(tmp_path, dsn=private_pg.dsn(big)))
    tracemalloc.start()
    try:
        manifest = pgdump.dump(private_pg.dsn(big), "big", repo)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert manifest.size > 8 * 2**20, manifest.size
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB for a {manifest.size / 2**20:.1f} MiB dump"



def test_repository_refusing_the_upload_fails_cleanly(tmp_path: Path, source_db: SourceDb) -> None:
    """A repository that cannot take the object fails the backup with its reason and leaves no pg_dump behind."""
    import psutil

    settings = backup_settings(tmp_path, dsn=source_db.dsn)
    (tmp_path / "primary").mkdir()
    (tmp_path / "primary" / "backups").write_text("a file where the backups directory should be")
    report = BackupEngine(settings).run()
    assert not report.ok and report.outcomes[0].error
    assert "backups" in report.outcomes[0].error
    children = [p for p in psutil.Process().children(recursive=True) if "pg_dump" in " ".join(p.cmdline())]
    assert children == []


def test_a_hand_taken_backup_survives_retention_within_manual_keep(tmp_path: Path, source_db: SourceDb) -> None:
    """Two `backup run`s in one hour under hourly 1 keep both copies; a scheduled run then may expire neither."""
    settings = backup_settings(tmp_path, dsn=source_db.dsn, replica=f"file://{tmp_path / 'replica'}",
                               retention={"hourly": 1, "daily": 0, "weekly": 0})
    first = BackupEngine(settings).run(None, "manual")
    second = BackupEngine(settings).run(None, "manual")
    third = BackupEngine(settings).run(None, "schedule")
    assert first.ok and second.ok and third.ok
    assert second.deleted == [] and third.deleted == []
    kept = {m.id for m in primary_repository(settings).list()}
    assert {first.outcomes[0].backup_id, second.outcomes[0].backup_id} <= kept
