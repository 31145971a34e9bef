"""Turn engine state into the alert a human and every sink sees (pure: time is passed in).

Labels and annotations are exactly those of SPEC §3. The fingerprint is a hash
of the alert name and labels only, so two agents with the same ``agent.name``
reporting the same target produce one page, and a restart keeps identities.
Live context gathered at firing time is appended to the description (the
annotation set stays exactly as specified) and kept separately for sinks that
can show structure (Slack, PagerDuty custom details, SNS JSON).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opsagent import secrets
from opsagent.alerts.catalog import ALARMS, ValueKind
from opsagent.alerts.engine import AlertState
from opsagent.notify.message import FIRING, RESOLVED, AlertMessage, iso
from opsagent.units import format_duration

LABEL_NAMES = ("alertname", "severity", "check", "target", "agent")
ANNOTATION_NAMES = ("summary", "description", "value", "threshold", "runbook_url")
# BackupStale's reason when a target has no complete backup at all (the backup result's ``newest`` is None).
NO_COMPLETE_BACKUP = "no complete backup exists"


@dataclass(frozen=True)
class Identity:
    """Where alerts come from: the fleet-wide agent name and the links they carry."""

    agent: str
    runbook_base_url: str
    generator_url: str


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable 16-hex-digit id of a label set (order-independent)."""
    blob = json.dumps(sorted(labels.items()), separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def labels_for(state: AlertState, agent: str) -> dict[str, str]:
    labels = {
        "alertname": state.alertname,
        "severity": state.severity,
        "check": state.check,
        "target": state.target,
        "agent": agent,
    }
    if state.window is not None:  # ErrorBudgetBurn: one alert per window pair (SPEC §9.4)
        labels["window"] = state.window
    return labels


def format_value(alertname: str, value: float | None) -> str:
    """A number the way the alarm's threshold is written (75%, 1h2m, 3)."""
    if value is None:
        return "unknown"
    kind = ALARMS[alertname].kind
    if kind is ValueKind.RATIO:
        return f"{value * 100:.4g}%"
    if kind is ValueKind.DURATION:
        return format_duration(float(round(value)))
    if kind is ValueKind.FLAG:
        return "1" if value > 0 else "0"
    return f"{value:g}"


def runbook_url(base: str, alertname: str) -> str:
    return base.rstrip("/") + "/" + ALARMS[alertname].runbook


def _what(state: AlertState) -> str:
    spec = ALARMS[state.alertname]
    if state.alertname == "TargetDown":
        return f"The {state.check} target {state.target} does not answer its check"
    return spec.summary.format(target=state.target)


def breach_began(state: AlertState) -> float:
    """When the breach began: the first breaching result (before ``for``), the "since" of every text."""
    return next((t for t in (state.pending_since, state.firing_since, state.last_at) if t is not None), 0.0)


def value_texts(state: AlertState) -> tuple[str, str]:
    """The ``value`` and ``threshold`` annotations: as the alarm's threshold is written; down/up for TargetDown."""
    if state.alertname == "TargetDown":
        return "down", "up"
    return format_value(state.alertname, state.value), format_value(state.alertname, state.threshold)


def describe(state: AlertState, agent: str, context: Mapping[str, Any] | None = None, *,
             status: str = FIRING, at: float | None = None) -> tuple[str, str, str, str]:
    """``(summary, description, value, threshold)`` annotation texts of a page or (``status=resolved``) its resolution."""
    if status == RESOLVED:
        return _describe_resolved(state, agent, at)
    spec = ALARMS[state.alertname]
    where = f"({state.check}/{state.target} on agent {agent})"
    summary = spec.summary.format(target=state.target)
    value_text, threshold_text = value_texts(state)
    if state.alertname == "TargetDown":
        measure = "the check failed" + (f": {state.error}" if state.error else "")
    elif spec.kind is ValueKind.FLAG:
        measure = state.error or "the last run reported a failure without a reason"
    elif state.alertname == "BackupStale" and state.error == NO_COMPLETE_BACKUP:
        summary = f"No complete backup of {state.target} exists"
        description = (f"{summary} ({state.check}/{state.target} on agent {agent}): {NO_COMPLETE_BACKUP} "
                       f"(RPO {threshold_text}), since {iso(breach_began(state))}.")
        return secrets.scrub(summary), secrets.scrub(description), "never", threshold_text
    else:
        measure = f"value {value_text} {state.comparison or spec.comparison.value} threshold {threshold_text}"
        if state.unknown:
            measure += " (last known; the target is currently down)"
        elif state.error:
            measure += f" ({state.error})"
    description = f"{_what(state)} {where}: {measure}, since {iso(breach_began(state))}."
    if context:
        description += "\n" + render_context(context)
    return secrets.scrub(summary), secrets.scrub(description), value_text, threshold_text


def _describe_resolved(state: AlertState, agent: str, at: float | None) -> tuple[str, str, str, str]:
    """A resolution's texts: it says resolved, gives the value now and the threshold, and states no breach."""
    spec = ALARMS[state.alertname]
    where = f"{state.check}/{state.target} on agent {agent}"
    summary = f"Resolved: {state.alertname} for {state.target}"
    began = breach_began(state)
    lasted = f", lasted {format_duration(float(round(at - began)))}" if at is not None and at >= began else ""
    history = f" (it began {iso(began)}{lasted})"
    threshold_text = format_value(state.alertname, state.threshold)
    if state.alertname == "TargetDown":
        value_text, threshold_text = "up", "up"
        now = f"the {state.check} target {state.target} answers its check again"
    elif state.value is None or (state.threshold is not None and spec.comparison.breached(state.value, state.threshold)):
        # Resolved without a good reading: the alarm was disabled or its target left the configuration.
        value_text = "unknown"
        now = "no longer evaluated (the alarm was disabled or its target removed from the configuration)"
    elif spec.kind is ValueKind.FLAG:
        value_text, threshold_text = "ok", "ok"
        now = "the last run succeeded"
    else:
        value_text = format_value(state.alertname, state.value)
        now = "back within its threshold"
    description = (f"{state.alertname} resolved ({where}): {now}; value now {value_text}, "
                   f"threshold {threshold_text}{history}.")
    return secrets.scrub(summary), secrets.scrub(description), value_text, threshold_text


def render_context(context: Mapping[str, Any]) -> str:
    """Context as short ``key: value`` lines a responder can read on a phone."""
    lines = ["Context at firing time:"]
    for key, value in context.items():
        if isinstance(value, (list, tuple)):
            lines.append(f"- {key}:")
            for item in list(value)[:10]:
                lines.append(f"    {_compact(item)}")
        else:
            lines.append(f"- {key}: {_compact(value)}")
    return secrets.scrub("\n".join(lines))[:4000]


def _compact(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def alert_message(state: AlertState, status: str, ident: Identity, *, at: float,
                  context: Mapping[str, Any] | None = None) -> AlertMessage:
    """The sink-neutral message queued in every outbox: a page (``firing``) or its resolution."""
    labels = labels_for(state, ident.agent)
    summary, description, value_text, threshold_text = describe(state, ident.agent, context, status=status, at=at)
    return AlertMessage(
        status=status,
        fingerprint=fingerprint(labels),
        labels=labels,
        annotations={
            "summary": summary,
            "description": description,
            "value": value_text,
            "threshold": threshold_text,
            "runbook_url": runbook_url(ident.runbook_base_url, state.alertname),
        },
        starts_at=breach_began(state) if (state.pending_since or state.firing_since) else at,
        generator_url=ident.generator_url,
        at=at,
        ends_at=at if status == RESOLVED else None,
        value=state.value,
        threshold=state.threshold,
        context=secrets.scrub_any(_jsonable(dict(context or {}))),
    )


def alert_payload(state: AlertState, status: str, ident: Identity, *, at: float,
                  context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:func:`alert_message` as the JSON an outbox stores."""
    return alert_message(state, status, ident, at=at, context=context).to_json()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


WATCHDOG = "Watchdog"


def watchdog_message(ident: Identity, *, started_at: float, at: float) -> AlertMessage:
    """The always-firing heartbeat (SPEC §9.1): while it keeps arriving, the agent and its path to Alertmanager work.

    Route it to a dead-man's-switch receiver, which pages when it *stops* arriving. Its labels
    are only ``alertname``, ``severity="none"`` and ``agent``, so no inhibit or paging route meant
    for real alerts matches it by accident.
    """
    labels = {"alertname": WATCHDOG, "severity": "none", "agent": ident.agent}
    return AlertMessage(
        status=FIRING,
        fingerprint=fingerprint(labels),
        labels=labels,
        annotations={
            "summary": f"opsagent {ident.agent} is alive",
            "description": (f"Always firing while opsagent {ident.agent} runs and reaches Alertmanager "
                            f"(running since {iso(started_at)}). A dead-man's-switch receiver pages when "
                            "this heartbeat stops arriving."),
        },
        starts_at=started_at,
        generator_url=ident.generator_url,
        at=at,
    )
