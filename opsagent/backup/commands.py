"""What the CLI's backup, restore and drill commands do: print, and return the exit status.

Human output goes to stdout as a table; ``--json`` prints exactly one JSON
document on stdout. Progress and errors go to stderr. Any failure is one
scrubbed line on stderr and exit status 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from opsagent import secrets, textio
from opsagent.backup import engine as eng
from opsagent.backup import pgdump, pgtools
from opsagent.backup.drill import Drill, rds_drill_enabled
from opsagent.backup.engine import BackupEngine, describe
from opsagent.backup.errors import BackupError, NotFound
from opsagent.backup.manifest import Manifest, iso, valid_id
from opsagent.backup.progress import NullReporter, Reporter, TerminalReporter
from opsagent.backup.repository import Repository
from opsagent.backup.service import fleet_lock
from opsagent.config import Settings

LOCK_WAIT_SECONDS = 600.0


def _reporter(json_out: bool) -> Reporter:
    return TerminalReporter(sys.stderr) if not json_out or sys.stderr.isatty() else NullReporter()


def _fail(message: str) -> int:
    print(f"error: {secrets.scrub(message)}", file=sys.stderr)
    return 1


def _guarded(fn: Callable[[], int]) -> int:
    try:
        return fn()
    except BackupError as exc:
        return _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - the CLI prints one line, never a traceback
        return _fail(describe(exc))


def _table(rows: list[list[str]], header: list[str]) -> str:
    return textio.table(header, [[str(c) for c in row] for row in rows])


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


# -- backup run ----------------------------------------------------------------------------------


def backup_run(settings: Settings, *, json_out: bool) -> int:
    def work() -> int:
        reporter = _reporter(json_out)
        lock = fleet_lock(settings, "backup")
        if not lock.acquire(0):
            if lock.unreachable:
                return _fail(f"not backing up: {lock.unreachable}; without it another agent may be running")
            reporter.stage("another agent is running a backup; waiting for it to finish")
            if not lock.acquire(LOCK_WAIT_SECONDS):
                return _fail(lock.unreachable or
                             f"another backup run still holds the fleet lock after {LOCK_WAIT_SECONDS:.0f}s")
        try:
            report = BackupEngine(settings, reporter=reporter, exclusive=lock.exclusive).run(None, "manual")
        finally:
            lock.release()
            reporter.finish()
        report.lock = lock.mechanism
        if json_out:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            rows = []
            for o in report.outcomes:
                replica = {True: "ok", False: "FAILED", None: "-"}[o.replica_ok]
                rows.append([o.kind, o.target, "ok" if o.ok else "FAILED", o.backup_id or "-", _size(o.size), replica,
                             o.error or o.replica_error or ""])
            if rows:
                print(_table(rows, ["KIND", "TARGET", "BACKUP", "ID", "SIZE", "REPLICA", "ERROR"]))
            else:
                print("nothing to back up: backup.postgres, rds_instances and elasticache_clusters are empty")
            if report.deleted:
                print("\nexpired by retention:")
                print(_table([[d.id, d.kind, d.target, d.repository] for d in report.deleted],
                             ["ID", "KIND", "TARGET", "REPOSITORY"]))
            if report.error:
                print(f"run failed: {report.error}", file=sys.stderr)
        return 0 if report.ok else 1

    return _guarded(work)


# -- backup list / verify ------------------------------------------------------------------------


def _print_invalid(invalid: list[dict[str, Any]]) -> None:
    if invalid:
        print("\ninvalid (never restored, verified as intact, replicated or expired):")
        print(_table([[str(e["id"]), str(e["reason"])] for e in invalid], ["ID", "REASON"]))


def backup_list(settings: Settings, *, replica: bool, json_out: bool) -> int:
    def work() -> int:
        if replica:
            repo = eng.replica_repository(settings)
            if repo is None:
                return _fail("no replica repository configured; set backup.replica")
        else:
            repo = eng.primary_repository(settings)
        manifests = repo.list()
        replicated: dict[str, Manifest] | None = None
        other = eng.replica_repository(settings) if not replica else None
        if other is not None:
            try:
                replicated = {m.id: m for m in other.list()}
            except Exception:  # noqa: BLE001 - listing the primary must not depend on the replica answering
                replicated = None
        items = []
        for m in manifests:
            item = m.summary()
            item["repository"] = repo.url
            item["valid"] = True
            if replicated is not None:
                copy = replicated.get(m.id)
                item["replicated"] = copy is not None
                item["replicated_at"] = iso(copy.replicated_at) if copy is not None and copy.replicated_at else None
            items.append(item)
        invalid = [{"id": bad, "repository": repo.url, "valid": False, "reason": reason}
                   for bad, reason in sorted(repo.invalid().items())]
        if json_out:
            print(json.dumps(items + invalid, indent=2))
            return 0
        if invalid:  # shown after the table, on stdout too: they are backups someone may be looking for
            print(f"warning: {len(invalid)} backup(s) in {repo.url} have an invalid manifest and are ignored",
                  file=sys.stderr)
        if not items:
            print(f"no complete backups in {repo.url}")
            _print_invalid(invalid)
            return 0
        header = ["ID", "KIND", "TARGET", "TIME", "SIZE", "CHECKSUM", "VERIFIED"]
        rows = [[i["id"], i["kind"], i["target"], i["time"], _size(i["size"]), i["checksum"][:16],
                 "yes" if i["verified"] else "no"] for i in items]
        if replicated is not None:
            header.append("REPLICATED")
            for row, i in zip(rows, items, strict=True):
                row.append("yes" if i["replicated"] else "no")
        print(_table(rows, header))
        _print_invalid(invalid)
        return 0

    return _guarded(work)


def _locate(settings: Settings, backup_id: str) -> tuple[list[tuple[str, Repository, Manifest]], list[str]]:
    """Where a complete backup with this id lives; an unreachable primary (region down) is skipped."""
    if not valid_id(backup_id):
        raise NotFound(f"{backup_id!r} is not a backup id; ids look like postgres-main-20260101T000000Z-1a2b3c "
                       "(see `opsagent backup list`)")
    found = []
    unreachable: list[str] = []
    invalid: list[str] = []
    sources: list[tuple[str, Callable[[], Repository | None]]] = [
        ("primary", lambda: eng.primary_repository(settings) if settings.backup.repository else None),
        ("replica", lambda: eng.replica_repository(settings))]
    for where, make in sources:
        try:
            repo = make()
            manifest = repo.manifest(backup_id) if repo is not None else None
        except Exception as exc:  # noqa: BLE001 - during a regional outage the other copy still counts
            unreachable.append(f"{where}: {describe(exc)}")
            continue
        if repo is not None and manifest is not None:
            found.append((where, repo, manifest))
        elif repo is not None and (reason := repo.invalid().get(backup_id)):
            invalid.append(f"{where} ({repo.url}): DAMAGED, {reason}")  # found but refused: never acted on
    if not found and invalid:
        raise BackupError(f"backup {backup_id} is damaged: " + "; ".join(invalid))
    if not found:
        extra = f" (unreachable: {'; '.join(unreachable)})" if unreachable else ""
        raise NotFound(f"no complete backup with id {backup_id!r} in the primary or replica repository{extra} "
                       "(see `opsagent backup list`)")
    for line in unreachable:
        print(f"warning: {line}", file=sys.stderr)
    for line in invalid:
        print(line)
    return found, invalid


def backup_verify(settings: Settings, backup_id: str) -> int:
    """Exit 0 every copy intact, 1 any copy damaged, 2 no complete backup with that id."""
    from opsagent.backup.restore import LATEST, UnknownBackup, resolve_latest

    def work() -> int:
        reporter = TerminalReporter(sys.stderr)
        damaged = False
        try:
            wanted = resolve_latest(settings, kind=None) if backup_id == LATEST else backup_id
            located, invalid = _locate(settings, wanted)
            damaged = bool(invalid)  # a copy whose manifest is refused is a damaged copy
        except (NotFound, UnknownBackup) as exc:
            print(f"error: {secrets.scrub(str(exc))}", file=sys.stderr)
            return 2
        for where, repo, manifest in located:
            reporter.stage(f"verifying {manifest.id} in the {where} repository", manifest.size)
            problems = pgdump.verify_object(repo, manifest, progress=reporter.advance)
            reporter.finish()
            if problems:
                damaged = True
                print(f"{where} ({repo.url}): DAMAGED")
                for p in problems:
                    print(f"  {p}")
            else:
                print(f"{where} ({repo.url}): intact ({len(manifest.objects)} object(s), {_size(manifest.size)})")
        return 1 if damaged else 0

    return _guarded(work)


# -- restore -------------------------------------------------------------------------------------


def restore(settings: Settings, backup_id: str, target_dsn: str, *, force: bool, source: str = "auto",
            jobs: int = 1, stage_dir: str | None = None) -> int:
    """Exit 0 restored, 1 failed (nothing half-restored is left), 2 unknown id or bad arguments."""
    from opsagent.backup.restore import Restorer, UnknownBackup

    try:
        pgtools.endpoint(target_dsn)
    except Exception as exc:  # noqa: BLE001
        print(f"error: --target is not a PostgreSQL DSN: {describe(exc)}", file=sys.stderr)
        return 2
    if jobs < 1:
        print("error: --jobs must be at least 1", file=sys.stderr)
        return 2

    def work() -> int:
        reporter = TerminalReporter(sys.stderr)
        try:
            outcome = Restorer(settings, reporter=reporter, jobs=jobs, stage_dir=stage_dir).restore(
                backup_id, target_dsn, force=force, source=source)  # type: ignore[arg-type]  # argparse choices
        except UnknownBackup as exc:
            print(f"error: {secrets.scrub(str(exc))}", file=sys.stderr)
            return 2
        finally:
            reporter.finish()
        for reason in outcome.skipped:
            print(f"warning: {secrets.scrub(reason)}", file=sys.stderr)
        fallback = " (fell back: the primary copy was missing or damaged)" if outcome.used == "replica" and \
            source == "auto" and settings.backup.repository else ""
        print(f"restored {outcome.backup_id} ({_size(outcome.size)}) from the {outcome.used} copy "
              f"({outcome.repository}){fallback} into database {outcome.database} of "
              f"{secrets.mask_url(target_dsn)}" + (", replacing the database that was there" if outcome.replaced else ""))
        return 0

    return _guarded(work)


# -- drill ---------------------------------------------------------------------------------------


def drill(settings: Settings, *, json_out: bool) -> int:
    def work() -> int:
        b = settings.backup
        if not (b.postgres and b.drill_dsn) and not rds_drill_enabled(settings) and not (b.pitr_drill and b.rds_instances):
            return _fail("nothing to drill: set backup.drill_dsn (and backup.postgres), "
                         "or backup.rds_drill / backup.pitr_drill with backup.rds_instances")
        reporter = _reporter(json_out)
        lock = fleet_lock(settings, "drill")
        if not lock.acquire(LOCK_WAIT_SECONDS):
            return _fail("another agent is running a drill")
        try:
            reports = Drill(settings, reporter=reporter, kinds=frozenset({"postgres", "rds", "rds_pitr"})).run()
        finally:
            lock.release()
            reporter.finish()
        passed = bool(reports) and not any(r.failed for r in reports)
        if json_out:
            doc: dict[str, Any] = {"passed": passed, "rto_seconds": b.rto, "drills": [r.to_dict() for r in reports]}
            print(json.dumps(doc, indent=2))
        else:
            rows = [[r.kind, r.target, "passed" if not r.failed else "FAILED", r.backup_id or "-",
                     f"{r.duration_seconds:.1f}s", f"{r.rto_seconds:.0f}s",
                     r.error or ("" if r.within_rto else "slower than the RTO")] for r in reports]
            print(_table(rows, ["KIND", "TARGET", "DRILL", "BACKUP", "TOOK", "RTO", "ERROR"]))
        return 0 if passed else 1

    return _guarded(work)
