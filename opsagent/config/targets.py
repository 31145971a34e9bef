"""The check targets: one frozen model per kind, and the ``checks`` section that lists them.

A new check kind adds its model here (plus one module in :mod:`opsagent.checks`);
the section models that are not about targets live in :mod:`opsagent.config.models`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    model_validator,
)

from opsagent.alerts.catalog import Comparison as CatalogComparison
from opsagent.config.fields import (  # noqa: F401 - Ratio kept for target models
    _NAME_FORM,
    AmqpUrl,
    Duration,
    HttpUrl,
    Model,
    PostgresDsn,
    Ratio,
    RedisUrl,
    SecretHttpUrl,
    TargetName,
    _url_validator,
)
from opsagent.config.quality import SloPolicy
from opsagent.units import (
    DURATION_FORM,
)


class TargetBase(Model):
    """What every scheduled check target has."""

    name: TargetName
    interval: Duration = 15.0
    timeout: Duration | None = None  # hard deadline of one run; default min(interval, 10s)
    enabled: bool = True
    scope: Literal["shared", "task"] | None = None  # default: runtime.fleet.default_scope(kind, target)

    @model_validator(mode="after")
    def _timing(self) -> TargetBase:
        if self.interval < 1:
            raise ValueError(f"interval must be at least 1s; expected {DURATION_FORM}")
        if self.timeout is not None and not 0 < self.timeout <= 60:
            raise ValueError("timeout must be between 0s and 60s")
        return self

    @property
    def deadline(self) -> float:
        return self.timeout if self.timeout is not None else min(self.interval, 10.0)


class HostTarget(TargetBase):
    """``cpu`` and ``memory``: one per agent, named after what they measure."""

    name: TargetName = "task"
    source: Literal["auto", "ecs", "cgroup", "host"] = "auto"
    cgroup_root: str = "/sys/fs/cgroup"


class PostgresTarget(TargetBase):
    dsn: PostgresDsn
    # per_run: connect, measure, disconnect, so a scale-to-zero compute (Neon) may suspend between runs.
    connect: Literal["persistent", "per_run"] = "persistent"
    idle_ok: bool = False  # a cold start (compute waking up) gets the whole deadline and one retry, not a page


class PgBouncerTarget(TargetBase):
    dsn: PostgresDsn


class RedisTarget(TargetBase):
    url: RedisUrl
    role: Literal["cache", "queue"] | None = None  # queue: must not evict (RedisEvictionPolicyUnsafe)


class CloudWatchSource(Model):
    load_balancer: Annotated[str, Field(pattern=r"^app/[^/]+/[^/]+$")]
    target_group: str | None = None
    region: str | None = None


class ErrorRateTarget(TargetBase):
    metrics_url: HttpUrl | None = None
    cloudwatch: CloudWatchSource | None = None
    window: Duration = 300.0
    requests_metric: str = "http_requests_total"
    status_label: str = "status"
    route_label: str = "route"
    slo: SloPolicy | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ErrorRateTarget:
        if (self.metrics_url is None) == (self.cloudwatch is None):
            raise ValueError("set exactly one of metrics_url or cloudwatch")
        if self.slo is not None and self.cloudwatch is not None:
            raise ValueError("slo needs metrics_url: error budgets are counted from the app's request counters")
        if self.window < 60 and self.cloudwatch is not None:
            raise ValueError(f"window must be at least 1m for CloudWatch; expected {DURATION_FORM}")
        return self


class SqsTarget(TargetBase):
    """An SQS queue: visible messages, age of the oldest message, and its dead-letter queue."""

    queue_url: HttpUrl
    dlq_url: HttpUrl | None = None
    region: str | None = None  # default: taken from the queue URL, else the boto3 chain
    interval: Duration = 60.0


class BullMQTarget(TargetBase):
    """BullMQ queues kept in one Redis: waiting, active, failed and delayed jobs."""

    url: RedisUrl
    queues: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    prefix: Annotated[str, Field(min_length=1)] = "bull"
    failed_window: Duration = 900.0  # jobs that failed within this window count as recent failures


class S3ReplicationTarget(TargetBase):
    """A replicated bucket: the rule is enabled and objects older than ``rpo`` reached the destination."""

    bucket: Annotated[str, Field(min_length=3, max_length=63)]
    destination_bucket: Annotated[str, Field(min_length=3, max_length=63)]
    region: str | None = None
    destination_region: str | None = None
    prefix: str = ""
    rpo: Duration = 900.0
    max_objects: Annotated[int, Field(ge=1)] = 50_000  # source objects compared per run (1000 per request)
    interval: Duration = 300.0
    timeout: Duration | None = 60.0  # listing two buckets takes longer than the 10s default deadline


Comparison = Literal["above", "below"]
_OPERATOR = {"above": CatalogComparison.GT, "below": CatalogComparison.LT}


class RabbitMQTarget(TargetBase):
    """RabbitMQ queues: ready messages and consumers by passive declare; node alarms from the management API."""

    url: AmqpUrl
    queues: Annotated[list[Annotated[str, Field(min_length=1, max_length=255)]], Field(min_length=1)]
    management_url: SecretHttpUrl | None = None


class SqlTarget(TargetBase):
    """A business check: one number from one read-only query, compared with the target's own threshold."""

    dsn: PostgresDsn
    query: Annotated[str, Field(min_length=1)]
    threshold: float
    comparison: Comparison = "above"
    unit: str | None = None

    def alarm_thresholds(self) -> dict[str, tuple[float, CatalogComparison]]:
        return {"SQLCheckBreached": (self.threshold, _OPERATOR[self.comparison])}


