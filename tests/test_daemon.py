"""The daemon: one job per target, deadlines, isolation of hung targets, clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests
import yaml

from opsagent_testing.servers import HangingServer, free_port, refused_port
from tests.fixtures.agent import RunningAgent, poll

Start = Callable[..., RunningAgent]


def test_a_hung_target_is_down_at_its_deadline_and_others_keep_their_interval(
        start_agent: Start, hanging_server: HangingServer) -> None:
    """A target that accepts TCP and never answers is reported down within its deadline while memory keeps updating."""
    a = start_agent({"checks": {
        "memory": {"interval": "1s"},
        "redis": [{"name": "hung", "url": f"redis://127.0.0.1:{hanging_server.port}/0", "interval": "1s", "timeout": "2s"}],
        "postgres": [{"name": "hungpg", "dsn": f"postgresql://u:p@127.0.0.1:{hanging_server.port}/db",
                      "interval": "1s", "timeout": "2s"}],
    }})
    row = poll(lambda: (r := a.check_row("redis", "hung")) and r["up"] is False and r, timeout=10)
    assert row["error"]
    pg = poll(lambda: (r := a.check_row("postgres", "hungpg")) and r["up"] is False and r, timeout=10)
    assert pg["error"]
    # Over the next 4 s the memory check keeps running every second.
    first = a.check_row("memory", "task")["last_run"]  # type: ignore[index]
    later = poll(lambda: (r := a.check_row("memory", "task")) and r["last_run"] >= first + 3 and r, timeout=8)
    assert later["up"] is True
    body = a.get("/metrics").text
    assert 'opsagent_check_up{check="redis",target="hung"} 0.0' in body


def test_scheduler_counts_runs_per_target(start_agent: Start) -> None:
    """Each target is its own job and its runs are counted in /metrics."""
    a = start_agent({"checks": {"memory": {"interval": "1s"}}})
    poll(lambda: 'opsagent_scheduler_runs_total{check="memory",target="task"} 3.0' in a.get("/metrics").text
         or 'opsagent_scheduler_runs_total{check="memory",target="task"} 4.0' in a.get("/metrics").text, timeout=10)


def _run_daemon(tmp_path: Path, config: dict[str, object]) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    config = {"agent": {"listen": f"127.0.0.1:{port}", "state_dir": str(tmp_path / "state")}, **config}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSAGENT_")}
    proc = subprocess.Popen([sys.executable, "-m", "opsagent", "run", "--config", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    return proc, f"http://127.0.0.1:{port}"


def test_sigterm_stops_cleanly_with_a_hung_check_in_flight(tmp_path: Path, hanging_server: HangingServer) -> None:
    """SIGTERM while a check hangs (deadline 60 s) stops the daemon with status 0 well within 25 s."""
    proc, url = _run_daemon(tmp_path, {"checks": {
        "redis": [{"name": "hung", "url": f"redis://127.0.0.1:{hanging_server.port}/0", "interval": "30s", "timeout": "60s"}],
    }})
    try:
        poll(lambda: _ok(url + "/healthz"), timeout=20)
        time.sleep(0.5)  # let the hung check get under way
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=25)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert took < 25
    assert '"event": "agent_stopped"' in out
    assert "Traceback" not in out


def test_sigint_stops_cleanly(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) stops the daemon with status 0."""
    proc, url = _run_daemon(tmp_path, {})
    try:
        poll(lambda: _ok(url + "/readyz"), timeout=20)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=25)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "Traceback" not in out


def test_unreachable_targets_are_reported_not_fatal(tmp_path: Path) -> None:
    """The daemon starts and serves even when every database target is unreachable."""
    with refused_port() as dead:
        _unreachable_targets_are_reported(tmp_path, dead)


def _unreachable_targets_are_reported(tmp_path: Path, dead: int) -> None:
    proc, url = _run_daemon(tmp_path, {"checks": {
        "postgres": [{"name": "db", "dsn": f"postgresql://x@127.0.0.1:{dead}/x", "interval": "1s"}],
        "redis": [{"name": "cache", "url": f"redis://127.0.0.1:{dead}/0", "interval": "1s"}],
    }})
    down: set[tuple[str, bool]] = set()
    not_ready: str | None = None
    try:
        poll(lambda: _ok(url + "/readyz"), timeout=20)
        status = requests.get(url + "/status", timeout=5).json()
        down = {(c["check"], c["up"]) for c in status["checks"]}
    except AssertionError as exc:
        not_ready = str(exc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=25)
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
            raise AssertionError(f"daemon did not stop within 25 s:\n{out[-3000:]}") from None
    assert not_ready is None, f"{not_ready}:\n{out[-3000:]}"
    assert ("postgres", False) in down and ("redis", False) in down and ("memory", True) in down, (down, out[-3000:])
    assert proc.returncode == 0, out[-3000:]


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_runner_timeouts_and_skips_are_counted_per_target(tmp_path: Path) -> None:
    """Runs abandoned at their deadline and runs refused behind a hung one appear as per-target counters."""
    from opsagent.runtime.agent import Agent
    from tests.fixtures.agent import make_settings

    agent = Agent(make_settings(tmp_path, {}))
    runner = agent.runners[("memory", "task")]
    runner.abandoned_total, runner.skipped_total = 3, 2
    stats = agent.scheduler_stats()
    assert stats["opsagent_check_timeouts_total"][("memory", "task")] == 3
    assert stats["opsagent_scheduler_skipped_runs_total"][("memory", "task")] == 2
    body = agent.exposition.body(False).decode()
    assert 'opsagent_check_timeouts_total{check="memory",target="task"} 3.0' in body
