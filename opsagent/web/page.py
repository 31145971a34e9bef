"""The human status page (``/``): the answer first, then the evidence.

Order, for someone woken at 3 a.m.: a banner with what is wrong (counts by
severity and state, in the worst state's colour), the active alerts (severity,
then age), the checks with problems before the healthy ones, whether pages are
being delivered, disaster recovery (RPO/RTO achieved vs target), and what
happened recently. Every state has its own word and glyph as well as colour,
so it reads in monochrome, in print and to a screen reader. Plain HTML and an
inline SVG per check; no script.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from opsagent import secrets
from opsagent.alerts.catalog import SEVERITIES, ValueKind
from opsagent.web import format as fmt
from opsagent.web.ports import AgentView, AlertRow, CheckRow, TrendPoint
from opsagent.web.status import Snapshot, snapshot
from opsagent.web.style import page_head

_GLYPH = {"firing": "●", "down": "✕", "pending": "◔", "flapping": "↯", "silenced": "⊘", "resolved": "✓",
          "ok": "✓", "inactive": "✓", "standby": "◌", "unknown": "?", "fired": "●", "waiting": "…"}
_WORD = {"inactive": "ok", "waiting": "not run yet"}
# Problems first: the rank of a check row's display state.
_RANK = {"down": 0, "firing": 1, "flapping": 2, "pending": 3, "unknown": 4, "silenced": 5, "waiting": 6,
         "standby": 7, "ok": 8, "inactive": 8}
_SEVERITY_RANK = {name: i for i, name in enumerate(SEVERITIES)}


def e(value: Any) -> str:
    return html.escape(secrets.scrub(str(value)), quote=True)


def badge(state: str, severity: str | None = None) -> str:
    """A state as glyph + word + style: distinguishable without colour."""
    word = _WORD.get(state, state)
    sev = f" sev-{e(severity)}" if severity else ""
    return f"<span class='badge s-{e(state)}{sev}'>{_GLYPH.get(state, '')} {e(word)}</span>"


def status_html(view: AgentView, now: float) -> bytes:
    return render_page(snapshot(view, now))


def render_page(snap: Snapshot) -> bytes:
    s, h = snap.settings, snap.health
    out = [page_head(f"opsagent {e(s.agent_name)}", s.refresh_seconds), "<body>"]
    out.append(f"<header><h1>opsagent · {e(s.agent_name)}</h1><p class='muted'>v{e(s.version)} · up "
               f"{fmt.duration(snap.now - h.started_at)} · {'ready' if h.ready else 'starting'} · "
               f"{'healthy' if h.healthy else 'UNHEALTHY: ' + e(h.reason)} · as of {fmt.clock_time(snap.now)} "
               f"(refreshes every {s.refresh_seconds}s)</p></header><main>")
    out.append(_banner(snap))
    out.append(_alerts(snap))
    out.append(_checks(snap))
    out.append(_delivery(snap))
    if snap.backups is not None:
        out.append(_dr(snap.backups, snap.now))
    out.append(_holds(snap.quality, snap.now))
    out.append(_history(snap))
    out.append("</main><footer><nav aria-label='more'><a href='/status'>/status (JSON)</a><a href='/metrics'>/metrics</a>"
               "<a href='/runbooks/DisasterRecovery'>DR runbook</a></nav></footer></body></html>")
    return "".join(out).encode()


# -- banner ---------------------------------------------------------------------------------------

def _display_state(row: CheckRow) -> str:
    if row.up is None and row.state in ("pending", "standby"):
        return "standby" if row.state == "standby" else "waiting"
    if row.up is False and row.state not in ("standby", "silenced"):
        return "down"
    return row.state


def _banner(snap: Snapshot) -> str:
    alerts = snap.alerts
    firing = [a for a in alerts if a.state == "firing"]
    counts = {
        "firing critical": sum(a.severity == "critical" for a in firing),
        "firing warning": sum(a.severity != "critical" for a in firing),
        "pending": sum(a.state == "pending" for a in alerts),
        "flapping": sum(a.state == "flapping" for a in alerts)
        + sum(r.state == "flapping" for r in snap.checks if not any(a.target == r.target for a in alerts)),
        "silenced": sum(a.state == "silenced" for a in alerts),
        "checks down": sum(_display_state(r) == "down" for r in snap.checks),
    }
    if counts["firing critical"] or not snap.health.healthy:
        tone, verdict = "crit", "Critical alerts firing" if counts["firing critical"] else "Agent unhealthy"
    elif counts["firing warning"] or counts["checks down"]:
        tone, verdict = "warn", "Warnings firing" if counts["firing warning"] else "Targets down"
    elif counts["pending"] or counts["flapping"]:
        tone, verdict = "warn", "Alerts pending"
    elif counts["silenced"]:
        tone, verdict = "quiet", "Only silenced alerts"
    elif not snap.health.ready:
        tone, verdict = "quiet", "Starting: the first round of checks is still running"
    else:
        tone, verdict = "ok", "All clear"
    items = "".join(f"<li data-count='{e(name)}'><b>{n}</b> {e(name)}</li>" for name, n in counts.items())
    return (f"<section class='banner {tone}' aria-label='summary' role='status'><div class='verdict'>"
            f"{_GLYPH['ok'] if tone == 'ok' else '!'} {verdict}</div><ul class='counts'>{items}</ul></section>")


# -- alerts ---------------------------------------------------------------------------------------

def _alert_order(a: AlertRow) -> tuple[int, int, float]:
    state_rank = 1 if a.state == "silenced" else 0
    return (state_rank, _SEVERITY_RANK.get(a.severity, len(SEVERITIES)), a.since or float("inf"))


def _values(check: str, alert: str | None, value: float | None, threshold: float | None) -> tuple[str, str]:
    if alert == "TargetDown":
        return "down", "up"
    return fmt.value_pair(fmt.value_kind(check, alert), value, threshold)


def _silence_link(base: str | None, a: AlertRow, agent: str) -> str:
    if not base:
        return ""
    matchers = ",".join(f'{k}="{v}"' for k, v in (("alertname", a.alertname), ("check", a.check),
                                                    ("target", a.target), ("agent", agent)))
    url = secrets.mask_url(base).rstrip("/") + "/#/silences/new?filter=" + quote("{" + matchers + "}", safe="")
    return f"<a class='silence' href='{e(url)}'>silence…</a>"


def _alerts(snap: Snapshot) -> str:
    if not snap.alerts:
        return "<section aria-labelledby='h-alerts'><h2 id='h-alerts'>Active alerts</h2><p class='good'>✓ No active alerts.</p></section>"
    s = snap.settings
    out = ["<section aria-labelledby='h-alerts'><h2 id='h-alerts'>Active alerts</h2><table class='cards alerts'><thead><tr>"
           "<th scope='col'>state</th><th scope='col'>severity</th><th scope='col'>alert</th><th scope='col'>target</th>"
           "<th scope='col'>value</th><th scope='col'>threshold</th><th scope='col'>since</th>"
           "<th scope='col'>description</th><th scope='col'>act</th></tr></thead><tbody>"]
    for a in sorted(snap.alerts, key=_alert_order):
        value, threshold = _values(a.check, a.alertname, a.value, a.threshold)
        out.append(
            f"<tr data-state='{e(a.state)}' data-alert='{e(a.alertname)}'><td data-label='state'>{badge(a.state, a.severity)}</td>"
            f"<td data-label='severity'>{e(a.severity)}</td><td data-label='alert'>{_runbook(a.alertname)}</td>"
            f"<td data-label='target'>{e(a.check)}/{e(a.target)}</td><td class='num' data-label='value'>{e(value)}</td>"
            f"<td class='num' data-label='threshold'>{e(threshold)}</td>"
            f"<td data-label='since'>{fmt.ago(a.since, snap.now)} <small>{fmt.clock_time(a.since)}</small></td>"
            f"<td class='text' data-label='description'>{_held(a, snap.now)}{_description(a.description)}</td>"
            f"<td data-label='act'>{_silence_link(s.alertmanager_url, a, s.agent_name)}</td></tr>")
    out.append("</tbody></table></section>")
    return "".join(out)


def _description(text: str) -> str:
    """The sentence that matters, with the firing-time context folded away."""
    first, _, rest = text.partition("\n")
    if not rest:
        return e(first)
    return f"{e(first)}<details><summary>context at firing time</summary><pre>{e(rest)}</pre></details>"


_WORD_START = re.compile(r"(?<=[a-z_])(?=[A-Z])|(?<=_)")


def breakable(text: str) -> str:
    """Escaped ``text`` that may wrap between the words of CamelCase and snake_case names."""
    return "<wbr>".join(e(part) for part in _WORD_START.split(text))


def _runbook(alert: str | None) -> str:
    if not alert:
        return ""
    name = e(alert)
    return f"<a href='/runbooks/{name}'>{breakable(alert)}</a> <small><a href='/runbooks/{name}.md'>.md</a></small>"


# -- checks ---------------------------------------------------------------------------------------

def sparkline(points: Sequence[TrendPoint], threshold: float | None, width: int = 100, height: int = 24) -> str:
    """An inline SVG of the points (gaps where the target was down) with the threshold as a dashed line."""
    values = [p.value for p in points if p.value is not None]
    if len(values) < 2:
        return "<small>–</small>"
    lo, hi = min(values), max(values)
    if threshold is not None and lo <= threshold * 1.5 + 1e-12 and threshold >= 0:
        lo, hi = min(lo, threshold), max(hi, threshold)
    span = (hi - lo) or 1.0
    t0, t1 = points[0].at, points[-1].at
    tspan = (t1 - t0) or 1.0

    def xy(p: TrendPoint, v: float) -> str:
        return f"{(p.at - t0) / tspan * (width - 2) + 1:.1f},{height - 1 - (v - lo) / span * (height - 2):.1f}"

    lines: list[list[str]] = [[]]
    for p in points:
        if p.value is None:
            if lines[-1]:
                lines.append([])
            continue
        lines[-1].append(xy(p, p.value))
    shapes = "".join(f"<polyline points='{' '.join(seg)}'/>" for seg in lines if len(seg) > 1)
    shapes += "".join(f"<circle cx='{seg[0].split(',')[0]}' cy='{seg[0].split(',')[1]}' r='1.2'/>"
                      for seg in lines if len(seg) == 1)
    if threshold is not None and lo <= threshold <= hi:
        y = height - 1 - (threshold - lo) / span * (height - 2)
        shapes += f"<line x1='0' x2='{width}' y1='{y:.1f}' y2='{y:.1f}'/>"
    label = f"last hour: {len(values)} points, low {lo:.4g}, high {hi:.4g}"
    return (f"<svg class='spark' width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img' "
            f"aria-label='{e(label)}'>{shapes}</svg>")


def _checks(snap: Snapshot) -> str:
    rows = sorted(enumerate(snap.checks), key=lambda ir: (_RANK.get(_display_state(ir[1]), 5), ir[0]))
    out = ["<section aria-labelledby='h-checks'><h2 id='h-checks'>Checks</h2><table class='cards checks'><thead><tr>"
           "<th scope='col'>state</th><th scope='col'>check</th><th scope='col'>target</th><th scope='col'>value</th>"
           "<th scope='col'>threshold</th><th scope='col'>last hour</th><th scope='col'>alarm</th>"
           "<th scope='col'>last run</th><th scope='col'>source</th><th scope='col'>error</th></tr></thead><tbody>"]
    for _, r in rows:
        state = _display_state(r)
        value, threshold = _values(r.check, None if r.alert == "TargetDown" else r.alert, r.value, r.threshold)
        if r.up is False:
            value = "down"
        kind = fmt.value_kind(r.check, r.alert)
        trend = sparkline(r.trend, r.threshold if kind in (ValueKind.RATIO, ValueKind.COUNT) else None)
        last = fmt.ago(r.last_run, snap.now)
        if state == "down":
            last += f"<br><small>last OK: {fmt.ago(r.last_ok_at, snap.now)}</small>"
        out.append(
            f"<tr data-state='{e(state)}' data-check='{e(r.check)}/{e(r.target)}'><td data-label='state'>{badge(state)}</td>"
            f"<td data-label='check'>{breakable(r.check)}</td><td data-label='target'>{e(r.target)}</td>"
            f"<td class='num' data-label='value'>{e(value)}</td><td class='num' data-label='threshold'>{e(threshold)}</td>"
            f"<td data-label='last hour'>{trend}</td><td data-label='alarm'>{_runbook(r.alert)}</td>"
            f"<td data-label='last run'>{last}</td><td class='text' data-label='source'>{e(r.source or '')}</td>"
            f"<td class='text' data-label='error'>{e(r.error or _standby_note(r))}</td></tr>")
    out.append("</tbody></table></section>")
    return "".join(out)


def _standby_note(r: CheckRow) -> str:
    """Who checks a standby target: the fleet leader (SPEC §9.6)."""
    if r.state != "standby":
        return ""
    return f"standby (checked by {r.checked_by or 'no leader yet'})"


# -- delivery -------------------------------------------------------------------------------------

def _delivery(snap: Snapshot) -> str:
    head = "<section aria-labelledby='h-notify'><h2 id='h-notify'>Alert delivery</h2>"
    if not snap.delivery:
        return head + "<p class='bad'>No sink is configured: alerts are shown here and in /metrics only, nobody is paged.</p></section>"
    out = [head, "<table class='cards notify'><thead><tr><th scope='col'>sink</th><th scope='col'>state</th>"
           "<th scope='col'>queued</th><th scope='col'>sent</th><th scope='col'>failed attempts</th>"
           "<th scope='col'>last sent</th><th scope='col'>last error</th></tr></thead><tbody>"]
    for d in snap.delivery:
        healthy = d.last_error is None
        state = "<span class='good'>✓ delivering</span>" if healthy else "<span class='bad'>✕ failing</span>"
        out.append(
            f"<tr data-sink='{e(d.sink)}'><td data-label='sink'>{e(d.sink)}</td><td data-label='state'>{state}</td>"
            f"<td class='num' data-label='queued'>{d.queued}</td><td class='num' data-label='sent'>{d.sent}</td>"
            f"<td class='num' data-label='failed attempts'>{d.failed}</td>"
            f"<td data-label='last sent'>{fmt.ago(d.last_sent_at, snap.now)}</td>"
            f"<td class='text' data-label='last error'>{e(d.last_error or '')}</td></tr>")
    out.append("</tbody></table></section>")
    return "".join(out)


# -- disaster recovery ----------------------------------------------------------------------------

def _never(text: str) -> str:
    return f"<span class='never'>✕ {text}</span>"


def _age_of(item: Mapping[str, Any] | None, now: float) -> str:
    if not item:
        return _never("never")
    ident = item.get("id")
    ts = item.get("timestamp")
    return (f"{e(ident) + ' ' if ident else ''}<small>{fmt.ago(ts, now)}"
            f"{' · ' + fmt.size(item.get('size')) if item.get('size') else ''}</small>")


def _dr(b: Mapping[str, Any], now: float) -> str:
    rpo_t, rto_t = b.get("rpo_target_seconds"), b.get("rto_target_seconds")
    rpo_now, rto_now = b.get("rpo_achieved_seconds"), b.get("rto_achieved_seconds")
    drill = b.get("last_drill") or {}
    rpo_cell = _never("never: no complete backup") if rpo_now is None else (
        f"<span class='{'bad' if rpo_t and rpo_now > rpo_t else 'good'}'>{fmt.duration(rpo_now)}</span>")
    if not drill:
        drill_cell = "<span class='muted'>no drill yet</span>"
    else:
        passed = bool(drill.get("passed"))
        drill_cell = (f"<span class='{'good' if passed else 'bad'}'>{'✓ passed' if passed else '✕ FAILED'}</span> "
                      f"<small>{e(drill.get('finished_at') or '')}</small>")
    rto_cell = "–" if rto_now is None else (
        f"<span class='{'bad' if rto_t and rto_now > rto_t else 'good'}'>{fmt.duration(rto_now)}</span>")
    out = ["<section aria-labelledby='h-dr'><h2 id='h-dr'>Backups and disaster recovery</h2>",
           "<p><a href='/runbooks/DisasterRecovery'>Disaster-recovery runbook</a></p>",
           "<table class='cards dr-summary'><thead><tr><th scope='col'>objective</th><th scope='col'>achieved</th>"
           "<th scope='col'>target</th></tr></thead><tbody>",
           f"<tr><td data-label='objective'>RPO (age of newest complete backup)</td><td data-label='achieved'>{rpo_cell}</td>"
           f"<td data-label='target'>{fmt.config_duration(rpo_t)}</td></tr>",
           f"<tr><td data-label='objective'>RTO (last restore drill: {drill_cell})</td><td data-label='achieved'>{rto_cell}</td>"
           f"<td data-label='target'>{fmt.config_duration(rto_t)}</td></tr></tbody></table>"]
    nxt = [f"next backup {fmt.until(b['next_run_at'], now)} <small>{fmt.clock_time(b['next_run_at'])}</small>"
           for _ in [0] if b.get("next_run_at")]
    nxt += [f"next drill {fmt.until(b['next_drill_at'], now)} <small>{fmt.clock_time(b['next_drill_at'])}</small>"
            for _ in [0] if b.get("next_drill_at")]
    if b.get("running"):
        nxt.insert(0, "<b>a backup run is in progress</b>")
    if nxt:
        out.append(f"<p>{' · '.join(nxt)}</p>")
    last = b.get("last_run") or {}
    outcomes = {(o.get("kind"), o.get("target")): o for o in last.get("outcomes") or []}
    out.append("<table class='cards dr-targets'><thead><tr><th scope='col'>kind</th><th scope='col'>target</th>"
               "<th scope='col'>newest backup</th><th scope='col'>newest replica copy</th><th scope='col'>RPO now</th>"
               "<th scope='col'>last run</th></tr></thead><tbody>")
    replica_configured = bool(b.get("replica")) or any(t.get("region") for t in b.get("targets") or [])
    for t in b.get("targets") or []:
        rpo = t.get("rpo_seconds")
        rpo_text = _never("never") if rpo is None or not t.get("newest_backup") else (
            f"<span class='{'bad' if rpo_t and rpo > rpo_t else 'good'}'>{fmt.duration(rpo)}</span>")
        replica = _age_of(t.get("newest_replica"), now) if replica_configured else "<small>no replica configured</small>"
        out.append(
            f"<tr data-target='{e(t.get('kind'))}/{e(t.get('target'))}'><td data-label='kind'>{e(t.get('kind'))}</td>"
            f"<td data-label='target'>{e(t.get('target'))}</td>"
            f"<td data-label='newest backup'>{_age_of(t.get('newest_backup'), now)}</td>"
            f"<td data-label='newest replica copy'>{replica}</td><td data-label='RPO now'>{rpo_text}</td>"
            f"<td class='text' data-label='last run'>{_outcome(outcomes.get((t.get('kind'), t.get('target'))), last)}</td></tr>")
    out.append("</tbody></table>")
    if last:
        ok = bool(last.get("ok"))
        verdict = "<span class='good'>✓ ok</span>" if ok else "<span class='bad'>✕ FAILED</span>"
        error = f": {e(last['error'])}" if last.get("error") else ""
        out.append(f"<p>Last backup run ({e(last.get('trigger') or '')}, {e(last.get('finished_at') or 'running')}): "
                   f"{verdict}{error}</p>")
    out.append("</section>")
    return "".join(out)


def _outcome(o: Mapping[str, Any] | None, last: Mapping[str, Any]) -> str:
    if o is None:
        return "<small>not in the last run</small>" if last else "<small>no run yet</small>"
    if not o.get("ok"):
        return f"<span class='bad'>✕ backup failed</span>: {e(o.get('error') or 'no reason recorded')}"
    if o.get("replica_ok") is False:
        return f"<span class='bad'>✕ replication failed</span>: {e(o.get('replica_error') or 'no reason recorded')}"
    return f"<span class='good'>✓ ok</span> <small>{e(o.get('backup_id') or '')}</small>"


# -- history --------------------------------------------------------------------------------------

def _history(snap: Snapshot) -> str:
    head = "<section aria-labelledby='h-history'><h2 id='h-history'>Recent alert history</h2>"
    if not snap.history:
        return head + "<p class='muted'>No alert has fired or resolved yet.</p></section>"
    out = [head, "<table class='cards history'><thead><tr><th scope='col'>when</th><th scope='col'>event</th>"
           "<th scope='col'>alert</th><th scope='col'>target</th><th scope='col'>severity</th>"
           "<th scope='col'>lasted</th><th scope='col'>description</th></tr></thead><tbody>"]
    for ev in snap.history:
        out.append(
            f"<tr data-event='{e(ev.kind)}'><td data-label='when'>{fmt.clock_time(ev.at)} <small>{fmt.ago(ev.at, snap.now)}</small></td>"
            f"<td data-label='event'>{badge(ev.kind)}</td><td data-label='alert'>{_runbook(ev.alertname)}</td>"
            f"<td data-label='target'>{e(ev.check)}/{e(ev.target)}</td><td data-label='severity'>{e(ev.severity)}</td>"
            f"<td data-label='lasted'>{fmt.duration(ev.duration_seconds) if ev.duration_seconds is not None else ''}</td>"
            f"<td class='text' data-label='description'>{e(ev.description)}</td></tr>")
    out.append("</tbody></table></section>")
    return "".join(out)


# -- maintenance windows and silences (issue 17) ----------------------------------------------------


def _held(a: AlertRow, now: float) -> str:
    """"Held by maintenance until 14:00 UTC": the agent is not paging for this alert right now."""
    if not a.held_by:
        return ""
    return f"<p class='muted'>⊘ silenced by {e(a.held_by)} until {fmt.clock_time(a.held_until)}</p>"


def _holds(quality: Mapping[str, Any], now: float) -> str:
    holds = quality.get("silences") or []
    if not holds:
        return ""
    out = ["<section aria-labelledby='h-holds'><h2 id='h-holds'>Maintenance windows and silences</h2>"
           "<table class='cards'><thead><tr><th scope='col'>source</th><th scope='col'>matches</th>"
           "<th scope='col'>from</th><th scope='col'>until</th><th scope='col'>state</th>"
           "<th scope='col'>comment</th></tr></thead><tbody>"]
    for h in holds:
        match = ", ".join(f"{k}={v}" for k, v in sorted((h.get("match") or {}).items()))
        state = "active" if h.get("active") else "upcoming"
        out.append(f"<tr><td data-label='source'>{e(str(h.get('source')))}</td><td data-label='matches'>{e(match)}</td>"
                   f"<td data-label='from'>{fmt.clock_time(h.get('starts_at'))}</td>"
                   f"<td data-label='until'>{fmt.clock_time(h.get('ends_at'))}</td>"
                   f"<td data-label='state'>{state}</td><td data-label='comment'>{e(str(h.get('comment') or ''))}</td></tr>")
    out.append("</tbody></table></section>")
    return "".join(out)
