"""A fleet of sidecars (SPEC 9.6): one leader checks the shared targets, the others stand by and take over."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from opsagent.config import ConfigError, load_config
from opsagent.runtime.fleet import Fleet, default_scope
from opsagent.runtime.leases import DynamoLease
from opsagent_testing.aws import MotoServer
from opsagent_testing.proxy import FaultProxy
from opsagent_testing.servers import PostgresServer
from tests.fixtures.agent import RunningAgent, make_settings, poll

LEASE = "3s"


def fleet_db(pg: PostgresServer) -> tuple[str, str]:
    """A database of its own on the session's private PostgreSQL, and a fleet name no other test uses."""
    name = "fleet_" + uuid.uuid4().hex[:10]
    pg.psql(f"CREATE DATABASE {name}")
    return name, pg.dsn(name)


def sessions(pg: PostgresServer, db: str) -> dict[str, int]:
    """Sessions on ``db`` by kind: the agents' check connections and their fleet lock sessions."""
    rows = pg.psql(f"SELECT application_name FROM pg_stat_activity WHERE datname = '{db}'").split()
    return {"check": rows.count("opsagent"), "lock": sum(r.startswith("opsagent-fleet:") for r in rows)}


def fleet_config(db: str, check_dsn: str, lock_dsn: str, agent: str) -> dict[str, Any]:
    return {"agent": {"name": db, "id": agent, "fleet_lock_dsn": lock_dsn, "fleet_lease": LEASE},
            "checks": {"postgres": [{"name": "main", "dsn": check_dsn, "interval": "1s"}]}}


def metric(agent: RunningAgent, prefix: str) -> list[str]:
    return [line for line in agent.get("/metrics").text.splitlines() if line.startswith(prefix)]


def test_scope_defaults_follow_the_kind() -> None:
    """Databases, caches and kinds added later are shared; cpu, memory and an app's own metrics_url are per task."""
    class T:
        scope = None
        metrics_url: str | None = None

    local, cloud, pinned = T(), T(), T()
    local.metrics_url = "http://127.0.0.1:3000/metrics"
    pinned.scope = "task"  # type: ignore[assignment]  # a plain stand-in for a target model
    assert default_scope("cpu", local) == "task"  # type: ignore[arg-type]
    assert default_scope("memory", cloud) == "task"  # type: ignore[arg-type]
    assert default_scope("error_rate", local) == "task"  # type: ignore[arg-type]
    assert default_scope("error_rate", cloud) == "shared"  # type: ignore[arg-type]
    for kind in ("postgres", "pgbouncer", "redis", "sqs", "bullmq", "s3_replication", "rabbitmq", "http", "sql"):
        assert default_scope(kind, cloud) == "shared"  # type: ignore[arg-type]
    assert default_scope("postgres", pinned) == "task"  # type: ignore[arg-type]


def test_fleet_settings_are_validated(tmp_path: Path) -> None:
    """Both lock kinds at once, or a lease out of range, is a config error naming the key."""
    path = tmp_path / "c.yaml"
    path.write_text("agent:\n  fleet_lock_dsn: postgresql://a@db/x\n  fleet_lock_table: opsagent-fleet\n")
    with pytest.raises(ConfigError) as both:
        load_config(path, env={})
    assert "fleet_lock_table" in str(both.value.problems)
    path.write_text("agent:\n  fleet_lease: 1s\n")
    with pytest.raises(ConfigError) as short:
        load_config(path, env={})
    assert "fleet_lease" in str(short.value.problems)
    path.write_text("checks:\n  postgres:\n    - {name: main, dsn: 'postgresql://a@db/x', scope: everywhere}\n")
    with pytest.raises(ConfigError) as scope:
        load_config(path, env={})
    assert "scope" in str(scope.value.problems)


def test_standby_reports_the_leader_and_opens_no_connection(private_pg: PostgresServer,
                                                            start_agent: Callable[..., RunningAgent]) -> None:
    """Two agents: one check connection between them; the standby shows `standby` checked by the leader and exports no series for it."""
    db, dsn = fleet_db(private_pg)
    leader = start_agent(fleet_config(db, dsn, dsn, "agent-a"))
    poll(lambda: (leader.check_row("postgres", "main") or {}).get("up") is True)
    standby = start_agent(fleet_config(db, dsn, dsn, "agent-b"))
    poll(lambda: standby.get("/readyz").status_code == 200)
    assert leader.get("/readyz").status_code == 200
    row = standby.check_row("postgres", "main")
    assert row is not None and row["state"] == "standby" and row["checked_by"] == "agent-a"
    assert 'target="main"' not in standby.get("/metrics").text
    assert "standby (checked by agent-a)" in standby.get("/").text
    assert metric(standby, "opsagent_fleet_leader{") == ['opsagent_fleet_leader{agent="agent-b"} 0.0']
    assert metric(leader, "opsagent_fleet_leader{") == ['opsagent_fleet_leader{agent="agent-a"} 1.0']
    assert any('target="main"' in line for line in metric(leader, "opsagent_check_up"))
    assert (standby.check_row("cpu", "task") or {}).get("up") is True  # task targets run everywhere
    assert poll(lambda: sessions(private_pg, db) == {"check": 1, "lock": 2} and sessions(private_pg, db))


