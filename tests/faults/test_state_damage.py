"""Damaged state (issue 21): a half-written alerts.json and an unreadable outbox message.

A restarted agent whose alert state file is torn must neither page a still-down target again
nor forget to resolve it; a message in the outbox that cannot be read is skipped with a log
line naming it, and the queue behind it keeps moving.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from opsagent.alerts.pipeline import AlertPipeline
from opsagent.config import Settings
from opsagent.notify.outbox import Outbox
from opsagent.runtime.results import CheckResult
from opsagent_testing.alertmanager import Receiver
from tests.fixtures.agent import poll


def _settings(url: str) -> Settings:
    return Settings(agent={"name": "damaged"},
                    checks={"postgres": [{"name": "main", "dsn": "postgresql://app@127.0.0.1:1/app", "interval": "15s"}]},
                    alerts={"TargetDown": {"for": "0s"}},
                    notify={"slack_webhook_url": url + "/hook", "timeout": "2s"})


def _down(at: float) -> CheckResult:
    return CheckResult("postgres", "main", False, None, at, 0.01, "connection refused")


def _up(at: float) -> CheckResult:
    return CheckResult("postgres", "main", True, 0.1, at, 0.01)


def _heads(receiver: Receiver) -> list[str]:
    return [r["body"]["text"].split("\n", 1)[0] for r in receiver.requests]


@pytest.mark.parametrize("damage", ["current", "current and previous"])
def test_a_torn_alert_state_file_neither_re_pages_nor_forgets_the_resolution(tmp_path: Path, damage: str) -> None:
    """After alerts.json (and its .prev) is half-written, the restarted agent does not page the still-down target again, and resolves it when it answers."""
    receiver = Receiver()
    state = tmp_path / "state"
    try:
        first = AlertPipeline(_settings(receiver.url), state, backoff_base=0.01)
        first.start()
        at = time.time() - 600
        first.on_result(_down(at))
        receiver.wait_for(1)
        first.on_result(_down(at + 15))
        first.stop(3)
        (state / "alerts.json").write_text('{"version": 1, "alerts": [{"alertname": "Targ')
        if damage == "current and previous":
            (state / "alerts.json.prev").write_text("\x00\x00garbage")

        with capture_logs() as logs:
            second = AlertPipeline(_settings(receiver.url), state, backoff_base=0.01)
        assert any(e["event"] == "alert_state_unreadable" for e in logs)
        second.start()
        try:
            second.on_result(_down(at + 30))  # still down: no second page
            for step in (45, 60, 75):  # answers again for a whole interval: the resolution goes out
                second.on_result(_up(at + step))
            poll(lambda: len(receiver.requests) >= 2, timeout=10)
            time.sleep(0.3)  # a duplicate page, if any, would have arrived by now
            heads = _heads(receiver)
            assert len(heads) == 2 and "FIRING" in heads[0] and "RESOLVED" in heads[1], heads
        finally:
            second.stop(3)
    finally:
        receiver.close()


def test_an_unreadable_outbox_message_is_logged_and_the_next_one_delivered(tmp_path: Path) -> None:
    """A corrupt file in a sink's outbox is skipped with a log line naming it; the message queued after it is still delivered."""
    receiver = Receiver()
    state = tmp_path / "state"
    try:
        pipeline = AlertPipeline(_settings(receiver.url), state, backoff_base=0.01)
        box: Outbox = pipeline.outboxes["slack"]
        pipeline.on_result(_down(time.time()))  # queued, worker not started yet
        assert len(box) == 1
        corrupt = box.directory / "00000000000000000000.json"
        corrupt.write_bytes(b"{not json")
        reopened = AlertPipeline(_settings(receiver.url), state, backoff_base=0.01)
        with capture_logs() as logs:
            reopened.start()
            try:
                receiver.wait_for(1)
                poll(lambda: len(reopened.outboxes["slack"]) == 0, timeout=10)
            finally:
                reopened.stop(3)
        [event] = [e for e in logs if e["event"] == "alert_outbox_message_unreadable"]
        assert event["path"].endswith("00000000000000000000.json")
        assert "FIRING" in _heads(receiver)[0] and not corrupt.exists()
    finally:
        receiver.close()
