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
from prometheus_client.core import Metric

from opsagent.backup import engine as eng
from opsagent.backup import pgdump
from opsagent.backup.audit import Control, posture_by_target, run_audit
from opsagent.backup.drill import LAST_DRILL, Drill, DrillReport, merge_reports, rds_drill_enabled
from opsagent.backup.engine import BackupEngine, RunReport, describe
from opsagent.backup.freshness import Freshness, newest_by_target, postgres_row, snapshot_row
from opsagent.backup.lock import FleetLock
from opsagent.backup.manifest import Manifest, iso
from opsagent.backup.metrics import backup_metrics
from opsagent.backup.pitr import ClientFactory, PitrReading
from opsagent.backup.pitr import read_all as read_pitr
from opsagent.backup.repository import Repository
from opsagent.backup.retry import run_with_retries
from opsagent.backup.schedule import (
    SLOT_PREFIX,
    current_slot,
    expired_markers,
    slot_end,
    slot_key,
)
from opsagent.config import Settings
from opsagent.cron import CrontabTrigger, cron_trigger, next_fire
from opsagent.runtime.results import CheckResult, ResultStore

log = structlog.get_logger("opsagent.backup")

REFRESH_SECONDS = 30.0
SNAPSHOT_REFRESH_SECONDS = 300.0
POSTURE_REFRESH_SECONDS = 900.0


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
    return FleetLock(f"{job}:{b.repository or 'snapshots'}", dsn, lock_file, required=b.lock_dsn is not None)


