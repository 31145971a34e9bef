"""The pgbouncer check against a private PgBouncer (default_pool_size=2) in front of a private PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from opsagent.alerts.catalog import ALARMS
from opsagent.checks.base import Reading
from opsagent.checks.pgbouncer import PgBouncerCheck
from opsagent.checks.postgres import PostgresCheck
from opsagent.config import PgBouncerTarget, PostgresTarget
from opsagent.runtime.runner import TargetRunner
from opsagent_testing.pgbouncer import (
    ADMIN_PASSWORD,
    APP_DB,
    APP_PASSWORD,
    PgBouncerServer,
)
from opsagent_testing.servers import HangingServer, closed_port
from tests.fixtures.agent import poll_last as poll
from tests.fixtures.down import assert_down_cleanly, down_beside_healthy, run_logged


def target(dsn: str, timeout: str = "2s") -> PgBouncerTarget:
    return PgBouncerTarget(name="pool", dsn=dsn, timeout=timeout)


@pytest.fixture
def check(private_pgbouncer: PgBouncerServer) -> Iterator[PgBouncerCheck]:
    c = PgBouncerCheck(target(private_pgbouncer.admin_dsn()))
    try:
        yield c
    finally:
        c.close()


def _pool(reading: Reading) -> dict[str, Any]:
    return next(p for p in reading.details["pools"] if p["database"] == APP_DB)


def test_four_clients_on_a_pool_of_two_leave_clients_waiting(private_pgbouncer: PgBouncerServer,
                                                            check: PgBouncerCheck) -> None:
    """Four clients holding transactions on a pool of two leave two waiting, and the value says so."""
    assert check.measure().value == 0
    holders = [psycopg.connect(private_pgbouncer.app_dsn(), connect_timeout=5) for _ in range(4)]
    started: list[threading.Thread] = []
    release = threading.Event()

    def hold(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT 1")  # opens a transaction: the server stays linked (transaction pooling)
        release.wait(30)
        conn.rollback()

    try:
        for conn in holders:
            t = threading.Thread(target=hold, args=(conn,), daemon=True)
            t.start()
            started.append(t)
        reading = poll(check.measure, lambda r: r.value == 2 and _pool(r)["sv_active"] == 2
                       and r.details["longest_wait_seconds"] > 0)
        alarm = ALARMS["PgBouncerClientsWaiting"]
        assert reading.value == 2
        assert alarm.comparison.breached(reading.value, alarm.threshold or 0)
        pool = _pool(reading)
        assert pool["cl_waiting"] == 2
        assert pool["sv_active"] == 2
        assert pool["pool_size"] == 2
        assert reading.details["pool_saturation"] == 1.0  # PgBouncerPoolSaturated: sv_active / pool_size
        assert reading.details["longest_wait_seconds"] > 0
        assert "2 client(s) waiting" in reading.details["summary"]
        assert reading.source == "admin console"
        waiting = [g for g in reading.gauges if g.name == "opsagent_pgbouncer_clients_waiting"]
        assert [(g.labels, g.value) for g in waiting] == [({"database": APP_DB, "user": "postgres"}, 2.0)]
        assert not any(g.labels.get("database") == "pgbouncer" for g in reading.gauges)
        worst = check.context()["worst_pools"][0]
        assert (worst["database"], worst["cl_waiting"]) == (APP_DB, 2)
        json.dumps(dict(reading.details))
    finally:
        release.set()
        for t in started:
            t.join(10)
        for conn in holders:
            conn.close()
    cleared = poll(check.measure, lambda r: r.value == 0)
    assert cleared.value == 0
    assert "0 client(s) waiting" in cleared.details["summary"]


def test_per_database_stats_become_gauges(private_pgbouncer: PgBouncerServer, check: PgBouncerCheck) -> None:
    """SHOW STATS averages are exported per database in seconds."""
    with psycopg.connect(private_pgbouncer.app_dsn(), autocommit=True, connect_timeout=5) as conn:
        conn.execute("SELECT 1")
    reading = check.measure()
    names = {g.name for g in reading.gauges if g.labels == {"database": APP_DB}}
    assert {"opsagent_pgbouncer_average_wait_seconds", "opsagent_pgbouncer_average_query_seconds"} <= names
    assert {"opsagent_pgbouncer_pool_size", "opsagent_pgbouncer_servers_active"} <= {g.name for g in reading.gauges}


def test_one_console_connection_is_reused(private_pgbouncer: PgBouncerServer, check: PgBouncerCheck) -> None:
    """Repeated runs use one admin-console connection, tagged opsagent."""
    for _ in range(5):
        check.measure()
    with psycopg.connect(private_pgbouncer.admin_dsn(), autocommit=True,
                         cursor_factory=psycopg.ClientCursor, connect_timeout=5) as conn:
        cur = conn.cursor()
        cur.execute("SHOW CLIENTS")
        names = [d.name for d in cur.description or []]
        clients = [dict(zip(names, row)) for row in cur.fetchall()]
    tagged = [c for c in clients if c.get("application_name") == "opsagent"]
    assert len(tagged) == 1


def test_stats_user_can_run_the_check(private_pgbouncer: PgBouncerServer) -> None:
    """A user listed only in stats_users gets the full reading, pool sizes included."""
    c = PgBouncerCheck(target(private_pgbouncer.stats_dsn()))
    try:
        reading = c.measure()
    finally:
        c.close()
    assert _pool(reading)["pool_size"] == 2
    assert reading.value == 0


def test_user_not_allowed_on_the_console_is_an_error(private_pgbouncer: PgBouncerServer) -> None:
    """A user missing from admin_users/stats_users gets PgBouncer's refusal, not an empty reading."""
    dsn = f"postgresql://postgres:{APP_PASSWORD}@127.0.0.1:{private_pgbouncer.port}/pgbouncer"
    c = PgBouncerCheck(target(dsn))
    try:
        with pytest.raises(psycopg.OperationalError, match="not allowed"):
            c.measure()
    finally:
        c.close()


