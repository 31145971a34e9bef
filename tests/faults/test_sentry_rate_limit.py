"""The agent's own Sentry events are rate-limited per fingerprint, so a bug hit on every run is one event, not a flood."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from opsagent.telemetry import sentry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[tuple[BaseException, dict[str, Any]]], Clock]]:
    """Sentry on, with what would be sent recorded instead of posted, and the limiter on a test clock."""
    import sentry_sdk

    events: list[tuple[BaseException, dict[str, Any]]] = []
    clock = Clock()
    monkeypatch.setattr(sentry, "_enabled", True)
    monkeypatch.setattr(sentry, "limiter", sentry.EventLimiter(window=600, clock=clock))
    monkeypatch.setattr(sentry_sdk, "capture_exception", lambda exc, tags: events.append((exc, tags)))
    yield events, clock


def _bug(value: str) -> BaseException:
    try:
        raise AttributeError(f"'str' object has no attribute {value!r}")
    except AttributeError as exc:
        return exc


def _other_bug() -> BaseException:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        return exc


def test_repeats_of_one_bug_send_one_event_per_window(sent: tuple[list[Any], Clock]) -> None:
    """Fifty hits of the same bug (messages differing) in ten minutes send one event; another bug still gets through."""
    events, clock = sent
    for i in range(50):
        sentry.capture_exception(_bug(f"attr{i}"))
        clock.now += 10
    sentry.capture_exception(_other_bug())
    assert [type(e).__name__ for e, _ in events] == ["AttributeError", "KeyError"]


def test_after_the_window_the_bug_is_sent_again_with_the_count_of_repeats(sent: tuple[list[Any], Clock]) -> None:
    """Once the window has passed the next hit is sent, tagged with how many repeats were held back."""
    events, clock = sent
    for _ in range(5):
        sentry.capture_exception(_bug("x"))
    clock.now += 601
    sentry.capture_exception(_bug("x"))
    assert len(events) == 2
    assert events[0][1]["suppressed_repeats"] == "0" and events[1][1]["suppressed_repeats"] == "4"
