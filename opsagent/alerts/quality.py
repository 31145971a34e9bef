"""Alert quality (SPEC §9.4) beside the per-result engine: error budgets, forecasts, holds.

The pipeline hands every result here as well: ``error_rate`` targets with an
``slo`` get their ``ErrorBudgetBurn`` (one alert per window pair, label
``window``) and ``ErrorBudgetLowVolume`` states advanced by the same pure
engine; the connection, Redis-memory and queue kinds get a trend whose
least-squares forecast is exported and written into their pages; and every
page about to go out is checked against maintenance windows and silences.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric

from opsagent.alerts import forecast
from opsagent.alerts.budget import ErrorBudgets
from opsagent.alerts.catalog import ALARMS
from opsagent.alerts.engine import AlertState, EngineConfig, Observation, Transition, evaluate
from opsagent.alerts.silences import Silence, SilenceStore, from_maintenance, holding

if TYPE_CHECKING:
    from opsagent.config import Settings
    from opsagent.runtime.results import CheckResult

# Kinds with a forecast, and what "100 %" is: None = the value is a ratio of a hard limit (connections,
# maxmemory); an alarm name = the value divided by that alarm's threshold (a queue's backlog).
FORECAST_KINDS: dict[str, str | None] = {
    "postgres": None, "redis": None, "bullmq": "BullMQBacklogHigh", "rabbitmq": "RabbitMQBacklogHigh",
}

StateKey = tuple[str, str, str]


class AlertQuality:
    def __init__(self, settings: Settings, config: EngineConfig, state_dir: Path,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        policies = {t.name: t.slo for t in settings.checks.error_rate if t.slo is not None}
        self.budgets = ErrorBudgets(policies, state_dir)
        override = settings.alerts.ErrorBudgetBurn  # a field made from the catalogue
        self._burn_severity: str | None = override.severity if override is not None else None  # else per pair
        self.silence_store = SilenceStore(state_dir)
        self.maintenance = from_maintenance(settings.maintenance)
        self._lock = threading.Lock()
        self._trends: dict[tuple[str, str], forecast.Trend] = {}
        self._exhaustion: dict[tuple[str, str], float] = {}
        self._limits = {kind: (1.0 if alarm is None or alarm not in ALARMS else settings.alarm(alarm).threshold)
                        for kind, alarm in FORECAST_KINDS.items()}

    # -- error budgets ---------------------------------------------------------------------------

    def evaluate(self, states: Mapping[StateKey, AlertState], result: CheckResult,
                 reason: str | None) -> tuple[list[AlertState], list[Transition]]:
        """Advance the target's ErrorBudgetBurn (per window pair) and ErrorBudgetLowVolume alerts.

        The compared value is what must exceed the threshold for the alarm to hold (the lower of a pair's two
        burn rates; the low-volume alarm's qualifying errors), so a resolution never shows a breaching value.
        """
        if result.check != "error_rate" or result.target not in self.budgets:
            return [], []
        check, target, at = result.check, result.target, result.at
        requests, errors = result.details.get("requests_total"), result.details.get("errors_total")
        up = result.up and _number(requests) and _number(errors)
        with self._lock:
            if up:
                self.budgets.count(target, at, float(requests), float(errors))  # type: ignore[arg-type] # _number checked
            judged = self.budgets.judge(target, at)
        interval = self.config.interval(check, target)
        burn = self.config.rules["ErrorBudgetBurn"]
        pairs: list[tuple[Any, Observation, str | None]] = [
            (replace(burn, threshold=v.pair.factor, severity=self._burn_severity or v.pair.severity),
             Observation(at, v.breaching if up else None, min(v.long_burn, v.short_burn),
                         v.explanation if up else reason), v.pair.name)
            for v in judged.pairs
        ]
        lv = judged.low_volume
        low_rule = replace(self.config.rules["ErrorBudgetLowVolume"],
                           threshold=float(self.budgets.policy(target).low_volume_errors))
        pairs.append((low_rule, Observation(at, lv.breaching if up else None, lv.counted_errors,
                                            lv.explanation if up else reason), None))
        new_states: list[AlertState] = []
        transitions: list[Transition] = []
        for rule, obs, window in pairs:
            key = AlertState(rule.name, check, target, window=window).key
            state, t = evaluate(states.get(key), rule, check, target, obs, interval, window=window)
            new_states.append(state)
            if t is not None:
                transitions.append(t)
        return new_states, transitions

    # -- forecasts -------------------------------------------------------------------------------

    def observe(self, result: CheckResult) -> None:
        """Feed a forecast kind's trend; a down result or a missing value breaks nothing, it just adds nothing."""
        limit = self._limits.get(result.check)
        if limit is None or not result.up or result.value is None or limit <= 0:
            return
        key = (result.check, result.target)
        with self._lock:
            trend = self._trends.setdefault(key, forecast.Trend())
            seconds = trend.add(result.at, float(result.value) / limit)
            if seconds is None:
                self._exhaustion.pop(key, None)
            else:
                self._exhaustion[key] = seconds

    def exhaustion_seconds(self, check: str, target: str) -> float | None:
        with self._lock:
            return self._exhaustion.get((check, target))

    def page_context(self, alertname: str, check: str, target: str) -> dict[str, Any]:
        """The forecast line a value alarm's page carries when it fires (empty without a confident trend)."""
        spec = ALARMS.get(alertname)
        if spec is None or spec.field is not None or check not in FORECAST_KINDS:
            return {}
        line = forecast.describe(self.exhaustion_seconds(check, target))
        if line is None:
            return {}
        if FORECAST_KINDS[check] is not None:
            line += " (100 % = the backlog alarm's threshold)"
        return {"forecast": line}

    # -- holds -----------------------------------------------------------------------------------

    def silences(self) -> list[Silence]:
        return [*self.maintenance, *self.silence_store.load()]

    def hold(self, state: AlertState, now: float) -> Silence | None:
        """The maintenance window or silence holding this alert's page now, if any."""
        return holding(self.silences(), state.alertname, state.check, state.target, now)

    # -- views -----------------------------------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        """For /status: active and upcoming holds, error budgets per target, forecasts."""
        holds = [dict(s.to_dict(), active=s.active(now)) for s in self.silences() if s.ends_at > now]
        with self._lock:
            forecasts = [{"check": c, "target": t, "exhaustion_seconds": round(v, 1),
                          "text": forecast.describe(v)} for (c, t), v in sorted(self._exhaustion.items())]
            slo = self.budgets.status(now)
        return {"silences": holds, "slo": slo, "forecasts": forecasts}

    def collect(self) -> Iterable[Metric]:
        exhaustion = GaugeMetricFamily(
            "opsagent_exhaustion_seconds",
            "Seconds until the value reaches 100 % at the current trend (least squares, R² gated; absent: no "
            "confident rising trend)", labels=["check", "target"])
        with self._lock:
            for (check, target), seconds in sorted(self._exhaustion.items()):
                exhaustion.add_metric([check, target], seconds)
        yield exhaustion
        burn = GaugeMetricFamily("opsagent_error_budget_burn_rate",
                                 "Error-budget burn rate over the window (1 = spends the budget exactly over the period)",
                                 labels=["target", "window"])
        with self._lock:
            rows = self.budgets.status(self.clock())
        samples: dict[tuple[str, str], float] = {}  # 6h is the long window of one pair and the short of another
        for row in rows:
            for w in row["windows"]:
                long_name, short_name = w["window"].split("/")
                samples[(row["target"], long_name)] = w["long_burn"]
                samples[(row["target"], short_name)] = w["short_burn"]
        for labels, value in sorted(samples.items()):
            burn.add_metric(list(labels), value)
        yield burn

    def save(self) -> None:
        with self._lock:
            self.budgets.save()


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(float(value))
