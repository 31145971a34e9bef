"""Slack, PagerDuty, SNS and Sentry sinks: what each receives for a firing alert and its resolution."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from opsagent.alerts.pipeline import AlertPipeline
from opsagent.config import Settings
from opsagent.notify.base import DeliveryError, post_json
from opsagent.runtime.results import CheckResult
from opsagent_testing.alertmanager import Receiver
from opsagent_testing.aws import MotoServer


def _settings(**notify: Any) -> Settings:
    return Settings(
        agent={"name": "api-sidecar"},
        checks={"pgbouncer": [{"name": "pool", "dsn": "postgresql://stats@127.0.0.1:1/pgbouncer", "interval": "15s"}]},
        notify={"timeout": "3s", **notify},
    )


def _fire_and_resolve(p: AlertPipeline) -> None:
    """PgBouncerClientsWaiting: 3 waiting clients for over a minute, then none for a whole interval."""
    at = time.time() - 600
    for value in [3, 3, 3, 3, 3, 0, 0]:
        p.on_result(CheckResult("pgbouncer", "pool", True, float(value), at, 0.01))
        at += 15


def test_pagerduty_gets_trigger_and_resolve_with_the_fingerprint_as_dedup_key(receiver: Receiver, tmp_path: Path) -> None:
    """PagerDuty receives a trigger and then a resolve sharing one dedup key, with the runbook linked."""
    p = AlertPipeline(_settings(pagerduty_routing_key="R0UTINGKEY0123", pagerduty_url=receiver.url + "/v2/enqueue"),
                      tmp_path, backoff_base=0.01)
    p.start()
    try:
        _fire_and_resolve(p)
        trigger, resolve = receiver.wait_for(2)
        assert receiver.requests[0]["path"] == "/v2/enqueue"
        assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
        assert trigger["routing_key"] == "R0UTINGKEY0123"
        assert trigger["dedup_key"] == resolve["dedup_key"] == p.fingerprint_of("PgBouncerClientsWaiting", "pgbouncer", "pool")
        assert trigger["payload"]["severity"] == "warning"
        assert trigger["payload"]["source"] == "api-sidecar/pgbouncer/pool"
        assert trigger["payload"]["custom_details"]["value"] == "3"
        assert trigger["links"][0]["href"].endswith("/PgBouncerClientsWaiting.md")
    finally:
        p.stop(2)


def test_slack_gets_a_readable_firing_and_resolved_message(receiver: Receiver, tmp_path: Path) -> None:
    """Slack shows FIRING with severity, summary, value vs threshold and runbook link, then RESOLVED."""
    p = AlertPipeline(_settings(slack_webhook_url=receiver.url + "/services/T0/B0/secret"), tmp_path, backoff_base=0.01)
    p.start()
    try:
        _fire_and_resolve(p)
        firing, resolved = receiver.wait_for(2)
        assert firing["text"].startswith("*:warning: FIRING [warning] PgBouncerClientsWaiting pgbouncer/pool*")
        assert "value 3 > threshold 0" in firing["text"]
        assert "PgBouncerClientsWaiting.md" in firing["text"]
        assert resolved["text"].startswith("*:white_check_mark: RESOLVED PgBouncerClientsWaiting")
    finally:
        p.stop(2)


def test_sns_topic_subscribers_receive_the_alert_and_resolution(aws: MotoServer, tmp_path: Path) -> None:
    """An SQS queue subscribed to the SNS topic receives the firing alert and its resolution as JSON."""
    import boto3

    sns = boto3.client("sns", region_name="eu-west-1")
    sqs = boto3.client("sqs", region_name="eu-west-1")
    topic = sns.create_topic(Name="oncall")["TopicArn"]
    queue_url = sqs.create_queue(QueueName="pages")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)

    p = AlertPipeline(_settings(sns_topic_arn=topic), tmp_path, backoff_base=0.01)
    p.start()
    try:
        _fire_and_resolve(p)
        received: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while len(received) < 2 and time.monotonic() < deadline:
            batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            received.extend(json.loads(m["Body"]) for m in batch.get("Messages", []))
        assert [r["Subject"] for r in received] == ["[FIRING] PgBouncerClientsWaiting pgbouncer/pool",
                                                     "[RESOLVED] PgBouncerClientsWaiting pgbouncer/pool"]
        first = json.loads(received[0]["Message"])
        assert first["labels"]["alertname"] == "PgBouncerClientsWaiting" and first["status"] == "firing"
        assert first["annotations"]["runbook_url"].endswith("PgBouncerClientsWaiting.md")
    finally:
        p.stop(2)


def test_sns_unknown_topic_is_a_permanent_failure(aws: MotoServer, tmp_path: Path) -> None:
    """A message for a topic that does not exist is dropped after one logged failure instead of blocking the queue."""
    p = AlertPipeline(_settings(sns_topic_arn="arn:aws:sns:us-east-1:123456789012:missing"), tmp_path,
                      backoff_base=0.01)
    p.start()
    try:
        _fire_and_resolve(p)
        deadline = time.monotonic() + 10
        while len(p.outboxes["sns"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(p.outboxes["sns"]) == 0
        assert p.workers["sns"].failures == 2 and p.workers["sns"].sent == 0
    finally:
        p.stop(2)


def test_http_errors_say_whether_a_retry_can_help(receiver: Receiver) -> None:
    """HTTP 400 from a sink is permanent, 503 is retried, and the webhook URL never appears in the error."""
    url = receiver.url + "/services/T0/B0/verysecretpath"
    from opsagent import secrets

    secrets.register([url])
    receiver.status = 400
    with pytest.raises(DeliveryError) as bad:
        post_json("slack", url, {"text": "x"}, 2)
    assert bad.value.permanent and "verysecretpath" not in str(bad.value)
    receiver.status = 503
    with pytest.raises(DeliveryError) as busy:
        post_json("slack", url, {"text": "x"}, 2)
    assert not busy.value.permanent


def test_sentry_gets_alerts_only_when_sentry_alerts_is_on(tmp_path: Path) -> None:
    """Sentry is an alert sink only with `notify.sentry_alerts: true` and a DSN."""
    dsn = "http://public@127.0.0.1:9/1"
    assert "sentry" not in AlertPipeline(_settings(sentry_dsn=dsn), tmp_path / "a").outboxes
    assert "sentry" in AlertPipeline(_settings(sentry_dsn=dsn, sentry_alerts=True), tmp_path / "b").outboxes


_SENTRY_SCRIPT = """
import sys, time
from pathlib import Path
from opsagent.alerts.pipeline import AlertPipeline
from opsagent.config import Settings
from opsagent.runtime.results import CheckResult
s = Settings(checks={"pgbouncer": [{"name": "pool", "dsn": "postgresql://stats@127.0.0.1:1/pgbouncer"}]},
             notify={"sentry_dsn": sys.argv[1], "sentry_alerts": True, "timeout": "3s"})
p = AlertPipeline(s, Path(sys.argv[2]), backoff_base=0.01)
p.start()
at = time.time() - 600
for value in [3, 3, 3, 3, 3, 0, 0]:
    p.on_result(CheckResult("pgbouncer", "pool", True, float(value), at, 0.01))
    at += 15
deadline = time.monotonic() + 10
while len(p.outboxes["sentry"]) and time.monotonic() < deadline:
    time.sleep(0.02)
p.stop(2)
"""


def test_sentry_receives_the_alert_and_its_resolution(receiver: Receiver, tmp_path: Path) -> None:
    """With `sentry_alerts: true`, Sentry gets one event when the alert fires and one when it resolves."""
    import subprocess
    import sys

    dsn = f"http://publickey@127.0.0.1:{receiver.port}/42"
    done = subprocess.run([sys.executable, "-c", _SENTRY_SCRIPT, dsn, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    events = [r for r in receiver.wait_for(2) if "PgBouncerClientsWaiting" in json.dumps(r)]
    assert len(events) == 2 and all(r["path"].startswith("/api/42/") for r in receiver.requests)
    text = json.dumps(events)
    assert "[FIRING]" in text and "[RESOLVED]" in text
