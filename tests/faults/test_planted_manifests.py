"""Planted manifests (absolute, `..`, cross-backup, non-string id) are reported and skipped, never acted on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from opsagent.backup import commands
from opsagent.backup.manifest import new_id
from opsagent.config import Settings
from opsagent_testing.aws import MotoServer
from tests.fixtures.backup import SourceDb, backup_settings

BUCKET = "opsagent-planted"


@pytest.fixture(autouse=True)
def _logs_to_stderr() -> None:
    """As the CLI does: logs on stderr, so stdout holds only the command's output."""
    from opsagent.telemetry import logging as agent_logging

    agent_logging.configure("info")


def _manifest(backup_id: object, object_name: str, real: dict[str, Any] | None = None) -> bytes:
    obj = {"name": object_name, "size": 10, "sha256": "0" * 64}
    if real is not None:
        obj = real["objects"][0]
    return json.dumps({"id": backup_id, "kind": "postgres", "target": "main", "started": 1.0, "finished": 4e9,
                       "size": 10, "compression": "none", "objects": [obj], "server_version": "15",
                       "tool_version": "pg_dump 15", "agent_version": "x"}).encode()


def _plants(victim_file: Path, victim_dir: Path, real_id: str, real: dict[str, Any]) -> dict[str, bytes]:
    """Directory id -> manifest bytes for each kind of planted manifest."""
    ids = [new_id("postgres", "main", 4e9 + i) for i in range(5)]
    return {
        ids[0]: _manifest(ids[0], str(victim_file)),  # object name is an absolute path
        ids[1]: _manifest(ids[1], "../../../../" + victim_file.name),  # object name climbs out
        ids[2]: _manifest(str(victim_dir), "data.dump"),  # id is an absolute path (retention would rmtree it)
        ids[3]: _manifest(real_id, "data.dump", real),  # names another backup (and its objects)
        ids[4]: _manifest(12345, "data.dump"),  # non-string id
    }


def _plant_file(root: Path, plants: dict[str, bytes]) -> None:
    for backup_id, raw in plants.items():
        (root / "backups" / backup_id).mkdir(parents=True)
        (root / "backups" / backup_id / "manifest.json").write_bytes(raw)


def _plant_s3(plants: dict[str, bytes]) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    for backup_id, raw in plants.items():
        s3.put_object(Bucket=BUCKET, Key=f"prod/backups/{backup_id}/manifest.json", Body=raw)


def _settings(tmp_path: Path, source_db: SourceDb, primary: str) -> Settings:
    return backup_settings(tmp_path, dsn=source_db.dsn, repository=primary, replica=f"file://{tmp_path / 'replica'}",
                           drill_dsn=source_db.server.dsn("postgres"), drill_on_target_server=True,
                           retention={"hourly": 0, "daily": 0, "weekly": 0, "manual_keep": "0s"})


@pytest.mark.parametrize("store", ["file", "s3"])
def test_planted_manifests_are_reported_and_nothing_outside_a_repository_changes(
        store: str, tmp_path: Path, source_db: SourceDb, aws: MotoServer,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Backup run, list, verify, restore, drill and retention skip every planted manifest and touch no outside file."""
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    victim_file = victim_dir / "precious.txt"
    victim_file.write_text("keep me")
    (tmp_path / victim_file.name).write_text("keep me too")  # where "../../../../precious.txt" would land
    if store == "s3":
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        primary = f"s3://{BUCKET}/prod"
    else:
        primary = f"file://{tmp_path / 'primary'}"
    settings = _settings(tmp_path, source_db, primary)
    assert commands.backup_run(settings, json_out=True) == 0
    real_id = json.loads(capsys.readouterr().out)["outcomes"][0]["backup_id"]
    real_manifest = json.loads((tmp_path / "replica" / "backups" / real_id / "manifest.json").read_bytes())
    plants = _plants(victim_file, victim_dir, real_id, real_manifest)
    if store == "s3":
        _plant_s3(plants)
    else:
        _plant_file(tmp_path / "primary", plants)

    assert commands.backup_run(settings, json_out=True) == 0  # catch-up replication and retention run too
    run = json.loads(capsys.readouterr().out)
    assert run["ok"] and all(p not in json.dumps(run["deleted"]) for p in plants)

    assert commands.backup_list(settings, replica=False, json_out=True) == 0
    listed = json.loads(capsys.readouterr().out)
    invalid = {e["id"]: e["reason"] for e in listed if e["valid"] is False}
    assert set(invalid) == set(plants)
    assert "object name" in invalid[next(iter(plants))]
    assert [e["id"] for e in listed if e["valid"]] and all(e["id"] not in plants for e in listed if e["valid"])
    assert commands.backup_list(settings, replica=False, json_out=False) == 0
    table = capsys.readouterr().out
    assert real_id in table and "invalid (never restored" in table and all(p in table for p in plants)

    for planted in plants:
        # Found but refused: a damaged backup (exit 1), named with the reason; nothing is read or restored.
        assert commands.backup_verify(settings, planted) == 1
        target = source_db.server.dsn(f"planted_{source_db.server.port}")
        assert commands.restore(settings, planted, target, force=False, source="primary") == 1
    err = capsys.readouterr().err
    assert "invalid manifest" in err and "is damaged" in err
    assert source_db.server.psql(f"SELECT count(*) FROM pg_database WHERE datname = 'planted_{source_db.server.port}'"
                                 ).strip() == "0"
    assert commands.drill(settings, json_out=True) == 0
    assert json.loads(capsys.readouterr().out)["drills"][0]["backup_id"] != list(plants)[3]

    assert victim_file.read_text() == "keep me" and (tmp_path / victim_file.name).read_text() == "keep me too"
    assert sorted(p.name for p in victim_dir.iterdir()) == ["precious.txt"]
    replica_ids = {p.name for p in (tmp_path / "replica" / "backups").iterdir()}
    assert not replica_ids & set(plants)
