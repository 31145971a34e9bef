"""PostgreSQL logical backup and restore, streamed end to end.

pg_dump's stdout (an uncompressed custom archive, ``-Z0``) is read in fixed-size
chunks, compressed by the agent (``backup.compression``, ``codec``) and written
straight into the repository writer (multipart parts on S3), so memory stays
flat and no full-size temporary file exists. The dump runs on a snapshot
exported from a REPEATABLE READ transaction; the table stats the drill will
compare are read in that same snapshot. Restore feeds the stored object,
decompressed, into pg_restore's stdin while hashing the stored bytes, so a
damaged object is named as such even when pg_restore or the decompressor trips
first. ``backup.jobs`` ≥ 2 (directory format, parallel) lives in ``pgdir``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import select
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import psycopg
import structlog

from opsagent import __version__
from opsagent.backup import codec, pgstats, pgtools
from opsagent.backup.errors import BackupError
from opsagent.backup.manifest import Manifest, ObjectInfo, TableStats, new_id
from opsagent.backup.pgproc import (
    CompressionPlan,
    Hashed,
    ProcHook,
    Progress,
    RestoreResult,
    kill,
    pg_restore_command,
    plan,
    stream_codec,
    tail,
)
from opsagent.backup.repository import CHUNK, Repository

log = structlog.get_logger("opsagent.backup")

# Callers use these through this module (release 1 defined them here).
__all__ = ["OBJECT", "CompressionPlan", "ProcHook", "Progress", "RestoreResult", "dump", "kill", "plan",
           "restore_backup", "restore_stream", "sniff", "stats_of", "stream_codec", "verify_object"]

OBJECT = "data.dump"
COMPRESSION = "pg_dump custom format, gzip level 6"  # what release 1 manifests say: pg_dump compressed them
IDLE_FLUSH_SECONDS = 0.5  # pg_dump silent this long: what the compressor holds goes to the store


def _readable(pipe: io.BufferedReader, timeout: float) -> bool:
    """Whether pg_dump's stdout has data (or its end) within ``timeout``. The reader's own buffer stays
    empty: ``read1`` of more than its size reads the pipe directly."""
    ready, _, _ = select.select([pipe.fileno()], [], [], timeout)
    return bool(ready)


def _widen_pipe(fd: int, size: int = CHUNK) -> None:
    """Grow pg_dump's stdout pipe from 64 KiB towards one read chunk (Linux F_SETPIPE_SZ), so pg_dump
    blocks less often waiting for this process to be scheduled on a busy machine; best effort."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except (ImportError, OSError):
        pass  # not Linux, or above /proc/sys/fs/pipe-max-size: the default pipe works, only slower


