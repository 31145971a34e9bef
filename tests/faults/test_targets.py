"""Targets that die, hang, refuse, reset mid-query or answer garbage: the daemon rides it out.

PostgreSQL, PgBouncer and Redis are reached through :class:`FaultProxy`, whose
mode also hits the agent's established, persistent connection. Every secret in
every DSN is one of the suite's recognisable values.
"""

from __future__ import annotations

import gc
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
import requests
import yaml

from opsagent.config import load_config
from opsagent.runtime.agent import build_runners
from opsagent_testing import pgbouncer as pgb
from opsagent_testing.alertmanager import Receiver
from opsagent_testing.pgbouncer import PgBouncerServer
from opsagent_testing.proxy import FaultProxy
from opsagent_testing.servers import PostgresServer, RedisServer, free_port
from tests.faults.evidence import (
    BOUNCER_PASSWORD,
    PG_PASSWORD,
    REDIS_PASSWORD,
    SLACK_PATH,
    figure,
    record,
    records,
)
from tests.fixtures.agent import RunningAgent, poll

FAULT_MODES = ("refuse", "reset", "garbage", "blackhole", "delay")


@pytest.fixture(scope="module")
def secret_pg() -> Iterator[PostgresServer]:
    server = PostgresServer(max_connections=30, password=PG_PASSWORD).start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def secret_redis() -> Iterator[RedisServer]:
    server = RedisServer(password=REDIS_PASSWORD).start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def secret_bouncer(private_pg: PostgresServer) -> Iterator[PgBouncerServer]:
    mp = pytest.MonkeyPatch()
    mp.setattr(pgb, "ADMIN_PASSWORD", BOUNCER_PASSWORD)
    server = PgBouncerServer(private_pg, pool_size=2).start()
    try:
        yield server
    finally:
        server.cleanup()
        mp.undo()


@pytest.fixture
def proxies(secret_pg: PostgresServer, secret_redis: RedisServer,
            secret_bouncer: PgBouncerServer) -> Iterator[dict[str, FaultProxy]]:
    made = {"postgres": FaultProxy(secret_pg.port), "pgbouncer": FaultProxy(secret_bouncer.port),
            "redis": FaultProxy(secret_redis.port)}
    yield made
    for proxy in made.values():
        proxy.close()


