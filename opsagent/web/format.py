"""Numbers as the status page writes them: enough digits to tell value from threshold.

An alarm's text uses a fixed precision; a page that shows a firing Redis alert
as ``0.00 %`` against ``0.00 %`` contradicts itself. Here the threshold is
written exactly (as many decimals as it needs), and the value gets at least as
many, more until it no longer reads like the threshold it differs from (or
like zero when it is not).
"""

from __future__ import annotations

import math
import time

from opsagent.alerts.catalog import ALARMS, ValueKind, alarms_for_check
from opsagent.units import format_duration

MAX_DECIMALS = 6


def value_kind(check: str, alert: str | None = None) -> ValueKind:
    """How the numbers of ``check`` read: the kind of its alarm (``alert`` if given, else its primary one)."""
    spec = ALARMS.get(alert) if alert and alert != "TargetDown" else None
    if spec is None:
        specs = [s for s in alarms_for_check(check) if s.field is None] or alarms_for_check(check)
        spec = specs[0] if specs else None
    return spec.kind if spec is not None else ValueKind.COUNT


def _decimals_for(number: float) -> int:
    """The fewest decimals (0..MAX_DECIMALS) that write ``number`` exactly."""
    for d in range(MAX_DECIMALS + 1):
        if math.isclose(round(number, d), number, rel_tol=0, abs_tol=1e-9):
            return d
    return MAX_DECIMALS


def _scaled(number: float, kind: ValueKind) -> float:
    return number * 100 if kind is ValueKind.RATIO else number


def _text(number: float, decimals: int, kind: ValueKind) -> str:
    suffix = " %" if kind is ValueKind.RATIO else ""
    return f"{number:.{decimals}f}{suffix}"


def value_pair(kind: ValueKind, value: float | None, threshold: float | None) -> tuple[str, str]:
    """``(value text, threshold text)`` written so that different numbers never read the same."""
    if kind is ValueKind.DURATION:
        return (duration(value), duration(threshold))
    if kind is ValueKind.FLAG:
        flag = "–" if value is None else ("failed" if value > 0 else "ok")
        return (flag, "ok" if threshold is not None else "–")
    v = _scaled(value, kind) if value is not None else None
    if threshold is None:
        plain = "–" if v is None else (f"{v:.2f} %" if kind is ValueKind.RATIO else f"{v:.4g}")
        return plain, "–"
    t = _scaled(threshold, kind)
    decimals = t_decimals = max(1 if kind is ValueKind.RATIO else 0, _decimals_for(t))
    if v is None:
        return "–", _text(t, t_decimals, kind)
    while decimals < MAX_DECIMALS and ((v != t and round(v, decimals) == round(t, decimals))
                                       or (v != 0 and round(v, decimals) == 0)):
        decimals += 1
    value_text = _text(v, decimals, kind)
    if v != t and round(v, decimals) == round(t, decimals):  # beyond any sane threshold's digits
        value_text = f"{v:.3e}" + (" %" if kind is ValueKind.RATIO else "")
    return value_text, _text(t, t_decimals, kind)


def duration(seconds: float | None) -> str:
    """A span as a person reads it: 45s, 12m, 3.5h, 2.0d."""
    if seconds is None or not isinstance(seconds, (int, float)) or math.isnan(seconds):
        return "–"
    s = float(seconds)
    if abs(s) < 120:
        return f"{s:.0f}s" if abs(s) >= 10 else f"{s:.1f}s"
    if abs(s) < 7200:
        return f"{s / 60:.0f}m"
    if abs(s) < 172800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def config_duration(seconds: float | None) -> str:
    """A configured target (RPO, RTO) as it is written in the config file."""
    return "–" if seconds is None else format_duration(float(seconds))


def ago(ts: float | None, now: float) -> str:
    """``12m ago``; ``never`` for no time at all."""
    if not ts:
        return "never"
    return duration(max(0.0, now - ts)) + " ago"


def until(ts: float | None, now: float) -> str:
    """``in 12m``; ``–`` for no time."""
    if not ts:
        return "–"
    return "in " + duration(max(0.0, ts - now))


def clock_time(ts: float | None) -> str:
    """UTC wall-clock time, the way on-call hand-overs quote it."""
    if not ts:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def size(value: float | None) -> str:
    """Bytes in binary units."""
    if not isinstance(value, (int, float)):
        return "–"
    number = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if number < 1024:
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1024
    return f"{number:.1f} TiB"
