"""The facts /status and the status page show, gathered in one place.

Both views are built from one dict so they can never disagree. Everything in
it has already been scrubbed of secrets (errors by the runner, alert text by the
pipeline); :func:`status_document` scrubs once more as a last line of defence.
"""

from __future__ import annotations

import html
import json
import time
from typing import TYPE_CHECKING, Any

from opsagent import __version__, secrets
from opsagent.alerts.verdict import verdict

if TYPE_CHECKING:
    from opsagent.runtime.agent import Agent


def status_document(agent: Agent) -> dict[str, Any]:
    settings = agent.settings
    checks = []
    for (kind, name), runner in agent.runners.items():
        result = agent.store.get(kind, name)
        row: dict[str, Any] = {"check": kind, "target": name, "interval_seconds": agent._targets[(kind, name)].interval}
        checked_by = agent.standby(kind, name)
        if checked_by is not None:  # a fleet standby: the leader checks this shared target
            row.update({"up": None, "value": None, "state": "standby", "checked_by": checked_by or None,
                        "last_run": None, "error": None})
        elif result is None:
            row.update({"up": None, "value": None, "state": "pending", "last_run": None, "error": None})
        else:
            v = verdict(settings, result)
            alarm = agent.pipeline.alarm_state(kind, name)
            row.update({
                "up": result.up,
                "value": result.value,
                "threshold": v.threshold,
                "alert": alarm.get("alert") or v.alert,
                "state": alarm.get("state") or v.state,
                "breached": v.breached,
                "last_run": result.at,
                "duration_seconds": round(result.duration, 4),
                "error": result.error,
                "source": result.source,
                "details": result.details,
            })
        checks.append(row)
    doc: dict[str, Any] = {
        "agent": {
            "name": settings.agent.name,
            "version": __version__,
            "started_at": agent.started_at,
            "uptime_seconds": round(agent.clock() - agent.started_at, 1),
            "ready": agent.ready.is_set(),
            "healthy": agent.health()[0],
            "id": agent.agent_id,
            "fleet_leader": agent.fleet.is_leader(),
            "fleet_lock": agent.fleet.mechanism,
            "fleet_role": agent.fleet.role,
        },
        "checks": checks,
        "alerts": agent.pipeline.alerts(),
        "backups": agent.backup.status() if agent.backup is not None else None,
        "generated_at": time.time(),
    }
    return secrets.scrub_any(doc)  # type: ignore[no-any-return]


def status_json(agent: Agent) -> bytes:
    return json.dumps(status_document(agent), default=str, indent=1).encode()


