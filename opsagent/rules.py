"""``opsagent rules export``: the configured alarms as Prometheus alerting rules over the agent's own metrics.

For teams that prefer Prometheus to evaluate: the same thresholds, ``for``,
severities and label/annotation names as the agent's own alerts (SPEC §3).
Every expression aggregates ``without (instance)`` so several sidecars of one
service reporting the same target give one alert, as the agent's fingerprint
does. Disabled alarms are left out. Alarms that compare a detail field with no
metric of its own mirror the agent's verdict (``opsagent_alert_firing``).
"""

from __future__ import annotations

from typing import Any

import yaml

from opsagent.alerts.catalog import ALARMS, AlarmSpec, ValueKind
from opsagent.alerts.render import runbook_url
from opsagent.config import EffectiveAlarm, Settings
from opsagent.units import format_duration

# Alarms fed by the backup subsystem: the expression over its metrics (``{t}`` = threshold, ``{rto}``).
_BACKUP_EXPRESSIONS = {
    "BackupStale": "max without (instance) (opsagent_rpo_seconds) > {t}",
    "ReplicaStale": "time() - max without (instance, region) (opsagent_replica_last_success_timestamp_seconds) > {t}",
    "BackupFailed": "1 - min without (instance) (opsagent_backup_last_run_success) > {t}",
    "RestoreDrillFailed": "(1 - min without (instance) (opsagent_drill_last_success) > {t})"
                          " or (max without (instance) (opsagent_drill_last_duration_seconds) > {rto})",
}

# Detail fields that a check also exports as a gauge (value = the compared number).
_FIELD_METRICS = {
    "dlq_visible_messages": "opsagent_sqs_dlq_visible_messages",
    "replication_lag_max_seconds": "opsagent_postgres_replication_lag_max_seconds",
    "pool_saturation": "opsagent_pgbouncer_pool_saturation_ratio",
}
# Detail fields that are the complement of an exported 0/1 gauge.
_FIELD_COMPLEMENTS = {
    "replication_disabled": "opsagent_s3_replication_rule_enabled",
}

_VALUE_FORMAT = {
    ValueKind.RATIO: "{{ $value | humanizePercentage }}",
    ValueKind.DURATION: "{{ $value | humanizeDuration }}",
    ValueKind.COUNT: "{{ $value }}",
    ValueKind.FLAG: "{{ $value }}",
}


def _number(value: float) -> str:
    return f"{value:g}"


def _threshold_text(spec: AlarmSpec, threshold: float) -> str:
    if spec.kind is ValueKind.RATIO:
        return f"{threshold * 100:.4g}%"
    if spec.kind is ValueKind.DURATION:
        return format_duration(float(round(threshold)))
    return _number(threshold)


def expression(alarm: EffectiveAlarm, settings: Settings, real_kinds: tuple[str, ...]) -> str:
    """The PromQL expression that is true (non-empty) exactly when ``alarm`` breaches."""
    spec = alarm.spec
    t = _number(alarm.threshold)
    op = spec.comparison.value
    if spec.name == "TargetDown":
        return f'min without (instance) (opsagent_check_up{{check=~"{"|".join(real_kinds)}"}}) == 0'
    if spec.name in _BACKUP_EXPRESSIONS:
        return _BACKUP_EXPRESSIONS[spec.name].format(t=t, rto=_number(settings.backup.rto))
    if spec.field is None and not spec.per_target:  # a per-target threshold is mirrored below
        return f'max without (instance) (opsagent_check_value{{check="{spec.check}"}}) {op} {t}'
    if spec.field in _FIELD_METRICS and not spec.per_target:
        return f'max without (instance) ({_FIELD_METRICS[spec.field]}{{check="{spec.check}"}}) {op} {t}'
    if spec.field in _FIELD_COMPLEMENTS:
        return f'1 - min without (instance) ({_FIELD_COMPLEMENTS[spec.field]}{{check="{spec.check}"}}) {op} {t}'
    # No metric carries this detail: mirror the agent's own verdict.
    return f'max without (instance) (opsagent_alert_firing{{alertname="{spec.name}"}}) > 0'


def rule(alarm: EffectiveAlarm, settings: Settings, real_kinds: tuple[str, ...]) -> dict[str, Any]:
    spec = alarm.spec
    threshold_text = _threshold_text(spec, alarm.threshold)
    summary = spec.summary.replace("{target}", "{{ $labels.target }}")
    labels: dict[str, str] = {"severity": alarm.severity, "agent": settings.agent.name}
    if spec.check is not None and spec.name != "TargetDown":
        labels["check"] = spec.check
    if spec.name == "TargetDown":
        value_text, threshold_text = "down", "up"
        description = ("The {{ $labels.check }} target {{ $labels.target }} does not answer its check "
                       f"(agent {settings.agent.name}).")
    else:
        value_text = _VALUE_FORMAT[spec.kind]
        description = (f"{summary} ({spec.check}/{{{{ $labels.target }}}} on agent {settings.agent.name}): "
                       f"value {value_text} {spec.comparison.value} threshold {threshold_text}.")
    return {
        "alert": spec.name,
        "expr": expression(alarm, settings, real_kinds),
        "for": format_duration(alarm.for_seconds),
        "labels": labels,
        "annotations": {
            "summary": summary,
            "description": description,
            "value": value_text,
            "threshold": threshold_text,
            "runbook_url": runbook_url(settings.agent.runbook_base_url, spec.name),
        },
    }


