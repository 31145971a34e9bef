"""The fleet lock's backends: a PostgreSQL advisory lock, or a DynamoDB lease.

Both are engines the platform already runs; neither is home-made consensus.
:class:`PostgresLease` is a session advisory lock whose session carries
``idle_session_timeout = lease``, so the server itself ends the session of a
leader that hangs or is cut off (a crashed leader's session simply drops).
:class:`DynamoLease` is an item written with conditional updates and an expiry.
Each also stores the fleet's hand-over state beside the lock (see
:mod:`opsagent.runtime.fleet`).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from opsagent.runtime.runner import describe_error

if TYPE_CHECKING:
    from opsagent.config import Settings

log = structlog.get_logger("opsagent.fleet")

APPLICATION_PREFIX = "opsagent-fleet:"
STATE_TABLE = "opsagent_fleet_state"


def fleet_lock_key(name: str) -> int:
    """The advisory lock key of the fleet named ``name`` (a signed 64-bit integer)."""
    return int.from_bytes(hashlib.sha256(f"opsagent:fleet:{name}".encode()).digest()[:8], "big", signed=True)


class Lease(Protocol):
    """One backend's view of the fleet lock. Methods may raise on a backend failure."""

    mechanism: str

    def renew(self) -> bool:
        """Take the lease, or keep it; True while this agent holds it."""
        ...

    def holder(self) -> str | None:
        """The agent id of the current holder, None when nobody holds it."""
        ...

    def save_state(self, document: str) -> None:
        """Store the fleet's alert state (only while holding the lease)."""
        ...

    def load_state(self) -> str | None:
        ...

    def release(self) -> None:
        ...


