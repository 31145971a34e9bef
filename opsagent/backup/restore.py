"""``opsagent restore``: put a pg_dump backup back into a database, all or nothing.

What it does, in order (the DR runbook says the same):

1. Resolve the id (``latest`` = the newest complete pg_dump backup) and find the
   copies: ``--from primary`` or ``--from replica`` uses only that copy; by
   default the primary, then the replica copy when the primary copy is missing
   or damaged.
2. Refuse a destination that *is* a configured target — the same server
   (``system_identifier``) and database name, however the DSN spells it —
   unless ``--force``; refuse a destination database that already holds
   tables unless ``--force`` (it is replaced only after the restore succeeded).
3. Restore into a scratch database ``opsagent_restore_<stamp>_<hex>`` on the
   destination server, hashing every byte read against the manifest (SHA-256
   and size, as ``backup verify`` checks). A damaged copy is discarded and the
   next copy is tried.
4. On success, drop the (empty or ``--force``-replaced) destination database
   and rename the scratch database to its name. On any failure the scratch
   database is dropped; if this process is killed, a watcher process
   (:mod:`opsagent.backup.janitor`) drops it. Renaming rather than restoring in
   place is what makes "no half-restored database" hold even under ``kill -9``:
   the destination name only ever names a complete restore.

``--jobs N`` runs ``pg_restore -j N``, which needs a seekable file: the copy is
staged on local disk (``--stage-dir``, default the system temp directory)
after checking there is room for it, verified, restored, and removed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from opsagent import secrets
from opsagent.backup import engine as eng
from opsagent.backup import pgdump, pgtools
from opsagent.backup.errors import BackupError, NotFound, ObjectMissing, TargetRefused
from opsagent.backup.janitor import Janitor
from opsagent.backup.manifest import Manifest, ObjectInfo, valid_id
from opsagent.backup.pgproc import Hashed
from opsagent.backup.progress import NullReporter, Reporter
from opsagent.backup.repository import Repository
from opsagent.config import Settings

log = structlog.get_logger("opsagent.backup")

Source = Literal["auto", "primary", "replica"]
SCRATCH_PREFIX = "opsagent_restore_"
LATEST = "latest"
STAGE_MARGIN = 64 * 1024 * 1024  # free space kept beyond the staged archive


class UnknownBackup(NotFound):
    """No complete backup with that id (exit status 2: a usage problem, not damage)."""


class DamagedCopy(BackupError):
    """This copy's bytes do not match its manifest (missing object, wrong size or SHA-256)."""


@dataclass(frozen=True)
class Copy:
    where: str  # "primary" or "replica"
    repo: Repository
    manifest: Manifest


@dataclass
class RestoreOutcome:
    backup_id: str
    database: str
    used: str  # which copy: primary or replica
    repository: str
    size: int
    skipped: list[str] = field(default_factory=list)  # why earlier copies were not used
    replaced: bool = False  # an existing database of that name was replaced (--force)
    duration_seconds: float = 0.0


# -- which backup, which copies -------------------------------------------------------------------


def _repositories(settings: Settings, source: Source) -> list[tuple[str, Callable[[], Repository | None]]]:
    out: list[tuple[str, Callable[[], Repository | None]]] = []
    if source in ("auto", "primary") and settings.backup.repository:
        out.append(("primary", lambda: eng.primary_repository(settings)))
    if source in ("auto", "replica"):
        out.append(("replica", lambda: eng.replica_repository(settings)))
    return out


def resolve_latest(settings: Settings, source: Source = "auto", kind: str | None = "postgres") -> str:
    """The id of the newest complete backup (of ``kind``) in the copies ``source`` allows."""
    newest: Manifest | None = None
    for _where, make in _repositories(settings, source):
        try:
            repo = make()
            manifests = repo.list() if repo is not None else []
        except Exception as exc:  # noqa: BLE001 - the other copy may still answer
            log.warning("backup_repository_unreachable", error=eng.describe(exc))
            continue
        for m in manifests:
            if (kind is None or m.kind == kind) and (newest is None or m.finished > newest.finished):
                newest = m
    if newest is None:
        raise UnknownBackup("`latest`: there is no complete backup" + (f" of kind {kind}" if kind else "") +
                            " (see `opsagent backup list`)")
    return newest.id


