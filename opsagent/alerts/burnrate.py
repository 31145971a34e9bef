"""Multi-window, multi-burn-rate error-budget alerting (Google SRE workbook, ch. 5), pure.

A burn rate is the error ratio divided by the budget ``1 - objective``: 1 spends
the budget exactly over the SLO period, 14.4 spends 2 % of a 30-day budget in
one hour. A window pair fires when *both* its long window (the budget really
went) and its short window (it is still going, so a recovered service stops
paging quickly) burn faster than the pair's factor.

Requests and 5xx responses are counted into per-minute buckets (4,320 of them
cover the longest, 3-day window). ``window_scale`` shrinks every window and the
bucket width alike, for tests and staging. Nothing here reads a clock or a disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from opsagent.units import format_duration

BUCKET_SECONDS = 60.0
BUCKETS = 4320  # 3 days of minutes: the longest window


@dataclass(frozen=True)
class WindowPair:
    """One row of the SRE workbook's table: long and short window, burn factor, severity."""

    long_seconds: float
    short_seconds: float
    factor: float
    severity: str

    @property
    def name(self) -> str:
        """The ``window`` label: ``1h/5m`` (always the unscaled windows, so labels do not change with scale)."""
        return f"{format_duration(self.long_seconds)}/{format_duration(self.short_seconds)}"


PAIRS = (
    WindowPair(3600, 300, 14.4, "critical"),
    WindowPair(6 * 3600, 1800, 6.0, "critical"),
    WindowPair(86400, 2 * 3600, 3.0, "warning"),
    WindowPair(3 * 86400, 6 * 3600, 1.0, "warning"),
)
FAST = PAIRS[0]  # the low-volume alarm judges the fast pair's long window


@dataclass(frozen=True)
class Totals:
    requests: float
    errors: float

    def burn(self, budget: float) -> float:
        return (self.errors / self.requests) / budget if self.requests > 0 else 0.0


class MinuteBuckets:
    """Request and error counts per bucket (a minute, times ``scale``), the newest :data:`BUCKETS` kept."""

    def __init__(self, scale: float = 1.0, capacity: int = BUCKETS) -> None:
        self.width = BUCKET_SECONDS * scale
        self.capacity = capacity
        self._counts: dict[int, list[float]] = {}
        self._newest: int | None = None

    def index(self, at: float) -> int:
        return int(at // self.width)

    def add(self, at: float, requests: float, errors: float) -> None:
        """Count ``requests`` (of which ``errors`` were 5xx) in the bucket of time ``at``."""
        i = self.index(at)
        if self._newest is not None and i <= self._newest - self.capacity:
            return  # older than anything kept
        cell = self._counts.setdefault(i, [0.0, 0.0])
        cell[0] += max(0.0, requests)
        cell[1] += max(0.0, min(errors, requests))
        if self._newest is None or i > self._newest:
            self._newest = i
            for old in [k for k in self._counts if k <= i - self.capacity]:
                del self._counts[old]

    def totals(self, now: float, seconds: float) -> Totals:
        """Sums over the last ``seconds`` (scaled by the caller), the current bucket included."""
        last = self.index(now)
        n = max(1, round(seconds / self.width))
        requests = errors = 0.0
        if n < len(self._counts):
            for i in range(last - n + 1, last + 1):
                cell = self._counts.get(i)
                if cell is not None:
                    requests += cell[0]
                    errors += cell[1]
        else:
            for i, cell in self._counts.items():
                if last - n < i <= last:
                    requests += cell[0]
                    errors += cell[1]
        return Totals(requests, errors)

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "buckets": {str(k): v for k, v in sorted(self._counts.items())}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], scale: float = 1.0) -> MinuteBuckets:
        """Restore persisted buckets; buckets of another width (``window_scale`` changed) are dropped."""
        out = cls(scale)
        if abs(float(data.get("width", 0.0)) - out.width) > 1e-9:
            return out
        for key, (requests, errors) in dict(data.get("buckets") or {}).items():
            out.add(int(key) * out.width, float(requests), float(errors))
        return out

    def items(self) -> Iterable[tuple[int, tuple[float, float]]]:
        return [(k, (r, e)) for k, (r, e) in sorted(self._counts.items())]


@dataclass(frozen=True)
class PairVerdict:
    """One window pair judged at ``now``: breaching is None while either window holds too few requests."""

    pair: WindowPair
    long: Totals
    short: Totals
    long_burn: float
    short_burn: float
    breaching: bool | None

    @property
    def explanation(self) -> str:
        if self.breaching is None:
            return f"insufficient data ({self.short.requests:g} requests in the short window)"
        return (f"burn rate {self.long_burn:.1f}x over {format_duration(self.pair.long_seconds)} and "
                f"{self.short_burn:.1f}x over {format_duration(self.pair.short_seconds)}, "
                f"threshold {self.pair.factor:g}x")


def judge(buckets: MinuteBuckets, now: float, objective: float, min_events: int, scale: float = 1.0,
          pairs: Iterable[WindowPair] = PAIRS) -> list[PairVerdict]:
    """Every window pair at ``now``; a window with fewer than ``min_events`` requests is not judged."""
    budget = 1.0 - objective
    out = []
    for pair in pairs:
        long = buckets.totals(now, pair.long_seconds * scale)
        short = buckets.totals(now, pair.short_seconds * scale)
        long_burn, short_burn = long.burn(budget), short.burn(budget)
        breaching: bool | None = None
        if long.requests >= min_events and short.requests >= min_events:
            breaching = long_burn > pair.factor and short_burn > pair.factor
        out.append(PairVerdict(pair, long, short, long_burn, short_burn, breaching))
    return out


@dataclass(frozen=True)
class LowVolumeVerdict:
    """A service too quiet for burn rates: breaching when it failed at least ``errors`` requests in 1h
    at the fast pair's burn rate."""

    totals: Totals
    burn: float
    low_volume: bool
    breaching: bool

    @property
    def counted_errors(self) -> float:
        """The errors the alarm compares: those of a low-volume hour burning faster than the fast pair, else 0."""
        return self.totals.errors if self.low_volume and self.burn > FAST.factor else 0.0

    @property
    def explanation(self) -> str:
        return (f"{self.totals.errors:g} of {self.totals.requests:g} requests failed over "
                f"{format_duration(FAST.long_seconds)} (burn rate {self.burn:.1f}x)")


def judge_low_volume(buckets: MinuteBuckets, now: float, objective: float, min_events: int, errors: int,
                     scale: float = 1.0) -> LowVolumeVerdict:
    """The absolute alarm for targets below ``min_events`` in the fast pair's short window.

    Burn rates over a handful of requests page on one unlucky error, so they are
    not judged there; instead the last hour must hold at least ``errors`` failed
    requests *and* burn faster than the fast pair's factor.
    """
    short = buckets.totals(now, FAST.short_seconds * scale)
    long = buckets.totals(now, FAST.long_seconds * scale)
    burn = long.burn(1.0 - objective)
    low = short.requests < min_events
    return LowVolumeVerdict(long, burn, low, low and long.errors >= errors and burn > FAST.factor)
