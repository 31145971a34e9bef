"""Prometheus exposition, built from the latest results rather than per scrape.

:class:`ResultsCollector` turns the result store into ``opsagent_check_*``
families and each reading's kind-specific gauges and counters. :class:`Exposition`
renders once per change (result store version, or at most every ``max_age``
seconds for state that changes without a result) and keeps the plain, gzip and
OpenMetrics bodies, so a scrape is a dictionary lookup.
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
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.utils import floatToGoString as _untyped_float_text

from opsagent import __version__
from opsagent.checks.base import Counter, Gauge
from opsagent.runtime.results import CheckResult, ResultStore

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
OPENMETRICS_CONTENT_TYPE = openmetrics.CONTENT_TYPE_LATEST

# Two public prometheus_client functions without annotations, given their types once.
floatToGoString: Callable[[float], str] = _untyped_float_text
_openmetrics_text: Callable[[CollectorRegistry], bytes] = openmetrics.generate_latest


SCHEDULER_COUNTERS = (
    ("opsagent_scheduler_runs_total", "Scheduled check runs started"),
    ("opsagent_scheduler_missed_runs_total", "Scheduled runs APScheduler reported missed (too late to start)"),
    ("opsagent_scheduler_skipped_runs_total", "Scheduled runs skipped because the previous one still ran"),
    ("opsagent_check_timeouts_total", "Runs abandoned at their deadline"),
)

CORE_LABELS = ("check", "target")


def _exposed_name(metric: Metric) -> str:
    """The name a family's HELP/TYPE lines carry in the text format (counters gain ``_total`` there)."""
    return metric.name + "_total" if metric.type == "counter" else metric.name


