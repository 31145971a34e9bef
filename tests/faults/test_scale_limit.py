"""Issue 21: one agent runs at most MAX_TARGETS targets; at that limit it still scrapes and stops within SPEC."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from opsagent.config import ConfigError, load_config
from opsagent.config.targets import MAX_TARGETS
from opsagent_testing.servers import HangingServer, closed_port, free_port
from tests.fixtures.agent import poll

HANGING = 12


def _redis_targets(count: int, port: int, prefix: str) -> list[dict[str, Any]]:
    return [{"name": f"{prefix}{i}", "url": f"redis://127.0.0.1:{port}/0"} for i in range(count)]


def test_more_targets_than_the_limit_is_a_config_error(tmp_path: Path) -> None:
    """One target beyond the limit fails validation naming `checks`, the count and the limit, before anything starts."""
    path = tmp_path / "c.yaml"
    # cpu and memory count too: MAX_TARGETS - 1 redis targets plus those two is one over.
    path.write_text(yaml.safe_dump({"checks": {"redis": _redis_targets(MAX_TARGETS - 1, 1, "r")}}))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, env={})
    [problem] = excinfo.value.problems
    assert problem.startswith("checks:") and f"{MAX_TARGETS + 1} enabled targets" in problem
    assert f"at most {MAX_TARGETS} per agent" in problem
    path.write_text(yaml.safe_dump({"checks": {"redis": _redis_targets(MAX_TARGETS - 2, 1, "r")}}))
    assert len(load_config(path, env={}).checks.targets()) == MAX_TARGETS


def test_at_the_limit_metrics_answer_and_sigterm_stops_in_time(tmp_path: Path, hanging_server: HangingServer) -> None:
    """With MAX_TARGETS targets (some hanging) /metrics answers within a scrape timeout and SIGTERM stops the daemon inside 25 s."""
    dead = closed_port()
    redis = _redis_targets(MAX_TARGETS - 2 - HANGING, dead, "dead") + _redis_targets(HANGING, hanging_server.port, "hung")
    port = free_port()
    path = tmp_path / "opsagent.yaml"
    path.write_text(yaml.safe_dump({"agent": {"listen": f"127.0.0.1:{port}", "state_dir": str(tmp_path / "state")},
                                    "checks": {"redis": redis}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSAGENT_")}
    log = open(tmp_path / "agent.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "opsagent", "run", "--config", str(path)], stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: _ok(url + "/healthz"), timeout=30)
        # Scrapes during the first round (every target starting at once) and after many results are in.
        # The start burst (every target's first run at once) can hold a loaded 2-core machine for seconds: the
        # first scrape must answer within a scrape timeout once during the first round (one full run saw a 10 s
        # timeout there under load; see the issue-21 note), the second one below strictly.
        poll(lambda: _metrics_ok(url), timeout=30, interval=0.5)
        poll(lambda: _up_series(url) >= MAX_TARGETS // 8, timeout=30, interval=0.5)
        assert requests.get(url + "/metrics", timeout=10).status_code == 200
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=25)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    log.seek(0)
    out = log.read()
    log.close()
    assert proc.returncode == 0, out[-2000:]
    assert took < 25
    assert '"event": "agent_stopped"' in out and "Traceback" not in out


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _metrics_ok(url: str) -> bool:
    try:
        return requests.get(url + "/metrics", timeout=10).status_code == 200
    except requests.RequestException:
        return False


def _up_series(url: str) -> int:
    try:
        body = requests.get(url + "/metrics", timeout=10).text
    except requests.RequestException:
        return 0
    return sum(line.startswith('opsagent_check_up{check="redis"') for line in body.splitlines())
