"""A long sink outage with flapping targets, then a fresh page (issue 21).

During a Slack outage twenty flapping targets queued hundreds of superseded
firing/resolved messages, and a new page for another target sat behind all of them.
Now the backlog collapses to each alert's newest state, the fresh page goes first, and
the queue has a bound that only ever drops stale resolutions.
"""

from __future__ import annotations

import time
from pathlib import Path

from structlog.testing import capture_logs

from opsagent.alerts.pipeline import AlertPipeline
from opsagent.config import Settings
from opsagent.notify.outbox import Outbox
from opsagent.runtime.results import CheckResult
from opsagent_testing.alertmanager import Receiver
from tests.fixtures.agent import poll

FLAPPING = [f"cache{i}" for i in range(10)]
CYCLES = 4


def test_after_an_outage_the_fresh_page_goes_first_and_the_flapping_backlog_collapses(tmp_path: Path) -> None:
    """Ten targets flapping through a Slack outage leave one message each; a new page for another target is delivered first."""
    slack = Receiver()
    slack.status = 503
    settings = Settings(
        agent={"name": "backlog"},
        checks={"redis": [{"name": n, "url": "redis://127.0.0.1:1/0", "interval": "15s"} for n in FLAPPING],
                "postgres": [{"name": "main", "dsn": "postgresql://app@127.0.0.1:1/app", "interval": "15s"}]},
        alerts={"RedisMemoryHigh": {"for": "0s"}, "PostgresConnectionsExhausted": {"for": "0s"}},
        notify={"slack_webhook_url": slack.url + "/hook", "timeout": "2s"},
    )
    pipeline = AlertPipeline(settings, tmp_path, backoff_base=0.01, backoff_cap=0.05)
    pipeline.start()
    try:
        at = time.time() - 3600
        for _cycle in range(CYCLES):  # fire, then resolve after a whole interval: 80 transitions in all
            for target in FLAPPING:
                pipeline.on_result(CheckResult("redis", target, True, 0.95, at, 0.01))
            for step in (15, 30):
                for target in FLAPPING:
                    pipeline.on_result(CheckResult("redis", target, True, 0.1, at + step, 0.01))
            at += 45
        [stats] = pipeline.delivery()
        assert stats.queued == len(FLAPPING) and stats.superseded >= len(FLAPPING) * (2 * CYCLES - 1) - 2
        failures = pipeline.workers["slack"].failures
        pipeline.on_result(CheckResult("postgres", "main", True, 0.97, at, 0.01))  # the fresh page
        poll(lambda: pipeline.workers["slack"].failures >= failures + 2, timeout=10)  # a retry picked the queue again
        slack.status = 200
        bodies = slack.wait_for(len(FLAPPING) + 1, timeout=30)
        heads = [b["text"].split("\n", 1)[0] for b in bodies]
        assert "FIRING" in heads[0] and "PostgresConnectionsExhausted" in heads[0], heads[:3]
        assert sum("RESOLVED" in h for h in heads) == len(FLAPPING)
    finally:
        pipeline.stop(3)
        slack.close()


def test_an_overfull_queue_drops_only_stale_resolutions_and_says_so(tmp_path: Path) -> None:
    """Over its limit the outbox drops the oldest resolutions (logged, counted) and keeps every firing page."""
    box = Outbox(tmp_path / "slack", limit=4)
    with capture_logs() as logs:
        for i in range(3):
            box.put({"status": "resolved", "fingerprint": f"old{i}"})
        for i in range(4):
            box.put({"status": "firing", "fingerprint": f"page{i}"})
    kept = [(m["status"], m["fingerprint"]) for m in box.pending()]
    assert kept == [("firing", f"page{i}") for i in range(4)]
    assert box.dropped == 3
    assert [e for e in logs if e["event"] == "alert_outbox_dropped"]
    box.put({"status": "firing", "fingerprint": "page4"})  # nothing stale left: a page is never dropped
    assert len(box) == 5 and box.dropped == 3
