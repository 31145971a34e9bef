"""One module per check kind. :data:`KINDS` maps a config kind to its check class.

Imports are lazy so the agent only loads the drivers its configuration uses
(psycopg, redis-py and boto3 are heavy and a sidecar pays for them in RSS).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from checks.base import Check

_MODULES = {
    "cpu": ("checks.cpu", "CpuCheck"),
    "memory": ("checks.memory", "MemoryCheck"),
    "postgres": ("checks.postgres", "PostgresCheck"),
    "pgbouncer": ("checks.pgbouncer", "PgBouncerCheck"),
    "redis": ("checks.redis", "RedisCheck"),
    "error_rate": ("checks.error_rate", "ErrorRateCheck"),
    "sqs": ("checks.sqs", "SqsCheck"),
    "bullmq": ("checks.bullmq", "BullMQCheck"),
    "s3_replication": ("checks.s3_replication", "S3ReplicationCheck"),
}

KINDS = tuple(_MODULES)


def check_class(kind: str) -> type[Check]:
    module_name, class_name = _MODULES[kind]
    return getattr(importlib.import_module(module_name), class_name)  # type: ignore[no-any-return]
