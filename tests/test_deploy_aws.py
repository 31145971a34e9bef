"""deploy/ecs/task-definition.json and deploy/iam/opsagent-policy.json, registered on the moto server."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import boto3
import pytest

from opsagent.config import ENV_PREFIX, ConfigError, Settings, load_config

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "deploy" / "ecs" / "task-definition.json"
POLICY = ROOT / "deploy" / "iam" / "opsagent-policy.json"

# The actions the issue names for the agent's AWS paths. The exhaustive two-way
# comparison with every recorded call is tests/test_zz_iam_policy.py.
REQUIRED_ACTIONS = {
    # backups in S3 (objects, multipart uploads and their cleanup, listings)
    "s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:ListBucket", "s3:AbortMultipartUpload",
    "s3:ListBucketMultipartUploads",
    # SSE-KMS (data keys for puts, decrypt for gets and multipart, grants for encrypted snapshot copies)
    "kms:Decrypt", "kms:GenerateDataKey", "kms:CreateGrant",
    # RDS snapshots, cross-region copies, retention, drills
    "rds:CreateDBSnapshot", "rds:CopyDBSnapshot", "rds:DescribeDBSnapshots", "rds:DeleteDBSnapshot",
    "rds:DescribeDBInstances", "rds:RestoreDBInstanceFromDBSnapshot", "rds:DeleteDBInstance",
    # ElastiCache snapshots
    "elasticache:CreateSnapshot", "elasticache:DescribeSnapshots", "elasticache:DeleteSnapshot",
    # notifications and checks
    "sns:Publish", "cloudwatch:GetMetricData", "sqs:GetQueueAttributes", "s3:GetReplicationConfiguration",
}


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def sidecar(task: dict[str, Any]) -> dict[str, Any]:
    [container] = [c for c in task["containerDefinitions"] if c["name"] == "opsagent"]
    return container


# -- ECS -----------------------------------------------------------------------------------------


def test_the_task_definition_registers_on_ecs(aws: Any) -> None:
    """ECS accepts the task definition as written and keeps both containers, the sidecar's port and health check."""
    ecs = boto3.client("ecs", region_name="us-east-1")
    registered = ecs.register_task_definition(**load(TASK))["taskDefinition"]
    assert registered["family"] == "api-with-opsagent"
    described = ecs.describe_task_definition(taskDefinition="api-with-opsagent")["taskDefinition"]
    names = {c["name"] for c in described["containerDefinitions"]}
    assert names == {"app", "opsagent"}
    agent = sidecar(described)
    assert agent["portMappings"][0]["containerPort"] == 9108
    assert "/healthz" in " ".join(agent["healthCheck"]["command"])


def test_the_sidecar_is_a_well_behaved_fargate_neighbour() -> None:
    """The sidecar starts after the app, stops within its stopTimeout, is non-essential, read-only and modest in CPU/memory."""
    task = load(TASK)
    agent = sidecar(task)
    assert task["requiresCompatibilities"] == ["FARGATE"] and task["networkMode"] == "awsvpc"
    assert agent["dependsOn"] == [{"containerName": "app", "condition": "START"}]
    assert 25 < agent["stopTimeout"] <= 120  # the agent stops cleanly within 25 s of SIGTERM
    assert agent["essential"] is False  # a monitoring failure never takes the API down
    assert agent["readonlyRootFilesystem"] is True
    assert {m["containerPath"] for m in agent["mountPoints"]} == {"/var/lib/opsagent", "/tmp"}
    assert {v["name"] for v in task["volumes"]} >= {m["sourceVolume"] for m in agent["mountPoints"]}
    assert agent["cpu"] <= 512 and agent["memory"] <= 512
    total_memory = sum(c.get("memory") or c.get("memoryReservation", 0) for c in task["containerDefinitions"])
    assert total_memory <= int(task["memory"])
    assert sum(c.get("cpu", 0) for c in task["containerDefinitions"]) <= int(task["cpu"])


def test_logs_and_prometheus_discovery_labels_are_set() -> None:
    """The sidecar logs to CloudWatch through awslogs and carries the docker labels Prometheus ECS discovery reads."""
    agent = sidecar(load(TASK))
    assert agent["logConfiguration"]["logDriver"] == "awslogs"
    assert agent["logConfiguration"]["options"]["awslogs-stream-prefix"] == "opsagent"
    labels = agent["dockerLabels"]
    assert labels["PROMETHEUS_EXPORTER_PORT"] == "9108"
    assert labels["PROMETHEUS_EXPORTER_PATH"] == "/metrics"