def dump(dsn: str, target: str, repo: Repository, *, compression: str = codec.DEFAULT, level: int | None = None,
         jobs: int = 1, tool_override: str | None = None, progress: Progress | None = None,
         on_proc: ProcHook | None = None, clock: Callable[[], float] = time.time,
         trigger: str | None = None) -> Manifest:
    """Dump one database into ``repo``; return the manifest, written last (``trigger``: manual or schedule).

    ``jobs`` > 1 dumps in pg_dump's directory format with that many workers (``opsagent.backup.pgdir``);
    otherwise one custom-format archive is streamed. ``compression`` is applied on the stream (see ``plan``).
    """
    started = clock()
    backup_id = new_id("postgres", target, started)
    conn = pgtools.connect(dsn, autocommit=False)
    passfile = contextlib.ExitStack()  # the 0600 PGPASSFILE lives while pg_dump runs
    try:
        major, server_version = pgtools.server_major(conn)
        conn.rollback()
        tool = pgtools.find_tool("pg_dump", major, tool_override)
        chosen = plan(tool.major, compression, level)
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        snapshot = str(row[0])
        env, conninfo = passfile.enter_context(pgtools.tool_environment(dsn))
        args = [tool.path, chosen.pg_dump_arg, f"--snapshot={snapshot}", "--no-password", f"--dbname={conninfo}"]
        log.info("backup_dump_started", kind="postgres", target=target, backup_id=backup_id, tool=tool.label,
                 server_version=server_version, compression=chosen.method, compressed_by=chosen.by, level=chosen.level,
                 jobs=jobs)
        # The drill's table stats are read in the same snapshot while pg_dump streams: the exporting
        # connection is idle otherwise, and reading them afterwards made a backup ~1.5x slower than
        # pg_dump alone (benchmarks/).
        stats = _Stats(conn, target)
        try:
            if jobs > 1:
                from opsagent.backup import pgdir

                objects = pgdir.dump_directory(args, env, jobs, repo, backup_id, chosen, progress=progress,
                                               on_proc=on_proc, target=target)
            else:
                objects = (_dump_custom(args, env, repo, backup_id, chosen, progress, on_proc, target),)
            tables = stats.result()  # same snapshot as the dump
        except BaseException:
            stats.stop()
            raise
        conn.rollback()
    finally:
        passfile.close()
        conn.close()
    manifest = Manifest(
        id=backup_id, kind="postgres", target=target, started=started, finished=clock(),
        size=sum(o.size for o in objects), compression=chosen.method, objects=objects, server_version=server_version,
        tool_version=tool.label, agent_version=__version__, tables=tables, compression_level=chosen.level,
        dump_format="directory" if jobs > 1 else "custom", compressed_by=chosen.by, trigger=trigger,
    )
    repo.write_manifest(manifest)
    log.info("backup_complete", kind="postgres", target=target, backup_id=backup_id, size=manifest.size,
             duration=round(manifest.finished - started, 3))
    return manifest


def _dump_custom(base: list[str], env: dict[str, str], repo: Repository, backup_id: str, chosen: CompressionPlan,
                 progress: Progress | None, on_proc: ProcHook | None, target: str) -> ObjectInfo:
    """Stream one custom-format archive from pg_dump through the codec into the store."""
    args = [base[0], "--format=custom", *base[1:]]
    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errfile, env=env, start_new_session=True)
        if on_proc:
            on_proc(proc)
        stdout = cast(io.BufferedReader, proc.stdout)  # Popen's stdout=PIPE with the default buffering
        _widen_pipe(stdout.fileno())
        writer = None
        try:
            # Inside the try: a store that refuses the upload must not leave pg_dump blocked on its pipe.
            writer = repo.writer(backup_id, OBJECT)
            squeeze = codec.compressor(chosen.codec, chosen.level)
            read = 0
            held = False  # the compressor holds input that is not in the store yet
            while True:
                if held and not _readable(stdout, IDLE_FLUSH_SECONDS):
                    # pg_dump paused (a slow table, a busy server, or the end): store what was read so far,
                    # instead of holding up to a zstd job of it until more arrives.
                    if out := squeeze.flush_block():
                        writer.write(out)
                    held = False
                chunk = stdout.read1(CHUNK)
                if not chunk:
                    break
                if out := squeeze.compress(chunk):
                    writer.write(out)
                held = True
                read += len(chunk)
                if progress:
                    progress(read)
            code = proc.wait()
            if code != 0:
                raise BackupError(f"pg_dump of {target} failed (exit {code}): {tail(errfile)}")
            if rest := squeeze.flush():
                writer.write(rest)
            return writer.commit()
        except BaseException:
            kill(proc)
            if writer is not None:
                writer.abort()
            raise
        finally:
            if on_proc:
                on_proc(None)


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


_MAGIC = ((b"\x28\xb5\x2f\xfd", "zstd"), (b"\x1f\x8b", "gzip"), (b"\x04\x22\x4d\x18", "lz4"))


def sniff(head: bytes) -> str:
    """The agent codec a stored archive starts with; "none" for a plain pg_dump archive (PGDMP...)."""
    return next((method for magic, method in _MAGIC if head.startswith(magic)), "none")


