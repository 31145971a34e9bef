"""The alarms of SPEC §3: names, defaults and what each compares.

This table is the single source for config validation, the evaluator, the
rules exporter and the runbook cross-check. Adding an alarm means adding one
row here and one ``runbooks/<Name>.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class ValueKind(str, Enum):
    """How a threshold is written in config and shown to a human."""

    RATIO = "ratio"  # 0.75 or 75%
    COUNT = "count"  # a plain number
    DURATION = "duration"  # 30s, 1h (compared against a value in seconds)
    FLAG = "flag"  # 1 = bad, threshold fixed at 0


class Comparison(str, Enum):
    GT = ">"
    GE = ">="
    LT = "<"  # below: TLS days left, a CloudWatch or SQL number that must stay up
    LE = "<="

    def breached(self, value: float, threshold: float) -> bool:
        return _BREACHED[self](value, threshold)


_BREACHED: dict[Comparison, Callable[[float, float], bool]] = {
    Comparison.GT: lambda v, t: v > t,
    Comparison.GE: lambda v, t: v >= t,
    Comparison.LT: lambda v, t: v < t,
    Comparison.LE: lambda v, t: v <= t,
}


@dataclass(frozen=True)
class AlarmSpec:
    name: str
    check: str | None  # the check kind whose readings it compares; None = any (TargetDown)
    threshold: float | None  # None: taken from elsewhere in config (BackupStale -> backup.rpo)
    comparison: Comparison
    for_seconds: float
    severity: str
    kind: ValueKind
    summary: str  # short human title; ``{target}`` is filled in
    field: str | None = None  # compare ``reading.details[field]`` instead of ``reading.value``
    also_checks: tuple[str, ...] = ()  # further kinds whose readings carry ``field`` (bullmq's Redis)
    # The threshold (and comparison) may come from the target itself (sql, cloudwatch, tls_warn):
    # see :mod:`opsagent.alerts.target_rules`.
    per_target: bool = False

    @property
    def runbook(self) -> str:
        return f"{self.name}.md"


ALARMS: dict[str, AlarmSpec] = {
    spec.name: spec
    for spec in (
        AlarmSpec("HighCPU", "cpu", 0.80, Comparison.GT, 300, "warning", ValueKind.RATIO,
                  "CPU utilisation of {target} is high"),
        AlarmSpec("HighMemory", "memory", 0.90, Comparison.GT, 300, "critical", ValueKind.RATIO,
                  "Memory utilisation of {target} is high"),
        AlarmSpec("HighErrorRate", "error_rate", 0.01, Comparison.GT, 120, "critical", ValueKind.RATIO,
                  "5xx error rate of {target} is high"),
        AlarmSpec("PostgresConnectionsExhausted", "postgres", 0.90, Comparison.GE, 60, "critical",
                  ValueKind.RATIO, "PostgreSQL {target} is running out of connections"),
        AlarmSpec("PgBouncerClientsWaiting", "pgbouncer", 0.0, Comparison.GT, 60, "warning", ValueKind.COUNT,
                  "PgBouncer {target} has clients waiting for a server connection"),
        AlarmSpec("RedisMemoryHigh", "redis", 0.75, Comparison.GT, 300, "warning", ValueKind.RATIO,
                  "Redis {target} memory usage is high"),
        AlarmSpec("TargetDown", None, 0.0, Comparison.GT, 60, "critical", ValueKind.FLAG,
                  "{target} does not answer its check"),
        AlarmSpec("BackupStale", "backup", None, Comparison.GT, 0, "critical", ValueKind.DURATION,
                  "Newest complete backup of {target} is older than the RPO"),
        AlarmSpec("ReplicaStale", "replica", None, Comparison.GT, 0, "critical", ValueKind.DURATION,
                  "Newest verified replica copy of {target} is older than the RPO"),
        AlarmSpec("BackupFailed", "backup_run", 0.0, Comparison.GT, 0, "warning", ValueKind.FLAG,
                  "The last backup or replication run of {target} failed"),
        AlarmSpec("RestoreDrillFailed", "drill", 0.0, Comparison.GT, 0, "warning", ValueKind.FLAG,
                  "The last restore drill of {target} failed or exceeded the RTO"),
        # Queues and replication (issue 8). The first row of a kind compares ``reading.value``.
        AlarmSpec("SQSMessageAgeHigh", "sqs", 600.0, Comparison.GT, 300, "warning", ValueKind.DURATION,
                  "Oldest message in SQS queue {target} is getting old"),
        AlarmSpec("SQSDeadLetterQueueNotEmpty", "sqs", 0.0, Comparison.GT, 60, "warning", ValueKind.COUNT,
                  "Dead-letter queue of SQS queue {target} holds messages", field="dlq_visible_messages"),
        AlarmSpec("BullMQBacklogHigh", "bullmq", 1000.0, Comparison.GT, 300, "warning", ValueKind.COUNT,
                  "BullMQ queues of {target} have a growing backlog of waiting jobs"),
        AlarmSpec("BullMQFailedJobs", "bullmq", 0.0, Comparison.GT, 0, "warning", ValueKind.COUNT,
                  "BullMQ jobs of {target} failed recently", field="recent_failed_jobs"),
        AlarmSpec("S3ReplicationLagging", "s3_replication", 0.0, Comparison.GT, 0, "critical", ValueKind.COUNT,
                  "Objects of bucket {target} older than the RPO are missing from the replica"),
        AlarmSpec("S3ReplicationDisabled", "s3_replication", 0.0, Comparison.GT, 0, "critical", ValueKind.FLAG,
                  "Bucket {target} has no enabled replication rule to its destination",
                  field="replication_disabled"),
        # Alert quality (issue 17, SPEC §9.4). ErrorBudget* are judged from per-minute buckets by
        # opsagent.alerts.budget, not from one reading: their ``check`` "slo" names no check kind.
        AlarmSpec("ErrorBudgetBurn", "slo", None, Comparison.GT, 0, "critical", ValueKind.COUNT,
                  "{target} is burning its error budget too fast"),
        AlarmSpec("ErrorBudgetLowVolume", "slo", None, Comparison.GE, 0, "critical", ValueKind.COUNT,
                  "Low-traffic {target} is failing most of its few requests"),
        AlarmSpec("PostgresReplicaLagHigh", "postgres", 60.0, Comparison.GT, 300, "warning", ValueKind.DURATION,
                  "PostgreSQL {target} replication lag is high", field="replication_lag_max_seconds"),
        AlarmSpec("PgBouncerPoolSaturated", "pgbouncer", 0.9, Comparison.GE, 300, "warning", ValueKind.RATIO,
                  "A PgBouncer {target} pool has nearly all its server connections active",
                  field="pool_saturation"),
        AlarmSpec("RedisEvictionPolicyUnsafe", "redis", 0.0, Comparison.GT, 0, "critical", ValueKind.FLAG,
                  "Redis {target} backs a queue but may evict keys (maxmemory_policy is not noeviction)",
                  field="eviction_policy_unsafe", also_checks=("bullmq",)),
        # The seed stacks (issue 18, SPEC §9.5).
        AlarmSpec("RabbitMQBacklogHigh", "rabbitmq", 1000.0, Comparison.GT, 300, "warning", ValueKind.COUNT,
                  "RabbitMQ queues of {target} have a growing backlog of ready messages"),
        AlarmSpec("RabbitMQNoConsumers", "rabbitmq", 0.0, Comparison.GT, 300, "critical", ValueKind.COUNT,
                  "RabbitMQ queues of {target} hold ready messages and have no consumer",
                  field="queues_without_consumers"),
        AlarmSpec("SQLCheckBreached", "sql", 0.0, Comparison.GT, 0, "warning", ValueKind.COUNT,
                  "SQL check {target} is outside its threshold", per_target=True),
        AlarmSpec("HTTPProbeFailed", "http", 0.0, Comparison.GT, 60, "critical", ValueKind.FLAG,
                  "HTTP probe {target} fails", field="probe_failed"),
        AlarmSpec("TLSCertificateExpiring", "http", 14 * 86400.0, Comparison.LT, 0, "warning", ValueKind.DURATION,
                  "TLS certificate of {target} expires soon", field="tls_expiry_seconds", per_target=True),
        AlarmSpec("CloudWatchMetricBreached", "cloudwatch", 0.0, Comparison.GT, 0, "warning", ValueKind.COUNT,
                  "CloudWatch metric {target} is outside its threshold", per_target=True),
        # DR posture (issue 16, SPEC §9.3).
        AlarmSpec("PITRStale", "pitr", 900.0, Comparison.GT, 0, "critical", ValueKind.DURATION,
                  "Point-in-time recovery of RDS {target} lags behind"),
        AlarmSpec("BackupPostureViolation", "posture", 0.0, Comparison.GT, 0, "warning", ValueKind.FLAG,
                  "Backup posture of {target} fails an audit control"),
        AlarmSpec("BackupClockSkew", "backup_skew", 0.0, Comparison.GT, 0, "warning", ValueKind.FLAG,
                  "A backup of {target} is stamped in the future (a fleet member's clock is ahead)"),
    )
}

SEVERITIES = ("critical", "warning", "info")


def alarms_for_check(check: str) -> list[AlarmSpec]:
    """Value alarms that compare readings of ``check`` (TargetDown excluded)."""
    return [a for a in ALARMS.values() if a.check == check or check in a.also_checks]
