"""A watcher that removes a restore's scratch database if the restoring process dies.

``opsagent restore`` restores into a scratch database and renames it only on
success, so a failure never leaves a half-restored database under the target's
name. A ``finally`` drops the scratch database on an ordinary failure; this
watcher covers what ``finally`` cannot: ``kill -9``, an OOM kill, a lost
terminal. It runs as its own process (own session, so a signal to the
restore's process group does not take it along), learns the scratch database
and pg_restore's process group over its stdin, and when that pipe closes
without ``done`` it kills pg_restore and drops the scratch database.

The DSN travels over the pipe, never in argv (which other users can read).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import IO, Any

DONE = "done"


class Janitor:
    """The parent's side: start the watcher, tell it what to clean, dismiss it on success."""

    def __init__(self, admin_dsn: str, database: str) -> None:
        self._proc: subprocess.Popen[str] | None = subprocess.Popen(
            [sys.executable, "-m", "opsagent.backup.janitor"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        self._send({"dsn": admin_dsn, "database": database})

    def _send(self, message: dict[str, Any] | str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        try:
            proc.stdin.write((message if isinstance(message, str) else json.dumps(message)) + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._proc = None  # the watcher is gone; the caller's finally still cleans up

    def watch_process(self, pid: int) -> None:
        """pg_restore's process group, killed by the watcher if this process dies."""
        self._send({"pgid": pid})

    def dismiss(self) -> None:
        """Nothing left to clean (renamed or already dropped): the watcher exits without acting."""
        self._send(DONE)
        self._close()

    def abandon(self) -> None:
        """Close the pipe without ``done``: the watcher kills pg_restore and drops the scratch database."""
        self._close()

    def _close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _watch(stream: IO[str]) -> int:
    dsn = database = None
    pgid: int | None = None
    for line in stream:
        line = line.strip()
        if line == DONE:
            return 0
        message = json.loads(line)
        dsn = message.get("dsn", dsn)
        database = message.get("database", database)
        pgid = message.get("pgid", pgid)
    # The restoring process died without saying it was done: undo what it left.
    if pgid is not None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if dsn and database:
        from psycopg import sql

        from opsagent.backup import pgtools

        conn = pgtools.connect(dsn)
        try:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        finally:
            conn.close()
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C at the terminal is for the restore, not its watcher
    sys.exit(_watch(sys.stdin))
