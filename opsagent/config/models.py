"""The configuration models: one frozen pydantic model per section, strict about unknown keys.

A typo is an error, not a silently ignored setting. Units (durations, ratios),
URLs and names are validated here; how problems are worded lives in
:mod:`opsagent.config.problems`, how files and the environment are read in
:mod:`opsagent.config.load`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from opsagent.alerts.catalog import ALARMS, AlarmSpec, ValueKind
from opsagent.config.backup_options import RetryPolicy, Watermark, drill_server_problem
from opsagent.config.fields import (
    Duration,
    HttpUrl,
    Model,
    PostgresDsn,
    RepositoryUrl,
    SecretHttpUrl,
    TargetName,
    _url_validator,
)
from opsagent.config.quality import MaintenanceWindow
from opsagent.config.show import effective_config
from opsagent.config.targets import ChecksSection
from opsagent.cron import check as check_cron
from opsagent.units import (
    DURATION_FORM,
    RATIO_FORM,
    parse_duration,
    parse_ratio,
)

ENV_PREFIX = "OPSAGENT_"
CONFIG_ENV = "OPSAGENT_CONFIG"
DEFAULT_CONFIG_FILE = "opsagent.yaml"


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
    # The fleet (runtime/fleet.py): one leader checks the shared targets. The lock is a PostgreSQL advisory
    # lock on fleet_lock_dsn (default backup.lock_dsn), or a DynamoDB lease in fleet_lock_table.
    id: Annotated[str, Field(min_length=1, max_length=100)] | None = None  # per process; default name@host:pid
    fleet_lock_dsn: Annotated[SecretStr, _url_validator(("postgresql", "postgres"), secret=True)] | None = None
    fleet_lock_table: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{3,255}$")] | None = None
    fleet_lease: Duration = 15.0  # a hung or cut-off leader is fenced after this long

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not an address; expected HOST:PORT such as 127.0.0.1:9108")
        return value

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: str) -> str:
        """A state_dir that is (or lies under) a file would pass here and kill ``run`` at its first write."""
        from pathlib import Path

        path = Path(value)
        for existing in (path, *path.parents):
            if existing.exists():
                if not existing.is_dir():
                    where = "is a file" if existing == path else f"lies under {str(existing)!r}, which is a file"
                    raise ValueError(f"{value!r} {where}; expected a directory (created when missing)")
                break
        return value
    @model_validator(mode="after")
    def _fleet(self) -> AgentSection:
        if not 2 <= self.fleet_lease <= 600:
            raise ValueError(f"fleet_lease must be between 2s and 10m; expected {DURATION_FORM}")
        if all(v is not None for v in (self.fleet_lock_dsn, self.fleet_lock_table)):
            raise ValueError("set one of fleet_lock_dsn (PostgreSQL advisory lock) or fleet_lock_table (DynamoDB lease)")
        return self

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class AlertOverride(Model):
    threshold: float | str | None = None
    for_: Duration | None = Field(default=None, alias="for")
    severity: Literal["critical", "warning", "info"] | None = None
    enabled: bool = True
    clear_for: Duration | None = None  # how long the value must be back before it resolves (default: one interval)
    recovery_threshold: float | str | None = None  # resolve only once past this (hysteresis band)


class _AlertsBase(Model):
    @model_validator(mode="after")
    def _thresholds(self) -> _AlertsBase:
        for name in ALARMS:
            override = getattr(self, name)
            for key in [k for k in ("threshold", "recovery_threshold") if getattr(override, k, None) is not None]:
                _parse_threshold(ALARMS[name], getattr(override, key), key)
        return self


def _alerts_section() -> type[Model]:
    """One optional override per catalogue alarm; an unknown alarm name is an error."""
    from pydantic import create_model

    fields: dict[str, Any] = dict.fromkeys(ALARMS, (AlertOverride | None, None))
    model: type[Model] = create_model("AlertsSection", __base__=_AlertsBase, **fields)
    return model


if TYPE_CHECKING:
    class AlertsSection(_AlertsBase):
        """What type checkers see: any catalogue alarm name reads as an optional override."""

        def __getattr__(self, name: str) -> AlertOverride | None: ...
else:
    AlertsSection = _alerts_section()  # one field per catalogue alarm, built from ALARMS at import


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


# The levels each backup.compression method accepts (opsagent/backup/codec.py compresses with them).
COMPRESSION_LEVELS = {"zstd": (1, 19), "gzip": (1, 9), "lz4": (0, 16), "none": (0, 0)}


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
    # Release 2, performance (issue 22): how pg_dump output is compressed, and parallel dumps (pg_dump -Fd -j N).
    compression: Literal["zstd", "gzip", "lz4", "none"] = "zstd"
    compression_level: int | None = None  # None: the method's default (zstd 3, gzip 6, lz4 0)
    jobs: int = Field(default=1, ge=1, le=64)
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

    @field_validator("compression_level")
    @classmethod
    def _compression_level_in_range(cls, level: int | None, info: ValidationInfo) -> int | None:
        method = info.data.get("compression")  # absent when compression itself was invalid (reported there)
        if level is not None and method in COMPRESSION_LEVELS:
            low, high = COMPRESSION_LEVELS[method]
            if not low <= level <= high:
                raise ValueError(f"{level} is out of range for {method}; expected {low}–{high}")
        return level


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
    alerts: AlertsSection = AlertsSection()
    notify: NotifySection = NotifySection()
    backup: BackupSection = BackupSection()
    maintenance: list[MaintenanceWindow] = []

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
        raw = None if override is None else override.recovery_threshold
        recovery = None if raw is None else _parse_threshold(spec, raw, "recovery_threshold")
        return EffectiveAlarm(
            spec=spec,
            threshold=float(threshold or 0.0),
            for_seconds=spec.for_seconds if override is None or override.for_ is None else override.for_,
            severity=spec.severity if override is None or override.severity is None else override.severity,
            enabled=True if override is None else override.enabled,
            clear_for=None if override is None else override.clear_for,
            recovery_threshold=recovery,
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
        """The effective configuration as ``config show`` prints it, secrets ``***`` (:mod:`opsagent.config.show`)."""
        return effective_config(self)


class EffectiveAlarm(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    spec: AlarmSpec
    threshold: float
    for_seconds: float
    severity: str
    enabled: bool
    clear_for: float | None = None
    recovery_threshold: float | None = None

    @property
    def name(self) -> str:
        return self.spec.name


def _parse_threshold(spec: AlarmSpec, raw: float | str, key: str = "threshold") -> float:
    try:
        if spec.kind is ValueKind.RATIO:
            return parse_ratio(raw)
        if spec.kind is ValueKind.DURATION:
            return parse_duration(raw)
        value = float(raw)
    except (TypeError, ValueError) as exc:
        form = {ValueKind.RATIO: RATIO_FORM, ValueKind.DURATION: DURATION_FORM}.get(spec.kind, "a number")
        msg = str(exc) if spec.kind in (ValueKind.RATIO, ValueKind.DURATION) else f"{raw!r} is not {form}"
        raise ValueError(f"alerts.{spec.name}.{key}: {msg}") from None
    if not 0 <= value < float("inf"):  # NaN and inf fail too: such an alarm could never fire
        raise ValueError(f"alerts.{spec.name}.{key}: must be a finite number >= 0")
    return value
