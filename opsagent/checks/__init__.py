"""One module per check kind. :data:`KINDS` maps a config kind to its check class.

Imports are lazy so the agent only loads the drivers its configuration uses
(psycopg, redis-py and boto3 are heavy and a sidecar pays for them in RSS).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from opsagent.checks.base import Check

_MODULES = {
    "cpu": ("opsagent.checks.cpu", "CpuCheck"),
    "memory": ("opsagent.checks.memory", "MemoryCheck"),
    "postgres": ("opsagent.checks.postgres", "PostgresCheck"),
    "pgbouncer": ("opsagent.checks.pgbouncer", "PgBouncerCheck"),
    "redis": ("opsagent.checks.redis", "RedisCheck"),
    "error_rate": ("opsagent.checks.error_rate", "ErrorRateCheck"),
    "sqs": ("opsagent.checks.sqs", "SqsCheck"),
    "bullmq": ("opsagent.checks.bullmq", "BullMQCheck"),
    "s3_replication": ("opsagent.checks.s3_replication", "S3ReplicationCheck"),
    "rabbitmq": ("opsagent.checks.rabbitmq", "RabbitMQCheck"),
    "sql": ("opsagent.checks.sql", "SqlCheck"),
    "http": ("opsagent.checks.http", "HttpCheck"),
    "cloudwatch": ("opsagent.checks.cloudwatch", "CloudWatchCheck"),
}

KINDS = tuple(_MODULES)


def check_class(kind: str) -> Callable[[Any], Check]:
    """The kind's check class: called with its target model, it makes one check."""
    module_name, class_name = _MODULES[kind]
    return getattr(importlib.import_module(module_name), class_name)  # type: ignore[no-any-return]
