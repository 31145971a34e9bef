"""Configuration: one YAML file plus ``OPSAGENT_<SECTION>__<KEY>`` overrides.

Models are frozen and strict about unknown keys so a typo is an error, not a
silently ignored setting. :func:`load_config` turns every problem (YAML syntax,
types, units, URLs, duplicate names, stray environment variables) into a
:class:`ConfigError` holding one human line per problem, naming the key.
"""

from __future__ import annotations

import contextvars
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from agent import secrets
from agent.alerts.catalog import ALARMS, AlarmSpec, ValueKind
from agent.units import DURATION_FORM, RATIO_FORM, format_duration, parse_duration, parse_ratio

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


PostgresDsn = _secret_url("postgresql", "postgres")
RedisUrl = _secret_url("redis", "rediss", "unix")
HttpUrl = _plain_url("http", "https")
SecretHttpUrl = _secret_url("http", "https")
RepositoryUrl = _plain_url("file", "s3")


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
    runbook_base_url: str = "https://github.com/opsagent/opsagent/blob/main/runbooks/"
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


_CRON_FIELD = r"[0-9*/,\-A-Za-z?]+"


def _check_cron(value: object) -> object:
    if not isinstance(value, str) or not re.fullmatch(rf"\s*{_CRON_FIELD}(\s+{_CRON_FIELD}){{4}}\s*", value):
        raise ValueError(f"{value!r} is not a cron expression; expected five fields such as '0 * * * *' (UTC)")
    from agent.backup.schedule import cron_trigger

    try:
        cron_trigger(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid cron expression ({exc}); expected five fields such as '0 * * * *'") from None
    return value


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


# -- loading ------------------------------------------------------------------------------------


class ConfigError(Exception):
    """Invalid configuration: ``problems`` holds one line per problem, each naming its key."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


_FORMS = {
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "model_type": "a mapping of keys",
    "dict_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
    "literal_error": None,
    "extra_forbidden": None,
    "string_pattern_mismatch": None,
}


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def _key_part(part: object) -> str:
    """A key as it would be typed: bare when plain, else JSON-quoted (so "", "a b", tabs or "¡" read as keys)."""
    text = str(part)
    if _PLAIN_KEY.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=not text.isprintable())


def _loc(loc: tuple[Any, ...], last_is_key: bool = False) -> str:
    """``checks.postgres[0].dsn`` from a pydantic error location (``last_is_key``: its last int is a mapping key)."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int) and not (last_is_key and i == len(loc) - 1):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "constrained-")):
            continue
        else:
            out += ("." if out else "") + _key_part(part)
    return out or "(top level)"


_SECRET_KEYS = {"admin_token", "dsn", "url", "slack_webhook_url", "pagerduty_routing_key", "sentry_dsn", "drill_dsn",
                "lock_dsn"}


def _describe(error: dict[str, Any]) -> tuple[str, str]:
    """(the key, what is wrong with it) for one pydantic error; the key is empty when the text names it."""
    kind = error["type"]
    key = _loc(tuple(error["loc"]), last_is_key=kind == "invalid_key")
    msg: str = error["msg"]
    if kind == "invalid_key":
        return key, "keys must be strings"
    if kind == "extra_forbidden":
        return key, "unknown key; remove it or check its spelling"
    if kind == "missing":
        return key, "required but missing"
    # Never echo what may be a secret: a secret key's value, or any URL (credentials, webhook paths).
    raw = error.get("input")
    hidden = key.rsplit(".", 1)[-1] in _SECRET_KEYS or "@" in str(raw) or "://" in str(raw)
    if kind == "string_pattern_mismatch":
        value = "the value" if hidden else repr(raw)
        if key.endswith("name") or ".postgres[" in key and key.startswith("backup"):
            return key, f"{value} is not a valid name; expected {_NAME_FORM}"
        if key.endswith("sns_topic_arn"):
            return key, f"{value} is not an SNS topic ARN; expected arn:aws:sns:REGION:ACCOUNT:NAME"
        if key.endswith("load_balancer"):
            return key, f"{value} is not an ALB name; expected app/NAME/ID"
        return key, msg
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        if hidden and raw is not None and str(raw):  # a validator quoted a URL or secret where it expected else
            msg = msg.replace(repr(str(raw)), "the value").replace(str(raw), "the value")
        if msg.startswith("alerts."):  # already names its key
            return "", msg
        return key, msg
    form = _FORMS.get(kind)
    shown = raw
    shown_text = "" if isinstance(shown, (dict, list)) or shown is None or hidden else f"{secrets.scrub(str(shown))!r}: "
    if form:
        return key, f"{shown_text}expected {form}"
    return key, f"{shown_text}{msg}"


def _check_environment(env: dict[str, str]) -> list[str]:
    """Stray OPSAGENT_* variables are mistakes: say so instead of ignoring them."""
    sections = set(Settings.model_fields)
    problems = []
    for name in sorted(env):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == CONFIG_ENV:
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section = rest.split("__", 1)[0]
        if section not in sections:
            problems.append(
                f"{name}: unknown environment variable; expected OPSAGENT_<SECTION>__<KEY> with SECTION one of "
                + ", ".join(sorted(sections)).upper()
            )
    return problems


def resolve_config_path(explicit: str | None, env: dict[str, str] | None = None) -> Path | None:
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.exists() else None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read config file ({exc.__class__.__name__}: {exc})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"{path}: not valid YAML{where}: {problem}; expected a YAML mapping of sections"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply to read; expected a YAML mapping of sections"]) from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ConfigError([f"{path}: a value cannot be read ({str(exc)[:120]}); expected a YAML mapping of sections"]) from None
    if data is None:
        raise ConfigError([f"{path}: the file is empty; expected a YAML mapping with sections such as agent, checks"])
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a YAML mapping of sections (agent, checks, alerts, notify, backup), got {type(data).__name__}"])
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError([f"{path}: section names must be strings, got {bad_keys[0]!r}"])
    if _expands_beyond(data, MAX_CONFIG_VALUES):
        raise ConfigError([f"{path}: expands to more than {MAX_CONFIG_VALUES} values (YAML aliases nested in "
                           "aliases?); expected a plain mapping of sections"])
    return data


MAX_CONFIG_VALUES = 100_000


def _expands_beyond(data: Any, limit: int) -> bool:
    """True when walking ``data`` with aliases expanded visits more than ``limit`` values.

    A "billion laughs" file is small on disk but exponential once aliases are
    followed; validation would hang on it, so it is refused before that.
    """
    stack, seen = [data], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Load and validate the configuration; raise :class:`ConfigError` with every problem."""
    env = dict(os.environ if env is None else env)
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(Path(path))
    problems = _check_environment(env)
    raw_secrets = _raw_secrets(data, env)
    token = _ENVIRONMENT.set(env)
    try:
        try:
            settings = Settings(**data)
        except ValidationError as exc:
            problems.extend(_problem(e, raw_secrets) for e in exc.errors(include_url=False))
            raise ConfigError(_dedupe(problems)) from None
        except (ValueError, json.JSONDecodeError) as exc:  # pydantic-settings: bad JSON in an env var
            problems.append(f"environment: {secrets.scrub(str(exc))}; complex values (lists, mappings) must be JSON")
            raise ConfigError(problems) from None
        except RecursionError:
            problems.append("configuration: nested too deeply to validate; expected the documented sections and keys")
            raise ConfigError(problems) from None
    finally:
        _ENVIRONMENT.reset(token)
    if problems:
        raise ConfigError(problems)
    secrets.register(settings.secret_values())
    return settings


def _raw_secrets(data: dict[str, Any], env: Mapping[str, str]) -> tuple[str, ...]:
    """What the input put at secret keys, longest first, for masking problem messages.

    A message about another key may quote a value that also sits at a secret
    key (a token pasted twice); validation failed, so there are no secret types
    to ask, and the raw input is walked instead.
    """
    found: set[str] = set()

    def walk(node: Any, key: str | None = None) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k if isinstance(k, str) else None)
        elif isinstance(node, list):
            for item in node:
                walk(item, key)
        elif isinstance(node, (str, int)) and not isinstance(node, bool) and key in _SECRET_KEYS:
            text = str(node)
            if len(text) >= 4:
                found.add(text)
            password = secrets.url_password(text) if "://" in text else None
            if password and len(password) >= 4:
                found.add(password)

    walk(data)
    for name, value in env.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        walk({name.rsplit("__", 1)[-1].lower(): value})
        if value[:1] in "[{":
            try:
                walk(json.loads(value))
            except (ValueError, RecursionError):
                pass
    return tuple(sorted(found, key=len, reverse=True))


def _problem(error: dict[str, Any], raw_secrets: tuple[str, ...]) -> str:
    """One problem line; what follows the key never shows a secret (known, in a URL, or at a secret key)."""
    key, rest = _describe(error)
    for value in raw_secrets:  # after the key only, so a short secret never mangles a key name
        rest = rest.replace(value, secrets.MASK)
    return secrets.scrub(f"{key}: {rest}" if key else rest)


def _dedupe(items: list[str]) -> list[str]:
    seen: set[str] = set()
    return [i for i in items if not (i in seen or seen.add(i))]  # type: ignore[func-returns-value]
