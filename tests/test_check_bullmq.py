"""The bullmq check against a private Redis holding BullMQ-shaped keys."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from opsagent.alerts.catalog import ALARMS
from opsagent.alerts.verdict import verdict
from opsagent.checks import check_class
from opsagent.checks.base import CheckError
from opsagent.checks.bullmq import BullMQCheck
from opsagent.config import BullMQTarget, ConfigError, Settings, load_config
from opsagent.runtime.runner import TargetRunner
from opsagent_testing.servers import HangingServer, RedisServer, closed_port


@pytest.fixture(scope="module")
def bull_redis() -> Iterator[RedisServer]:
    server = RedisServer(password="bull-secret-pw").start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def r(bull_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(bull_redis.url(), decode_responses=True, socket_timeout=5)
    client.flushall()
    yield client
    client.close()


def add_queue(r: redis.Redis, queue: str, *, prefix: str = "bull", wait: int = 0, paused: int = 0,
              prioritized: int = 0, active: int = 0, delayed: int = 0, failed_at: list[float] = ()) -> None:
    """Write the keys BullMQ keeps for one queue (job ids only; counts are what matter)."""
    base = f"{prefix}:{queue}"
    r.hset(f"{base}:meta", mapping={"opts.maxLenEvents": "10000", "version": "bullmq:5.0.0"})
    job = 0

    def ids(n: int) -> list[str]:
        nonlocal job
        out = [str(job + i + 1) for i in range(n)]
        job += n
        return out

    if wait:
        r.lpush(f"{base}:wait", *ids(wait))
    if paused:
        r.lpush(f"{base}:paused", *ids(paused))
    if prioritized:
        r.zadd(f"{base}:prioritized", dict.fromkeys(ids(prioritized), 1))
    if active:
        r.lpush(f"{base}:active", *ids(active))
    if delayed:
        r.zadd(f"{base}:delayed", {j: (time.time() + 600) * 1000 * 0x1000 for j in ids(delayed)})
    for at, j in zip(failed_at, ids(len(failed_at))):
        r.zadd(f"{base}:failed", {j: at * 1000})
        r.hset(f"{base}:{j}", mapping={"name": "send-email", "failedReason": "SMTP 421 try later"})
    r.set(f"{base}:id", job)


def target(server: RedisServer, queues: list[str], **kw: object) -> BullMQTarget:
    return BullMQTarget(name="jobs", url=server.url(), queues=queues, **kw)


def test_counts_every_state_per_queue_and_reports_the_worst_backlog(bull_redis: RedisServer, r: redis.Redis) -> None:
    """Waiting (wait + paused + prioritized), active, delayed and failed jobs are counted per queue; the value is the worst queue's waiting jobs."""
    now = time.time()
    add_queue(r, "emails", wait=5, prioritized=2, active=3, delayed=4, failed_at=[now - 60, now - 7200])
    add_queue(r, "payouts", wait=40, paused=10, active=1)
    check = BullMQCheck(target(bull_redis, ["emails", "payouts"]))
    try:
        reading = check.measure()
    finally:
        check.close()
    assert reading.value == 50
    assert reading.details["worst_queue"] == "payouts"
    assert reading.details["queues"]["emails"] == {"waiting": 7, "active": 3, "delayed": 4, "failed": 2,
                                                   "recent_failed": 1}
    assert reading.details["recent_failed_jobs"] == 1
    gauges = {(g.name, g.labels["queue"]): g.value for g in reading.gauges}
    assert gauges[("opsagent_bullmq_waiting_jobs", "payouts")] == 50
    assert gauges[("opsagent_bullmq_failed_jobs", "emails")] == 2
    assert gauges[("opsagent_bullmq_delayed_jobs", "emails")] == 4


def test_only_failures_inside_the_window_count_as_recent(bull_redis: RedisServer, r: redis.Redis) -> None:
    """Jobs that failed long ago stay in the failed set but stop counting once they fall out of failed_window."""
    now = 1_800_000_000.0
    add_queue(r, "kyc", failed_at=[now - 30, now - 600, now - 3600, now - 86400])
    check = BullMQCheck(target(bull_redis, ["kyc"], failed_window="15m"), clock=lambda: now)
    try:
        reading = check.measure()
        assert reading.details["recent_failed_jobs"] == 2
        assert reading.details["queues"]["kyc"]["failed"] == 4
        later = BullMQCheck(target(bull_redis, ["kyc"], failed_window="15m"), clock=lambda: now + 7200)
        assert later.measure().details["recent_failed_jobs"] == 0
        later.close()
    finally:
        check.close()