def test_a_leader_cut_off_from_the_lock_database_hands_over(private_pg: PostgresServer,
                                                             start_agent: Callable[..., RunningAgent]) -> None:
    """Cutting the leader off the lock database hands leadership over; the cut-off agent checks on its own until it sees the lock again, then stands by."""
    db, dsn = fleet_db(private_pg)
    proxy = FaultProxy(private_pg.port)
    try:
        via_proxy = dsn.replace(f":{private_pg.port}/", f":{proxy.port}/")
        first = start_agent(fleet_config(db, dsn, via_proxy, "agent-a"))
        poll(lambda: (first.check_row("postgres", "main") or {}).get("up") is True)
        second = start_agent(fleet_config(db, dsn, dsn, "agent-b"))
        poll(lambda: (second.check_row("postgres", "main") or {}).get("state") == "standby")
        proxy.set_mode("blackhole")
        poll(lambda: (second.check_row("postgres", "main") or {}).get("up") is True, timeout=15)
        assert metric(second, "opsagent_fleet_leader{") == ['opsagent_fleet_leader{agent="agent-b"} 1.0']
        # Cut off for a whole lease, agent-a cannot know a leader exists: it checks rather than watch nothing.
        poll(lambda: first.status()["agent"]["fleet_role"] == "orphan", timeout=15)
        assert metric(first, 'opsagent_fleet_handovers_total{agent="agent-a",change="lost"}')[0].endswith(" 1.0")
        assert metric(first, "opsagent_fleet_leader{") == ['opsagent_fleet_leader{agent="agent-a"} 0.0']
        poll(lambda: (first.check_row("postgres", "main") or {}).get("up") is True, timeout=10)
        proxy.set_mode("pass")  # the lock is back: agent-a sees agent-b leading and stands by again
        poll(lambda: (first.check_row("postgres", "main") or {}).get("checked_by") == "agent-b", timeout=15)
        assert poll(lambda: sessions(private_pg, db)["check"] == 1, timeout=10)
    finally:
        proxy.close()


def test_a_lone_agent_whose_lock_database_dies_still_pages_it_down(
        fresh_pg: PostgresServer, start_agent: Callable[..., RunningAgent]) -> None:
    """When the lock database is the watched database and it dies, the agent checks it anyway and pages TargetDown."""
    dsn = fresh_pg.dsn()
    config = fleet_config("lone", dsn, dsn, "agent-a")
    config["alerts"] = {"TargetDown": {"for": "0s"}}
    agent = start_agent(config)
    poll(lambda: (agent.check_row("postgres", "main") or {}).get("up") is True)
    fresh_pg.kill()
    row = poll(lambda: (lambda r: r if r.get("up") is False else None)(agent.check_row("postgres", "main") or {}),
               timeout=20)
    assert row["state"] != "standby"
    assert agent.status()["agent"]["fleet_role"] == "orphan"
    assert poll(lambda: any(a["alertname"] == "TargetDown" and a["labels"]["target"] == "main"
                            for a in agent.status()["alerts"]), timeout=10)


def test_a_hung_leader_is_fenced_by_its_lease(private_pg: PostgresServer,
                                              start_agent: Callable[..., RunningAgent]) -> None:
    """A leader whose renewals stop while its lock session stays open loses the lock to the server's lease deadline."""
    db, dsn = fleet_db(private_pg)
    hung = start_agent(fleet_config(db, dsn, dsn, "agent-a"))
    poll(lambda: (hung.check_row("postgres", "main") or {}).get("up") is True)
    survivor = start_agent(fleet_config(db, dsn, dsn, "agent-b"))
    poll(lambda: (survivor.check_row("postgres", "main") or {}).get("state") == "standby")
    hung.agent.fleet._stop.set()  # the renewal loop stops; the session stays open and silent
    poll(lambda: not hung.agent.fleet.is_leader(), timeout=10)  # it stops acting on its own first
    poll(lambda: (survivor.check_row("postgres", "main") or {}).get("up") is True, timeout=15)
    assert survivor.agent.fleet.is_leader()


