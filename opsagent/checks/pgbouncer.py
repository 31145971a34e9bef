"""PgBouncer: clients waiting for a server connection, from the admin console.

The console (``pgbouncer`` database) speaks only the simple query protocol and
one command per query, so this check uses a ``ClientCursor`` in autocommit and
sends ``SHOW POOLS``, ``SHOW STATS`` and ``SHOW DATABASES`` (for pool sizes)
on one persistent connection. Columns are read by name: their set differs
between PgBouncer versions. The console rejects unknown startup parameters,
so no ``options``/``statement_timeout`` is sent; the runner's deadline covers
a console that stops answering.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import psycopg
from psycopg import pq

from opsagent.checks.base import CheckError, Gauge, Reading
from opsagent.checks.postgres import ConnectionSlot, connect_kwargs
from opsagent.config import PgBouncerTarget

SHOW_POOLS = "SHOW POOLS"
SHOW_STATS = "SHOW STATS"
SHOW_DATABASES = "SHOW DATABASES"
ADMIN_DB = "pgbouncer"

# per-pool field -> (metric name, help); labels database/user.
POOL_GAUGES: dict[str, tuple[str, str]] = {
    "cl_active": ("opsagent_pgbouncer_clients_active", "client connections linked to a server or idle"),
    "cl_waiting": ("opsagent_pgbouncer_clients_waiting", "clients waiting for a server connection"),
    "sv_active": ("opsagent_pgbouncer_servers_active", "server connections linked to a client"),
    "sv_idle": ("opsagent_pgbouncer_servers_idle", "server connections idle and ready"),
    "sv_used": ("opsagent_pgbouncer_servers_used", "server connections idle past server_check_delay"),
    "sv_login": ("opsagent_pgbouncer_servers_login", "server connections logging in"),
    "pool_size": ("opsagent_pgbouncer_pool_size", "maximum server connections of the pool"),
    "maxwait_seconds": ("opsagent_pgbouncer_max_wait_seconds", "how long the oldest waiting client has waited"),
}
# per-database SHOW STATS field -> (metric name, scale to base unit, help); label database.
STATS_GAUGES: dict[str, tuple[str, float, str]] = {
    "avg_wait_time": ("opsagent_pgbouncer_average_wait_seconds", 1e-6,
                      "average client wait for a server in the last stats period"),
    "avg_xact_time": ("opsagent_pgbouncer_average_transaction_seconds", 1e-6,
                      "average transaction duration in the last stats period"),
    "avg_query_time": ("opsagent_pgbouncer_average_query_seconds", 1e-6,
                       "average query duration in the last stats period"),
    "avg_xact_count": ("opsagent_pgbouncer_average_transactions_per_second", 1.0,
                       "transactions per second in the last stats period"),
}


def _rows(cur: psycopg.ClientCursor[Any], sql: str) -> list[dict[str, Any]]:
    cur.execute(sql)
    # Column names straight from the result: ``cur.description`` builds a Column object (with a
    # type lookup) per column, which cost more than the console round trip itself (benchmarks/).
    result = cur.pgresult
    if result is None or result.status != pq.ExecStatus.TUPLES_OK:
        raise CheckError(f"{sql} returned no result set; is this the PgBouncer admin console (database pgbouncer)?")
    names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _num(value: Any) -> float:
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


def summarise_pools(pools: list[dict[str, Any]], databases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per client pool (the admin pseudo-database left out) with its pool size."""
    sizes = {d.get("name"): int(_num(d.get("pool_size"))) for d in databases}
    out = []
    for p in pools:
        if p.get("database") == ADMIN_DB:
            continue
        out.append({
            "database": str(p.get("database")),
            "user": str(p.get("user")),
            "cl_active": int(_num(p.get("cl_active"))),
            "cl_waiting": int(_num(p.get("cl_waiting"))),
            "sv_active": int(_num(p.get("sv_active"))),
            "sv_idle": int(_num(p.get("sv_idle"))),
            "sv_used": int(_num(p.get("sv_used"))),
            "sv_login": int(_num(p.get("sv_login"))),
            "pool_size": sizes.get(p.get("database"), 0),
            "maxwait_seconds": round(_num(p.get("maxwait")) + _num(p.get("maxwait_us")) / 1e6, 6),
            "pool_mode": p.get("pool_mode"),
        })
    return out


