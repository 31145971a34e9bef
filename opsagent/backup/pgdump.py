"""PostgreSQL logical backup and restore, streamed end to end.

pg_dump's stdout is read in fixed-size chunks straight into the repository
writer (multipart parts on S3), so memory stays flat and no full-size temporary
file exists. The dump runs on a snapshot exported from a REPEATABLE READ
transaction; the table stats the drill will compare are read in that same
snapshot. Restore feeds the stored object into pg_restore's stdin while hashing
it, so a damaged object is named as such even when pg_restore trips first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog

from opsagent import __version__, secrets
from opsagent.backup import pgstats, pgtools
from opsagent.backup.errors import BackupError
from opsagent.backup.manifest import Manifest, TableStats, new_id
from opsagent.backup.repository import CHUNK, Repository

log = structlog.get_logger("opsagent.backup")

OBJECT = "data.dump"
COMPRESSION = "pg_dump custom format, gzip level 6"
Progress = Callable[[int], None]
ProcHook = Callable[["subprocess.Popen[bytes] | None"], None]


def _widen_pipe(fd: int, size: int = CHUNK) -> None:
    """Grow pg_dump's stdout pipe from 64 KiB towards one read chunk (Linux F_SETPIPE_SZ), so pg_dump
    blocks less often waiting for this process to be scheduled on a busy machine; best effort."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except (ImportError, OSError):
        pass  # not Linux, or above /proc/sys/fs/pipe-max-size: the default pipe works, only slower


def kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill a tool and anything it started (its own session: a wrapper script's children too)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()


def _tail(fh: object, limit: int = 1500) -> str:
    fh.seek(0)  # type: ignore[attr-defined]
    text = fh.read().decode(errors="replace")  # type: ignore[attr-defined]
    return secrets.scrub(" ".join(text.split())[-limit:])


def dump(dsn: str, target: str, repo: Repository, *, tool_override: str | None = None,
         progress: Progress | None = None, on_proc: ProcHook | None = None,
         clock: Callable[[], float] = time.time, trigger: str | None = None) -> Manifest:
    """Dump one database into ``repo``; return the manifest, written last (``trigger``: manual or schedule)."""
    started = clock()
    backup_id = new_id("postgres", target, started)
    conn = pgtools.connect(dsn, autocommit=False)
    passfile = contextlib.ExitStack()  # the 0600 PGPASSFILE lives while pg_dump runs
    try:
        major, server_version = pgtools.server_major(conn)
        conn.rollback()
        tool = pgtools.find_tool("pg_dump", major, tool_override)
        conn.isolation_level = 3  # psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        snapshot = str(row[0])
        env, conninfo = passfile.enter_context(pgtools.tool_environment(dsn))
        args = [tool.path, "--format=custom", "--compress=6", f"--snapshot={snapshot}", "--no-password",
                f"--dbname={conninfo}"]
        log.info("backup_dump_started", kind="postgres", target=target, backup_id=backup_id, tool=tool.label,
                 server_version=server_version)
        with tempfile.TemporaryFile() as errfile:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errfile, env=env, start_new_session=True)
            if on_proc:
                on_proc(proc)
            assert proc.stdout is not None
            _widen_pipe(proc.stdout.fileno())
            # The drill's table stats are read in the same snapshot while pg_dump streams: the exporting
            # connection is idle otherwise, and reading them afterwards made a backup ~1.5x slower than
            # pg_dump alone (benchmarks/).
            stats = _Stats(conn, target)
            writer = None
            try:
                # Inside the try: a store that refuses the upload must not leave pg_dump blocked on its pipe.
                writer = repo.writer(backup_id, OBJECT)
                written = 0
                assert proc.stdout is not None
                while chunk := proc.stdout.read1(CHUNK):
                    writer.write(chunk)
                    written += len(chunk)
                    if progress:
                        progress(written)
                code = proc.wait()
                if code != 0:
                    raise BackupError(f"pg_dump of {target} failed (exit {code}): {_tail(errfile)}")
                tables = stats.result()  # same snapshot as the dump
                info = writer.commit()
            except BaseException:
                kill(proc)
                stats.stop()
                if writer is not None:
                    writer.abort()
                raise
            finally:
                if on_proc:
                    on_proc(None)
        conn.rollback()
    finally:
        passfile.close()
        conn.close()
    manifest = Manifest(
        id=backup_id, kind="postgres", target=target, started=started, finished=clock(), size=info.size,
        compression=COMPRESSION, objects=(info,), server_version=server_version, tool_version=tool.label,
        agent_version=__version__, tables=tables, trigger=trigger,
    )
    repo.write_manifest(manifest)
    log.info("backup_complete", kind="postgres", target=target, backup_id=backup_id, size=info.size,
             duration=round(manifest.finished - started, 3))
    return manifest


