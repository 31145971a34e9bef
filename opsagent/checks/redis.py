"""Redis: ``used_memory`` against ``maxmemory`` from one ``INFO`` call.

``maxmemory`` is read from ``INFO memory``, never ``CONFIG GET``, because
ElastiCache disables ``CONFIG``. When ``maxmemory`` is 0 (no limit) Redis can
grow until the host runs out, so the basis becomes ``total_system_memory`` and
the details say so: in a container that is the host's memory, not the task's.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import redis
from redis._parsers import _RESP2Parser, _RESP3Parser
from redis.backoff import NoBackoff
from redis.retry import Retry

from opsagent.checks.base import CheckError, Counter, Gauge, Reading
from opsagent.config import RedisTarget

# redis-py 8 replaced lib_name/lib_version with driver_info; None in either disables CLIENT SETINFO.
_NO_SETINFO: dict[str, Any] = (
    {"driver_info": None} if "driver_info" in inspect.signature(redis.Redis.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)

# The largest bulk reply read from a target. A real INFO is a few KiB; a hostile endpoint answering 300 MB
# would otherwise be read whole into memory (the agent shares a 384 MiB task).
REPLY_CAP = 4 << 20

BASIS_MAXMEMORY = "maxmemory"
BASIS_SYSTEM = "system memory (maxmemory is 0)"

# INFO field -> (metric name, help). Missing optional fields are skipped quietly.
GAUGES: dict[str, tuple[str, str]] = {
    "used_memory": ("opsagent_redis_used_memory_bytes", "memory allocated by Redis"),
    "used_memory_rss": ("opsagent_redis_used_memory_rss_bytes", "resident set size of the Redis process"),
    "maxmemory": ("opsagent_redis_maxmemory_bytes", "maxmemory setting (0 = no limit)"),
    "total_system_memory": ("opsagent_redis_system_memory_bytes", "memory of the host Redis runs on"),
    "evicted_keys": ("opsagent_redis_evicted_keys", "deprecated, removed in release 3: use opsagent_redis_evicted_keys_total"),
    "expired_keys": ("opsagent_redis_expired_keys", "deprecated, removed in release 3: use opsagent_redis_expired_keys_total"),
    "connected_clients": ("opsagent_redis_connected_clients", "client connections"),
    "blocked_clients": ("opsagent_redis_blocked_clients", "clients blocked in a blocking call"),
    "mem_fragmentation_ratio": ("opsagent_redis_memory_fragmentation_ratio", "used_memory_rss / used_memory"),
}

# INFO field -> (counter name, help): cumulative counts since Redis started, exported as counters (SPEC 9.7).
COUNTERS: dict[str, tuple[str, str]] = {
    "evicted_keys": ("opsagent_redis_evicted_keys_total", "keys evicted since Redis started"),
    "expired_keys": ("opsagent_redis_expired_keys_total", "keys expired since Redis started"),
}

# Shown on a page when RedisMemoryHigh fires (INFO memory fields).
CONTEXT_FIELDS = (
    "used_memory_human", "used_memory_peak_human", "used_memory_rss_human", "used_memory_dataset",
    "used_memory_overhead", "used_memory_scripts", "mem_fragmentation_ratio", "maxmemory_human",
    "maxmemory_policy", "total_system_memory_human", "mem_clients_normal", "mem_replication_backlog",
)


def capped_parser(base: type[Any]) -> type[Any]:
    """``base`` (a redis-py RESP parser) refusing any bulk reply longer than REPLY_CAP before reading it."""

    class CappedParser(base):  # type: ignore[misc]  # redis-py's parsers are untyped
        def on_connect(self, connection: Any) -> None:
            super().on_connect(connection)
            buffer = self._buffer
            read = buffer.read

            def read_capped(length: int, *args: Any, **kwargs: Any) -> bytes:
                if length > REPLY_CAP:
                    raise CheckError(f"the server answered a {length}-byte reply; more than the {REPLY_CAP}-byte cap "
                                     "(is this a Redis server?)")
                return read(length, *args, **kwargs)  # type: ignore[no-any-return]

            buffer.read = read_capped

    return CappedParser


def not_redis(exc: BaseException) -> CheckError:
    """redis-py tripping over a reply of the wrong shape (HELLO answered with a string): the target's fault."""
    return CheckError(f"the server's answer is not the Redis protocol ({type(exc).__name__}: {exc}); is this a Redis server?")


