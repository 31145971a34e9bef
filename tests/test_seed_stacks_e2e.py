"""Each platform profile end to end against local stand-ins of its stack, paging one alarm of each new kind into Alertmanager.

One in-process agent per profile, with the profile's own targets of the new
kinds (rabbitmq, sql, http, cloudwatch, a per_run postgres) pointed at local
stand-ins: the machine's RabbitMQ, a private PostgreSQL, private HTTP(S)
servers, the moto server for CloudWatch. Intervals are 1 s and ``for`` 0 s so
each profile pages within seconds.
"""

from __future__ import annotations

import datetime as dt
import math
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pika
import pytest
import yaml

from opsagent_testing.alertmanager import AlertmanagerServer
from opsagent_testing.servers import PostgresServer
from tests.fixtures.agent import RunningAgent, poll
from tests.fixtures.backup import new_database
from tests.fixtures.tls import HttpsServer, answer, make_ca_and_cert

EXAMPLES = Path(__file__).resolve().parents[1] / "deploy" / "examples"
AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"
FAST = {"interval": "1s", "timeout": "3s"}


def example(name: str) -> dict[str, Any]:
    data = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    assert isinstance(data, dict)
    return data


def put_metric(target: dict[str, Any], value: float) -> None:
    """One datapoint inside the newest complete period of the target's (aligned) request window."""
    period = {"5m": 300, "1m": 60, "1h": 3600}[target.get("period", "5m")]
    done = math.floor(time.time() / period) * period - period
    boto3.client("cloudwatch", region_name=target.get("region") or "us-east-1").put_metric_data(
        Namespace=target["namespace"], MetricData=[{
            "MetricName": target["metric"], "Value": value,
            "Dimensions": [{"Name": k, "Value": v} for k, v in (target.get("dimensions") or {}).items()],
            "Timestamp": datetime.fromtimestamp(done + 1, tz=UTC)}])


@pytest.fixture(scope="module")
def tls_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HttpsServer, Path]]:
    """An HTTPS "public API" whose certificate (from a test CA) expires in 5 days."""
    ca, cert, key = make_ca_and_cert(tmp_path_factory.mktemp("ca"), dt.timedelta(days=5))
    site = HttpsServer({"/health": answer(200, b'{"status":"ok"}'), "/down": answer(503, b"maintenance")},
                       cert=(cert, key))
    yield site, ca
    site.close()


@pytest.fixture
def rabbit_queue() -> Iterator[str]:
    name = f"opsagent-e2e-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    channel = conn.channel()
    channel.queue_declare(name)
    for i in range(5):
        channel.basic_publish("", name, f"payment {i}".encode())
    conn.close()
    yield name
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    conn.channel().queue_delete(name)
    conn.close()


