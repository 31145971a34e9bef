"""One backup run: clean up, dump, replicate, apply retention (SPEC §7).

The engine knows nothing about schedules or locks; the service and the CLI
call :meth:`BackupEngine.run` while holding the fleet lock, which is what
makes cleaning up manifest-less backups safe (no other run can be writing one).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from opsagent import secrets
from opsagent.backup import pgdump
from opsagent.backup.errors import BackupError, ChecksumMismatch
from opsagent.backup.manifest import Manifest, ObjectInfo, iso
from opsagent.backup.progress import NullReporter, Reporter
from opsagent.backup.repository import Repository, open_repository
from opsagent.backup.retention import Item, select_deletions
from opsagent.config import Settings

log = structlog.get_logger("opsagent.backup")

LAST_RUN = "last_run.json"
UNLOCKED_CLEANUP_AGE = 6 * 3600.0  # without a fleet lock, only older half-written backups are surely dead


def describe(exc: BaseException) -> str:
    from opsagent.runtime.runner import describe_error

    return describe_error(exc) if not isinstance(exc, BackupError) else secrets.scrub(str(exc))


@dataclass
class TargetOutcome:
    kind: str
    target: str
    ok: bool
    error: str | None = None
    backup_id: str | None = None
    size: int | None = None
    started: float | None = None
    finished: float | None = None
    replica_ok: bool | None = None  # None: no replica configured / not attempted
    replica_error: str | None = None
    region: str | None = None

    @property
    def failed(self) -> bool:
        return not self.ok or self.replica_ok is False


@dataclass(frozen=True)
class Deletion:
    """One backup removed by retention, and from which repository."""

    id: str
    kind: str
    target: str
    repository: str
    finished: float


@dataclass
class RunReport:
    started: float
    finished: float = 0.0
    trigger: str = "manual"
    slot: str | None = None
    outcomes: list[TargetOutcome] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    deleted: list[Deletion] = field(default_factory=list)
    error: str | None = None  # a run-level failure (repository unreachable, retention failed…)
    lock: str | None = None
    interrupted: bool = False  # stopped by agent shutdown

    @property
    def ok(self) -> bool:
        return self.error is None and not any(o.failed for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["started_at"] = iso(self.started)
        data["finished_at"] = iso(self.finished) if self.finished else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        outcomes = [TargetOutcome(**o) for o in data.get("outcomes", [])]
        return cls(
            outcomes=outcomes, started=float(data.get("started") or 0.0), finished=float(data.get("finished") or 0.0),
            trigger=str(data.get("trigger") or "manual"), slot=data.get("slot"),
            cleaned=list(data.get("cleaned") or []),
            deleted=[Deletion(**d) for d in data.get("deleted") or [] if isinstance(d, dict)],
            error=data.get("error"), lock=data.get("lock"), interrupted=bool(data.get("interrupted", False)))


def postgres_dsn(settings: Settings, name: str) -> str:
    for target in settings.checks.postgres:
        if target.name == name:
            return target.dsn.get_secret_value()
    raise BackupError(f"backup.postgres names {name!r}, which is not a checks.postgres target")


def primary_repository(settings: Settings) -> Repository:
    if not settings.backup.repository:
        raise BackupError("no backup repository configured; set backup.repository (file://PATH or s3://BUCKET/PREFIX)")
    return open_repository(settings.backup.repository, settings.agent.region, settings.backup.kms_key_id)


def replica_repository(settings: Settings) -> Repository | None:
    b = settings.backup
    if not b.replica:
        return None
    return open_repository(b.replica, b.replica_region or settings.agent.region, b.replica_kms_key_id)


def replica_region_label(settings: Settings) -> str:
    return settings.backup.replica_region or ("replica" if (settings.backup.replica or "").startswith("file:") else settings.agent.region)


def replicate(manifest: Manifest, source: Repository, dest: Repository, *, now: float, region: str | None,
              reporter: Reporter | None = None) -> Manifest:
    """Copy one complete backup, refusing bytes that do not match its manifest; manifest last."""
    reporter = reporter or NullReporter()
    copied: list[ObjectInfo] = []
    for obj in manifest.objects:
        reporter.stage(f"replicating {manifest.id}/{obj.name}", obj.size)
        writer = dest.writer(manifest.id, obj.name)
        digest = hashlib.sha256()
        done = 0
        try:
            for chunk in source.read(manifest.id, obj.name):
                digest.update(chunk)
                writer.write(chunk)
                done += len(chunk)
                reporter.advance(done)
            if digest.hexdigest() != obj.sha256:
                raise ChecksumMismatch(manifest.id, obj.name, obj.sha256, digest.hexdigest(), source.url)
            info = writer.commit()  # the replica store confirms what it holds
            if info.sha256 != obj.sha256:
                raise ChecksumMismatch(manifest.id, obj.name, obj.sha256, info.sha256, dest.url)
        except BaseException:
            writer.abort()
            raise
        copied.append(info)
    replica_manifest = replace(manifest.as_replica(now, region), objects=tuple(copied))
    dest.write_manifest(replica_manifest)
    log.info("backup_replicated", backup_id=manifest.id, replica=dest.url, region=region)
    return replica_manifest


def retention_policy(settings: Settings) -> dict[str, float]:
    r = settings.backup.retention
    return {"hourly": r.hourly, "daily": r.daily, "weekly": r.weekly, "manual_keep": r.manual_keep}


def retention_items(manifests: list[Manifest]) -> list[Item]:
    return [Item(id=m.id, target=f"{m.kind}/{m.target}", time=m.finished, manual=m.trigger == "manual")
            for m in manifests]


def apply_retention(repo: Repository, settings: Settings, now: float) -> list[Deletion]:
    manifests = {m.id: m for m in repo.list()}
    doomed = select_deletions(retention_items(list(manifests.values())), retention_policy(settings), now)
    out = []
    for backup_id in doomed:
        m = manifests[backup_id]
        repo.delete(backup_id)
        log.info("backup_expired", backup_id=backup_id, kind=m.kind, target=m.target, repository=repo.url)
        out.append(Deletion(id=backup_id, kind=m.kind, target=m.target, repository=repo.url, finished=m.finished))
    return out


class _SnapshotsOnly(Exception):
    """No repository and no pg_dump targets: only RDS/ElastiCache snapshots to take."""


class BackupEngine:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time,
                 reporter: Reporter | None = None, stop: threading.Event | None = None,
                 exclusive: bool = True) -> None:
        self.settings = settings
        self.exclusive = exclusive  # False: no fleet lock could be had (see agent.backup.lock)
        self.clock = clock
        self.reporter = reporter or NullReporter()
        self.stop = stop or threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._proc_lock = threading.Lock()
        self.trigger = "manual"

    def _on_proc(self, proc: subprocess.Popen[bytes] | None) -> None:
        with self._proc_lock:
            self._proc = proc
        if proc is not None and self.stop.is_set():
            pgdump.kill(proc)

    def kill_child(self) -> None:
        """Stop a running pg_dump (agent shutdown); the half-written backup is cleaned next run."""
        with self._proc_lock:
            proc = self._proc
        if proc is not None:
            pgdump.kill(proc)

    def run(self, slot: datetime | None = None, trigger: str = "manual", *, only: list[str] | None = None,
            publish: bool = True) -> RunReport:
        """Back up everything ``backup`` names, replicate, apply retention; never raises.

        ``only`` (a retry within the slot) limits the run to those postgres targets and skips the
        snapshots, which the slot's first attempt took; ``publish=False`` keeps the outcome private
        until the slot's attempts are spent (so BackupFailed fires once, on the last one).
        """
        b = self.settings.backup
        self.trigger = trigger  # recorded in each manifest: retention keeps hand-taken backups for manual_keep
        report = RunReport(started=self.clock(), trigger=trigger, slot=slot.isoformat() if slot else None)
        try:
            if not b.repository and not b.postgres:
                raise _SnapshotsOnly
            primary = primary_repository(self.settings)
            replica = replica_repository(self.settings)
            # Under the fleet lock nothing else is writing; without one, spare what may still be in flight.
            keep_after = None if self.exclusive else self.clock() - UNLOCKED_CLEANUP_AGE
            report.cleaned = primary.cleanup_incomplete(keep_after)
            if replica is not None:
                report.cleaned += replica.cleanup_incomplete(keep_after)
            for backup_id in report.cleaned:
                log.info("backup_incomplete_removed", backup_id=backup_id)
            for name in b.postgres:
                if self.stop.is_set():
                    break
                if only is None or name in only:
                    report.outcomes.append(self._postgres(name, primary, replica))
            if replica is not None and not self.stop.is_set():
                self._catch_up(primary, replica, report)
            if not self.stop.is_set():
                report.deleted = apply_retention(primary, self.settings, self.clock())
                if replica is not None:
                    report.deleted += apply_retention(replica, self.settings, self.clock())
        except _SnapshotsOnly:
            pass
        except Exception as exc:  # noqa: BLE001 - a run reports, it does not crash the daemon
            report.error = describe(exc)
            log.error("backup_run_failed", error=report.error)
        if not self.stop.is_set() and only is None:
            report.outcomes.extend(self._snapshots(slot))
        report.finished = self.clock()
        if self.stop.is_set():
            # A shutdown (rolling deploy) is not a backup failure: nothing is published, the slot stays
            # open, and the half-written backup is cleaned by the next run.
            report.interrupted = True
            log.warning("backup_run_interrupted", slot=report.slot)
            return report
        if publish:
            self._publish(report)
        return report

    def publish(self, report: RunReport) -> None:
        """Share a finished slot's outcome (the last attempt's, merged) with the fleet."""
        self._publish(report)

    def _postgres(self, name: str, primary: Repository, replica: Repository | None) -> TargetOutcome:
        outcome = TargetOutcome(kind="postgres", target=name, ok=False, started=self.clock())
        try:
            dsn = postgres_dsn(self.settings, name)
            self.reporter.stage(f"backing up postgres {name}")
            b = self.settings.backup
            manifest = pgdump.dump(dsn, name, primary, compression=b.compression, level=b.compression_level,
                                   jobs=b.jobs, tool_override=b.pg_dump_path,
                                   progress=self.reporter.advance, on_proc=self._on_proc, clock=self.clock,
                                   trigger=self.trigger)
            outcome.ok, outcome.backup_id, outcome.size = True, manifest.id, manifest.size
        except Exception as exc:  # noqa: BLE001 - one target's failure does not stop the others
            outcome.error = describe(exc)
            log.error("backup_failed", kind="postgres", target=name, error=outcome.error)
        outcome.finished = self.clock()
        if outcome.ok and replica is not None:
            outcome.region = replica_region_label(self.settings)
            try:
                stored = primary.manifest(outcome.backup_id or "")
                if stored is None:
                    raise BackupError(f"backup {outcome.backup_id} vanished before replication")
                manifest = stored
                replicate(manifest, primary, replica, now=self.clock(), region=outcome.region, reporter=self.reporter)
                outcome.replica_ok = True
            except Exception as exc:  # noqa: BLE001
                outcome.replica_ok, outcome.replica_error = False, describe(exc)
                log.error("backup_replication_failed", kind="postgres", target=name, error=outcome.replica_error)
        return outcome

    def _catch_up(self, primary: Repository, replica: Repository, report: RunReport) -> None:
        """Replicate older complete backups that a failed run left without a copy (newest first)."""
        copies = replica.list()
        have = {m.id for m in copies}
        region = replica_region_label(self.settings)
        originals = primary.list()
        newest: dict[tuple[str, str], float] = {}
        for m in originals:
            newest[(m.kind, m.target)] = max(newest.get((m.kind, m.target), 0.0), m.finished)
        # Copy only what the replica's retention would keep: no point shipping a backup to delete it.
        missing = [m for m in originals if m.id not in have]
        candidates = retention_items([*copies, *missing])
        doomed = set(select_deletions(candidates, retention_policy(self.settings), self.clock()))
        for manifest in sorted(missing, key=lambda m: m.finished, reverse=True):
            if manifest.id in doomed or self.stop.is_set():
                continue
            try:
                replicate(manifest, primary, replica, now=self.clock(), region=region, reporter=self.reporter)
            except Exception as exc:  # noqa: BLE001
                error = describe(exc)
                log.error("backup_replication_failed", backup_id=manifest.id, error=error)
                if manifest.finished >= newest[(manifest.kind, manifest.target)]:
                    for o in report.outcomes:
                        if (o.kind, o.target) == (manifest.kind, manifest.target):
                            o.replica_ok, o.replica_error = False, error

    def _snapshots(self, slot: datetime | None) -> list[TargetOutcome]:
        b = self.settings.backup
        if not (b.rds_instances or b.elasticache_clusters):
            return []
        when = slot or datetime.fromtimestamp(self.clock(), UTC)
        try:
            from opsagent.backup.snapshots import SnapshotManager

            manager = SnapshotManager(self.settings, clock=self.clock)
            self.reporter.stage("taking RDS/ElastiCache snapshots")
            results = manager.run_slot(when)
            manager.apply_retention(datetime.fromtimestamp(self.clock(), UTC))
        except Exception as exc:  # noqa: BLE001
            error = describe(exc)
            log.error("snapshot_run_failed", error=error)
            return [TargetOutcome(kind=k, target=t, ok=False, error=error)
                    for k, ids in (("rds", b.rds_instances), ("elasticache", b.elasticache_clusters)) for t in ids]
        return [TargetOutcome(kind=r.kind, target=r.target, ok=r.ok, error=r.error, backup_id=r.snapshot_id,
                              started=r.started, finished=r.finished, replica_ok=r.replica_ok,
                              region=r.replica_region) for r in results]

    def _publish(self, report: RunReport) -> None:
        """Share the outcome with the fleet (every agent alarms on the same last run)."""
        if not self.settings.backup.repository:
            return
        try:
            primary_repository(self.settings).put_state(LAST_RUN, json.dumps(report.to_dict()).encode())
        except Exception as exc:  # noqa: BLE001 - the local copy still reports it
            log.warning("backup_state_write_failed", error=describe(exc))
