"""The postgres check against private PostgreSQL servers (exhausted, replica, down, TLS)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from opsagent.alerts.catalog import ALARMS
from opsagent.checks.postgres import PostgresCheck
from opsagent.config import PostgresTarget
from opsagent.runtime.runner import TargetRunner
from opsagent_testing.servers import (
    IS_ROOT,
    HangingServer,
    PostgresServer,
    closed_port,
    pg_bin,
)
from tests.fixtures.agent import poll_last as poll
from tests.fixtures.down import assert_down_cleanly, down_beside_healthy, run_logged

PASSWORD = "pg-Secret-9931"


def target(dsn: str, timeout: str = "2s") -> PostgresTarget:
    return PostgresTarget(name="main", dsn=dsn, timeout=timeout)


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    """max_connections=13 with 3 superuser-reserved slots: 10 usable."""
    server = PostgresServer(max_connections=13, password=PASSWORD).start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def check(pg: PostgresServer) -> Iterator[PostgresCheck]:
    c = PostgresCheck(target(pg.dsn()))
    try:
        yield c
    finally:
        c.close()


def test_connections_near_exhaustion_reach_the_alarm(pg: PostgresServer, check: PostgresCheck) -> None:
    """With 9 of 10 usable connections taken the value is 0.9 and PostgresConnectionsExhausted would fire."""
    first = check.measure()
    assert first.details["max_connections"] == 13
    assert first.details["superuser_reserved_connections"] == 3
    assert first.details["usable_connections"] == 10
    holders = []
    try:
        while check.measure().details["in_use"] < 9:
            holders.append(psycopg.connect(pg.dsn(), autocommit=True))
        reading = check.measure()
    finally:
        for conn in holders:
            conn.close()
    alarm = ALARMS["PostgresConnectionsExhausted"]
    assert reading.value >= 0.9
    assert alarm.comparison.breached(reading.value, alarm.threshold or 0)
    assert reading.details["in_use"] / reading.details["usable_connections"] == pytest.approx(reading.value)
    assert "/10 usable connections in use" in reading.details["usage"]
    assert reading.details["by_state"].get("idle", 0) >= len(holders)
    assert reading.source == "pg_stat_activity"
    names = {g.name for g in reading.gauges}
    assert {"opsagent_postgres_usable_connections", "opsagent_postgres_connections_in_use",
            "opsagent_postgres_connections", "opsagent_postgres_max_connections"} <= names
    json.dumps(dict(reading.details))  # /status can serialise it


def test_idle_in_transaction_and_long_query_are_timed(pg: PostgresServer, check: PostgresCheck) -> None:
    """A session left idle in a transaction and a long query show their age and state."""
    idle = psycopg.connect(pg.dsn())
    busy = psycopg.connect(pg.dsn(), autocommit=True)

    def sleep() -> None:
        with pytest.raises(psycopg.errors.QueryCanceled):
            busy.execute("SELECT pg_sleep(30)")

    sleeper = threading.Thread(target=sleep, daemon=True)
    try:
        idle.execute("SELECT 1")  # opens a transaction and leaves it open
        sleeper.start()
        reading = poll(check.measure, lambda r: r.details["longest_idle_in_transaction_seconds"] > 0.05
                       and r.details["longest_query_seconds"] > 0.05)
        assert reading.details["by_state"].get("idle in transaction") == 1
        assert reading.details["by_state"].get("active", 0) >= 2  # the sleeper and the check itself
        assert reading.details["longest_idle_in_transaction_seconds"] > 0.05
        assert reading.details["longest_query_seconds"] > 0.05
        holders = check.context()["top_connection_holders"]
        assert any(h["state"] == "idle in transaction" for h in holders)
    finally:
        busy.cancel_safe()
        sleeper.join(10)
        busy.close()
        idle.close()


def test_one_tagged_connection_is_reused(pg: PostgresServer, check: PostgresCheck) -> None:
    """Repeated runs hold exactly one connection named opsagent on the database."""
    for _ in range(5):
        check.measure()
    count = pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'opsagent'")
    assert count == "1"


def test_connection_is_reestablished_after_it_was_killed(pg: PostgresServer, check: PostgresCheck) -> None:
    """When its session is terminated the run fails once and the next run reconnects."""
    check.measure()
    pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'opsagent'")
    with pytest.raises(psycopg.OperationalError):
        check.measure()
    assert check.measure().details["in_use"] >= 1


def test_sslmode_from_the_dsn_is_honoured(pg: PostgresServer) -> None:
    """sslmode=require against a server without TLS is refused instead of silently downgraded."""
    c = PostgresCheck(target(pg.dsn() + "?sslmode=require"))
    try:
        with pytest.raises(psycopg.OperationalError, match="SSL"):
            c.measure()
    finally:
        c.close()


def _make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    key.chmod(0o600)
    return cert, key


def test_tls_connection_with_verified_certificate(tmp_path: Path) -> None:
    """A DSN with sslmode=verify-full and sslrootcert reaches a TLS server over an encrypted session."""
    server = PostgresServer(max_connections=10)
    cert, key = _make_cert(server.tmp)
    if IS_ROOT:
        shutil.chown(cert, "postgres", "postgres")
        shutil.chown(key, "postgres", "postgres")
    server.extra_conf.update({"ssl": "on", "ssl_cert_file": f"'{cert}'", "ssl_key_file": f"'{key}'"})
    server.start()
    c = PostgresCheck(target(server.dsn() + f"?sslmode=verify-full&sslrootcert={cert}"))
    try:
        assert c.measure().details["in_use"] >= 1
        ssl = server.psql("SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                          "WHERE a.application_name = 'opsagent'")
        assert ssl == "t"
    finally:
        c.close()
        server.cleanup()


# -- replica ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def primary_and_replica() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    """A private primary and a streaming replica made with pg_basebackup -R."""
    primary = PostgresServer(max_connections=20).start()
    replica = PostgresServer(max_connections=20)
    try:
        cmd = [pg_bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
               "-D", str(replica.data), "-R", "-X", "stream", "--no-sync"]
        if IS_ROOT:
            cmd = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        with open(replica.data / "postgresql.conf", "a") as fh:  # later lines win over the copied ones
            fh.write(f"port = {replica.port}\nunix_socket_directories = '{replica.sockdir}'\n")
        replica.start()
        yield primary, replica
    finally:
        replica.cleanup()
        primary.cleanup()


def test_replica_reports_replication_lag(primary_and_replica: tuple[PostgresServer, PostgresServer]) -> None:
    """A replica whose replay is paused behind new primary writes reports lag in seconds and bytes."""
    primary, replica = primary_and_replica
    on_primary = PostgresCheck(target(primary.dsn()))
    on_replica = PostgresCheck(target(replica.dsn()))
    try:
        assert on_primary.measure().details["role"] == "primary"
        assert "replication_lag_seconds" not in on_primary.measure().details
        primary.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        caught_up = poll(on_replica.measure, lambda r: replica.psql("SELECT count(*) FROM pg_class WHERE relname='t'") == "1"
                         and r.details["replication_lag_bytes"] == 0)
        assert caught_up.details["role"] == "replica"
        replica.psql("SELECT pg_wal_replay_pause()")
        primary.psql("INSERT INTO t SELECT generate_series(1, 1000)")
        lagging = poll(on_replica.measure, lambda r: r.details["replication_lag_bytes"] > 0)
        assert lagging.details["replication_lag_bytes"] > 0
        assert lagging.details["replication_lag_seconds"] > 0
        gauges = {g.name: g.value for g in lagging.gauges}
        assert gauges["opsagent_postgres_replication_lag_seconds"] == lagging.details["replication_lag_seconds"]
        replica.psql("SELECT pg_wal_replay_resume()")
        recovered = poll(on_replica.measure, lambda r: r.details["replication_lag_bytes"] == 0)
        assert recovered.details["replication_lag_seconds"] == 0
    finally:
        on_primary.close()
        on_replica.close()


def test_a_primary_covers_its_replicas_lag_for_the_lag_alarm(primary_and_replica: tuple[PostgresServer, PostgresServer],
                                                             check: PostgresCheck) -> None:
    """A primary with a streaming replica reports replication_lag_max_seconds from pg_stat_replication (the field
    PostgresReplicaLagHigh compares); the replica reports its own lag there; a lone primary reports none."""
    primary, replica = primary_and_replica
    on_primary = PostgresCheck(target(primary.dsn()))
    on_replica = PostgresCheck(target(replica.dsn()))
    try:
        reading = poll(on_primary.measure, lambda r: "replication_lag_max_seconds" in r.details)
        assert reading.details["role"] == "primary" and reading.details["replication_lag_max_seconds"] >= 0
        gauges = {g.name: g.value for g in reading.gauges}
        assert gauges["opsagent_postgres_replication_lag_max_seconds"] == reading.details["replication_lag_max_seconds"]
        own = on_replica.measure().details
        assert own["replication_lag_max_seconds"] == own["replication_lag_seconds"]
        assert ALARMS["PostgresReplicaLagHigh"].field == "replication_lag_max_seconds"
        assert "replication_lag_max_seconds" not in check.measure().details  # a primary without replicas
    finally:
        on_primary.close()
        on_replica.close()


# -- down, refused, hanging: through the runner ---------------------------------------------------


def _run(dsn: str, deadline: float = 2.0) -> tuple[Any, list[dict[str, Any]]]:
    return run_logged("postgres", "main", lambda: PostgresCheck(target(dsn, f"{deadline}s")), deadline)


@pytest.mark.parametrize("mode", ["refused", "wrong_password", "hanging"])
def test_unreachable_target_is_reported_down_and_others_are_unaffected(pg: PostgresServer, mode: str) -> None:
    """A refused, auth-refusing or hanging database is down with a clear error within the deadline; a healthy one still answers."""
    hanging = HangingServer() if mode == "hanging" else None
    try:
        dsn, expected = {
            "refused": (f"postgresql://postgres:{PASSWORD}@127.0.0.1:{closed_port()}/postgres", ("refused",)),
            "wrong_password": (pg.dsn(password="not-the-password"), ("password authentication failed",)),
            "hanging": (f"postgresql://postgres:{PASSWORD}@127.0.0.1:{hanging.port if hanging else 0}/postgres",
                        ("deadline", "timeout")),
        }[mode]
        healthy = TargetRunner("postgres", "other", lambda: PostgresCheck(target(pg.dsn())), deadline=2.0)
        good, result, logs = down_beside_healthy(lambda: _run(dsn, 1.5), healthy)
        assert good.up is True and good.value is not None and good.duration < 1.5
        assert_down_cleanly(result, logs, 1.5, expected, secrets=[PASSWORD])
    finally:
        if hanging is not None:
            hanging.close()