def locate(settings: Settings, backup_id: str, source: Source = "auto") -> tuple[list[Copy], list[str]]:
    """The copies of ``backup_id`` in preference order, and why the others are not there."""
    if not valid_id(backup_id):
        raise UnknownBackup(f"{backup_id!r} is not a backup id; ids look like postgres-main-20260101T000000Z-1a2b3c "
                            "(see `opsagent backup list`), or say `latest`")
    if source == "replica" and not settings.backup.replica:
        raise BackupError("--from replica: no replica repository configured; set backup.replica")
    found: list[Copy] = []
    missing: list[str] = []
    refused: list[str] = []
    for where, make in _repositories(settings, source):
        try:
            repo = make()
            manifest = repo.manifest(backup_id) if repo is not None else None
        except Exception as exc:  # noqa: BLE001 - during a regional outage the other copy still counts
            missing.append(f"{where} copy unreachable: {eng.describe(exc)}")
            continue
        if repo is None:
            continue
        if manifest is None:
            reason = repo.invalid().get(backup_id)
            if reason:
                refused.append(f"{where} copy in {repo.url}: {reason}")  # found but refused: never acted on
            else:
                missing.append(f"{where} copy missing from {repo.url}")
        else:
            found.append(Copy(where, repo, manifest))
    if not found and refused:
        raise BackupError(f"backup {backup_id} is damaged: " + "; ".join(refused) + "; nothing was restored")
    if not found:
        raise UnknownBackup(f"no complete backup with id {backup_id!r}" +
                            (f" ({'; '.join(missing)})" if missing else "") + " (see `opsagent backup list`)")
    return found, missing + refused


# -- the production guard -------------------------------------------------------------------------


def _database_of(dsn: str) -> str:
    params = conninfo_to_dict(dsn)
    return str(params.get("dbname") or params.get("user") or "")


def _identity(dsn: str, dbname: str | None = None) -> tuple[str, str]:
    """(what server this is, database name): the server's system_identifier, not how the DSN spells it."""
    conn = pgtools.connect(dsn, dbname=dbname)
    try:
        row = conn.execute("SELECT system_identifier::text, current_database() FROM pg_control_system()").fetchone()
        assert row is not None
        return str(row[0]), str(row[1])
    finally:
        conn.close()


def refuse_configured_target(settings: Settings, admin_dsn: str, database: str) -> None:
    """TargetRefused when ``database`` on the server behind ``admin_dsn`` is a configured postgres target."""
    server, _ = _identity(admin_dsn)
    for target in settings.checks.postgres:
        dsn = target.dsn.get_secret_value()
        try:
            same = _identity(dsn) == (server, database)
        except Exception:  # noqa: BLE001 - an unreachable target is compared by what its DSN says
            same = pgtools.endpoint(dsn) == pgtools.endpoint(make_conninfo(admin_dsn, dbname=database))
        if same:
            raise TargetRefused(
                f"database {database} on that server is a configured target ({target.name!r}: same server "
                "system_identifier and database name); restoring would overwrite it. Restore elsewhere, or pass "
                "--force if that is really what you want")


def target_on_server(settings: Settings, admin_dsn: str) -> str | None:
    """The name of a configured postgres target on the same server (system_identifier) as ``admin_dsn``."""
    server, _ = _identity(admin_dsn)
    for target in settings.checks.postgres:
        try:
            if _identity(target.dsn.get_secret_value())[0] == server:
                return target.name
        except Exception:  # noqa: BLE001 - an unreachable target was compared by address at config load
            continue
    return None


def maintenance_dsn(dsn: str) -> str:
    """The destination server's ``postgres`` database: where CREATE/DROP/RENAME DATABASE are issued."""
    return make_conninfo(dsn, dbname="postgres")


# -- the restore ----------------------------------------------------------------------------------


