"""A histogram whose exposition lines are kept formatted between scrapes.

prometheus_client formats every sample of a histogram on every scrape, with
name validation and label escaping per line: for the agent's two histograms
that was most of a /metrics render after new results (~0.9 of ~1.1 ms,
benchmarks/). :class:`CachedHistogram` has the same observe/labels surface and
renders the same bytes as ``generate_latest`` over a ``prometheus_client``
``Histogram``, but each child's line prefixes (name, escaped labels, ``le``)
are formatted once, when the child is created, by ``generate_latest`` itself;
a render only formats the numbers of the children observed since the last one.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import metrics as _prometheus_metrics
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString


def _created_enabled() -> bool:
    """Whether prometheus_client emits ``_created`` samples (PROMETHEUS_DISABLE_CREATED_SERIES)."""
    getter = getattr(_prometheus_metrics, "_get_use_created", None)
    return bool(getter()) if getter is not None else bool(getattr(_prometheus_metrics, "_use_created", True))


class _OneMetric:
    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> list[Metric]:
        return [self._metric]


class _Child:
    """One label set: counts per bucket (not cumulative), sum, and its formatted lines."""

    __slots__ = ("counts", "created", "created_line", "created_prefix", "labels", "lines", "prefixes", "sum")

    def __init__(self, labels: dict[str, str], buckets: int, created: float) -> None:
        self.labels = labels
        self.counts = [0] * buckets
        self.sum = 0.0
        self.created = created
        self.prefixes: list[bytes] = []  # one per bucket, then _count, then _sum: everything before the value
        self.created_prefix = b""
        self.lines: bytes | None = None  # None: observed since the last render
        self.created_line = b""


class CachedHistogram:
    """``labels(...).observe(v)`` like prometheus_client's Histogram; :meth:`render` is its exposition."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 buckets: Iterable[float] = (), clock: Callable[[], float] = time.time) -> None:
        bounds = [float(b) for b in buckets]
        if not bounds or bounds != sorted(bounds):
            raise ValueError("buckets must be a non-empty ascending sequence")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._bounds = tuple(bounds)
        self._clock = clock
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], _Child] = {}
        empty = Metric(name, documentation, "histogram")
        self._header = generate_latest(_OneMetric(empty))
        self._created_header = generate_latest(_OneMetric(Metric(name + "_created", documentation, "gauge")))
        if not self.labelnames:
            self._child(())

    # -- observing ---------------------------------------------------------------------------

    def labels(self, *values: str) -> _Observer:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        with self._lock:
            child = self._children.get(key) or self._child(key)
        return _Observer(self, child)

    def observe(self, amount: float) -> None:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use .labels(...).observe()")
        self._observe(self._children[()], amount)

    def _observe(self, child: _Child, amount: float) -> None:
        # The first bucket whose upper bound is >= amount; NaN falls in none (as in prometheus_client).
        index = len(self._bounds) if math.isnan(amount) else bisect.bisect_left(self._bounds, amount)
        with self._lock:
            if index < len(child.counts):
                child.counts[index] += 1
            child.sum += amount
            child.lines = None

    def _child(self, key: tuple[str, ...]) -> _Child:
        """Create a child and format its line prefixes once (caller holds the lock, or in __init__)."""
        labels = dict(zip(self.labelnames, key))
        child = _Child(labels, len(self._bounds), self._clock())
        template = self._family([child], marker=True)
        lines = generate_latest(_OneMetric(template)).splitlines(keepends=True)
        samples = [line for line in lines if not line.startswith(b"#")]
        *main, created = samples if _created_enabled() else (*samples, b" ")
        child.prefixes = [line.rsplit(b" ", 1)[0] + b" " for line in main]
        child.created_prefix = created.rsplit(b" ", 1)[0] + b" "
        self._children[key] = child
        return child

    # -- exposition --------------------------------------------------------------------------

    def _family(self, children: Iterable[_Child], marker: bool = False) -> Metric:
        """The samples as a prometheus_client Metric (``marker``: zero values, only to learn the line shapes)."""
        family = Metric(self.name, self.documentation, "histogram")
        for child in children:
            cumulative = 0
            for bound, count in zip(self._bounds, child.counts):
                cumulative += count
                family.add_sample(self.name + "_bucket", {**child.labels, "le": floatToGoString(bound)},
                                  0.0 if marker else float(cumulative))
            family.add_sample(self.name + "_count", dict(child.labels), 0.0 if marker else float(cumulative))
            family.add_sample(self.name + "_sum", dict(child.labels), 0.0 if marker else child.sum)
            if _created_enabled():
                family.add_sample(self.name + "_created", dict(child.labels), child.created)
        return family

    def collect(self) -> list[Metric]:
        """For registries (``get_sample_value``) and anything else that wants Metric objects."""
        with self._lock:
            return [self._family(list(self._children.values()))]

    def render(self) -> bytes:
        """The same bytes as ``generate_latest`` over :meth:`collect`; only observed children are reformatted."""
        with self._lock:
            parts = [self._header]
            created_parts = [self._created_header]
            for child in self._children.values():
                if child.lines is None:
                    values: list[float] = []
                    cumulative = 0
                    for count in child.counts:
                        cumulative += count
                        values.append(float(cumulative))
                    values += [float(cumulative), child.sum]
                    child.lines = b"".join(prefix + floatToGoString(v).encode() + b"\n"
                                           for prefix, v in zip(child.prefixes, values))
                    child.created_line = child.created_prefix + floatToGoString(child.created).encode() + b"\n"
                parts.append(child.lines)
                created_parts.append(child.created_line)
        if len(created_parts) > 1 and _created_enabled():
            parts.extend(created_parts)
        return b"".join(parts)


class _Observer:
    """What ``labels(...)`` returns: observe into that child."""

    __slots__ = ("_child", "_histogram")

    def __init__(self, histogram: CachedHistogram, child: _Child) -> None:
        self._histogram = histogram
        self._child = child

    def observe(self, amount: float) -> None:
        self._histogram._observe(self._child, amount)
