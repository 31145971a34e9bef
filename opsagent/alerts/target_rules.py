"""Alarms whose threshold lives on the target: ``sql`` and ``cloudwatch`` (threshold, above/below), ``http`` (tls_warn).

One catalogue row per alarm keeps names, ``for`` and severity in one place; a
target model that carries its own threshold says so with
``alarm_thresholds() -> {alarm: (threshold, comparison)}``. The engine gets one
rule per such (alarm, check, target); the instantaneous verdict asks
:func:`threshold_for`. Nothing else changes: the rule is an ordinary
:class:`Rule` with another threshold and operator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from opsagent.alerts.catalog import Comparison
from opsagent.alerts.engine import Rule
from opsagent.config import Settings

TargetKey = tuple[str, str, str]  # (alertname, check, target)


def target_thresholds(settings: Settings) -> dict[TargetKey, tuple[float, Comparison]]:
    """Every target's own threshold for the alarms it sets one for."""
    out: dict[TargetKey, tuple[float, Comparison]] = {}
    for kind, target in settings.checks.targets():
        own = getattr(target, "alarm_thresholds", None)
        if own is None:
            continue
        for alertname, pair in own().items():
            out[(alertname, kind, target.name)] = pair
    return out


def target_rules(settings: Settings, rules: Mapping[str, Rule]) -> dict[TargetKey, Rule]:
    """The configured rules re-thresholded for the targets that carry their own threshold."""
    return {
        key: replace(rules[key[0]], threshold=threshold, comparison=comparison)
        for key, (threshold, comparison) in target_thresholds(settings).items()
        if key[0] in rules
    }


def threshold_for(settings: Settings, alertname: str, check: str, target: str) -> tuple[float, Comparison] | None:
    """The target's own (threshold, comparison) for ``alertname``, or None to use the alarm's."""
    kind_targets = getattr(settings.checks, check, None)
    if not isinstance(kind_targets, list):
        return None
    for t in kind_targets:
        if t.name == target:
            own = getattr(t, "alarm_thresholds", None)
            return own().get(alertname) if own is not None else None
    return None