def test_postgres_check_survives_transaction_pooling(private_pgbouncer: PgBouncerServer) -> None:
    """A postgres check pointed through a transaction-pooling PgBouncer keeps answering when its server changes."""
    check = PostgresCheck(PostgresTarget(name="via-pool", dsn=private_pgbouncer.app_dsn(), timeout="2s"))
    other = psycopg.connect(private_pgbouncer.app_dsn(), autocommit=True, connect_timeout=5)
    try:
        for i in range(6):  # every other run another client holds one server, so the check lands elsewhere
            if i % 2:
                assert check.measure().details["usable_connections"] > 0
            else:
                with other.transaction():
                    other.execute("SELECT 1")
                    assert check.measure().details["usable_connections"] > 0
    finally:
        other.close()
        check.close()


# -- down, refused, hanging: through the runner ---------------------------------------------------


def _run(dsn: str, deadline: float) -> tuple[Any, list[dict[str, Any]]]:
    return run_logged("pgbouncer", "pool", lambda: PgBouncerCheck(target(dsn, f"{deadline}s")), deadline)


@pytest.mark.parametrize("mode", ["refused", "wrong_password", "hanging"])
def test_unreachable_target_is_reported_down_and_others_are_unaffected(
        private_pgbouncer: PgBouncerServer, mode: str) -> None:
    """A refused, auth-refusing or hanging PgBouncer is down with a clear error within the deadline; a healthy one still answers."""
    hanging = HangingServer() if mode == "hanging" else None
    try:
        dsn, expected = {
            "refused": (f"postgresql://opsadmin:{ADMIN_PASSWORD}@127.0.0.1:{closed_port()}/pgbouncer", ("refused",)),
            "wrong_password": (private_pgbouncer.admin_dsn(password="not-the-password"), ("password authentication failed",)),
            "hanging": (f"postgresql://opsadmin:{ADMIN_PASSWORD}@127.0.0.1:{hanging.port if hanging else 0}/pgbouncer",
                        ("deadline", "timeout")),
        }[mode]
        healthy = TargetRunner("pgbouncer", "other",
                               lambda: PgBouncerCheck(target(private_pgbouncer.admin_dsn())), deadline=2.0)
        good, result, logs = down_beside_healthy(lambda: _run(dsn, 1.5), healthy)
        assert good.up is True and good.value is not None and good.duration < 1.5
        assert_down_cleanly(result, logs, 1.5, expected, secrets=[ADMIN_PASSWORD, "not-the-password"])
    finally:
        if hanging is not None:
            hanging.close()