class _Stats:
    """``pgstats.table_stats(conn)`` in a thread; ``result()`` joins and re-raises its error."""

    def __init__(self, conn: Any, target: str) -> None:
        self._conn = conn
        self._box: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, name=f"backup-stats-{target}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._box["tables"] = pgstats.table_stats(self._conn)
        except BaseException as exc:  # noqa: BLE001 - handed to the dumping thread by result()
            self._box["error"] = exc

    def result(self) -> dict[str, TableStats]:
        self._thread.join()
        if "error" in self._box:
            raise self._box["error"]
        return self._box["tables"]  # type: ignore[no-any-return]

    def stop(self) -> None:
        """Cancel a running stats query and wait for the thread, so the connection can be closed safely."""
        if self._thread.is_alive():
            try:
                self._conn.cancel()
            except Exception:  # noqa: BLE001 - the connection may already be gone; join below either way
                pass
            self._thread.join(30)


def verify_object(repo: Repository, manifest: Manifest, progress: Progress | None = None) -> list[str]:
    """Re-read every object and compare with the manifest; human lines for each damage found."""
    problems = []
    done = 0
    for obj in manifest.objects:
        digest = hashlib.sha256()
        size = 0
        try:
            for chunk in repo.read(manifest.id, obj.name):
                digest.update(chunk)
                size += len(chunk)
                done += len(chunk)
                if progress:
                    progress(done)
        except BackupError as exc:
            problems.append(str(exc))
            continue
        if size != obj.size:
            problems.append(f"object {obj.name}: {size} bytes, the manifest recorded {obj.size}")
        elif digest.hexdigest() != obj.sha256:
            problems.append(f"object {obj.name}: SHA-256 {digest.hexdigest()[:16]}… differs from the manifest's "
                            f"{obj.sha256[:16]}…")
    return problems


@dataclass
class RestoreResult:
    sha256: str
    size: int
    pg_restore_error: str | None


def archive_for_tool(stored: Iterator[bytes], manifest: Manifest | None) -> Iterator[bytes]:
    """What pg_restore reads, from an object's stored bytes: the one place a decompression step belongs.

    Today the stored object is pg_dump's own custom format, given to pg_restore unchanged. Restore,
    staged restore (``--jobs``) and the drill all go through here; checksums are taken on the stored
    bytes, before this step.
    """
    return stored


def restore_stream(chunks: Iterator[bytes], dsn: str, *, tool_override: str | None = None,
                   progress: Progress | None = None, on_proc: ProcHook | None = None,
                   dbname: str | None = None, manifest: Manifest | None = None) -> RestoreResult:
    """Pipe an archive into pg_restore while hashing its stored bytes; the caller judges hash and error together."""
    conn = pgtools.connect(dsn, dbname=dbname)
    try:
        major, _ = pgtools.server_major(conn)
    finally:
        conn.close()
    tool = pgtools.find_tool("pg_restore", major, tool_override)
    digest = hashlib.sha256()
    size = 0
    with pgtools.tool_environment(dsn, dbname) as (env, conninfo), tempfile.TemporaryFile() as errfile:
        args = [tool.path, "--no-owner", "--exit-on-error", "--no-password", f"--dbname={conninfo}"]
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errfile, env=env,
                                start_new_session=True)
        if on_proc:
            on_proc(proc)
        try:
            assert proc.stdin is not None
            broken = False

            def stored() -> Iterator[bytes]:
                nonlocal size
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    if progress:
                        progress(size)
                    yield chunk

            for chunk in archive_for_tool(stored(), manifest):
                if not broken:
                    try:
                        proc.stdin.write(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        broken = True  # keep reading: the hash tells whether the object was the cause
            try:
                proc.stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                pass
            code = proc.wait()
        except BaseException:
            kill(proc)
            raise
        finally:
            if on_proc:
                on_proc(None)
        error = None if code == 0 else f"pg_restore failed (exit {code}): {_tail(errfile)}"
    return RestoreResult(sha256=digest.hexdigest(), size=size, pg_restore_error=error)


def stats_of(dsn: str, dbname: str | None = None, methods: dict[str, str] | None = None) -> dict[str, TableStats]:
    conn = pgtools.connect(dsn, dbname=dbname)
    try:
        return pgstats.table_stats(conn, methods)
    finally:
        conn.close()
