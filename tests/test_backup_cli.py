"""The backup, restore and drill commands as a user runs them: output, JSON, exit status, refusals."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from opsagent import secrets
from opsagent.backup import commands
from opsagent.backup.progress import TerminalReporter
from tests.fixtures.backup import SourceDb, backup_settings, new_database, table_dump


@pytest.fixture(autouse=True)
def _logs_to_stderr() -> None:
    """As the CLI does: logs on stderr, so stdout holds only the command's output."""
    from opsagent.telemetry import logging as agent_logging

    agent_logging.configure("info")


@pytest.fixture
def settings(tmp_path: Path, source_db: SourceDb):  # type: ignore[no-untyped-def]
    return backup_settings(tmp_path, dsn=source_db.dsn, replica=f"file://{tmp_path / 'replica'}",
                           drill_dsn=source_db.server.dsn("postgres"))


def _run_json(settings, capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[no-untyped-def]
    assert commands.backup_run(settings, json_out=True) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # the whole of stdout is one JSON document


def test_backup_run_json_prints_one_document(settings, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    """`backup run --json` prints exactly one JSON document with each target's outcome and exits 0."""
    doc = _run_json(settings, capsys)
    assert doc["ok"] is True
    [outcome] = doc["outcomes"]
    assert outcome["target"] == "main" and outcome["ok"] and outcome["replica_ok"] is True


def test_backup_run_table_and_progress_lines(settings, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    """Without --json a table goes to stdout and plain progress lines to stderr (not a terminal)."""
    assert commands.backup_run(settings, json_out=False) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].split()[:3] == ["KIND", "TARGET", "BACKUP"]
    assert "backing up postgres main" in captured.err and "\r" not in captured.err


def test_list_and_list_replica(settings, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    """`backup list` shows id, kind, target, time, size, checksum, verified; --replica lists the DR copies."""
    backup_id = _run_json(settings, capsys)["outcomes"][0]["backup_id"]
    assert commands.backup_list(settings, replica=False, json_out=True) == 0
    [item] = json.loads(capsys.readouterr().out)
    assert {"id", "kind", "target", "time", "size", "checksum", "verified"} <= set(item)
    assert item["id"] == backup_id and item["verified"] and item["replicated"] is True
    assert commands.backup_list(settings, replica=True, json_out=False) == 0
    table = capsys.readouterr().out
    assert table.split()[:7] == ["ID", "KIND", "TARGET", "TIME", "SIZE", "CHECKSUM", "VERIFIED"]
    assert backup_id in table


def test_verify_intact_then_damaged(settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    """`backup verify` exits 0 for an intact backup and 1 once a byte of an object changed."""
    backup_id = _run_json(settings, capsys)["outcomes"][0]["backup_id"]
    assert commands.backup_verify(settings, backup_id) == 0
    assert "intact" in capsys.readouterr().out
    obj = tmp_path / "primary" / "backups" / backup_id / "data.dump"
    data = obj.read_bytes()
    obj.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    assert commands.backup_verify(settings, backup_id) == 1
    out = capsys.readouterr().out
    assert "primary" in out and "DAMAGED" in out and "replica" in out


def test_verify_unknown_id_is_an_error(settings, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    """Verifying an id that does not exist prints one error line on stderr and exits 2 (damage is 1)."""
    assert commands.backup_verify(settings, "postgres-main-20200101T000000Z-000000") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no complete backup") and "Traceback" not in err


def test_restore_refuses_configured_target_unless_forced(settings, source_db: SourceDb,  # type: ignore[no-untyped-def]
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Restoring onto a configured target (same host/port/dbname, any spelling) is refused without --force."""
    backup_id = _run_json(settings, capsys)["outcomes"][0]["backup_id"]
    same = source_db.dsn.replace("127.0.0.1", "localhost") + "?application_name=x"
    assert commands.restore(settings, backup_id, same, force=False) == 1
    err = capsys.readouterr().err
    assert "is a configured target" in err and "--force" in err


def test_restore_into_new_database(settings, source_db: SourceDb, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    """`restore ID --target DSN` fills an empty database with the backed-up rows and exits 0."""
    backup_id = _run_json(settings, capsys)["outcomes"][0]["backup_id"]
    target = new_database(source_db.server, "cli_restore")
    assert commands.restore(settings, backup_id, source_db.server.dsn(target), force=False) == 0
    assert table_dump(source_db.server, target) == table_dump(source_db.server, source_db.dbname)


def test_drill_json(settings, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    """`drill --json` prints one document with the time taken against the RTO and exits 0 when it passes."""
    _run_json(settings, capsys)
    assert commands.drill(settings, json_out=True) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["passed"] is True and doc["rto_seconds"] == 7200.0
    assert doc["drills"][0]["within_rto"] and doc["drills"][0]["duration_seconds"] > 0


def test_errors_never_show_passwords(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A failing run's output masks the DSN password."""
    dsn = "postgresql://app:s3cr3t-pass@127.0.0.1:1/app"
    secrets.register([dsn])
    settings = backup_settings(tmp_path, dsn=dsn)
    assert commands.backup_run(settings, json_out=True) == 1
    captured = capsys.readouterr()
    assert "s3cr3t-pass" not in captured.out + captured.err
    assert json.loads(captured.out)["ok"] is False


def test_terminal_gets_a_progress_bar() -> None:
    """On a terminal, progress is a bar with a percentage redrawn in place."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    reporter = TerminalReporter(stream)
    reporter.stage("restoring", total=1000)
    reporter.advance(500)
    reporter.finish()
    assert "\r 50%|" in stream.getvalue() and "100%" not in stream.getvalue()  # unfinished work never reads 100 %


def test_verify_rejects_something_that_is_not_an_id(settings, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    """A path-like or malformed id is refused with the expected form, never looked up on disk."""
    assert commands.backup_verify(settings, "../../etc") == 2
    assert "is not a backup id" in capsys.readouterr().err
