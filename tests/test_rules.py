"""`opsagent rules export`: Prometheus alerting rules equivalent to the configured alarms."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from opsagent.alerts.catalog import ALARMS
from opsagent.config import Settings
from opsagent.rules import SLO_ALARMS, render_rules

RB = "https://rb.example/runbooks/"


def _settings() -> Settings:
    return Settings(
        agent={"name": "api", "runbook_base_url": RB},
        alerts={"RedisMemoryHigh": {"threshold": "60%", "for": "2m", "severity": "critical"},
                "HighMemory": {"enabled": False}},
        backup={"rpo": "30m", "rto": "1h"},
    )


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_exported_rules_pass_promtool_check(tmp_path: Path) -> None:
    """The exported file passes `promtool check rules`, with one rule per enabled alarm."""
    (tmp_path / "rules.yml").write_text(render_rules(_settings()))
    checked = _promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    names = [r["alert"] for r in yaml.safe_load((tmp_path / "rules.yml").read_text())["groups"][0]["rules"]]
    assert names == [n for n in ALARMS if n != "HighMemory" and n not in SLO_ALARMS]  # no slo configured


def test_exported_rules_carry_overrides_labels_and_runbooks() -> None:
    """Overridden threshold, `for` and severity, the agent label and runbook links appear in the rules."""
    rules = {r["alert"]: r for r in yaml.safe_load(render_rules(_settings()))["groups"][0]["rules"]}
    redis = rules["RedisMemoryHigh"]
    assert redis["expr"].endswith("> 0.6") and redis["for"] == "2m"
    assert redis["labels"] == {"severity": "critical", "agent": "api", "check": "redis"}
    assert set(redis["annotations"]) == {"summary", "description", "value", "threshold", "runbook_url"}
    assert redis["annotations"]["runbook_url"] == RB + "RedisMemoryHigh.md"
    assert rules["BackupStale"]["expr"].endswith("> 1800")


_UNIT = """\
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # Two sidecars report the same CPU reading of target "task": one alert, not two.
      - series: 'opsagent_check_value{check="cpu",target="task",instance="a:9108"}'
        values: '0.5 0.9x10'
      - series: 'opsagent_check_value{check="cpu",target="task",instance="b:9108"}'
        values: '0.5 0.85x10'
      - series: 'opsagent_check_value{check="redis",target="cache",instance="a:9108"}'
        values: '0.65x10'
      - series: 'opsagent_check_up{check="postgres",target="main",instance="a:9108"}'
        values: '1 0x10'
      - series: 'opsagent_rpo_seconds{kind="pg_dump",target="main",instance="a:9108"}'
        values: '600+600x10'
      - series: 'opsagent_backup_last_run_success{kind="pg_dump",target="main",instance="a:9108"}'
        values: '1 0x10'
      - series: 'opsagent_drill_last_duration_seconds{target="main",instance="a:9108"}'
        values: '4000x10'
      - series: 'opsagent_drill_last_success{target="main",instance="a:9108"}'
        values: '1x10'
    alert_rule_test:
      - eval_time: 5m
        alertname: HighCPU
        exp_alerts: []
      - eval_time: 6m
        alertname: HighCPU
        exp_alerts:
          - exp_labels: {alertname: HighCPU, severity: warning, agent: api, check: cpu, target: task}
            exp_annotations:
              summary: CPU utilisation of task is high
              description: 'CPU utilisation of task is high (cpu/task on agent api): value 90% > threshold 80%.'
              value: '90%'
              threshold: '80%'
              runbook_url: https://rb.example/runbooks/HighCPU.md
      - eval_time: 1m
        alertname: RedisMemoryHigh
        exp_alerts: []
      - eval_time: 3m
        alertname: RedisMemoryHigh
        exp_alerts:
          - exp_labels: {alertname: RedisMemoryHigh, severity: critical, agent: api, check: redis, target: cache}
            exp_annotations:
              summary: Redis cache memory usage is high
              description: 'Redis cache memory usage is high (redis/cache on agent api): value 65% > threshold 60%.'
              value: '65%'
              threshold: '60%'
              runbook_url: https://rb.example/runbooks/RedisMemoryHigh.md
      - eval_time: 2m
        alertname: TargetDown
        exp_alerts:
          - exp_labels: {alertname: TargetDown, severity: critical, agent: api, check: postgres, target: main}
            exp_annotations:
              summary: main does not answer its check
              description: 'The postgres target main does not answer its check (agent api).'
              value: down
              threshold: up
              runbook_url: https://rb.example/runbooks/TargetDown.md
      - eval_time: 2m
        alertname: BackupStale
        exp_alerts: []
      - eval_time: 3m
        alertname: BackupStale
        exp_alerts:
          - exp_labels: {alertname: BackupStale, severity: critical, agent: api, check: backup, kind: pg_dump, target: main}
            exp_annotations:
              summary: Newest complete backup of main is older than the RPO
              description: 'Newest complete backup of main is older than the RPO (backup/main on agent api): value 40m 0s > threshold 30m.'
              value: '40m 0s'
              threshold: '30m'
              runbook_url: https://rb.example/runbooks/BackupStale.md
      - eval_time: 1m
        alertname: BackupFailed
        exp_alerts:
          - exp_labels: {alertname: BackupFailed, severity: warning, agent: api, check: backup_run, kind: pg_dump, target: main}
            exp_annotations:
              summary: The last backup or replication run of main failed
              description: 'The last backup or replication run of main failed (backup_run/main on agent api); the agent''s status page and its own alert give the reason.'
              value: failed
              threshold: ok
              runbook_url: https://rb.example/runbooks/BackupFailed.md
      - eval_time: 1m
        alertname: RestoreDrillFailed
        exp_alerts:
          - exp_labels: {alertname: RestoreDrillFailed, severity: warning, agent: api, check: drill, target: main}
            exp_annotations:
              summary: The last restore drill of main failed or exceeded the RTO
              description: 'The last restore drill of main failed or exceeded the RTO (drill/main on agent api); the agent''s status page and its own alert give the reason.'
              value: failed
              threshold: ok
              runbook_url: https://rb.example/runbooks/RestoreDrillFailed.md
      - eval_time: 10m
        alertname: HighMemory
        exp_alerts: []
