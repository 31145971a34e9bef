"""Flap detection: Nagios' weighted percent state change over the last 21 results.

A target that alternates between breaching and not breaching would page and
resolve on every swing; Nagios' answer (flapping.c, documented in "Detection
and Handling of State Flapping") is to measure how often the state changed in
the last 21 results, weighting newer changes more (0.75 for the oldest
transition rising linearly to 1.25 for the newest), and to call the target
*flapping* above a high threshold and settled again only below a low one.
Pure: histories are strings of ``"1"`` (breaching) and ``"0"`` (not).
"""

from __future__ import annotations

HISTORY = 21  # results kept: 20 possible transitions
LOW_WEIGHT = 0.75  # weight of a change between the two oldest results
HIGH_WEIGHT = 1.25  # weight of a change between the two newest results
HIGH_THRESHOLD = 50.0  # percent: flapping starts above this
LOW_THRESHOLD = 25.0  # percent: flapping ends below this


def record(history: str, breaching: bool) -> str:
    """The history with one more result appended, trimmed to the last :data:`HISTORY`."""
    return (history + ("1" if breaching else "0"))[-HISTORY:]


def percent_state_change(history: str) -> float:
    """Weighted percent of the last 20 transitions that were state changes (0-100).

    A history shorter than 21 results counts its missing transitions as "no
    change", as Nagios does with a freshly initialised history; the newest
    transition always carries the highest weight.
    """
    history = history[-HISTORY:]
    transitions = HISTORY - 1
    offset = HISTORY - len(history)  # the missing oldest results
    changes = 0.0
    for i in range(1, len(history)):
        if history[i] != history[i - 1]:
            x = i + offset  # 1 = oldest transition, 20 = newest
            changes += (x - 1) * (HIGH_WEIGHT - LOW_WEIGHT) / (transitions - 1) + LOW_WEIGHT
    return changes * 100.0 / transitions


def is_flapping(was_flapping: bool, percent: float, high: float = HIGH_THRESHOLD,
                low: float = LOW_THRESHOLD) -> bool:
    """Hysteresis between the two thresholds: start above ``high``, stop below ``low``."""
    if was_flapping:
        return percent >= low
    return percent > high
