"""Maintenance windows and silences: which pages the agent holds back, and why.

Two sources, one shape: ``maintenance`` windows from the config and silences
that ``opsagent silence`` writes to ``state_dir/silences.json`` (the daemon
re-reads the file when it changes, so no restart and no HTTP call is needed).
A held alert keeps being evaluated and shown (``silenced: true``); its page goes
out when the hold ends if it still fires, and a resolution is never sent for a
page that never went out. Matching is pure and takes ``now``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from opsagent import secrets
from opsagent.textio import atomic_write

if TYPE_CHECKING:
    from opsagent.config.quality import MaintenanceWindow

log = structlog.get_logger("opsagent.alerts")

SILENCES_FILE = "silences.json"
MATCH_LABELS = ("target", "check", "alertname")


@dataclass(frozen=True)
class Silence:
    """A hold on every alert whose labels match all of ``match``, from ``starts_at`` to ``ends_at`` (unix)."""

    match: Mapping[str, str]
    starts_at: float
    ends_at: float
    comment: str = ""
    source: str = "silence"  # "silence" (opsagent silence) | "maintenance" (config)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created_by: str = ""
    alertmanager_id: str | None = None

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, alertname: str, check: str, target: str) -> bool:
        labels = {"alertname": alertname, "check": check, "target": target}
        return all(labels.get(k) == v for k, v in self.match.items())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "match": dict(self.match)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Silence:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["match"] = {str(k): str(v) for k, v in dict(known.get("match") or {}).items() if k in MATCH_LABELS}
        return cls(**known)


def from_maintenance(windows: Iterable[MaintenanceWindow]) -> list[Silence]:
    """The config's ``maintenance`` entries as silences (ids stable across restarts: their position)."""
    out = []
    for i, w in enumerate(windows):
        match = {k: v for k, v in w.match.model_dump().items() if v is not None}
        out.append(Silence(match=match, starts_at=w.start.timestamp(), ends_at=w.end.timestamp(),
                           comment=w.comment, source="maintenance", id=f"maintenance-{i}"))
    return out


def holding(silences: Iterable[Silence], alertname: str, check: str, target: str, now: float) -> Silence | None:
    """The active silence that holds this alert, if any (the one ending last)."""
    hits = [s for s in silences if s.active(now) and s.matches(alertname, check, target)]
    return max(hits, key=lambda s: s.ends_at) if hits else None


class SilenceStore:
    """``state_dir/silences.json``: written by ``opsagent silence``, re-read by the daemon on change."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / SILENCES_FILE
        self._stamp: tuple[int, int] | None = None
        self._cached: list[Silence] = []

    def load(self) -> list[Silence]:
        """Every stored silence (expired ones included); cheap when the file did not change."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._cached = None, []
            return []
        except OSError as exc:
            log.error("silences_unreadable", path=str(self.path), error=secrets.scrub(str(exc)))
            return self._cached
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return self._cached
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            silences = [Silence.from_dict(item) for item in raw.get("silences", [])]
        except (OSError, ValueError, TypeError) as exc:
            log.error("silences_unreadable", path=str(self.path), error=secrets.scrub(str(exc)))
            return self._cached
        self._stamp, self._cached = stamp, silences
        return silences

    def add(self, silence: Silence, now: float) -> None:
        """Store one more silence, dropping those that ended a day ago or more."""
        kept = [s for s in self.load() if s.ends_at > now - 86400]
        data = {"version": 1, "silences": [s.to_dict() for s in [*kept, silence]]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode())
