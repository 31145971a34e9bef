"""Parsing and formatting of the human units used in configuration.

Durations are written ``30s``, ``5m``, ``1h`` (also ``500ms``, ``1d``, ``1h30m``)
and ratios as ``0.75`` or ``75%``. Both are plain floats inside the program
(seconds and fractions) so that pure logic can do arithmetic on them.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

DURATION_FORM = "a duration such as 30s, 5m, 1h or 1h30m"
# Longest duration accepted (10 years): beyond it timers overflow (``interval: 1e300`` -> OverflowError) and no
# real interval, window, RPO or timeout is that long.
MAX_DURATION_SECONDS = 3650 * 86400.0
RATIO_FORM = "a ratio such as 0.75 or 75%, between 0 and 1 (0% and 100%)"


def parse_duration(value: object) -> float:
    """Return seconds for ``value``; raise ValueError naming the accepted form."""
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_FORM}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number; expected {DURATION_FORM}")
        if value < 0:
            raise ValueError(f"must not be negative; expected {DURATION_FORM}")
        return _bounded(float(value), value)
    if not isinstance(value, str):
        raise ValueError(f"expected {DURATION_FORM}")
    text = value.strip().lower()
    if text in ("0", "0s"):
        return 0.0
    if not text:
        raise ValueError(f"is empty; expected {DURATION_FORM}")
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"{value!r} is not a duration; expected {DURATION_FORM}")
    return _bounded(total, value)


def _bounded(seconds: float, value: object) -> float:
    if not seconds <= MAX_DURATION_SECONDS:  # also catches an overflow to inf from a long digit string
        raise ValueError(f"{value!r} is longer than 3650d; expected {DURATION_FORM}")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds back in the shortest exact config form (``90`` -> ``1m30s``)."""
    if seconds == 0:
        return "0s"
    if seconds < 1 or seconds != int(seconds):
        if (seconds * 1000) == int(seconds * 1000) and seconds < 1:
            return f"{int(seconds * 1000)}ms"
        return f"{seconds:g}s"
    rest = int(seconds)
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out)


def parse_ratio(value: object) -> float:
    """Return a fraction in [0, 1] for ``0.75`` or ``"75%"``."""
    if isinstance(value, bool):
        raise ValueError(f"expected {RATIO_FORM}")
    if isinstance(value, str):
        text = value.strip()
        try:
            # Decimal division, so "99.9%" is the double nearest 0.999 (as `0.999` is), not 0.9990000000000001.
            number = float(Decimal(text[:-1]) / 100) if text.endswith("%") else float(text)
        except (ValueError, InvalidOperation):
            raise ValueError(f"{value!r} is not a ratio; expected {RATIO_FORM}") from None
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        raise ValueError(f"expected {RATIO_FORM}")
    if not 0.0 <= number <= 1.0:  # NaN fails the comparison too
        raise ValueError(f"{value!r} is outside 0-1; expected {RATIO_FORM}")
    return number


def format_bytes(n: float) -> str:
    """Bytes in binary units as people read them: ``512 B``, ``1.5 KiB``, ``68.0 MiB``, ``2.1 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
