"""The backup service: schedules, slot markers, freshness results for the alert engine, metrics, status."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import boto3
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry

from opsagent.backup.schedule import current_slot
from opsagent.backup.service import BackupService
from opsagent.cron import CrontabTrigger
from opsagent.runtime.results import ResultStore
from opsagent_testing.servers import closed_port
from tests.fixtures.backup import SourceDb, backup_settings

SLOT = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)


def _registry(service: BackupService) -> CollectorRegistry:
    registry = CollectorRegistry()

    class Adapter:
        def collect(self):  # type: ignore[no-untyped-def]
            return service.collect()

    registry.register(Adapter())  # type: ignore[arg-type]
    return registry


def test_jobs_are_utc_cron_schedules_and_a_refresh(tmp_path: Path) -> None:
    """The daemon gets the backup and drill schedules as UTC cron triggers plus a 30 s refresh."""
    settings = backup_settings(tmp_path, dsn="postgresql://postgres@127.0.0.1:5432/postgres", schedule="15 * * * *",
                               drill_dsn="postgresql://postgres@127.0.0.1:5432/postgres", drill_schedule="30 3 * * *")
    jobs = {job_id: trigger for job_id, trigger, _ in BackupService(settings, ResultStore()).jobs()}
    assert set(jobs) == {"backup", "drill", "backup_refresh"}
    assert isinstance(jobs["backup"], CrontabTrigger) and str(jobs["backup"].timezone) == "UTC"
    assert jobs["backup"].get_next_fire_time(None, SLOT) == SLOT.replace(minute=15)
    assert isinstance(jobs["backup_refresh"], IntervalTrigger) and jobs["backup_refresh"].interval.total_seconds() == 30


def test_slot_is_the_latest_fire_time_at_or_before_now() -> None:
    """A job that starts a little late still belongs to the slot it was scheduled for."""
    trigger = CrontabTrigger("0 * * * *")
    assert current_slot(trigger, SLOT.replace(minute=3, second=7)) == SLOT
    assert current_slot(trigger, SLOT) == SLOT
    weekly = CrontabTrigger("30 3 * * sun")
    assert current_slot(weekly, SLOT) == datetime(2026, 11, 22, 3, 30, tzinfo=UTC)


def test_a_slot_runs_once_and_the_next_slot_runs_again(tmp_path: Path, source_db: SourceDb) -> None:
    """The same slot is not run twice (marker in the repository); the next slot is."""
    settings = backup_settings(tmp_path, dsn=source_db.dsn, replica=f"file://{tmp_path / 'replica'}")
    service = BackupService(settings, ResultStore())
    assert service.run_slot("backup", SLOT) == "ran"
    first = service.status()["last_run"]
    assert BackupService(settings, ResultStore()).run_slot("backup", SLOT) == "done"
    assert service.status()["last_run"] == first
    assert service.run_slot("backup", SLOT.replace(hour=15)) == "ran"
    second = service.status()["last_run"]
    assert second["slot"] == SLOT.replace(hour=15).isoformat() and second["ok"]
    assert second["outcomes"][0]["backup_id"] != first["outcomes"][0]["backup_id"]
    assert service.lock_mechanism == "postgres-advisory"


def test_old_slot_markers_are_pruned(tmp_path: Path) -> None:
    """Slot markers older than a week are deleted after a run, recent ones stay (the state does not grow forever)."""
    from opsagent.backup.engine import primary_repository

    settings = backup_settings(tmp_path)
    repo = primary_repository(settings)
    repo.put_state("slots/backup-20261001T000000Z", b"{}")
    repo.put_state("slots/backup-20261124T000000Z", b"{}")
    now = SLOT.timestamp()
    assert BackupService(settings, ResultStore(), clock=lambda: now).run_slot("backup", SLOT) == "ran"
    assert repo.list_state("slots/") == ["slots/backup-20261124T000000Z", "slots/backup-20261125T140000Z"]


def test_fresh_backup_metrics_and_results(tmp_path: Path, source_db: SourceDb) -> None:
    """After a good run: last-success timestamps, size, duration, RPO, run success, and age results near zero."""
    now = [1_800_000_000.0]
    settings = backup_settings(tmp_path, dsn=source_db.dsn, replica=f"file://{tmp_path / 'replica'}",
                               replica_region="eu-west-1")
    store = ResultStore()
    service = BackupService(settings, store, clock=lambda: now[0])
    assert service.trigger_backup()
    assert not service.trigger_backup()  # one run at a time
    assert service.join(timeout=60)
    reg = _registry(service)
    labels = {"kind": "postgres", "target": "main"}
    assert reg.get_sample_value("opsagent_backup_last_success_timestamp_seconds", labels) == now[0]
    assert reg.get_sample_value("opsagent_replica_last_success_timestamp_seconds",
                                {**labels, "region": "eu-west-1"}) == now[0]
    assert reg.get_sample_value("opsagent_backup_size_bytes", labels) > 1000
    assert reg.get_sample_value("opsagent_backup_duration_seconds", labels) == 0.0
    assert reg.get_sample_value("opsagent_backup_last_run_success", labels) == 1.0
    now[0] += 600
    service.refresh()
    assert reg.get_sample_value("opsagent_rpo_seconds", labels) == 600.0
    assert store.get("backup", "main").value == 600.0
    assert store.get("replica", "main").value == 600.0
    assert store.get("backup_run", "main").value == 0.0
    status = service.status()
    assert status["rpo_target_seconds"] == 3600.0 and status["rto_target_seconds"] == 7200.0
    assert status["rpo_achieved_seconds"] == 600.0 and status["rto_achieved_seconds"] is None
    target = status["targets"][0]
    assert target["newest_backup"]["verified"] and target["newest_replica"]["id"] == target["newest_backup"]["id"]
    assert target["rpo_seconds"] == 600.0 and status["last_run"]["ok"] is True


def test_make_run_config_without_postgres_reports_instead_of_crashing(tmp_path: Path) -> None:
    """With PostgreSQL absent the run fails cleanly: BackupFailed input is 1 with a reason, ages count from start."""
    now = [1_800_000_000.0]
    dsn = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"
    settings = backup_settings(tmp_path, dsn=dsn, name="local", replica=f"file://{tmp_path / 'replica'}",
                               drill_dsn=dsn)
    store = ResultStore()
    service = BackupService(settings, store, clock=lambda: now[0])
    now[0] += 7200
    assert service.run_slot("backup", SLOT) == "ran"
    assert service.lock_mechanism == "flock"  # the database is the lock's first choice; it is down
    run = store.get("backup_run", "local")
    assert run.value == 1.0 and "local" not in ("",) and run.details["error"]
    assert store.get("backup", "local").value == 7200.0  # never backed up: since the agent started
    assert store.get("replica", "local").value == 7200.0
    assert store.get("drill", "local").value == 0.0  # configured, not yet run
    reg = _registry(service)
    assert reg.get_sample_value("opsagent_backup_last_run_success", {"kind": "postgres", "target": "local"}) == 0.0
    assert reg.get_sample_value("opsagent_rpo_seconds", {"kind": "postgres", "target": "local"}) == 7200.0


def test_last_run_is_shared_through_the_repository(tmp_path: Path) -> None:
    """An agent that did not run the backup still reports the fleet's last run failure after a refresh."""
    dsn = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"
    settings = backup_settings(tmp_path, dsn=dsn)
    BackupService(settings, ResultStore()).run_slot("backup", SLOT)
    store = ResultStore()
    other = BackupService(settings, store)
    other.refresh()
    assert store.get("backup_run", "main").value == 1.0
    assert other.status()["last_run"]["ok"] is False