class BackupService:
    def __init__(self, settings: Settings, store: ResultStore, clock: Callable[[], float] = time.time,
                 clients: ClientFactory | None = None) -> None:
        self.settings = settings
        self.clients = clients  # AWS client factory (tests wrap moto's where it cannot produce a state)
        self.store = store
        self.clock = clock
        self.started = clock()
        self._stop = threading.Event()
        self._busy = {"backup": threading.Lock(), "drill": threading.Lock(), "pitr_drill": threading.Lock()}
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
        self._future: dict[tuple[str, str], list[str]] = {}
        self._pitr: list[PitrReading] = []
        self._pitr_at = 0.0
        self._posture: list[Control] = []
        self._posture_at = 0.0

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
        if b.enabled and b.pitr_drill and b.pitr_drill_schedule and b.rds_instances:
            pitr_trigger = cron_trigger(b.pitr_drill_schedule)
            out.append(("pitr_drill", pitr_trigger, lambda: self._scheduled("pitr_drill", pitr_trigger)))
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

    def _scheduled(self, job: str, trigger: CrontabTrigger) -> None:
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
                if lock.unreachable:
                    log.error("backup_slot_skipped", job=job, slot=slot.isoformat(), reason=lock.unreachable)
                else:
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
                    self._scheduled_backup(slot, lock.mechanism, lock.exclusive)
                else:
                    self._run_drill(frozenset({"rds_pitr"}) if job == "pitr_drill" else frozenset({"postgres", "rds"}))
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

    def _run_backup(self, slot: datetime | None, trigger: str, mechanism: str | None,
                    only: list[str] | None = None, final: bool = True, exclusive: bool = True) -> RunReport:
        engine = BackupEngine(self.settings, clock=self.clock, stop=self._stop, exclusive=exclusive)
        self._engine = engine
        try:
            report = engine.run(slot, trigger, only=only, publish=final)
        finally:
            self._engine = None
        report.lock = mechanism
        if report.interrupted or not final:
            return report
        with self._state_lock:
            self._last_run = report
            self._snapshots_at = 0.0  # re-read the snapshots this run took
        return report

    def _scheduled_backup(self, slot: datetime, mechanism: str | None, exclusive: bool) -> RunReport:
        """The slot's run with retries (:mod:`opsagent.backup.retry`); published once, when settled."""
        b = self.settings.backup
        end = slot_end(cron_trigger(b.schedule), slot).timestamp()
        report = run_with_retries(lambda only: self._run_backup(slot, "schedule", mechanism, only, final=False,
                                                                exclusive=exclusive),
                                  list(b.postgres), b.retry, slot_end=end, clock=self.clock, stop=self._stop,
                                  slot=slot.isoformat())
        if report.interrupted or self._stop.is_set():
            return report
        BackupEngine(self.settings, clock=self.clock).publish(report)
        with self._state_lock:
            self._last_run = report
            self._snapshots_at = 0.0
        return report

    def _run_drill(self, kinds: frozenset[str] = frozenset({"postgres", "rds"})) -> list[DrillReport]:
        drill = Drill(self.settings, clock=self.clock, stop=self._stop, on_proc=self._remember_proc, kinds=kinds)
        reports = drill.run()
        if reports:  # empty when interrupted by shutdown
            with self._state_lock:
                self._last_drill = merge_reports(self._last_drill, reports)
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
                    log.warning("backup_manual_run_skipped",
                                reason=lock.unreachable or "another agent holds the backup lock")
                    return
                try:
                    self._run_backup(None, "manual", lock.mechanism, exclusive=lock.exclusive)
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
        now = self.clock()
        newest, future = newest_by_target(primary.list(), now)
        shared_run = primary.get_state(eng.LAST_RUN)
        shared_drill = primary.get_state(LAST_DRILL)
        newest_replica: dict[tuple[str, str], Manifest] = {}
        if replica is not None:
            newest_replica, _ = newest_by_target(replica.list(), now, verified_only=True)
        with self._state_lock:
            self._newest, self._newest_replica, self._future = newest, newest_replica, future
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

    def rows(self) -> list[Freshness]:
        """Per configured target: newest backup and replica copy, RPO now (from the last refresh)."""
        now = self.clock()
        b = self.settings.backup
        region = eng.replica_region_label(self.settings) if b.replica else None
        with self._state_lock:
            out = [postgres_row(name, self._newest.get(("postgres", name)), self._newest_replica.get(("postgres", name)),
                                now=now, started=self.started, replica_configured=bool(b.replica), region=region,
                                future=self._future.get(("postgres", name), []))
                   for name in b.postgres]
            out += [snapshot_row(snap, now=now, started=self.started) for snap in self._snapshots]
        return out

    def targets(self) -> list[dict[str, Any]]:
        """The rows as /status shows them, with the PITR and proven-RPO figures beside the logical RPO."""
        with self._state_lock:
            pitr = {r.target: r for r in self._pitr}
            proven = {d.target: d.rpo_proven_seconds for d in self._last_drill if d.kind == "postgres"}
        out = []
        for row in self.rows():
            item = row.to_dict()
            if row.kind == "postgres":
                item["rpo_proven_seconds"] = proven.get(row.target)
            reading = pitr.get(row.target) if row.kind == "rds" else None
            if reading is not None:
                item.update(pitr_lag_seconds=reading.lag_seconds, pitr_window_seconds=reading.window_seconds,
                            pitr_replica_lag_seconds=reading.replica_lag_seconds)
            out.append(item)
        return out

    def _load_pitr(self) -> None:
        b = self.settings.backup
        if not b.rds_instances or (self.clock() - self._pitr_at < SNAPSHOT_REFRESH_SECONDS and self._pitr):
            return
        readings = read_pitr(self.settings, self.clock(), self.clients) if self.clients else read_pitr(
            self.settings, self.clock())
        with self._state_lock:
            self._pitr, self._pitr_at = readings, self.clock()

    def _load_posture(self) -> None:
        if self.clock() - self._posture_at < POSTURE_REFRESH_SECONDS and self._posture:
            return
        with self._state_lock:
            drills = list(self._last_drill)
            newest_replica = dict(self._newest_replica)
        rows = run_audit(self.settings, self.clock(), last_drill=drills, newest_replica=newest_replica,
                         clients=self.clients)
        with self._state_lock:
            self._posture, self._posture_at = rows, self.clock()

    def refresh(self) -> None:
        """Recompute freshness from the repositories and feed the alert engine; never raises."""
        for loader in (self._load_repositories, self._load_snapshots, self._load_pitr, self._load_posture):
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
            pitr, posture = list(self._pitr), list(self._posture)
        outcomes = {(o.kind, o.target): o for o in (last_run.outcomes if last_run else [])}
        for t in self.rows():
            details: dict[str, Any] = {"kind": t.kind, "newest": t.newest.to_dict()["time"] if t.newest else None}
            self.store.record(CheckResult(check="backup", target=t.target, up=True, value=t.age_for_alarm,
                                          at=now, duration=0.0, details=details))
            if t.replica_age_for_alarm is not None:
                self.store.record(CheckResult(
                    check="replica", target=t.target, up=True, value=t.replica_age_for_alarm, at=now, duration=0.0,
                    details={"kind": t.kind, "region": t.region, "newest": t.replica.to_dict()["time"] if t.replica else None}))
            if t.kind == "postgres":
                skew = {"error": f"{len(t.future)} backup(s) stamped in the future: {', '.join(t.future[:3])}"} \
                    if t.future else {}
                self.store.record(CheckResult(check="backup_skew", target=t.target, up=True,
                                              value=1.0 if t.future else 0.0, at=now, duration=0.0, details=skew))
            outcome = outcomes.get((t.kind, t.target))
            failed = outcome is not None and outcome.failed
            error = None
            if outcome is not None and failed:
                error = outcome.error or f"replication failed: {outcome.replica_error}"
            elif last_run is not None and last_run.error and t.kind == "postgres":
                failed, error = True, last_run.error  # the run itself failed (repository, retention)
            self.store.record(CheckResult(check="backup_run", target=t.target, up=True, value=1.0 if failed else 0.0,
                                          at=now, duration=0.0, details={"error": error} if error else {}))
        for r in pitr:
            if r.lag_seconds is not None:  # unknown lag (PITR off, API down) is the audit's to report
                self.store.record(CheckResult(check="pitr", target=r.target, up=True, value=r.lag_seconds, at=now,
                                              duration=0.0, details=r.to_dict()))
        for target, failing in posture_by_target(posture).items():
            self.store.record(CheckResult(check="posture", target=target, up=True, value=1.0 if failing else 0.0,
                                          at=now, duration=0.0,
                                          details={"error": "; ".join(failing)} if failing else {}))
        b = self.settings.backup
        drilled = {d.target: d for d in last_drill}
        drill_targets = list(b.postgres) if b.drill_dsn else []
        drill_targets += [d.target for d in last_drill if d.target not in drill_targets]
        for target in drill_targets:
            d = drilled.get(target)
            drill_details: dict[str, Any] = {}
            if d is not None:
                drill_details = {"duration_seconds": d.duration_seconds, "rto_seconds": d.rto_seconds}
                if d.error:
                    drill_details["error"] = d.error
                elif not d.within_rto:
                    drill_details["error"] = (f"drill took {d.duration_seconds:.0f}s, longer than the RTO "
                                              f"{d.rto_seconds:.0f}s")
            self.store.record(CheckResult(check="drill", target=target, up=True,
                                          value=1.0 if d is not None and d.failed else 0.0, at=now, duration=0.0,
                                          details=drill_details))
        self.store.touch()

    # -- reporting ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        b = self.settings.backup
        with self._state_lock:
            last_run, last_drill = self._last_run, list(self._last_drill)
            pitr, posture = list(self._pitr), list(self._posture)
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
        known = [t["rpo_seconds"] for t in targets if t["rpo_seconds"] is not None]
        now = datetime.fromtimestamp(self.clock(), UTC)
        jobs = {job for job, _trigger, _fn in self.jobs()}
        return {
            "rpo_target_seconds": b.rpo,
            # None when no complete backup exists at all; else the worst target's (a target with none counts
            # as unknown, shown per target as rpo_seconds: null).
            "rpo_achieved_seconds": max(known) if known else None,
            "rto_target_seconds": b.rto,
            "rto_achieved_seconds": drill["rto_achieved_seconds"] if drill else None,
            "next_run_at": next_fire(b.schedule, now).timestamp() if "backup" in jobs else None,
            "next_drill_at": next_fire(b.drill_schedule, now).timestamp() if "drill" in jobs and b.drill_schedule
            else None,
            "repository": b.repository,
            "replica": b.replica,
            "lock": self.lock_mechanism,
            "targets": targets,
            "pitr": [r.to_dict() for r in pitr],
            "posture": {"compliant": all(c.passed for c in posture), "failing": [c.to_dict() for c in posture
                                                                                 if not c.passed]} if posture else None,
            "last_run": last_run.to_dict() if last_run else None,
            "last_drill": drill,
            "running": self._busy["backup"].locked(),
        }

    def collect(self) -> Iterable[Metric]:
        with self._state_lock:
            last_run, last_drill = self._last_run, list(self._last_drill)
            pitr, posture = list(self._pitr), list(self._posture)
        return backup_metrics(self.rows(), last_run, last_drill, pitr, posture)

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
