"""The PostgreSQL restore drill: prove the newest replica backup restores, and how fast.

Restore into a fresh scratch database named ``opsagent_drill_<utc stamp>_<hex>``
on ``backup.drill_dsn`` (the DSN names a server and a maintenance database; the
drill only ever writes into the scratch database it creates), compare the
restored tables with the row counts and checksums recorded at backup time, time
it against ``backup.rto``, and drop the scratch database in ``finally``.
Scratch databases left by a killed drill carry the prefix and are dropped by the
next drill before it starts.
"""

from __future__ import annotations

import json
import secrets as _random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog
from psycopg import sql

from opsagent.backup import pgdump, pgstats, pgtools
from opsagent.backup.engine import describe, primary_repository, replica_repository
from opsagent.backup.errors import BackupError, TargetRefused
from opsagent.backup.freshness import SKEW_TOLERANCE
from opsagent.backup.manifest import Manifest, iso
from opsagent.backup.progress import NullReporter, Reporter
from opsagent.backup.restore import target_on_server
from opsagent.config import Settings
from opsagent.config.backup_options import Watermark

log = structlog.get_logger("opsagent.backup")

SCRATCH_PREFIX = "opsagent_drill_"
LAST_DRILL = "last_drill.json"


@dataclass
class DrillReport:
    target: str
    ok: bool
    error: str | None
    started: float
    finished: float
    duration_seconds: float
    rto_seconds: float
    backup_id: str | None = None
    backup_time: float | None = None
    source: str | None = None  # which repository the backup came from
    scratch_database: str | None = None
    tables: int = 0
    kind: str = "postgres"
    watermark: float | None = None  # newest watermark found in the restored copy (backup.watermark)
    rpo_proven_seconds: float | None = None  # drill end minus that watermark

    @property
    def within_rto(self) -> bool:
        return self.duration_seconds <= self.rto_seconds

    @property
    def failed(self) -> bool:
        return not self.ok or not self.within_rto

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(within_rto=self.within_rto, passed=not self.failed, finished_at=iso(self.finished))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DrillReport:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def configured_endpoints(settings: Settings) -> set[tuple[str, int, str]]:
    """(host, port, dbname) of every configured database target: never a restore destination."""
    out = set()
    for target in list(settings.checks.postgres) + list(settings.checks.pgbouncer):
        try:
            out.add(pgtools.endpoint(target.dsn.get_secret_value()))
        except Exception:  # noqa: BLE001 - an unparsable DSN cannot match anything
            continue
    return out


def read_watermark(admin_dsn: str, database: str, watermark: Watermark) -> float:
    """The newest watermark in the restored copy, as unix seconds; BackupError naming what is wrong."""
    if watermark.query is not None:
        query: sql.SQL | sql.Composed = sql.SQL(watermark.query)  # the operator's own SELECT, run read-only
        what = "backup.watermark query"
    else:
        schema, _, table = (watermark.table or "").rpartition(".")
        name = sql.Identifier(schema, table) if schema else sql.Identifier(table)
        query = sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(watermark.column or ""), name)
        what = f"backup.watermark {watermark.table}.{watermark.column}"
    conn = pgtools.connect(admin_dsn, dbname=database)
    try:
        conn.read_only = True
        row = conn.execute(query).fetchone()
    except psycopg.Error as exc:
        raise BackupError(f"{what} cannot be read in the restored copy: {describe(exc)}") from None
    finally:
        conn.close()
    value = row[0] if row else None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise BackupError(f"{what} gave {value!r} in the restored copy, not a timestamp (an empty table has no "
                      "watermark)")


def merge_reports(earlier: list[DrillReport], newer: list[DrillReport]) -> list[DrillReport]:
    """The newest report per (kind, target): a monthly PITR drill does not erase the daily drills' results."""
    fresh = {(r.kind, r.target) for r in newer}
    return [r for r in earlier if (r.kind, r.target) not in fresh] + list(newer)


def rds_drill_enabled(settings: Settings) -> bool:
    """The RDS snapshot drill (the snapshot engineer's) runs when asked for and RDS ids are configured."""
    return bool(getattr(settings.backup, "rds_drill", False) and settings.backup.rds_instances)


