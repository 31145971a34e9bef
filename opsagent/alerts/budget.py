"""Error budgets of ``error_rate`` targets with an ``slo``: counting and persistence.

Each result's cumulative request and 5xx counters (``details.requests_total`` /
``errors_total``) are turned into increases and counted into the target's
per-minute buckets (:mod:`opsagent.alerts.burnrate`), so the budget survives
both app restarts (a counter reset counts from zero, as PromQL's ``increase``
does) and agent restarts (``state_dir/slo.json``, written when a new bucket
starts and at shutdown: a crash loses at most one bucket).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from opsagent import secrets
from opsagent.alerts.burnrate import LowVolumeVerdict, MinuteBuckets, PairVerdict, judge, judge_low_volume
from opsagent.textio import atomic_write

if TYPE_CHECKING:
    from opsagent.config.quality import SloPolicy

log = structlog.get_logger("opsagent.alerts")

SLO_FILE = "slo.json"


@dataclass(frozen=True)
class BudgetJudgement:
    """One target's window pairs and low-volume verdict at ``at``."""

    target: str
    at: float
    pairs: list[PairVerdict]
    low_volume: LowVolumeVerdict


class _Budget:
    def __init__(self, policy: SloPolicy) -> None:
        self.policy = policy
        self.buckets = MinuteBuckets(policy.window_scale)
        self.last: tuple[float, float] | None = None  # the previous cumulative (requests, errors)
        self.saved_bucket: int | None = None


class ErrorBudgets:
    def __init__(self, policies: Mapping[str, SloPolicy], state_dir: Path) -> None:
        self.path = Path(state_dir) / SLO_FILE
        self._budgets = {name: _Budget(p) for name, p in policies.items()}
        self._dirty = False
        self._load()

    def __contains__(self, target: str) -> bool:
        return target in self._budgets

    def policy(self, target: str) -> SloPolicy:
        return self._budgets[target].policy

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("slo_state_unreadable", path=str(self.path), error=secrets.scrub(str(exc)))
            return
        for name, raw in (data.get("targets") or {}).items():
            budget = self._budgets.get(name)
            if budget is None:
                continue
            try:
                budget.buckets = MinuteBuckets.from_dict(raw, budget.policy.window_scale)
                last = raw.get("last")
                budget.last = (float(last[0]), float(last[1])) if last else None
            except (TypeError, ValueError, IndexError, KeyError):
                continue

    def save(self) -> None:
        if not self._dirty:
            return
        data = {"version": 1, "targets": {
            name: {**b.buckets.to_dict(), "last": list(b.last) if b.last else None} for name, b in self._budgets.items()}}
        try:
            atomic_write(self.path, json.dumps(data, separators=(",", ":")).encode())
            self._dirty = False
        except OSError as exc:  # disk full: keep judging from memory; the next bucket retries
            log.error("slo_state_write_failed", path=str(self.path), error=secrets.scrub(str(exc)))

    def count(self, target: str, at: float, requests_total: float, errors_total: float) -> None:
        """Count the increase since the previous cumulative counters into the bucket of ``at``."""
        b = self._budgets[target]
        previous = b.last
        b.last = (requests_total, errors_total)
        self._dirty = True
        if previous is None:
            return  # the first sample is the baseline
        if requests_total < previous[0] or errors_total < previous[1]:
            requests, errors = requests_total, errors_total  # counter reset: everything since counts
        else:
            requests, errors = requests_total - previous[0], errors_total - previous[1]
        b.buckets.add(at, requests, errors)
        if b.buckets.index(at) != b.saved_bucket:
            b.saved_bucket = b.buckets.index(at)
            self.save()  # a new bucket started: persist the finished ones

    def judge(self, target: str, now: float) -> BudgetJudgement:
        b = self._budgets[target]
        p = b.policy
        return BudgetJudgement(
            target, now,
            judge(b.buckets, now, p.objective, p.min_events, p.window_scale),
            judge_low_volume(b.buckets, now, p.objective, p.min_events, p.low_volume_errors, p.window_scale))

    def status(self, now: float) -> list[dict[str, Any]]:
        """Per target: each window pair's burn rates and state (``insufficient_data`` until judged)."""
        out = []
        for name, b in self._budgets.items():
            j = self.judge(name, now)
            out.append({
                "target": name,
                "objective": b.policy.objective,
                "window_scale": b.policy.window_scale,
                "windows": [{"window": v.pair.name, "factor": v.pair.factor, "severity": v.pair.severity,
                             "long_burn": round(v.long_burn, 4), "short_burn": round(v.short_burn, 4),
                             "requests_long": v.long.requests, "requests_short": v.short.requests,
                             "state": ("insufficient_data" if v.breaching is None
                                       else "burning" if v.breaching else "ok")} for v in j.pairs],
                "low_volume": j.low_volume.low_volume,
            })
        return out