class _Hashed(Hashed):
    """The stored bytes of one object, hashed and counted as they are read (pgproc's Hashed), checked here."""

    def check(self, copy: Copy, obj: ObjectInfo) -> None:
        check_stored(copy, obj, self.digest.hexdigest(), self.size)


def check_stored(copy: Copy, obj: ObjectInfo, sha256: str, size: int) -> None:
    """DamagedCopy unless the bytes read are the object the manifest recorded (size and SHA-256, as verify checks)."""
    if size != obj.size or sha256 != obj.sha256:
        raise DamagedCopy(f"the {copy.where} copy of {copy.manifest.id} in {copy.repo.url} is damaged: object "
                          f"{obj.name} has {size} bytes with SHA-256 {sha256[:16]}…, the manifest recorded "
                          f"{obj.size} bytes with {obj.sha256[:16]}…")


def _database_exists(conn: psycopg.Connection[tuple[object, ...]], name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def _user_tables(dsn: str, database: str) -> int:
    conn = pgtools.connect(dsn, dbname=database)
    try:
        row = conn.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                           "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') "
                           "AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')").fetchone()
        return int(str(row[0])) if row else 0
    finally:
        conn.close()


def scratch_name(now: float) -> str:
    import secrets as _random

    return f"{SCRATCH_PREFIX}{time.strftime('%Y%m%d%H%M%S', time.gmtime(now))}_{_random.token_hex(3)}"