class HttpTarget(TargetBase):
    """A synthetic probe: status, optional body text, latency, and the TLS certificate's expiry."""

    url: HttpUrl
    expect_status: Annotated[int, Field(ge=100, le=599)] = 200
    tls_warn: Duration = 14 * 86400.0
    body_contains: Annotated[str, Field(min_length=1)] | None = None
    ca_file: str | None = None  # an extra CA bundle (PEM); the system CAs still apply

    def alarm_thresholds(self) -> dict[str, tuple[float, CatalogComparison]]:
        # Only a tls_warn written on the target beats alerts.TLSCertificateExpiring.threshold.
        return {"TLSCertificateExpiring": (self.tls_warn, CatalogComparison.LT)} if "tls_warn" in self.model_fields_set else {}


class CloudWatchTarget(TargetBase):
    """Any CloudWatch metric: one statistic over the newest complete period against the target's threshold."""

    namespace: Annotated[str, Field(min_length=1, max_length=255)]
    metric: Annotated[str, Field(min_length=1, max_length=255)]
    dimensions: dict[str, str] = {}
    statistic: Annotated[str, Field(pattern=r"^(Average|Sum|Minimum|Maximum|SampleCount|p\d{1,2}(\.\d+)?)$")] = "Average"
    period: Duration = 300.0
    threshold: float
    comparison: Comparison = "above"
    region: str | None = None
    interval: Duration = 60.0

    @model_validator(mode="after")
    def _period(self) -> CloudWatchTarget:
        if self.period < 60 or self.period % 60:
            raise ValueError(f"period must be a multiple of 1m; expected {DURATION_FORM}")
        return self

    def alarm_thresholds(self) -> dict[str, tuple[float, CatalogComparison]]:
        return {"CloudWatchMetricBreached": (self.threshold, _OPERATOR[self.comparison])}


# Kinds configured as a list of named targets (cpu/memory are single host targets).
LIST_KINDS = ("postgres", "pgbouncer", "redis", "error_rate", "sqs", "bullmq", "s3_replication",
              "rabbitmq", "sql", "http", "cloudwatch")


# Enabled targets one agent runs at most (issue 21): measured in benchmarks/ (figure scale: 502 targets, 50 of
# them hanging, no missed run, /metrics and SIGTERM prompt); beyond it threads and GIL contention grow unbounded.
MAX_TARGETS = 512


class ChecksSection(Model):
    cpu: HostTarget | None = Field(default_factory=HostTarget)
    memory: HostTarget | None = Field(default_factory=HostTarget)
    postgres: list[PostgresTarget] = []
    pgbouncer: list[PgBouncerTarget] = []
    redis: list[RedisTarget] = []
    error_rate: list[ErrorRateTarget] = []
    sqs: list[SqsTarget] = []
    bullmq: list[BullMQTarget] = []
    s3_replication: list[S3ReplicationTarget] = []
    rabbitmq: list[RabbitMQTarget] = []
    sql: list[SqlTarget] = []
    http: list[HttpTarget] = []
    cloudwatch: list[CloudWatchTarget] = []

    @model_validator(mode="after")
    def _unique_names(self) -> ChecksSection:
        for kind in LIST_KINDS:
            seen: set[str] = set()
            for target in getattr(self, kind):
                if target.name in seen:
                    raise ValueError(f"duplicate target name {target.name!r} in checks.{kind}; names must be unique per kind")
                seen.add(target.name)
        return self

    @model_validator(mode="after")
    def _bounded(self) -> ChecksSection:
        count = len(self.targets())
        if count > MAX_TARGETS:
            raise ValueError(
                f"{count} enabled targets; at most {MAX_TARGETS} per agent (each holds a thread and a connection, "
                "and scrapes and SIGTERM must stay prompt): split them across agents or disable some")
        return self

    def targets(self) -> list[tuple[str, TargetBase]]:
        """Every enabled (kind, target) pair, in config order."""
        out: list[tuple[str, TargetBase]] = []
        for kind in ("cpu", "memory"):
            host = getattr(self, kind)
            if host is not None and host.enabled:
                out.append((kind, host))
        for kind in LIST_KINDS:
            out.extend((kind, t) for t in getattr(self, kind) if t.enabled)
        return out
