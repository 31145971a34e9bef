"""Where the pure engine meets the disk and the sinks: evaluate -> state -> dispatch.

``on_result`` evaluates under a lock (pure, fast), persists the alert state
(:mod:`opsagent.alerts.state`) and hands every transition, rendered as a typed
message, to the :class:`~opsagent.notify.dispatch.Dispatcher` (durable
per-sink outboxes, one worker per sink, repeats by sink capability). Context for the
responder (top connection holders, worst pools…) is gathered on the transition
to firing only, outside the lock and with a deadline, so a slow target never
holds up other targets' evaluation.

Restart safety: the state file records which alerts fire and whether their
page was handed to the outbox; the outbox itself is on disk. A restarted agent
therefore neither pages again for an alert already queued nor forgets to send
the resolution later.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from opsagent import secrets
from opsagent.alerts.catalog import ALARMS, alarms_for_check
from opsagent.alerts.engine import (
    AlertState,
    EngineConfig,
    Phase,
    Rule,
    Transition,
    evaluate_result,
)
from opsagent.alerts.history import AlertEvent, AlertHistory
from opsagent.alerts.quality import AlertQuality
from opsagent.alerts.render import (
    NO_COMPLETE_BACKUP,
    Identity,
    alert_message,
    fingerprint,
    labels_for,
    watchdog_message,
)
from opsagent.alerts.state import STATE_FILE, AlertStateFile, SavedState, StateKey, replay_journal
from opsagent.alerts.target_rules import target_rules
from opsagent.config import Settings
from opsagent.notify.dispatch import Dispatcher
from opsagent.notify.message import FIRING, RESOLVED, AlertMessage
from opsagent.notify.outbox import Outbox
from opsagent.notify.sinks import build_sinks
from opsagent.notify.stats import SinkStats
from opsagent.notify.worker import DeliveryWorker
from opsagent.runtime.results import CheckResult

log = structlog.get_logger("opsagent.alerts")

CONTEXT_TIMEOUT = 5.0  # seconds a context callback may take before the page goes out without it

ContextFn = Callable[[str, str], Mapping[str, Any]]
__all__ = ["STATE_FILE", "AlertPipeline", "build_sinks", "engine_config", "identity"]


def engine_config(settings: Settings) -> EngineConfig:
    """The engine's view of the configuration: effective rules, target intervals, kinds that can be down."""
    from opsagent.checks import KINDS

    rules = {}
    for name in ALARMS:
        eff = settings.alarm(name)
        rules[name] = Rule(name=name, threshold=eff.threshold, for_seconds=eff.for_seconds, severity=eff.severity,
                           enabled=eff.enabled, comparison=eff.spec.comparison, field=eff.spec.field,
                           clear_for=eff.clear_for, recovery_threshold=eff.recovery_threshold)
    intervals = {(kind, t.name): t.interval for kind, t in settings.checks.targets()}
    return EngineConfig(rules=rules, intervals=intervals, down_kinds=tuple(KINDS),
                        target_rules=target_rules(settings, rules))


def identity(settings: Settings) -> Identity:
    agent = settings.agent
    generator = agent.external_url or f"http://{agent.listen}/"
    return Identity(agent=agent.name, runbook_base_url=agent.runbook_base_url, generator_url=generator)


def _reason(result: CheckResult) -> str | None:
    """Why a result is bad, for the page: the run's error, else a synthetic result's ``details["error"]``.

    The backup subsystem's ``backup`` result with ``details["newest"] is None`` means no complete
    backup exists at all; BackupStale says exactly that instead of quoting an age.
    """
    raw = result.error or result.details.get("error")
    if not raw and result.check == "backup" and "newest" in result.details and result.details["newest"] is None:
        return NO_COMPLETE_BACKUP
    return secrets.scrub(str(raw))[:500] if raw else None