def archive_for_tool(stored: Iterator[bytes], manifest: Manifest | None) -> Iterator[bytes]:
    """What pg_restore reads, from an object's stored bytes: the stream decompressed with the backup's codec.

    Restore, staged restore (``--jobs``) and the drill go through here; checksums are taken on the stored
    bytes, before this step. Without a manifest the codec is read from the stream's first bytes. A damaged
    stream raises :class:`opsagent.backup.codec.CorruptStream`.
    """
    chunks = iter(stored)
    first = next(chunks, b"")
    method = stream_codec(manifest) if manifest is not None else sniff(first)
    return codec.decompress(method, itertools.chain([first], chunks))


def restore_stream(chunks: Iterator[bytes], dsn: str, *, tool_override: str | None = None,
                   progress: Progress | None = None, on_proc: ProcHook | None = None,
                   dbname: str | None = None, compression: str | None = None,
                   manifest: Manifest | None = None) -> RestoreResult:
    """Pipe an archive into pg_restore while hashing the stored bytes; the caller judges hash and error together.

    ``compression`` is the agent codec the object was stored with (``stream_codec(manifest)``); None reads
    it from the stream's first bytes, so callers holding only the object restore every method too.
    """
    stored = iter(chunks)
    first = next(stored, b"")
    if compression is None and manifest is not None:
        compression = stream_codec(manifest)
    method = compression if compression is not None else sniff(first)
    hashed = Hashed(itertools.chain([first], stored), progress)
    decode_error: str | None = None
    with pg_restore_command(dsn, dbname, tool_override, []) as (args, env), tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errfile, env=env,
                                start_new_session=True)
        if on_proc:
            on_proc(proc)
        try:
            assert proc.stdin is not None
            broken = False
            try:
                for chunk in codec.decompress(method, hashed):
                    try:
                        proc.stdin.write(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        broken = True
                        break
                if broken:
                    hashed.drain()  # keep reading: the hash tells whether the object was the cause
            except codec.CorruptStream as exc:
                decode_error = str(exc)
                kill(proc)  # a cut-off archive must not be restored as if it were whole
                hashed.drain()  # the hash of the whole stored object says whether the store damaged it
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
        error = decode_error or (None if code == 0 else f"pg_restore failed (exit {code}): {tail(errfile)}")
    return RestoreResult(sha256=hashed.digest.hexdigest(), size=hashed.size, pg_restore_error=error)


def restore_backup(repo: Repository, manifest: Manifest, dsn: str, *, jobs: int = 1, dbname: str | None = None,
                   tool_override: str | None = None, progress: Progress | None = None,
                   on_proc: ProcHook | None = None) -> RestoreResult:
    """Restore a postgres backup of any release, format and compression into ``dsn`` (or its ``dbname``).

    The single place where a restore's input is produced: one custom archive streamed into pg_restore, or,
    for a directory-format backup or ``jobs`` > 1, every object decompressed and checked into a staging
    directory first and ``pg_restore -j jobs`` run on it (``opsagent.backup.pgdir``). The result's hash
    and size are of the first object, for the caller's comparison with the manifest; a damaged later
    object empties the hash and names itself in ``pg_restore_error``.
    """
    if manifest.dump_format == "directory" or jobs > 1:
        from opsagent.backup import pgdir

        return pgdir.restore_staged(repo, manifest, dsn, jobs=jobs, dbname=dbname, tool_override=tool_override,
                                    progress=progress, on_proc=on_proc)
    obj = manifest.objects[0]
    return restore_stream(repo.read(manifest.id, obj.name), dsn, tool_override=tool_override, progress=progress,
                          on_proc=on_proc, dbname=dbname, compression=stream_codec(manifest))


def stats_of(dsn: str, dbname: str | None = None, methods: dict[str, str] | None = None) -> dict[str, TableStats]:
    conn = pgtools.connect(dsn, dbname=dbname)
    try:
        return pgstats.table_stats(conn, methods)
    finally:
        conn.close()
