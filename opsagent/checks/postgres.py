"""PostgreSQL: connections in use against the usable ``max_connections``.

Usable means ``max_connections`` minus the slots only superusers (and, on 16+,
``pg_use_reserved_connections`` members) may take: an application runs out of
connections when it reaches that number, not ``max_connections``. Everything
comes from one query on one persistent, tagged connection
(``application_name=opsagent``) so the agent never piles up connections on the
database it watches (postgres_exporter issues 531, 921).

Rows of other roles' sessions are hidden from a role without ``pg_monitor``
(``backend_type`` is NULL): they are counted as in use, so the ratio errs on
the side of paging, and ``details.hidden_backends`` says how many there were.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any, ClassVar, cast

import psycopg
from psycopg import conninfo

from opsagent.checks.base import CheckError, Gauge, Reading
from opsagent.config import PostgresTarget

APPLICATION_NAME = "opsagent"
COLD_START_PAUSE = 0.25  # seconds between connect attempts to a waking compute (idle_ok)

# One round trip. ``current_setting(name, true)`` is NULL where the setting does
# not exist (``reserved_connections`` before 16), so the query is version-agnostic.
MEASURE_SQL = """
WITH act AS MATERIALIZED (
    SELECT pid, state, backend_type, usename, query_start, state_change
    FROM pg_stat_activity
    WHERE backend_type = 'client backend' OR (backend_type IS NULL AND usename IS NOT NULL)
)
SELECT
    current_setting('max_connections')::int,
    current_setting('superuser_reserved_connections')::int,
    COALESCE(current_setting('reserved_connections', true), '0')::int,
    (SELECT count(*) FROM act),
    (SELECT count(*) FROM act WHERE backend_type IS NULL),
    (SELECT COALESCE(json_object_agg(s, n), '{}'::json)
       FROM (SELECT COALESCE(state, 'hidden') AS s, count(*) AS n FROM act GROUP BY 1) AS x),
    (SELECT COALESCE(EXTRACT(EPOCH FROM max(clock_timestamp() - state_change)), 0)::float8
       FROM act WHERE state IN ('idle in transaction', 'idle in transaction (aborted)')),
    (SELECT COALESCE(EXTRACT(EPOCH FROM max(clock_timestamp() - query_start)), 0)::float8
       FROM act WHERE state = 'active' AND pid <> pg_backend_pid()),
    pg_is_in_recovery(),
    CASE WHEN pg_is_in_recovery() THEN
        CASE WHEN pg_last_wal_receive_lsn() IS NOT NULL
                  AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8
             ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)::float8
        END
    END,
    CASE WHEN pg_is_in_recovery() THEN
        COALESCE(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::float8
    END,
    (SELECT CASE WHEN bool_and(state IS NOT NULL) THEN EXTRACT(EPOCH FROM max(COALESCE(replay_lag, interval '0')))
            END::float8 FROM pg_stat_replication)
"""

CONTEXT_SQL = """
SELECT COALESCE(NULLIF(application_name, ''), '(none)'), COALESCE(usename, '(hidden)'),
       COALESCE(state, '(hidden)'), count(*)
FROM pg_stat_activity
WHERE backend_type = 'client backend' OR (backend_type IS NULL AND usename IS NOT NULL)
GROUP BY 1, 2, 3
ORDER BY 4 DESC, 1, 2, 3
LIMIT 10
"""

# details key -> (metric name, help); per-state counts and replica lag are added separately.
GAUGES: dict[str, tuple[str, str]] = {
    "max_connections": ("opsagent_postgres_max_connections", "max_connections setting"),
    "usable_connections": ("opsagent_postgres_usable_connections",
                           "max_connections minus superuser/reserved slots"),
    "in_use": ("opsagent_postgres_connections_in_use", "client connections in use"),
    "longest_idle_in_transaction_seconds": ("opsagent_postgres_longest_idle_in_transaction_seconds",
                                            "age of the oldest idle-in-transaction session"),
    "longest_query_seconds": ("opsagent_postgres_longest_query_seconds", "age of the longest running query"),
    "replication_lag_seconds": ("opsagent_postgres_replication_lag_seconds",
                                "replay lag of this replica behind its primary"),
    "replication_lag_bytes": ("opsagent_postgres_replication_lag_bytes",
                              "WAL received but not yet replayed on this replica"),
    "replication_lag_max_seconds": ("opsagent_postgres_replication_lag_max_seconds",
                                    "this replica's lag, or on a primary its slowest replica's replay_lag"),
}


def connect_kwargs(dsn: str, deadline: float, *, statement_timeout: bool = True) -> dict[str, Any]:
    """libpq parameters: the DSN's own (sslmode, sslrootcert…) plus timeouts and our tag.

    Options already in the DSN are kept; ours are appended to ``options`` so a
    user's ``-c search_path=…`` survives.
    """
    params: dict[str, Any] = conninfo.conninfo_to_dict(dsn)
    params.setdefault("application_name", APPLICATION_NAME)
    params["connect_timeout"] = max(2, min(5, math.ceil(deadline)))
    params.setdefault("keepalives", 1)
    params.setdefault("keepalives_idle", 30)
    params.setdefault("keepalives_interval", 10)
    params.setdefault("keepalives_count", 3)
    if statement_timeout:
        ms = max(100, int(deadline * 800))
        extra = f"-c statement_timeout={ms} -c lock_timeout={ms}"
        params["options"] = f"{params['options']} {extra}" if params.get("options") else extra
    return params


def close_connection(conn: psycopg.Connection[Any]) -> bool:
    """Close ``conn``, unless another thread is inside a query on it: then only shut its socket down.

    The runner closes an abandoned check from another thread while the measuring
    thread may still be blocked in libpq on that connection. Freeing libpq's
    connection under it is a use-after-free that aborts the whole process (glibc
    "invalid stdio handle", found by the fault suite's soak). Shutting the socket
    down instead makes the blocked call fail in its own thread, which then closes
    the connection itself. True when the connection was closed here.
    """
    if conn.lock.acquire(blocking=False):
        try:
            conn.close()
        finally:
            conn.lock.release()
        return True
    try:
        dup = socket.socket(fileno=os.dup(conn.pgconn.socket))
    except (OSError, psycopg.Error):
        return False
    try:
        dup.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        dup.close()
    return False


def fetch_bounded(conn: psycopg.Connection[Any], sql: str, limit: int, what: str) -> list[tuple[Any, ...]]:
    """At most ``limit`` rows of ``sql``, row by row (libpq single-row mode), never the whole answer in memory.

    A normal result is read whole by libpq before the first row is returned, so a
    server streaming rows without end (a hostile or broken endpoint) would grow
    the agent's memory until the deadline. Here one row more than ``limit`` is a
    check error; the socket is shut down first so that psycopg's drain of the
    rest (after its cancel request) fails at once instead of reading on.
    """
    rows: list[tuple[Any, ...]] = []
    stream = cast(Generator[tuple[Any, ...], None, None], conn.cursor().stream(sql))  # a generator, typed Iterator
    try:
        for row in stream:
            if len(rows) == limit:
                close_connection(conn)
                raise CheckError(f"{what} answered more than {limit} rows; is this a PostgreSQL server?")
            rows.append(row)
    finally:
        stream.close()
    return rows


class ConnectionSlot:
    """A check's one persistent connection, safe against ``close()`` from the runner's thread.

    The measuring thread calls :meth:`get` and :meth:`drop`; the runner calls
    :meth:`close` (shutdown, or a run it gave up on) from another thread, after
    which the check is never used again. A connection that completes after that
    (the run was abandoned mid-connect) is closed at once instead of being kept
    by a check nobody will close: that leaked one session per hung connect
    (found by the fault suite's soak).
    """

    def __init__(self) -> None:
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        self._lock = threading.Lock()

    def get(self, connect: Callable[[], psycopg.Connection[Any]]) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self.drop()
        conn = connect()
        with self._lock:
            if not self._closed:
                self._conn = conn
                return conn
        conn.close()
        raise CheckError("the check was closed while connecting (its run had been abandoned)")

    def drop(self) -> None:
        """Forget a broken connection (measuring thread); the next ``get`` reconnects."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """For good, from any thread."""
        with self._lock:
            self._closed = True
            conn = self._conn
        if conn is not None and close_connection(conn):
            with self._lock:
                if self._conn is conn:
                    self._conn = None


def replication_lag_max(in_recovery: bool, own_lag: float | None, replicas_lag: float | None) -> float | None:
    """What PostgresReplicaLagHigh compares: a replica's own lag; a primary's slowest ``pg_stat_replication``
    replay_lag, so one primary target covers its replicas (None: no replicas, or their rows are hidden).

    ``replay_lag`` is NULL once a replica has caught up and no WAL flows: no lag.
    A role without pg_monitor sees the rows with ``state`` NULL too: the query
    then returns NULL, so the alarm is unknown rather than a false "no lag".
    """
    if in_recovery:
        return own_lag
    return None if replicas_lag is None else round(max(0.0, float(replicas_lag)), 3)


class PostgresCheck:
    """Connections in use / usable, by state, oldest idle transaction, replica lag."""

    kind: ClassVar[str] = "postgres"

    def __init__(self, target: PostgresTarget) -> None:
        self.target = target
        self._params = connect_kwargs(target.dsn.get_secret_value(), target.deadline)
        self._per_run = target.connect == "per_run"
        self._slot = ConnectionSlot()
        # MEASURE_SQL is not prepared: it is read row by row (fetch_bounded) so that an endpoint streaming
        # rows cannot grow the agent's memory, and psycopg streams only unprepared statements. That costs
        # about a millisecond of planning per run (measured here: 0.4 ms prepared, 1.7 ms streamed).
        self._connect_seconds: float | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        """One connect; with ``idle_ok``, attempts until most of the deadline is spent.

        A suspended serverless compute (Neon) refuses or stalls connections while it
        wakes, for a second or a few: that is a cold start, not an outage.
        """
        started = time.monotonic()
        if not self.target.idle_ok:
            conn = psycopg.connect(autocommit=True, **self._params)
        else:
            budget = started + self.target.deadline * 0.8
            while True:
                left = budget - time.monotonic()
                try:
                    conn = psycopg.connect(autocommit=True, **{**self._params, "connect_timeout": max(1, math.ceil(left))})
                    break
                except psycopg.OperationalError:
                    if left <= COLD_START_PAUSE * 2:
                        raise
                    time.sleep(COLD_START_PAUSE)  # the compute is waking up; ask again shortly
        self._connect_seconds = time.monotonic() - started
        return conn

    def _connection(self) -> psycopg.Connection[Any]:
        return self._slot.get(self._connect)

    def _fetchone(self, sql: str) -> tuple[Any, ...]:
        conn = self._connection()
        try:
            rows = fetch_bounded(conn, sql, 1, "the pg_stat_activity query")
        except (psycopg.Error, CheckError):
            self._slot.drop()  # a broken session is re-established on the next run
            raise
        if not rows:
            raise CheckError("pg_stat_activity query returned no row")
        return rows[0]

    def measure(self) -> Reading:
        self._connect_seconds = None
        try:
            reading = self._measure()
        finally:
            if self._per_run:
                self._slot.drop()  # disconnect so a scale-to-zero compute may suspend until the next run
        took = self._connected_in()
        if took is None or not (self._per_run or self.target.idle_ok):
            return reading
        details = {**reading.details, "connect": self.target.connect, "connect_seconds": round(took, 3)}
        return Reading(reading.value, details, reading.gauges, reading.source)

    def _connected_in(self) -> float | None:
        """Seconds the last run's connect took (a cold start shows here); None when it reused a connection."""
        return self._connect_seconds

    def _measure(self) -> Reading:
        (max_conn, su_reserved, reserved, in_use, hidden, by_state, idle_tx, longest_query,
         in_recovery, lag_s, lag_bytes, replicas_lag) = self._fetchone(MEASURE_SQL)
        usable = max_conn - su_reserved - reserved
        if usable <= 0:
            raise CheckError(
                f"max_connections={max_conn} leaves no usable slot after superuser_reserved_connections="
                f"{su_reserved} and reserved_connections={reserved}"
            )
        details: dict[str, Any] = {
            "max_connections": max_conn,
            "superuser_reserved_connections": su_reserved,
            "reserved_connections": reserved,
            "usable_connections": usable,
            "in_use": in_use,
            "usage": f"{in_use}/{usable} usable connections in use ({in_use / usable:.0%})",
            "by_state": {str(k): int(v) for k, v in sorted(by_state.items())},
            "longest_idle_in_transaction_seconds": round(float(idle_tx), 3),
            "longest_query_seconds": round(float(longest_query), 3),
            "role": "replica" if in_recovery else "primary",
        }
        if hidden:
            details["hidden_backends"] = hidden
            details["note"] = (f"{hidden} sessions of other roles are hidden and counted as in use; "
                               "grant pg_monitor to the check's role for exact states")
        if in_recovery:
            details["replication_lag_seconds"] = round(max(0.0, float(lag_s or 0.0)), 3)
            details["replication_lag_bytes"] = int(lag_bytes or 0)
        lag_max = replication_lag_max(bool(in_recovery), details.get("replication_lag_seconds"), replicas_lag)
        if lag_max is not None:
            details["replication_lag_max_seconds"] = lag_max
        gauges = [Gauge(metric, float(details[key]), help=text)
                  for key, (metric, text) in GAUGES.items() if key in details]
        gauges.extend(Gauge("opsagent_postgres_connections", float(n), {"state": state},
                            "client connections by state") for state, n in details["by_state"].items())
        return Reading(value=in_use / usable, details=details, gauges=tuple(gauges), source="pg_stat_activity")

    def context(self) -> Mapping[str, Any]:
        """Who holds the connections: top application/user/state groups."""
        rows = fetch_bounded(self._connection(), CONTEXT_SQL, 10, "the connection holders query")
        return {"top_connection_holders": [
            {"application_name": app, "user": user, "state": state, "connections": int(n)}
            for app, user, state, n in rows
        ]}

    def close(self) -> None:
        self._slot.close()
