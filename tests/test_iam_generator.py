"""`opsagent iam-policy` and the shipped IAM files: parliament-clean, scoped to the config's resources, complete."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from parliament import analyze_policy_string

from opsagent import iam
from opsagent.config import load_config

ROOT = Path(__file__).resolve().parents[1]
IAM_DIR = ROOT / "deploy" / "iam"
TEMPLATE = IAM_DIR / "opsagent-policy.json"
TASK = ROOT / "deploy" / "ecs" / "task-definition.json"
ACCOUNT = "111122223333"
KEYS = {"alias/monay-backups": f"arn:aws:kms:ap-southeast-1:{ACCOUNT}:key/0a1b2c3d-1111-2222-3333-444455556666",
        "alias/monay-backups-dr": f"arn:aws:kms:ap-northeast-1:{ACCOUNT}:key/0a1b2c3d-7777-8888-9999-000011112222"}


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def _resources(statement: dict[str, Any]) -> list[str]:
    r = statement["Resource"]
    return [r] if isinstance(r, str) else list(r)


def _by_sid(policy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {st["Sid"]: st for st in policy["Statement"]}


@pytest.mark.parametrize("name", ["opsagent-policy.json", "execution-role-policy.json", "ecs-exec-policy.json"])
def test_shipped_policies_are_parliament_clean(name: str) -> None:
    """parliament finds nothing in any shipped policy (no Resource * where a resource exists, no bad conditions)."""
    findings = analyze_policy_string((IAM_DIR / name).read_text()).findings
    assert [(f.issue, f.detail) for f in findings] == []


def test_the_shipped_task_policy_is_what_the_generator_builds_for_its_example_config() -> None:
    """deploy/iam/opsagent-policy.json equals `opsagent iam-policy` for deploy/iam/example-config.yaml, so the two never drift."""
    settings = load_config(IAM_DIR / "example-config.yaml", env={})
    assert iam.task_policy(settings, iam.EXAMPLE_ACCOUNT, _load(TEMPLATE)) == _load(TEMPLATE)


def test_generated_policy_names_only_the_configured_resources_in_the_given_account() -> None:
    """For a platform's config, snapshots and tags are allowed on its own databases only, in its account, parliament-clean."""
    settings = load_config(ROOT / "deploy" / "examples" / "monay.yaml", env={})
    policy = iam.task_policy(settings, ACCOUNT, _load(TEMPLATE), key_arns=KEYS)
    text = json.dumps(policy)
    assert iam.EXAMPLE_ACCOUNT not in text and "acme-" not in text
    assert analyze_policy_string(text).findings == []
    sids = _by_sid(policy)
    region = settings.agent.region
    instances = {f"arn:aws:rds:{region}:{ACCOUNT}:db:{name}" for name in settings.backup.rds_instances}
    snapshot_sources = {r for r in _resources(sids["RdsSnapshotAndCopy"]) if ":db:" in r}
    assert snapshot_sources == instances
    assert "rds:AddTagsToResource" in sids["RdsSnapshotAndCopy"]["Action"]
    grants = sids["BackupEncryptionKeyGrants"]
    assert grants["Action"] == ["kms:CreateGrant"]
    assert grants["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}
    assert sorted(_resources(grants)) == sorted(KEYS.values())
    for st in policy["Statement"]:
        if "*" in _resources(st):  # only actions that have no resource-level permissions at all
            assert st["Action"] in (["cloudwatch:GetMetricData"], ["ecs:DescribeTaskDefinition"]), st["Sid"]
    assert all("kms:CreateGrant" not in st["Action"] or "Condition" in st for st in policy["Statement"])


def test_features_not_configured_get_no_statement(tmp_path: Path) -> None:
    """A config with only a file repository and no AWS targets gets no S3, RDS, ElastiCache, SNS, SQS or KMS statements."""
    path = tmp_path / "opsagent.yaml"
    path.write_text(f"backup: {{repository: 'file://{tmp_path}/b'}}\n")
    policy = iam.task_policy(load_config(path, env={}), ACCOUNT, _load(TEMPLATE))
    # Only what `opsagent discover` needs remains: it runs in the task with this role, before a config exists.
    assert [s["Sid"] for s in policy["Statement"]] == ["FleetDiscoverTask", "FleetDiscoverSecrets"]


def test_statements_the_generator_does_not_know_are_kept_for_the_account() -> None:
    """A statement added to the template for a new AWS call survives generation, with the example account replaced."""
    template = _load(TEMPLATE)
    template["Statement"].append({"Sid": "SomeNewCall", "Effect": "Allow", "Action": ["ecs:DescribeTaskDefinition"],
                                  "Resource": f"arn:aws:ecs:us-east-1:{iam.EXAMPLE_ACCOUNT}:task-definition/api:*"})
    settings = load_config(IAM_DIR / "example-config.yaml", env={})
    kept = _by_sid(iam.task_policy(settings, ACCOUNT, template))["SomeNewCall"]
    assert kept["Resource"] == f"arn:aws:ecs:us-east-1:{ACCOUNT}:task-definition/api:*"


def test_execution_role_policy_covers_every_secret_of_the_task_definition() -> None:
    """The shipped execution-role policy lets ECS read exactly the secrets the task definition injects (no Resource *)."""
    shipped = _load(IAM_DIR / "execution-role-policy.json")
    assert shipped == iam.execution_policy(_load(TASK))
    allowed = {r for st in shipped["Statement"] for r in _resources(st)}
    for container in _load(TASK)["containerDefinitions"]:
        for secret in container.get("secrets", []):
            arn = ":".join(secret["valueFrom"].split(":")[:7])
            assert arn in allowed, secret["name"]
    assert "*" not in allowed


def test_cli_builds_the_policy_and_refuses_bad_input(tmp_path: Path) -> None:
    """`opsagent iam-policy` prints the JSON policy; a bad account id or an alias key without its ARN is a usage error (exit 2)."""
    config = str(ROOT / "deploy" / "examples" / "monay.yaml")

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "opsagent", "iam-policy", "--config", config,
                               "--template", str(TEMPLATE), *extra], capture_output=True, text=True, timeout=60)

    ok = run("--account", ACCOUNT, *(f"--kms-key-arn={alias}={arn}" for alias, arn in KEYS.items()))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["Statement"]
    alias = run("--account", ACCOUNT)
    assert alias.returncode == 2 and "--kms-key-arn alias/monay-backups=" in alias.stderr
    with pytest.raises(iam.PolicyError, match="expected 12 digits"):
        iam.task_policy(load_config(Path(config), env={}), "12", _load(TEMPLATE), key_arns=KEYS)
