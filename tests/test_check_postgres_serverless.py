"""``postgres`` targets for scale-to-zero computes (Neon): ``connect: per_run`` and ``idle_ok``."""

from __future__ import annotations

import threading

import pytest

from opsagent.checks.postgres import PostgresCheck
from opsagent.config import PostgresTarget
from opsagent.runtime.runner import TargetRunner
from opsagent_testing.proxy import FaultProxy
from opsagent_testing.servers import PostgresServer


def sessions(server: PostgresServer) -> int:
    return int(server.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'opsagent'"))


def test_per_run_disconnects_after_every_measurement(private_pg: PostgresServer) -> None:
    """With connect: per_run the agent holds no session between runs, so the compute may suspend, and every run still measures."""
    check = PostgresCheck(PostgresTarget(name="neon", dsn=private_pg.dsn(), connect="per_run"))
    try:
        for _ in range(2):
            reading = check.measure()
            assert 0 < reading.value < 1
            assert reading.details["connect"] == "per_run" and reading.details["connect_seconds"] >= 0
            assert sessions(private_pg) == 0
    finally:
        check.close()


def test_persistent_connection_stays_open_by_default(private_pg: PostgresServer) -> None:
    """Without per_run the one tagged session is kept between runs (release-1 behaviour)."""
    check = PostgresCheck(PostgresTarget(name="rds", dsn=private_pg.dsn()))
    try:
        check.measure()
        check.measure()
        assert sessions(private_pg) == 1
    finally:
        check.close()


@pytest.mark.parametrize("idle_ok", [True, False])
def test_a_cold_start_is_waited_for_only_with_idle_ok(private_pg: PostgresServer, idle_ok: bool) -> None:
    """A compute that refuses connections for its first second is measured with idle_ok, and is down without it."""
    proxy = FaultProxy(private_pg.port, mode="refuse")
    woke = threading.Event()

    def wake() -> None:
        proxy.set_mode("pass")
        woke.set()

    timer = threading.Timer(1.0, wake)
    target = PostgresTarget(name="neon", dsn=f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres",
                            connect="per_run", idle_ok=idle_ok, timeout="5s")
    runner = TargetRunner("postgres", "neon", lambda: PostgresCheck(target), deadline=target.deadline)
    try:
        timer.start()
        result = runner.run()
        if idle_ok:
            assert woke.is_set() and result.up is True, result.error
            assert result.details["connect_seconds"] >= 0.9
        else:
            assert result.up is False and "refused" in (result.error or "").lower()
    finally:
        timer.cancel()
        runner.close()
        proxy.close()


def test_idle_ok_still_reports_a_database_that_stays_away(private_pg: PostgresServer) -> None:
    """idle_ok does not hide an outage: a compute that never answers is down within the deadline."""
    proxy = FaultProxy(private_pg.port, mode="refuse")
    target = PostgresTarget(name="neon", dsn=f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres",
                            connect="per_run", idle_ok=True, timeout="2s")
    runner = TargetRunner("postgres", "neon", lambda: PostgresCheck(target), deadline=target.deadline)
    try:
        result = runner.run()
        assert result.up is False and result.duration < 2.5
        assert "refused" in (result.error or "").lower()
    finally:
        runner.close()
        proxy.close()