def drop_leftovers(admin_dsn: str) -> list[str]:
    """Drop scratch databases a killed drill left behind (they all carry the prefix)."""
    conn = pgtools.connect(admin_dsn)
    try:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (SCRATCH_PREFIX.replace("_", r"\_") + "%",)
        ).fetchall()
        names = [str(r[0]) for r in rows]
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            log.info("drill_leftover_dropped", database=name)
        return names
    finally:
        conn.close()


def scratch_name(now: float) -> str:
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d%H%M%S")
    return f"{SCRATCH_PREFIX}{stamp}_{_random.token_hex(3)}"


class Drill:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time, reporter: Reporter | None = None,
                 on_proc: pgdump.ProcHook | None = None, stop: threading.Event | None = None,
                 kinds: frozenset[str] = frozenset({"postgres", "rds"})) -> None:
        self.settings = settings
        self.kinds = kinds  # which drills: postgres, rds (snapshot), rds_pitr (point in time; monthly)
        self.clock = clock
        self.reporter = reporter or NullReporter()
        self.on_proc = on_proc
        self.stop = stop or threading.Event()

    def run(self) -> list[DrillReport]:
        """One drill per postgres backup target, plus the RDS drill when RDS is configured; never raises."""
        b = self.settings.backup
        reports: list[DrillReport] = []
        if "postgres" in self.kinds and b.postgres and (b.drill_dsn is not None or not rds_drill_enabled(self.settings)):
            leftovers_done = False
            for target in b.postgres:
                if self.stop.is_set():
                    break
                started = self.clock()
                report = DrillReport(target=target, ok=False, error=None, started=started, finished=started,
                                     duration_seconds=0.0, rto_seconds=b.rto)
                try:
                    if b.drill_dsn is None:
                        raise BackupError("backup.drill_dsn is not set; name a server where drills may create "
                                          "scratch databases")
                    if not leftovers_done:
                        drop_leftovers(b.drill_dsn.get_secret_value())
                        leftovers_done = True
                    self._postgres(target, report)
                    report.ok = True
                except Exception as exc:  # noqa: BLE001 - a drill reports; it never crashes the agent
                    report.error = describe(exc)
                    log.error("drill_failed", target=target, error=report.error)
                report.finished = self.clock()
                report.duration_seconds = report.finished - started
                if report.watermark is not None:
                    report.rpo_proven_seconds = report.finished - report.watermark  # drill end − newest watermark
                if report.ok and not report.within_rto:
                    log.warning("drill_exceeded_rto", target=target, duration=report.duration_seconds, rto=b.rto)
                reports.append(report)
        if "rds" in self.kinds and rds_drill_enabled(self.settings) and not self.stop.is_set():
            reports.extend(self._rds())
        if "rds_pitr" in self.kinds and b.pitr_drill and b.rds_instances and not self.stop.is_set():
            reports.append(self._pitr())
        if self.stop.is_set():
            # Shutdown is not a failed drill; the scratch database is dropped by the next drill.
            log.warning("drill_interrupted")
            return []
        self._publish(reports)
        return reports

    def _newest(self, target: str, report: DrillReport) -> tuple[Any, Manifest]:
        replica = replica_repository(self.settings)
        repo = replica if replica is not None else primary_repository(self.settings)
        report.source = repo.url
        # A manifest stamped in the future (a skewed fleet member's clock) is not "the newest" by its time.
        horizon = self.clock() + SKEW_TOLERANCE
        candidates = [m for m in repo.list() if m.kind == "postgres" and m.target == target and m.verified
                      and m.finished <= horizon]
        if not candidates:
            where = "replica" if replica is not None else "primary"
            raise BackupError(f"no verified backup of {target} in the {where} repository {repo.url}")
        return repo, max(candidates, key=lambda m: m.finished)

    def _postgres(self, target: str, report: DrillReport) -> None:
        admin_dsn = self.settings.backup.drill_dsn.get_secret_value()  # type: ignore[union-attr]
        repo, manifest = self._newest(target, report)
        report.backup_id, report.backup_time = manifest.id, manifest.finished
        name = scratch_name(self.clock())
        host, port, _ = pgtools.endpoint(admin_dsn)
        if (host, port, name) in configured_endpoints(self.settings):
            raise TargetRefused(f"scratch database {name} on {host}:{port} is a configured target; refusing to drill")
        if not self.settings.backup.drill_on_target_server:
            same = target_on_server(self.settings, admin_dsn)
            if same is not None:
                raise TargetRefused(f"backup.drill_dsn is on the server of target {same!r} (same system_identifier, "
                                    "however the DSNs are spelled); set backup.drill_on_target_server: true to allow it")
        report.scratch_database = name
        admin = pgtools.connect(admin_dsn)
        try:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            log.info("drill_started", target=target, backup_id=manifest.id, scratch_database=name)
            obj = manifest.objects[0]
            self.reporter.stage(f"restoring {manifest.id} into scratch database {name}", obj.size)
            result = pgdump.restore_backup(repo, manifest, admin_dsn, dbname=name, jobs=self.settings.backup.jobs,
                                           tool_override=self.settings.backup.pg_dump_path,
                                           progress=self.reporter.advance, on_proc=self.on_proc)
            if result.sha256 != obj.sha256 or result.size != obj.size:
                raise BackupError(
                    f"backup {manifest.id} is damaged in {repo.url}: object {obj.name} has SHA-256 "
                    f"{result.sha256[:16]}… ({result.size} bytes), the manifest recorded {obj.sha256[:16]}… "
                    f"({obj.size} bytes)" + (f"; {result.pg_restore_error}" if result.pg_restore_error else "")
                )
            if result.pg_restore_error:
                raise BackupError(f"restore of {manifest.id} failed: {result.pg_restore_error}")
            self.reporter.stage(f"verifying {len(manifest.tables)} tables against the backup's record")
            problems = pgstats.compare(manifest.tables, pgdump.stats_of(
                admin_dsn, dbname=name, methods={table: stats.method for table, stats in manifest.tables.items()}))
            if problems:
                raise BackupError(f"restored {manifest.id} does not match what was backed up: " + "; ".join(problems[:5]))
            report.tables = len(manifest.tables)
            watermark = self.settings.backup.watermark.get(target)
            if watermark is not None:
                report.watermark = read_watermark(admin_dsn, name, watermark)
                report.rpo_proven_seconds = self.clock() - report.watermark
                log.info("drill_rpo_proven", target=target, watermark=iso(report.watermark),
                         rpo_proven_seconds=round(report.rpo_proven_seconds, 3))
        finally:
            try:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            except Exception as exc:  # noqa: BLE001 - the next drill drops it by prefix
                log.warning("drill_scratch_drop_failed", database=name, error=describe(exc))
            admin.close()

    def _rds(self) -> list[DrillReport]:
        b = self.settings.backup
        now = datetime.fromtimestamp(self.clock(), UTC)
        try:
            from opsagent.backup.rds_drill import run_rds_drill

            self.reporter.stage("RDS restore drill")
            out = run_rds_drill(self.settings, now)
            return [DrillReport(target=out.target, ok=out.ok, error=out.error, started=out.started,
                                finished=out.finished, duration_seconds=out.duration_seconds, rto_seconds=b.rto,
                                kind="rds")]
        except Exception as exc:  # noqa: BLE001
            error = describe(exc)
            log.error("drill_failed", target=b.rds_instances[0], error=error)
            at = self.clock()
            return [DrillReport(target=b.rds_instances[0], ok=False, error=error, started=at, finished=at,
                                duration_seconds=0.0, rto_seconds=b.rto, kind="rds")]

    def _pitr(self) -> DrillReport:
        from opsagent.backup.pitr_drill import run_pitr_drill

        self.reporter.stage("RDS point-in-time restore drill")
        out = run_pitr_drill(self.settings, datetime.fromtimestamp(self.clock(), UTC))
        return DrillReport(target=f"{out.target}-pitr", ok=out.ok, error=out.error, started=out.started,
                           finished=out.finished, duration_seconds=out.duration_seconds,
                           rto_seconds=self.settings.backup.rto, kind="rds_pitr")

    def _publish(self, reports: list[DrillReport]) -> None:
        if not reports:
            return
        try:
            repo = primary_repository(self.settings)
            raw = repo.get_state(LAST_DRILL)
            earlier = [DrillReport.from_dict(d) for d in json.loads(raw)] if raw else []
            repo.put_state(LAST_DRILL, json.dumps([r.to_dict() for r in merge_reports(earlier, reports)]).encode())
        except Exception as exc:  # noqa: BLE001
            log.warning("drill_state_write_failed", error=describe(exc))
