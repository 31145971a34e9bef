"""Configuration: one YAML file plus ``OPSAGENT_<SECTION>__<KEY>`` overrides.

``models`` holds the frozen section models (``targets`` the check targets, ``fields`` the shared
value types), ``load`` reads the file and the
environment, ``problems`` words every error as one line naming its key.
"""

from __future__ import annotations

from opsagent.config.fields import Duration, Ratio, TargetName
from opsagent.config.load import load_config, read_yaml, resolve_config_path
from opsagent.config.models import (
    CONFIG_ENV,
    DEFAULT_CONFIG_FILE,
    ENV_PREFIX,
    AgentSection,
    AlertOverride,
    AlertsSection,
    BackupSection,
    EffectiveAlarm,
    NotifySection,
    RetentionPolicy,
    Settings,
)
from opsagent.config.problems import ConfigError
from opsagent.config.targets import (
    LIST_KINDS,
    BullMQTarget,
    ChecksSection,
    CloudWatchSource,
    CloudWatchTarget,
    ErrorRateTarget,
    HostTarget,
    HttpTarget,
    PgBouncerTarget,
    PostgresTarget,
    RabbitMQTarget,
    RedisTarget,
    S3ReplicationTarget,
    SqlTarget,
    SqsTarget,
    TargetBase,
)

__all__ = [
    "CONFIG_ENV", "DEFAULT_CONFIG_FILE", "ENV_PREFIX", "LIST_KINDS", "AgentSection", "AlertOverride", "AlertsSection",
    "BackupSection", "BullMQTarget", "ChecksSection", "CloudWatchSource", "CloudWatchTarget", "ConfigError", "Duration", "EffectiveAlarm",
    "ErrorRateTarget", "HostTarget", "HttpTarget", "NotifySection", "PgBouncerTarget", "PostgresTarget", "RabbitMQTarget", "Ratio", "RedisTarget",
    "RetentionPolicy", "S3ReplicationTarget", "Settings", "SqlTarget", "SqsTarget", "TargetBase", "TargetName", "load_config",
    "read_yaml", "resolve_config_path",
]
