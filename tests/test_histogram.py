"""CachedHistogram renders exactly what prometheus_client's Histogram renders for the same observations."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest

from opsagent.telemetry.histogram import CachedHistogram

BUCKETS = (0.005, 0.01, 0.25, 1.0, 30.0)
_CREATED = re.compile(rb"^(\S+_created(?:\{.*\})?) \S+$", re.M)


def _without_created_values(text: bytes) -> bytes:
    """Both sides stamp ``_created`` with their own clock: compare the line, not the time."""
    return _CREATED.sub(rb"\1 T", text)


label_values = st.text(alphabet=st.sampled_from(['a', 'b', '"', "\\", "\n", "é", " "]), min_size=0, max_size=4)
amounts = st.one_of(st.floats(min_value=-1.0, max_value=100.0, allow_nan=False),
                    st.sampled_from([0.005, 0.01, 1.0, 30.0, 30.0001, 1e12, float("inf"), float("nan")]))


@settings(max_examples=200)
@given(steps=st.lists(st.tuples(label_values, amounts, st.booleans()), max_size=30))
def test_render_matches_prometheus_client_after_every_observation(steps: list[tuple[str, float, bool]]) -> None:
    """Whatever is observed, under whatever label text, with renders in between or not, the bytes match."""
    registry = CollectorRegistry(auto_describe=False)
    theirs = Histogram("opsagent_test_seconds", 'Time with "quotes" \\ and\nnewline', ["check"],
                       registry=registry, buckets=BUCKETS)
    ours = CachedHistogram("opsagent_test_seconds", 'Time with "quotes" \\ and\nnewline', ["check"], buckets=BUCKETS)
    for label, amount, render_now in steps:
        theirs.labels(label).observe(amount)
        ours.labels(label).observe(amount)
        if render_now:
            assert _without_created_values(ours.render()) == _without_created_values(generate_latest(registry))
    assert _without_created_values(ours.render()) == _without_created_values(generate_latest(registry))
    assert ours.render() == generate_latest(_Collecting(ours))


class _Collecting:
    def __init__(self, histogram: CachedHistogram) -> None:
        self._histogram = histogram

    def collect(self) -> list[object]:
        return self._histogram.collect()  # type: ignore[return-value]


def test_unlabelled_histogram_and_registry_lookup() -> None:
    """An unlabelled histogram renders before any observation, and a registry reads its samples by name."""
    registry = CollectorRegistry(auto_describe=False)
    theirs = Histogram("opsagent_lag_seconds", "lag", registry=registry, buckets=(0.1, 1.0))
    ours = CachedHistogram("opsagent_lag_seconds", "lag", buckets=(0.1, 1.0))
    assert _without_created_values(ours.render()) == _without_created_values(generate_latest(registry))
    theirs.observe(0.5)
    ours.observe(0.5)
    assert _without_created_values(ours.render()) == _without_created_values(generate_latest(registry))
    mine = CollectorRegistry(auto_describe=False)
    mine.register(ours)  # type: ignore[arg-type]
    assert mine.get_sample_value("opsagent_lag_seconds_bucket", {"le": "1.0"}) == 1.0
    assert mine.get_sample_value("opsagent_lag_seconds_bucket", {"le": "0.1"}) == 0.0
    assert mine.get_sample_value("opsagent_lag_seconds_sum") == 0.5


def test_a_labelled_histogram_with_no_child_renders_only_its_header() -> None:
    """Before the first labels(...) call the family is announced with no samples, as prometheus_client does."""
    registry = CollectorRegistry(auto_describe=False)
    Histogram("opsagent_test_seconds", "t", ["check"], registry=registry, buckets=BUCKETS)
    ours = CachedHistogram("opsagent_test_seconds", "t", ["check"], buckets=BUCKETS)
    assert ours.render() == generate_latest(registry)