# -- the human page --------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;margin-bottom:1.5rem;min-width:60%}
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f3f3f3} .ok{color:#17692e} .bad{color:#b00020;font-weight:bold} .warn{color:#a25b00}
small{color:#666}
"""


def _fmt(value: Any, kind: str | None = None) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if kind in ("cpu", "memory", "redis", "postgres", "error_rate") and value <= 1.5:
            return f"{value * 100:.2f} %"
        return f"{value:.4g}"
    return str(value)


def _ago(ts: Any) -> str:
    if not ts:
        return "never"
    if not isinstance(ts, (int, float)):
        return str(ts)
    delta = max(0.0, time.time() - ts)
    return f"{delta:.0f}s ago" if delta < 120 else f"{delta / 60:.0f}m ago" if delta < 7200 else f"{delta / 3600:.1f}h ago"


def _runbook_link(base: str, alert: str | None) -> str:
    if not alert:
        return ""
    url = html.escape(base.rstrip("/") + "/" + alert + ".md", quote=True)
    return f'<a href="{url}">{html.escape(alert)}</a>'


def status_html(agent: Agent) -> bytes:
    doc = status_document(agent)
    base = agent.settings.agent.runbook_base_url
    e = html.escape
    a = doc["agent"]
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>opsagent status</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>opsagent <small>{e(a['name'])} · v{e(a['version'])} · up {a['uptime_seconds']:.0f}s · "
        f"{'ready' if a['ready'] else 'starting'} · {'healthy' if a['healthy'] else 'UNHEALTHY'}</small></h1>",
        "<h2>Checks</h2><table><tr><th>check</th><th>target</th><th>value</th><th>threshold</th><th>state</th>"
        "<th>alarm (runbook)</th><th>last run</th><th>source</th><th>error</th></tr>",
    ]
    for c in doc["checks"]:
        state = c.get("state") or "pending"
        css = "ok" if state in ("ok", "inactive") else "warn" if state in ("pending", "breached", "unknown") else "bad"
        if c.get("up") is False:
            css = "bad"
        if state == "standby":
            css, state = "ok", f"standby (checked by {c.get('checked_by') or 'no leader yet'})"
        out.append(
            f"<tr><td>{e(c['check'])}</td><td>{e(c['target'])}</td><td>{e(_fmt(c.get('value'), c['check']))}</td>"
            f"<td>{e(_fmt(c.get('threshold'), c['check']))}</td><td class='{css}'>{e(state)}"
            f"{'' if c.get('up') is not False else ' (down)'}</td><td>{_runbook_link(base, c.get('alert'))}</td>"
            f"<td>{e(_ago(c.get('last_run')))}</td><td>{e(str(c.get('source') or ''))}</td>"
            f"<td>{e(c.get('error') or '')}</td></tr>"
        )
    out.append("</table><h2>Active alerts</h2>")
    if doc["alerts"]:
        out.append("<table><tr><th>alert</th><th>target</th><th>severity</th><th>state</th><th>since</th><th>description</th></tr>")
        for al in doc["alerts"]:
            labels = al.get("labels", {})
            ann = al.get("annotations", {})
            out.append(
                f"<tr><td>{_runbook_link(base, al.get('alertname') or labels.get('alertname'))}</td>"
                f"<td>{e(str(labels.get('target', '')))}</td><td>{e(str(al.get('severity') or labels.get('severity', '')))}</td>"
                f"<td class='bad'>{e(str(al.get('state', '')))}</td><td>{e(_ago(al.get('since')))}</td>"
                f"<td>{e(str(ann.get('description', '')))}</td></tr>"
            )
        out.append("</table>")
    else:
        out.append("<p class='ok'>No active alerts.</p>")
    backups = doc.get("backups")
    if backups:
        out.append(_backup_section(backups))
    out.append("<p><small>JSON: <a href='/status'>/status</a> · metrics: <a href='/metrics'>/metrics</a></small></p></body></html>")
    return "".join(out).encode()


def _backup_section(b: dict[str, Any]) -> str:
    e = html.escape
    out = ["<h2>Backups and disaster recovery</h2>"]
    rpo_t, rto_t = b.get("rpo_target_seconds"), b.get("rto_target_seconds")
    rpo_now, rto_last = b.get("rpo_achieved_seconds"), b.get("rto_achieved_seconds")
    drill = b.get("last_drill") or {}
    rpo_css = "bad" if rpo_now is not None and rpo_t and rpo_now > rpo_t else "ok"
    if not drill:
        drill_text, drill_css = "no drill yet", "warn"
    else:
        passed = drill.get("passed")
        drill_text = f"{'passed' if passed else 'FAILED'} {drill.get('finished_at', '')}"
        drill_css = "ok" if passed else "bad"
    out.append(
        "<table><tr><th></th><th>achieved</th><th>target</th></tr>"
        f"<tr><td>RPO (age of newest complete backup)</td><td class='{rpo_css}'>{e(_seconds(rpo_now))}</td>"
        f"<td>{e(_seconds(rpo_t))}</td></tr>"
        f"<tr><td>RTO (last restore drill: <span class='{drill_css}'>{e(drill_text)}</span>)</td>"
        f"<td class='{drill_css}'>{e(_seconds(rto_last))}</td><td>{e(_seconds(rto_t))}</td></tr></table>"
    )
    out.append("<table><tr><th>kind</th><th>target</th><th>newest backup</th><th>size</th>"
               "<th>newest replica copy</th><th>RPO now</th></tr>")
    for t in b.get("targets", []):
        nb, nr = t.get("newest_backup") or {}, t.get("newest_replica") or {}
        rpo = t.get("rpo_seconds")
        css = "bad" if rpo is not None and rpo_t and rpo > rpo_t else "ok"
        out.append(
            f"<tr><td>{e(str(t.get('kind')))}</td><td>{e(str(t.get('target')))}</td>"
            f"<td>{e(str(nb.get('id', '–')))} <small>{e(_ago(nb.get('timestamp')))}</small></td>"
            f"<td>{e(_bytes(nb.get('size')))}</td>"
            f"<td>{e(str(nr.get('id', '–')))} <small>{e(_ago(nr.get('timestamp')))}</small></td>"
            f"<td class='{css}'>{e(_seconds(rpo))}</td></tr>"
        )
    out.append("</table>")
    last = b.get("last_run") or {}
    if last:
        verdict = "ok" if last.get("ok") else f"FAILED: {last.get('error') or 'see outcomes'}"
        out.append(f"<p>Last backup run ({e(str(last.get('trigger', '')))}): "
                   f"<span class='{'ok' if last.get('ok') else 'bad'}'>{e(verdict)}</span> "
                   f"<small>{e(str(last.get('finished_at', '')))}</small></p>")
    return "".join(out)


def _seconds(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    if value < 120:
        return f"{value:.1f}s"
    return f"{value / 60:.0f}m" if value < 7200 else f"{value / 3600:.1f}h"


def _bytes(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