def test_rds_snapshots_join_the_run_and_the_freshness_results(tmp_path: Path, aws) -> None:  # type: ignore[no-untyped-def]
    """With an RDS instance configured, the scheduled run snapshots and copies it, and its RPO is reported."""

    boto3.client("rds", region_name="us-east-1").create_db_instance(
        DBInstanceIdentifier="app-db", DBInstanceClass="db.t3.micro", Engine="postgres",
        MasterUsername="postgres", MasterUserPassword="password123", AllocatedStorage=20)
    settings = backup_settings(tmp_path, rds_instances=["app-db"], replica_region="eu-west-1")
    store = ResultStore()
    service = BackupService(settings, store)
    assert service.run_slot("backup", SLOT) == "ran"
    run = service.status()["last_run"]
    [outcome] = run["outcomes"]
    assert outcome["kind"] == "rds" and outcome["target"] == "app-db" and outcome["ok"], outcome
    assert outcome["replica_ok"] is True and outcome["region"] == "eu-west-1"
    assert store.get("backup", "app-db").value < 60
    assert store.get("replica", "app-db").value < 60
    assert store.get("backup_run", "app-db").value == 0.0
    registry = _registry(service)
    assert registry.get_sample_value("opsagent_replica_last_success_timestamp_seconds",
                                     {"kind": "rds", "target": "app-db", "region": "eu-west-1"}) is not None


