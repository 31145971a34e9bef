"""The backup service the daemon runs: schedules, fleet lock, freshness, metrics, status.

Scheduled jobs run exactly once per slot across a fleet: the runner holds the
fleet lock (:mod:`agent.backup.lock`) and checks/writes a per-slot marker in the
primary repository, so a second agent that arrives later in the same slot sees
the slot done. Freshness (RPO) comes from the repositories, not from this
process's memory, so every agent of the fleet reports the same ages; the last
run's and last drill's outcomes are shared the same way (``state/`` in the
primary repository). Results are fed to the alert engine as synthetic checks
``backup``, ``replica``, ``backup_run`` and ``drill``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client.core import GaugeMetricFamily, Metric

from opsagent.backup import engine as eng
from opsagent.backup import pgdump
from opsagent.backup.drill import LAST_DRILL, Drill, DrillReport, rds_drill_enabled
from opsagent.backup.engine import BackupEngine, RunReport, describe
from opsagent.backup.lock import FleetLock
from opsagent.backup.manifest import Manifest, iso
from opsagent.backup.repository import Repository
from opsagent.backup.schedule import (
    SLOT_PREFIX,
    current_slot,
    expired_markers,
    slot_key,
)
from opsagent.config import Settings
from opsagent.cron import cron_trigger
from opsagent.runtime.results import CheckResult, ResultStore

log = structlog.get_logger("opsagent.backup")

REFRESH_SECONDS = 30.0
SNAPSHOT_REFRESH_SECONDS = 300.0


def fleet_lock(settings: Settings, job: str) -> FleetLock:
    """The lock for ``job`` (backup or drill): advisory lock on lock_dsn / first target, else flock."""
    b = settings.backup
    dsn = b.lock_dsn.get_secret_value() if b.lock_dsn else None
    if dsn is None and b.postgres:
        try:
            dsn = eng.postgres_dsn(settings, b.postgres[0])
        except Exception:  # noqa: BLE001 - config validation already names the problem
            dsn = None
    lock_file = None
    if b.repository and b.repository.startswith("file://"):
        repo = eng.primary_repository(settings)
        path = repo.lock_file()
        lock_file = path.with_name(f".opsagent-{job}.lock") if path else None
    return FleetLock(f"{job}:{b.repository or 'snapshots'}", dsn, lock_file)


class BackupService:
    def __init__(self, settings: Settings, store: ResultStore, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.started = clock()
        self._stop = threading.Event()
        self._busy = {"backup": threading.Lock(), "drill": threading.Lock()}
        self._threads: list[threading.Thread] = []
        self._engine: BackupEngine | None = None
        self._drill_proc: Any = None  # a running drill's pg_restore, killed on stop
        self._state_lock = threading.Lock()
        self._last_run: RunReport | None = None
        self._last_drill: list[DrillReport] = []
        self._newest: dict[tuple[str, str], Manifest] = {}
        self._newest_replica: dict[tuple[str, str], Manifest] = {}
        self._snapshots: list[dict[str, Any]] = []
        self._snapshots_at = 0.0
        self.lock_mechanism: str | None = None
        self._repos: tuple[Repository, Repository | None] | None = None

    # -- schedule ----------------------------------------------------------------------------------

    def jobs(self) -> list[tuple[str, BaseTrigger, Callable[[], None]]]:
        b = self.settings.backup
        out: list[tuple[str, BaseTrigger, Callable[[], None]]] = []
        if b.enabled and self._has_backups():
            trigger = cron_trigger(b.schedule)
            out.append(("backup", trigger, lambda: self._scheduled("backup", trigger)))
        if b.enabled and b.drill_schedule and ((b.drill_dsn and b.postgres) or rds_drill_enabled(self.settings)):
            drill_trigger = cron_trigger(b.drill_schedule)
            out.append(("drill", drill_trigger, lambda: self._scheduled("drill", drill_trigger)))
        if self._has_backups():
            # Started one interval minus a second ago: the first refresh runs a second after start-up,
            # so /status and the RPO alarms know the existing backups right away.
            first = datetime.fromtimestamp(self.clock(), UTC) - timedelta(seconds=REFRESH_SECONDS - 1)
            out.append(("backup_refresh", IntervalTrigger(seconds=REFRESH_SECONDS, start_date=first, timezone="UTC"),
                        self.refresh))
        return out

    def _has_backups(self) -> bool:
        b = self.settings.backup
        return bool(b.repository or b.rds_instances or b.elasticache_clusters)

    def _scheduled(self, job: str, trigger: BaseTrigger) -> None:
        try:
            slot = current_slot(trigger, datetime.fromtimestamp(self.clock(), UTC))
            if slot is not None:
                self.run_slot(job, slot)
        except Exception as exc:  # noqa: BLE001 - a scheduled job never raises into the scheduler
            log.error("backup_job_crashed", job=job, error=describe(exc))

    def run_slot(self, job: str, slot: datetime) -> str:
        """Run ``job`` for ``slot`` unless another agent has it or did it.

        Returns 'ran', 'busy' (another run holds the lock), 'done' (the slot's marker exists) or
        'interrupted' (the agent is stopping; no marker is written).
        """
        busy = self._busy[job]
        if not busy.acquire(blocking=False):
            return "busy"
        try:
            lock = fleet_lock(self.settings, job)
            if not lock.acquire(0):
                log.info("backup_slot_taken", job=job, slot=slot.isoformat())
                return "busy"
            self.lock_mechanism = lock.mechanism
            try:
                marker = slot_key(job, slot)
                repo = eng.primary_repository(self.settings) if self.settings.backup.repository else None
                if repo is not None and repo.get_state(marker) is not None:
                    log.info("backup_slot_done_elsewhere", job=job, slot=slot.isoformat())
                    return "done"
                log.info("backup_slot_started", job=job, slot=slot.isoformat(), lock=lock.mechanism)
                if job == "backup":
                    self._run_backup(slot, "schedule", lock.mechanism)
                else:
                    self._run_drill()
                if self._stop.is_set():
                    return "interrupted"  # no marker: the slot is not done
                if repo is not None:
                    repo.put_state(marker, json.dumps({"finished": self.clock(), "job": job}).encode())
                    self._prune_markers(repo, job)
                return "ran"
            finally:
                lock.release()
        finally:
            busy.release()
            self._safe_refresh()

    def _prune_markers(self, repo: Repository, job: str) -> None:
        try:
            now = datetime.fromtimestamp(self.clock(), UTC)
            for name in expired_markers(repo.list_state(f"{SLOT_PREFIX}{job}-"), now):
                repo.delete_state(name)
        except Exception as exc:  # noqa: BLE001 - housekeeping; retried after the next run
            log.warning("backup_marker_prune_failed", error=describe(exc))

    def _run_backup(self, slot: datetime | None, trigger: str, mechanism: str | None) -> RunReport:
        engine = BackupEngine(self.settings, clock=self.clock, stop=self._stop, exclusive=mechanism != "none")
        self._engine = engine
        try:
            report = engine.run(slot, trigger)
        finally:
            self._engine = None
        report.lock = mechanism
        if report.interrupted:
            return report
        with self._state_lock:
            self._last_run = report
            self._snapshots_at = 0.0  # re-read the snapshots this run took
        return report

    def _run_drill(self) -> list[DrillReport]:
        drill = Drill(self.settings, clock=self.clock, stop=self._stop, on_proc=self._remember_proc)
        reports = drill.run()
        if reports:  # empty when interrupted by shutdown
            with self._state_lock:
                self._last_drill = reports
        return reports

    def _remember_proc(self, proc: Any) -> None:
        self._drill_proc = proc

    def trigger_backup(self) -> bool:
        """Start a run in a background thread now; False if one is already running here."""
        busy = self._busy["backup"]
        if not busy.acquire(blocking=False):
            return False

        def work() -> None:
            try:
                lock = fleet_lock(self.settings, "backup")
                if not lock.acquire(wait=3600.0, stop=self._stop):
                    log.warning("backup_manual_run_skipped", reason="another agent holds the backup lock")
                    return
                try:
                    self._run_backup(None, "manual", lock.mechanism)
                finally:
                    lock.release()
            except Exception as exc:  # noqa: BLE001
                log.error("backup_job_crashed", job="manual", error=describe(exc))
            finally:
                busy.release()
                self._safe_refresh()

        thread = threading.Thread(target=work, name="backup-manual", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return True

    # -- freshness ---------------------------------------------------------------------------------

    def _safe_refresh(self) -> None:
        try:
            self.refresh()
        except Exception as exc:  # noqa: BLE001
            log.warning("backup_refresh_failed", error=describe(exc))

    def _load_repositories(self) -> None:
        if not self.settings.backup.repository:
            return
        if self._repos is None:  # kept: their manifest caches make a refresh one listing, not N reads
            self._repos = (eng.primary_repository(self.settings), eng.replica_repository(self.settings))
        primary, replica = self._repos
        newest: dict[tuple[str, str], Manifest] = {}
        for m in primary.list():
            newest[(m.kind, m.target)] = m  # list() is sorted oldest first
        shared_run = primary.get_state(eng.LAST_RUN)
        shared_drill = primary.get_state(LAST_DRILL)
        newest_replica: dict[tuple[str, str], Manifest] = {}
        if replica is not None:
            for m in replica.list():
                if m.verified:
                    newest_replica[(m.kind, m.target)] = m
        with self._state_lock:
            self._newest, self._newest_replica = newest, newest_replica
            if shared_run:
                other = RunReport.from_dict(json.loads(shared_run))
                if self._last_run is None or other.finished > self._last_run.finished:
                    self._last_run = other
            if shared_drill:
                others = [DrillReport.from_dict(d) for d in json.loads(shared_drill)]
                mine = max((d.finished for d in self._last_drill), default=0.0)
                if others and max(d.finished for d in others) > mine:
                    self._last_drill = others

    def _load_snapshots(self) -> None:
        b = self.settings.backup
        if not (b.rds_instances or b.elasticache_clusters):
            return
        if self.clock() - self._snapshots_at < SNAPSHOT_REFRESH_SECONDS and self._snapshots:
            return
        from opsagent.backup.snapshots import SnapshotManager

        self._snapshots = SnapshotManager(self.settings, clock=self.clock).newest()
        self._snapshots_at = self.clock()

    def targets(self) -> list[dict[str, Any]]:
        """Per configured target: newest backup and replica copy, RPO now (from the last refresh)."""
        now = self.clock()
        b = self.settings.backup
        region = eng.replica_region_label(self.settings) if b.replica else None
        out = []
        with self._state_lock:
            for name in b.postgres:
                newest = self._newest.get(("postgres", name))
                copy = self._newest_replica.get(("postgres", name))
                out.append({
                    "kind": "postgres", "target": name,
                    "newest_backup": _describe_manifest(newest),
                    "newest_replica": _describe_manifest(copy) if b.replica else None,
                    "rpo_seconds": now - (newest.finished if newest else self.started),
                    "replica_age_seconds": (now - (copy.finished if copy else self.started)) if b.replica else None,
                    "region": region,
                    "size_bytes": newest.size if newest else None,
                    "duration_seconds": (newest.finished - newest.started) if newest else None,
                })
            for snap in self._snapshots:
                t, rt = snap.get("time"), snap.get("replica_time")
                out.append({
                    "kind": snap.get("kind", "rds"), "target": snap.get("target"),
                    "newest_backup": {"id": snap.get("snapshot_id"), "time": iso(t), "timestamp": t, "size": None,
                                      "verified": True} if t else None,
                    "newest_replica": {"time": iso(rt), "timestamp": rt, "verified": True} if rt else None,
                    "rpo_seconds": now - (t or self.started),
                    "replica_age_seconds": (now - (rt or self.started)) if snap.get("region") else None,
                    "region": snap.get("region"),
                    "size_bytes": None, "duration_seconds": None,
                })
        return out

    def refresh(self) -> None:
        """Recompute freshness from the repositories and feed the alert engine; never raises."""
        for loader in (self._load_repositories, self._load_snapshots):
            try:
                loader()
            except Exception as exc:  # noqa: BLE001 - keep the last known state; ages keep growing
                log.warning("backup_refresh_failed", step=loader.__name__, error=describe(exc))
        try:
            self._record()
        except Exception as exc:  # noqa: BLE001
            log.error("backup_refresh_failed", step="record", error=describe(exc))

    def _record(self) -> None:
        now = self.clock()
        with self._state_lock:
            last_run, last_drill = self._last_run, list(self._last_drill)
        outcomes = {(o.kind, o.target): o for o in (last_run.outcomes if last_run else [])}
        for t in self.targets():
            details = {"kind": t["kind"], "newest": (t["newest_backup"] or {}).get("time")}
            self.store.record(CheckResult(check="backup", target=t["target"], up=True, value=t["rpo_seconds"],
                                          at=now, duration=0.0, details=details))
            if t["replica_age_seconds"] is not None:
                self.store.record(CheckResult(
                    check="replica", target=t["target"], up=True, value=t["replica_age_seconds"], at=now, duration=0.0,
                    details={"kind": t["kind"], "region": t["region"], "newest": (t["newest_replica"] or {}).get("time")}))
            outcome = outcomes.get((t["kind"], t["target"]))
            failed = outcome is not None and outcome.failed
            error = None
            if outcome is not None and failed:
                error = outcome.error or f"replication failed: {outcome.replica_error}"
            elif last_run is not None and last_run.error and t["kind"] == "postgres":
                failed, error = True, last_run.error  # the run itself failed (repository, retention)
            self.store.record(CheckResult(check="backup_run", target=t["target"], up=True, value=1.0 if failed else 0.0,
                                          at=now, duration=0.0, details={"error": error} if error else {}))
        b = self.settings.backup
        drilled = {d.target: d for d in last_drill}
        drill_targets = list(b.postgres) if b.drill_dsn else []
        drill_targets += [d.target for d in last_drill if d.target not in drill_targets]
        for target in drill_targets:
            d = drilled.get(target)
            details: dict[str, Any] = {}
            if d is not None:
                details = {"duration_seconds": d.duration_seconds, "rto_seconds": d.rto_seconds}
                if d.error:
                    details["error"] = d.error
                elif not d.within_rto:
                    details["error"] = f"drill took {d.duration_seconds:.0f}s, longer than the RTO {d.rto_seconds:.0f}s"
            self.store.record(CheckResult(check="drill", target=target, up=True,
                                          value=1.0 if d is not None and d.failed else 0.0, at=now, duration=0.0,
                                          details=details))
        self.store.touch()

    # -- reporting ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        b = self.settings.backup
        with self._state_lock:
            last_run, last_drill = self._last_run, list(self._last_drill)
        drill = None
        if last_drill:
            worst = max(last_drill, key=lambda d: d.duration_seconds)
            drill = {
                "finished_at": iso(max(d.finished for d in last_drill)),
                "passed": not any(d.failed for d in last_drill),
                "rto_achieved_seconds": worst.duration_seconds,
                "rto_target_seconds": b.rto,
                "targets": [d.to_dict() for d in last_drill],
            }
        targets = self.targets()
        return {
            "rpo_target_seconds": b.rpo,
            "rpo_achieved_seconds": max((t["rpo_seconds"] for t in targets), default=None),
            "rto_target_seconds": b.rto,
            "rto_achieved_seconds": drill["rto_achieved_seconds"] if drill else None,
            "repository": b.repository,
            "replica": b.replica,
            "lock": self.lock_mechanism,
            "targets": targets,
            "last_run": last_run.to_dict() if last_run else None,
            "last_drill": drill,
            "running": self._busy["backup"].locked(),
        }

    def collect(self) -> Iterable[Metric]:
        targets = self.targets()
        with self._state_lock:
            last_run, last_drill = self._last_run, list(self._last_drill)
        kt = ["kind", "target"]
        last_ok = GaugeMetricFamily("opsagent_backup_last_success_timestamp_seconds",
                                    "Completion time of the newest complete backup", labels=kt)
        replica = GaugeMetricFamily("opsagent_replica_last_success_timestamp_seconds",
                                    "Completion time of the newest backup verified in the replica region",
                                    labels=[*kt, "region"])
        rpo = GaugeMetricFamily("opsagent_rpo_seconds", "Age of the newest complete backup (data at risk)", labels=kt)
        size = GaugeMetricFamily("opsagent_backup_size_bytes", "Size of the newest complete backup", labels=kt)
        duration = GaugeMetricFamily("opsagent_backup_duration_seconds", "How long the newest backup took", labels=kt)
        run_ok = GaugeMetricFamily("opsagent_backup_last_run_success",
                                   "1 if the last backup and replication run of the target succeeded", labels=kt)
        for t in targets:
            labels = [t["kind"], str(t["target"])]
            newest = t["newest_backup"]
            if newest and newest.get("timestamp") is not None:
                last_ok.add_metric(labels, newest["timestamp"])
            copy = t["newest_replica"]
            if copy and copy.get("timestamp") is not None:
                replica.add_metric([*labels, str(t["region"])], copy["timestamp"])
            rpo.add_metric(labels, t["rpo_seconds"])
            if t["size_bytes"] is not None:
                size.add_metric(labels, t["size_bytes"])
            if t["duration_seconds"] is not None:
                duration.add_metric(labels, t["duration_seconds"])
        if last_run is not None:
            for o in last_run.outcomes:
                run_ok.add_metric([o.kind, o.target], 0.0 if o.failed else 1.0)
        d_dur = GaugeMetricFamily("opsagent_drill_last_duration_seconds", "Duration of the last restore drill",
                                  labels=["target"])
        d_ts = GaugeMetricFamily("opsagent_drill_last_success_timestamp_seconds",
                                 "When the last successful restore drill finished", labels=["target"])
        d_ok = GaugeMetricFamily("opsagent_drill_last_success",
                                 "1 if the last restore drill passed within the RTO", labels=["target"])
        for d in last_drill:
            d_dur.add_metric([d.target], d.duration_seconds)
            d_ok.add_metric([d.target], 0.0 if d.failed else 1.0)
            if not d.failed:
                d_ts.add_metric([d.target], d.finished)
        return [last_ok, replica, rpo, size, duration, run_ok, d_dur, d_ts, d_ok]

    def join(self, timeout: float) -> bool:
        """Wait for manually triggered runs to finish (tests, shutdown); True if none is left running."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def stop(self, timeout: float) -> None:
        """Stop promptly: kill a running pg_dump/pg_restore; its half-written backup is cleaned next run."""
        self._stop.set()
        engine = self._engine
        if engine is not None:
            engine.kill_child()
        proc = self._drill_proc
        if proc is not None:
            pgdump.kill(proc)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _describe_manifest(m: Manifest | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {"id": m.id, "time": iso(m.finished), "timestamp": m.finished, "size": m.size, "verified": m.verified,
            "checksum": m.checksum}