def stand_ins(name: str, pg: PostgresServer, site: tuple[HttpsServer, Path], queue: str) -> tuple[dict[str, Any], set[str]]:
    """The profile with its new-kind targets pointed at local stand-ins: (config, alarms expected to fire)."""
    raw = example(name)
    server, ca = site
    checks = raw["checks"]
    config: dict[str, Any] = {"agent": {"name": raw["agent"]["name"]}, "checks": {}, "alerts": {},
                              "backup": {"enabled": False}}
    expected: set[str] = set()
    for target in checks.get("postgres", []):
        if target.get("connect") == "per_run":
            config["checks"]["postgres"] = [{**target, **FAST, "dsn": pg.dsn()}]
    if "rabbitmq" in checks:
        broker = checks["rabbitmq"][0]
        config["checks"]["rabbitmq"] = [{"name": broker["name"], "url": AMQP, "queues": [queue], **FAST}]
        config["alerts"]["RabbitMQNoConsumers"] = {"for": "0s"}
        expected.add("RabbitMQNoConsumers")
    if "http" in checks:
        probe = checks["http"][0]
        # PayPass: a healthy API whose certificate expires within tls_warn; Monay: an API answering 503.
        path = "/health" if "tls_warn" in probe else "/down"
        config["checks"]["http"] = [{**probe, **FAST, "url": server.url + path, "ca_file": str(ca),
                                     "body_contains": None}]
        alarm = "TLSCertificateExpiring" if path == "/health" else "HTTPProbeFailed"
        config["alerts"][alarm] = {"for": "0s"}
        expected.add(alarm)
    if "sql" in checks:
        dbname = new_database(pg, "ledger")
        pg.psql("CREATE TABLE payments (status text, created_at timestamptz);"
                "INSERT INTO payments VALUES ('PENDING', now() - interval '20 minutes');"
                "CREATE TABLE provider_webhooks (provider text, received_at timestamptz);"
                "INSERT INTO provider_webhooks VALUES ('paystack', now());", dbname)
        config["checks"]["sql"] = [{**t, **FAST, "dsn": pg.dsn(dbname)} for t in checks["sql"]]
        config["alerts"]["SQLCheckBreached"] = {"for": "0s"}
        expected.add("SQLCheckBreached")
    if "cloudwatch" in checks:
        targets = [{**t, **FAST} for t in checks["cloudwatch"]]
        for t in targets:
            put_metric(t, t["threshold"] * 2 + 1 if t.get("comparison", "above") == "above" else t["threshold"] / 2)
        config["checks"]["cloudwatch"] = targets
        config["alerts"]["CloudWatchMetricBreached"] = {"for": "0s"}
        expected.add("CloudWatchMetricBreached")
    return config, expected


def firing(alerts: list[dict[str, Any]], agent: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for alert in alerts:
        if alert["labels"].get("agent") == agent:
            out.setdefault(alert["labels"]["alertname"], set()).add(alert["labels"]["target"])
    return out


@pytest.mark.parametrize("name", ["paypass", "monay", "sales-scorecard", "ingantapay", "powerpay"])
def test_profile_pages_one_alarm_of_each_new_kind(name: str, aws: Any, private_pg: PostgresServer,
                                                  tls_site: tuple[HttpsServer, Path], rabbit_queue: str,
                                                  alertmanager: AlertmanagerServer,
                                                  start_agent: Callable[..., RunningAgent]) -> None:
    """The profile's new-kind targets, against local stand-ins, each page their alarm in a real Alertmanager while every target stays up."""
    config, expected = stand_ins(name, private_pg, tls_site, rabbit_queue)
    assert expected, f"{name} has no target of a new kind"
    config["notify"] = {"alertmanager_url": alertmanager.url, "repeat_interval": "10s"}
    agent = start_agent(config)
    agent_name = config["agent"]["name"]
    alerts = alertmanager.wait_for(lambda a: expected <= set(firing(a, agent_name)), timeout=30)
    got = firing(alerts, agent_name)
    assert "TargetDown" not in got, got
    poll(lambda: agent.get("/readyz").status_code == 200)
    status = agent.status()
    for row in status["checks"]:
        assert row["up"] is True, row
    if name == "powerpay":  # a "below" target's page says which way it breached
        disk = [a for a in alertmanager.wait_for(
            lambda a: any(x["labels"]["target"] == "db-free-storage" for x in a)) if a["labels"]["target"] == "db-free-storage"]
        assert " < threshold " in disk[0]["annotations"]["description"], disk[0]["annotations"]
    per_run = [r for r in status["checks"] if r["check"] == "postgres"]
    if name == "paypass":
        metrics = agent.get("/metrics").text.splitlines()
        ready = [m for m in metrics if m.startswith("opsagent_rabbitmq_queue_messages_ready{")]
        assert any(f'queue="{rabbit_queue}"' in m and 'target="broker"' in m and m.endswith(" 5.0") for m in ready), ready
        expiry = [m for m in metrics if m.startswith("opsagent_tls_certificate_expiry_seconds{")]
        assert expiry and 'target="public-api"' in expiry[0] and 4 * 86400 < float(expiry[0].split()[-1]) < 5 * 86400
        # Between runs the per_run target holds no session (a run's own session lives a few milliseconds).
        assert per_run and poll(lambda: private_pg.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'opsagent'") == "0")
