"""One runner per fleet: a PostgreSQL advisory lock, else an flock beside a file repository.

Mechanism, in order of preference:

1. ``pg_try_advisory_lock`` on ``backup.lock_dsn`` (or the first postgres
   backup target): every sidecar of the service already reaches that database,
   and the lock is a session lock, so a holder killed with -9 loses it the moment
   its connection drops: a crash never blocks the next slot.
2. ``fcntl.flock`` on ``<file repository>/.opsagent.lock`` when no database
   answers (file-only setups); the kernel releases it when the process dies.
3. Neither (S3 repository and no database): run unlocked and say so in the log.

An explicitly configured ``backup.lock_dsn`` is never replaced by a fallback: when
it cannot be reached the lock is *not* acquired (``unreachable`` says why) and the
run is skipped, because an flock on this host is not exclusive with the advisory
lock another agent may hold. A fallback taken after the first backup target's
database failed is not treated as exclusive either (``exclusive``): cleanup then
spares recent manifest-less backups, which may be a live holder's in-flight dump.

Exactly-once per slot additionally needs a "slot done" marker, kept in the
primary repository (see :mod:`agent.backup.service`): the lock stops two agents
running at once, the marker stops a late agent re-running a finished slot.
A session lock needs a session: point ``lock_dsn`` past PgBouncer's
transaction pooling (directly at the database).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from pathlib import Path

import structlog

from opsagent.backup import pgtools

log = structlog.get_logger("opsagent.backup")


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(f"opsagent:{name}".encode()).digest()[:8], "big", signed=True)


class FleetLock:
    def __init__(self, name: str, dsn: str | None, lock_file: Path | None, *, required: bool = False) -> None:
        self.name = name
        self._dsn = dsn
        self._file = lock_file
        self._required = required  # backup.lock_dsn was configured: no fallback
        self._conn: object | None = None
        self._fd: int | None = None
        self.mechanism = "none"
        self.unreachable: str | None = None  # why the required lock database could not be asked
        self.fell_back = False  # the database did not answer and a weaker mechanism was used

    @property
    def exclusive(self) -> bool:
        """True when no other agent can be running the same job (what makes full cleanup safe)."""
        return self.mechanism == "postgres-advisory" or (self.mechanism == "flock" and not self.fell_back)

    def acquire(self, wait: float = 0.0, stop: threading.Event | None = None) -> bool:
        """Take the lock, polling up to ``wait`` seconds; False if another agent holds it."""
        deadline = time.monotonic() + wait
        while True:
            if self._try():
                return True
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                return False
            (stop or threading.Event()).wait(min(1.0, max(0.05, deadline - time.monotonic())))

    def _try(self) -> bool:
        if self._dsn is not None:
            try:
                conn = pgtools.connect(self._dsn)
            except Exception as exc:  # noqa: BLE001 - any connection failure means: fall back (unless required)
                log.warning("fleet_lock_database_unavailable", lock=self.name, error=_short(exc))
                if self._required:
                    self.unreachable = f"the lock database (backup.lock_dsn) is unreachable: {_short(exc)}"
                    return False
                self.fell_back = True
            else:
                self.unreachable = None
                try:
                    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(self.name),)).fetchone()
                except Exception:
                    conn.close()
                    raise
                if row and row[0]:
                    self._conn = conn
                    self.mechanism = "postgres-advisory"
                    return True
                conn.close()
                return False
        if self._file is not None:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            self._fd = fd
            self.mechanism = "flock"
            return True
        log.warning("fleet_lock_unavailable", lock=self.name,
                    hint="set backup.lock_dsn so that only one agent of the fleet runs backups")
        self.mechanism = "none"
        return True

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                # Unlock explicitly: the server frees a closed session's locks only when its backend
                # has exited, a moment later, and the next agent (or slot) must not find it still held.
                conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key(self.name),))  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - a dead session already lost the lock
                pass
            try:
                conn.close()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - a dead connection already released it
                pass
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _short(exc: BaseException) -> str:
    from opsagent.runtime.runner import describe_error

    return describe_error(exc)
