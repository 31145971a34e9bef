"""Check results and the in-memory store of the latest result per target."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from opsagent import secrets
from opsagent.checks.base import Gauge

log = structlog.get_logger("opsagent.runtime")


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one scheduled run of one target, up or down."""

    check: str
    target: str
    up: bool
    value: float | None
    at: float  # unix time the run finished
    duration: float
    error: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    gauges: tuple[Gauge, ...] = ()
    source: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.check, self.target)


class ResultStore:
    """Latest result per (check, target); listeners hear about every new result.

    Readers (HTTP, metrics) get snapshots; the version number lets the metrics
    renderer skip work when nothing changed since the last scrape. Listeners are
    called as APScheduler dispatches its events: from a copy of the list taken
    under the lock (subscribing meanwhile is safe), each one guarded, so one
    listener that raises is logged and the next one still gets the result.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[tuple[str, str], CheckResult] = {}
        self._listeners: list[Callable[[CheckResult], None]] = []
        self.version = 0

    def subscribe(self, listener: Callable[[CheckResult], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def record(self, result: CheckResult) -> None:
        with self._lock:
            self._latest[result.key] = result
            self.version += 1
            listeners = tuple(self._listeners)
        for listener in listeners:
            try:
                listener(result)
            except Exception as exc:  # noqa: BLE001 - one broken listener must not starve the others
                log.error("result_listener_failed", check=result.check, target=result.target,
                          listener=getattr(listener, "__qualname__", repr(listener)), error=secrets.scrub(f"{type(exc).__name__}: {exc}")[:500])

    def touch(self) -> None:
        """Mark derived state (alerts, backups) changed so renderers refresh."""
        with self._lock:
            self.version += 1

    def snapshot(self) -> list[CheckResult]:
        with self._lock:
            return list(self._latest.values())

    def get(self, check: str, target: str) -> CheckResult | None:
        with self._lock:
            return self._latest.get((check, target))

    def forget(self, check: str, target: str) -> None:
        """Drop a target's latest result (a fleet standby: another agent reports it now)."""
        with self._lock:
            if self._latest.pop((check, target), None) is not None:
                self.version += 1
