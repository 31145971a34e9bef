"""Soak: one hour of operation, compressed, with 50 targets of which ten flap.

Runs only under `make soak` (OPSAGENT_SOAK=1; `make test` deselects it in
conftest.py). The daemon runs as a real process (`opsagent run`) with 50
targets on a 1 s interval instead of the usual 15 s, so 240 s of wall time is
240 rounds: one hour of a 15 s schedule. Ten targets flap between healthy,
refused, reset, garbage and hung through :class:`FaultProxy`; TargetDown pages
go to a local Slack receiver. RSS, open file descriptors and threads of the
agent process are compared in a settled state (every target healthy for 8 s)
after a 45 s warm-up and after the hour: RSS within SOAK_RSS_MIB, file
descriptors and threads within SOAK_FDS / SOAK_THREADS. While flapping they are
sampled every 5 s for the record (hung targets legitimately hold sockets).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from opsagent_testing.alertmanager import Receiver
from opsagent_testing.proxy import FaultProxy
from opsagent_testing.servers import PostgresServer, RedisServer, free_port
from tests.faults.evidence import (
    PG_PASSWORD,
    REDIS_PASSWORD,
    SLACK_PATH,
    figure,
    record,
)
from tests.fixtures.agent import poll

SOAK_SECONDS = float(os.environ.get("OPSAGENT_SOAK_SECONDS", "240"))
WARMUP_SECONDS = 45.0
SETTLE_SECONDS = 8.0
SOAK_RSS_MIB = 16.0
SOAK_FDS = 4
SOAK_THREADS = 4


def _runs(url: str) -> float:
    metrics = requests.get(url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("opsagent_scheduler_runs_total{"))


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.timeout(900)  # the suite-wide limit is 300 s; the soak is five and a half minutes by design
def test_soak_one_compressed_hour_with_fifty_flapping_targets_keeps_memory_and_fds_flat(tmp_path: Path) -> None:
    """An hour of 15 s rounds (compressed to 1 s) over 50 targets, ten of them flapping, leaves the agent's RSS, open file descriptors and threads flat."""
    pg = PostgresServer(max_connections=120, password=PG_PASSWORD).start()
    redis = RedisServer(password=REDIS_PASSWORD).start()
    slack = Receiver()
    proxies: list[FaultProxy] = []
    proc: subprocess.Popen[str] | None = None
    try:
        checks: dict[str, list[dict[str, str]]] = {"postgres": [], "redis": []}
        for i in range(30):
            p = FaultProxy(pg.port)
            proxies.append(p)
            checks["postgres"].append({"name": f"db{i}", "interval": "1s", "timeout": "1s",
                                       "dsn": f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{p.port}/postgres"})
        for i in range(20):
            p = FaultProxy(redis.port)
            proxies.append(p)
            checks["redis"].append({"name": f"cache{i}", "interval": "1s", "timeout": "1s",
                                    "url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{p.port}/0"})
        config = {
            "agent": {"name": "soak", "listen": f"127.0.0.1:{free_port()}", "state_dir": str(tmp_path / "state"),
                      "log_level": "warning"},
            "checks": {"cpu": {"interval": "1s"}, "memory": {"interval": "1s"}, **checks},
            "alerts": {"TargetDown": {"for": "0s"}},
            "notify": {"slack_webhook_url": slack.url + SLACK_PATH, "timeout": "2s"},
        }
        path = tmp_path / "opsagent.yaml"
        path.write_text(yaml.safe_dump(config))
        url = f"http://{config['agent']['listen']}"
        log = open(tmp_path / "agent.log", "w")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPSAGENT_")}  # OPSAGENT_SOAK is ours
        proc = subprocess.Popen([sys.executable, "-m", "opsagent", "run", "--config", str(path)], stdout=log,
                                stderr=subprocess.STDOUT, text=True, env=env)
        poll(lambda: _ok(url + "/readyz"), timeout=60, interval=0.5)
        agent = psutil.Process(proc.pid)
        flapping = proxies[::5]  # ten of fifty: postgres and redis alike
        rng = random.Random(1)
        modes = ("pass", "pass", "refuse", "reset", "garbage", "blackhole")
        samples: list[tuple[float, int, int, int]] = []

        def settled() -> tuple[int, int, int]:
            """All targets healthy again for a while: what the agent holds when nothing is in flight."""
            for p in flapping:
                p.set_mode("pass")
            time.sleep(SETTLE_SECONDS)
            return agent.memory_info().rss, agent.num_fds(), agent.num_threads()

        def flap(seconds: float, sample: bool) -> None:
            started = time.monotonic()
            next_flap = next_sample = started
            while (now := time.monotonic()) - started < seconds:
                assert proc is not None and proc.poll() is None, "the agent died"
                if now >= next_flap:
                    for p in flapping:
                        p.set_mode(rng.choice(modes))
                    next_flap = now + 3.0
                if now >= next_sample:
                    assert requests.get(url + "/metrics", timeout=5).status_code == 200
                    if sample:
                        samples.append((now - started, agent.memory_info().rss, agent.num_fds(), agent.num_threads()))
                    next_sample = now + 5.0
                time.sleep(0.2)

        flap(WARMUP_SECONDS, sample=False)
        base = settled()
        runs_before = _runs(url)
        flap(SOAK_SECONDS, sample=True)
        final = settled()
        runs = _runs(url) - runs_before
        status = requests.get(url + "/status", timeout=10).json()
        record("status", json.dumps(status))
        assert all(row["up"] for row in status["checks"]), [r for r in status["checks"] if not r["up"]]
        mib = 2**20
        result = {
            "simulated_hours_at_15s": round(SOAK_SECONDS / 3600 * 15, 2), "wall_seconds": SOAK_SECONDS,
            "targets": 50, "flapping": len(flapping), "check_runs": int(runs), "pages": len(slack.requests),
            "settled_before_after": {"rss_mib": [round(base[0] / mib, 1), round(final[0] / mib, 1)],
                                     "fds": [base[1], final[1]], "threads": [base[2], final[2]]},
            "while_flapping_max": {"rss_mib": round(max(s[1] for s in samples) / mib, 1),
                                   "fds": max(s[2] for s in samples), "threads": max(s[3] for s in samples)},
            "rss_mib_series": [round(s[1] / mib, 1) for s in samples[:: max(1, len(samples) // 12)]],
            "fds_series": [s[2] for s in samples[:: max(1, len(samples) // 12)]],
            "bounds": {"rss_mib": SOAK_RSS_MIB, "fds": SOAK_FDS, "threads": SOAK_THREADS},
        }
        figure("soak", result)
        print("soak:", json.dumps(result))
        assert runs >= 50 * SOAK_SECONDS * 0.6, f"checks did not keep their 1 s interval: {runs} runs"
        assert (final[0] - base[0]) / mib < SOAK_RSS_MIB, result
        assert final[1] - base[1] <= SOAK_FDS, result
        assert final[2] - base[2] <= SOAK_THREADS, result
        assert len(slack.requests) > 10, "flapping targets paged nobody"
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for p in proxies:
            p.close()
        slack.close()
        pg.cleanup()
        redis.cleanup()
