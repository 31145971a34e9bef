"""Issue 19's figure: what N sidecars of one service cost the shared database and the CloudWatch bill.

For 1, 3 and 10 real agent processes with one config (a postgres target, a
CloudWatch error_rate target), once with the fleet lock and once without it
(every agent checks everything, release 1's behaviour): the check connections
on the shared PostgreSQL (``application_name=opsagent``; the lock sessions are
counted apart) and the ``GetMetricData`` calls per check round, counted by a
recording proxy in front of the moto server.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks import harness as h
from benchmarks.report import Row
from opsagent_testing.aws import MotoServer
from opsagent_testing.proxy import HttpFaultProxy

AGENTS = (1, 3, 10)
INTERVAL = 5.0
ROUNDS = 4


def figure_fleet(ctx: Any) -> None:
    moto = MotoServer()
    proxy = HttpFaultProxy(moto.url)
    try:
        env = {**moto.env(), "AWS_ENDPOINT_URL": proxy.url}
        for n in AGENTS:
            fleet = _measure(ctx, proxy, env, n, fleet=True)
            alone = _measure(ctx, proxy, env, n, fleet=False)
            ctx.report.add(Row("fleet", f"{n} agents: check connections on the shared PostgreSQL",
                               f"{fleet['check']} (+{fleet['lock']} lock sessions)",
                               f"{alone['check']} without the fleet lock", _ratio(fleet["check"], alone["check"]),
                               "1", fleet["check"] == 1, "pg_stat_activity by application_name, after the first rounds"))
            ctx.report.add(Row("fleet", f"{n} agents: CloudWatch GetMetricData calls per round",
                               f"{fleet['cw']:.2g}", f"{alone['cw']:.2g} without the fleet lock",
                               _ratio(fleet["cw"], alone["cw"]), "1", fleet["cw"] <= 1.01,
                               f"counted by a proxy in front of moto over {ROUNDS} rounds of {INTERVAL:g} s"))
    finally:
        proxy.close()
        moto.stop()


def _measure(ctx: Any, proxy: HttpFaultProxy, env: dict[str, str], n: int, fleet: bool) -> dict[str, float]:
    db = f"bench_fleet_{n}_{'on' if fleet else 'off'}_{int(time.time())}"
    ctx.pg.psql(f"CREATE DATABASE {db}")
    dsn = ctx.pg_dsn(db)
    every = f"{INTERVAL:g}s"
    config: dict[str, Any] = {
        "agent": {"name": db, **({"fleet_lock_dsn": dsn, "fleet_lease": "3s"} if fleet else {})},
        "checks": {"cpu": {"interval": "15s"}, "memory": {"interval": "15s"},
                   "postgres": [{"name": "main", "dsn": dsn, "interval": every}],
                   "error_rate": [{"name": "alb", "cloudwatch": {"load_balancer": "app/api/0123456789abcdef"},
                                   "window": "1m", "interval": every}]},
    }
    agents = []
    try:
        for i in range(n):
            agents.append(h.start_agent(ctx.work, {**config, "agent": {**config["agent"], "id": f"a{i}"}},
                                        f"fleet-{n}-{i}-{int(fleet)}", env))
        for agent in agents:
            agent.wait_ready(timeout=120)
        time.sleep(INTERVAL)  # leadership settled, first rounds done
        proxy.clear()
        time.sleep(INTERVAL * ROUNDS)
        calls = proxy.count("GetMetricData")
        rows = ctx.pg.psql(f"SELECT application_name FROM pg_stat_activity WHERE datname = '{db}'").split()
    finally:
        for agent in agents:
            agent.stop()
    return {"check": rows.count("opsagent"), "lock": sum(r.startswith("opsagent-fleet:") for r in rows),
            "cw": calls / ROUNDS}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None
