"""What the web layer may read from the agent, and nothing more.

The HTTP server and the status page see the agent only through
:class:`AgentView`, a narrow protocol implemented by the composition root
(``runtime/agent.py``). The web layer therefore never imports the agent, never
reaches into its private state, and can be tested against a hand-made view.
Everything crossing the boundary is a frozen dataclass, except the backups
document, whose shape belongs to ``backup/`` and is passed through as the JSON
``/status`` already publishes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from opsagent.alerts.history import AlertEvent
from opsagent.notify.stats import SinkStats

TriggerResult = Literal["started", "busy", "unconfigured"]


@dataclass(frozen=True)
class PageSettings:
    """The few settings the pages need: who this agent is and where its links go."""

    agent_name: str
    version: str
    runbook_base_url: str
    alertmanager_url: str | None = None  # for "silence this alert" links; None hides them
    refresh_seconds: int = 30  # the status page's auto-refresh
    admin_token: str | None = None  # bearer token for POST endpoints; None disables them


@dataclass(frozen=True)
class Health:
    """Liveness (/healthz) and readiness (/readyz) with the reason a probe shows."""

    healthy: bool
    reason: str
    ready: bool
    started_at: float
    agent_id: str = ""  # this process in the fleet
    fleet_leader: bool = True  # alone, or holding the fleet lock
    fleet_lock: str | None = None  # the lock mechanism (postgres, dynamodb) or None without one
    fleet_role: str = "alone"


@dataclass(frozen=True)
class MetricsBody:
    """One rendered exposition, possibly gzip-compressed."""

    body: bytes
    content_type: str
    gzipped: bool = False


@dataclass(frozen=True)
class TrendPoint:
    """One sample of a check's recent values (None where the target was down)."""

    at: float
    value: float | None


@dataclass(frozen=True)
class CheckRow:
    """One configured target as /status and the page show it."""

    check: str
    target: str
    interval_seconds: float
    state: str  # inactive, pending, firing, unknown, flapping, silenced, standby, or pending before a first run
    up: bool | None = None  # None: not run yet
    value: float | None = None
    threshold: float | None = None
    alert: str | None = None
    breached: bool | None = None
    last_run: float | None = None
    duration_seconds: float | None = None
    error: str | None = None
    source: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    last_ok_at: float | None = None  # the newest run that answered (shown for a down target)
    trend: tuple[TrendPoint, ...] = ()  # the last hour, oldest first (page only, not in /status)
    checked_by: str | None = None  # standby: the fleet leader's agent id that checks this shared target

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"check": self.check, "target": self.target, "interval_seconds": self.interval_seconds,
                               "up": self.up, "value": self.value, "state": self.state, "last_run": self.last_run,
                               "error": self.error, "last_ok_at": self.last_ok_at}
        if self.state == "standby":
            doc["checked_by"] = self.checked_by or None
        if self.up is not None:
            doc.update({"threshold": self.threshold, "alert": self.alert, "breached": self.breached,
                        "duration_seconds": self.duration_seconds, "source": self.source,
                        "details": dict(self.details)})
        return doc


@dataclass(frozen=True)
class AlertRow:
    """One active alert. ``document`` is the pipeline's own /status record, published unchanged."""

    alertname: str
    state: str  # pending, firing, flapping, silenced, resolved
    severity: str
    check: str
    target: str
    value: float | None
    threshold: float | None
    since: float | None
    fingerprint: str
    summary: str = ""
    description: str = ""
    held_by: str | None = None  # "maintenance" or "silence": the page is held by the agent until ``held_until``
    held_until: float | None = None
    document: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.document)


class AgentView(Protocol):
    """Everything the web layer may ask of a running agent."""

    def page_settings(self) -> PageSettings:
        """Static facts for the pages (cheap; may be cached by the caller)."""
        ...

    def health(self) -> Health:
        """Liveness and readiness now."""
        ...

    def metrics(self, accept: str, gzip_ok: bool) -> MetricsBody:
        """The exposition body for a scrape (``accept`` is the scraper's Accept header)."""
        ...

    def checks(self) -> list[CheckRow]:
        """Every configured target, in configuration order."""
        ...

    def alerts(self) -> list[AlertRow]:
        """Every active alert (pending and firing, plus states other modules add)."""
        ...

    def backups(self) -> Mapping[str, Any] | None:
        """The backup service's status document, or None when no backups are configured."""
        ...

    def quality(self) -> Mapping[str, Any]:
        """Maintenance windows, silences, error budgets and forecasts, as the pipeline reports them (JSON)."""
        ...

    def history(self, limit: int) -> list[AlertEvent]:
        """The newest alert transitions, newest first."""
        ...

    def delivery(self) -> list[SinkStats]:
        """Per configured sink: queued, sent, failed, the last error."""
        ...

    def trigger_backup(self) -> TriggerResult:
        """Start a backup run in the background (POST /backup)."""
        ...
