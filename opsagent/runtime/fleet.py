"""A fleet of sidecars: one leader checks the shared targets, the others stand by.

Every task of a service runs an agent with the same configuration. Targets the
whole service shares (a database, a cache, a queue, a CloudWatch metric) need
one watcher, not N: N connections on a small RDS and N times the CloudWatch
bill is the complaint exporters get most. Per-process things (the task's own
CPU and memory, the app container's metrics endpoint) are checked everywhere.

Leadership is a lease on an engine the platform already runs, never home-made
consensus:

* :class:`PostgresLease`: the session advisory lock the backups use
  (``agent.fleet_lock_dsn``, default ``backup.lock_dsn``). A leader killed with
  -9 loses it when its session drops. A leader that hangs (SIGSTOP, a stuck
  GIL) or is cut off keeps its session open, so the session carries
  ``idle_session_timeout = lease`` (PostgreSQL 14+): the server ends a session
  that stops renewing, which frees the lock. The leader fences itself too: it
  acts as leader only within two thirds of a lease after its last good renewal.
* :class:`DynamoLease`: a lease item written with conditional writes
  (``agent.fleet_lock_table``) for stacks without PostgreSQL.

Alert state of the shared targets lives beside the lease (a small table in the
lock database, or an attribute of the lease item) so a new leader adopts what
is firing and what was already paged instead of paging again.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from opsagent.runtime.runner import describe_error

if TYPE_CHECKING:
    from opsagent.config import Settings, TargetBase

log = structlog.get_logger("opsagent.fleet")

# Kinds that measure this process's own task; everything else (including kinds added later) is shared.
TASK_KINDS = frozenset({"cpu", "memory"})
APPLICATION_PREFIX = "opsagent-fleet:"
STATE_TABLE = "opsagent_fleet_state"


def default_scope(kind: str, target: TargetBase) -> str:
    """``shared`` or ``task``: the target's own ``scope``, else the default of its kind (SPEC §9.6)."""
    if target.scope is not None:
        return target.scope
    if kind in TASK_KINDS:
        return "task"
    if kind == "error_rate" and getattr(target, "metrics_url", None) is not None:
        return "task"  # the app container's own endpoint: each task measures its own app
    return "shared"


def agent_id(settings: Settings) -> str:
    """This process's id in the fleet (``checked_by``): ``agent.id``, else ``name@host:pid``."""
    return settings.agent.id or f"{settings.agent.name}@{socket.gethostname()}:{os.getpid()}"


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
        self._agent = agent
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
        return str(item.get("holder", {}).get("S")) or None

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


