"""The ``rabbitmq`` kind against the machine's RabbitMQ (own queue names) and a stub of the management API."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pika
import pytest

from opsagent.alerts.verdict import verdict
from opsagent.checks.base import CheckError
from opsagent.checks.rabbitmq import RabbitMQCheck
from opsagent.config import RabbitMQTarget, Settings
from opsagent.runtime.results import CheckResult
from opsagent.runtime.runner import TargetRunner
from opsagent_testing.proxy import FaultProxy
from opsagent_testing.servers import HangingServer, closed_port
from tests.fixtures.down import assert_down_cleanly, down_beside_healthy, run_logged
from tests.fixtures.http_stub import StubServer

AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"


@pytest.fixture
def queues() -> Iterator[tuple[str, str]]:
    """Two queues of this test's own: one with 3 ready messages and no consumer, one empty."""
    names = (f"opsagent-test-{uuid.uuid4().hex[:8]}-orders", f"opsagent-test-{uuid.uuid4().hex[:8]}-mail")
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    channel = conn.channel()
    for name in names:
        channel.queue_declare(name, auto_delete=False)
    for i in range(3):
        channel.basic_publish("", names[0], f"order {i}".encode())
    conn.close()
    yield names
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    for name in names:
        conn.channel().queue_delete(name)
    conn.close()


def check(queue_names: list[str], url: str = AMQP, **kw: object) -> RabbitMQCheck:
    return RabbitMQCheck(RabbitMQTarget.model_validate({"name": "broker", "url": url, "queues": queue_names, **kw}))


def test_ready_messages_and_consumers_come_from_passive_declares(queues: tuple[str, str]) -> None:
    """The value is the most ready messages of the listed queues and a queue with messages but no consumer is counted."""
    orders, mail = queues
    reading = check([orders, mail]).measure()
    assert reading.value == 3.0
    assert reading.details["queues"][orders] == {"ready": 3, "consumers": 0}
    assert reading.details["queues_without_consumers"] == 1 and reading.details["starving_queues"] == [orders]
    gauges = {(g.name, g.labels["queue"]): g.value for g in reading.gauges}
    assert gauges[("opsagent_rabbitmq_queue_messages_ready", orders)] == 3.0
    assert gauges[("opsagent_rabbitmq_queue_consumers", mail)] == 0.0
    result = CheckResult("rabbitmq", "broker", True, reading.value, 0.0, 0.1, details=reading.details)
    assert verdict(Settings(), result).alert == "RabbitMQNoConsumers"


def test_a_consumer_on_the_queue_clears_no_consumers(queues: tuple[str, str]) -> None:
    """With a consumer attached (prefetch 1, nothing acked) the queue is no longer starving."""
    orders, _ = queues
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    try:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(orders, lambda *a: None, auto_ack=False)
        conn.process_data_events(time_limit=0.2)
        reading = check([orders]).measure()
        assert reading.details["queues"][orders]["consumers"] == 1
        assert reading.details["queues_without_consumers"] == 0
    finally:
        conn.close()


def test_a_missing_queue_is_a_check_error_naming_it(queues: tuple[str, str]) -> None:
    """A listed queue that does not exist is an error that names the queue and the vhost."""
    with pytest.raises(CheckError, match="queue 'no-such-queue-x' does not exist in vhost '/'"):
        check([queues[0], "no-such-queue-x"]).measure()


@pytest.mark.parametrize("mode", ["refused", "wrong_password", "hanging", "garbage"])
def test_down_broker_is_reported_within_the_deadline_beside_a_healthy_one(queues: tuple[str, str], mode: str) -> None:
    """A refused, auth-refusing, hanging or garbage-speaking broker is down within the deadline, without a secret; a healthy one still answers."""
    hanging = HangingServer() if mode == "hanging" else None
    proxy = FaultProxy(5672, mode="garbage") if mode == "garbage" else None
    try:
        url, expected = {
            "refused": (f"amqp://guest:guest@127.0.0.1:{closed_port()}/%2F", ("refused", "connect")),
            "wrong_password": ("amqp://guest:Sup3rSecretPw@127.0.0.1:5672/%2F", ("auth", "access_refused", "credentials")),
            "hanging": (f"amqp://guest:guest@127.0.0.1:{hanging.port if hanging else 0}/%2F",
                        ("deadline", "timeout", "timed out", "connect")),
            "garbage": (f"amqp://guest:guest@127.0.0.1:{proxy.port if proxy else 0}/%2F",
                        ("protocol", "incompatible", "connect", "reset", "closed", "frame")),
        }[mode]
        healthy = TargetRunner("rabbitmq", "other", lambda: check([queues[0]]), deadline=3.0)
        good, result, logs = down_beside_healthy(
            lambda: run_logged("rabbitmq", "broker", lambda: check([queues[0]], url, timeout="1.5s"), 1.5), healthy)
        assert good.up is True and good.value == 3.0
        assert_down_cleanly(result, logs, 1.5, expected, secrets=["Sup3rSecretPw"])
        assert not any(e.get("event") == "check_crashed" for e in logs), logs
    finally:
        if hanging is not None:
            hanging.close()
        if proxy is not None:
            proxy.close()


def management_stub(nodes: object, queue: object) -> StubServer:
    def reply(doc: object) -> tuple[int, str, bytes]:
        return (200, "application/json", doc if isinstance(doc, bytes) else json.dumps(doc).encode())

    return StubServer({"/api/nodes": lambda: reply(nodes), "/api/queues/%2F/orders": lambda: reply(queue)})


def test_management_api_adds_unacked_messages_and_node_alarms() -> None:
    """With management_url the queue's unacked count and every node's memory/disk alarm are reported, with the AMQP credentials."""
    stub = management_stub(
        [{"name": "rabbit@a", "mem_alarm": True, "disk_free_alarm": False, "running": True},
         {"name": "rabbit@b", "mem_alarm": False, "disk_free_alarm": True, "running": True}],
        {"name": "orders", "messages_ready": 1500, "messages_unacknowledged": 40, "consumers": 2})
    try:
        reading = check(["orders"], "amqp://watcher:Wat3hPw@127.0.0.1:1/%2F", management_url=stub.url).measure()
        assert reading.value == 1500.0 and reading.source == "management"
        assert reading.details["queues"]["orders"] == {"ready": 1500, "consumers": 2, "unacked": 40}
        assert reading.details["node_alarms"] == ["rabbit@a: memory", "rabbit@b: disk"]
        result = CheckResult("rabbitmq", "broker", True, reading.value, 0.0, 0.1, details=reading.details)
        assert verdict(Settings(), result).alert == "RabbitMQBacklogHigh"
    finally:
        stub.close()


@pytest.mark.parametrize(("nodes", "queue", "words"), [
    (b"<html>not json</html>", {"messages_ready": 1}, "did not answer JSON"),
    ({"nodes": "a dict"}, {"messages_ready": 1}, "list of nodes"),
    ([], {"messages_ready": "many"}, "not numbers"),
])
def test_garbage_from_the_management_api_is_a_clear_check_error(nodes: object, queue: object, words: str) -> None:
    """Non-JSON, wrongly shaped or non-numeric management answers are check errors that say what was wrong."""
    stub = management_stub(nodes, queue)
    try:
        with pytest.raises(CheckError, match=words):
            check(["orders"], management_url=stub.url).measure()
    finally:
        stub.close()