class ResultsCollector:
    """``opsagent_check_value``/``_up``, kind-specific samples and scheduler counters from the store.

    A prometheus_client collector (:meth:`collect`). :meth:`render` gives the same text as
    ``generate_latest`` over :meth:`collect`, but keeps each result's formatted lines and only formats
    what changed: with 500 samples, rendering everything per update cost ~3-5 ms, which every 15 s
    scrape paid (benchmarks/NOTES.md items 7 and 10).
    """

    def __init__(self, store: ResultStore, scheduler_stats: Callable[[], dict[str, dict[tuple[str, str], int]]] | None = None):
        self._store = store
        self._scheduler_stats = scheduler_stats
        self._fragments: dict[tuple[str, str], tuple[CheckResult, _Fragment]] = {}
        self._templates: dict[tuple[str, str], _FragmentTemplate] = {}  # per target: its lines' layout
        self._counter_lines: dict[tuple[str, str, str], tuple[int, bytes]] = {}  # latest count's line per series
        self._info = generate_latest(_Families([_build_info()]))
        # Format each result when it arrives (in the check's thread), so a scrape only joins lines: at a 15 s
        # scrape interval every result is new, and formatting them all at scrape time is the whole render.
        store.subscribe(self._prepare)

    def _prepare(self, result: CheckResult) -> None:
        template = self._templates.get(result.key)
        if template is None or template.shape != _FragmentTemplate.shape_of(result):
            template = self._templates[result.key] = _FragmentTemplate.of(result)
        self._fragments[result.key] = (result, template.fragment(result))

    def collect(self) -> Iterable[Metric]:
        yield from self._result_families(sorted(self._store.snapshot(), key=lambda r: r.key))
        yield _build_info()
        if self._scheduler_stats is not None:
            yield from _counter_families(self._scheduler_stats())

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: the families depend on which targets have reported."""
        return ()

    @staticmethod
    def _result_families(results: list[CheckResult]) -> list[Metric]:
        value = GaugeMetricFamily("opsagent_check_value", "The measured ratio or value the check's alarm compares",
                                  labels=list(CORE_LABELS))
        up = GaugeMetricFamily("opsagent_check_up", "1 if the target answered its last check, 0 if not",
                               labels=list(CORE_LABELS))
        last = GaugeMetricFamily("opsagent_check_last_run_timestamp_seconds", "Unix time of the last finished run",
                                 labels=list(CORE_LABELS))
        extra: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for r in results:
            labels = [r.check, r.target]
            up.add_metric(labels, 1.0 if r.up else 0.0)
            last.add_metric(labels, r.at)
            if r.up and r.value is not None:
                value.add_metric(labels, r.value)
            for g in r.gauges:
                family = extra.get(g.name)
                names = sorted(g.labels)
                if family is None:
                    # A cumulative count is a counter: a Counter reading, or a gauge named *_total (error_rate's).
                    family = extra[g.name] = (
                        CounterMetricFamily(g.name.removesuffix("_total"), g.help or g.name, labels=[*_own_labels(g), *names])
                        if isinstance(g, Counter) or g.name.endswith("_total") else
                        GaugeMetricFamily(g.name, g.help or g.name, labels=[*_own_labels(g), *names]))
                own = labels if g.check_label else [r.target]
                family.add_metric([*own, *(str(g.labels[n]) for n in names)], g.value)
        return [value, up, last, *extra.values()]

    def render(self) -> bytes:
        """The text exposition of :meth:`collect`, formatting only results and counters that changed."""
        results = sorted(self._store.snapshot(), key=lambda r: r.key)
        fragments: dict[tuple[str, str], tuple[CheckResult, _Fragment]] = {}
        cache = self._fragments
        for r in results:
            cached = cache.get(r.key)
            fragments[r.key] = cached if cached is not None and cached[0] is r else (r, _Fragment.of(r))
        headers: dict[str, bytes] = dict(_CORE_HEADERS)
        lines: dict[str, list[bytes]] = {name: [] for name in headers}
        label_names: dict[str, tuple[str, ...]] = {}
        for _, fragment in fragments.values():
            for name, (header, names, body) in fragment.families.items():
                if name not in headers:
                    headers[name], label_names[name], lines[name] = header, names, []
                elif name in label_names and label_names[name] != names:
                    return generate_latest(_Families(list(self.collect())))  # mixed label sets: exact slow path
                lines[name].append(body)
        out = [part for name, header in headers.items() for part in (header, *lines[name])]
        out.append(self._info)
        if self._scheduler_stats is not None:
            out.extend(self._render_counters(self._scheduler_stats()))
        return b"".join(out)

    def _render_counters(self, stats: dict[str, dict[tuple[str, str], int]]) -> list[bytes]:
        lines = self._counter_lines
        missing = {name: [(k, c) for k, c in stats.get(name, {}).items() if lines.get((name, *k), (None,))[0] != c]
                   for name, _ in SCHEDULER_COUNTERS}
        if any(missing.values()):
            families = _counter_families(missing)
            for (name, _), text in zip(SCHEDULER_COUNTERS, _split_families(generate_latest(_Families(families))), strict=True):
                for ((check, target), count), line in zip(missing[name], text[1], strict=True):
                    lines[(name, check, target)] = (count, line)
        out: list[bytes] = []
        for name, _ in SCHEDULER_COUNTERS:
            out.append(_COUNTER_HEADERS[name])
            out.extend(lines[(name, *k)][1] for k, _ in sorted(stats.get(name, {}).items()))
        return out


def _own_labels(gauge: Gauge) -> tuple[str, ...]:
    """The labels a kind-specific family carries before its own: check and target, or target alone."""
    return CORE_LABELS if gauge.check_label else ("target",)


def _counter_families(stats: dict[str, Any]) -> list[Metric]:
    """The scheduler counters, one family each, series in the order ``stats`` gives (sorted for collect)."""
    families: list[Metric] = []
    for name, help_text in SCHEDULER_COUNTERS:
        family = CounterMetricFamily(name.removesuffix("_total"), help_text, labels=list(CORE_LABELS))
        items = stats.get(name, {})
        for (check, target), count in (sorted(items.items()) if isinstance(items, dict) else items):
            family.add_metric([check, target], float(count))
        families.append(family)
    return families


def _build_info() -> GaugeMetricFamily:
    info = GaugeMetricFamily("opsagent_build_info", "opsagent version", labels=["version"])
    info.add_metric([__version__], 1.0)
    return info


class _Families:
    """A collector over a fixed list of families (to format them with ``generate_latest``)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def _split_families(text: bytes) -> list[tuple[bytes, list[bytes]]]:
    """``generate_latest`` output -> [(HELP+TYPE header, [sample lines])] per family, in order."""
    out: list[tuple[bytes, list[bytes]]] = []
    header = b""
    for line in text.splitlines(keepends=True):
        if line.startswith(b"# HELP "):
            header = line
        elif line.startswith(b"# TYPE "):
            out.append((header + line, []))
        else:
            out[-1][1].append(line)
    return out


