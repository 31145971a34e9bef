"""Finding pg_dump/pg_restore and talking to libpq tools without leaking passwords.

The tool must be at least the server's major version (an older pg_dump cannot
read a newer catalog reliably, and PostgreSQL refuses it); we pick the newest
installed major >= the server's from PATH and ``/usr/lib/postgresql/*/bin``,
unless ``backup.pg_dump_path`` names one.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from opsagent.backup.errors import BackupError, ToolTooOld

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
CONNECT_TIMEOUT = 10


@dataclass(frozen=True)
class Tool:
    path: str
    version: str  # "15.20"
    major: int

    @property
    def label(self) -> str:
        return f"{Path(self.path).name} {self.version}"


def tool_version(path: str) -> Tool:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise BackupError(f"cannot run {path} --version: {exc}") from None
    match = _VERSION.search(out)
    if not match:
        raise BackupError(f"{path} --version printed {out.strip()!r}, not a PostgreSQL version")
    major = int(match.group(1))
    return Tool(path=path, version=f"{major}.{match.group(2) or 0}", major=major)


def candidates(name: str) -> list[str]:
    # Keep the name as found: Debian's /usr/bin/pg_dump links to pg_wrapper, which dispatches on argv[0].
    found: list[str] = []
    seen: set[str] = set()
    on_path = shutil.which(name)
    for path in ([on_path] if on_path else []) + sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")):
        real = os.path.realpath(path)
        if real not in seen or path == on_path:
            seen.add(real)
            found.append(path)
    return found


def choose(tools: list[Tool], server_major: int, name: str) -> Tool:
    """The newest tool whose major is >= the server's; a clear error when none is."""
    usable = [t for t in tools if t.major >= server_major]
    if usable:
        return max(usable, key=lambda t: (t.major, t.version))
    newest = max(tools, key=lambda t: t.major) if tools else None
    raise ToolTooOld(name, newest.version if newest else "(none found)", server_major, [t.path for t in tools])


def find_tool(name: str, server_major: int, override: str | None = None) -> Tool:
    """``override`` (pg_dump_path) may name the binary or its directory."""
    if override:
        path = override
        if os.path.isdir(path):
            path = os.path.join(path, name)
        elif name != "pg_dump":
            sibling = os.path.join(os.path.dirname(path), name)
            path = sibling if os.path.exists(sibling) else (shutil.which(name) or sibling)
        tool = tool_version(path)
        if tool.major < server_major:
            raise ToolTooOld(name, tool.version, server_major, [path])
        return tool
    tools = []
    for path in candidates(name):
        try:
            tools.append(tool_version(path))
        except BackupError:
            continue
    return choose(tools, server_major, name)


# -- connections ---------------------------------------------------------------------------------


def connect(dsn: str, *, autocommit: bool = True, dbname: str | None = None) -> psycopg.Connection[tuple[object, ...]]:
    params = conninfo_to_dict(dsn)
    if dbname is not None:
        params["dbname"] = dbname
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    params.setdefault("application_name", "opsagent")
    # A server that stops acknowledging (blackholed network) fails a write in 15 s instead of
    # TCP's ~15 minutes, so no backup, drill or lock statement can hang a job thread for long.
    params.setdefault("tcp_user_timeout", "15000")
    return psycopg.connect(make_conninfo(**params), autocommit=autocommit)  # type: ignore[arg-type]


def _passfile_line(password: str) -> str:
    """One .pgpass line matching any host, port, database and user (the file is private to one child)."""
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:*:{escaped}\n"


@contextlib.contextmanager
def tool_environment(dsn: str, dbname: str | None = None) -> Iterator[tuple[dict[str, str], str]]:
    """An environment and a conninfo for pg_dump/pg_restore that carry no password.

    argv is world-readable and a child's environment is readable in /proc by the same user, so the
    password goes into a 0600 PGPASSFILE in a private (0700) temporary directory, removed on exit.
    """
    params = conninfo_to_dict(dsn)
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    password = params.pop("password", None)
    if dbname is not None:
        params["dbname"] = dbname
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    params.setdefault("application_name", "opsagent")
    # A server that stops acknowledging (blackholed network) fails a write in 15 s instead of
    # TCP's ~15 minutes, so no backup, drill or lock statement can hang a job thread for long.
    params.setdefault("tcp_user_timeout", "15000")
    conninfo = make_conninfo(**params)  # type: ignore[arg-type]  # psycopg's stub wants str values
    if not password:
        yield env, conninfo
        return
    with tempfile.TemporaryDirectory(prefix="opsagent-pgpass-") as private:  # mkdtemp: mode 0700
        path = os.path.join(private, "pgpass")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(_passfile_line(str(password)))
        env["PGPASSFILE"] = path
        yield env, conninfo


def endpoint(dsn: str) -> tuple[str, int, str]:
    """(host, port, dbname) with libpq defaults and loopback spellings unified, to compare targets."""
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or "localhost").lower()
    if host in ("localhost", "127.0.0.1", "::1", "[::1]") or host.startswith("/"):
        host = "localhost"
    port = int(str(params.get("port") or 5432))
    dbname = str(params.get("dbname") or params.get("user") or os.environ.get("USER", ""))
    return host, port, dbname


def server_major(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[int, str]:
    row = conn.execute("SELECT current_setting('server_version_num')::int, current_setting('server_version')").fetchone()
    assert row is not None
    return int(str(row[0])) // 10000, str(row[1]).split()[0]
