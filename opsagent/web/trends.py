"""The last hour of every check's values, for the status page's sparklines.

Fed by the result store (one listener call per result), read by the page. It
must stay cheap at any interval: the hour is cut into :data:`BUCKETS` slots and
each slot keeps one number (the worst value seen in it, so a short spike still
shows), so a target checked every second holds the same 60 points as one
checked every minute. A down run leaves a gap. It also remembers the last time
each target answered, which the page shows for a down target.
"""

from __future__ import annotations

import threading
from collections import deque

from opsagent.runtime.results import CheckResult
from opsagent.web.ports import TrendPoint

WINDOW_SECONDS = 3600.0
BUCKETS = 60

Key = tuple[str, str]


class TrendBuffer:
    """Per (check, target): a ring of at most :data:`BUCKETS` points over :data:`WINDOW_SECONDS`. Thread-safe."""

    def __init__(self, window: float | None = None, buckets: int = BUCKETS) -> None:
        window = WINDOW_SECONDS if window is None else window  # read at call time: demos compress the hour
        self._width = window / buckets
        self._window = window
        self._buckets = buckets
        self._lock = threading.Lock()
        self._rings: dict[Key, deque[list[float | None]]] = {}  # [bucket index, at, value]
        self._last_ok: dict[Key, float] = {}

    def on_result(self, result: CheckResult) -> None:
        """Store listener: add one result (values of down runs become gaps)."""
        value = result.value if result.up else None
        slot = float(int(result.at // self._width))
        with self._lock:
            if result.up:
                self._last_ok[result.key] = result.at
            ring = self._rings.get(result.key)
            if ring is None:
                ring = self._rings[result.key] = deque(maxlen=self._buckets)
            if ring and ring[-1][0] == slot:
                last = ring[-1]
                last[1] = result.at
                if value is not None and (last[2] is None or value > last[2]):
                    last[2] = value
                return
            ring.append([slot, result.at, value])

    def points(self, check: str, target: str, now: float) -> tuple[TrendPoint, ...]:
        """The points of the last window before ``now``, oldest first."""
        since = now - self._window
        with self._lock:
            ring = list(self._rings.get((check, target), ()))
        return tuple(TrendPoint(at=float(at), value=value) for _, at, value in ring
                     if at is not None and at >= since)

    def last_ok(self, check: str, target: str) -> float | None:
        """When this target last answered its check (since the agent started)."""
        with self._lock:
            return self._last_ok.get((check, target))
