"""A fleet of sidecars: one leader checks the shared targets, the others stand by.

Every task of a service runs an agent with the same configuration. Targets the
whole service shares (a database, a cache, a queue, a CloudWatch metric) need
one watcher, not N: N connections on a small RDS and N times the CloudWatch
bill is the complaint exporters get most. Per-process things (the task's own
CPU and memory, the app container's metrics endpoint) are checked everywhere.

Leadership is a lease on an engine the platform already runs, never home-made
consensus:

* :class:`~opsagent.runtime.leases.PostgresLease`: the session advisory lock the backups use
  (``agent.fleet_lock_dsn``, default ``backup.lock_dsn``). A leader killed with
  -9 loses it when its session drops. A leader that hangs (SIGSTOP, a stuck
  GIL) or is cut off keeps its session open, so the session carries
  ``idle_session_timeout = lease`` (PostgreSQL 14+): the server ends a session
  that stops renewing, which frees the lock. The leader fences itself too: it
  acts as leader only within two thirds of a lease after its last good renewal.
* :class:`~opsagent.runtime.leases.DynamoLease`: a lease item written with conditional writes
  (``agent.fleet_lock_table``) for stacks without PostgreSQL.

Alert state of the shared targets lives beside the lease (a small table in the
lock database, or an attribute of the lease item) so a new leader adopts what
is firing and what was already paged instead of paging again.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from opsagent.runtime.leases import Lease, lease_for
from opsagent.runtime.runner import describe_error

if TYPE_CHECKING:
    from opsagent.config import Settings, TargetBase

log = structlog.get_logger("opsagent.fleet")

# Kinds that measure this process's own task; everything else (including kinds added later) is shared.
TASK_KINDS = frozenset({"cpu", "memory"})
# Fields of an alert state that change with every result: a change of these alone is not worth a write.
VOLATILE_FIELDS = ("value", "last_at", "error")
STOP_SECONDS = 2.0  # leaving the fleet (loop exit, lock release) may take this long per step at shutdown


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


__all__ = ["Fleet", "Lease", "agent_id", "default_scope", "lease_for"]


class Fleet:
    """This agent's membership: the renewal loop, its role, and the fleet metrics.

    Roles: ``leader`` (holds the lease: checks the shared targets), ``standby``
    (another agent leads, or is about to), ``detached`` (the lock cannot be
    reached, for less than a lease: wait, it may be a blip) and ``orphan`` (the
    lock has been unreachable for a whole lease: check the shared targets anyway,
    because the lock database is often the database being watched, and a fleet
    that stands by while it is down would page nobody). ``on_change(role,
    previous)`` is called from the loop's thread on every change of role.
    """

    def __init__(self, agent: str, lease: Lease | None, lease_seconds: float,
                 on_change: Callable[[str, str | None], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.agent = agent
        self._lease = lease
        self._seconds = lease_seconds
        self._period = lease_seconds / 3
        self._on_change = on_change
        self._monotonic = monotonic
        self._valid_until = float("inf") if lease is None else 0.0
        self._leader_id: str | None = agent if lease is None else None
        self._held = lease is None
        self._role: str | None = None if lease is not None else "leader"
        self._unreachable_since: float | None = None
        self.acquired_total = 0
        self.lost_total = 0
        self.decided = threading.Event()
        if lease is None:
            self.decided.set()
        self._stop = threading.Event()
        self._wake = threading.Event()  # a state document waits to be written
        self._thread: threading.Thread | None = None
        self._published: str | None = None
        self._pending: tuple[str, str] | None = None  # (shape, document) not yet written

    @property
    def enabled(self) -> bool:
        return self._lease is not None

    @property
    def mechanism(self) -> str:
        return self._lease.mechanism if self._lease is not None else "none"

    def is_leader(self) -> bool:
        """True while this agent holds a lease renewed recently enough to act on (self-fencing)."""
        return self._held and self._monotonic() < self._valid_until

    def runs_shared(self) -> bool:
        """True while this agent checks the shared targets: as the leader, or as an orphan of an unreachable lock."""
        return self.is_leader() or self._role == "orphan"

    @property
    def role(self) -> str:
        return self._role or "pending"

    def leader_id(self) -> str | None:
        return self.agent if self.is_leader() else self._leader_id

    # -- the loop --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._lease is None:
            return
        self._thread = threading.Thread(target=self._loop, name="fleet-lease", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        """Renew every third of a lease; in between, write hand-over state as soon as it is published."""
        next_round = self._monotonic()
        while not self._stop.is_set():
            if self._monotonic() >= next_round:
                self.round()
                next_round = self._monotonic() + self._period
            else:
                self._flush()
            self._wake.wait(max(0.0, next_round - self._monotonic()))
            self._wake.clear()

    def round(self) -> None:
        """One renewal attempt; public so tests can drive the loop without waiting."""
        assert self._lease is not None
        started = self._monotonic()
        try:
            held = self._lease.renew()
            self._leader_id = self.agent if held else self._lease.holder()
            if self._unreachable_since is not None:
                log.info("fleet_lock_reachable_again", mechanism=self.mechanism)
            self._unreachable_since = None
        except Exception as exc:  # noqa: BLE001 - an unreachable lock means: not the leader
            held = False
            self._leader_id = None
            if self._unreachable_since is None:
                self._unreachable_since = started
                log.warning("fleet_lock_unreachable", mechanism=self.mechanism, error=describe_error(exc))
        if held:
            # The server fences a silent session after one lease; act only well inside it.
            self._valid_until = started + self._seconds - self._period
        self._held = held
        if held:
            role = "leader"
        elif self._unreachable_since is None:
            role = "standby"
        elif started - self._unreachable_since >= self._seconds:
            role = "orphan"
        else:
            role = "detached"
        self._decide(role)
        self._flush()

    def _decide(self, role: str) -> None:
        previous, self._role = self._role, role
        if previous == role:
            return
        if role == "leader":
            self.acquired_total += 1
            log.info("fleet_leader_acquired", agent=self.agent, mechanism=self.mechanism)
        elif previous == "leader":
            self.lost_total += 1
            log.warning("fleet_leader_lost", agent=self.agent, leader=self._leader_id, role=role)
        if role == "orphan":
            log.warning("fleet_lock_lost_checking_shared_targets", agent=self.agent, mechanism=self.mechanism,
                        reason="the fleet lock is unreachable; checking the shared targets here rather than not at all")
        elif role == "standby":
            log.info("fleet_standby", agent=self.agent, leader=self._leader_id)
        try:
            if self._on_change is not None:
                self._on_change(role, previous)
        finally:
            self.decided.set()

    def stop(self) -> None:
        """Leave the fleet: release the lease so a survivor takes over at once, not after a lease.

        Bounded (SIGTERM must stop the agent within 25 s): an unreachable lock database is left to
        fence this agent's session by itself.
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(STOP_SECONDS)
        if self._lease is None:
            return
        was, self._held = self.is_leader(), False
        releaser = threading.Thread(target=self._release, name="fleet-release", daemon=True)
        releaser.start()
        releaser.join(STOP_SECONDS)
        if was:
            log.info("fleet_leader_released", agent=self.agent, released=not releaser.is_alive())

    def _release(self) -> None:
        assert self._lease is not None
        self._flush(leaving=True)
        try:
            self._lease.release()
        except Exception as exc:  # noqa: BLE001 - it expires anyway
            log.debug("fleet_release_failed", error=describe_error(exc))

    # -- hand-over state -------------------------------------------------------------------------

    def publish(self, states: list[dict[str, Any]]) -> None:
        """Queue the shared targets' alert state for the next leader, when more than its values changed.

        One write per alert transition, not per result (a new leader's first run refreshes the values),
        made by the fleet's own thread: a slow lock database never holds up a check's thread.
        """
        if self._lease is None or not self.is_leader():
            return
        shape = json.dumps([{k: v for k, v in s.items() if k not in VOLATILE_FIELDS} for s in states],
                           sort_keys=True, default=str)
        if shape == self._published:
            return
        document = json.dumps({"version": 1, "leader": self.agent, "alerts": states}, sort_keys=True, default=str)
        self._pending = (shape, document)
        self._wake.set()

    def _flush(self, leaving: bool = False) -> None:
        """Write the queued state document while this agent leads (or is just handing the lease back)."""
        pending = self._pending
        if pending is None or self._lease is None or not (leaving or self.is_leader()):
            return
        try:
            self._lease.save_state(pending[1])
        except Exception as exc:  # noqa: BLE001 - retried on the next round; a new leader may page once more
            log.warning("fleet_state_not_saved", error=describe_error(exc))
            return
        self._published = pending[0]
        if self._pending is pending:
            self._pending = None

    def adopted_states(self) -> list[dict[str, Any]] | None:
        """What the previous leader left: its shared alert states; None when no document exists or it is unreadable
        (then this agent keeps what it persisted itself, e.g. as the last leader before a restart)."""
        if self._lease is None:
            return None
        self._published = None
        try:
            raw = self._lease.load_state()
            data = json.loads(raw) if raw else None
        except Exception as exc:  # noqa: BLE001 - keep the local state, as a restarted lone leader does
            log.warning("fleet_state_unreadable", error=describe_error(exc))
            return None
        alerts = data.get("alerts") if isinstance(data, dict) else None
        if not isinstance(alerts, list):
            return None
        return [a for a in alerts if isinstance(a, dict)]

    # -- metrics ---------------------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        leader = GaugeMetricFamily("opsagent_fleet_leader", "1 while this agent leads its fleet (checks the shared "
                                   "targets), else 0", labels=["agent"])
        leader.add_metric([self.agent], 1.0 if self.is_leader() else 0.0)
        handovers = CounterMetricFamily("opsagent_fleet_handovers", "Leadership changes of this agent "
                                        "(acquired: became leader, lost: stopped leading)", labels=["agent", "change"])
        handovers.add_metric([self.agent, "acquired"], float(self.acquired_total))
        handovers.add_metric([self.agent, "lost"], float(self.lost_total))
        return [leader, handovers]