class _Fragment:
    """One result's formatted lines per family: exposed name -> (header, label names, sample lines)."""

    __slots__ = ("families",)

    def __init__(self, families: dict[str, tuple[bytes, tuple[str, ...], bytes]]) -> None:
        self.families = families

    @classmethod
    def of(cls, result: CheckResult) -> _Fragment:
        return cls({name: (header, names, b"".join(body)) for name, header, names, body in _formatted(result)})


def _label_names(result: CheckResult) -> list[tuple[str, ...]]:
    """Each family's label names, in the order ``ResultsCollector._result_families`` builds the families."""
    extra: dict[str, tuple[str, ...]] = {}
    for g in result.gauges:
        extra.setdefault(g.name, (*_own_labels(g), *sorted(g.labels)))
    return [CORE_LABELS, CORE_LABELS, CORE_LABELS, *extra.values()]


def _formatted(result: CheckResult) -> list[tuple[str, bytes, tuple[str, ...], list[bytes]]]:
    """One result through ``generate_latest``: per family its exposed name, header, label names and sample lines."""
    metrics = ResultsCollector._result_families([result])
    texts = _split_families(generate_latest(_Families(metrics)))
    return [(_exposed_name(m), header, names, body)
            for m, names, (header, body) in zip(metrics, _label_names(result), texts, strict=True)]


class _FragmentTemplate:
    """How one target's result is laid out: per family its header and each sample's line prefix (name and
    escaped labels, formatted once by ``generate_latest``), so a new result with the same shape only
    formats its numbers. Formatting every result through ``generate_latest`` was a sixth of an agent's CPU
    at 50 targets (py-spy, benchmarks/)."""

    __slots__ = ("_families", "shape")

    def __init__(self, shape: tuple[Any, ...], families: list[tuple[str, bytes, tuple[str, ...], list[bytes]]]):
        self.shape = shape
        self._families = families

    @staticmethod
    def shape_of(result: CheckResult) -> tuple[Any, ...]:
        return (result.up, result.value is not None,
                tuple((type(g), g.name, g.help, g.check_label, tuple(g.labels.items())) for g in result.gauges))

    @classmethod
    def of(cls, result: CheckResult) -> _FragmentTemplate:
        families = [(name, header, names, [line.rsplit(b" ", 1)[0] + b" " for line in body])
                    for name, header, names, body in _formatted(result)]
        return cls(cls.shape_of(result), families)

    @staticmethod
    def _values(result: CheckResult) -> list[list[float]]:
        """Sample values per family, in the order ``ResultsCollector._result_families`` adds them."""
        grouped: dict[str, list[float]] = {}
        for g in result.gauges:
            grouped.setdefault(g.name, []).append(g.value)
        value = [result.value] if result.up and result.value is not None else []
        return [value, [1.0 if result.up else 0.0], [result.at], *grouped.values()]

    def fragment(self, result: CheckResult) -> _Fragment:
        out: dict[str, tuple[bytes, tuple[str, ...], bytes]] = {}
        grouped = self._values(result)
        if len(grouped) != len(self._families):
            return _Fragment.of(result)
        for (name, header, names, prefixes), values in zip(self._families, grouped, strict=True):
            if len(prefixes) != len(values):  # cannot happen for an equal shape; never risk a wrong line
                return _Fragment.of(result)
            out[name] = (header, names, b"".join(p + floatToGoString(v).encode() + b"\n" for p, v in zip(prefixes, values, strict=True)))
        return _Fragment(out)


