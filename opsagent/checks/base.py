"""The check protocol: connect, measure, return a :class:`Reading`.

A check never compares against thresholds, logs, alerts or touches Prometheus;
it raises on failure and the runner (``agent.runner``) turns that into a down
result. Prepare clients and SQL in ``__init__``, keep ``measure`` lean.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True)
class Gauge:
    """One kind-specific sample: ``opsagent_<name>`` with extra labels beside check/target."""

    name: str  # full metric name, e.g. opsagent_redis_used_memory_bytes
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)
    help: str = ""
    # False for the families SPEC names with their own label set (``..._total{target}``, ``...{target,queue}``):
    # the name already says the kind, and a contract selector like {target="api"} must be the whole set.
    check_label: bool = True


@dataclass(frozen=True)
class Reading:
    """What one successful measurement found.

    ``value`` is the number the kind's alarm compares (a ratio for most kinds, a
    count of waiting clients for pgbouncer). ``details`` is shown in /status and
    alert context; ``gauges`` become kind-specific metrics.
    """

    value: float
    details: Mapping[str, Any] = field(default_factory=dict)
    gauges: tuple[Gauge, ...] = ()
    source: str | None = None  # where the numbers came from (ecs, cgroup, host, prometheus, cloudwatch…)


class CheckError(Exception):
    """A target answered but its answer cannot be used; the message says why."""


class Check(Protocol):
    kind: ClassVar[str]

    def measure(self) -> Reading:
        """Take one reading. Raise on failure; every network call must carry its own timeout."""
        ...

    def close(self) -> None:
        """Release connections (called at shutdown and after a run was abandoned)."""
        ...

    def context(self) -> Mapping[str, Any]:
        """Extra facts gathered when an alert fires (top connection holders, worst pools…)."""
        ...


class SimpleCheck:
    """Defaults for checks that hold nothing to close and have no alert context."""

    kind: ClassVar[str] = ""

    def close(self) -> None:
        return None

    def context(self) -> Mapping[str, Any]:
        return {}


@dataclass(frozen=True)
class Counter(Gauge):
    """A cumulative count (name ends in ``_total``): exported as a counter, so ``rate()`` handles resets.

    A subclass rather than a new field of :class:`Reading`, so every path that carries gauges (results,
    status, fleet) carries counters unchanged; only the metrics renderer tells them apart.
    """
