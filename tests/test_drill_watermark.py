"""RPO proven from restored data: the drill reads `backup.watermark` in the restored copy."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from opsagent.backup import commands
from opsagent.config import Settings
from tests.fixtures.backup import SourceDb, backup_config, make_source


@pytest.fixture(autouse=True)
def _logs_to_stderr() -> None:
    """As the CLI does: logs on stderr, so stdout holds only the command's output."""
    from opsagent.telemetry import logging as agent_logging

    agent_logging.configure("info")


@pytest.fixture
def events_db(source_db: SourceDb) -> SourceDb:
    db = make_source(source_db.server)
    db.psql("CREATE TABLE public.events (id int, created_at timestamptz);"
            "INSERT INTO public.events VALUES (1, '2026-11-30T10:00:00Z'), (2, '2026-12-01T08:30:15Z')")
    return db


T = datetime(2026, 12, 1, 8, 30, 15, tzinfo=UTC).timestamp()


def _settings(tmp_path: Path, db: SourceDb, watermark: dict[str, str]) -> Settings:
    return Settings(**backup_config(tmp_path, dsn=db.dsn, replica=f"file://{tmp_path / 'replica'}",
                                    drill_dsn=db.server.dsn("postgres"), watermark={"main": watermark}))


def test_drill_reports_rpo_proven_from_the_newest_row(tmp_path: Path, events_db: SourceDb,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """With the newest row at T, the drill JSON says rpo_proven_seconds = drill end − T (within a second)."""
    settings = _settings(tmp_path, events_db, {"table": "public.events", "column": "created_at"})
    assert commands.backup_run(settings, json_out=True) == 0
    capsys.readouterr()
    assert commands.drill(settings, json_out=True) == 0
    [drill] = json.loads(capsys.readouterr().out)["drills"]
    assert drill["watermark"] == T
    assert drill["rpo_proven_seconds"] == pytest.approx(drill["finished"] - T, abs=1.0)


def test_a_watermark_query_works_too(tmp_path: Path, events_db: SourceDb, capsys: pytest.CaptureFixture[str]) -> None:
    """`watermark: {query}` is run in the restored copy and its timestamp is the watermark."""
    settings = _settings(tmp_path, events_db, {"query": "SELECT min(created_at) FROM public.events"})
    assert commands.backup_run(settings, json_out=True) == 0
    capsys.readouterr()
    assert commands.drill(settings, json_out=True) == 0
    [drill] = json.loads(capsys.readouterr().out)["drills"]
    assert drill["watermark"] == datetime(2026, 11, 30, 10, tzinfo=UTC).timestamp()


def test_a_watermark_column_that_does_not_exist_fails_the_drill_clearly(
        tmp_path: Path, events_db: SourceDb, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing watermark column fails the drill (exit 1) with a message naming backup.watermark and the column."""
    settings = _settings(tmp_path, events_db, {"table": "public.events", "column": "no_such_column"})
    assert commands.backup_run(settings, json_out=True) == 0
    capsys.readouterr()
    assert commands.drill(settings, json_out=True) == 1
    [drill] = json.loads(capsys.readouterr().out)["drills"]
    assert not drill["passed"] and "backup.watermark public.events.no_such_column" in drill["error"]
    assert "no_such_column" in drill["error"] and drill["rpo_proven_seconds"] is None
