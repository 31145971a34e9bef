"""One round of checks for ``opsagent check``, honest about rates.

A rate-over-a-window kind (``error_rate`` from an app's counters) cannot say
anything about "now" from a single read: the first sample only holds the
app's lifetime counters, and a 1 % lifetime ratio is not a 1 % error rate.
So the round reads every target once and, for results whose ``basis`` is
cumulative, reads those targets again ``sample_seconds`` later (the check
keeps its own history, so the second read is a real delta). When sampling is
off (``--sample 0s``) or the second read cannot give a delta, the row says
``basis: lifetime`` and is never called breached.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from opsagent.alerts.verdict import verdict
from opsagent.config import Settings
from opsagent.runtime.results import CheckResult
from opsagent.runtime.runner import TargetRunner

DEFAULT_SAMPLE_SECONDS = 5.0
BASIS_WINDOW = "window"
BASIS_LIFETIME = "lifetime"


def cumulative(result: CheckResult) -> bool:
    """The result is a lifetime ratio (first sample, or a counter reset), not a delta over a window."""
    basis = result.details.get("basis")
    return result.up and isinstance(basis, str) and basis.startswith("cumulative")


def sample_round(runners: Mapping[tuple[str, str], TargetRunner], sample_seconds: float,
                 wait: Callable[[float], object] | None = None) -> list[CheckResult]:
    """Every runner once, concurrently; rate targets read again after ``sample_seconds`` (0 = no second read)."""
    if not runners:
        return []
    pause = wait or threading.Event().wait
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(runners)))) as pool:
        results = dict(zip(runners, pool.map(lambda r: r.run(), runners.values()), strict=True))
        again = [key for key, result in results.items() if cumulative(result)]
        if again and sample_seconds > 0:
            pause(sample_seconds)
            for key, result in zip(again, pool.map(lambda k: runners[k].run(), again), strict=True):
                results[key] = result
    return list(results.values())


@dataclass(frozen=True)
class CheckRow:
    """One line of ``opsagent check`` (SPEC §4 fields plus ``basis`` for rate kinds)."""

    check: str
    target: str
    value: float | None
    threshold: float | None
    alert: str | None
    state: str
    up: bool
    error: str | None
    basis: str | None = None  # "window" (a sampled delta), "lifetime" (cumulative counters), None: not a rate

    @property
    def failed(self) -> bool:
        return not self.up or self.state == "breached"

    def to_json(self) -> dict[str, Any]:
        """SPEC §4's fields; ``basis`` only on rows of a rate kind, so other rows keep exactly the documented keys."""
        row: dict[str, Any] = {"check": self.check, "target": self.target, "value": self.value,
                               "threshold": self.threshold, "alert": self.alert, "state": self.state, "up": self.up,
                               "error": self.error}
        if self.basis is not None:
            row["basis"] = self.basis
        return row


def check_row(settings: Settings, result: CheckResult) -> CheckRow:
    """The verdict on one result; a lifetime ratio is reported as such and never as breached."""
    v = verdict(settings, result)
    state = v.state
    basis: str | None = None
    if "basis" in result.details and result.up:
        basis = BASIS_LIFETIME if cumulative(result) else BASIS_WINDOW
        if basis == BASIS_LIFETIME and state in ("ok", "breached"):
            state = "unknown"  # a lifetime ratio says nothing about now, either way
    return CheckRow(check=result.check, target=result.target, value=result.value, threshold=v.threshold,
                    alert=v.alert, state=state, up=result.up,
                    error=result.error or result.details.get("error"),  # an http probe's failure is a reading
                    basis=basis)