class Fleet:
    """This agent's membership: the renewal loop, who leads, and the fleet metrics.

    ``on_change(leader)`` is called from the loop's thread whenever this agent
    becomes or stops being the leader (and once after the first attempt).
    """

    def __init__(self, agent: str, lease: Lease | None, lease_seconds: float,
                 on_change: Callable[[bool], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.agent = agent
        self._lease = lease
        self._seconds = lease_seconds
        self._period = lease_seconds / 3
        self._on_change = on_change
        self._monotonic = monotonic
        self._valid_until = float("inf") if lease is None else 0.0
        self._leader_id: str | None = agent if lease is None else None
        self._acting: bool | None = None if lease is not None else True
        self._failing = False
        self.acquired_total = 0
        self.lost_total = 0
        self.decided = threading.Event()
        if lease is None:
            self.decided.set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._published: str | None = None

    @property
    def enabled(self) -> bool:
        return self._lease is not None

    @property
    def mechanism(self) -> str:
        return self._lease.mechanism if self._lease is not None else "none"

    def is_leader(self) -> bool:
        """True while this agent holds a lease renewed recently enough to act on (self-fencing)."""
        return bool(self._acting) and self._monotonic() < self._valid_until

    def leader_id(self) -> str | None:
        return self.agent if self.is_leader() else self._leader_id

    # -- the loop --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._lease is None:
            return
        self._thread = threading.Thread(target=self._loop, name="fleet-lease", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.round()
            self._stop.wait(self._period)

    def round(self) -> None:
        """One renewal attempt; public so tests can drive the loop without waiting."""
        assert self._lease is not None
        started = self._monotonic()
        try:
            held = self._lease.renew()
            self._leader_id = self.agent if held else self._lease.holder()
            if self._failing:
                log.info("fleet_lock_reachable_again", mechanism=self.mechanism)
            self._failing = False
        except Exception as exc:  # noqa: BLE001 - an unreachable lock means: not the leader
            held = False
            self._leader_id = None
            if not self._failing:
                log.warning("fleet_lock_unreachable", mechanism=self.mechanism, error=describe_error(exc))
            self._failing = True
        if held:
            # The server fences a silent session after one lease; act only well inside it.
            self._valid_until = started + self._seconds - self._period
        self._decide(held)

    def _decide(self, held: bool) -> None:
        before, self._acting = self._acting, held
        if before == held:
            return
        if held:
            self.acquired_total += 1
            log.info("fleet_leader_acquired", agent=self.agent, mechanism=self.mechanism)
        elif before:
            self.lost_total += 1
            log.warning("fleet_leader_lost", agent=self.agent, leader=self._leader_id)
        else:
            log.info("fleet_standby", agent=self.agent, leader=self._leader_id)
        try:
            if self._on_change is not None:
                self._on_change(held)
        finally:
            self.decided.set()

    def stop(self) -> None:
        """Leave the fleet: release the lease so a survivor takes over at once, not after a lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._seconds)
        if self._lease is not None:
            was = self._acting
            self._acting = False
            try:
                self._lease.release()
            except Exception as exc:  # noqa: BLE001 - it expires anyway
                log.debug("fleet_release_failed", error=describe_error(exc))
            if was:
                log.info("fleet_leader_released", agent=self.agent)

    # -- hand-over state -------------------------------------------------------------------------

    def publish(self, states: list[dict[str, Any]]) -> None:
        """Store the shared targets' alert state for the next leader (only when it changed)."""
        if self._lease is None or not self.is_leader():
            return
        document = json.dumps({"version": 1, "leader": self.agent, "alerts": states}, sort_keys=True, default=str)
        if document == self._published:
            return
        try:
            self._lease.save_state(document)
            self._published = document
        except Exception as exc:  # noqa: BLE001 - the next change retries; a new leader may page once more
            log.warning("fleet_state_not_saved", error=describe_error(exc))

    def adopted_states(self) -> list[dict[str, Any]]:
        """What the previous leader left: its shared alert states (empty when none or unreadable)."""
        if self._lease is None:
            return []
        self._published = None
        try:
            raw = self._lease.load_state()
            data = json.loads(raw) if raw else {}
        except Exception as exc:  # noqa: BLE001 - start from nothing, as a first leader does
            log.warning("fleet_state_unreadable", error=describe_error(exc))
            return []
        alerts = data.get("alerts") if isinstance(data, dict) else None
        return [a for a in alerts if isinstance(a, dict)] if isinstance(alerts, list) else []

    # -- metrics ---------------------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        leader = GaugeMetricFamily("opsagent_fleet_leader", "1 while this agent leads its fleet (checks the shared "
                                   "targets), else 0", labels=["agent", "mechanism"])
        leader.add_metric([self.agent, self.mechanism], 1.0 if self.is_leader() else 0.0)
        handovers = CounterMetricFamily("opsagent_fleet_handovers", "Leadership changes of this agent "
                                        "(acquired: became leader, lost: stopped leading)", labels=["agent", "change"])
        handovers.add_metric([self.agent, "acquired"], float(self.acquired_total))
        handovers.add_metric([self.agent, "lost"], float(self.lost_total))
        return [leader, handovers]


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
