"""What the dump and restore paths share: tool processes, the compression plan, the restore result.

Kept apart from ``pgdump`` (one custom-format archive) and ``pgdir`` (directory format, parallel) so
both can use it without importing each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from opsagent import secrets
from opsagent.backup import codec, pgtools
from opsagent.backup.manifest import Manifest

Progress = Callable[[int], None]
ProcHook = Callable[["subprocess.Popen[bytes] | None"], None]


def kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill a tool and anything it started (its own session: a wrapper script's children too)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()


def tail(fh: object, limit: int = 1500) -> str:
    fh.seek(0)  # type: ignore[attr-defined]
    text = fh.read().decode(errors="replace")  # type: ignore[attr-defined]
    return secrets.scrub(" ".join(text.split())[-limit:])


@dataclass
class RestoreResult:
    sha256: str  # of the stored bytes of the (first) object, as read
    size: int
    pg_restore_error: str | None


class Hashed:
    """Passes stored chunks through while hashing and counting them; ``drain`` reads the rest."""

    def __init__(self, chunks: Iterator[bytes], progress: Progress | None) -> None:
        self._chunks = chunks
        self._progress = progress
        self.digest = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.digest.update(chunk)
            self.size += len(chunk)
            if self._progress:
                self._progress(self.size)
            yield chunk

    def drain(self) -> None:
        for _ in self:
            pass


@contextlib.contextmanager
def pg_restore_command(dsn: str, dbname: str | None, tool_override: str | None,
                       extra: list[str]) -> Iterator[tuple[list[str], dict[str, str]]]:
    """pg_restore's argv and environment; the password lives in a 0600 PGPASSFILE until the block ends."""
    conn = pgtools.connect(dsn, dbname=dbname)
    try:
        major, _ = pgtools.server_major(conn)
    finally:
        conn.close()
    tool = pgtools.find_tool("pg_restore", major, tool_override)
    with pgtools.tool_environment(dsn, dbname) as (env, conninfo):
        yield [tool.path, "--no-owner", "--exit-on-error", "--no-password", f"--dbname={conninfo}", *extra], env


@dataclass(frozen=True)
class CompressionPlan:
    """Who compresses a dump and how: what pg_dump is asked for, and what the agent applies on the stream."""

    pg_dump_arg: str  # --compress=...
    codec: str  # the agent's stream codec (restore decompresses with it); "none" when pg_dump compresses
    method: str  # what the user chose (backup.compression): the manifest's ``compression``
    level: int
    by: str = "agent"  # the manifest's ``compressed_by``: "agent" or "pg_dump"


NATIVE_SINCE = 16  # pg_dump 16 accepts --compress=METHOD:LEVEL for zstd, lz4 and gzip


def plan(tool_major: int, method: str, level: int | None = None, threads: int | None = None) -> CompressionPlan:
    """Compress on the agent's stream, or let pg_dump do it where that is the faster of the two.

    pg_dump compresses inside its own single process, in line with reading rows; the agent's codec runs
    beside it (zstd on ``codec.threads()`` workers) at the price of one more copy of the stream through a
    pipe. With two or more usable CPUs the agent's side wins (issue 22: ``pg_dump -Z0 | zstd -T2`` took
    0.39x the wall time of ``pg_dump -Fc``); below that (a fractional Fargate share) nothing runs beside
    pg_dump, so a 16+ pg_dump compressing itself saves the copy. ``make bench`` compares both on a 16+
    pg_dump (the "pg_dump --compress=zstd" row).
    """
    lvl = codec.level_for(method, level)
    workers = codec.threads() if threads is None else threads
    if method != "none" and workers == 0 and tool_major >= NATIVE_SINCE:
        return CompressionPlan(pg_dump_arg=f"--compress={method}:{lvl}", codec="none", method=method, level=lvl,
                               by="pg_dump")
    return CompressionPlan(pg_dump_arg="--compress=0", codec=method, method=method, level=lvl)


def stream_codec(manifest: Manifest) -> str:
    """The codec the agent applied to this backup's objects; "none" when pg_dump compressed (and for every
    release-1 manifest, whose ``compression`` is a description): pg_restore reads those by itself."""
    if manifest.compressed_by != "agent" or manifest.compression not in codec.METHODS:
        return "none"
    return manifest.compression