def _targets(proxies: dict[str, FaultProxy], interval: str = "1s", timeout: str = "2s") -> dict[str, Any]:
    common = {"interval": interval, "timeout": timeout}
    return {
        "postgres": [{"name": "db", "dsn": f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{proxies['postgres'].port}/postgres", **common}],
        "pgbouncer": [{"name": "pool",
                       "dsn": f"postgresql://{pgb.ADMIN_USER}:{BOUNCER_PASSWORD}@127.0.0.1:{proxies['pgbouncer'].port}/pgbouncer",
                       **common}],
        "redis": [{"name": "cache", "url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{proxies['redis'].port}/0", **common}],
    }


def _firing(agent: RunningAgent, alertname: str, target: str) -> bool:
    doc = agent.status()
    record("status", str(doc))
    return any(a["alertname"] == alertname and a["target"] == target and a["state"] == "firing" for a in doc["alerts"])


def _active(agent: RunningAgent, alertname: str) -> set[str]:
    return {a["target"] for a in agent.status()["alerts"] if a["alertname"] == alertname}


def _opsagent_sessions(server: PostgresServer) -> int:
    return int(server.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'opsagent'"))


def test_every_fault_mode_fires_and_resolves_target_down_while_other_checks_keep_their_interval(
        start_agent: Callable[..., RunningAgent], proxies: dict[str, FaultProxy], secret_pg: PostgresServer) -> None:
    """Refused, reset, garbage, hung and slow targets each page TargetDown and resolve it once healthy again, while cpu runs every second and /metrics keeps answering."""
    receiver = Receiver()
    logged_before = len(records())
    try:
        running = start_agent({
            "checks": _targets(proxies),
            "alerts": {"TargetDown": {"for": "0s"}},
            "notify": {"slack_webhook_url": receiver.url + SLACK_PATH, "timeout": "2s"},
        })
        cpu_times: list[float] = []
        running.agent.store.subscribe(lambda r: cpu_times.append(time.monotonic()) if r.check == "cpu" else None)
        poll(lambda: running.agent.ready.is_set(), timeout=20)
        poll(lambda: all((running.check_row(k, n) or {}).get("up") for k, n in
                         (("postgres", "db"), ("pgbouncer", "pool"), ("redis", "cache"))), timeout=20)
        names = {"postgres": "db", "pgbouncer": "pool", "redis": "cache"}
        for mode in FAULT_MODES:
            for proxy in proxies.values():
                proxy.set_mode(mode, delay=3.0)
            poll(lambda: _active(running, "TargetDown") >= set(names.values()), timeout=20)
            for kind, name in names.items():
                poll(lambda name=name: _firing(running, "TargetDown", name), timeout=10)
                row = running.check_row(kind, name)
                assert row is not None and row["up"] is False and row["error"], (mode, kind, row)
            assert running.get("/healthz").status_code == 200
            metrics = running.get("/metrics")
            assert metrics.status_code == 200 and 'opsagent_check_up{check="postgres",target="db"} 0.0' in metrics.text
            for proxy in proxies.values():
                proxy.set_mode("pass")
            poll(lambda: not _active(running, "TargetDown"), timeout=20)
            for kind, name in names.items():
                assert (running.check_row(kind, name) or {}).get("up") is True, (mode, kind)
        # One persistent, tagged session on the database after all that: no pile-up, no leak.
        poll(lambda: _opsagent_sessions(secret_pg) == 1, timeout=10)
        # TargetDown fired and resolved once per fault per target, each delivered to Slack in order.
        bodies = receiver.wait_for(2 * len(FAULT_MODES) * len(names), timeout=20)
        for body in bodies:
            record("alert", str(body))
        for name in names.values():
            heads = [h for h in (b["text"].splitlines()[0].rstrip("*") for b in bodies) if h.endswith(f"/{name}")]
            assert len(heads) == 2 * len(FAULT_MODES), heads
            assert all(("FIRING" in h) == (i % 2 == 0) for i, h in enumerate(heads)), heads
        gaps = [b - a for a, b in itertools.pairwise(cpu_times)]
        figure("targets_fault_modes", {"modes": list(FAULT_MODES), "targets": 3, "pages": len(bodies),
                                       "cpu_runs": len(cpu_times), "max_cpu_gap_seconds": round(max(gaps), 2)})
        crashed = [t for src, t in records()[logged_before:] if src == "log" and '"check_crashed"' in t]
        assert not crashed, f"a target's fault was treated as an agent bug: {crashed[:2]}"
        assert len(cpu_times) > 10 and max(gaps) < 2.5, f"cpu check stalled: longest gap {max(gaps):.2f}s"
    finally:
        receiver.close()


def test_killed_and_restarted_servers_are_reconnected(start_agent: Callable[..., RunningAgent]) -> None:
    """A PostgreSQL and a Redis killed outright page TargetDown and are measured again as soon as they come back on the same port."""
    pg = PostgresServer(max_connections=20, password=PG_PASSWORD).start()
    redis = RedisServer(password=REDIS_PASSWORD).start()
    try:
        running = start_agent({
            "checks": {
                "postgres": [{"name": "db", "dsn": pg.dsn(), "interval": "1s", "timeout": "2s"}],
                "redis": [{"name": "cache", "url": redis.url(), "interval": "1s", "timeout": "2s"}],
            },
            "alerts": {"TargetDown": {"for": "0s"}},
        })
        poll(lambda: all((running.check_row(k, n) or {}).get("up") for k, n in (("postgres", "db"), ("redis", "cache"))),
             timeout=20)
        pg.kill()
        redis.proc.kill()  # type: ignore[union-attr]
        redis.proc.wait()  # type: ignore[union-attr]
        poll(lambda: _active(running, "TargetDown") == {"db", "cache"}, timeout=15)
        assert running.get("/healthz").status_code == 200
        pg.start()
        redis.start()
        poll(lambda: not _active(running, "TargetDown"), timeout=20)
        assert (running.check_row("postgres", "db") or {}).get("up") is True
        assert (running.check_row("redis", "cache") or {}).get("up") is True
        poll(lambda: _opsagent_sessions(pg) == 1, timeout=10)
    finally:
        pg.cleanup()
        redis.cleanup()


def _footprint() -> tuple[int, int, int]:
    gc.collect()
    proc = psutil.Process()
    return proc.memory_info().rss, proc.num_fds(), threading.active_count()


def test_five_hundred_failing_rounds_grow_neither_memory_nor_file_descriptors(
        proxies: dict[str, FaultProxy], tmp_path: Any) -> None:
    """500 failing rounds per target (refused, reset mid-answer, garbage) leave RSS within 8 MiB and open file descriptors and threads where they were."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"checks": {**_targets(proxies, interval="15s", timeout="2s"),
                                                 "cpu": None, "memory": None}}))
    settings = load_config(config, env={})
    runners = build_runners(settings)
    modes = ("refuse", "reset", "garbage")

    def rounds(n: int) -> int:
        failures = 0
        for i in range(n):
            mode = modes[i % len(modes)]
            for proxy in proxies.values():
                proxy.set_mode(mode)
            for runner in runners.values():
                failures += not runner.run().up
        return failures

    rounds(60)  # warm-up: imports, caches, first connections
    for proxy in proxies.values():
        proxy.set_mode("pass")
    for runner in runners.values():
        assert runner.run().up
    time.sleep(0.3)
    before = _footprint()
    failures = rounds(500)
    for proxy in proxies.values():
        proxy.set_mode("pass")
    results = [runner.run() for runner in runners.values()]
    assert all(r.up for r in results), [r.error for r in results]
    time.sleep(0.3)
    after = _footprint()
    for runner in runners.values():
        runner.close()
    figure("targets_500_rounds", {"rss_growth_mib": round((after[0] - before[0]) / 2**20, 2),
                                  "fds": [before[1], after[1]], "threads": [before[2], after[2]]})
    assert failures == 500 * len(runners)
    rss_growth = after[0] - before[0]
    assert rss_growth < 8 * 1024 * 1024, f"RSS grew {rss_growth / 2**20:.1f} MiB over 500 failing rounds"
    assert after[1] <= before[1] + 2, f"open fds {before[1]} -> {after[1]}"
    assert after[2] <= before[2] + 2, f"threads {before[2]} -> {after[2]}"


def test_hung_then_reset_connections_never_crash_the_daemon(
        secret_pg: PostgresServer, secret_bouncer: PgBouncerServer, tmp_path: Any) -> None:
    """Targets that hang mid-query (so the agent gives up on them) and then reset the connection leave the daemon process alive and measuring."""
    proxies = [FaultProxy(secret_pg.port) for _ in range(4)] + [FaultProxy(secret_bouncer.port) for _ in range(2)]
    listen = f"127.0.0.1:{free_port()}"
    config = {
        "agent": {"listen": listen, "state_dir": str(tmp_path / "state"), "log_level": "error"},
        "checks": {"cpu": None, "memory": None,
                   "postgres": [{"name": f"db{i}", "interval": "1s", "timeout": "1s",
                                 "dsn": f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{p.port}/postgres"}
                                for i, p in enumerate(proxies[:4])],
                   "pgbouncer": [{"name": f"pool{i}", "interval": "1s", "timeout": "1s",
                                  "dsn": f"postgresql://{pgb.ADMIN_USER}:{BOUNCER_PASSWORD}@127.0.0.1:{p.port}/pgbouncer"}
                                 for i, p in enumerate(proxies[4:])]},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSAGENT_")}
    proc = subprocess.Popen([sys.executable, "-m", "opsagent", "run", "--config", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://{listen}"

    def all_up() -> bool:
        try:
            rows = requests.get(url + "/status", timeout=2).json()["checks"]
        except (requests.RequestException, ValueError):
            return False
        return len(rows) == 6 and all(r["up"] for r in rows)

    try:
        for _ in range(4):
            poll(all_up, timeout=20, interval=0.2)
            for p in proxies:
                p.set_mode("blackhole")
            time.sleep(2.5)  # every run is abandoned; its connection is closed behind the blocked query
            for p in proxies:
                p.set_mode("refuse")  # RST wakes the blocked queries
            time.sleep(1.0)
            assert proc.poll() is None, f"the daemon died: {proc.communicate()[0][-3000:]}"
            for p in proxies:
                p.set_mode("pass")
        poll(all_up, timeout=20, interval=0.2)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
        for p in proxies:
            p.close()
    record("log", out)
    assert proc.returncode == 0, out[-3000:]


class _LyingRedis:
    """Answers every command with a RESP integer that is not a number."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                conn.settimeout(2)
                conn.recv(65536)
                conn.sendall(b":\x9bnot-a-number\r\n")
            except OSError:
                pass
            finally:
                conn.close()


def test_garbage_that_breaks_the_client_parser_is_the_targets_fault(tmp_path: Any) -> None:
    """A Redis answering unparsable numbers is reported down as a target problem, not as an agent crash sent to Sentry."""
    server = _LyingRedis()
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"checks": {"cpu": None, "memory": None, "redis": [
        {"name": "liar", "url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0", "timeout": "2s"}]}}))
    bugs: list[BaseException] = []
    runners = build_runners(load_config(config, env={}), on_bug=bugs.append)
    result = runners[("redis", "liar")].run()
    server.sock.close()
    assert not result.up and result.error
    assert bugs == [], bugs


def test_hung_connects_and_queries_leave_one_session_per_target(secret_pg: PostgresServer, tmp_path: Any) -> None:
    """A PostgreSQL target alternating between healthy and hung leaves exactly one agent connection open once healthy, without waiting for a garbage collection."""
    proxy = FaultProxy(secret_pg.port)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"checks": {"cpu": None, "memory": None, "postgres": [
        {"name": "db", "interval": "1s", "timeout": "1s",
         "dsn": f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{proxy.port}/postgres"}]}}))
    runner = build_runners(load_config(config, env={}))[("postgres", "db")]
    me = psutil.Process()
    gc.disable()  # an idle daemon rarely runs a full collection: nothing may depend on one
    try:
        for mode in ("pass", "blackhole", "blackhole", "blackhole") * 3:
            proxy.set_mode(mode)
            runner.run()
            time.sleep(0.3)
        proxy.set_mode("pass")
        poll(lambda: runner.run().up, timeout=15, interval=0.5)
        time.sleep(2.5)  # the last hung connect (2 s connect_timeout) gives up
        held = [c for c in me.net_connections() if c.raddr and c.raddr.port == proxy.port]
        assert len(held) == 1, held
    finally:
        gc.enable()
        runner.close()
        proxy.close()