class Restorer:
    def __init__(self, settings: Settings, reporter: Reporter | None = None, clock: Callable[[], float] = time.time,
                 jobs: int = 1, stage_dir: str | None = None) -> None:
        self.settings = settings
        self.reporter = reporter or NullReporter()
        self.clock = clock
        self.jobs = max(1, jobs)
        self.stage_dir = stage_dir

    def restore(self, backup_id: str, target_dsn: str, *, force: bool = False, source: Source = "auto") -> RestoreOutcome:
        started = self.clock()
        if backup_id == LATEST:
            backup_id = resolve_latest(self.settings, source)
        copies, skipped = locate(self.settings, backup_id, source)
        if copies[0].manifest.kind != "postgres":
            raise BackupError(f"backup {backup_id} is a {copies[0].manifest.kind} backup; only pg_dump backups "
                              "restore with this command")
        database = _database_of(target_dsn)
        if not database:
            raise BackupError("--target names no database; add one, e.g. postgresql://user@host:5432/app")
        admin_dsn = maintenance_dsn(target_dsn)
        if not force:
            refuse_configured_target(self.settings, admin_dsn, database)
        admin = pgtools.connect(admin_dsn)
        try:
            exists = _database_exists(admin, database)
            if exists and not force and (tables := _user_tables(target_dsn, database)):
                raise TargetRefused(f"database {database} already holds {tables} table(s); restore into a new database "
                                    "name, or pass --force to replace it (it is replaced only after the restore succeeded)")
            for copy in copies:
                try:
                    self._into_scratch_then_rename(copy, admin, admin_dsn, database)
                except DamagedCopy as exc:
                    skipped.append(str(exc))
                    log.warning("restore_copy_damaged", backup_id=backup_id, copy=copy.where, error=str(exc))
                    continue
                outcome = RestoreOutcome(backup_id=backup_id, database=database, used=copy.where,
                                         repository=copy.repo.url, size=copy.manifest.size, skipped=skipped,
                                         replaced=exists and force, duration_seconds=self.clock() - started)
                log.info("restore_complete", backup_id=backup_id, copy=copy.where, database=database,
                         repository=copy.repo.url)
                return outcome
        finally:
            admin.close()
        raise BackupError(f"no intact copy of {backup_id} to restore: " + "; ".join(skipped))

    def _into_scratch_then_rename(self, copy: Copy, admin: psycopg.Connection[tuple[object, ...]],
                                  admin_dsn: str, database: str) -> None:
        scratch = scratch_name(self.clock())
        janitor = Janitor(admin_dsn, scratch)  # told before CREATE: a kill at any point is covered
        try:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
            self._restore_object(copy, admin_dsn, scratch, janitor)
            if _database_exists(admin, database):
                admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))
            admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(scratch),
                                                                           sql.Identifier(database)))
        except BaseException:
            try:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch)))
            except Exception as exc:
                log.warning("restore_scratch_drop_failed", database=scratch, error=eng.describe(exc))
                janitor.abandon()  # pipe closed without "done": the watcher drops the scratch database
                raise
            janitor.dismiss()
            raise
        janitor.dismiss()

    def _restore_object(self, copy: Copy, admin_dsn: str, scratch: str, janitor: Janitor) -> None:
        manifest = copy.manifest
        obj = manifest.objects[0]
        self.reporter.stage(f"restoring {manifest.id} from the {copy.where} copy ({copy.repo.url})", obj.size)
        try:
            if manifest.dump_format == "directory":  # pg_dump -Fd: one object per table file, staged then -j
                result = pgdump.restore_backup(copy.repo, manifest, admin_dsn, dbname=scratch,
                                               jobs=max(self.jobs, self.settings.backup.jobs),
                                               tool_override=self.settings.backup.pg_dump_path,
                                               progress=self.reporter.advance,
                                               on_proc=lambda p: janitor.watch_process(p.pid) if p else None)
                if result.pg_restore_error:
                    raise DamagedCopy(result.pg_restore_error) if not result.sha256 else \
                        BackupError(result.pg_restore_error)
                check_stored(copy, obj, result.sha256, result.size)
                return
            if self.jobs > 1:
                stored = _Hashed(copy.repo.read(manifest.id, obj.name), self.reporter.advance)
                self._staged(copy, obj, stored, admin_dsn, scratch, janitor)
                return
            result = pgdump.restore_stream(copy.repo.read(manifest.id, obj.name), admin_dsn, dbname=scratch,
                                           manifest=manifest, tool_override=self.settings.backup.pg_dump_path,
                                           progress=self.reporter.advance,
                                           on_proc=lambda p: janitor.watch_process(p.pid) if p else None)
        except ObjectMissing as exc:
            raise DamagedCopy(str(exc)) from None
        check_stored(copy, obj, result.sha256, result.size)
        if result.pg_restore_error:
            raise BackupError(result.pg_restore_error)

    def _staged(self, copy: Copy, obj: ObjectInfo, stored: _Hashed, admin_dsn: str, scratch: str,
                janitor: Janitor) -> None:
        """pg_restore -j N needs a seekable file: stage the archive locally, verify it, restore, remove it."""
        base = Path(self.stage_dir or tempfile.gettempdir())
        free = shutil.disk_usage(base).free
        if free < obj.size + STAGE_MARGIN:
            raise BackupError(f"--jobs {self.jobs} stages the {obj.size}-byte archive in {base}, which has only "
                              f"{free} bytes free; free space, pass --stage-dir on a larger disk, or drop --jobs")
        with tempfile.TemporaryDirectory(prefix="opsagent-restore-", dir=base) as tmp:
            path = Path(tmp) / obj.name
            with open(path, "wb") as fh:
                for chunk in pgdump.archive_for_tool(iter(stored), copy.manifest):
                    fh.write(chunk)
            stored.check(copy, obj)
            major = _server_major(admin_dsn)
            tool = pgtools.find_tool("pg_restore", major, self.settings.backup.pg_dump_path)
            with pgtools.tool_environment(admin_dsn, scratch) as (env, conninfo), tempfile.TemporaryFile() as err:
                args = [tool.path, "--no-owner", "--exit-on-error", "--no-password", f"--jobs={self.jobs}",
                        f"--dbname={conninfo}", str(path)]
                proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
                janitor.watch_process(proc.pid)
                try:
                    code = proc.wait()
                except BaseException:
                    pgdump.kill(proc)
                    raise
                if code != 0:
                    err.seek(0)
                    tail = secrets.scrub(" ".join(err.read().decode(errors="replace").split())[-1500:])
                    raise BackupError(f"pg_restore failed (exit {code}): {tail}")


def _server_major(dsn: str) -> int:
    conn = pgtools.connect(dsn)
    try:
        return pgtools.server_major(conn)[0]
    finally:
        conn.close()
