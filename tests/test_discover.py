"""`opsagent discover`: a config proposed from the ECS task metadata v4 and the task definition on moto."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from opsagent_testing.aws import MotoServer
from tests.fixtures.http_stub import StubServer

DATA = Path(__file__).parent / "data"
DB_PASSWORD = "s3cr3t-db-pw-4471"
REDIS_PASSWORD = "r3dis-pw-9921"
SECRET_DB_PASSWORD = "vault-pg-pw-5530"


@pytest.fixture
def ecs_task(aws: MotoServer) -> Iterator[dict[str, Any]]:
    """Task metadata v4 served locally, with a task definition (environment and secrets) and an RDS instance on moto."""
    rds = boto3.client("rds", region_name="us-east-1")
    db = rds.create_db_instance(DBInstanceIdentifier="api-db", Engine="postgres", DBInstanceClass="db.t3.micro",
                                MasterUsername="app", MasterUserPassword="x" * 12, AllocatedStorage=20)
    host = db["DBInstance"]["Endpoint"]["Address"]
    sm = boto3.client("secretsmanager", region_name="us-east-1")
    secret_arn = sm.create_secret(Name="api/reports-db",
                                  SecretString=f"postgresql://reports:{SECRET_DB_PASSWORD}@reports.internal:5432/reports")["ARN"]
    ecs = boto3.client("ecs", region_name="us-east-1")
    ecs.register_task_definition(family="api", containerDefinitions=[
        {"name": "api", "image": "api:1.4.2", "memory": 512, "environment": [
            {"name": "DATABASE_URL", "value": f"postgresql://app:{DB_PASSWORD}@{host}:5432/app"},
            {"name": "REDIS_URL", "value": f"redis://:{REDIS_PASSWORD}@cache.internal:6379/0"},
            {"name": "LOG_LEVEL", "value": "info"},
        ], "secrets": [{"name": "REPORTS_DATABASE_URL", "valueFrom": secret_arn}]},
        {"name": "worker", "image": "worker:1.4.2", "memory": 256, "environment": [
            {"name": "PGHOST", "value": "jobs.internal"}, {"name": "PGPORT", "value": "6432"},
            {"name": "PGUSER", "value": "worker"}, {"name": "PGDATABASE", "value": "jobs"},
        ], "secrets": [{"name": "PGPASSWORD", "valueFrom": secret_arn}]},
        {"name": "opsagent", "image": "opsagent:0.2", "memory": 256,
         "environment": [{"name": "DATABASE_URL", "value": "postgresql://never:proposed@sidecar.invalid/x"}]},
    ])
    task = json.loads((DATA / "ecs_task.json").read_text())
    task["Revision"] = "1"
    body = json.dumps(task).encode()
    own = json.dumps({"Name": "opsagent", "DockerId": "x"}).encode()
    server = StubServer({
        "/v4/abc/task": lambda: (200, "application/json", body),
        "/v4/abc": lambda: (200, "application/json", own),
    })
    try:
        yield {"env": {**aws.env(), "ECS_CONTAINER_METADATA_URI_V4": f"{server.url}/v4/abc"}, "host": host}
    finally:
        server.close()


def _discover(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "opsagent", "discover", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def test_discover_proposes_postgres_redis_and_the_rds_instance_with_secrets_masked(
        ecs_task: dict[str, Any], tmp_path: Path) -> None:
    """The proposal names the app's databases (URL and PG* forms) and cache and its RDS instance id, shows no password, and validates."""
    out = _discover(ecs_task["env"])
    assert out.returncode == 0, out.stderr
    for secret in (DB_PASSWORD, REDIS_PASSWORD, SECRET_DB_PASSWORD, "proposed"):
        assert secret not in out.stdout + out.stderr
    config = yaml.safe_load(out.stdout)
    dsns = [t["dsn"] for t in config["checks"]["postgres"]]
    assert f"postgresql://app:***@{ecs_task['host']}:5432/app" in dsns
    assert "postgresql://***" in dsns  # the unresolved secret: no host, nothing guessed
    assert "postgresql://worker:***@jobs.internal:6432/jobs" in dsns  # libpq's PG* variables of another container
    assert config["checks"]["redis"][0]["url"] == "redis://:***@cache.internal:6379/0"
    assert config["backup"]["rds_instances"] == ["api-db"]
    assert config["agent"]["name"] == "api"
    path = tmp_path / "proposed.yaml"
    path.write_text(out.stdout)
    check = subprocess.run([sys.executable, "-m", "opsagent", "config", "validate", "--config", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_resolve_secrets_learns_the_host_but_still_masks_the_password(ecs_task: dict[str, Any]) -> None:
    """With --resolve-secrets the secret DSN's host appears in the JSON proposal while its password stays ***."""
    out = _discover(ecs_task["env"], "--json", "--resolve-secrets")
    assert out.returncode == 0, out.stderr
    assert SECRET_DB_PASSWORD not in out.stdout + out.stderr
    doc = json.loads(out.stdout)
    dsns = [t["dsn"] for t in doc["config"]["checks"]["postgres"]]
    assert "postgresql://reports:***@reports.internal:5432/reports" in dsns
    assert any("reports.internal is not the endpoint of an RDS instance" in n for n in doc["notes"])


def test_discover_outside_ecs_says_so(aws: MotoServer) -> None:
    """Without the task metadata endpoint discover exits 1 with a sentence naming the missing variable."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "ECS_CONTAINER_METADATA_URI_V4"}
    out = subprocess.run([sys.executable, "-m", "opsagent", "discover"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 1
    assert "ECS_CONTAINER_METADATA_URI_V4 is not set" in out.stderr
    assert "Traceback" not in out.stderr
