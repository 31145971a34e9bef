"""BullMQ queues in Redis: waiting, active, failed and delayed jobs per named queue.

BullMQ keeps each queue under ``<prefix>:<queue>:*``: ``wait``, ``paused`` and
``active`` are lists, ``prioritized``, ``delayed`` and ``failed`` sorted sets (the
``failed`` score is the time the job failed, in ms). The reading's value is the
worst queue's waiting jobs (``BullMQBacklogHigh``);
``details["recent_failed_jobs"]`` counts jobs that failed within
``failed_window`` across the queues (``BullMQFailedJobs``) — the failed set itself
keeps old failures around, so its size alone would page forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from opsagent.checks.base import CheckError, Gauge, Reading, SimpleCheck
from opsagent.config import BullMQTarget

# Keys whose existence shows the queue has ever been used.
_EXISTENCE_KEYS = ("meta", "id", "wait", "paused", "active", "prioritized", "delayed", "failed", "completed", "events")

# state -> gauge help; each becomes opsagent_bullmq_<state>_jobs{queue=...}
_STATES: Mapping[str, str] = {
    "waiting": "Jobs waiting for a worker (wait + paused lists, prioritized set)",
    "active": "Jobs being processed",
    "delayed": "Jobs scheduled for later",
    "failed": "Jobs in the failed set (kept until removed)",
    "recent_failed": "Jobs that failed within failed_window",
}


class BullMQCheck(SimpleCheck):
    kind: ClassVar[str] = "bullmq"

    def __init__(self, target: BullMQTarget, clock: Callable[[], float] = time.time) -> None:
        self.target = target
        self._clock = clock
        self._url = target.url.get_secret_value()
        self._timeout = min(5.0, target.deadline)
        self._client: Any = None
        self._keys = {q: f"{target.prefix}:{q}" for q in target.queues}

    def _connect(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(
                self._url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout,
                client_name="opsagent", health_check_interval=0, decode_responses=True,
            )
        return self._client

    def measure(self) -> Reading:
        client = self._connect()
        since_ms = int((self._clock() - self.target.failed_window) * 1000)
        pipe = client.pipeline(transaction=False)
        for base in self._keys.values():
            pipe.exists(*(f"{base}:{suffix}" for suffix in _EXISTENCE_KEYS))
            pipe.llen(f"{base}:wait")
            pipe.llen(f"{base}:paused")
            pipe.zcard(f"{base}:prioritized")
            pipe.llen(f"{base}:active")
            pipe.zcard(f"{base}:delayed")
            pipe.zcard(f"{base}:failed")
            pipe.zcount(f"{base}:failed", since_ms, "+inf")
        pipe.info("memory")  # maxmemory_policy: BullMQ loses jobs unless noeviction (CONFIG is off on ElastiCache)
        answers = pipe.execute()
        memory: dict[str, Any] = answers.pop() or {}
        queues: dict[str, dict[str, int]] = {}
        missing: list[str] = []
        for i, queue in enumerate(self._keys):
            exists, wait, paused, prioritized, active, delayed, failed, recent = answers[i * 8:(i + 1) * 8]
            if not exists:
                missing.append(queue)
                continue
            queues[queue] = {"waiting": int(wait) + int(paused) + int(prioritized), "active": int(active),
                             "delayed": int(delayed), "failed": int(failed), "recent_failed": int(recent)}
        if missing:
            raise CheckError(
                f"no BullMQ keys for queue(s) {', '.join(missing)} under prefix {self.target.prefix!r} "
                f"(looked for {self.target.prefix}:<queue>:meta, :id, :wait…); check the queue names and prefix"
            )
        worst = max(queues, key=lambda q: queues[q]["waiting"])
        gauges = tuple(
            Gauge(f"opsagent_bullmq_{state}_jobs", float(counts[state]), {"queue": queue}, help_text)
            for queue, counts in queues.items() for state, help_text in _STATES.items()
        )
        details = {
            "queues": queues,
            "worst_queue": worst,
            "waiting_jobs": queues[worst]["waiting"],
            "recent_failed_jobs": sum(c["recent_failed"] for c in queues.values()),
            "failed_window_seconds": self.target.failed_window,
            "prefix": self.target.prefix,
            "maxmemory_policy": memory.get("maxmemory_policy"),
            "eviction_policy_unsafe": 0 if memory.get("maxmemory_policy") == "noeviction" else 1,
        }
        return Reading(float(queues[worst]["waiting"]), details, gauges, source="redis")

    def context(self) -> Mapping[str, Any]:
        """The newest failures' reasons, so the page says why jobs fail."""
        client = self._connect()
        reasons: dict[str, list[dict[str, Any]]] = {}
        for queue, base in self._keys.items():
            ids = client.zrevrange(f"{base}:failed", 0, 2)
            reasons[queue] = [
                {"id": job_id, "name": name, "failed_reason": (reason or "")[:200]}
                for job_id, (name, reason) in zip(ids, (client.hmget(f"{base}:{j}", "name", "failedReason") for j in ids))
            ]
        return {"recent_failures": reasons}

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