def test_dynamodb_lease_is_exclusive_and_expires(aws: MotoServer) -> None:
    """Two agents on one DynamoDB lease: one holds it, the other takes it only after it expired, and state follows."""
    boto3.client("dynamodb", region_name="us-east-1").create_table(
        TableName="opsagent-fleet", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    now = [1000.0]
    a = DynamoLease("opsagent-fleet", "api", "agent-a", 10.0, region="us-east-1", clock=lambda: now[0])
    b = DynamoLease("opsagent-fleet", "api", "agent-b", 10.0, region="us-east-1", clock=lambda: now[0])
    tick = [0.0]
    fleet_a = Fleet("agent-a", a, 10.0, monotonic=lambda: tick[0])
    fleet_b = Fleet("agent-b", b, 10.0, monotonic=lambda: tick[0])
    fleet_a.round()
    fleet_b.round()
    assert fleet_a.is_leader() and not fleet_b.is_leader()
    assert fleet_b.leader_id() == "agent-a"
    fleet_a.publish([{"alertname": "TargetDown", "check": "redis", "target": "cache", "phase": "firing"}])
    fleet_a.round()  # the loop writes published state on its next pass
    b.save_state("{}")  # not the holder: refused
    now[0] += 11.0  # agent-a stopped renewing (hung, or gone)
    tick[0] += 11.0
    assert not fleet_a.is_leader()  # it fences itself before anyone else may take over
    fleet_b.round()
    fleet_a.round()
    assert fleet_b.is_leader() and not fleet_a.is_leader()
    assert fleet_b.adopted_states() == [{"alertname": "TargetDown", "check": "redis", "target": "cache",
                                         "phase": "firing"}]
    assert fleet_a.lost_total == 1 and fleet_b.acquired_total == 1


def test_a_lone_agent_leads_itself(tmp_path: Path) -> None:
    """Without a fleet lock configured the agent checks every target and says it leads."""
    from opsagent.runtime.agent import Agent

    agent = Agent(make_settings(tmp_path, {"checks": {"redis": [{"name": "cache", "url": "redis://127.0.0.1:1/0"}]}}))
    assert agent.fleet.is_leader() and not agent.shared
    assert agent.standby("redis", "cache") is None


class _StubLease:
    """A lease that is always held and whose stored state is whatever the test sets."""

    mechanism = "stub"

    def __init__(self, state: str | None) -> None:
        self.state = state
        self.saved: list[str] = []

    def renew(self) -> bool:
        return True

    def holder(self) -> str | None:
        return "me"

    def save_state(self, document: str) -> None:
        self.saved.append(document)

    def load_state(self) -> str | None:
        if self.state == "broken":
            raise OSError("lock database gone")
        return self.state

    def release(self) -> None:
        return None


def test_a_new_leader_without_a_stored_document_keeps_its_own_state() -> None:
    """No stored hand-over document (or an unreadable one) means "keep local state", an empty one means "nothing firing"."""
    assert Fleet("me", _StubLease(None), 6.0).adopted_states() is None
    assert Fleet("me", _StubLease("broken"), 6.0).adopted_states() is None
    assert Fleet("me", _StubLease('{"alerts": []}'), 6.0).adopted_states() == []


def test_state_is_written_once_per_transition_not_per_value() -> None:
    """Publishing the same alert phases with new values writes nothing; a new phase writes one document."""
    lease = _StubLease(None)
    fleet = Fleet("me", lease, 6.0)
    fleet.round()
    state = {"alertname": "TargetDown", "check": "redis", "target": "cache", "phase": "pending", "value": 1.0}
    fleet.publish([state])
    fleet.round()
    fleet.publish([{**state, "value": 2.0, "last_at": 5.0}])
    fleet.round()
    fleet.publish([{**state, "phase": "firing"}])
    fleet.round()
    assert [json.loads(d)["alerts"][0]["phase"] for d in lease.saved] == ["pending", "firing"]


def test_agents_on_a_dynamodb_lease_share_a_target_and_hand_over(
        aws: MotoServer, start_agent: Callable[..., RunningAgent], fresh_redis: Any) -> None:
    """With `fleet_lock_table` one agent checks the shared Redis, the other stands by and takes over when it stops."""
    boto3.client("dynamodb", region_name="us-east-1").create_table(
        TableName="opsagent-fleet", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")

    def config(agent: str) -> dict[str, Any]:
        return {"agent": {"name": "dyn-fleet", "id": agent, "fleet_lock_table": "opsagent-fleet", "fleet_lease": LEASE},
                "checks": {"redis": [{"name": "cache", "url": fresh_redis.url(), "interval": "1s"}]}}

    first = start_agent(config("agent-a"))
    poll(lambda: (first.check_row("redis", "cache") or {}).get("up") is True)
    second = start_agent(config("agent-b"))
    poll(lambda: (second.check_row("redis", "cache") or {}).get("state") == "standby")
    assert second.check_row("redis", "cache")["checked_by"] == "agent-a"  # type: ignore[index]
    assert metric(second, "opsagent_fleet_leader{") == ['opsagent_fleet_leader{agent="agent-b"} 0.0']
    assert second.status()["agent"]["fleet_lock"] == "dynamodb-lease"
    first.stop()  # a clean stop hands the lease back at once
    poll(lambda: (second.check_row("redis", "cache") or {}).get("up") is True, timeout=10)
