"""What one status page costs: ``python -m benchmarks.status_page [--rounds N]``.

Renders ``/`` and ``/status`` for 50 targets (each with an hour of trend), 20
active alerts, 4 sinks, two backup targets and 100 history rows, through the
same code the HTTP server runs, and prints the median and p95 milliseconds per
render. The page is rendered only when someone asks for it (and at most once
per 250 ms under load, web/app.py), so it does not enter `make bench`'s CPU
figure, which scrapes /metrics only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from opsagent.alerts.history import AlertEvent
from opsagent.notify.stats import SinkStats
from opsagent.web.page import status_html
from opsagent.web.ports import AlertRow, CheckRow, Health, MetricsBody, PageSettings, TrendPoint, TriggerResult
from opsagent.web.status import status_json
from opsagent.web.trends import BUCKETS

NOW = 1_764_633_600.0
KINDS = ("postgres", "redis", "pgbouncer", "error_rate", "cpu")


class BenchView:
    """A fixed view of a large agent: 50 targets, 20 alerts, 100 history rows."""

    def __init__(self, targets: int = 50, history: int = 100) -> None:
        trend = tuple(TrendPoint(NOW - 60 * (BUCKETS - i), 0.3 + 0.005 * i) for i in range(BUCKETS))
        self._checks = [CheckRow(KINDS[i % len(KINDS)], f"t{i}", 15, "firing" if i % 5 == 0 else "inactive",
                                 up=i % 7 != 0, value=0.3 + i / 100, threshold=0.75, alert="RedisMemoryHigh",
                                 last_run=NOW - 3, source="bench", last_ok_at=NOW - 30, trend=trend)
                        for i in range(targets)]
        self._alerts = [AlertRow("RedisMemoryHigh", "firing" if i % 2 else "pending", "warning", "redis", f"t{i}",
                                 0.8, 0.75, NOW - 60 * i, f"fp{i}", description="Redis memory is high " * 5)
                        for i in range(20)]
        self._history = [AlertEvent(NOW - 60 * i, "fired" if i % 2 else "resolved", "RedisMemoryHigh", "redis",
                                    f"t{i % targets}", "warning", duration_seconds=120.0, description="x" * 80)
                         for i in range(history)]
        self._backups: dict[str, Any] = {
            "rpo_target_seconds": 3600, "rpo_achieved_seconds": 1200, "rto_target_seconds": 7200,
            "rto_achieved_seconds": 300, "replica": "file:///dr", "next_run_at": NOW + 600,
            "targets": [{"kind": "postgres", "target": f"db{i}", "rpo_seconds": 1200, "region": "dr",
                         "newest_backup": {"id": f"b{i}", "timestamp": NOW - 1200, "size": 10**9},
                         "newest_replica": {"id": f"b{i}", "timestamp": NOW - 1100}} for i in range(2)],
            "last_run": {"ok": True, "trigger": "schedule", "finished_at": "2025-12-01T23:40:00Z",
                         "outcomes": [{"kind": "postgres", "target": f"db{i}", "ok": True} for i in range(2)]},
        }

    def page_settings(self) -> PageSettings:
        return PageSettings("bench", "bench", "/runbooks/", "http://am:9093")

    def health(self) -> Health:
        return Health(True, "ok", True, NOW - 3600)

    def metrics(self, accept: str, gzip_ok: bool) -> MetricsBody:
        return MetricsBody(b"", "text/plain")

    def checks(self) -> list[CheckRow]:
        return self._checks

    def alerts(self) -> list[AlertRow]:
        return self._alerts

    def backups(self) -> dict[str, Any] | None:
        return self._backups

    def history(self, limit: int) -> list[AlertEvent]:
        return self._history[:limit]

    def delivery(self) -> list[SinkStats]:
        return [SinkStats(name, 0, 10, 0) for name in ("alertmanager", "slack", "pagerduty", "sns")]

    def trigger_backup(self) -> TriggerResult:
        return "unconfigured"


def _timings(render: Any, rounds: int) -> tuple[float, float, int]:
    samples = []
    size = 0
    for _ in range(rounds):
        started = time.perf_counter()
        size = len(render())
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1], size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.status_page", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args(argv)
    view = BenchView()
    for name, render in (("/ (HTML)", lambda: status_html(view, NOW)), ("/status (JSON)", lambda: status_json(view, NOW))):
        median, p95, size = _timings(render, args.rounds)
        print(f"{name:15} 50 targets, 100 history rows: median {median:.2f} ms, p95 {p95:.2f} ms, {size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
