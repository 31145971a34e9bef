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
from datetime import UTC, datetime
from typing import Any

from opsagent import secrets
from opsagent.alerts.catalog import ALARMS, ValueKind
from opsagent.alerts.engine import AlertState
from opsagent.units import format_duration

LABEL_NAMES = ("alertname", "severity", "check", "target", "agent")
ANNOTATION_NAMES = ("summary", "description", "value", "threshold", "runbook_url")


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


def iso(ts: float) -> str:
    """RFC 3339 UTC with milliseconds, as Alertmanager and PagerDuty accept."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def runbook_url(base: str, alertname: str) -> str:
    return base.rstrip("/") + "/" + ALARMS[alertname].runbook


def _what(state: AlertState) -> str:
    spec = ALARMS[state.alertname]
    if state.alertname == "TargetDown":
        return f"The {state.check} target {state.target} does not answer its check"
    return spec.summary.format(target=state.target)


def describe(state: AlertState, agent: str, context: Mapping[str, Any] | None = None) -> tuple[str, str, str, str]:
    """``(summary, description, value, threshold)`` annotation texts."""
    spec = ALARMS[state.alertname]
    since = next((t for t in (state.firing_since, state.pending_since, state.last_at) if t is not None), 0.0)
    summary = spec.summary.format(target=state.target)
    if state.alertname == "TargetDown":
        value_text, threshold_text = "down", "up"
        measure = "the check failed" + (f": {state.error}" if state.error else "")
    else:
        value_text = format_value(state.alertname, state.value)
        threshold_text = format_value(state.alertname, state.threshold)
        measure = f"value {value_text} {state.comparison or spec.comparison.value} threshold {threshold_text}"
        if state.unknown:
            measure += " (last known; the target is currently down)"
        elif state.error:
            measure += f" ({state.error})"
    description = f"{_what(state)} ({state.check}/{state.target} on agent {agent}): {measure}, since {iso(since)}."
    if context:
        description += "\n" + render_context(context)
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


def alert_payload(state: AlertState, status: str, ident: Identity, *, at: float,
                  context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The sink-neutral alert record queued in every outbox (JSON-serialisable)."""
    labels = labels_for(state, ident.agent)
    summary, description, value_text, threshold_text = describe(state, ident.agent, context)
    starts = next((t for t in (state.firing_since, state.pending_since) if t is not None), at)
    return {
        "status": status,  # "firing" | "resolved"
        "fingerprint": fingerprint(labels),
        "labels": labels,
        "annotations": {
            "summary": summary,
            "description": description,
            "value": value_text,
            "threshold": threshold_text,
            "runbook_url": runbook_url(ident.runbook_base_url, state.alertname),
        },
        "startsAt": iso(starts),
        "starts_at": starts,
        "endsAt": iso(at) if status == "resolved" else None,
        "ends_at": at if status == "resolved" else None,
        "generatorURL": ident.generator_url,
        "value": state.value,
        "threshold": state.threshold,
        "context": secrets.scrub_any(_jsonable(dict(context or {}))),
        "at": at,
    }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
