"""The last word on resolutions: every one the suite's sinks received says resolved and states no breach.

Like the secret scan of the fault suite, this reads what the whole session captured (every body any
``opsagent_testing.alertmanager.Receiver`` accepted: Slack messages, Alertmanager webhook notifications).
Named ``test_zzz_*`` so it runs after the other modules; it also produces one resolution of every kind of
alarm text itself (ratio, count, duration, boolean, target down), so it checks something when run alone.
"""

from __future__ import annotations

import time
from pathlib import Path

from opsagent.alerts.pipeline import AlertPipeline
from opsagent.config import Settings
from opsagent.runtime.results import CheckResult
from opsagent_testing.alertmanager import CAPTURED, Receiver
from tests.fixtures.texts import breach_statements, resolution_texts

# (check, target, breaching result, recovered result): one alarm of every value kind.
CASES = [
    ("cpu", "task", {"up": True, "value": 0.97}, {"up": True, "value": 0.12}),
    ("pgbouncer", "pool", {"up": True, "value": 4.0}, {"up": True, "value": 0.0}),
    ("sqs", "jobs", {"up": True, "value": 3600.0}, {"up": True, "value": 5.0}),
    ("backup_run", "main", {"up": True, "value": 1.0, "details": {"error": "pg_dump: server closed the connection"}},
     {"up": True, "value": 0.0}),
    ("postgres", "main", {"up": False, "value": None, "error": "connection refused"}, {"up": True, "value": 0.1}),
]


def _produce_one_resolution_of_each_kind(tmp_path: Path) -> int:
    slack = Receiver()
    settings = Settings(
        agent={"name": "texts"},
        checks={"postgres": [{"name": "main", "dsn": "postgresql://app@127.0.0.1:1/app", "interval": "15s"}],
                "pgbouncer": [{"name": "pool", "dsn": "postgresql://stats@127.0.0.1:1/pgbouncer", "interval": "15s"}],
                "sqs": [{"name": "jobs", "queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/jobs"}]},
        alerts={name: {"for": "0s"} for name in ("HighCPU", "PgBouncerClientsWaiting", "SQSMessageAgeHigh",
                                                 "TargetDown")},
        notify={"slack_webhook_url": slack.url + "/hook", "timeout": "2s"},
    )
    pipeline = AlertPipeline(settings, tmp_path, backoff_base=0.01, backoff_cap=0.05)
    pipeline.start()
    try:
        at = time.time() - 3600
        for check, target, bad, good in CASES:
            pipeline.on_result(CheckResult(check, target, at=at, duration=0.01, **bad))  # type: ignore[arg-type]
            for step in range(1, 6):  # back under the threshold for a whole interval (sqs: 60s)
                pipeline.on_result(CheckResult(check, target, at=at + 15 * step, duration=0.01,
                                               **good))  # type: ignore[arg-type]
            at += 120
        bodies = slack.wait_for(2 * len(CASES), timeout=20)
    finally:
        pipeline.stop(3)
        slack.close()
    return sum(len(resolution_texts(b)) for b in bodies)


def test_every_captured_resolution_says_resolved_and_states_no_breach(tmp_path: Path) -> None:
    """No resolution any sink received in this session claims the breach goes on; each says resolved, with the value now and the threshold."""
    produced = _produce_one_resolution_of_each_kind(tmp_path)
    assert produced == len(CASES)
    texts = [text for body in list(CAPTURED) for text in resolution_texts(body)]
    assert len(texts) >= produced
    lies = {text: breach_statements(text) for text in texts if breach_statements(text)}
    assert lies == {}
    assert [t for t in texts if "resolved" not in t.lower()] == []
    assert [t for t in texts if "value now" not in t or "threshold" not in t] == []
