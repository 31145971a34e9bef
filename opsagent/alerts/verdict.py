"""Compare one result against its kind's alarms: the instantaneous verdict.

The alert engine adds time (``for``, hysteresis, state); ``opsagent check`` and
the status page use this directly. A kind may have several alarms (SQS: message
age and dead-letter queue); the verdict names the first breached one, else the
kind's primary alarm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from opsagent.alerts.catalog import alarms_for_check
from opsagent.alerts.target_rules import threshold_for
from opsagent.config import EffectiveAlarm, Settings
from opsagent.runtime.results import CheckResult


@dataclass(frozen=True)
class Verdict:
    alert: str | None  # the alarm this verdict is about (None for kinds without one)
    threshold: float | None
    breached: bool | None  # None: unknown (target down or alarm disabled)
    state: str  # "ok", "breached", "down", "disabled"


def value_alarm(settings: Settings, check: str) -> EffectiveAlarm | None:
    """The kind's primary alarm: the one comparing ``reading.value``."""
    specs = [s for s in alarms_for_check(check) if s.field is None] or alarms_for_check(check)
    return settings.alarm(specs[0].name) if specs else None


def _compared(result: CheckResult, alarm: EffectiveAlarm) -> float | None:
    raw = result.details.get(alarm.spec.field) if alarm.spec.field else result.value
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or math.isnan(float(raw)):
        return None
    return float(raw)


def verdict(settings: Settings, result: CheckResult) -> Verdict:
    primary = value_alarm(settings, result.check)
    name = primary.name if primary else None
    threshold = primary.threshold if primary else None
    if not result.up or result.value is None:
        return Verdict("TargetDown" if settings.alarm("TargetDown").enabled else name, threshold, None, "down")
    if primary is None:
        return Verdict(None, None, False, "ok")
    enabled = [settings.alarm(s.name) for s in alarms_for_check(result.check)]
    enabled = [a for a in enabled if a.enabled]
    if not enabled:
        return Verdict(name, threshold, None, "disabled")
    for alarm in enabled:
        value = _compared(result, alarm)
        limit, comparison = threshold_for(settings, alarm.name, result.check, result.target) or (
            alarm.threshold, alarm.spec.comparison)
        if alarm.name == name:
            threshold = limit
        if value is not None and comparison.breached(value, limit):
            return Verdict(alarm.name, limit, True, "breached")
    return Verdict(name, threshold, False, "ok")
