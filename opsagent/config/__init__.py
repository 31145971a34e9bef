"""Configuration: one YAML file plus ``OPSAGENT_<SECTION>__<KEY>`` overrides.

``models`` holds the frozen section models, ``load`` reads the file and the
environment, ``problems`` words every error as one line naming its key.
"""

from __future__ import annotations

from opsagent.config.load import load_config, read_yaml, resolve_config_path
from opsagent.config.models import (
    CONFIG_ENV,
    DEFAULT_CONFIG_FILE,
    ENV_PREFIX,
    LIST_KINDS,
    AgentSection,
    AlertOverride,
    AlertsSection,
    BackupSection,
    BullMQTarget,
    ChecksSection,
    CloudWatchSource,
    Duration,
    EffectiveAlarm,
    ErrorRateTarget,
    HostTarget,
    NotifySection,
    PgBouncerTarget,
    PostgresTarget,
    Ratio,
    RedisTarget,
    RetentionPolicy,
    S3ReplicationTarget,
    Settings,
    SqsTarget,
    TargetBase,
    TargetName,
)
from opsagent.config.models import CloudWatchTarget, HttpTarget, RabbitMQTarget, SqlTarget
from opsagent.config.problems import ConfigError

__all__ = [
    "CONFIG_ENV", "DEFAULT_CONFIG_FILE", "ENV_PREFIX", "LIST_KINDS", "AgentSection", "AlertOverride", "AlertsSection",
    "BackupSection", "BullMQTarget", "ChecksSection", "CloudWatchSource", "ConfigError", "Duration", "EffectiveAlarm",
    "ErrorRateTarget", "HostTarget", "NotifySection", "PgBouncerTarget", "PostgresTarget", "Ratio", "RedisTarget",
    "RetentionPolicy", "S3ReplicationTarget", "Settings", "SqsTarget", "TargetBase", "TargetName", "load_config",
    "read_yaml", "resolve_config_path", "RabbitMQTarget", "SqlTarget", "HttpTarget", "CloudWatchTarget",
]
