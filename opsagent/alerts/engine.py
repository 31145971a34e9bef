"""The alert state machine: inactive -> pending -> firing -> resolved.

Pure logic, no I/O and no clock: every function takes the observation's time
(``CheckResult.at``) and returns new immutable state plus the transitions the
caller must deliver. Persistence and delivery live in :mod:`agent.alerts.pipeline`.

Rules (SPEC §3 and the issue):

* ``for`` is measured on *consecutive* breaching results: pending starts at the
  first breaching result, firing once ``at - pending_since >= for``.
* Hysteresis: a firing alert resolves only after the value is back under the
  threshold for one whole interval of its target, i.e. two or more consecutive
  non-breaching results spanning at least ``interval`` (targets without a
  configured interval, such as the backup subsystem's synthetic results, resolve
  on the first good result).
* A down target fires ``TargetDown`` and marks its value alarms *unknown*: a
  firing value alarm stays firing (neither resolved nor re-fired), a pending one
  falls back to inactive because its run of consecutive breaches is broken.
* ``clear_for`` (release 2) replaces "one interval" when set; ``recovery_threshold``
  makes "back" mean back on the good side of that second threshold, so a value
  hovering at the threshold cannot resolve and re-fire on every wobble.
* Flapping (release 2, :mod:`opsagent.alerts.flapping`): every judged result joins
  a 21-result history; above 50 % weighted state change the alert is *flapping*:
  it fires once (if it was not firing already), then neither resolves nor re-fires
  until the score falls below 25 %, when the normal rules resume.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from opsagent.alerts import flapping as flap
from opsagent.alerts.catalog import ALARMS, AlarmSpec, Comparison


class Phase(StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"


@dataclass(frozen=True)
class Rule:
    """An alarm's effective settings, detached from the config models (easy to build in tests)."""

    name: str
    threshold: float
    for_seconds: float
    severity: str
    enabled: bool = True
    comparison: Comparison = Comparison.GT
    field: str | None = None
    clear_for: float | None = None  # seconds back to normal before resolving; None = the target's interval
    recovery_threshold: float | None = None  # "back to normal" means not breaching this one
    flap_detection: bool = True

    @property
    def spec(self) -> AlarmSpec:
        return ALARMS[self.name]


@dataclass(frozen=True)
class Observation:
    """What one result says about one alarm: breaching, not breaching, or unknown (None)."""

    at: float
    breaching: bool | None
    value: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class AlertState:
    """Everything the engine remembers about one (alertname, check, target)."""

    alertname: str
    check: str
    target: str
    phase: Phase = Phase.INACTIVE
    severity: str = "warning"
    threshold: float | None = None
    value: float | None = None
    error: str | None = None
    pending_since: float | None = None
    firing_since: float | None = None
    clear_since: float | None = None  # first non-breaching result while firing (hysteresis clock)
    resolved_at: float | None = None
    last_at: float | None = None
    unknown: bool = False  # target down: the value alarm cannot be judged
    notified: bool = False  # the firing transition was handed to the outbox
    window: str | None = None  # extra ``window`` label (ErrorBudgetBurn: one alert per window pair)
    history: str = ""  # last judged results, "1" breaching / "0" not (flap detection)
    flapping: bool = False
    comparison: str | None = None  # the rule's operator when the target set its own (sql: below)

    @property
    def key(self) -> tuple[str, str, str]:
        """(alertname, check, target); an alert with a window label keys as ``Name[window]``."""
        name = self.alertname if self.window is None else f"{self.alertname}[{self.window}]"
        return (name, self.check, self.target)

    @property
    def flap_percent(self) -> float:
        return flap.percent_state_change(self.history)

    @property
    def active(self) -> bool:
        return self.phase is not Phase.INACTIVE

    def to_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["phase"] = self.phase.value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["phase"] = Phase(known.get("phase", "inactive"))
        return cls(**known)


@dataclass(frozen=True)
class Transition:
    """A change the on-call must hear about. ``state`` is the alert as it was when it fired/resolved."""

    kind: str  # "firing" | "resolved"
    state: AlertState
    at: float


