"""The last alert transitions (fired, resolved, silenced), kept across restarts.

The status page and ``/status`` show them so an on-call engineer arriving at
3 a.m. sees what happened before they looked. The ring is small (100 events by
default) and written atomically to ``state_dir`` on every change; a damaged
file is logged and the history starts empty rather than stopping the agent.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from opsagent import secrets
from opsagent.textio import atomic_write

log = structlog.get_logger("opsagent.alerts")

HISTORY_FILE = "history.json"
HISTORY_SIZE = 100

EventKind = Literal["fired", "resolved", "silenced"]


@dataclass(frozen=True)
class AlertEvent:
    """One transition of one alert, as a person reads it afterwards."""

    at: float  # unix time of the transition
    kind: EventKind
    alertname: str
    check: str
    target: str
    severity: str
    since: float | None = None  # when the breach began (pending_since, before `for`), for both kinds
    duration_seconds: float | None = None  # resolved: how long it fired
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AlertEvent:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if fields.get("kind") not in ("fired", "resolved", "silenced"):
            raise ValueError(f"unknown event kind {fields.get('kind')!r}")
        return cls(**fields)


class AlertHistory:
    """A persisted ring of the newest :data:`HISTORY_SIZE` events. Thread-safe."""

    def __init__(self, state_dir: Path | None, size: int = HISTORY_SIZE) -> None:
        self._path = Path(state_dir) / HISTORY_FILE if state_dir is not None else None
        self._lock = threading.Lock()
        self._events: deque[AlertEvent] = deque(maxlen=size)
        self._load()

    def _load(self) -> None:
        if self._path is None:
            return
        try:
            raw = json.loads(self._path.read_text(encoding="utf-8"))
            events = [AlertEvent.from_json(item) for item in raw.get("events", [])]
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("alert_history_unreadable", path=str(self._path), error=secrets.scrub(str(exc)))
            return
        self._events.extend(events)

    def record(self, event: AlertEvent) -> None:
        with self._lock:
            self._events.append(event)
            data = json.dumps({"version": 1, "events": [e.to_json() for e in self._events]}).encode()
        if self._path is None:
            return
        try:
            atomic_write(self._path, data)
        except OSError as exc:  # disk full: the page still goes out; the history catches up on the next write
            log.error("alert_history_write_failed", path=str(self._path), error=secrets.scrub(str(exc)))

    def recent(self, limit: int = HISTORY_SIZE) -> list[AlertEvent]:
        """The newest ``limit`` events, newest first."""
        with self._lock:
            events = list(self._events)
        return events[::-1][:limit]