def test_secrets_come_from_secrets_manager_as_valid_opsagent_variables() -> None:
    """Every secret is a Secrets Manager reference injected as an OPSAGENT_<SECTION>__<KEY> variable the config accepts."""
    agent = sidecar(load(TASK))
    names = {s["name"] for s in agent["secrets"]}
    assert {"OPSAGENT_NOTIFY__SLACK_WEBHOOK_URL", "OPSAGENT_NOTIFY__PAGERDUTY_ROUTING_KEY", "OPSAGENT_NOTIFY__SENTRY_DSN",
            "OPSAGENT_CHECKS__POSTGRES", "OPSAGENT_BACKUP__DRILL_DSN"} <= names
    for secret in agent["secrets"]:
        assert re.match(r"^arn:aws:secretsmanager:[a-z0-9-]+:\d{12}:secret:", secret["valueFrom"]), secret
    fake = {
        "OPSAGENT_CHECKS__POSTGRES": '[{"name": "main", "dsn": "postgresql://opsagent:pw-example@db:5432/app"}]',
        "OPSAGENT_CHECKS__PGBOUNCER": '[{"name": "pool", "dsn": "postgresql://stats:pw-example@127.0.0.1:6432/pgbouncer"}]',
        "OPSAGENT_BACKUP__DRILL_DSN": "postgresql://drill:pw-example@scratch:5432/drill",
        "OPSAGENT_BACKUP__LOCK_DSN": "postgresql://opsagent:pw-example@db:5432/app",
        "OPSAGENT_NOTIFY__SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XXXX",
        "OPSAGENT_NOTIFY__PAGERDUTY_ROUTING_KEY": "example-routing-key",
        "OPSAGENT_NOTIFY__SENTRY_DSN": "https://examplePublicKey@o0.ingest.sentry.io/0",
        "OPSAGENT_AGENT__ADMIN_TOKEN": "example-admin-token",
    }
    assert names <= set(fake), "a secret the test does not know how to fake was added"
    env = {e["name"]: e["value"] for e in agent["environment"]} | {n: fake[n] for n in names}
    assert all(n.startswith(ENV_PREFIX) for n in env)
    settings = load_config(None, env=env)
    assert settings.notify.pagerduty_routing_key is not None
    assert settings.agent.listen == "0.0.0.0:9108"
    assert settings.checks.postgres[0].name == "main"


def test_a_misspelt_secret_variable_would_be_caught() -> None:
    """The config rejects an OPSAGENT_ variable naming no section, so the previous test can fail."""
    with pytest.raises(ConfigError, match="OPSAGENT_NOTIFI__SENTRY_DSN"):
        load_config(None, env={"OPSAGENT_NOTIFI__SENTRY_DSN": "https://examplePublicKey@o0.ingest.sentry.io/0"})


# -- IAM -----------------------------------------------------------------------------------------


def statements() -> list[dict[str, Any]]:
    return list(load(POLICY)["Statement"])


def actions_of(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def test_the_policy_is_accepted_by_iam(aws: Any) -> None:
    """IAM creates the managed policy from the file as written."""
    iam = boto3.client("iam", region_name="us-east-1")
    created = iam.create_policy(PolicyName="opsagent", PolicyDocument=POLICY.read_text(),
                                Description="opsagent sidecar: backups, snapshots, checks, notifications")["Policy"]
    version = iam.get_policy_version(PolicyArn=created["Arn"], VersionId=created["DefaultVersionId"])
    document = version["PolicyVersion"]["Document"]
    if isinstance(document, str):
        document = json.loads(document)
    assert len(document["Statement"]) == len(statements())


def test_the_policy_lists_every_action_the_agent_calls_and_no_wildcard() -> None:
    """Every AWS operation the agent performs is allowed by an explicit action, and no action is a wildcard."""
    allowed: set[str] = set()
    for st in statements():
        assert st["Effect"] == "Allow"
        assert "NotAction" not in st and "NotResource" not in st
        for action in actions_of(st):
            assert "*" not in action, f"{st['Sid']}: wildcard action {action}"
            assert re.fullmatch(r"[a-z0-9-]+:[A-Z][A-Za-z0-9]+", action), action
            allowed.add(action)
    missing = REQUIRED_ACTIONS - allowed
    assert not missing, f"actions the agent needs but the policy lacks: {sorted(missing)}"


def test_destructive_actions_are_scoped_to_what_opsagent_created() -> None:
    """Deleting snapshots and instances is allowed only on opsagent-named resources carrying opsagent's tags."""
    for st in statements():
        for action in actions_of(st):
            if re.match(r"^(rds|elasticache):Delete", action):
                resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
                assert all(":opsagent-" in r for r in resources), (st["Sid"], resources)
                tag_keys = {k for cond in st.get("Condition", {}).values() for k in cond}
                assert any(k.startswith("aws:ResourceTag/opsagent:") for k in tag_keys), st["Sid"]


def test_only_read_only_actions_use_a_star_resource() -> None:
    """Statements on every resource ('*') hold only Describe/List/Get actions, which AWS cannot scope further."""
    for st in statements():
        if st["Resource"] == "*" or st["Resource"] == ["*"]:
            for action in actions_of(st):
                assert re.match(r"^[a-z0-9-]+:(Describe|List|Get)", action), (st["Sid"], action)


def test_the_settings_model_still_has_the_sections_the_deploy_files_name() -> None:
    """The sections the task definition's variables address exist in the configuration model."""
    sections = set(Settings.model_fields)
    agent = sidecar(load(TASK))
    for entry in agent["environment"] + agent["secrets"]:
        section = entry["name"][len(ENV_PREFIX):].split("__")[0].lower()
        assert section in sections, entry["name"]
