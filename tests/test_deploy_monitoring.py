"""deploy/prometheus, deploy/alertmanager and deploy/grafana, checked by the real promtool, amtool,
Prometheus and Alertmanager."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from opsagent_testing.alertmanager import AlertmanagerServer, PrometheusServer, _wait_http
from opsagent_testing.servers import closed_port

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "deploy" / "prometheus"
AM_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "opsagent-dashboard.json"

# Metric names the agent exports: SPEC §6, the daemon's scheduler counters and the
# kind-specific gauges of the checks.
KNOWN_METRICS = {
    "opsagent_check_value", "opsagent_check_up", "opsagent_check_duration_seconds", "opsagent_alert_firing",
    "opsagent_backup_last_success_timestamp_seconds", "opsagent_backup_duration_seconds", "opsagent_backup_size_bytes",
    "opsagent_replica_last_success_timestamp_seconds", "opsagent_rpo_seconds", "opsagent_drill_last_duration_seconds",
    "opsagent_build_info", "opsagent_scheduler_skipped_runs_total", "opsagent_scheduler_missed_runs_total",
    "opsagent_backup_last_run_success", "opsagent_drill_last_success",
    "opsagent_sqs_oldest_message_age_seconds", "opsagent_sqs_dlq_visible_messages", "opsagent_sqs_visible_messages",
    "opsagent_bullmq_waiting_jobs", "opsagent_bullmq_recent_failed_jobs",
    "opsagent_s3_replication_missing_objects", "opsagent_s3_replication_pending_objects",
    "opsagent_s3_replication_oldest_missing_age_seconds", "opsagent_s3_replication_rule_enabled",
}


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)


def local_prometheus_config(sd_dir: Path) -> str:
    """The shipped prometheus.yml with every address moved to loopback (tests talk to nothing else)."""
    text = (PROM_DIR / "prometheus.yml").read_text()
    text = text.replace("/etc/prometheus/ecs/*.json", f"{sd_dir}/*.json")
    text = text.replace("alertmanager.monitoring.internal:9093", f"127.0.0.1:{closed_port()}")
    return text.replace("127.0.0.1:9108", f"127.0.0.1:{closed_port()}")


@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusServer]:
    """A private Prometheus running the shipped config, rules and an ECS file_sd file."""
    sd_dir = Path(tempfile.mkdtemp(prefix="opsagent-sd-"))
    example = json.loads((PROM_DIR / "ecs-file-sd.example.json").read_text())
    example[0]["targets"] = [f"127.0.0.1:{closed_port()}"]
    other = {"targets": [f"127.0.0.1:{closed_port()}"],
             "labels": {"ecs_cluster": "prod", "PROMETHEUS_EXPORTER_JOB_NAME": "node"}}
    (sd_dir / "prod.json").write_text(json.dumps([*example, other]))
    server = PrometheusServer(local_prometheus_config(sd_dir),
                              rule_files={"opsagent-rules.yml": (PROM_DIR / "opsagent-rules.yml").read_text()})
    server.start()
    try:
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(sd_dir, ignore_errors=True)


# -- Prometheus ----------------------------------------------------------------------------------


def test_promtool_accepts_the_prometheus_config_and_rules() -> None:
    """`promtool check config` passes on prometheus.yml (with its rule file) and `promtool check rules` on the rules."""
    config = run("promtool", "check", "config", str(PROM_DIR / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout
    rules = run("promtool", "check", "rules", str(PROM_DIR / "opsagent-rules.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_the_shipped_rules_hold_only_what_the_agent_cannot_say_about_itself() -> None:
    """The shipped rule file is OpsagentDown alone (critical, over up{job="opsagent"}): the agent pages its alarms directly, so none is evaluated twice."""
    groups = yaml.safe_load((PROM_DIR / "opsagent-rules.yml").read_text())["groups"]
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    assert set(rules) == {"OpsagentDown"}
    down = rules["OpsagentDown"]
    assert down["labels"]["severity"] == "critical" and down["for"] == "1m"
    assert 'max without (instance) (up{job="opsagent"}) == 0' in down["expr"] and 'absent(up{job="opsagent"})' in down["expr"]
    assert down["annotations"]["runbook_url"].endswith("runbooks/OpsagentDown.md")


def test_the_shipped_rules_are_what_rules_export_prints_for_the_default_config() -> None:
    """deploy/prometheus/opsagent-rules.yml equals `opsagent rules export --only OpsagentDown` with the default configuration (regenerate it when this fails)."""
    from opsagent.config import load_config
    from opsagent.rules import ExportOptions, render_rules

    expected = render_rules(load_config(None, env={}), ExportOptions(only=("OpsagentDown",)))
    assert (PROM_DIR / "opsagent-rules.yml").read_text() == expected, (
        "deploy/prometheus/opsagent-rules.yml drifted from `opsagent rules export --only OpsagentDown`; regenerate:\n"
        "  opsagent rules export --only OpsagentDown > deploy/prometheus/opsagent-rules.yml"
    )


def test_ecs_discovery_keeps_opsagent_sidecars_and_labels_them(prometheus: PrometheusServer) -> None:
    """A file_sd target labelled as an opsagent sidecar is scraped with cluster and task family labels; other exporters are dropped."""
    deadline = time.monotonic() + 20
    while True:
        data = requests.get(f"{prometheus.url}/api/v1/targets", timeout=5).json()["data"]
        ecs = [t for t in data["activeTargets"] if t["scrapePool"] == "opsagent-ecs"]
        if ecs or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(ecs) == 1, data
    labels = ecs[0]["labels"]
    assert labels["cluster"] == "prod" and labels["task_family"] == "api-with-opsagent"
    assert labels["job"] == "opsagent"  # OpsagentDown's selector covers ECS sidecars too
    assert not any(k.startswith("PROMETHEUS_EXPORTER_") for k in labels)
    assert ecs[0]["scrapeUrl"].endswith("/metrics")
    dropped = [t for t in data["droppedTargets"] if t["discoveredLabels"].get("PROMETHEUS_EXPORTER_JOB_NAME") == "node"]
    assert dropped


def test_prometheus_loads_the_watcher_rule(prometheus: PrometheusServer) -> None:
    """The running Prometheus loaded the shipped rule file: OpsagentDown and no copy of the agent's own alarms."""
    groups = requests.get(f"{prometheus.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    names = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert names == {"OpsagentDown"}


# -- Grafana -------------------------------------------------------------------------------------


def dashboard_exprs() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def test_the_dashboard_shows_checks_alerts_rpo_rto_and_backup_sizes() -> None:
    """The dashboard has panels for checks, firing alerts, RPO, RTO (drill duration) and backup sizes, on a templated data source."""
    board = json.loads(DASHBOARD.read_text())
    exprs = " ".join(e for _, e in dashboard_exprs())
    for metric in ("opsagent_check_value", "opsagent_check_up", "opsagent_alert_firing", "opsagent_rpo_seconds",
                   "opsagent_drill_last_duration_seconds", "opsagent_backup_size_bytes"):
        assert metric in exprs, metric
    assert board["uid"] and {v["name"] for v in board["templating"]["list"]} >= {"datasource", "instance"}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_the_dashboard_only_queries_metrics_the_agent_exports() -> None:
    """Every metric a panel queries is one the agent exports, so no panel stays empty because of a typo."""
    for title, expr in dashboard_exprs():
        for name in re.findall(r"\bopsagent_[a-z0-9_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name) if name.startswith("opsagent_check_duration") else name
            assert base in KNOWN_METRICS, f"{title}: {name}"


def test_every_dashboard_query_is_valid_promql(prometheus: PrometheusServer) -> None:
    """Prometheus evaluates every panel's query without a parse error."""
    for title, expr in dashboard_exprs():
        response = requests.get(f"{prometheus.url}/api/v1/query",
                                params={"query": expr.replace("$instance", ".*")}, timeout=5)
        assert response.status_code == 200, f"{title}: {response.text}"


# -- Alertmanager --------------------------------------------------------------------------------


def routes(*labels: str) -> str:
    out = run("amtool", "config", "routes", "test", f"--config.file={AM_CONFIG}", *labels)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_amtool_accepts_the_alertmanager_config() -> None:
    """`amtool check-config` passes on alertmanager.yml."""
    out = run("amtool", "check-config", str(AM_CONFIG))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_critical_pages_pagerduty_and_warnings_go_to_slack() -> None:
    """A critical alert routes to PagerDuty (and the Slack channel), a warning to Slack only."""
    assert routes("alertname=HighMemory", "severity=critical", "check=memory", "target=task") == \
        "pagerduty-critical,slack-warnings"
    assert routes("alertname=HighCPU", "severity=warning", "check=cpu", "target=task") == "slack-warnings"


def test_the_watchdog_goes_to_the_dead_mans_switch_only_and_opsagent_down_pages() -> None:
    """The Watchdog heartbeat routes to the dead-man's-switch receiver and nowhere else; OpsagentDown pages like any critical alert."""
    assert routes("alertname=Watchdog", "severity=none", "agent=api-sidecar") == "deadmans-switch"
    assert routes("alertname=OpsagentDown", "severity=critical", "agent=api-sidecar", "job=opsagent") == \
        "pagerduty-critical,slack-warnings"


class _DeployedAlertmanager(AlertmanagerServer):
    """A private Alertmanager running the shipped config, secrets files in its temp dir, sinks on loopback."""

    def start(self) -> _DeployedAlertmanager:
        secrets = self.dir / "secrets"
        secrets.mkdir()
        (secrets / "slack_webhook_url").write_text(f"http://127.0.0.1:{closed_port()}/slack")
        (secrets / "pagerduty_routing_key").write_text("example-routing-key")
        config = AM_CONFIG.read_text().replace("/etc/alertmanager/secrets", str(secrets))
        config_file = self.dir / "alertmanager.yml"
        config_file.write_text(config)
        (self.dir / "data").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [shutil.which("prometheus-alertmanager") or "alertmanager", f"--config.file={config_file}",
             f"--storage.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--cluster.listen-address=", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_http(f"{self.url}/-/ready")
        return self


def alert(name: str, severity: str, check: str, target: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "labels": {"alertname": name, "severity": severity, "check": check, "target": target, "agent": "api-sidecar"},
        "annotations": {"summary": f"{name} {target}"},
        "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=10)).isoformat(),
    }


def test_target_down_inhibits_value_alarms_of_the_same_target_only() -> None:
    """With TargetDown firing for a database, its connection alarm is inhibited while another database's still notifies."""
    server = _DeployedAlertmanager().start()
    try:
        response = requests.post(f"{server.url}/api/v2/alerts", timeout=5, json=[
            alert("TargetDown", "critical", "postgres", "main"),
            alert("PostgresConnectionsExhausted", "critical", "postgres", "main"),
            alert("PostgresConnectionsExhausted", "critical", "postgres", "reporting"),
        ])
        assert response.status_code == 200

        def settled(alerts: list[dict[str, Any]]) -> bool:
            return len(alerts) == 3 and any(a["status"]["inhibitedBy"] for a in alerts)

        alerts = server.wait_for(settled)
        state = {(a["labels"]["alertname"], a["labels"]["target"]): a["status"] for a in alerts}
        assert state[("PostgresConnectionsExhausted", "main")]["inhibitedBy"]
        assert state[("PostgresConnectionsExhausted", "main")]["state"] == "suppressed"
        assert not state[("PostgresConnectionsExhausted", "reporting")]["inhibitedBy"]
        assert not state[("TargetDown", "main")]["inhibitedBy"]
    finally:
        server.cleanup()