def evaluate(prev: AlertState | None, rule: Rule, check: str, target: str, obs: Observation,
             interval: float, window: str | None = None) -> tuple[AlertState, Transition | None]:
    """Advance one alarm's state by one observation; return the new state and any transition."""
    s = prev if prev is not None else AlertState(rule.name, check, target, severity=rule.severity, window=window)
    if s.window != window:  # a state rebuilt without its label (restart reconcile) keeps its identity
        s = replace(s, window=window)
    if s.last_at is not None and obs.at < s.last_at:
        return s, None  # a stale, out-of-order result never moves the state backwards
    # Severity is a label, part of the fingerprint: frozen while an alert is active so its resolution matches.
    severity = rule.severity if s.phase is Phase.INACTIVE else s.severity
    s = replace(s, severity=severity, threshold=rule.threshold, last_at=obs.at,
                comparison=rule.comparison.value if rule.comparison is not rule.spec.comparison else None)

    if not rule.enabled:
        if s.phase is Phase.FIRING:
            return _resolve(s, obs.at)
        return replace(_inactive(s), history="", flapping=False), None

    if obs.breaching is None:
        if s.phase is Phase.FIRING:
            return replace(s, unknown=True, clear_since=None, error=obs.error), None
        return replace(_inactive(s), unknown=True, error=obs.error), None

    s = replace(s, unknown=False, value=obs.value, error=obs.error)
    if rule.flap_detection:
        history = flap.record(s.history, obs.breaching)
        s = replace(s, history=history, flapping=flap.is_flapping(s.flapping, flap.percent_state_change(history)))
        if s.flapping:
            if s.phase is Phase.FIRING:
                return replace(s, clear_since=None), None  # held: no resolution, no re-page while flapping
            if obs.breaching:  # one page for the whole episode, without waiting for `for` to be met again
                since = s.pending_since if s.pending_since is not None else obs.at
                s = replace(s, phase=Phase.FIRING, pending_since=since, firing_since=obs.at, clear_since=None,
                            resolved_at=None, notified=False)
                return s, Transition("firing", s, obs.at)
    if obs.breaching:
        s = replace(s, clear_since=None)
        if s.phase is Phase.INACTIVE:
            s = replace(s, phase=Phase.PENDING, pending_since=obs.at, resolved_at=None, notified=False)
        pending_since = obs.at if s.pending_since is None else s.pending_since
        if s.phase is Phase.PENDING and obs.at - pending_since >= rule.for_seconds:
            s = replace(s, phase=Phase.FIRING, firing_since=obs.at, notified=False)
            return s, Transition("firing", s, obs.at)
        return s, None

    # Not breaching.
    if s.phase is Phase.FIRING:
        if _short_of_recovery(rule, obs.value):
            return replace(s, clear_since=None), None
        clear_since = s.clear_since if s.clear_since is not None else obs.at
        clear_for = rule.clear_for if rule.clear_for is not None else interval
        if clear_for <= 0 or obs.at - clear_since >= clear_for:
            return _resolve(replace(s, clear_since=clear_since), obs.at)
        return replace(s, clear_since=clear_since), None
    return _inactive(s), None


def _short_of_recovery(rule: Rule, value: float | None) -> bool:
    """True while a value is under the alarm threshold but not yet past ``recovery_threshold``."""
    if rule.recovery_threshold is None or value is None:
        return False
    return rule.comparison.breached(value, rule.recovery_threshold)


def _inactive(s: AlertState) -> AlertState:
    return replace(s, phase=Phase.INACTIVE, pending_since=None, clear_since=None, unknown=False)


def _resolve(s: AlertState, at: float) -> tuple[AlertState, Transition]:
    resolved = replace(s, resolved_at=at)
    after = replace(_inactive(resolved), firing_since=None, notified=False)
    return after, Transition("resolved", resolved, at)


# -- one result against every alarm that concerns it ----------------------------------------------


@dataclass(frozen=True)
class EngineConfig:
    """What the engine needs from the configuration, as plain data."""

    rules: Mapping[str, Rule]
    intervals: Mapping[tuple[str, str], float] = field(default_factory=dict)
    down_kinds: Collection[str] = ()  # check kinds whose down results raise TargetDown
    # (alertname, check, target) -> the rule with that target's own threshold/comparison (sql, cloudwatch, http)
    target_rules: Mapping[tuple[str, str, str], Rule] = field(default_factory=dict)

    def value_rules(self, check: str) -> list[Rule]:
        return [r for r in self.rules.values() if r.spec.check == check or check in r.spec.also_checks]

    def interval(self, check: str, target: str) -> float:
        return self.intervals.get((check, target), 0.0)


def observe(rule: Rule, *, up: bool, value: float | None, details: Mapping[str, Any], at: float,
            error: str | None = None) -> Observation:
    """Turn one result into an observation for a value alarm (unknown when down or no number)."""
    if not up:
        return Observation(at, None, None, error)
    raw: Any = details.get(rule.field) if rule.field else value
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or math.isnan(float(raw)):
        return Observation(at, None, None, error)
    number = float(raw)
    return Observation(at, rule.comparison.breached(number, rule.threshold), number, error)


def evaluate_result(states: Mapping[tuple[str, str, str], AlertState], config: EngineConfig, *, check: str,
                    target: str, up: bool, value: float | None, details: Mapping[str, Any], at: float,
                    error: str | None = None) -> tuple[list[AlertState], list[Transition]]:
    """Every alarm concerning ``(check, target)`` advanced by one result: new states and transitions."""
    interval = config.interval(check, target)
    pairs: list[tuple[Rule, Observation]] = [
        (rule, observe(rule, up=up, value=value, details=details, at=at, error=error))
        for rule in (config.target_rules.get((r.name, check, target), r) for r in config.value_rules(check))
    ]
    down_rule = config.rules.get("TargetDown")
    if down_rule is not None and check in config.down_kinds:
        pairs.append((down_rule, Observation(at, not up, 0.0 if not up else 1.0, error)))
    new_states: list[AlertState] = []
    transitions: list[Transition] = []
    for rule, obs in pairs:
        prev = states.get((rule.name, check, target))
        state, transition = evaluate(prev, rule, check, target, obs, interval)
        new_states.append(state)
        if transition is not None:
            transitions.append(transition)
    return new_states, transitions


def active(states: Iterable[AlertState]) -> list[AlertState]:
    return [s for s in states if s.active]
