"""``opsagent iam-policy``: the task role's least-privilege policy with ARNs built from one config.

The shipped ``deploy/iam/opsagent-policy.json`` is the template: it names every action the agent
calls, one statement per purpose (its ``Sid``), with the example account's resources. For each
known ``Sid`` the resources are rebuilt from the config (buckets and prefixes of the repositories,
the configured RDS instances and ElastiCache groups, the KMS keys, the SNS topic, the SQS queues)
in the account and regions given; a statement whose feature is not configured is left out. A
statement this module does not know (added for a new AWS call) is kept, with the example account
replaced, so adding an action to the template is all a new call needs.

``--execution-role`` instead builds the execution role's policy from a task definition: read
access to exactly the Secrets Manager secrets and SSM parameters its ``secrets[].valueFrom`` name
(ECS resolves them before the container starts; without it the first deploy fails with
``ResourceInitializationError``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from opsagent.config import Settings

EXAMPLE_ACCOUNT = "123456789012"
DEFAULT_TEMPLATE = Path("deploy/iam/opsagent-policy.json")
ACCOUNT_FORM = re.compile(r"^\d{12}$")
SNAPSHOT_PREFIX = "opsagent-"
DRILL_PREFIX = "opsagent-drill-"


class PolicyError(ValueError):
    """The inputs cannot give a valid policy; the message says which and what is expected."""


@dataclass(frozen=True)
class Scope:
    """What the ARNs are built from."""

    settings: Settings
    account: str
    partition: str = "aws"
    key_arns: Mapping[str, str] = field(default_factory=dict)  # alias/NAME -> key ARN (--kms-key-arn)

    @property
    def regions(self) -> list[str]:
        """The agent's region, then the replica region (snapshot copies, drills) when it differs."""
        out = [self.settings.agent.region]
        replica = self.settings.backup.replica_region
        if replica and replica not in out:
            out.append(replica)
        return out

    def arn(self, service: str, region: str, resource: str) -> str:
        return f"arn:{self.partition}:{service}:{region}:{self.account}:{resource}"

    def each_region(self, service: str, *resources: str) -> list[str]:
        return [self.arn(service, region, r) for region in self.regions for r in resources]

    def buckets(self) -> list[tuple[str, str]]:
        """(bucket, prefix) of every s3:// repository (primary, replica)."""
        out: list[tuple[str, str]] = []
        urls: list[str] = [str(self.settings.backup.repository or ""), str(self.settings.backup.replica or "")]
        for url in urls:
            if url.startswith("s3://"):
                bucket, _, prefix = url[len("s3://"):].partition("/")
                out.append((bucket, prefix.strip("/")))
        return out

    def kms_keys(self) -> list[tuple[str, str]]:
        """(region, key) for the primary and replica backup keys."""
        b = self.settings.backup
        keys = [(self.settings.agent.region, b.kms_key_id)]
        keys.append((b.replica_region or self.settings.agent.region, b.replica_kms_key_id or b.kms_key_id))
        return list(dict.fromkeys((region, key) for region, key in keys if key))


def _s3_list(s: Scope) -> list[str]:
    return [f"arn:{s.partition}:s3:::{bucket}" for bucket, _ in s.buckets()]


def _s3_objects(s: Scope) -> list[str]:
    return [f"arn:{s.partition}:s3:::{bucket}/{prefix + '/' if prefix else ''}*" for bucket, prefix in s.buckets()]


def _replicated_buckets(s: Scope) -> list[str]:
    out = []
    for t in s.settings.checks.s3_replication:
        out += [f"arn:{s.partition}:s3:::{t.bucket}", f"arn:{s.partition}:s3:::{t.destination_bucket}"]
    return out


def _kms(s: Scope) -> list[str]:
    """Key ARNs. IAM scopes KMS permissions by key ARN only, so a key the config names by alias needs its
    ARN given (``--kms-key-arn alias/NAME=ARN``) rather than a grant on every key of the account."""
    out = []
    for region, key in s.kms_keys():
        if key.startswith("arn:") and ":key/" in key:
            out.append(key)
        elif key.startswith(("alias/", "arn:")):
            arn = s.key_arns.get(key)
            if arn is None:
                raise PolicyError(f"the backup key {key!r} is an alias; IAM scopes KMS permissions by key ARN: pass "
                                  f"--kms-key-arn {key}=arn:{s.partition}:kms:{region}:{s.account}:key/KEY_ID "
                                  f"(aws kms describe-key --key-id {key} --region {region} shows it)")
            out.append(arn)
        else:
            out.append(s.arn("kms", region, f"key/{key}"))
    return list(dict.fromkeys(out))


