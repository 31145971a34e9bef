"""``opsagent rules export``: the configured alarms as Prometheus alerting rules over the agent's own metrics.

For teams that prefer Prometheus to evaluate: the same thresholds, ``for``,
severities and label/annotation names as the agent's own alerts (SPEC §3).
Every expression aggregates ``without (instance)`` so several sidecars of one
service reporting the same target give one alert, as the agent's fingerprint
does. Disabled alarms are left out. Alarms that compare a detail field with no
metric of its own mirror the agent's verdict (``opsagent_alert_firing``).

A second group watches the watcher (SPEC §9.1): ``OpsagentDown`` fires when
the agent's scrape job (``--job``, default ``opsagent``) is down or absent, so
a dead agent pages instead of letting its alerts lapse into "resolved". The
shipped ``deploy/prometheus/opsagent-rules.yml`` is ``--only OpsagentDown``:
the agent pages directly, and Prometheus adds only what the agent cannot say
about itself (deploy/README.md explains the choice).
"""

from __future__ import annotations

from dataclasses import dataclass
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
    "PITRStale": "max without (instance) (opsagent_pitr_lag_seconds) > {t}",
    "BackupPostureViolation": "1 - min without (instance, control) (opsagent_posture_compliant) > {t}",
    "BackupClockSkew": "max without (instance) (opsagent_backup_future_manifests) > {t}",
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
    elif spec.kind is ValueKind.FLAG:
        # A yes/no alarm: "value 1 > threshold 0" says nothing; the agent's own page carries the reason.
        value_text, threshold_text = "failed", "ok"
        description = (f"{summary} ({spec.check}/{{{{ $labels.target }}}} on agent {settings.agent.name}); "
                       "the agent's status page and its own alert give the reason.")
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


OPSAGENT_DOWN = "OpsagentDown"
DEFAULT_JOB = "opsagent"
DEFAULT_DOWN_FOR = 60.0


@dataclass(frozen=True)
class ExportOptions:
    """``rules export`` flags: the agent's scrape job, OpsagentDown's ``for``, and an optional subset of alerts."""

    job: str = DEFAULT_JOB
    down_for: float = DEFAULT_DOWN_FOR
    only: tuple[str, ...] = ()

    def wants(self, name: str) -> bool:
        return not self.only or name in self.only


def exportable() -> tuple[str, ...]:
    """Every alert name ``rules export --only`` accepts."""
    return (*ALARMS, OPSAGENT_DOWN)


def opsagent_down_rule(settings: Settings, options: ExportOptions) -> dict[str, Any]:
    """OpsagentDown: no target of the agent's scrape job answers (or the job has none) for ``down_for``."""
    job = options.job
    name = settings.agent.name
    return {
        "alert": OPSAGENT_DOWN,
        # Per job, not per instance: in a fleet one restarting sidecar is covered by the others (and by
        # ECS's restart policy); OpsagentDown means no sidecar of the job answers, so nothing is watching.
        "expr": f'max without (instance) (up{{job="{job}"}}) == 0 or absent(up{{job="{job}"}})',
        "for": format_duration(options.down_for),
        "labels": {"severity": "critical", "agent": name},
        "annotations": {
            "summary": f"opsagent {name} is down: nothing watches its targets",
            "description": (f"Prometheus cannot scrape any opsagent {name} of job {options.job}: the agent is "
                            "dead, hung or unreachable, so its checks, alerts and backups have stopped. Its alerts "
                            "are held (inhibited) while this fires: none of them is resolved by a dead watcher."),
            "value": "down",
            "threshold": "up",
            "runbook_url": settings.agent.runbook_base_url.rstrip("/") + f"/{OPSAGENT_DOWN}.md",
        },
    }


def rule_groups(settings: Settings, options: ExportOptions | None = None) -> dict[str, Any]:
    from opsagent.checks import KINDS

    options = options or ExportOptions()
    real_kinds = tuple(KINDS)
    rules = [rule(a, settings, real_kinds) for a in (settings.alarm(n) for n in ALARMS)
             if a.enabled and a.name not in SLO_ALARMS and options.wants(a.spec.name)]
    rules.extend(r for r in slo_rules(settings) if options.wants(str(r["alert"])))
    groups: list[dict[str, Any]] = []
    if rules:
        groups.append({"name": "opsagent", "rules": rules})
    if options.wants(OPSAGENT_DOWN):
        groups.append({"name": "opsagent-watcher", "rules": [opsagent_down_rule(settings, options)]})
    return {"groups": groups}


def render_rules(settings: Settings, options: ExportOptions | None = None) -> str:
    """The YAML text ``opsagent rules export`` prints (``promtool check rules`` accepts it)."""
    options = options or ExportOptions()
    flags = "".join([f" --job {options.job}" if options.job != DEFAULT_JOB else "",
                     f" --down-for {format_duration(options.down_for)}" if options.down_for != DEFAULT_DOWN_FOR else "",
                     "".join(f" --only {n}" for n in options.only)])
    header = (
        f"# Prometheus alerting rules generated by `opsagent rules export{flags}`.\n"
        "# Same alarms, thresholds, `for` and severities as the agent's configuration;\n"
        "# evaluated over the metrics the agent exposes on /metrics.\n"
    )
    return header + yaml.safe_dump(rule_groups(settings, options), sort_keys=False, width=1000, allow_unicode=True)


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
    override = settings.alerts.ErrorBudgetBurn  # a field made from the catalogue
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


def export_options(*, job: str = DEFAULT_JOB, down_for: str | float = DEFAULT_DOWN_FOR,
                   only: list[str] | tuple[str, ...] = ()) -> ExportOptions:
    """Validated ``rules export`` flags; ValueError names the flag and the accepted form."""
    from opsagent.units import parse_duration

    if not job or any(c in job for c in '"\\\n{}'):
        raise ValueError(f"--job {job!r} is not a Prometheus job name")
    try:
        seconds = parse_duration(down_for)
    except ValueError as exc:
        raise ValueError(f"--down-for {exc}") from None
    unknown = [name for name in only if name not in exportable()]
    if unknown:
        raise ValueError(f"--only {', '.join(unknown)}: unknown alert; known: {', '.join(exportable())}")
    return ExportOptions(job=job, down_for=seconds, only=tuple(only))
