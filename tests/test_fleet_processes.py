"""Three real `opsagent run` processes with one config against one PostgreSQL: one connection, fail-over, one page."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from opsagent_testing.alertmanager import Receiver
from opsagent_testing.servers import PostgresServer, free_port, wait_for_port
from tests.fixtures.agent import poll

INTERVAL = 2.0


class Member:
    """One agent process of the fleet."""

    def __init__(self, config: Path, tmp: Path, agent_id: str) -> None:
        self.id = agent_id
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OPSAGENT_AGENT__LISTEN": f"127.0.0.1:{self.port}", "OPSAGENT_AGENT__ID": agent_id,
               "OPSAGENT_AGENT__STATE_DIR": str(tmp / agent_id)}
        self.log = open(tmp / f"{agent_id}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "opsagent", "run", "--config", str(config)],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def row(self) -> dict[str, Any]:
        try:
            doc = requests.get(self.url + "/status", timeout=2).json()
        except (requests.RequestException, ValueError):
            return {}
        return next((r for r in doc["checks"] if r["check"] == "postgres"), {})

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(25)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def fleet(private_pg: PostgresServer, receiver: Receiver, tmp_path: Path) -> Iterator[dict[str, Any]]:
    db = "fleet_" + uuid.uuid4().hex[:10]
    private_pg.psql(f"CREATE DATABASE {db}")
    dsn = private_pg.dsn(db)
    config = tmp_path / "opsagent.yaml"
    config.write_text(yaml.safe_dump({
        "agent": {"name": db, "fleet_lock_dsn": dsn, "fleet_lease": "3s"},
        "checks": {"cpu": {"interval": "5s"}, "memory": {"interval": "5s"},
                   "postgres": [{"name": "main", "dsn": dsn, "interval": f"{INTERVAL:g}s"}]},
        # Any connection at all breaches: the page fires on the first check and stays firing.
        "alerts": {"PostgresConnectionsExhausted": {"threshold": 0.001, "for": "0s"}},
        "notify": {"alertmanager_url": receiver.url, "repeat_interval": "2s"},
    }))
    members = [Member(config, tmp_path, f"agent-{i}") for i in range(3)]
    try:
        for m in members:
            wait_for_port(m.port, timeout=30)
        yield {"db": db, "members": members}
    finally:
        for m in members:
            m.stop()


def _sessions(pg: PostgresServer, db: str) -> dict[str, int]:
    rows = pg.psql(f"SELECT application_name FROM pg_stat_activity WHERE datname = '{db}'").split()
    return {"check": rows.count("opsagent"), "lock": sum(r.startswith("opsagent-fleet:") for r in rows)}


def _pages(receiver: Receiver) -> list[dict[str, Any]]:
    return [a for r in list(receiver.requests) for a in (r["body"] or [])
            if a.get("labels", {}).get("alertname") == "PostgresConnectionsExhausted"]


def _leader(members: list[Member]) -> Member | None:
    leaders = [m for m in members if m.proc.poll() is None and m.row().get("up") is True]
    return leaders[0] if len(leaders) == 1 else None


def test_three_agents_share_one_connection_and_survive_kill_and_hang(
        fleet: dict[str, Any], private_pg: PostgresServer, receiver: Receiver) -> None:
    """One check connection for three agents; after kill -9 and then SIGSTOP of the leader a survivor checks within two intervals, with one page throughout."""
    db, members = fleet["db"], fleet["members"]
    first = poll(lambda: _leader(members), timeout=30)
    others = [m for m in members if m is not first]
    poll(lambda: all(m.row().get("state") == "standby" and m.row().get("checked_by") == first.id for m in others))
    assert poll(lambda: _sessions(private_pg, db) == {"check": 1, "lock": 3} and True, timeout=10)
    poll(lambda: _pages(receiver), timeout=15)
    starts = {a["startsAt"] for a in _pages(receiver)}

    os.kill(first.proc.pid, signal.SIGKILL)  # no clean stop, no lock release: the session just drops
    first.proc.wait(10)
    killed_at = time.time()
    second = poll(lambda: _leader(others), timeout=2 * INTERVAL + 2)
    assert second.row()["last_run"] > killed_at
    assert poll(lambda: _sessions(private_pg, db) == {"check": 1, "lock": 2} and True, timeout=10)
    # The new leader refreshes the page it adopted (not lost) with the same start (not re-paged).
    poll(lambda: any(a["generatorURL"] == second.url + "/" for a in _pages(receiver)), timeout=15)

    third = next(m for m in others if m is not second)
    os.kill(second.proc.pid, signal.SIGSTOP)  # hung: its lock session stays open, it stops renewing
    stopped_at = time.time()
    poll(lambda: third.row().get("up") is True and third.row()["last_run"] > stopped_at, timeout=15)
    os.kill(second.proc.pid, signal.SIGCONT)
    poll(lambda: second.row().get("state") == "standby" and second.row().get("checked_by") == third.id, timeout=15)
    assert poll(lambda: _sessions(private_pg, db)["check"] == 1 and True, timeout=10)
    poll(lambda: any(a["generatorURL"] == third.url + "/" for a in _pages(receiver)), timeout=15)

    pages = _pages(receiver)
    assert {a["startsAt"] for a in pages} == starts, "a new leader paged again instead of adopting the alert"
    assert not any(_resolved(a) for a in pages), "the page was resolved across a hand-over"


def _resolved(alert: dict[str, Any]) -> bool:
    """A resolution says so in its description (SPEC 9.2)."""
    return "resolved" in str(alert.get("annotations", {}).get("description", "")).lower()