def _rds_on(s: Scope) -> bool:
    return bool(s.settings.backup.rds_instances)


def _rds_describe(s: Scope) -> list[str]:
    # The agent lists snapshots and drill instances (no identifier), which IAM checks against the type's ARN.
    return s.each_region("rds", "db:*", "cluster:*", "snapshot:*", "cluster-snapshot:*") if _rds_on(s) else []


def _rds_snapshot(s: Scope) -> list[str]:
    if not _rds_on(s):
        return []
    sources = [s.arn("rds", s.settings.agent.region, f"{kind}:{name}")
               for name in s.settings.backup.rds_instances for kind in ("db", "cluster")]
    return sources + s.each_region("rds", f"snapshot:{SNAPSHOT_PREFIX}*", f"cluster-snapshot:{SNAPSHOT_PREFIX}*")


def _rds_delete_snapshots(s: Scope) -> list[str]:
    return s.each_region("rds", f"snapshot:{SNAPSHOT_PREFIX}*", f"cluster-snapshot:{SNAPSHOT_PREFIX}*") if _rds_on(s) else []


def _rds_drill(s: Scope) -> list[str]:
    if not _rds_on(s):
        return []
    b = s.settings.backup
    # The monthly PITR drill restores from the instance itself: the source needs the permission too.
    sources = [s.arn("rds", s.settings.agent.region, f"db:{b.rds_instances[0]}")] if b.pitr_drill else []
    return sources + s.each_region("rds", f"db:{DRILL_PREFIX}*", f"snapshot:{SNAPSHOT_PREFIX}*", "subgrp:*", "og:*",
                                   "pg:*")


def _rds_drill_delete(s: Scope) -> list[str]:
    return s.each_region("rds", f"db:{DRILL_PREFIX}*") if _rds_on(s) else []


def _cache_on(s: Scope) -> bool:
    return bool(s.settings.backup.elasticache_clusters)


def _cache_describe(s: Scope) -> list[str]:
    return s.each_region("elasticache", "replicationgroup:*", "cluster:*", "snapshot:*") if _cache_on(s) else []


def _cache_snapshot(s: Scope) -> list[str]:
    if not _cache_on(s):
        return []
    region = s.settings.agent.region
    groups = s.settings.backup.elasticache_clusters
    return ([s.arn("elasticache", region, f"replicationgroup:{g}") for g in groups]
            + [s.arn("elasticache", region, f"cluster:{g}-*") for g in groups]
            + s.each_region("elasticache", f"snapshot:{SNAPSHOT_PREFIX}*"))


def _cache_delete(s: Scope) -> list[str]:
    return s.each_region("elasticache", f"snapshot:{SNAPSHOT_PREFIX}*") if _cache_on(s) else []


def _sns(s: Scope) -> list[str]:
    arn = s.settings.notify.sns_topic_arn
    return [arn] if arn else []


def _metrics(s: Scope) -> list[str]:
    """cloudwatch:GetMetricData has no resource-level permissions: ``*`` is the only form IAM accepts."""
    cloudwatch = any(t.cloudwatch is not None for t in s.settings.checks.error_rate)
    return ["*"] if cloudwatch or _other_cloudwatch_targets(s) else []


def _other_cloudwatch_targets(s: Scope) -> bool:
    """Check kinds added in release 2 that read CloudWatch (``checks.cloudwatch``), when present."""
    return bool(getattr(s.settings.checks, "cloudwatch", None))


def _queues(s: Scope) -> list[str]:
    out: list[str] = []
    for t in s.settings.checks.sqs:
        urls: list[str] = [str(t.queue_url), str(t.dlq_url) if t.dlq_url is not None else ""]
        out += [sqs_arn(url, s.partition) for url in urls if url]
    return list(dict.fromkeys(out))


def sqs_arn(queue_url: str, partition: str = "aws") -> str:
    """``https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`` -> ``arn:aws:sqs:REGION:ACCOUNT:NAME``."""
    parts = urlsplit(queue_url)
    host = (parts.hostname or "").split(".")
    path = [p for p in parts.path.split("/") if p]
    if len(path) != 2 or len(host) < 3 or host[0] != "sqs":
        raise PolicyError(f"{queue_url!r} is not an SQS queue URL; expected https://sqs.REGION.amazonaws.com/ACCOUNT/NAME")
    return f"arn:{partition}:sqs:{host[1]}:{path[0]}:{path[1]}"


