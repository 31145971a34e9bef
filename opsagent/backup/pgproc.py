"""What the dump and restore paths share: tool processes, the compression plan, the restore result.

Kept apart from ``pgdump`` (one custom-format archive) and ``pgdir`` (directory format, parallel) so
both can use it without importing each other.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
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


def pg_restore_args(dsn: str, dbname: str | None, tool_override: str | None, extra: list[str]) -> tuple[list[str], dict[str, str]]:
    conn = pgtools.connect(dsn, dbname=dbname)
    try:
        major, _ = pgtools.server_major(conn)
    finally:
        conn.close()
    tool = pgtools.find_tool("pg_restore", major, tool_override)
    env, conninfo = pgtools.tool_env_and_conninfo(dsn, dbname)
    return [tool.path, "--no-owner", "--exit-on-error", "--no-password", f"--dbname={conninfo}", *extra], env


@dataclass(frozen=True)
class CompressionPlan:
    """Who compresses a dump and how: what pg_dump is asked for, and what the agent applies on the stream."""

    pg_dump_arg: str  # --compress=...
    codec: str  # the agent's stream codec (restore decompresses with it); "none" when pg_dump compresses
    label: str  # what the manifest's ``compression`` says
    level: int


NATIVE_SINCE = {"gzip": 0, "zstd": 16, "lz4": 16}  # pg_dump major that accepts --compress=METHOD:LEVEL


def plan(tool_major: int, method: str, level: int | None = None, threads: int | None = None) -> CompressionPlan:
    """Compress on the agent's stream, or let pg_dump do it where that is the faster of the two.

    pg_dump compresses inside its own single process, in line with reading rows; the agent's codec runs
    beside it (zstd on ``codec.threads()`` workers) at the price of one more copy of the stream through a
    pipe. With more than one CPU the agent's side wins (issue 22: ``pg_dump -Z0 | zstd -T2`` took 0.39x
    the wall time of ``pg_dump -Fc``); on a single CPU (a fractional Fargate share) nothing runs beside
    pg_dump, so pg_dump's own zstd/lz4 (16+) or gzip saves the copy. ``make bench`` compares both on a
    16+ pg_dump (the ``backup_native`` row).
    """
    lvl = codec.level_for(method, level)
    workers = codec.threads() if threads is None else threads
    if method != "none" and workers == 0 and tool_major >= NATIVE_SINCE[method]:
        arg = f"--compress={lvl}" if tool_major < 16 else f"--compress={method}:{lvl}"
        return CompressionPlan(pg_dump_arg=arg, codec="none", label=f"pg_dump:{method}", level=lvl)
    return CompressionPlan(pg_dump_arg="--compress=0", codec=method, label=method, level=lvl)


def stream_codec(manifest: Manifest) -> str:
    """The codec the agent applied to this backup's objects; "none" for pg_dump's own (and every
    release-1) compression, which pg_restore reads by itself."""
    return manifest.compression if manifest.compression in codec.METHODS else "none"
