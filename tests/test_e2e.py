"""End to end: a shipped profile, real servers, a real Prometheus scraping the agent, a real Alertmanager.

The paypass profile (deploy/examples/paypass.yaml) runs as `opsagent run` in a
subprocess, with its addresses and secrets injected through OPSAGENT_*
environment variables exactly as ECS does. Redis is filled past the profile's
threshold, and the alert must reach Alertmanager with its runbook link, the
series must be in Prometheus, and the resolution must follow recovery.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
import requests

from opsagent_testing.alertmanager import AlertmanagerServer, PrometheusServer
from opsagent_testing.aws import MotoServer
from opsagent_testing.pgbouncer import PgBouncerServer
from opsagent_testing.servers import PostgresServer, RedisServer, free_port
from tests.fixtures.agent import poll

PROFILE = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "paypass.yaml"
TOKEN = "e2e-admin-token-5150"


@pytest.fixture
def stack(aws: MotoServer) -> Iterator[dict[str, Any]]:
    pg = PostgresServer(max_connections=30).start()
    bouncer = PgBouncerServer(pg).start()
    cache = RedisServer(maxmemory="8mb").start()
    try:
        yield {"pg": pg, "pgbouncer": bouncer, "redis": cache}
    finally:
        cache.cleanup()
        bouncer.cleanup()
        pg.cleanup()


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_profile_end_to_end_breach_page_and_resolution(tmp_path: Path, stack: dict[str, Any],
                                                       alertmanager: AlertmanagerServer) -> None:
    """A Redis breach under the paypass profile pages Alertmanager with its runbook link and resolves after recovery."""
    pg: PostgresServer = stack["pg"]
    cache: RedisServer = stack["redis"]
    bouncer: PgBouncerServer = stack["pgbouncer"]
    boto3.client("s3", region_name="eu-west-1").create_bucket(
        Bucket="paypass-backups", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    boto3.client("s3", region_name="eu-north-1").create_bucket(
        Bucket="paypass-backups-dr", CreateBucketConfiguration={"LocationConstraint": "eu-north-1"})
    pg.psql("CREATE TABLE orders (id int primary key, total numeric); "
            "INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 500) g")

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSAGENT_")}
    env.update({
        "OPSAGENT_AGENT__LISTEN": f"127.0.0.1:{port}",
        "OPSAGENT_AGENT__STATE_DIR": str(tmp_path / "state"),
        "OPSAGENT_AGENT__ADMIN_TOKEN": TOKEN,
        "OPSAGENT_CHECKS__CPU": '{"interval": "1s"}',
        "OPSAGENT_CHECKS__MEMORY": '{"interval": "1s"}',
        "OPSAGENT_CHECKS__POSTGRES": json.dumps([{"name": "main", "dsn": pg.dsn(), "interval": "1s"}]),
        "OPSAGENT_CHECKS__PGBOUNCER": json.dumps([{"name": "pool", "dsn": bouncer.admin_dsn(), "interval": "1s"}]),
        "OPSAGENT_CHECKS__REDIS": json.dumps([{"name": "sessions", "url": cache.url(), "interval": "1s"}]),
        "OPSAGENT_CHECKS__ERROR_RATE": "[]",
        "OPSAGENT_CHECKS__RABBITMQ": "[]",  # the profile's broker and public probe are cluster/Internet names
        "OPSAGENT_CHECKS__HTTP": "[]",
        "OPSAGENT_ALERTS__REDISMEMORYHIGH__FOR": "2s",
        "OPSAGENT_NOTIFY__ALERTMANAGER_URL": alertmanager.url,
        "OPSAGENT_NOTIFY__REPEAT_INTERVAL": "10s",
        "OPSAGENT_BACKUP__DRILL_DSN": pg.dsn(),
        "OPSAGENT_BACKUP__DRILL_ON_TARGET_SERVER": "true",  # the stand-in stack is one private server
        "OPSAGENT_BACKUP__LOCK_DSN": pg.dsn(),
        "OPSAGENT_AGENT__REGION": "eu-west-1",
    })
    agent_url = f"http://127.0.0.1:{port}"
    prom = PrometheusServer(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: opsagent\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n")
    proc = subprocess.Popen([sys.executable, "-m", "opsagent", "run", "--config", str(PROFILE)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        prom.start()
        poll(lambda: _ok(agent_url + "/readyz"), timeout=30)
        # Prometheus scrapes every series the profile's checks produce.
        for expr in ('opsagent_check_up{check="redis",target="sessions"} == 1',
                     'opsagent_check_up{check="postgres",target="main"} == 1',
                     'opsagent_check_up{check="pgbouncer",target="pool"} == 1',
                     'opsagent_check_value{check="memory",target="task"}'):
            poll(lambda e=expr: prom.query(e), timeout=30)

        # Breach: fill Redis past the profile's 80 % threshold.
        client = redis.Redis.from_url(cache.url(), socket_timeout=5)
        blob = b"x" * 8192
        for i in range(1500):
            client.set(f"session:{i}", blob)
        [alert] = [a for a in alertmanager.wait_for(
            lambda alerts: any(a["labels"].get("alertname") == "RedisMemoryHigh" for a in alerts), timeout=30)
            if a["labels"].get("alertname") == "RedisMemoryHigh"]  # the agent's Watchdog is there too
        assert alert["labels"]["agent"] == "paypass-api" and alert["labels"]["target"] == "sessions"
        assert alert["annotations"]["runbook_url"].endswith("/RedisMemoryHigh.md")
        assert float(alert["annotations"]["value"].rstrip("%")) > 80
        poll(lambda: prom.query('opsagent_alert_firing{alertname="RedisMemoryHigh",target="sessions"} == 1'), timeout=30)

        # A backup through the admin endpoint lands in S3 and its RPO series reaches Prometheus.
        r = requests.post(agent_url + "/backup", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert r.status_code == 202, r.text
        poll(lambda: prom.query('opsagent_backup_last_success_timestamp_seconds{kind="postgres",target="main"} > 0'),
             timeout=60)

        # Recovery: the alert resolves in Alertmanager.
        client.flushall()
        alertmanager.wait_for(
            lambda alerts: not any(a["labels"].get("alertname") == "RedisMemoryHigh" for a in alerts), timeout=30)
        status = requests.get(agent_url + "/status", timeout=5).json()
        assert not any(a.get("alertname") == "RedisMemoryHigh" for a in status["alerts"])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=25)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        prom.cleanup()
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out
    assert TOKEN not in out and (pg.password or "no-password-set") not in out