def memory_ratio(info: Mapping[str, Any]) -> tuple[float, str, int]:
    """(used / basis, basis name, basis bytes); CheckError if the answer lacks the core fields."""
    try:
        used = int(info["used_memory"])
        maxmemory = int(info["maxmemory"])
    except (KeyError, TypeError, ValueError):
        raise CheckError("INFO has no usable used_memory/maxmemory fields; is this a Redis server?") from None
    if maxmemory > 0:
        return used / maxmemory, BASIS_MAXMEMORY, maxmemory
    system = int(info.get("total_system_memory") or 0)
    if system <= 0:
        raise CheckError("maxmemory is 0 and INFO reports no total_system_memory; set maxmemory to measure usage")
    return used / system, BASIS_SYSTEM, system


class RedisCheck:
    """Memory used against maxmemory, evictions, hit ratio, clients."""

    kind: ClassVar[str] = "redis"

    def __init__(self, target: RedisTarget) -> None:
        self.target = target
        deadline = target.deadline
        # No retries: one attempt per run; a slow or dead server is the runner's
        # business, and retries would multiply the socket timeouts past the deadline.
        # No CLIENT SETNAME/SETINFO on connect: a least-privilege ACL user (+info
        # only) must be able to run this check.
        url = target.url.get_secret_value()
        resp2 = parse_qs(urlsplit(url).query).get("protocol") == ["2"]  # redis-py 8 speaks RESP3 (HELLO 3) by default
        try:
            self._client = self._connect(url, resp2, deadline)
        except (AttributeError, TypeError) as exc:  # the single connection says HELLO at once
            raise not_redis(exc) from None
        self._last_evicted: int | None = None

    @staticmethod
    def _connect(url: str, resp2: bool, deadline: float) -> redis.Redis:
        return redis.Redis.from_url(
            url,
            parser_class=capped_parser(_RESP2Parser if resp2 else _RESP3Parser),
            socket_timeout=max(0.5, deadline * 0.8),
            socket_connect_timeout=max(0.5, min(5.0, deadline * 0.8)),
            retry=Retry(NoBackoff(), 0),
            **_NO_SETINFO,
            single_connection_client=True,
            health_check_interval=0,
        )

    def measure(self) -> Reading:
        try:
            info: dict[str, Any] = self._client.info()
        except (AttributeError, TypeError) as exc:
            raise not_redis(exc) from None
        ratio, basis, basis_bytes = memory_ratio(info)
        used = int(info["used_memory"])
        hits = int(info.get("keyspace_hits", 0))
        misses = int(info.get("keyspace_misses", 0))
        evicted = int(info.get("evicted_keys", 0))
        since_last = None if self._last_evicted is None or evicted < self._last_evicted else evicted - self._last_evicted
        self._last_evicted = evicted
        details: dict[str, Any] = {
            "used_memory_bytes": used,
            "maxmemory_bytes": int(info["maxmemory"]),
            "memory_basis": basis,
            "memory_basis_bytes": basis_bytes,
            "usage": f"{used} of {basis_bytes} bytes ({ratio:.1%} of {basis})",
            "maxmemory_policy": info.get("maxmemory_policy"),
            "evicted_keys": evicted,
            "evicted_keys_since_last_check": since_last,
            "keyspace_hits": hits,
            "keyspace_misses": misses,
            "keyspace_hit_ratio": round(hits / (hits + misses), 6) if hits + misses else None,
            "connected_clients": int(info.get("connected_clients", 0)),
            "redis_version": info.get("redis_version"),
            "role": self.target.role,
            "eviction_policy_unsafe": eviction_unsafe(info.get("maxmemory_policy")) if self.target.role == "queue" else 0,
        }
        gauges = [Gauge(metric, float(info[field]), help=text)
                  for field, (metric, text) in GAUGES.items() if _is_number(info.get(field))]
        gauges += [Counter(metric, float(info[field]), help=text)
                   for field, (metric, text) in COUNTERS.items() if _is_number(info.get(field))]
        if details["keyspace_hit_ratio"] is not None:
            gauges.append(Gauge("opsagent_redis_keyspace_hit_ratio", details["keyspace_hit_ratio"],
                                help="keyspace hits / (hits + misses) since Redis started"))
        return Reading(value=ratio, details=details, gauges=tuple(gauges), source="INFO")

    def context(self) -> Mapping[str, Any]:
        """Where the memory goes and what Redis does when it is full."""
        info: dict[str, Any] = self._client.info("memory")
        return {"memory": {k: info[k] for k in CONTEXT_FIELDS if k in info},
                "eviction_policy": info.get("maxmemory_policy")}

    def close(self) -> None:
        self._client.close()


def eviction_unsafe(policy: object) -> int:
    """1 when a Redis that backs a queue may evict keys (anything but ``noeviction`` loses jobs), else 0."""
    return 0 if policy == "noeviction" else 1


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
