"""deploy/iam/opsagent-policy.json allows exactly what the agent calls (named test_zz_ so it runs last).

Every AWS operation the agent performed anywhere in this test session was
recorded (tests/aws_audit_site/sitecustomize.py, botocore ``before-call`` hooks
on the agent's own clients only). Here it is mapped to IAM actions and compared
with the policy both ways.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.aws_audit import recorded_operations

POLICY = Path(__file__).resolve().parent.parent / "deploy" / "iam" / "opsagent-policy.json"

# botocore operations whose IAM action has another name, or that need several actions.
OPERATION_ACTIONS: dict[str, tuple[str, ...]] = {
    "s3:CreateMultipartUpload": ("s3:PutObject",),
    "s3:UploadPart": ("s3:PutObject",),
    "s3:CompleteMultipartUpload": ("s3:PutObject",),
    "s3:ListParts": ("s3:ListMultipartUploadParts",),
    "s3:ListMultipartUploads": ("s3:ListBucketMultipartUploads",),
    "s3:ListObjectsV2": ("s3:ListBucket",),
    "s3:ListObjects": ("s3:ListBucket",),
    "s3:HeadObject": ("s3:GetObject",),
    "s3:HeadBucket": ("s3:ListBucket",),
    "s3:DeleteObjects": ("s3:DeleteObject",),
    "s3:CopyObject": ("s3:GetObject", "s3:PutObject"),
    "s3:UploadPartCopy": ("s3:GetObject", "s3:PutObject"),
    "s3:GetBucketReplication": ("s3:GetReplicationConfiguration",),
    "s3:GetObjectAttributes": ("s3:GetObjectAttributes",),
    "monitoring:GetMetricData": ("cloudwatch:GetMetricData",),
    "monitoring:GetMetricStatistics": ("cloudwatch:GetMetricStatistics",),
    "s3:GetBucketEncryption": ("s3:GetEncryptionConfiguration",),
}

# Actions AWS checks on the agent's behalf when it makes a recorded call (not API calls of their own):
# SSE-KMS objects need data keys, encrypted snapshot copies need grants on the destination key.
IMPLIED_BY: dict[str, tuple[str, ...]] = {
    "s3:PutObject": ("kms:GenerateDataKey",),
    "s3:GetObject": ("kms:Decrypt",),
    "rds:CopyDBSnapshot": ("kms:CreateGrant", "kms:DescribeKey", "rds:AddTagsToResource"),
    "rds:CopyDBClusterSnapshot": ("kms:CreateGrant", "kms:DescribeKey"),
    "rds:CreateDBSnapshot": ("rds:AddTagsToResource",),
    "rds:RestoreDBInstanceFromDBSnapshot": ("rds:AddTagsToResource", "kms:CreateGrant", "kms:DescribeKey"),
    "elasticache:CreateSnapshot": ("elasticache:AddTagsToResource",),
    "rds:RestoreDBInstanceToPointInTime": ("rds:AddTagsToResource",),
}

# Test modules that drive every AWS path of the agent: the "grants nothing unused" half needs them in the session.
AWS_MODULES = ("test_snapshots", "test_rds_drill", "test_repository_s3", "test_notify_sinks", "test_check_sqs",
               "test_check_s3_replication", "test_check_error_rate", "test_discover", "test_fleet", "test_dr_posture")


def policy_actions() -> set[str]:
    doc = json.loads(POLICY.read_text())
    out: set[str] = set()
    for statement in doc["Statement"]:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"]
        out.update([actions] if isinstance(actions, str) else actions)
    return out


def actions_for(operations: set[str]) -> set[str]:
    actions: set[str] = set()
    for op in operations:
        actions.update(OPERATION_ACTIONS.get(op, (op,)))
    for action in list(actions):
        actions.update(IMPLIED_BY.get(action, ()))
    return actions


def test_policy_has_no_bare_wildcard() -> None:
    """The policy names every action; no `*` and no `service:*`."""
    for action in policy_actions():
        assert "*" not in action, action


def test_every_aws_call_the_agent_made_is_allowed() -> None:
    """Each operation the agent performed during the suite maps to an action the policy grants."""
    recorded = recorded_operations()
    granted = policy_actions()
    missing = sorted(a for op in recorded for a in OPERATION_ACTIONS.get(op, (op,)) if a not in granted)
    assert not missing, f"the agent called AWS without permission in deploy/iam/opsagent-policy.json: {missing}"


def test_policy_grants_nothing_the_agent_never_used(request: pytest.FixtureRequest) -> None:
    """Every action in the policy was needed by some call the agent made during the suite."""
    ran = {item.module.__name__.rsplit(".", 1)[-1] for item in request.session.items if item.module is not None}
    absent = [m for m in AWS_MODULES if m not in ran]
    if absent:
        pytest.fail(f"run the whole suite: the policy comparison needs the AWS tests too (missing: {absent})")
    unused = sorted(policy_actions() - actions_for(recorded_operations()))
    assert not unused, f"the policy grants actions the agent never used: {unused}"
