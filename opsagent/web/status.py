"""The facts /status and the status page show, read once from the view.

Both are built from one :class:`Snapshot`, so the JSON and the page can never
disagree. Everything in it was already scrubbed of secrets upstream (errors by
the runner, alert text by the pipeline); the JSON document is scrubbed once
more as a last line of defence, and the page escapes and scrubs what it prints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opsagent import secrets
from opsagent.alerts.history import AlertEvent
from opsagent.notify.stats import SinkStats
from opsagent.web.ports import AgentView, AlertRow, CheckRow, Health, PageSettings

HISTORY_ROWS = 100


@dataclass(frozen=True)
class Snapshot:
    """One consistent read of everything a status view shows."""

    now: float
    settings: PageSettings
    health: Health
    checks: list[CheckRow]
    alerts: list[AlertRow]
    backups: Mapping[str, Any] | None
    delivery: list[SinkStats]
    history: list[AlertEvent]
    quality: Mapping[str, Any]


def snapshot(view: AgentView, now: float) -> Snapshot:
    return Snapshot(now=now, settings=view.page_settings(), health=view.health(), checks=view.checks(),
                    alerts=view.alerts(), backups=view.backups(), delivery=view.delivery(),
                    history=view.history(HISTORY_ROWS), quality=view.quality())


def status_document(snap: Snapshot) -> dict[str, Any]:
    """The /status JSON document (SPEC §5, plus ``notify`` and ``history``)."""
    settings, health = snap.settings, snap.health
    doc: dict[str, Any] = {
        "agent": {
            "name": settings.agent_name,
            "version": settings.version,
            "started_at": health.started_at,
            "uptime_seconds": round(snap.now - health.started_at, 1),
            "ready": health.ready,
            "healthy": health.healthy,
            "id": health.agent_id,
            "fleet_leader": health.fleet_leader,
            "fleet_lock": health.fleet_lock,
            "fleet_role": health.fleet_role,
        },
        "checks": [row.to_json() for row in snap.checks],
        "alerts": [row.to_json() for row in snap.alerts],
        "backups": dict(snap.backups) if snap.backups is not None else None,
        "notify": [s.to_json() for s in snap.delivery],
        "history": [e.to_json() for e in snap.history],
        "quality": dict(snap.quality),  # silences, maintenance windows, error budgets, forecasts
        "generated_at": snap.now,
    }
    return secrets.scrub_any(doc)  # type: ignore[no-any-return]  # scrub_any keeps the shape it is given


def status_json(view: AgentView, now: float) -> bytes:
    return json.dumps(status_document(snapshot(view, now)), default=str, indent=1).encode()