class AlertPipeline:
    def __init__(self, settings: Settings, state_dir: Path,
                 context: Callable[[str, str], Mapping[str, Any]] | None = None,
                 clock: Callable[[], float] = time.time, *, backoff_base: float = 1.0,
                 backoff_cap: float = 60.0, context_timeout: float = CONTEXT_TIMEOUT) -> None:
        self.settings = settings
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.context_fn = context
        self.clock = clock
        self.context_timeout = context_timeout
        self.config = engine_config(settings)
        self.ident = identity(settings)
        self.repeat_interval = settings.notify.repeat_interval
        self._lock = threading.RLock()
        self._states: dict[StateKey, AlertState] = {}
        self._contexts: dict[StateKey, dict[str, Any]] = {}
        self._up: dict[tuple[str, str], bool] = {}
        self._started_at = clock()
        self.sinks = build_sinks(settings)
        self.dispatch = Dispatcher(self.sinks, self.state_dir, repeat_interval=self.repeat_interval, clock=clock,
                                   backoff_base=backoff_base, backoff_cap=backoff_cap)
        self._file = AlertStateFile(self.state_dir)
        self._history = AlertHistory(self.state_dir)
        self.quality = AlertQuality(settings, self.config, self.state_dir, clock)  # budgets, forecasts, holds
        self._held_keys: set[StateKey] = set()
        self._load()
        self._reconcile()

    @property
    def outboxes(self) -> dict[str, Outbox]:
        return self.dispatch.outboxes

    @property
    def workers(self) -> dict[str, DeliveryWorker]:
        return self.dispatch.workers

    # -- persistence -----------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self._file.path

    def _load(self) -> None:
        saved = self._file.load(ALARMS)
        if saved.recovered:
            saved.states = replay_journal(saved.states, self._history.recent())
            log.warning("alert_state_replayed", firing=sum(s.phase is Phase.FIRING for s in saved.states.values()))
        self._states.update(saved.states)
        self._contexts.update(saved.contexts)
        if saved.states:
            log.info("alert_state_loaded", firing=sum(s.phase is Phase.FIRING for s in self._states.values()),
                     pending=sum(s.phase is Phase.PENDING for s in self._states.values()))

    def _save(self) -> None:
        self._file.save(SavedState(dict(self._states), dict(self._contexts)))

    def _reconcile(self) -> None:
        """After a restart: page what was never queued; resolve what config no longer alarms on."""
        from opsagent.checks import KINDS

        configured = set(self.config.intervals)
        now = self.clock()
        with self._lock:
            changed = False
            for key, state in list(self._states.items()):
                if state.phase is not Phase.FIRING:
                    continue
                rule = self.config.rules[state.alertname]
                gone = state.check in KINDS and (state.check, state.target) not in configured
                if not rule.enabled or gone:
                    resolved = AlertState.from_dict({**state.to_dict(), "resolved_at": now})
                    if state.notified:
                        self._enqueue(Transition("resolved", resolved, now))
                    self._states[key] = AlertState(state.alertname, state.check, state.target, window=state.window,
                                                   severity=state.severity, last_at=state.last_at)
                    self._contexts.pop(key, None)
                    changed = True
                elif not state.notified and not self._held(state, now):
                    self._enqueue(Transition("firing", state, now), self._contexts.get(key))
                    self._mark_notified(key)
                    changed = True
            if changed:
                self._save()

    # -- evaluation ------------------------------------------------------------------------------

    def on_result(self, result: CheckResult) -> None:
        """Thread-safe. Evaluate (pure engine), persist alert state, enqueue transitions to every configured sink's outbox."""
        with self._lock:
            new_states, transitions = evaluate_result(
                self._states, self.config, check=result.check, target=result.target, up=result.up,
                value=self._compared_value(result), details=result.details, at=result.at,
                error=_reason(result))
            budget_states, budget_transitions = self.quality.evaluate(self._states, result, _reason(result))
            new_states, transitions = [*new_states, *budget_states], [*transitions, *budget_transitions]
            self.quality.observe(result)
            # Only the alarms this result concerns can change: compare those (not every state of every target).
            before = {s.key: self._persisted_view(self._states[s.key]) for s in new_states if s.key in self._states}
            for state in new_states:
                self._states[state.key] = state
            self._up[(result.check, result.target)] = result.up
            firing: list[Transition] = []
            for t in transitions:
                log.info("alert_" + t.kind, alertname=t.state.alertname, check=t.state.check,
                         target=t.state.target, value=t.state.value, threshold=t.state.threshold)
                if t.kind == "firing":
                    firing.append(t)
                elif t.state.notified:  # never resolve a page that was never sent
                    self._enqueue(t, self._contexts.pop(t.state.key, None))
                else:
                    self._contexts.pop(t.state.key, None)
            after = {s.key: self._persisted_view(s) for s in new_states}
            if transitions or after != before:
                self._save()
        if not firing:
            return
        # Context describes a live target's load; a TargetDown page has nothing to ask the target.
        contexts = {t.state.key: self._gather_context(t.state.check, t.state.target)
                    for t in firing if t.state.alertname != "TargetDown"}
        with self._lock:
            for t in firing:
                current = self._states.get(t.state.key)
                if current is None or current.phase is not Phase.FIRING or current.notified \
                        or current.firing_since != t.state.firing_since:
                    continue  # resolved or re-fired meanwhile: the newer transition speaks for it
                if self._held(current, t.at):
                    continue
                ctx = {**(contexts.get(t.state.key) or {}), **self.quality.page_context(*t.state.key)}
                if ctx:
                    self._contexts[t.state.key] = ctx
                self._enqueue(Transition("firing", current, t.at), ctx)
                self._mark_notified(t.state.key)
            self._save()

    def _compared_value(self, result: CheckResult) -> float | None:
        """The number the alarms compare.

        A rate read from lifetime counters (``details["basis"]`` cumulative: the first scrape of an app,
        or right after its counters reset) says nothing about now, so it is not compared at all (the
        alarm is unknown for that round) rather than paging on an app's lifetime 5xx ratio. With no
        complete backup at all (``newest`` is None) and no age given, the data at risk is everything
        since the agent started: BackupStale fires ``rpo`` after it.
        """
        basis = result.details.get("basis")
        if isinstance(basis, str) and basis.startswith("cumulative"):
            return None
        if result.value is None and result.check == "backup" and result.details.get("newest", "") is None:
            return max(0.0, result.at - self._started_at)
        return result.value

    @staticmethod
    def _persisted_view(s: AlertState) -> tuple[Any, ...]:
        return (s.phase, s.pending_since, s.firing_since, s.clear_since, s.notified, s.unknown, s.flapping)

    def _mark_notified(self, key: StateKey) -> None:
        state = self._states[key]
        self._states[key] = AlertState.from_dict({**state.to_dict(), "notified": True})

    def _gather_context(self, check: str, target: str) -> dict[str, Any]:
        """Call the context callback with a deadline; a failure or timeout just means no context."""
        if self.context_fn is None or not alarms_for_check(check):
            return {}
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["value"] = dict(self.context_fn(check, target) or {})  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - context is a nicety, never a reason to lose a page
                box["error"] = f"{type(exc).__name__}: {exc}"

        thread = threading.Thread(target=call, name=f"opsagent-context-{check}-{target}", daemon=True)
        thread.start()
        thread.join(self.context_timeout)
        if thread.is_alive():
            log.warning("alert_context_timeout", check=check, target=target, timeout=self.context_timeout)
            return {}
        if "error" in box:
            log.warning("alert_context_failed", check=check, target=target, error=secrets.scrub(box["error"]))
            return {}
        return secrets.scrub_any(box.get("value", {}))  # type: ignore[no-any-return]

    def _enqueue(self, t: Transition, context: Mapping[str, Any] | None = None) -> None:
        status = FIRING if t.kind == "firing" else RESOLVED
        message = alert_message(t.state, status, self.ident, at=t.at, context=context)
        self._remember(t, message.annotations["description"])
        self.dispatch.send(message)

    def _remember(self, t: Transition, description: str) -> None:
        """Every page that goes out (fired or resolved) joins the history the status page shows."""
        s = t.state
        fired_at = s.firing_since
        self._history.record(AlertEvent(
            at=t.at, kind="fired" if t.kind == "firing" else "resolved", alertname=s.alertname, check=s.check,
            target=s.target, severity=s.severity,
            since=s.pending_since if s.pending_since is not None else fired_at,
            duration_seconds=(t.at - fired_at) if t.kind == "resolved" and fired_at is not None else None,
            description=description.split("\n", 1)[0]))

    # -- delivery --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start one delivery worker per configured sink."""
        self.dispatch.start()

    def stop(self, timeout: float) -> None:
        """Stop the workers; returns within ``timeout`` even if a sink hangs (undelivered messages stay on disk)."""
        self.dispatch.stop(timeout)
        with self._lock:
            self._save()
        self.quality.save()

    def tick(self) -> None:
        """Page what an ended hold kept back; retry held-back messages; re-send firing alerts and the Watchdog."""
        with self._lock:
            self._release_held()
        self.dispatch.tick(self._firing_messages, self._watchdog)

    def _firing_messages(self, now: float) -> list[AlertMessage]:
        with self._lock:
            return [alert_message(s, FIRING, self.ident, at=now, context=self._contexts.get(s.key))
                    for s in self._states.values() if s.phase is Phase.FIRING and s.notified]

    def _watchdog(self, now: float) -> AlertMessage:
        return watchdog_message(self.ident, started_at=self._started_at, at=now)

    # -- views -----------------------------------------------------------------------------------

    def alerts(self) -> list[dict[str, Any]]:
        """Active (pending and firing) alerts for /status: alertname, state, labels, annotations, value, threshold, severity, since (unix), fingerprint."""
        with self._lock:
            states = [s for s in self._states.values() if s.active]
            contexts = dict(self._contexts)
        now = self.clock()
        out = []
        for s in sorted(states, key=lambda s: (s.phase is not Phase.FIRING, s.alertname, s.check, s.target)):
            message = alert_message(s, FIRING, self.ident, at=now, context=contexts.get(s.key))
            hold = self.quality.hold(s, now)
            out.append({
                "alertname": s.alertname,
                "state": "flapping" if s.flapping and s.phase is Phase.FIRING else s.phase.value,
                "silenced": hold is not None,
                "silenced_by": hold.to_dict() if hold is not None else None,
                "flap_percent": round(s.flap_percent, 1),
                "labels": dict(message.labels),
                "annotations": dict(message.annotations),
                "value": s.value,
                "threshold": s.threshold,
                "severity": s.severity,
                "since": s.pending_since if s.pending_since is not None else s.firing_since,
                "fingerprint": message.fingerprint,
                "check": s.check,
                "target": s.target,
                "unknown": s.unknown,
            })
        return out

    def alarm_state(self, check: str, target: str) -> dict[str, Any]:
        """For a /status row: {"alert": name|None, "threshold": float|None, "state": "inactive"|"pending"|"firing"|"unknown"}.

        A down target reports TargetDown while that is pending or firing, else its value alarm as "unknown".
        A kind with several alarms (sqs, bullmq…) reports the one firing (else pending), else its first alarm.
        """
        rules = [self.config.rules[spec.name] for spec in alarms_for_check(check)]
        enabled = [r for r in rules if r.enabled]
        with self._lock:
            up = self._up.get((check, target), True)
            down = self._states.get(("TargetDown", check, target))
            states = {r.name: self._states.get((r.name, check, target)) for r in enabled}
        first = enabled[0] if enabled else None
        threshold = first.threshold if first is not None else None
        if down is not None and down.active:
            return {"alert": "TargetDown", "threshold": threshold, "state": down.phase.value}
        if first is None:
            return {"alert": None, "threshold": None, "state": "unknown" if not up else "inactive"}
        for phase in (Phase.FIRING, Phase.PENDING):
            for rule in enabled:
                state = states[rule.name]
                if state is not None and state.phase is phase and not (phase is Phase.PENDING and state.unknown):
                    shown = "flapping" if state.flapping and phase is Phase.FIRING else phase.value
                    return {"alert": rule.name, "threshold": rule.threshold, "state": shown}
        first_state = states[first.name]
        if not up or (first_state is not None and first_state.unknown):
            return {"alert": first.name, "threshold": threshold, "state": "unknown"}
        return {"alert": first.name, "threshold": threshold, "state": "inactive"}

    def history(self, limit: int = 100) -> list[AlertEvent]:
        """The newest alert transitions, newest first (persisted in ``state_dir``)."""
        return self._history.recent(limit)

    def delivery(self) -> list[SinkStats]:
        """Per configured sink: queued, sent, failed attempts and the last error."""
        return self.dispatch.stats()

    def collect(self) -> Iterable[Metric]:
        """A prometheus_client custom collector: alert_firing, notify queue depth, sent and failure counters."""
        firing = GaugeMetricFamily("opsagent_alert_firing", "1 for every alert currently firing.",
                                   labels=["alertname", "target", "severity"])
        with self._lock:
            seen: set[tuple[str, str, str]] = set()
            for s in self._states.values():
                labels = (s.alertname, s.target, s.severity)
                if s.phase is Phase.FIRING and labels not in seen:
                    seen.add(labels)
                    firing.add_metric(list(labels), 1.0)
        yield firing
        depth = GaugeMetricFamily("opsagent_notify_queue_depth", "Alert messages waiting in a sink's outbox.",
                                  labels=["sink"])
        sent = CounterMetricFamily("opsagent_notify_sent", "Alert messages a sink accepted.", labels=["sink"])
        failures = CounterMetricFamily("opsagent_notify_failures", "Failed alert delivery attempts.",
                                       labels=["sink"])
        superseded = CounterMetricFamily("opsagent_notify_superseded",
                                         "Queued alert messages replaced by a newer state of the same alert.",
                                         labels=["sink"])
        dropped = CounterMetricFamily("opsagent_notify_dropped",
                                      "Stale resolutions dropped because a sink's queue was over its limit.",
                                      labels=["sink"])
        for stats in self.dispatch.stats():
            depth.add_metric([stats.sink], float(stats.queued))
            sent.add_metric([stats.sink], float(stats.sent))
            failures.add_metric([stats.sink], float(stats.failed))
            superseded.add_metric([stats.sink], float(stats.superseded))
            dropped.add_metric([stats.sink], float(stats.dropped))
        yield depth
        yield sent
        yield failures
        yield superseded
        yield dropped
        yield from self.quality.collect()

    def fingerprint_of(self, alertname: str, check: str, target: str) -> str:
        """The fingerprint an alert for this target has (tests, status links)."""
        rule = self.config.rules[alertname]
        state = AlertState(alertname, check, target, severity=rule.severity)
        return fingerprint(labels_for(state, self.ident.agent))

    # -- holds (maintenance windows, silences; issue 17) -------------------------------------------

    def _held(self, state: AlertState, at: float) -> bool:
        """True while a maintenance window or silence holds this page (it stays un-notified until released)."""
        hold = self.quality.hold(state, at)
        if hold is not None:
            self._held_keys.add(state.key)
            log.info("alert_held", alertname=state.alertname, check=state.check, target=state.target,
                     source=hold.source, silence=hold.id, until=hold.ends_at)
        return hold is not None

    def _release_held(self) -> None:
        """Page what a hold kept back once the hold has ended and the alert still fires (under the lock)."""
        now = self.clock()
        for key in list(self._held_keys):
            state = self._states.get(key)
            if state is None or state.phase is not Phase.FIRING or state.notified:
                self._held_keys.discard(key)  # resolved while held: no page, so no resolution either
            elif self.quality.hold(state, now) is None:
                self._held_keys.discard(key)
                self._enqueue(Transition("firing", state, now),
                              {**self._contexts.get(key, {}), **self.quality.page_context(*key)})
                self._mark_notified(key)
                self._save()

    # -- fleet hand-over (runtime/fleet.py): the shared targets' state moves with the leadership ----

    def export_states(self, targets: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
        """The alert states of these (check, target) pairs worth handing to a new leader."""
        wanted = set(targets)
        with self._lock:
            return [s.to_dict() for s in self._states.values()
                    if (s.check, s.target) in wanted and (s.active or s.unknown)]

    def release_states(self, targets: Iterable[tuple[str, str]]) -> None:
        """Forget these targets without resolving anything: another agent speaks for them now."""
        wanted = set(targets)
        with self._lock:
            for key in [k for k in self._states if (k[1], k[2]) in wanted]:
                self._states.pop(key, None)
                self._contexts.pop(key, None)
            for pair in wanted:
                self._up.pop(pair, None)
            self._save()

    def adopt_states(self, targets: Iterable[tuple[str, str]], states: Iterable[Mapping[str, Any]]) -> int:
        """Take over the previous leader's states of these targets (already-sent pages stay sent); returns how many."""
        wanted = set(targets)
        self.release_states(wanted)
        adopted = 0
        with self._lock:
            for raw in states:
                try:
                    state = AlertState.from_dict(raw)
                except (TypeError, ValueError):
                    continue
                if state.alertname in ALARMS and (state.check, state.target) in wanted:
                    self._states[state.key] = state
                    adopted += 1
            self._save()
        return adopted