_CORE_HEADERS = {_exposed_name(m): header for m, (header, _) in zip(
    ResultsCollector._result_families([]), _split_families(generate_latest(_Families(ResultsCollector._result_families([])))), strict=True)}
_COUNTER_HEADERS = {name: header for (name, _), (header, _) in zip(
    SCHEDULER_COUNTERS, _split_families(generate_latest(_Families(_counter_families({})))), strict=True)}


def wants_openmetrics(accept: str | None) -> bool:
    """Whether a scrape's ``Accept`` header asks for OpenMetrics (as Prometheus sends it, with q-values)."""
    return any(part.split(";", 1)[0].strip().lower() == "application/openmetrics-text"
               for part in (accept or "").split(","))


class _Joined:
    """The results collector and the registry as one collector, for the OpenMetrics body (one ``# EOF``).

    A release-1 gauge that shares its family name with a counter (``opsagent_redis_evicted_keys`` next to
    ``opsagent_redis_evicted_keys_total``) is valid in the text format but a name clash in OpenMetrics,
    so OpenMetrics scrapes get only the counter: it is new there, nothing depends on the old gauge.
    """

    def __init__(self, results: ResultsCollector | None, registry: CollectorRegistry) -> None:
        self._results = results
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        families = [*(self._results.collect() if self._results is not None else ()), *self._registry.collect()]
        counters = {m.name for m in families if m.type == "counter"}
        return [m for m in families if m.type == "counter" or m.name not in counters]


class Exposition:
    """Caches the rendered exposition; re-renders only when something changed.

    ``results`` renders with its own line caches and comes first; the registry holds the collectors that
    are cheap enough to format each time (alerts, backups, histograms, process_*).
    """

    def __init__(self, registry: CollectorRegistry, version: Callable[[], int], max_age: float = 2.0,
                 results: ResultsCollector | None = None) -> None:
        self._registry = registry
        self._results = results
        self._version = version
        self._max_age = max_age
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._bodies: dict[tuple[bool, bool], bytes] = {}  # (openmetrics, gzip) -> body of this rendering
        self._joined = CollectorRegistry(auto_describe=False)
        self._joined.register(_Joined(results, registry))

    def body(self, gzip_ok: bool, openmetrics_ok: bool = False) -> bytes:
        key = (self._version(), int(time.monotonic() / self._max_age))
        with self._lock:
            if key != self._key:
                self._bodies = {}
                self._key = key
            body = self._bodies.get((openmetrics_ok, gzip_ok))
            if body is None:
                body = self._bodies.get((openmetrics_ok, False))
                if body is None:
                    body = self._bodies[(openmetrics_ok, False)] = self._render(openmetrics_ok)
                if gzip_ok:
                    body = self._bodies[(openmetrics_ok, True)] = gzip.compress(body, compresslevel=5)
            return body

    def _render(self, openmetrics_ok: bool) -> bytes:
        if openmetrics_ok:
            return _openmetrics_text(self._joined)
        parts = [self._results.render()] if self._results is not None else []
        return b"".join([*parts, generate_latest(self._registry)])

    wants_openmetrics = staticmethod(wants_openmetrics)

    @staticmethod
    def content_type_for(openmetrics_ok: bool) -> str:
        return OPENMETRICS_CONTENT_TYPE if openmetrics_ok else CONTENT_TYPE_LATEST

    content_type = CONTENT_TYPE_LATEST


def duration_histogram(registry: CollectorRegistry) -> Histogram:
    """``opsagent_check_duration_seconds{check}``, registered in ``registry``."""
    return Histogram("opsagent_check_duration_seconds", "Time one check run took (until result or deadline)",
                     ["check"], buckets=DURATION_BUCKETS, registry=registry)
