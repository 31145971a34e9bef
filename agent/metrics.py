"""Prometheus exposition, built from the latest results rather than per scrape.

:class:`ResultsCollector` turns the result store into ``opsagent_check_*``
families and each reading's kind-specific gauges. :class:`Exposition` renders
the registry once per change (result store version, or at most every
``max_age`` seconds for state that changes without a result) and keeps both the
plain and the gzip body, so a scrape is a dictionary lookup.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from agent import __version__
from agent.results import ResultStore

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ResultsCollector:
    """``opsagent_check_value``/``_up``, kind-specific gauges and scheduler counters from the store."""

    def __init__(self, store: ResultStore, scheduler_stats: Callable[[], dict[str, dict[tuple[str, str], int]]] | None = None):
        self._store = store
        self._scheduler_stats = scheduler_stats

    def collect(self) -> Iterable[Metric]:
        value = GaugeMetricFamily("opsagent_check_value", "The measured ratio or value the check's alarm compares",
                                  labels=["check", "target"])
        up = GaugeMetricFamily("opsagent_check_up", "1 if the target answered its last check, 0 if not",
                               labels=["check", "target"])
        last = GaugeMetricFamily("opsagent_check_last_run_timestamp_seconds", "Unix time of the last finished run",
                                 labels=["check", "target"])
        extra: dict[str, GaugeMetricFamily] = {}
        for r in sorted(self._store.snapshot(), key=lambda r: r.key):
            labels = [r.check, r.target]
            up.add_metric(labels, 1.0 if r.up else 0.0)
            last.add_metric(labels, r.at)
            if r.up and r.value is not None:
                value.add_metric(labels, r.value)
            for g in r.gauges:
                family = extra.get(g.name)
                names = sorted(g.labels)
                if family is None:
                    family = extra[g.name] = GaugeMetricFamily(g.name, g.help or g.name, labels=["check", "target", *names])
                family.add_metric([r.check, r.target, *(str(g.labels[n]) for n in names)], g.value)
        yield value
        yield up
        yield last
        yield from extra.values()
        info = GaugeMetricFamily("opsagent_build_info", "opsagent version", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        if self._scheduler_stats is not None:
            stats = self._scheduler_stats()
            for name, help_text in (
                ("opsagent_scheduler_runs_total", "Scheduled check runs started"),
                ("opsagent_scheduler_missed_runs_total", "Scheduled runs APScheduler reported missed (too late to start)"),
                ("opsagent_scheduler_skipped_runs_total", "Scheduled runs skipped because the previous one still ran"),
                ("opsagent_check_timeouts_total", "Runs abandoned at their deadline"),
            ):
                family = CounterMetricFamily(name.removesuffix("_total"), help_text, labels=["check", "target"])
                for (check, target), count in sorted(stats.get(name, {}).items()):
                    family.add_metric([check, target], float(count))
                yield family


class Exposition:
    """Caches the rendered registry; re-renders only when something changed."""

    def __init__(self, registry: CollectorRegistry, version: Callable[[], int], max_age: float = 2.0) -> None:
        self._registry = registry
        self._version = version
        self._max_age = max_age
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._plain = b""
        self._gzip = b""

    def body(self, gzip_ok: bool) -> bytes:
        key = (self._version(), int(time.monotonic() / self._max_age))
        with self._lock:
            if key != self._key:
                self._plain = generate_latest(self._registry)
                self._gzip = gzip.compress(self._plain, compresslevel=5)
                self._key = key
            return self._gzip if gzip_ok else self._plain

    content_type = CONTENT_TYPE_LATEST


def duration_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram("opsagent_check_duration_seconds", "Time one check run took (until result or deadline)",
                     ["check"], registry=registry, buckets=DURATION_BUCKETS)


class CollectorAdapter:
    """Registers a subsystem's ``collect()`` (alert pipeline, backups) in a registry."""

    def __init__(self, collect: Callable[[], Iterable[Any]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Any]:
        return self._collect()

    def describe(self) -> Iterable[Any]:
        return ()
