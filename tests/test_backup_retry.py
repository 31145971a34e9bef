"""A failed scheduled backup is retried within its slot, and BackupFailed waits for the slot's last attempt."""

from __future__ import annotations

import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from structlog.testing import capture_logs

from opsagent.backup.engine import RunReport, TargetOutcome
from opsagent.backup.pgtools import candidates
from opsagent.backup.retry import run_with_retries
from opsagent.backup.service import BackupService
from opsagent.config.backup_options import RetryPolicy
from opsagent.runtime.results import ResultStore
from tests.fixtures.backup import SourceDb, backup_settings


def flaky_pg_dump(tmp_path: Path, failures: int) -> str:
    """A pg_dump that fails ("too many clients") its first ``failures`` runs, then works."""
    real = candidates("pg_dump")[0]
    counter = tmp_path / "dump-count"
    tool = tmp_path / "flaky" / "pg_dump"
    tool.parent.mkdir()
    tool.write_text(f"""#!/bin/sh
if [ "$1" = "--version" ]; then exec {real} --version; fi
n=$(cat {counter} 2>/dev/null || echo 0); echo $((n + 1)) > {counter}
if [ "$n" -lt {failures} ]; then echo 'FATAL: sorry, too many clients already' >&2; exit 1; fi
exec {real} "$@"
""")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return str(tool)


def _slot_now() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def test_a_transient_dump_failure_is_retried_within_the_slot(tmp_path: Path, source_db: SourceDb) -> None:
    """pg_dump failing once is tried again after the backoff; the slot succeeds and BackupFailed stays 0."""
    settings = backup_settings(tmp_path, dsn=source_db.dsn, pg_dump_path=flaky_pg_dump(tmp_path, failures=1),
                               retry={"attempts": 3, "backoff": "0.1s"})
    store = ResultStore()
    service = BackupService(settings, store)
    with capture_logs() as logs:
        assert service.run_slot("backup", _slot_now()) == "ran"
    events = [e["event"] for e in logs]
    assert events.count("backup_attempt_failed") == 1 and "backup_attempt_started" in events
    assert "too many clients" in next(e for e in logs if e["event"] == "backup_attempt_failed")["errors"]["main"]
    assert store.get("backup_run", "main").value == 0.0
    status = service.status()
    assert status["last_run"]["ok"] and status["targets"][0]["newest_backup"] is not None


def test_backup_failed_only_after_the_slots_attempts_are_spent(tmp_path: Path, source_db: SourceDb) -> None:
    """A pg_dump that keeps failing is tried `attempts` times, each logged, and then BackupFailed's input is 1."""
    settings = backup_settings(tmp_path, dsn=source_db.dsn, pg_dump_path=flaky_pg_dump(tmp_path, failures=99),
                               retry={"attempts": 3, "backoff": "0.05s"})
    store = ResultStore()
    service = BackupService(settings, store)
    with capture_logs() as logs:
        assert service.run_slot("backup", _slot_now()) == "ran"
    events = [e["event"] for e in logs]
    assert events.count("backup_attempt_failed") == 2 and events.count("backup_attempts_spent") == 1
    assert (tmp_path / "dump-count").read_text().strip() == "3"
    run = store.get("backup_run", "main")
    assert run.value == 1.0 and "too many clients" in run.details["error"]


def test_no_retry_starts_after_the_slot_ends() -> None:
    """When the backoff would carry the next attempt past the slot's end, the run gives up at once."""
    calls: list[list[str] | None] = []

    def attempt(only: list[str] | None) -> RunReport:
        calls.append(only)
        return RunReport(started=0.0, finished=1.0, outcomes=[TargetOutcome("postgres", "main", ok=False, error="x")])

    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    end = now + timedelta(minutes=5).total_seconds()
    with capture_logs() as logs:
        report = run_with_retries(attempt, ["main"], RetryPolicy(attempts=5, backoff=600.0), slot_end=end,
                                  clock=lambda: now, stop=threading.Event(), slot="s")
    assert calls == [None] and not report.ok
    assert [e["event"] for e in logs] == ["backup_retry_abandoned"]
