"""The alert state file (``state_dir/alerts.json``): what fires since when, and whether its page was queued.

Written atomically after every change, so a crash leaves the old or the new
file, never a torn one. The previous good file is kept as ``alerts.json.prev``:
when the current one is unreadable (disk damage, a manual edit) the agent logs
it and starts from the previous state rather than from nothing, because
"nothing" would mean a firing alert whose resolution is never sent. Either
way it then replays the alert history (``history.json``, the journal of the
newest transitions, written before a page is marked as queued): an alert whose
last event is "fired" is firing and already paged, so a recovered agent neither
pages it again nor forgets to resolve it (:func:`replay_journal`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from opsagent import secrets
from opsagent.alerts.engine import AlertState, Phase
from opsagent.alerts.history import AlertEvent
from opsagent.textio import atomic_write

log = structlog.get_logger("opsagent.alerts")

STATE_FILE = "alerts.json"
StateKey = tuple[str, str, str]


def key_text(key: StateKey) -> str:
    return "|".join(key)


@dataclass
class SavedState:
    """What the file holds: every active (or unknown) alert and the context gathered when it fired."""

    states: dict[StateKey, AlertState] = field(default_factory=dict)
    contexts: dict[StateKey, dict[str, Any]] = field(default_factory=dict)
    recovered: bool = False  # alerts.json was unreadable: this is the previous file's state, or nothing


class AlertStateFile:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / STATE_FILE
        self.previous = self.path.with_name(STATE_FILE + ".prev")

    def load(self, known: Mapping[str, object]) -> SavedState:
        """The saved state, alerts of ``known`` alarm names only; an unreadable file is logged, not fatal."""
        damaged = False
        for path in (self.path, self.previous):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
            except FileNotFoundError:
                if path == self.path and self.previous.exists():
                    damaged = True  # a crash between rotating and writing: the previous file is the state
                    continue
                return SavedState(recovered=damaged)
            except (OSError, ValueError) as exc:
                log.error("alert_state_unreadable", path=str(path), error=secrets.scrub(str(exc)),
                          fallback=str(self.previous) if path == self.path else None)
                damaged = True
                continue
            if path != self.path:
                log.warning("alert_state_recovered", path=str(path))
            saved = _parse(data, known)
            saved.recovered = damaged
            return saved
        return SavedState(recovered=damaged)

    def save(self, saved: SavedState) -> None:
        """Write atomically; keep the last good file as ``.prev``. A failed write is logged (the next save retries)."""
        data = {
            "version": 1,
            "alerts": [s.to_dict() for s in saved.states.values() if s.active or s.unknown],
            "contexts": {key_text(k): v for k, v in saved.contexts.items()},
        }
        try:
            if self.path.exists():  # a crash right after this rename leaves .prev, which load() falls back to
                os.replace(self.path, self.previous)
            atomic_write(self.path, json.dumps(data, sort_keys=True, default=str).encode())
        except OSError as exc:  # disk full: keep evaluating and paging; the next save retries
            log.error("alert_state_write_failed", path=str(self.path), error=secrets.scrub(str(exc)))


def _parse(data: Mapping[str, Any], known: Mapping[str, object]) -> SavedState:
    saved = SavedState()
    for raw in data.get("alerts") or []:
        try:
            state = AlertState.from_dict(raw)
        except (TypeError, ValueError, AttributeError):
            continue
        if state.alertname in known:
            saved.states[state.key] = state
    for text, ctx in (data.get("contexts") or {}).items():
        parts = str(text).split("|", 2)
        if len(parts) == 3 and isinstance(ctx, dict):
            saved.contexts[(parts[0], parts[1], parts[2])] = ctx
    return saved


def replay_journal(states: Mapping[StateKey, AlertState], events: Iterable[AlertEvent]) -> dict[StateKey, AlertState]:
    """States corrected by the history journal: what it says fired (and not resolved since) is firing and paged.

    ``events`` newest first, as :meth:`AlertHistory.recent` returns them. Pure.
    """
    out = dict(states)
    latest: dict[StateKey, AlertEvent] = {}
    for event in events:
        if event.kind in ("fired", "resolved"):
            latest.setdefault((event.alertname, event.check, event.target), event)
    for key, event in latest.items():
        state = out.get(key)
        if event.kind == "resolved":
            if state is not None and state.phase is Phase.FIRING and (state.firing_since or 0.0) <= event.at:
                out[key] = replace(state, phase=Phase.INACTIVE, pending_since=None, firing_since=None,
                                   clear_since=None, notified=False, resolved_at=event.at)
            continue
        if state is not None and state.phase is Phase.FIRING:
            if not state.notified and (state.firing_since or 0.0) <= event.at:
                out[key] = replace(state, notified=True)
            continue
        out[key] = AlertState(key[0], key[1], key[2], phase=Phase.FIRING, severity=event.severity,
                              pending_since=event.since, firing_since=event.at, last_at=event.at, notified=True)
    return out
