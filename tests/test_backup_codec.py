"""Backup compression and parallel dumps (issue 22): every method restores bit-exact, old backups still restore,
damage is named, and the directory format streams file by file."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import boto3
import pytest

from opsagent.backup import codec, pgdir, pgdump, pgtools
from opsagent.backup.drill import Drill
from opsagent.backup.engine import BackupEngine, primary_repository, replica_repository
from opsagent.backup.manifest import Manifest, ObjectInfo, new_id
from opsagent.backup.repository import Repository
from opsagent.config import ConfigError, load_config
from opsagent_testing.aws import MotoServer
from tests.fixtures.backup import SourceDb, backup_config, backup_settings, new_database

# -- the codecs alone ----------------------------------------------------------------------------

SAMPLE = os.urandom(300_000) + b"row of text, 12345, 2026-01-01\n" * 60_000


def _compress(method: str, data: bytes) -> bytes:
    squeeze = codec.compressor(method)
    return b"".join(squeeze.compress(data[i:i + 100_000]) for i in range(0, len(data), 100_000)) + squeeze.flush()


@pytest.mark.parametrize("method", codec.METHODS)
def test_every_method_streams_back_the_same_bytes(method: str) -> None:
    """Each compression method gives back exactly the bytes it was fed, read in arbitrary chunks."""
    stored = _compress(method, SAMPLE)
    if method != "none":
        assert len(stored) < len(SAMPLE) * 0.8
    chunks = [stored[i:i + 7777] for i in range(0, len(stored), 7777)]
    assert b"".join(codec.decompress(method, chunks)) == SAMPLE


@pytest.mark.parametrize("method", codec.METHODS)
def test_a_block_flush_makes_everything_read_so_far_decodable(method: str) -> None:
    """After flush_block the stored bytes decode to all input so far, and the stream then continues intact."""
    squeeze = codec.compressor(method)
    head = squeeze.compress(SAMPLE[:500_000]) + squeeze.flush_block()
    decoder = codec.decompress(method, [head])
    got = b""
    with pytest.raises(codec.CorruptStream, match="ends before its last frame") if method != "none" else nullcontext():
        for piece in decoder:
            got += piece
    assert got == SAMPLE[:500_000]
    rest = squeeze.compress(SAMPLE[500_000:]) + squeeze.flush()
    assert b"".join(codec.decompress(method, [head, rest])) == SAMPLE


@pytest.mark.parametrize("method", [m for m in codec.METHODS if m != "none"])
@pytest.mark.parametrize("damage", ["truncated", "flipped", "trailing"])
def test_a_damaged_stream_is_a_clear_error(method: str, damage: str) -> None:
    """A truncated, bit-flipped or over-long stream raises CorruptStream naming the method, never short output."""
    stored = bytearray(_compress(method, SAMPLE))
    if damage == "truncated":
        stored = stored[:-20]
    elif damage == "flipped":
        stored[len(stored) // 2] ^= 0x40
    else:
        stored += b"\x00junk"
    with pytest.raises(codec.CorruptStream, match=f"the {method} stream is damaged or truncated"):
        b"".join(codec.decompress(method, [bytes(stored)]))


def test_pg_dump_16_compresses_itself_only_where_that_is_faster() -> None:
    """Below two CPUs a 16+ pg_dump compresses itself; with spare CPUs, or a pg_dump 15, the agent does."""
    native = pgdump.plan(16, "zstd", threads=0)
    assert (native.pg_dump_arg, native.codec, native.method, native.by) == ("--compress=zstd:3", "none", "zstd",
                                                                             "pg_dump")
    assert pgdump.plan(17, "lz4", 5, threads=0).pg_dump_arg == "--compress=lz4:5"
    assert pgdump.plan(15, "zstd", threads=0) == pgdump.CompressionPlan("--compress=0", "zstd", "zstd", 3, "agent")
    assert pgdump.plan(15, "gzip", threads=0).by == "agent"  # the version check: 15 has no --compress=METHOD
    assert pgdump.plan(16, "zstd", 9, threads=2) == pgdump.CompressionPlan("--compress=0", "zstd", "zstd", 9, "agent")
    assert pgdump.plan(16, "none", threads=0).pg_dump_arg == "--compress=0"


def test_bad_compression_settings_name_the_key(tmp_path: Path) -> None:
    """An unknown method, a level outside the method's range or jobs below 1 are config errors naming the key."""
    path = tmp_path / "c.yaml"
    path.write_text("backup: {compression: brotli, jobs: 0}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert any(p.startswith("backup.compression:") for p in err.value.problems)
    assert any(p.startswith("backup.jobs:") for p in err.value.problems)
    path.write_text("backup: {compression: gzip, compression_level: 12}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert err.value.problems == ["backup.compression_level: 12 is out of range for gzip; expected 1–9"]


# -- backups against the private PostgreSQL ------------------------------------------------------


def fingerprint(db: SourceDb | tuple[SourceDb, str]) -> dict[str, str]:
    """Row count and md5 of the ordered rows of every user table: equal means bit-exact contents."""
    src, name = (db, db.dbname) if isinstance(db, SourceDb) else db
    tables = src.server.psql(
        "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1", name).split()
    return {t: src.server.psql(f"SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') "
                               f"FROM {t} t", name) for t in tables}


def _backup(tmp_path: Path, source_db: SourceDb, **backup: object) -> tuple[Repository, Manifest]:
    settings = backup_settings(tmp_path, dsn=source_db.dsn, **backup)
    report = BackupEngine(settings).run()
    assert report.ok, report.to_dict()
    repo = primary_repository(settings)
    manifest = repo.manifest(report.outcomes[0].backup_id or "")
    assert manifest is not None
    return repo, manifest


@pytest.mark.parametrize("method", codec.METHODS)
def test_backups_in_every_compression_restore_bit_exact(tmp_path: Path, source_db: SourceDb, method: str) -> None:
    """A backup taken with each backup.compression restores into a fresh database with identical rows."""
    repo, manifest = _backup(tmp_path, source_db, compression=method)
    assert (manifest.compression, manifest.compressed_by, manifest.dump_format) == (method, "agent", "custom")
    assert manifest.compression_level == codec.DEFAULT_LEVEL[method]
    head = next(repo.read(manifest.id, pgdump.OBJECT))
    assert pgdump.sniff(head) == method and (method != "none" or head.startswith(b"PGDMP"))
    restored = new_database(source_db.server, "restored")
    result = pgdump.restore_backup(repo, manifest, source_db.server.dsn(restored))
    assert result.pg_restore_error is None and result.sha256 == manifest.objects[0].sha256
    assert fingerprint((source_db, restored)) == fingerprint(source_db)


def test_zstd_is_smaller_than_uncompressed(tmp_path: Path, source_db: SourceDb) -> None:
    """The default (zstd) stores far fewer bytes than the uncompressed archive of the same database."""
    _, plain = _backup(tmp_path / "plain", source_db, compression="none")
    _, zstd = _backup(tmp_path / "zstd", source_db, compression="zstd", compression_level=5)
    assert zstd.size < plain.size * 0.6 and zstd.compression_level == 5


@pytest.mark.parametrize("jobs", [1, 2])
def test_pg_dump_compressing_itself_restores(tmp_path: Path, source_db: SourceDb, monkeypatch: pytest.MonkeyPatch,
                                             jobs: int) -> None:
    """A backup pg_dump compressed itself says so in its manifest and restores bit-exact (plain or parallel)."""
    # What plan() gives a 16+ pg_dump below two CPUs, spelled the way pg_dump 15 (installed here) takes gzip.
    monkeypatch.setattr(pgdump, "plan", lambda *_a, **_k: pgdump.CompressionPlan("--compress=6", "none", "gzip", 6,
                                                                                 "pg_dump"))
    repo, manifest = _backup(tmp_path, source_db, compression="gzip", jobs=jobs)
    assert (manifest.compression, manifest.compressed_by) == ("gzip", "pg_dump")
    assert pgdump.stream_codec(manifest) == "none"
    if jobs == 1:
        assert next(repo.read(manifest.id, pgdump.OBJECT)).startswith(b"PGDMP")  # an archive, not a gzip stream
    restored = new_database(source_db.server, "native")
    assert pgdump.restore_backup(repo, manifest, source_db.server.dsn(restored), jobs=jobs).pg_restore_error is None
    assert fingerprint((source_db, restored)) == fingerprint(source_db)


def _write_release1_backup(tmp_path: Path, source_db: SourceDb) -> tuple[Path, str]:
    """A backup exactly as release 1 wrote it: pg_dump's own gzip, a manifest without the new fields."""
    root = tmp_path / "primary"
    backup_id = new_id("postgres", "main", 1_700_000_000)
    folder = root / "backups" / backup_id
    folder.mkdir(parents=True)
    with pgtools.tool_environment(source_db.dsn) as (env, conninfo):
        subprocess.run(["pg_dump", "--format=custom", "--compress=6", "--no-password", f"--dbname={conninfo}",
                        f"--file={folder / 'data.dump'}"], env=env, check=True)
    data = (folder / "data.dump").read_bytes()
    obj = ObjectInfo(name="data.dump", size=len(data), sha256=hashlib.sha256(data).hexdigest())
    doc = {"format": 1, "id": backup_id, "kind": "postgres", "target": "main", "started": 1_700_000_000.0,
           "finished": 1_700_000_010.0, "size": obj.size, "compression": pgdump.COMPRESSION,
           "objects": [obj.__dict__], "server_version": "15", "tool_version": "pg_dump 15", "agent_version": "0.1.0",
           "tables": {}, "verified": True, "replicated_at": None, "region": None}
    (folder / "manifest.json").write_text(json.dumps(doc))
    return root, backup_id


def test_release1_backups_still_restore(tmp_path: Path, source_db: SourceDb) -> None:
    """A release-1 backup (pg_dump's gzip, old manifest) restores bit-exact through `opsagent restore`."""
    _, backup_id = _write_release1_backup(tmp_path, source_db)
    config = tmp_path / "agent.yaml"
    config.write_text(json.dumps(backup_config(tmp_path)))
    restored = new_database(source_db.server, "old")
    proc = subprocess.run([sys.executable, "-m", "opsagent", "--config", str(config), "restore", backup_id,
                           "--target", source_db.server.dsn(restored)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert fingerprint((source_db, restored)) == fingerprint(source_db)


def test_a_compressed_stream_damaged_before_hashing_is_named(tmp_path: Path, source_db: SourceDb) -> None:
    """A zstd object whose checksum matches but whose stream is cut off fails with the codec's reason."""
    repo, manifest = _backup(tmp_path, source_db, compression="zstd")
    path = tmp_path / "primary" / "backups" / manifest.id / pgdump.OBJECT
    cut = path.read_bytes()[:-40]
    path.write_bytes(cut)
    damaged = Manifest.from_json(manifest.to_json())
    object.__setattr__(damaged, "objects", (ObjectInfo(pgdump.OBJECT, len(cut), hashlib.sha256(cut).hexdigest()),))
    restored = new_database(source_db.server, "cut")
    result = pgdump.restore_backup(repo, damaged, source_db.server.dsn(restored))
    assert result.sha256 == damaged.objects[0].sha256
    assert result.pg_restore_error == "the zstd stream is damaged or truncated (the stream ends before its last frame)"


def test_a_damaged_object_fails_restore_with_a_clear_message(tmp_path: Path, source_db: SourceDb) -> None:
    """`opsagent restore` of a zstd backup whose stored bytes changed says it is damaged, exit 1, no traceback."""
    settings = backup_config(tmp_path, dsn=source_db.dsn, compression="zstd")
    config = tmp_path / "agent.yaml"
    config.write_text(json.dumps(settings))
    _, manifest = _backup(tmp_path, source_db, compression="zstd")
    path = tmp_path / "primary" / "backups" / manifest.id / pgdump.OBJECT
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    restored = new_database(source_db.server, "flip")
    proc = subprocess.run([sys.executable, "-m", "opsagent", "--config", str(config), "restore", manifest.id,
                           "--target", source_db.server.dsn(restored)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "is damaged" in proc.stderr and "Traceback" not in proc.stderr


# -- parallel dumps (-Fd -j N) -------------------------------------------------------------------


def test_parallel_dump_lists_every_file_and_restores_with_jobs(tmp_path: Path, source_db: SourceDb) -> None:
    """backup.jobs: 2 stores one checksummed object per pg_dump file, and pg_restore -j 2 restores it bit-exact."""
    repo, manifest = _backup(tmp_path, source_db, jobs=2)
    assert manifest.dump_format == "directory" and manifest.compression == "zstd"
    names = {o.name for o in manifest.objects}
    assert "dump-toc.dat" in names and len(names) >= 3  # the TOC plus one file per non-empty table
    folder = tmp_path / "primary" / "backups" / manifest.id
    for obj in manifest.objects:
        assert hashlib.sha256((folder / obj.name).read_bytes()).hexdigest() == obj.sha256
    assert manifest.size == sum(o.size for o in manifest.objects)
    assert pgdump.verify_object(repo, manifest) == []
    restored = new_database(source_db.server, "parallel")
    result = pgdump.restore_backup(repo, manifest, source_db.server.dsn(restored), jobs=2)
    assert result.pg_restore_error is None and result.sha256 == manifest.objects[0].sha256
    assert fingerprint((source_db, restored)) == fingerprint(source_db)


def test_parallel_dump_under_a_tiny_staging_limit_still_completes(tmp_path: Path, source_db: SourceDb,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """When staged files exceed the limit pg_dump is paused, not failed: the backup completes and restores."""
    monkeypatch.setattr(pgdir, "STAGING_LIMIT", 1)
    repo, manifest = _backup(tmp_path, source_db, jobs=2, compression="lz4")
    restored = new_database(source_db.server, "tiny")
    assert pgdump.restore_backup(repo, manifest, source_db.server.dsn(restored), jobs=2).pg_restore_error is None
    assert fingerprint((source_db, restored)) == fingerprint(source_db)


def test_custom_archive_restores_from_a_staged_copy_with_jobs(tmp_path: Path, source_db: SourceDb) -> None:
    """A single-archive gzip backup restored with jobs 2 is staged, then pg_restore -j 2 gives identical rows."""
    repo, manifest = _backup(tmp_path, source_db, compression="gzip")
    restored = new_database(source_db.server, "staged")
    result = pgdump.restore_backup(repo, manifest, source_db.server.dsn(restored), jobs=2)
    assert result.pg_restore_error is None and result.sha256 == manifest.objects[0].sha256
    assert fingerprint((source_db, restored)) == fingerprint(source_db)


def test_a_damaged_table_file_is_found_before_anything_is_restored(tmp_path: Path, source_db: SourceDb) -> None:
    """One damaged file of a directory backup names itself and the target database stays empty."""
    repo, manifest = _backup(tmp_path, source_db, jobs=2)
    victim = next(o for o in manifest.objects if o.name != "dump-toc.dat")
    path = tmp_path / "primary" / "backups" / manifest.id / victim.name
    path.write_bytes(path.read_bytes()[:-5])
    restored = new_database(source_db.server, "partial")
    result = pgdump.restore_backup(repo, manifest, source_db.server.dsn(restored), jobs=2)
    assert result.sha256 != manifest.objects[0].sha256  # the caller's comparison reports the backup as damaged
    assert result.pg_restore_error is not None and victim.name in result.pg_restore_error
    assert source_db.server.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", restored) == "0"


def test_drill_restores_a_replicated_parallel_backup_and_checks_every_table(tmp_path: Path,
                                                                            source_db: SourceDb) -> None:
    """The drill reads the replica copy of a directory-format backup with pg_restore -j and finds every table intact."""
    settings = backup_settings(tmp_path, dsn=source_db.dsn, jobs=2, drill_dsn=source_db.server.dsn("postgres"),
                               replica=f"file://{tmp_path / 'replica'}")
    assert BackupEngine(settings).run().ok
    reports = Drill(settings).run()
    assert [r.ok for r in reports] == [True], [r.error for r in reports]
    assert reports[0].tables == 3 and reports[0].source == f"file://{tmp_path / 'replica'}"


def test_parallel_backup_to_s3_replicates_and_restores(tmp_path: Path, source_db: SourceDb, aws: MotoServer) -> None:
    """A jobs: 2 backup into S3 keeps every file's checksum through replication and restores bit-exact from the DR copy."""
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="perf-backups")
    boto3.client("s3", region_name="eu-west-1").create_bucket(
        Bucket="perf-backups-dr", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    settings = backup_settings(tmp_path, dsn=source_db.dsn, repository="s3://perf-backups/prod",
                               replica="s3://perf-backups-dr/prod", replica_region="eu-west-1", jobs=2)
    report = BackupEngine(settings).run()
    assert report.ok and report.outcomes[0].replica_ok, report.to_dict()
    replica = replica_repository(settings)
    assert replica is not None
    copy = replica.manifest(report.outcomes[0].backup_id or "")
    original = primary_repository(settings).manifest(report.outcomes[0].backup_id or "")
    assert copy is not None and original is not None and copy.dump_format == "directory"
    assert [(o.name, o.sha256) for o in copy.objects] == [(o.name, o.sha256) for o in original.objects]
    restored = new_database(source_db.server, "s3dir")
    assert pgdump.restore_backup(replica, copy, source_db.server.dsn(restored), jobs=2).pg_restore_error is None
    assert fingerprint((source_db, restored)) == fingerprint(source_db)


def test_a_fractional_cpu_quota_compresses_inline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a 0.25-CPU cgroup quota zstd runs without worker threads, and a 16+ pg_dump is left to compress."""
    (tmp_path / "cpu.max").write_text("25000 100000\n")
    monkeypatch.setattr(codec, "CGROUP_ROOT", tmp_path)
    assert codec.cpus() <= 0.25 and codec.threads() == 0
    assert pgdump.plan(16, "zstd").by == "pg_dump"
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert codec.cpus() >= 1