"""


def test_exported_rules_fire_like_the_agent_in_promtool_unit_tests(tmp_path: Path) -> None:
    """Under `promtool test rules` the exported rules fire after `for`, once per target, with the agent's labels."""
    (tmp_path / "rules.yml").write_text(render_rules(_settings()))
    (tmp_path / "test.yml").write_text(_UNIT)
    tested = _promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_rules_export_command_prints_the_rules(tmp_path: Path) -> None:
    """`opsagent rules export --config FILE` prints the rule file for that config and exits 0."""
    config = tmp_path / "opsagent.yaml"
    config.write_text("agent: {name: cli-agent}\nalerts: {HighCPU: {threshold: 0.5}}\n")
    done = subprocess.run([sys.executable, "-m", "opsagent", "rules", "export", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rules = {r["alert"]: r for r in yaml.safe_load(done.stdout)["groups"][0]["rules"]}
    assert rules["HighCPU"]["expr"].endswith("> 0.5") and rules["HighCPU"]["labels"]["agent"] == "cli-agent"


def test_a_real_prometheus_fires_the_exported_rules_on_agent_metrics(prometheus_factory: Any) -> None:
    """A private Prometheus scraping agent-style metrics with the exported rules loaded fires the alert."""
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    from opsagent_testing.servers import free_port

    registry = CollectorRegistry()
    Gauge("opsagent_check_value", "v", ["check", "target"], registry=registry).labels("cpu", "task").set(0.9)
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        settings = Settings(agent={"name": "api"}, alerts={"HighCPU": {"threshold": 0.5, "for": "0s"}})
        config = (
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "rule_files: [rules.yml]\n"
            f"scrape_configs: [{{job_name: agent, static_configs: [{{targets: ['127.0.0.1:{port}']}}]}}]\n"
        )
        prom = prometheus_factory(config, rule_files={"rules.yml": render_rules(settings)})
        deadline = time.monotonic() + 30
        while True:
            firing = prom.query('ALERTS{alertname="HighCPU",alertstate="firing"}')
            if firing:
                break
            assert time.monotonic() < deadline, "HighCPU never fired in Prometheus"
            time.sleep(0.2)
        labels = firing[0]["metric"]
        assert labels["target"] == "task" and labels["agent"] == "api" and labels["severity"] == "warning"
        assert "instance" not in labels  # several sidecars reporting one target give one alert
    finally:
        server.shutdown()


def test_rules_export_includes_opsagent_down_over_the_named_job(tmp_path: Path) -> None:
    """`rules export --job NAME --down-for D` adds OpsagentDown over up{job=NAME} with that `for`; promtool accepts it."""
    config = tmp_path / "opsagent.yaml"
    config.write_text("agent: {name: cli-agent}\n")
    done = subprocess.run([sys.executable, "-m", "opsagent", "rules", "export", "--config", str(config),
                           "--job", "sidecars", "--down-for", "30s"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rules = {r["alert"]: r for g in yaml.safe_load(done.stdout)["groups"] for r in g["rules"]}
    down = rules["OpsagentDown"]
    assert down["expr"] == 'max without (instance) (up{job="sidecars"}) == 0 or absent(up{job="sidecars"})'
    assert down["for"] == "30s"
    assert down["labels"] == {"severity": "critical", "agent": "cli-agent"}
    (tmp_path / "rules.yml").write_text(done.stdout)
    checked = _promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_rules_export_rejects_an_unknown_only_name_with_exit_2(tmp_path: Path) -> None:
    """`rules export --only Typo` exits 2 and names the known alerts instead of printing an empty file."""
    done = subprocess.run([sys.executable, "-m", "opsagent", "rules", "export", "--only", "OpsagentDwn"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert "OpsagentDwn" in done.stderr and "OpsagentDown" in done.stderr