class PostgresLease:
    """The fleet lock as a PostgreSQL session advisory lock, fenced by ``idle_session_timeout``."""

    mechanism = "postgres-advisory"

    def __init__(self, dsn: str, fleet: str, agent: str, lease: float) -> None:
        self._dsn = dsn
        self._fleet = fleet
        self._agent = agent
        self._lease = lease
        self._key = fleet_lock_key(fleet)
        self._io_timeout = max(1.0, lease / 3)
        self._io = threading.Lock()
        self._conn: Any = None
        self._held = False
        self._table_ok: bool | None = None

    # Every statement runs under a watchdog: a cut network would otherwise block recv() forever.
    def _call(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self._connection()
        timer = threading.Timer(self._io_timeout, _shutdown_socket, args=(conn,))
        timer.daemon = True
        timer.start()
        try:
            cursor = conn.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description is not None else []
        except Exception:
            self._drop()
            raise
        finally:
            timer.cancel()

    def _connection(self) -> Any:
        if self._conn is None:
            import psycopg

            conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=max(1, round(self._io_timeout)),
                                   application_name=(APPLICATION_PREFIX + self._agent)[:63])
            try:
                if conn.info.server_version >= 140000:
                    conn.execute(f"SET idle_session_timeout = {int(self._lease * 1000)}")
                else:
                    log.warning("fleet_lease_unfenced", reason="PostgreSQL before 14 has no idle_session_timeout; "
                                "a hung leader keeps the lock until its session drops")
            except Exception:
                conn.close()
                raise
            self._conn = conn
            self._held = False
        return self._conn

    def _drop(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            threading.Thread(target=_close_quietly, args=(conn,), name="fleet-lock-close", daemon=True).start()

    def renew(self) -> bool:
        with self._io:
            if self._held:
                # Still ours? (A session the server ended reconnects above, without the lock.)
                rows = self._call("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                                  "AND pid = pg_backend_pid() AND classid::bigint = %s AND objid::bigint = %s "
                                  "AND objsubid = 1", _split(self._key))
                self._held = bool(rows and rows[0][0])
                if self._held:
                    return True
            rows = self._call("SELECT pg_try_advisory_lock(%s)", (self._key,))
            self._held = bool(rows and rows[0][0])
            return self._held

    def holder(self) -> str | None:
        with self._io:
            rows = self._call("SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                              "WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = %s "
                              "AND l.objid::bigint = %s AND l.objsubid = 1", _split(self._key))
        name = str(rows[0][0]) if rows and rows[0][0] else ""
        return name.removeprefix(APPLICATION_PREFIX) if name.startswith(APPLICATION_PREFIX) else None

    def save_state(self, document: str) -> None:
        with self._io:
            if not self._held or self._table_ok is False:
                return
            if self._table_ok is None:
                try:
                    self._call(f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (fleet text PRIMARY KEY, holder text, "
                               "state text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())")
                except Exception as exc:  # noqa: BLE001 - no CREATE privilege: hand-over relies on fingerprints
                    log.warning("fleet_state_table_unavailable", table=STATE_TABLE, error=describe_error(exc),
                                hint="grant CREATE, or create the table; a new leader may page again once")
                    self._table_ok = False
                    return
                self._table_ok = True
            self._call(f"INSERT INTO {STATE_TABLE} (fleet, holder, state) VALUES (%s, %s, %s) "
                       "ON CONFLICT (fleet) DO UPDATE SET holder = EXCLUDED.holder, state = EXCLUDED.state, "
                       "updated_at = now()", (self._fleet, self._agent, document))

    def load_state(self) -> str | None:
        with self._io:
            exists = self._call("SELECT to_regclass(%s) IS NOT NULL", (STATE_TABLE,))
            if not (exists and exists[0][0]):
                return None
            rows = self._call(f"SELECT state FROM {STATE_TABLE} WHERE fleet = %s", (self._fleet,))
        return str(rows[0][0]) if rows else None

    def release(self) -> None:
        with self._io:
            if self._held and self._conn is not None:
                try:
                    self._call("SELECT pg_advisory_unlock(%s)", (self._key,))
                except Exception:  # noqa: BLE001 - a dead session already lost the lock
                    pass
            self._drop()


class DynamoLease:
    """The fleet lock as a DynamoDB item taken and renewed with conditional writes."""

    mechanism = "dynamodb-lease"

    def __init__(self, table: str, fleet: str, agent: str, lease: float, region: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        from opsagent import aws

        self._table = table
        self._key = {"pk": {"S": f"fleet#{fleet}"}}
        # The holder is this process, not just its id: two processes given one `agent.id` by mistake
        # must still exclude each other.
        self._agent = f"{agent}#{uuid.uuid4().hex[:12]}"
        self._lease = lease
        self._clock = clock
        self._client = aws.client("dynamodb", region, timeout=max(1.0, lease / 4), max_attempts=2)

    def renew(self) -> bool:
        now = self._clock()
        try:
            self._client.update_item(
                TableName=self._table, Key=self._key,
                UpdateExpression="SET holder = :me, expires_at = :exp",
                ConditionExpression="attribute_not_exists(pk) OR holder = :me OR expires_at < :now",
                ExpressionAttributeValues={":me": {"S": self._agent}, ":exp": {"N": repr(now + self._lease)},
                                           ":now": {"N": repr(now)}},
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def _item(self) -> dict[str, Any]:
        item: dict[str, Any] = self._client.get_item(TableName=self._table, Key=self._key,
                                                     ConsistentRead=True).get("Item") or {}
        return item

    def holder(self) -> str | None:
        item = self._item()
        if not item or float(item.get("expires_at", {}).get("N", "0")) < self._clock():
            return None
        return str(item.get("holder", {}).get("S", "")).rpartition("#")[0] or None

    def save_state(self, document: str) -> None:
        try:
            self._client.update_item(
                TableName=self._table, Key=self._key, UpdateExpression="SET fleet_state = :s",
                ConditionExpression="holder = :me",
                ExpressionAttributeValues={":s": {"S": document}, ":me": {"S": self._agent}},
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            log.warning("fleet_state_not_saved", reason="the lease moved to another agent")

    def load_state(self) -> str | None:
        value = self._item().get("fleet_state", {}).get("S")
        return str(value) if value else None

    def release(self) -> None:
        try:
            self._client.update_item(
                TableName=self._table, Key=self._key, UpdateExpression="SET expires_at = :zero",
                ConditionExpression="holder = :me",
                ExpressionAttributeValues={":zero": {"N": "0"}, ":me": {"S": self._agent}},
            )
        except Exception as exc:  # noqa: BLE001 - the lease then simply expires
            log.debug("fleet_release_failed", error=describe_error(exc))


def lease_for(settings: Settings, agent: str) -> Lease | None:
    """The configured fleet lock, or None for a lone agent (no lock configured: it checks everything)."""
    a = settings.agent
    if a.fleet_lock_table is not None:
        return DynamoLease(a.fleet_lock_table, a.name, agent, a.fleet_lease, region=a.region)
    dsn: Any = a.fleet_lock_dsn or settings.backup.lock_dsn  # SecretStr (the models' DSN type is opaque to mypy)
    if dsn is not None:
        return PostgresLease(dsn.get_secret_value(), a.name, agent, a.fleet_lease)
    return None


def _split(key: int) -> tuple[int, int]:
    """pg_locks shows a bigint advisory key as classid (high 32 bits) and objid (low 32 bits)."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


def _shutdown_socket(conn: Any) -> None:
    """Wake a statement blocked on a silent network: shut the socket down (the fd stays psycopg's)."""
    try:
        fd = conn.pgconn.socket
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()
    except Exception as exc:  # noqa: BLE001 - already closed: nothing is blocked
        log.debug("fleet_socket_shutdown_failed", error=describe_error(exc))


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception as exc:  # noqa: BLE001 - a broken session is gone either way
        log.debug("fleet_lock_close_failed", error=describe_error(exc))
