"""`make run`'s configuration (deploy/local.yaml) starts and shows this host's CPU and memory within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from opsagent_testing.servers import free_port
from tests.fixtures.agent import poll

LOCAL = Path(__file__).resolve().parent.parent / "deploy" / "local.yaml"


def _metrics(url: str) -> str:
    try:
        r = requests.get(url + "/metrics", timeout=2)
        return r.text if r.status_code == 200 else ""
    except requests.RequestException:
        return ""


def test_local_config_starts_and_reports_cpu_and_memory(tmp_path: Path) -> None:
    """The daemon with deploy/local.yaml serves host CPU and memory values, and file backups are configured."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSAGENT_")}
    env["OPSAGENT_AGENT__LISTEN"] = f"127.0.0.1:{port}"  # the test must not take the real 9108
    proc = subprocess.Popen([sys.executable, "-m", "opsagent", "run", "--config", str(LOCAL)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        body = poll(lambda: (m := _metrics(url)) and 'opsagent_check_value{check="cpu",target="task"}' in m
                    and 'opsagent_check_value{check="memory",target="task"}' in m and m, timeout=20)
        assert 'opsagent_rpo_seconds{kind="postgres",target="local"}' in body
        status = requests.get(url + "/status", timeout=5).json()
        assert status["backups"]["repository"] == "file://./var/backups/primary"
        assert (tmp_path / "var" / "state").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=25)
    assert proc.returncode == 0, out[-2000:]
