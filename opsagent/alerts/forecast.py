"""Time until a ratio reaches 100 % at its current trend: least squares with an R² gate, pure.

Like ``predict_linear`` and Datadog's linear forecasts, but refusing to guess:
the fit must explain most of the variance (R² at least :data:`MIN_R2`) and the
trend must rise, else there is no forecast (``None``), because a noisy or flat
series extrapolated to 100 % is a number that lies.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

MIN_POINTS = 5
MIN_R2 = 0.8
HORIZON_SECONDS = 7 * 86400.0  # a forecast further out than this is not worth showing
HISTORY = 40  # readings kept per target (10 minutes at 15s)


@dataclass(frozen=True)
class Fit:
    slope: float  # ratio per second
    intercept: float  # at t = 0
    r2: float


def fit(points: Sequence[tuple[float, float]]) -> Fit | None:
    """Ordinary least squares of value on time; None with fewer than two distinct times."""
    n = len(points)
    if n < 2:
        return None
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    stt = sum((t - mt) ** 2 for t, _ in points)
    if stt <= 0:
        return None
    stv = sum((t - mt) * (v - mv) for t, v in points)
    slope = stv / stt
    intercept = mv - slope * mt
    svv = sum((v - mv) ** 2 for _, v in points)
    residual = sum((v - (intercept + slope * t)) ** 2 for t, v in points)
    r2 = 1.0 - residual / svv if svv > 0 else 1.0
    return Fit(slope, intercept, r2)


def exhaustion_seconds(points: Sequence[tuple[float, float]], *, limit: float = 1.0, min_r2: float = MIN_R2,
                       min_points: int = MIN_POINTS) -> float | None:
    """Seconds from the newest point until the fitted line reaches ``limit``; None without a confident rise."""
    if len(points) < min_points:
        return None
    f = fit(points)
    if f is None or f.slope <= 0 or f.r2 < min_r2 or math.isnan(f.r2):
        return None
    now = points[-1][0]
    if points[-1][1] >= limit:
        return 0.0
    seconds = (limit - (f.intercept + f.slope * now)) / f.slope
    if seconds > HORIZON_SECONDS:
        return None
    return max(0.0, seconds)


def describe(seconds: float | None) -> str | None:
    """The page's line: "≈37 min to 100 % at the current rate"."""
    if seconds is None:
        return None
    if seconds < 90:
        amount = f"{seconds:.0f} s"
    elif seconds < 5400:
        amount = f"{seconds / 60:.0f} min"
    elif seconds < 2 * 86400:
        amount = f"{seconds / 3600:.1f} h"
    else:
        amount = f"{seconds / 86400:.1f} days"
    return f"≈{amount} to 100 % at the current rate"


class Trend:
    """The newest readings of one target (time, ratio); pure apart from holding them."""

    def __init__(self, size: int = HISTORY) -> None:
        self._points: deque[tuple[float, float]] = deque(maxlen=size)

    def add(self, at: float, ratio: float) -> float | None:
        if self._points and at <= self._points[-1][0]:
            return self.seconds()
        self._points.append((at, ratio))
        return self.seconds()

    def seconds(self) -> float | None:
        return exhaustion_seconds(list(self._points))
