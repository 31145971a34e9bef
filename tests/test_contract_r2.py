"""Contract conformance for release 2 through a running agent: SPEC §5, §6, §9.4, §9.5, §9.7 by their exact names.

One shared in-process agent watches every new kind against real services (private PostgreSQL, the shared
Redis and RabbitMQ, a TLS server, an app-metrics stub, Alertmanager); one more agent reads a value the test
controls, for recovery_threshold and flapping. The command line is in test_contract_r2_cli.py.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest
import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from opsagent_testing.alertmanager import AlertmanagerServer
from opsagent_testing.servers import PostgresServer, closed_port
from tests.fixtures.agent import RunningAgent, make_settings, poll
from tests.fixtures.backup import SourceDb, new_database
from tests.fixtures.contract import AMQP, ANNOTATIONS, LABELS, TOKEN, cli, expire_silences, samples, series
from tests.fixtures.http_stub import StubServer
from tests.fixtures.tls import HttpsServer, answer, make_ca_and_cert

# -- the agent scenario -------------------------------------------------------------------------------


@dataclass
class Scenario:
    agent: RunningAgent
    queue: str
    am: AlertmanagerServer
    config: Path


def _app_metrics() -> tuple[int, str, bytes]:
    """An app whose counters grow by 100 requests, 10 of them 5xx, per scrape (a 10 % error ratio)."""
    _app_metrics.calls += 1  # type: ignore[attr-defined]  # a call counter kept on the function
    n = 100 * _app_metrics.calls  # type: ignore[attr-defined]  # the counter set above
    body = (f'http_requests_total{{status="200",route="/"}} {n - n // 10}\n'
            f'http_requests_total{{status="500",route="/"}} {n // 10}\n')
    return 200, "text/plain", body.encode()


_app_metrics.calls = 0  # type: ignore[attr-defined]  # see _app_metrics


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, source_db: SourceDb,
             alertmanager_server: AlertmanagerServer) -> Iterator[Scenario]:
    tmp = tmp_path_factory.mktemp("contract")
    queue = f"contract-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    channel = conn.channel()
    channel.queue_declare(queue, auto_delete=False)
    channel.basic_publish("", queue, b"job")
    rising = f"{queue}-rising"
    channel.queue_declare(rising, auto_delete=False)
    stop_rising = threading.Event()
    publisher = threading.Thread(target=_publish_steadily, args=(rising, stop_rising), daemon=True)
    publisher.start()
    ca, cert, key = make_ca_and_cert(tmp, dt.timedelta(days=5))
    tls = HttpsServer({"/": answer(200, b"ok")}, cert=(cert, key))
    app = StubServer({"/metrics": _app_metrics})
    config: dict[str, Any] = {
        "agent": {"name": "api-sidecar", "admin_token": TOKEN},
        "checks": {
            "cpu": {"interval": "1s"}, "memory": {"interval": "1s"},
            "postgres": [{"name": "main", "dsn": source_db.dsn, "interval": "1s"}],
            "redis": [{"name": "cache", "url": "redis://127.0.0.1:6379/0", "interval": "1s"}],
            "error_rate": [{"name": "api", "metrics_url": f"{app.url}/metrics", "window": "5m", "interval": "1s",
                            "slo": {"objective": "99.9%", "period": "30d", "min_events": 20}}],
            "rabbitmq": [{"name": "mq", "url": AMQP, "queues": [queue, rising], "interval": "1s"}],
            "sql": [{"name": "rows", "dsn": source_db.dsn, "query": "select count(*) from public.users",
                     "threshold": 10, "comparison": "above", "unit": "rows", "interval": "1s"}],
            "http": [{"name": "web", "url": tls.url + "/", "expect_status": 200, "timeout": "2s", "tls_warn": "14d",
                      "body_contains": "ok", "ca_file": str(ca), "interval": "1s"},
                     {"name": "gone", "url": f"http://127.0.0.1:{closed_port()}/", "expect_status": 200,
                      "timeout": "2s", "tls_warn": "14d", "interval": "1s"},
                     {"name": "untrusted", "url": tls.url + "/", "timeout": "2s", "interval": "1s"},
                     {"name": "wrongbody", "url": tls.url + "/", "body_contains": "welcome", "ca_file": str(ca),
                      "timeout": "2s", "interval": "1s"}],
        },
        "alerts": {"HTTPProbeFailed": {"for": "0s"}, "RabbitMQNoConsumers": {"for": "0s"},
                   "SQLCheckBreached": {"for": "0s"}},
        "maintenance": [{"match": {"target": "rows"}, "start": "2020-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z",
                         "comment": "contract window"}],
        "notify": {"alertmanager_url": alertmanager_server.url},
        "backup": {"schedule": "0 0 1 1 *", "drill_schedule": "0 0 1 1 *", "repository": f"file://{tmp}/primary",
                   "replica": f"file://{tmp}/replica", "replica_region": "eu-west-1", "postgres": ["main"]},
    }
    running = RunningAgent(make_settings(tmp, config))
    try:
        poll(lambda: running.get("/readyz").status_code == 200)
        yield Scenario(running, queue, alertmanager_server, tmp / "opsagent.yaml")
    finally:
        running.stop()
        stop_rising.set()
        publisher.join(timeout=10)
        app.close()
        tls.close()
        channel.queue_delete(queue)
        channel.queue_delete(rising)
        conn.close()


def _publish_steadily(queue: str, stop: threading.Event) -> None:
    """A backlog that grows by 10 messages every 0.2 s (a rising trend for the forecast)."""
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    try:
        channel = conn.channel()
        while not stop.wait(0.2):
            for _ in range(10):
                channel.basic_publish("", queue, b"job")
    finally:
        conn.close()


def test_metrics_carry_the_contract_names_and_labels(scenario: Scenario) -> None:
    """/metrics exposes §6 and §9.4/§9.5/§9.7 names with the labels SPEC gives them."""
    def ready() -> str | None:
        text = scenario.agent.get("/metrics").text
        names = {n for n, _, _ in samples(text)}
        wanted = {"opsagent_rabbitmq_queue_messages_ready", "opsagent_tls_certificate_expiry_seconds",
                  "opsagent_error_rate_requests_total", "opsagent_redis_evicted_keys_total",
                  "opsagent_alert_firing"}
        return text if wanted <= names else None

    text = poll(ready)
    for name in ("opsagent_check_value", "opsagent_check_up"):
        assert {"check": "rabbitmq", "target": "mq"} in series(text, name) or name == "opsagent_check_value"
        assert {"check": "postgres", "target": "main"} in series(text, name)
    assert {"check": "postgres"} in series(text, "opsagent_check_duration_seconds_count")
    assert all(set(labels) == {"alertname", "target", "severity"} for labels in series(text, "opsagent_alert_firing"))
    assert series(text, "opsagent_build_info") and set(series(text, "opsagent_build_info")[0]) == {"version"}
    # The label sets SPEC gives, exactly: {target}, {target,queue}.
    assert {"target": "mq", "queue": scenario.queue} in series(text, "opsagent_rabbitmq_queue_messages_ready")
    assert {"target": "mq", "queue": scenario.queue} in series(text, "opsagent_rabbitmq_queue_consumers")
    assert {"target": "web"} in series(text, "opsagent_tls_certificate_expiry_seconds")
    assert all(set(labels) == {"target"} for labels in series(text, "opsagent_tls_certificate_expiry_seconds"))
    assert series(text, "opsagent_error_rate_requests_total") == [{"target": "api"}]
    assert series(text, "opsagent_error_rate_errors_total") == [{"target": "api"}]
    ready_q = [s for s in samples(text) if s[0] == "opsagent_rabbitmq_queue_messages_ready"]
    assert [(labels["target"], value) for _, labels, value in ready_q if labels["queue"] == scenario.queue] == [("mq", 1.0)]
    consumers = [s for s in samples(text) if s[0] == "opsagent_rabbitmq_queue_consumers"]
    assert [value for _, labels, value in consumers if labels["queue"] == scenario.queue] == [0.0]
    expiry = {labels["target"]: value for n, labels, value in samples(text) if n == "opsagent_tls_certificate_expiry_seconds"}
    assert 4 * 86400 < expiry["web"] <= 5 * 86400
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["opsagent_check_duration_seconds"] == "histogram"
    assert families["opsagent_check_value"] == families["opsagent_check_up"] == families["opsagent_alert_firing"] == "gauge"
    assert families["opsagent_error_rate_requests"] == "counter"  # the parser strips _total from a counter's family
    assert families["opsagent_error_rate_errors"] == "counter"
    assert families["opsagent_redis_evicted_keys"] in ("counter", "gauge")  # the deprecated gauge shares the stem
    assert any(n.startswith("process_") for n, _, _ in samples(text))
    assert "# TYPE opsagent_exhaustion_seconds gauge" in text
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_openmetrics_is_served_on_request(scenario: Scenario) -> None:
    """`Accept: application/openmetrics-text` gets OpenMetrics ending in `# EOF`, with process_* metrics."""
    r = scenario.agent.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")
    parsed = {f.name: f for f in openmetrics_families(r.text)}  # type: ignore[no-untyped-call]  # the strict parser has no annotations
    assert parsed["opsagent_error_rate_requests"].type == "counter"
    assert "process_resident_memory_bytes" in r.text and "opsagent_check_up{" in r.text


def test_status_json_has_every_check_and_alert(scenario: Scenario) -> None:
    """/status lists every check with value, threshold, state, last run and error, the alerts and the backups."""
    status = poll(lambda: (s := scenario.agent.status()) and len(s["checks"]) >= 9 and s)
    rows = {(c["check"], c["target"]): c for c in status["checks"]}
    for key in [("cpu", "task"), ("memory", "task"), ("postgres", "main"), ("redis", "cache"), ("error_rate", "api"),
                ("rabbitmq", "mq"), ("sql", "rows"), ("http", "web"), ("http", "gone")]:
        assert {"value", "threshold", "state", "last_run", "error"} <= set(rows[key]), key
    assert rows[("sql", "rows")]["value"] == 3000.0 and rows[("rabbitmq", "mq")]["value"] >= 1.0
    assert rows[("rabbitmq", "mq")]["up"] is True and rows[("http", "web")]["error"] is None
    assert isinstance(status["alerts"], list) and "targets" in status["backups"]
    assert "rpo_achieved_seconds" in status["backups"]
    assert scenario.agent.get("/healthz").status_code == 200
    page = scenario.agent.get("/")
    assert page.status_code == 200 and "runbooks/" in page.text


def test_alerts_reach_alertmanager_with_contract_labels(scenario: Scenario) -> None:
    """A failing probe pages `HTTPProbeFailed` (critical) and a 5-day certificate `TLSCertificateExpiring`
    (warning), each with every contract label and annotation."""
    def paged() -> dict[str, dict[str, Any]] | None:
        found = {a["labels"]["alertname"]: a for a in scenario.am.alerts()
                 if a["labels"].get("agent") == "api-sidecar"}
        return found if {"HTTPProbeFailed", "TLSCertificateExpiring"} <= set(found) else None

    alerts = poll(paged, timeout=20)
    probe, tls = alerts["HTTPProbeFailed"], alerts["TLSCertificateExpiring"]
    assert probe["labels"]["severity"] == "critical" and probe["labels"]["target"] == "gone"
    assert tls["labels"]["severity"] == "warning" and tls["labels"]["target"] == "web"
    for alert in (probe, tls):
        assert set(alert["labels"]) >= LABELS and set(alert["annotations"]) >= ANNOTATIONS
        assert alert["annotations"]["runbook_url"].endswith(f"runbooks/{alert['labels']['alertname']}.md")
        assert alert["generatorURL"]


def test_error_budget_burn_pages_per_window_pair(scenario: Scenario) -> None:
    """A 10 % error ratio against a 99.9 % objective fires `ErrorBudgetBurn` once per window pair, label
    `window`, critical for 1h/5m and 6h/30m and warning for 1d/2h and 3d/6h."""
    def burning() -> dict[str, str] | None:
        pairs = {a["labels"]["window"]: a["labels"]["severity"] for a in scenario.agent.status()["alerts"]
                 if a["alertname"] == "ErrorBudgetBurn" and a["state"] == "firing"}
        return pairs if len(pairs) == 4 else None

    assert poll(burning, timeout=20) == {"1h/5m": "critical", "6h/30m": "critical",
                                         "1d/2h": "warning", "3d/6h": "warning"}


def test_post_backup_needs_the_bearer_token(scenario: Scenario) -> None:
    """POST /backup answers 401 without or with a wrong bearer token and 202 with the right one."""
    url = scenario.agent.url + "/backup"
    assert requests.post(url, timeout=10).status_code == 401
    assert requests.post(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    r = requests.post(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code in (202, 409), r.text  # 409 only while a run is already going
    assert TOKEN not in scenario.agent.get("/status").text

    def backed_up() -> str | None:
        text = scenario.agent.get("/metrics").text
        return text if series(text, "opsagent_replica_last_success_timestamp_seconds") else None

    text = poll(backed_up, timeout=30)
    main = {"kind": "postgres", "target": "main"}
    for name in ("opsagent_backup_last_success_timestamp_seconds", "opsagent_backup_duration_seconds",
                 "opsagent_backup_size_bytes", "opsagent_rpo_seconds"):
        assert series(text, name) == [main], name
    assert series(text, "opsagent_replica_last_success_timestamp_seconds") == [{**main, "region": "eu-west-1"}]
    assert "# TYPE opsagent_drill_last_duration_seconds gauge" in text
    # /status may answer from its 0.25 s render cache, so it is polled rather than read once.
    newest = poll(lambda: (t := scenario.agent.status()["backups"]["targets"][0]) and t["newest_replica"] and t)
    assert newest["newest_backup"]["verified"] and newest["newest_replica"]["id"] == newest["newest_backup"]["id"]


def test_silence_holds_a_running_agents_pages(scenario: Scenario) -> None:
    """`opsagent silence --target NAME --for 2h --comment ...` on the agent's config holds that target's firing
    alert in the agent, sets an Alertmanager silence, and the status page shows the comment."""
    poll(lambda: any(a["target"] == "wrongbody" and a["state"] == "firing" for a in scenario.agent.status()["alerts"]))
    comment = f"contract hold {uuid.uuid4().hex[:6]}"
    result = cli("silence", "--target", "wrongbody", "--for", "2h", "--comment", comment, "--config", str(scenario.config))
    assert result.returncode == 0, result.stderr
    held = poll(lambda: [a for a in scenario.agent.status()["alerts"] if a["target"] == "wrongbody" and a["silenced"]])
    assert held and all(a["silenced_by"]["comment"] == comment for a in held)
    assert comment in scenario.agent.get("/").text
    mine = expire_silences(scenario.am, comment)
    assert [s["status"]["state"] for s in mine] == ["active"]


def test_post_backup_without_token_or_backups(tmp_path: Path) -> None:
    """POST /backup is 404 when no admin token is configured and 409 when there is nothing to back up."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    agents = [RunningAgent(make_settings(tmp_path / "a", {})),
              RunningAgent(make_settings(tmp_path / "b", {"agent": {"admin_token": TOKEN}}))]
    try:
        assert requests.post(agents[0].url + "/backup", timeout=10).status_code == 404
        r = requests.post(agents[1].url + "/backup", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert r.status_code == 409
    finally:
        for running in agents:
            running.stop()


def test_new_kinds_alarm_as_specified(scenario: Scenario) -> None:
    """A ready message with no consumer fires `RabbitMQNoConsumers`; an untrusted certificate or a missing body
    string fails the probe; a breached SQL check under maintenance is held and the hold is shown."""
    def states() -> dict[tuple[str, str], str] | None:
        found = {(a["alertname"], a["target"]): a["state"] for a in scenario.agent.status()["alerts"]}
        wanted = {("RabbitMQNoConsumers", "mq"), ("HTTPProbeFailed", "untrusted"), ("HTTPProbeFailed", "wrongbody"),
                  ("SQLCheckBreached", "rows")}
        return found if wanted <= set(found) and found[("RabbitMQNoConsumers", "mq")] == "firing" else None

    found = poll(states, timeout=20)
    assert found[("HTTPProbeFailed", "untrusted")] == "firing" and found[("HTTPProbeFailed", "wrongbody")] == "firing"
    held = [a for a in scenario.agent.status()["alerts"] if a["alertname"] == "SQLCheckBreached"]
    assert held[0]["silenced"] is True  # held by the maintenance window
    assert ("RabbitMQBacklogHigh", "mq") not in found or found[("RabbitMQBacklogHigh", "mq")] != "firing"
    rows = {(c["check"], c["target"]): c for c in scenario.agent.status()["checks"]}
    assert "certificate" in json.dumps(rows[("http", "untrusted")]).lower()
    paged = {(a["labels"]["alertname"], a["labels"].get("target")) for a in scenario.am.alerts()
             if a["labels"].get("agent") == "api-sidecar"}
    assert ("SQLCheckBreached", "rows") not in paged and ("RabbitMQNoConsumers", "mq") in paged
    assert "contract window" in scenario.agent.get("/").text


def test_a_rising_queue_gets_an_exhaustion_forecast(scenario: Scenario) -> None:
    """A backlog growing steadily exports `opsagent_exhaustion_seconds{check,target}` and a forecast on /status."""
    def forecast() -> tuple[float, str] | None:
        """The queue's exported forecast and its /status text, when both are there (a trend can dip under R²)."""
        exported = [v for name, labels, v in samples(scenario.agent.get("/metrics").text)
                    if name == "opsagent_exhaustion_seconds" and labels == {"check": "rabbitmq", "target": "mq"}]
        shown = [r["text"] for r in scenario.agent.status()["quality"]["forecasts"]
                 if (r["check"], r["target"]) == ("rabbitmq", "mq")]
        return (exported[0], shown[0]) if exported and shown else None

    seconds, text = poll(forecast, timeout=20)
    assert seconds >= 0 and "to 100 %" in text


def test_release1_gauges_are_marked_deprecated(scenario: Scenario) -> None:
    """The release-1 Redis gauges stay, with "deprecated" in their help text, next to the new counters."""
    text = scenario.agent.get("/metrics").text
    helps = {line.split()[2]: line for line in text.splitlines() if line.startswith("# HELP opsagent_redis_e")}
    assert "deprecated" in helps["opsagent_redis_evicted_keys"] and "deprecated" in helps["opsagent_redis_expired_keys"]
    assert "opsagent_redis_expired_keys_total" in helps


# -- alert quality against a value the test controls --------------------------------------------------


def test_recovery_threshold_and_flapping(tmp_path: Path, private_pg: PostgresServer) -> None:
    """`recovery_threshold` keeps a breach open until the value passes it, and a target whose value swings
    on every run shows `state: flapping` on /status."""
    import psycopg

    db = new_database(private_pg, "knob")
    private_pg.psql("CREATE TABLE knob (name text PRIMARY KEY, v int); INSERT INTO knob VALUES ('knob', 20), ('flap', 0)", db)
    dsn = private_pg.dsn(db)
    sql = [{"name": name, "dsn": dsn, "query": f"select v from knob where name = '{name}'", "threshold": 10,
            "comparison": "above", "interval": "1s"} for name in ("knob", "flap")]
    running = RunningAgent(make_settings(tmp_path, {"checks": {"sql": sql},
                                                    "alerts": {"SQLCheckBreached": {"for": "0s", "recovery_threshold": 5}}}))
    with psycopg.connect(dsn, autocommit=True) as conn:
        def set_knob(name: str, value: int) -> None:
            conn.execute("UPDATE knob SET v = %s WHERE name = %s", (value, name))

        def alert(target: str) -> dict[str, Any] | None:
            return next((a for a in running.status()["alerts"]
                         if a["alertname"] == "SQLCheckBreached" and a["target"] == target), None)

        def next_run(target: str, after: float, value: int | None = None) -> float:
            """Wait for a run of the target that finished after ``after`` (and read ``value``); its time."""
            return float(poll(lambda: (r := running.check_row("sql", target)) and (r["last_run"] or 0.0) > after
                              and (value is None or r["value"] == value) and r["last_run"]))

        failures: list[AssertionError] = []

        def swing() -> None:
            """Swing the flap target on every run: 10 changes among the newest of 21 results weigh > 50 %."""
            try:
                value, seen = 100, 0.0
                for _ in range(11):
                    set_knob("flap", value)
                    seen = next_run("flap", seen, value)
                    value = 0 if value else 100
            except AssertionError as exc:  # a missed deadline, handed to the test thread
                failures.append(exc)

        swinger = threading.Thread(target=swing, daemon=True)
        swinger.start()  # in parallel with the recovery steps: both targets run every second
        try:
            assert poll(lambda: (a := alert("knob")) and a["state"] == "firing")
            set_knob("knob", 7)  # under the threshold (10), not yet past the recovery threshold (5)
            seen = next_run("knob", 0.0, 7)
            for _ in range(2):
                seen = next_run("knob", seen)
            assert (alert("knob") or {}).get("state") == "firing"
            set_knob("knob", 3)
            poll(lambda: (a := alert("knob")) is None or a["state"] != "firing")
            swinger.join(timeout=30)
            assert not failures, failures
            assert poll(lambda: (a := alert("flap")) and a["state"] == "flapping" and a)
        finally:
            running.stop()
