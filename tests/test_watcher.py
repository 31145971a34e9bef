"""Watching the watcher (SPEC §9.1) with the real parts: a `python -m opsagent run` subprocess, a private
Prometheus scraping it with the exported OpsagentDown rule, and a private Alertmanager running the shipped
routes and inhibit rules (timers compressed, receivers pointed at a local webhook)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from opsagent.config import load_config
from opsagent.rules import export_options, render_rules
from opsagent_testing.alertmanager import AlertmanagerServer, PrometheusServer, Receiver
from opsagent_testing.servers import free_port, stop_process
from tests.fixtures.agent import poll

ROOT = Path(__file__).resolve().parents[1]
AM_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
TASK = ROOT / "deploy" / "ecs" / "task-definition.json"
# notify.repeat_interval: the agent's alerts stay valid 3 x 10 s in Alertmanager after each send, so the last
# one sent before the kill outlives OpsagentDown's 3 s `for` by 20 s or more (the margin 1m vs 15m gives in production).
REPEAT_SECONDS = 20  # the dead agent's endsAt is 3 of these ahead: margin for Prometheus to see it gone on a loaded 2-core CI machine (10 s failed once in a full run)


def compressed_alertmanager_config(webhook: str) -> str:
    """The shipped alertmanager.yml with its routes and inhibit rules intact, timers in seconds, every receiver a local webhook."""
    config = yaml.safe_load(AM_CONFIG.read_text())
    config["global"] = {"resolve_timeout": "5m"}

    def shrink(route: dict[str, Any]) -> None:
        for key, value in (("group_wait", "0s"), ("group_interval", "1s"), ("repeat_interval", "1h")):
            if key in route:
                route[key] = value
        for child in route.get("routes", []):
            shrink(child)

    shrink(config["route"])
    config["receivers"] = [{"name": r["name"], "webhook_configs": [
        {"url": f"{webhook}/{r['name']}", "send_resolved": _sends_resolved(r)}]} for r in config["receivers"]]
    return yaml.safe_dump(config, sort_keys=False)


def _sends_resolved(receiver: dict[str, Any]) -> bool:
    configs = [c for key, value in receiver.items() if key.endswith("_configs") for c in value]
    return any(c.get("send_resolved", True) for c in configs)


class _ShippedAlertmanager(AlertmanagerServer):
    def __init__(self, config: str) -> None:
        super().__init__()
        self.config_text = config

    def start(self) -> _ShippedAlertmanager:
        (self.dir / "alertmanager.yml").write_text(self.config_text)
        (self.dir / "data").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            ["prometheus-alertmanager", f"--config.file={self.dir / 'alertmanager.yml'}",
             f"--storage.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--cluster.listen-address=", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from opsagent_testing.alertmanager import _wait_http

        _wait_http(f"{self.url}/-/ready")
        return self


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    server = Receiver()
    try:
        yield server
    finally:
        server.close()


def _names(alerts: list[dict[str, Any]]) -> set[str]:
    return {a["labels"]["alertname"] for a in alerts}


def _notifications(webhook: Receiver) -> list[tuple[str, str, str]]:
    """Every (receiver, status, alertname) the webhook was sent, in arrival order."""
    out = []
    for request in list(webhook.requests):
        for a in request["body"].get("alerts", []):
            out.append((request["path"].strip("/"), a["status"], a["labels"]["alertname"]))
    return out


def _prometheus_sees_the_agent_alive(prom: PrometheusServer) -> bool:
    """Prometheus has an Alertmanager to send to, scraped the agent up, and holds no OpsagentDown from its own start."""
    response = requests.get(f"{prom.url}/api/v1/alertmanagers", timeout=5)
    if not response.json()["data"]["activeAlertmanagers"]:
        return False
    up = prom.query('up{job="opsagent"}')
    alerts = requests.get(f"{prom.url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return bool(up) and up[0]["value"][1] == "1" and not alerts


def test_kill_9_of_the_agent_mid_incident_pages_opsagent_down_and_never_resolves_the_incident(
        tmp_path: Path, webhook: Receiver) -> None:
    """After kill -9 of a paging agent, OpsagentDown goes active within a minute and stays past the agent's last endsAt, no RESOLVED of the ongoing incident is ever sent; Watchdog was there, routed to the dead-man's switch, while the agent ran."""
    am = _ShippedAlertmanager(compressed_alertmanager_config(webhook.url)).start()
    port = free_port()
    config = tmp_path / "opsagent.yaml"
    config.write_text(json.dumps({
        "agent": {"name": "watched", "listen": f"127.0.0.1:{port}", "state_dir": str(tmp_path / "state")},
        "checks": {"memory": {"interval": "1s"}},
        # Any process uses more than 0.1 % of its memory limit: an incident that is still going on when it dies.
        "alerts": {"HighMemory": {"threshold": "0.1%", "for": "0s"}},
        "notify": {"alertmanager_url": am.url, "repeat_interval": f"{REPEAT_SECONDS}s", "timeout": "2s"},
    }))
    rules = render_rules(load_config(config, env={}), export_options(down_for="3s", only=["OpsagentDown"]))
    prom = PrometheusServer(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [rules.yml]\n"
        f"alerting: {{alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:{am.port}']}}]}}]}}\n"
        f"scrape_configs: [{{job_name: opsagent, scrape_timeout: 1s, static_configs: [{{targets: ['127.0.0.1:{port}']}}]}}]\n",
        rule_files={"rules.yml": rules})
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSAGENT_")}
    agent = subprocess.Popen([sys.executable, "-m", "opsagent", "run", "--config", str(config)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        prom.start()
        running = am.wait_for(lambda a: {"HighMemory", "Watchdog"} <= _names(a), timeout=30)
        assert "OpsagentDown" not in _names(running)
        [watchdog] = [a for a in running if a["labels"]["alertname"] == "Watchdog"]
        assert watchdog["labels"] == {"alertname": "Watchdog", "severity": "none", "agent": "watched"}
        assert [r["name"] for r in watchdog["receivers"]] == ["deadmans-switch"]

        # Mid-incident means a monitoring stack that is already running: Prometheus has scraped the live agent
        # and knows its Alertmanager. (Right after its start, Prometheus drops the alerts it fires before its
        # Alertmanager discovery settles, about 5 s, and re-sends them only after --rules.alert.resend-delay,
        # 1 m: a kill in that window paged OpsagentDown a minute late, after the dead agent's alerts expired.)
        poll(lambda: _prometheus_sees_the_agent_alive(prom), timeout=60)
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        killed_at = time.monotonic()
        down = am.wait_for(lambda a: "OpsagentDown" in _names(a), timeout=60)
        assert time.monotonic() - killed_at < 60  # "within 2 minutes", compressed
        assert next(a for a in down if a["labels"]["alertname"] == "OpsagentDown")["labels"]["agent"] == "watched"
        # Outlast the dead agent's last endsAt (3 repeat intervals after its last send), plus a flush.
        deadline = killed_at + 3 * REPEAT_SECONDS + 4
        while time.monotonic() < deadline:
            assert "OpsagentDown" in _names(am.alerts()), "OpsagentDown must stay while the agent is dead"
            time.sleep(0.5)
        sent = poll(lambda: _notifications(webhook) if any(n[2] == "OpsagentDown" for n in _notifications(webhook))
                    else None, timeout=10)
        assert ("pagerduty-critical", "firing", "HighMemory") in sent
        first_down = next(i for i, n in enumerate(sent) if n[2] == "OpsagentDown")
        assert not [n for n in sent[:first_down] if n[1] == "resolved"], "a RESOLVED went out before OpsagentDown"
        # The dead agent's HighMemory expired in Alertmanager meanwhile (its endsAt passed): held by the inhibit rule.
        assert "HighMemory" not in _names(am.alerts(active="true", silenced="false", inhibited="false"))
        assert not [n for n in _notifications(webhook) if n[1] == "resolved"], "the ongoing incident was resolved"
        assert "OpsagentDown" in _names(am.alerts())
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
        prom.cleanup()
        stop_process(am.proc)
        am.cleanup()


def test_the_sidecar_restarts_by_itself_and_is_not_essential() -> None:
    """ECS restarts a crashed sidecar (restartPolicy, a clean exit 0 excepted) without it being essential to the task."""
    task = json.loads(TASK.read_text())
    [agent] = [c for c in task["containerDefinitions"] if c["name"] == "opsagent"]
    assert agent["essential"] is False
    policy = agent["restartPolicy"]
    assert policy["enabled"] is True and policy["ignoredExitCodes"] == [0]
    assert 60 <= policy["restartAttemptPeriod"] <= 1800  # ECS's accepted range