def test_a_configurable_prefix_finds_queues_outside_bull(bull_redis: RedisServer, r: redis.Redis) -> None:
    """Queues created with another BullMQ prefix are found when the target names that prefix."""
    add_queue(r, "reports", prefix="scorecard", wait=3)
    check = BullMQCheck(target(bull_redis, ["reports"], prefix="scorecard"))
    try:
        assert check.measure().value == 3
    finally:
        check.close()


def test_a_misspelt_queue_is_an_error_not_an_empty_queue(bull_redis: RedisServer, r: redis.Redis) -> None:
    """A queue with no keys under the prefix fails the check naming the queue, instead of looking healthy forever."""
    add_queue(r, "emails", wait=1)
    check = BullMQCheck(target(bull_redis, ["emails", "emials"]))
    try:
        with pytest.raises(CheckError, match="emials") as info:
            check.measure()
        assert "'bull'" in str(info.value)
    finally:
        check.close()


def test_context_names_the_newest_failure_reasons(bull_redis: RedisServer, r: redis.Redis) -> None:
    """The page for failed jobs carries the reasons of the newest failures."""
    add_queue(r, "emails", failed_at=[time.time() - 5])
    check = BullMQCheck(target(bull_redis, ["emails"]))
    try:
        context = check.context()
    finally:
        check.close()
    assert context["recent_failures"]["emails"][0]["failed_reason"] == "SMTP 421 try later"


def test_unreachable_redis_is_down_without_leaking_the_password() -> None:
    """A Redis that refuses connections makes the target down, and the error shows no password."""
    url = f"redis://:bull-secret-pw@127.0.0.1:{closed_port()}/0"
    settings = load_config(None, env={"OPSAGENT_CHECKS__BULLMQ": f'[{{"name": "jobs", "url": "{url}", "queues": ["emails"]}}]'})
    spec = settings.checks.bullmq[0]
    runner = TargetRunner("bullmq", spec.name, lambda: check_class("bullmq")(spec), deadline=5)
    result = runner.run()
    runner.close()
    assert not result.up
    assert result.error and "bull-secret-pw" not in result.error
    assert verdict(settings, result).alert == "TargetDown"


def test_backlog_over_the_default_threshold_breaches_the_backlog_alarm(bull_redis: RedisServer, r: redis.Redis) -> None:
    """More than 1000 waiting jobs in one queue breaches BullMQBacklogHigh with its default threshold."""
    r.lpush("bull:emails:wait", *range(1001))
    spec = target(bull_redis, ["emails"])
    runner = TargetRunner("bullmq", "jobs", lambda: BullMQCheck(spec), deadline=5)
    result = runner.run()
    runner.close()
    v = verdict(Settings(), result)
    assert (v.alert, v.breached, v.threshold) == ("BullMQBacklogHigh", True, 1000)
    assert result.details[ALARMS["BullMQFailedJobs"].field] == 0


def test_a_target_without_queues_is_a_config_error() -> None:
    """A bullmq target must name at least one queue; the error names the key."""
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"OPSAGENT_CHECKS__BULLMQ": '[{"name": "jobs", "url": "redis://127.0.0.1:6379/0", "queues": []}]'})
    assert any("checks.bullmq[0].queues" in p for p in info.value.problems)


def test_a_recent_failure_fires_the_failed_jobs_alarm_through_the_engine(bull_redis: RedisServer, r: redis.Redis) -> None:
    """Through the alert engine, one job failed inside the window fires BullMQFailedJobs and a small backlog fires nothing else."""
    from opsagent.alerts.engine import evaluate_result
    from opsagent.alerts.pipeline import engine_config

    add_queue(r, "payouts", wait=3, failed_at=[time.time() - 10])
    check = BullMQCheck(target(bull_redis, ["payouts"]))
    try:
        reading = check.measure()
    finally:
        check.close()
    _, transitions = evaluate_result({}, engine_config(Settings()), check="bullmq", target="jobs", up=True,
                                     value=reading.value, details=reading.details, at=100.0)
    assert [(t.kind, t.state.alertname) for t in transitions] == [("firing", "BullMQFailedJobs")]


def test_a_redis_that_never_answers_fails_within_the_deadline(hanging_server: HangingServer) -> None:
    """A Redis that accepts connections but never answers fails the check with a timeout instead of hanging it."""
    spec = BullMQTarget(name="jobs", url=f"redis://127.0.0.1:{hanging_server.port}/0", queues=["emails"], timeout="1s")
    check = BullMQCheck(spec)
    started = time.monotonic()
    try:
        with pytest.raises(redis.TimeoutError):
            check.measure()
    finally:
        check.close()
    assert time.monotonic() - started < 3