def pool_saturation(pools: list[dict[str, Any]]) -> float | None:
    """The busiest pool's sv_active / pool_size (PgBouncerPoolSaturated); None without a sized pool."""
    ratios = [p["sv_active"] / p["pool_size"] for p in pools if p["pool_size"] > 0]
    return round(max(ratios), 6) if ratios else None


class PgBouncerCheck:
    """Total ``cl_waiting`` over all pools; per-pool clients, servers and waits."""

    kind: ClassVar[str] = "pgbouncer"

    def __init__(self, target: PgBouncerTarget) -> None:
        self.target = target
        self._params = connect_kwargs(target.dsn.get_secret_value(), target.deadline, statement_timeout=False)
        self._slot = ConnectionSlot()
        self._cursor_of: tuple[psycopg.Connection[Any], psycopg.ClientCursor[Any]] | None = None

    def _cursor(self) -> psycopg.ClientCursor[Any]:
        """The connection's one cursor, kept between runs (a new one per run is ~6 µs of a ~100 µs round)."""
        conn = self._slot.get(
            lambda: psycopg.connect(autocommit=True, cursor_factory=psycopg.ClientCursor, **self._params))
        kept = self._cursor_of
        if kept is not None and kept[0] is conn:
            return kept[1]
        cur: psycopg.ClientCursor[Any] = conn.cursor()  # type: ignore[assignment]
        self._cursor_of = (conn, cur)
        return cur

    def _query(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        cur = self._cursor()
        try:
            return _rows(cur, SHOW_POOLS), _rows(cur, SHOW_STATS), _rows(cur, SHOW_DATABASES)
        except psycopg.Error:
            self._slot.drop()  # re-established on the next run
            raise

    def measure(self) -> Reading:
        raw_pools, stats, databases = self._query()
        pools = summarise_pools(raw_pools, databases)
        waiting = sum(p["cl_waiting"] for p in pools)
        longest = max((p["maxwait_seconds"] for p in pools), default=0.0)
        details: dict[str, Any] = {
            "clients_waiting": waiting,
            "longest_wait_seconds": longest,
            "clients_active": sum(p["cl_active"] for p in pools),
            "servers_active": sum(p["sv_active"] for p in pools),
            "servers_idle": sum(p["sv_idle"] for p in pools),
            "pools": pools,
            "pool_saturation": pool_saturation(pools),
            "summary": (f"{waiting} client(s) waiting for a server connection"
                        + (f", longest for {longest:.1f}s" if waiting else "")),
        }
        gauges: list[Gauge] = []
        for p in pools:
            labels = {"database": p["database"], "user": p["user"]}
            gauges.extend(Gauge(metric, float(p[field]), labels, text) for field, (metric, text) in POOL_GAUGES.items())
        for row in stats:
            if row.get("database") == ADMIN_DB:
                continue
            labels = {"database": str(row.get("database"))}
            gauges.extend(Gauge(metric, _num(row[field]) * scale, labels, text)
                          for field, (metric, scale, text) in STATS_GAUGES.items() if field in row)
        if details["pool_saturation"] is not None:
            gauges.append(Gauge("opsagent_pgbouncer_pool_saturation_ratio", details["pool_saturation"],
                                help="the busiest pool's active server connections / pool_size"))
        return Reading(value=float(waiting), details=details, gauges=tuple(gauges), source="admin console")

    def context(self) -> Mapping[str, Any]:
        """The worst pools: most clients waiting, then the longest wait."""
        raw_pools, _stats, databases = self._query()
        pools = summarise_pools(raw_pools, databases)
        pools.sort(key=lambda p: (p["cl_waiting"], p["maxwait_seconds"]), reverse=True)
        return {"worst_pools": pools[:5]}

    def close(self) -> None:
        self._slot.close()
