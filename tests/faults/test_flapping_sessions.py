"""Issue 21: under flapping, a PostgreSQL target holds one session (plus at most one being replaced), never more."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg

from opsagent_testing.proxy import FaultProxy
from opsagent_testing.servers import PostgresServer
from tests.fixtures.agent import RunningAgent, poll

TARGETS = 4
FLAPS = ("blackhole", "pass", "reset", "pass", "refuse", "pass", "delay", "pass")


def test_flapping_targets_never_pile_up_sessions(fresh_pg: PostgresServer,
                                                 start_agent: Callable[..., RunningAgent]) -> None:
    """Hangs, resets, refusals and slow answers in turn leave each target at most two sessions at any sample, and one once it settles."""
    proxy = FaultProxy(fresh_pg.port)
    base = fresh_pg.dsn().replace(f":{fresh_pg.port}/", f":{proxy.port}/")
    targets = [{"name": f"t{i}", "dsn": f"{base}?application_name=opsagent-t{i}", "interval": "1s"}
               for i in range(TARGETS)]
    peak: dict[str, int] = {}
    done = threading.Event()
    sampler = psycopg.connect(fresh_pg.dsn(), autocommit=True, application_name="sampler")

    def sample() -> None:
        while not done.is_set():
            rows = sampler.execute("SELECT application_name, count(*) FROM pg_stat_activity "
                                   "WHERE application_name LIKE 'opsagent-t%' GROUP BY 1").fetchall()
            for name, count in rows:
                peak[name] = max(peak.get(name, 0), int(count))
            done.wait(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    try:
        agent = start_agent({"checks": {"postgres": targets}})
        poll(lambda: all((agent.check_row("postgres", t["name"]) or {}).get("up") for t in targets))
        thread.start()
        for mode in FLAPS:
            proxy.set_mode(mode, delay=1.5 if mode == "delay" else None)
            # Two check rounds per state: enough for runs to hang, be abandoned and reconnect.
            done.wait(1.2)
        proxy.set_mode("pass")
        poll(lambda: all((agent.check_row("postgres", t["name"]) or {}).get("up") for t in targets), timeout=15)
        settled = poll(lambda: _settled(sampler), timeout=15)
    finally:
        done.set()
        thread.join(2)
        sampler.close()
        proxy.close()
    assert peak and max(peak.values()) <= 2, f"sessions per target peaked at {peak}"
    assert settled == {f"opsagent-t{i}": 1 for i in range(TARGETS)}


def _settled(conn: psycopg.Connection[Any]) -> dict[str, int] | None:
    rows = conn.execute("SELECT application_name, count(*) FROM pg_stat_activity "
                        "WHERE application_name LIKE 'opsagent-t%' GROUP BY 1").fetchall()
    counts = {str(name): int(n) for name, n in rows}
    return counts if len(counts) == TARGETS and set(counts.values()) == {1} else None