def rule_groups(settings: Settings) -> dict[str, Any]:
    from opsagent.checks import KINDS

    real_kinds = tuple(KINDS)
    rules = [rule(a, settings, real_kinds) for a in (settings.alarm(n) for n in ALARMS)
             if a.enabled and a.name not in SLO_ALARMS]
    rules.extend(slo_rules(settings))
    return {"groups": [{"name": "opsagent", "rules": rules}]}


def render_rules(settings: Settings) -> str:
    """The YAML text ``opsagent rules export`` prints (``promtool check rules`` accepts it)."""
    header = (
        "# Prometheus alerting rules generated by `opsagent rules export`.\n"
        "# Same alarms, thresholds, `for` and severities as the agent's configuration;\n"
        "# evaluated over the metrics the agent exposes on /metrics.\n"
    )
    return header + yaml.safe_dump(rule_groups(settings), sort_keys=False, width=1000, allow_unicode=True)


# -- error budgets (issue 17, SPEC §9.4) ------------------------------------------------------------

SLO_ALARMS = ("ErrorBudgetBurn", "ErrorBudgetLowVolume")  # one rule per window pair and target with an slo


def _increase(metric: str, target: str, seconds: float) -> str:
    selector = f'{metric}{{target="{target}"}}'  # SPEC §9.4: these counters carry {target} only
    return f"sum without (instance) (increase({selector}[{format_duration(seconds)}]))"


def _burn(target: str, seconds: float, budget: float) -> str:
    errors = _increase("opsagent_error_rate_errors_total", target, seconds)
    requests = _increase("opsagent_error_rate_requests_total", target, seconds)
    return f"({errors} / {requests}) / {budget:g}"


def slo_rules(settings: Settings) -> list[dict[str, Any]]:
    """ErrorBudgetBurn per window pair and ErrorBudgetLowVolume per ``error_rate`` target with an ``slo``.

    Each rule selects one target (objectives differ per target) and carries its
    ``target`` label, so rules of different targets are not duplicates to promtool.

    The same judgement as :mod:`opsagent.alerts.burnrate` over the counters the
    agent exports: both windows burn faster than the pair's factor and both hold
    at least ``min_events`` requests (``window_scale`` shrinks the windows alike).
    """
    from opsagent.alerts.burnrate import FAST, PAIRS

    burn_alarm, low_alarm = settings.alarm("ErrorBudgetBurn"), settings.alarm("ErrorBudgetLowVolume")
    override = settings.alerts.ErrorBudgetBurn  # type: ignore[attr-defined] # fields made from the catalogue
    severity = override.severity if override is not None else None  # else each pair's own
    agent = settings.agent.name
    out: list[dict[str, Any]] = []
    for target in settings.checks.error_rate:
        slo = target.slo
        if slo is None or not target.enabled:
            continue
        budget, scale, name = 1.0 - slo.objective, slo.window_scale, target.name
        requests = "opsagent_error_rate_requests_total"
        if burn_alarm.enabled:
            for pair in PAIRS:
                long_s, short_s = pair.long_seconds * scale, pair.short_seconds * scale
                expr = (f"{_burn(name, long_s, budget)} > {pair.factor:g} "
                        f"and {_burn(name, short_s, budget)} > {pair.factor:g} "
                        f"and {_increase(requests, name, long_s)} >= {slo.min_events} "
                        f"and {_increase(requests, name, short_s)} >= {slo.min_events}")
                windows = f"{format_duration(pair.long_seconds)} and {format_duration(pair.short_seconds)}"
                out.append(_slo_rule(
                    settings, "ErrorBudgetBurn", expr, burn_alarm.for_seconds,
                    {"severity": severity or pair.severity, "agent": agent, "check": "error_rate", "target": name,
                     "window": pair.name},
                    f"burn rate {{{{ $value | printf \"%.1f\" }}}}x over {windows} > threshold {pair.factor:g}x "
                    f"(objective {slo.objective * 100:g}%)",
                    '{{ $value | printf "%.1f" }}', f"{pair.factor:g}"))
        if low_alarm.enabled:
            long_s, short_s = FAST.long_seconds * scale, FAST.short_seconds * scale
            expr = (f"{_increase('opsagent_error_rate_errors_total', name, long_s)} >= {slo.low_volume_errors} "
                    f"and {_increase(requests, name, short_s)} < {slo.min_events} "
                    f"and {_burn(name, long_s, budget)} > {FAST.factor:g}")
            out.append(_slo_rule(
                settings, "ErrorBudgetLowVolume", expr, low_alarm.for_seconds,
                {"severity": low_alarm.severity, "agent": agent, "check": "error_rate", "target": name},
                f"{{{{ $value | printf \"%.0f\" }}}} failed requests over {format_duration(FAST.long_seconds)} "
                f">= threshold {slo.low_volume_errors} with fewer than {slo.min_events} requests in "
                f"{format_duration(FAST.short_seconds)}",
                '{{ $value | printf "%.0f" }}', f"{slo.low_volume_errors}"))
    return out


def _slo_rule(settings: Settings, name: str, expr: str, for_seconds: float, labels: dict[str, str],
              measure: str, value: str, threshold: str) -> dict[str, Any]:
    summary = ALARMS[name].summary.replace("{target}", "{{ $labels.target }}")
    return {
        "alert": name,
        "expr": expr,
        "for": format_duration(for_seconds),
        "labels": labels,
        "annotations": {
            "summary": summary,
            "description": f"{summary} (error_rate/{{{{ $labels.target }}}} on agent {settings.agent.name}): {measure}.",
            "value": value,
            "threshold": threshold,
            "runbook_url": runbook_url(settings.agent.runbook_base_url, name),
        },
    }
