"""The redis check against private redis-servers (filled, unlimited, TLS, ACL, down)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from opsagent.alerts.catalog import ALARMS
from opsagent.checks.base import CheckError
from opsagent.checks.redis import (
    BASIS_MAXMEMORY,
    BASIS_SYSTEM,
    RedisCheck,
    memory_ratio,
)
from opsagent.config import RedisTarget
from opsagent.runtime.runner import TargetRunner
from opsagent_testing.servers import (
    HangingServer,
    RedisServer,
    closed_port,
    free_port,
    wait_for_port,
)
from tests.fixtures.down import assert_down_cleanly, down_beside_healthy, run_logged

PASSWORD = "redis-Secret-5521"


def target(url: str, timeout: str = "2s") -> RedisTarget:
    return RedisTarget(name="cache", url=url, timeout=timeout)


@pytest.fixture(scope="module")
def small_redis() -> Iterator[RedisServer]:
    """maxmemory 8mb, allkeys-lru, a password, and CONFIG disabled as on ElastiCache."""
    server = RedisServer(maxmemory="8mb", password=PASSWORD, extra=["--rename-command", "CONFIG", ""]).start()
    try:
        yield server
    finally:
        server.cleanup()


def test_memory_filled_past_threshold_and_evictions_counted(small_redis: RedisServer) -> None:
    """Filling an 8 MB Redis past 75 % makes the value say so, and evictions are counted."""
    check = RedisCheck(target(small_redis.url()))
    filler = redis.Redis.from_url(small_redis.url(), socket_timeout=5)
    try:
        before = check.measure()
        assert before.value < 0.75
        assert before.details["memory_basis"] == BASIS_MAXMEMORY
        assert before.details["maxmemory_bytes"] == 8 * 1024 * 1024
        assert before.source == "INFO"
        chunk = b"x" * 64 * 1024
        i = 0
        while (reading := check.measure()).details["evicted_keys"] == 0 and i < 1000:
            filler.mset({f"k{i}-{j}": chunk for j in range(8)})
            i += 1
        alarm = ALARMS["RedisMemoryHigh"]
        assert reading.value > 0.75
        assert alarm.comparison.breached(reading.value, alarm.threshold or 0)
        assert reading.details["used_memory_bytes"] / (8 * 1024 * 1024) == pytest.approx(reading.value)
        assert reading.details["evicted_keys"] > 0
        assert reading.details["maxmemory_policy"] == "allkeys-lru"
        gauges = {g.name: g.value for g in reading.gauges}
        assert gauges["opsagent_redis_evicted_keys"] == reading.details["evicted_keys"]
        assert gauges["opsagent_redis_maxmemory_bytes"] == 8 * 1024 * 1024
        assert gauges["opsagent_redis_used_memory_bytes"] == reading.details["used_memory_bytes"]
        context = check.context()
        assert context["eviction_policy"] == "allkeys-lru"
        assert "used_memory_human" in context["memory"]
        json.dumps(dict(reading.details))
    finally:
        filler.flushall()
        filler.close()
        check.close()


def test_hit_ratio_and_clients(small_redis: RedisServer) -> None:
    """Keyspace hits and misses give a hit ratio; connected clients are counted."""
    client = redis.Redis.from_url(small_redis.url(), socket_timeout=5)
    check = RedisCheck(target(small_redis.url()))
    try:
        base = check.measure().details
        client.set("present", "1")
        for _ in range(3):
            client.get("present")
        client.get("absent")
        details = check.measure().details
        hits = details["keyspace_hits"] - base["keyspace_hits"]
        misses = details["keyspace_misses"] - base["keyspace_misses"]
        assert (hits, misses) == (3, 1)
        assert details["keyspace_hit_ratio"] == pytest.approx(
            details["keyspace_hits"] / (details["keyspace_hits"] + details["keyspace_misses"]), abs=1e-6)
        assert details["connected_clients"] >= 2
    finally:
        client.close()
        check.close()


def test_unlimited_redis_is_measured_against_system_memory(fresh_redis: RedisServer) -> None:
    """With maxmemory 0 the ratio uses system memory and the status says so."""
    check = RedisCheck(target(fresh_redis.url()))
    try:
        reading = check.measure()
    finally:
        check.close()
    assert reading.details["memory_basis"] == BASIS_SYSTEM == "system memory (maxmemory is 0)"
    assert reading.details["maxmemory_bytes"] == 0
    assert reading.value == pytest.approx(reading.details["used_memory_bytes"] / reading.details["memory_basis_bytes"])
    assert 0 < reading.value < 0.5


def test_answer_without_memory_fields_is_an_error() -> None:
    """A server whose INFO lacks used_memory/maxmemory is reported as unusable, not as 0 %."""
    with pytest.raises(CheckError, match="used_memory"):
        memory_ratio({"redis_version": "7.0"})
    with pytest.raises(CheckError, match="maxmemory is 0"):
        memory_ratio({"used_memory": 10, "maxmemory": 0})


def test_acl_user_with_only_info_permission_can_run_the_check(small_redis: RedisServer) -> None:
    """A least-privilege ACL user (only +info) named in the URL runs the check; CONFIG being disabled does not matter."""
    admin = redis.Redis.from_url(small_redis.url(), socket_timeout=5)
    try:
        admin.acl_setuser("monitor", enabled=True, passwords=["+monitor-pw-77"], commands=["+info"])
    finally:
        admin.close()
    check = RedisCheck(target(f"redis://monitor:monitor-pw-77@127.0.0.1:{small_redis.port}/0"))
    try:
        assert check.measure().details["memory_basis"] == BASIS_MAXMEMORY
        assert check.context()["eviction_policy"] == "allkeys-lru"
    finally:
        check.close()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A redis-server listening only on TLS, with a self-signed certificate for 127.0.0.1."""
    d = tmp_path_factory.mktemp("redis-tls")
    cert, key = d / "server.crt", d / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                             "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield port, cert
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_rediss_url_connects_over_tls(tls_redis: tuple[int, Path]) -> None:
    """A rediss:// URL with the CA given in its query reaches a TLS-only Redis."""
    port, cert = tls_redis
    check = RedisCheck(target(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"))
    try:
        assert check.measure().details["memory_basis"] == BASIS_SYSTEM
    finally:
        check.close()


# -- down, refused, hanging: through the runner ---------------------------------------------------


def _run(url: str, deadline: float) -> tuple[Any, list[dict[str, Any]]]:
    return run_logged("redis", "cache", lambda: RedisCheck(target(url, f"{deadline}s")), deadline)


@pytest.mark.parametrize("mode", ["refused", "wrong_password", "hanging", "plain_to_tls"])
def test_unreachable_target_is_reported_down_and_others_are_unaffected(
        small_redis: RedisServer, tls_redis: tuple[int, Path], mode: str) -> None:
    """A refused, auth-refusing, hanging or protocol-mismatched Redis is down with a clear error within the deadline; a healthy one still answers."""
    hanging = HangingServer() if mode == "hanging" else None
    try:
        url, expected = {
            "refused": (f"redis://:{PASSWORD}@127.0.0.1:{closed_port()}/0", ("refused",)),
            "wrong_password": (f"redis://:not-the-password@127.0.0.1:{small_redis.port}/0",
                               ("invalid username-password", "WRONGPASS", "Authentication")),
            "hanging": (f"redis://:{PASSWORD}@127.0.0.1:{hanging.port if hanging else 0}/0", ("timeout", "timed out")),
            "plain_to_tls": (f"redis://127.0.0.1:{tls_redis[0]}/0", ("connection", "closed", "timeout")),
        }[mode]
        healthy = TargetRunner("redis", "other", lambda: RedisCheck(target(small_redis.url())), deadline=2.0)
        good, result, logs = down_beside_healthy(lambda: _run(url, 1.5), healthy)
        assert good.up is True and good.value is not None and good.duration < 1.5
        assert_down_cleanly(result, logs, 1.5, expected, secrets=[PASSWORD, "not-the-password"])
    finally:
        if hanging is not None:
            hanging.close()