def _fleet_lease_table(s: Scope) -> list[str]:
    """The DynamoDB lease of the fleet (``agent.fleet_lock_table``), when the fleet elects its leader there."""
    table = s.settings.agent.fleet_lock_table
    return [s.arn("dynamodb", s.settings.agent.region, f"table/{table}")] if table else []


Builder = Callable[[Scope], list[str]]

# Sid -> how its resources come from the config. Sids not listed keep their template resources.
RESOURCES: dict[str, Builder] = {
    "BackupBucketsList": _s3_list,
    "BackupBucketsObjects": _s3_objects,
    "ReplicatedBucketsCheck": _replicated_buckets,
    "BackupEncryptionKeys": _kms,
    "BackupEncryptionKeyGrants": _kms,
    "RdsDescribe": _rds_describe,
    "RdsSnapshotAndCopy": _rds_snapshot,
    "RdsDeleteOnlyManagedSnapshots": _rds_delete_snapshots,
    "RdsRestoreDrillInstances": _rds_drill,
    "RdsDeleteOnlyDrillInstances": _rds_drill_delete,
    "ElastiCacheDescribe": _cache_describe,
    "ElastiCacheSnapshots": _cache_snapshot,
    "ElastiCacheDeleteOnlyManagedSnapshots": _cache_delete,
    "AlertsToSns": _sns,
    "MetricsRead": _metrics,
    "QueuesRead": _queues,
    "FleetLeaseTable": _fleet_lease_table,
    # FleetDiscoverTask / FleetDiscoverSecrets stay as the template has them: `opsagent discover` runs in the
    # sidecar's own task, with its task role, before any config names a resource.
}


def _check_account(account: str) -> None:
    if not ACCOUNT_FORM.match(account):
        raise PolicyError(f"--account {account!r} is not an AWS account id; expected 12 digits")


def task_policy(settings: Settings, account: str, template: dict[str, Any], partition: str = "aws",
                key_arns: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The task role's policy for ``settings`` in ``account`` (see the module docstring)."""
    _check_account(account)
    for alias, arn in (key_arns or {}).items():
        if not re.fullmatch(r"arn:[a-z\-]+:kms:[a-z0-9\-]+:\d{12}:key/[A-Za-z0-9\-]+", arn):
            raise PolicyError(f"--kms-key-arn {alias}={arn}: not a KMS key ARN; expected arn:aws:kms:REGION:ACCOUNT:key/ID")
    scope = Scope(settings, account, partition, dict(key_arns or {}))
    statements = []
    for statement in template.get("Statement", []):
        out = copy.deepcopy(statement)
        builder = RESOURCES.get(str(out.get("Sid")))
        if builder is None:
            out = json.loads(json.dumps(out).replace(EXAMPLE_ACCOUNT, account))
        else:
            resources = builder(scope)
            if not resources:
                continue
            out["Resource"] = resources[0] if len(resources) == 1 else resources
        statements.append(out)
    return {"Version": template.get("Version", "2012-10-17"), "Statement": statements}


def execution_policy(task_definition: dict[str, Any]) -> dict[str, Any]:
    """The execution role's policy: read exactly the secrets and parameters the containers' ``secrets`` name."""
    secret_arns: list[str] = []
    parameter_arns: list[str] = []
    for container in task_definition.get("containerDefinitions", []):
        for secret in container.get("secrets", []):
            source = str(secret.get("valueFrom", ""))
            if source.startswith("arn:") and ":secretsmanager:" in source:
                secret_arns.append(":".join(source.split(":")[:7]))  # drop :json-key:version-stage:version-id
            elif source.startswith("arn:") and ":ssm:" in source:
                parameter_arns.append(source)
            elif source:
                raise PolicyError(f"secrets valueFrom {source!r} of container {container.get('name')!r} is not an ARN; "
                                  "name secrets by their full ARN so the policy can be scoped to them")
    statements: list[dict[str, Any]] = []
    if secret_arns:
        statements.append({"Sid": "ReadTaskSecrets", "Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"],
                           "Resource": _one_or_list(_unique(secret_arns))})
    if parameter_arns:
        statements.append({"Sid": "ReadTaskParameters", "Effect": "Allow", "Action": ["ssm:GetParameters"],
                           "Resource": _one_or_list(_unique(parameter_arns))})
    if not statements:
        raise PolicyError("the task definition names no secrets[].valueFrom; the execution role needs only "
                          "the AWS managed AmazonECSTaskExecutionRolePolicy")
    return {"Version": "2012-10-17", "Statement": statements}


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _one_or_list(items: list[str]) -> str | list[str]:
    return items[0] if len(items) == 1 else items


def render(policy: dict[str, Any]) -> str:
    return json.dumps(policy, indent=2) + "\n"
