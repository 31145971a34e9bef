"""The configuration models: one frozen pydantic model per section, strict about unknown keys.

A typo is an error, not a silently ignored setting. Units (durations, ratios),
URLs and names are validated here; how problems are worded lives in
:mod:`opsagent.config.problems`, how files and the environment are read in
:mod:`opsagent.config.load`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from opsagent import secrets
from opsagent.alerts.catalog import ALARMS, AlarmSpec, ValueKind
from opsagent.config.backup_options import RetryPolicy, Watermark, drill_server_problem
from opsagent.cron import check as check_cron
from opsagent.units import (
    DURATION_FORM,
    RATIO_FORM,
    format_duration,
    parse_duration,
    parse_ratio,
)

ENV_PREFIX = "OPSAGENT_"
CONFIG_ENV = "OPSAGENT_CONFIG"
DEFAULT_CONFIG_FILE = "opsagent.yaml"

Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)]
Ratio = Annotated[float, BeforeValidator(parse_ratio)]
TargetName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")]

_NAME_FORM = "letters, digits, '.', '_' or '-', at most 63 characters"


def _url_validator(schemes: tuple[str, ...], secret: bool = False) -> Any:
    def check(value: object) -> object:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(raw, str):
            raise ValueError(f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}")
        scheme, sep, rest = raw.partition("://")
        if not sep or scheme.lower() not in schemes or not rest.strip("/"):
            shown = "the value" if secret else repr(secrets.mask_url(raw))  # a secret URL is never echoed
            raise ValueError(
                f"{shown} is not a valid URL; expected one starting with "
                + " or ".join(s + "://" for s in schemes)
            )
        return value

    return BeforeValidator(check)


def _secret_url(*schemes: str) -> Any:
    return Annotated[SecretStr, _url_validator(schemes, secret=True)]


def _plain_url(*schemes: str) -> Any:
    return Annotated[str, _url_validator(schemes)]


# Spelled out as Annotated (not the helpers' Any) so that type checkers see SecretStr / str.
PostgresDsn = Annotated[SecretStr, _url_validator(("postgresql", "postgres"), secret=True)]
RedisUrl = Annotated[SecretStr, _url_validator(("redis", "rediss", "unix"), secret=True)]
HttpUrl = Annotated[str, _url_validator(("http", "https"))]
SecretHttpUrl = Annotated[SecretStr, _url_validator(("http", "https"), secret=True)]
RepositoryUrl = Annotated[str, _url_validator(("file", "s3"))]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class AgentSection(Model):
    # The same name on every agent of a service, so that two agents reporting one
    # target produce one alert (the `agent` label is part of the fingerprint).
    name: TargetName = "opsagent"
    listen: str = "127.0.0.1:9108"
    region: str = "us-east-1"
    admin_token: SecretStr | None = None
    state_dir: str = "./var/state"
    runbook_base_url: str = "https://github.com/opsagent/opsagent/blob/main/opsagent/runbooks/"
    external_url: str | None = None  # how others reach this agent (generatorURL); default http://listen
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not an address; expected HOST:PORT such as 127.0.0.1:9108")
        return value

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class TargetBase(Model):
    """What every scheduled check target has."""

    name: TargetName
    interval: Duration = 15.0
    timeout: Duration | None = None  # hard deadline of one run; default min(interval, 10s)
    enabled: bool = True

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


class PgBouncerTarget(TargetBase):
    dsn: PostgresDsn


class RedisTarget(TargetBase):
    url: RedisUrl


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

    @model_validator(mode="after")
    def _one_source(self) -> ErrorRateTarget:
        if (self.metrics_url is None) == (self.cloudwatch is None):
            raise ValueError("set exactly one of metrics_url or cloudwatch")
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


# Kinds configured as a list of named targets (cpu/memory are single host targets).
LIST_KINDS = ("postgres", "pgbouncer", "redis", "error_rate", "sqs", "bullmq", "s3_replication")


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

    @model_validator(mode="after")
    def _unique_names(self) -> ChecksSection:
        for kind in LIST_KINDS:
            seen: set[str] = set()
            for target in getattr(self, kind):
                if target.name in seen:
                    raise ValueError(f"duplicate target name {target.name!r} in checks.{kind}; names must be unique per kind")
                seen.add(target.name)
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


class AlertOverride(Model):
    threshold: float | str | None = None
    for_: Duration | None = Field(default=None, alias="for")
    severity: Literal["critical", "warning", "info"] | None = None
    enabled: bool = True


class _AlertsBase(Model):
    @model_validator(mode="after")
    def _thresholds(self) -> _AlertsBase:
        for name in ALARMS:
            override = getattr(self, name)
            if override is not None and override.threshold is not None:
                _parse_threshold(ALARMS[name], override.threshold)
        return self


def _alerts_section() -> type[Model]:
    """One optional override per catalogue alarm; an unknown alarm name is an error."""
    from pydantic import create_model

    fields: dict[str, Any] = {name: (AlertOverride | None, None) for name in ALARMS}
    return create_model("AlertsSection", __base__=_AlertsBase, **fields)  # type: ignore[call-overload]


AlertsSection = _alerts_section()


class NotifySection(Model):
    alertmanager_url: HttpUrl | None = None
    slack_webhook_url: SecretHttpUrl | None = None
    pagerduty_routing_key: SecretStr | None = None
    pagerduty_url: HttpUrl = "https://events.pagerduty.com/v2/enqueue"
    sns_topic_arn: Annotated[str, Field(pattern=r"^arn:aws[a-z\-]*:sns:[a-z0-9\-]+:\d{12}:[A-Za-z0-9_\-]+$")] | None = None
    sentry_dsn: SecretHttpUrl | None = None
    sentry_alerts: bool = False
    repeat_interval: Duration = 300.0
    timeout: Duration = 10.0


class RetentionPolicy(Model):
    hourly: Annotated[int, Field(ge=0)] = 48
    daily: Annotated[int, Field(ge=0)] = 30
    weekly: Annotated[int, Field(ge=0)] = 12
    manual_keep: Duration = 86400.0  # hand-taken backups (backup run, POST /backup) are kept at least this long


def _check_cron(value: object) -> object:
    """crontab(5) exactly (:mod:`opsagent.cron`); six fields or a bad value is an error naming the form."""
    return check_cron(value)


Cron = Annotated[str, BeforeValidator(_check_cron)]


class BackupSection(Model):
    enabled: bool = True
    schedule: Cron = "0 * * * *"
    repository: RepositoryUrl | None = None
    replica: RepositoryUrl | None = None
    replica_region: str | None = None
    kms_key_id: str | None = None
    replica_kms_key_id: str | None = None
    postgres: list[TargetName] = []
    rds_instances: list[str] = []
    elasticache_clusters: list[str] = []
    retention: RetentionPolicy = RetentionPolicy()
    rpo: Duration = 3600.0
    rto: Duration = 7200.0
    drill_schedule: Cron | None = "30 3 * * *"
    drill_dsn: PostgresDsn | None = None
    lock_dsn: PostgresDsn | None = None  # PostgreSQL advisory lock shared by the fleet
    pg_dump_path: str | None = None
    snapshot_wait_timeout: Duration = 3600.0  # RDS/ElastiCache snapshot or cross-region copy becoming available
    rds_drill: bool = False  # drills also restore the newest replica-region RDS snapshot into a scratch instance
    drill_on_target_server: bool = False  # allow drill_dsn on the server of a configured target
    retry: RetryPolicy = RetryPolicy()  # a failed scheduled backup is retried within its slot
    watermark: dict[TargetName, Watermark] = {}  # per postgres target: the drill proves the RPO from it
    rds_pitr_replica: bool = False  # watch DR-region replicated automated backups (PITR) too
    pitr_drill: bool = False  # a monthly point-in-time restore drill of the first rds_instances entry
    pitr_drill_schedule: Cron | None = "0 4 1 * *"
    pitr_drill_dsn: PostgresDsn | None = None  # SQL check of the PITR scratch instance (its host/port replaced)

    @model_validator(mode="after")
    def _coherent(self) -> BackupSection:
        if self.replica and not self.repository:
            raise ValueError("replica is set but repository is not; set backup.repository too")
        if self.rpo <= 0 or self.rto <= 0:
            raise ValueError(f"rpo and rto must be positive; expected {DURATION_FORM}")
        return self


# The environment a load reads: a mapping handed to pydantic-settings instead of
# swapping os.environ, which other threads (boto3, drivers) may be reading.
_ENVIRONMENT: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("opsagent_env", default=None)


class _MappingEnvSource(EnvSettingsSource):
    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = _ENVIRONMENT.get()
        if env is None:
            return super()._load_env_vars()
        # Settings are case-insensitive: keys are matched lower-cased, as pydantic-settings does for os.environ.
        return {key.lower(): value for key, value in env.items()}


class Settings(BaseSettings):
    """The whole configuration. Environment variables override the file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
        populate_by_name=True,
    )

    agent: AgentSection = AgentSection()
    checks: ChecksSection = ChecksSection()
    alerts: AlertsSection = AlertsSection()  # type: ignore[valid-type]
    notify: NotifySection = NotifySection()
    backup: BackupSection = BackupSection()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (_MappingEnvSource(settings_cls), init_settings)

    @model_validator(mode="after")
    def _cross_refs(self) -> Settings:
        known = {t.name for t in self.checks.postgres}
        for i, name in enumerate(self.backup.postgres):
            if name not in known:
                raise ValueError(
                    f"backup.postgres[{i}] names {name!r}, which is not a checks.postgres target "
                    f"(known: {', '.join(sorted(known)) or 'none'})"
                )
        for name in self.backup.watermark:
            if name not in self.backup.postgres:
                raise ValueError(f"backup.watermark names {name!r}, which is not in backup.postgres")
        if self.backup.drill_dsn is not None and not self.backup.drill_on_target_server:
            problem = drill_server_problem(self.backup.drill_dsn.get_secret_value(),
                                           [(t.name, t.dsn.get_secret_value()) for t in self.checks.postgres])
            if problem:
                raise ValueError(problem)
        return self

    # -- derived views -------------------------------------------------------------------------

    def alarm(self, name: str) -> EffectiveAlarm:
        """The alarm's settings with config overrides applied to the catalogue defaults."""
        spec = ALARMS[name]
        override: AlertOverride | None = getattr(self.alerts, name)
        threshold = spec.threshold
        if spec.kind is ValueKind.DURATION and spec.threshold is None:
            threshold = self.backup.rpo
        if override is not None and override.threshold is not None:
            threshold = _parse_threshold(spec, override.threshold)
        return EffectiveAlarm(
            spec=spec,
            threshold=float(threshold or 0.0),
            for_seconds=spec.for_seconds if override is None or override.for_ is None else override.for_,
            severity=spec.severity if override is None or override.severity is None else override.severity,
            enabled=True if override is None else override.enabled,
        )

    def secret_values(self) -> list[str]:
        """Every secret string in the config, for the process-wide scrubber."""
        out: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, SecretStr):
                out.append(node.get_secret_value())
            elif isinstance(node, BaseModel):
                for field in type(node).model_fields:
                    walk(getattr(node, field))
            elif isinstance(node, (list, tuple)):
                for item in node:
                    walk(item)

        walk(self)
        return out

    def redacted(self) -> dict[str, Any]:
        """The effective configuration with every secret shown as ``***`` (``config show``)."""
        data = self.model_dump(mode="json", by_alias=True)

        def mask(node: Any, model: Any) -> Any:
            if isinstance(model, SecretStr):
                raw = model.get_secret_value()
                return secrets.mask_url(raw) if "://" in raw and secrets.url_password(raw) else secrets.MASK
            if isinstance(model, BaseModel):
                return {
                    (f.alias or k): mask(node.get(f.alias or k), getattr(model, k))
                    for k, f in type(model).model_fields.items()
                }
            if isinstance(model, (list, tuple)):
                return [mask(n, m) for n, m in zip(node, model)]
            if isinstance(node, str) and "://" in node:
                return secrets.mask_url(node)  # a plain URL may still carry user:password (metrics_url)
            return node

        result = mask(data, self)
        # Webhook URLs and DSNs without a password are still secrets as a whole.
        notify = result["notify"]
        for key in ("slack_webhook_url", "sentry_dsn"):
            if notify.get(key):
                notify[key] = secrets.MASK
        return result


class EffectiveAlarm(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    spec: AlarmSpec
    threshold: float
    for_seconds: float
    severity: str
    enabled: bool

    @property
    def name(self) -> str:
        return self.spec.name


def _parse_threshold(spec: AlarmSpec, raw: float | str) -> float:
    try:
        if spec.kind is ValueKind.RATIO:
            return parse_ratio(raw)
        if spec.kind is ValueKind.DURATION:
            return parse_duration(raw)
        value = float(raw)
    except (TypeError, ValueError) as exc:
        form = {ValueKind.RATIO: RATIO_FORM, ValueKind.DURATION: DURATION_FORM}.get(spec.kind, "a number")
        msg = str(exc) if spec.kind in (ValueKind.RATIO, ValueKind.DURATION) else f"{raw!r} is not {form}"
        raise ValueError(f"alerts.{spec.name}.threshold: {msg}") from None
    if value < 0 or value != value:
        raise ValueError(f"alerts.{spec.name}.threshold: must be a number >= 0")
    return value
