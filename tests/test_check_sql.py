"""The ``sql`` kind against a real PostgreSQL: one number, read-only, bounded, and clear errors naming the target."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from opsagent.alerts.verdict import verdict
from opsagent.checks.base import CheckError
from opsagent.checks.sql import SqlCheck
from opsagent.config import Settings, SqlTarget
from opsagent.runtime.results import CheckResult
from opsagent.runtime.runner import TargetRunner
from opsagent_testing.proxy import FaultProxy
from opsagent_testing.servers import HangingServer, PostgresServer, closed_port
from tests.fixtures.backup import new_database
from tests.fixtures.down import assert_down_cleanly, down_beside_healthy, run_logged

SCHEMA = """
CREATE TABLE webhooks (id serial PRIMARY KEY, provider text, received_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE payments (id serial PRIMARY KEY, status text NOT NULL, created_at timestamptz NOT NULL);
INSERT INTO webhooks (provider, received_at) VALUES ('paystack', now() - interval '42 minutes');
INSERT INTO payments (status, created_at)
  SELECT 'PENDING', now() - interval '20 minutes' FROM generate_series(1, 3)
  UNION ALL SELECT 'PENDING', now() FROM generate_series(1, 2)
  UNION ALL SELECT 'PAID', now() - interval '1 hour';
CREATE FUNCTION settle_all() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN UPDATE payments SET status = 'PAID'; RETURN 0; END $$;
"""
WEBHOOK_MINUTES = "SELECT EXTRACT(EPOCH FROM now() - max(received_at)) / 60 FROM webhooks"
STUCK = "SELECT count(*) FROM payments WHERE status = 'PENDING' AND created_at < now() - interval '15 minutes'"


@pytest.fixture(scope="module")
def shop(private_pg: PostgresServer) -> Iterator[str]:
    dbname = new_database(private_pg, "shop")
    private_pg.psql(SCHEMA, dbname)
    yield private_pg.dsn(dbname)


def target(dsn: str, query: str, **kw: object) -> SqlTarget:
    return SqlTarget.model_validate({"name": "biz", "dsn": dsn, "query": query, "threshold": 1, **kw})


def measure(dsn: str, query: str, **kw: object) -> float:
    check = SqlCheck(target(dsn, query, **kw))
    try:
        return check.measure().value
    finally:
        check.close()


def test_webhook_freshness_and_stuck_payments_are_one_number_each(shop: str) -> None:
    """Minutes since the last webhook and payments stuck PENDING over 15 minutes come back as plain numbers."""
    assert 41.9 < measure(shop, WEBHOOK_MINUTES) < 43
    assert measure(shop, STUCK) == 3.0
    assert measure(shop, "SELECT interval '2 minutes'") == 120.0


@pytest.mark.parametrize(("query", "words"), [
    ("SELECT 1 WHERE false", "returned no row"),
    ("SELECT generate_series(1, 1000000000)", "several rows"),
    ("SELECT provider FROM webhooks", "not a number"),
    ("SELECT NULL::int", "NULL"),
    ("SELECT 1, 2", "2 columns"),
    ("SELECT true", "not a number"),
])
def test_unusable_answers_are_check_errors_naming_the_target(shop: str, query: str, words: str) -> None:
    """No row, several rows (even a billion, fetched two at most), text, NULL, two columns or a boolean is an error naming the target."""
    with pytest.raises(CheckError) as caught:
        measure(shop, query)
    assert words in str(caught.value) and "'biz'" in str(caught.value)


def test_the_query_cannot_write(shop: str, private_pg: PostgresServer) -> None:
    """A data-modifying statement or a writing function is refused by the read-only transaction and changes nothing."""
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        measure(shop, "DELETE FROM payments")
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        measure(shop, "SELECT settle_all()")
    assert private_pg.psql("SELECT count(*) FROM payments WHERE status = 'PENDING'", shop.rsplit("/", 1)[1]) == "5"


def test_a_slow_query_is_cancelled_by_statement_timeout_and_the_connection_recovers(shop: str) -> None:
    """A query longer than the deadline is cancelled by the server, and the next run on the same check answers."""
    slow = SqlCheck(target(shop, "SELECT count(*) FROM pg_sleep(5)", timeout="1s"))
    try:
        with pytest.raises(psycopg.errors.QueryCanceled):
            slow.measure()
        fast = SqlCheck(target(shop, STUCK, timeout="1s"))
        assert fast.measure().value == 3.0
        fast.close()
    finally:
        slow.close()


def test_target_threshold_and_comparison_decide_the_verdict(shop: str) -> None:
    """Each target's own threshold and comparison decide breached or ok, not the alarm's catalogue default."""
    settings = Settings(checks={"sql": [
        {"name": "stuck", "dsn": shop, "query": STUCK, "threshold": 0},
        {"name": "orders", "dsn": shop, "query": STUCK, "threshold": 5, "comparison": "below"},
        {"name": "calm", "dsn": shop, "query": STUCK, "threshold": 10},
    ]})

    def judged(name: str) -> tuple[str, float | None]:
        result = CheckResult("sql", name, True, 3.0, at=0.0, duration=0.1)
        v = verdict(settings, result)
        return v.state, v.threshold

    assert judged("stuck") == ("breached", 0.0)
    assert judged("orders") == ("breached", 5.0)
    assert judged("calm") == ("ok", 10.0)


@pytest.mark.parametrize("mode", ["refused", "hanging", "garbage"])
def test_down_hanging_and_garbage_databases_are_down_within_the_deadline(shop: str, mode: str) -> None:
    """A refused, hanging or garbage-answering server is down with a clear error within the deadline; a healthy sql check still answers."""
    hanging = HangingServer() if mode == "hanging" else None
    proxy = FaultProxy(int(shop.split(":")[2].split("/")[0]), mode="garbage") if mode == "garbage" else None
    try:
        port = {"refused": closed_port(), "hanging": hanging.port if hanging else 0, "garbage": proxy.port if proxy else 0}[mode]
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        expected = {"refused": ("refused",), "hanging": ("deadline", "timeout"),
                    "garbage": ("lost synchronization", "invalid", "unexpected", "server", "protocol", "ssl")}[mode]
        healthy = TargetRunner("sql", "other", lambda: SqlCheck(target(shop, STUCK)), deadline=2.0)
        good, result, logs = down_beside_healthy(
            lambda: run_logged("sql", "biz", lambda: SqlCheck(target(dsn, STUCK, timeout="1.5s")), 1.5), healthy)
        assert good.up is True and good.value == 3.0
        assert_down_cleanly(result, logs, 1.5, expected)
        assert not any(e.get("event") == "check_crashed" for e in logs)
    finally:
        if hanging is not None:
            hanging.close()
        if proxy is not None:
            proxy.close()
