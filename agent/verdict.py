"""Compare one result against its kind's alarm: the instantaneous verdict.

The alert engine adds time (``for``, hysteresis, state); ``opsagent check`` and
the status page use this directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.alerts.catalog import alarms_for_check
from agent.config import EffectiveAlarm, Settings
from agent.results import CheckResult


@dataclass(frozen=True)
class Verdict:
    alert: str | None  # the value alarm of this kind (None for kinds without one)
    threshold: float | None
    breached: bool | None  # None: unknown (target down or alarm disabled)
    state: str  # "ok", "breached", "down", "disabled"


def value_alarm(settings: Settings, check: str) -> EffectiveAlarm | None:
    specs = alarms_for_check(check)
    return settings.alarm(specs[0].name) if specs else None


def verdict(settings: Settings, result: CheckResult) -> Verdict:
    alarm = value_alarm(settings, result.check)
    name = alarm.name if alarm else None
    threshold = alarm.threshold if alarm else None
    if not result.up or result.value is None:
        return Verdict("TargetDown" if settings.alarm("TargetDown").enabled else name, threshold, None, "down")
    if alarm is None:
        return Verdict(None, None, False, "ok")
    if not alarm.enabled:
        return Verdict(name, threshold, None, "disabled")
    breached = alarm.spec.comparison.breached(result.value, alarm.threshold)
    return Verdict(name, threshold, breached, "breached" if breached else "ok")