def test_alert_engine_raises_backup_alarms_from_the_synthetic_results(tmp_path: Path) -> None:
    """With PostgreSQL down past the RPO: BackupFailed, BackupStale and ReplicaStale fire through the alert engine."""
    from opsagent.alerts.pipeline import AlertPipeline

    now = [1_800_000_000.0]
    dsn = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"
    settings = backup_settings(tmp_path, dsn=dsn, name="local", replica=f"file://{tmp_path / 'replica'}")
    store = ResultStore()
    pipeline = AlertPipeline(settings, tmp_path / "alerts", clock=lambda: now[0])
    store.subscribe(pipeline.on_result)
    service = BackupService(settings, store, clock=lambda: now[0])
    service.run_slot("backup", SLOT)
    firing = {a["alertname"] for a in pipeline.alerts() if a["state"] == "firing"}
    # A file repository without a drill is also a posture violation (the audit's warning), rightly.
    assert firing - {"BackupPostureViolation"} == {"BackupFailed"}
    now[0] += 3601
    service.refresh()
    firing = {a["alertname"]: a for a in pipeline.alerts() if a["state"] == "firing"}
    assert set(firing) - {"BackupPostureViolation"} == {"BackupFailed", "BackupStale", "ReplicaStale"}
    assert firing["BackupStale"]["target"] == "local" and firing["BackupStale"]["threshold"] == 3600.0


def test_shutdown_mid_backup_is_not_a_failure_and_leaves_the_slot_open(tmp_path: Path, source_db: SourceDb) -> None:
    """Stopping the agent during pg_dump ends it within seconds, raises no BackupFailed and lets the slot run again."""
    import threading
    import time

    from opsagent.backup.engine import primary_repository
    from tests.fixtures.backup import slow_tools

    settings = backup_settings(tmp_path, dsn=source_db.dsn, pg_dump_path=slow_tools(tmp_path, dump_sleep=30))
    store = ResultStore()
    service = BackupService(settings, store)
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(service.run_slot("backup", SLOT)))
    worker.start()
    backups = tmp_path / "primary" / "backups"
    deadline = time.monotonic() + 30
    while not (backups.is_dir() and any(f.stat().st_size for d in backups.iterdir() for f in d.iterdir())):
        assert time.monotonic() < deadline, "pg_dump never produced output"
        time.sleep(0.05)
    started = time.monotonic()
    service.stop(timeout=10)
    worker.join(10)
    assert outcome == ["interrupted"] and time.monotonic() - started < 10
    repo = primary_repository(settings)
    assert repo.get_state("last_run.json") is None and repo.list() == []
    assert store.get("backup_run", "main") is None or store.get("backup_run", "main").value == 0.0
    fresh = backup_settings(tmp_path, dsn=source_db.dsn)
    assert BackupService(fresh, ResultStore()).run_slot("backup", SLOT) == "ran"


def test_status_says_null_rpo_and_next_runs_before_any_backup(tmp_path: Path) -> None:
    """Without a complete backup /status shows rpo_seconds null, rpo_achieved null and the next run/drill times."""
    now = [datetime(2026, 11, 24, 12, 10, tzinfo=UTC).timestamp()]  # a Tuesday
    dsn = "postgresql://postgres@127.0.0.1:5432/postgres"
    settings = backup_settings(tmp_path, dsn=dsn, schedule="0 3 * * */2", drill_dsn=dsn, drill_schedule="30 4 * * *")
    store = ResultStore()
    service = BackupService(settings, store, clock=lambda: now[0])
    now[0] += 7200
    service.refresh()
    status = service.status()
    assert status["rpo_achieved_seconds"] is None and status["targets"][0]["rpo_seconds"] is None
    assert status["next_run_at"] == datetime(2026, 11, 26, 3, 0, tzinfo=UTC).timestamp()  # Thursday
    assert status["next_drill_at"] == datetime(2026, 11, 25, 4, 30, tzinfo=UTC).timestamp()
    reading = store.get("backup", "main")
    assert reading.details["newest"] is None and reading.value == 7200.0  # BackupStale still fires after rpo


def test_a_backup_stamped_in_the_future_is_not_counted_and_is_flagged(tmp_path: Path) -> None:
    """A manifest 30 days ahead (a skewed fleet member) leaves the RPO unknown and raises the skew reading."""
    import hashlib

    from opsagent.backup.engine import primary_repository
    from opsagent.backup.manifest import Manifest, new_id

    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC).timestamp()
    settings = backup_settings(tmp_path, dsn="postgresql://postgres@127.0.0.1:5432/postgres")
    repo = primary_repository(settings)
    future = now + 30 * 86400
    backup_id = new_id("postgres", "main", future)
    writer = repo.writer(backup_id, "data.dump")
    writer.write(b"x")
    info = writer.commit()
    assert info.sha256 == hashlib.sha256(b"x").hexdigest()
    repo.write_manifest(Manifest(id=backup_id, kind="postgres", target="main", started=future, finished=future,
                                 size=1, compression="none", objects=(info,), server_version="15",
                                 tool_version="pg_dump 15", agent_version="t"))
    store = ResultStore()
    service = BackupService(settings, store, clock=lambda: now)
    service.refresh()
    row = service.status()["targets"][0]
    assert row["rpo_seconds"] is None and row["future_backups"] == [backup_id]
    assert store.get("backup_skew", "main").value == 1.0 and backup_id in store.get("backup_skew", "main").details["error"]
