"""RabbitMQ: ready messages and consumers of the listed queues, and node alarms from the management API.

Over AMQP a passive ``queue.declare`` answers ``message_count`` (ready
messages) and ``consumer_count`` without touching the queue, which works for a
least-privilege user and on brokers without the management plugin. When
``management_url`` is given, the management HTTP API adds unacknowledged
messages per queue and the nodes' memory/disk alarms (a node in alarm blocks
every publisher). The value is the most ready messages of any listed queue
(``RabbitMQBacklogHigh``); ``details["queues_without_consumers"]`` counts
queues holding ready messages with nobody consuming (``RabbitMQNoConsumers``).

One AMQP connection per run, closed at the end: a ``BlockingConnection`` kept
between runs would need its heartbeats serviced by a thread of its own.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pika
import pika.exceptions

from opsagent.checks.base import CheckError, Gauge, Reading, SimpleCheck
from opsagent.config import RabbitMQTarget

MANAGEMENT_REPLY_CAP = 4 << 20  # bytes read from one management API answer

# pika logs every refused connect and closed channel at warning/error level: the runner's check_failed
# event already says it once, with the target's name.
logging.getLogger("pika").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class QueueDepth:
    name: str
    ready: int
    consumers: int
    unacked: int | None = None


def management_auth(management_url: str, amqp_url: str) -> tuple[str, str]:
    """(URL without userinfo, Basic header): the management URL's own credentials, else the AMQP URL's."""
    parts = urlsplit(management_url)
    source = parts if parts.username else urlsplit(amqp_url)
    user, password = unquote(source.username or "guest"), unquote(source.password or "guest")
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    bare = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return bare, f"Basic {token}"


def node_alarms(nodes: object) -> list[str]:
    """``node: memory`` / ``node: disk`` for every node of ``GET /api/nodes`` in alarm (or not running)."""
    if not isinstance(nodes, list):
        raise CheckError("the management API's /api/nodes did not answer a list of nodes")
    alarms: list[str] = []
    for node in nodes:
        if not isinstance(node, dict):
            raise CheckError("the management API's /api/nodes answered something that is not a node")
        name = str(node.get("name", "?"))
        for key, word in (("mem_alarm", "memory"), ("disk_free_alarm", "disk")):
            if node.get(key) is True:
                alarms.append(f"{name}: {word}")
        if node.get("running") is False:
            alarms.append(f"{name}: not running")
    return alarms


def queue_from_management(name: str, answer: object) -> QueueDepth:
    """One queue from ``GET /api/queues/VHOST/NAME``."""
    if not isinstance(answer, dict):
        raise CheckError(f"the management API answered no queue object for {name!r}")
    try:
        return QueueDepth(name, int(answer.get("messages_ready", 0)), int(answer.get("consumers", 0)),
                          int(answer.get("messages_unacknowledged", 0)))
    except (TypeError, ValueError):
        raise CheckError(f"the management API's counts for queue {name!r} are not numbers") from None


class RabbitMQCheck(SimpleCheck):
    kind: ClassVar[str] = "rabbitmq"

    def __init__(self, target: RabbitMQTarget) -> None:
        self.target = target
        url = target.url.get_secret_value()
        self._params = pika.URLParameters(url)
        timeout = max(0.5, target.deadline * 0.6)
        self._params.socket_timeout = timeout
        self._params.stack_timeout = timeout
        self._params.blocked_connection_timeout = timeout
        self._params.connection_attempts = 1
        self._params.heartbeat = 0
        self._params.client_properties = {"connection_name": "opsagent"}
        self._vhost = self._params.virtual_host
        self._management: tuple[str, str] | None = None
        management_url = target.management_url
        if management_url is not None:
            self._management = management_auth(management_url.get_secret_value(), url)
        self._http_timeout = timeout

    # -- AMQP ------------------------------------------------------------------------------------

    def _amqp_depths(self) -> list[QueueDepth]:
        try:
            connection = pika.BlockingConnection(self._params)
        except pika.exceptions.AMQPConnectionError as exc:
            # pika's own text is often empty; the reason is the wrapped connector error.
            reason = "; ".join(repr(a) if isinstance(a, Exception) else str(a) for a in exc.args) or type(exc).__name__
            raise CheckError(f"cannot connect to RabbitMQ at {self._params.host}:{self._params.port}: {reason}") from None
        try:
            channel = connection.channel()
            depths = []
            for name in self.target.queues:
                try:
                    ok = channel.queue_declare(queue=name, passive=True)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if exc.reply_code == 404:
                        raise CheckError(f"queue {name!r} does not exist in vhost {self._vhost!r}") from None
                    raise
                depths.append(QueueDepth(name, int(ok.method.message_count), int(ok.method.consumer_count)))
            return depths
        finally:
            if connection.is_open:
                connection.close()

    # -- management API --------------------------------------------------------------------------

    def _get(self, path: str) -> object:
        assert self._management is not None
        base, auth = self._management
        request = urllib.request.Request(base + path, headers={"Authorization": auth, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self._http_timeout) as response:
                raw = response.read(MANAGEMENT_REPLY_CAP + 1)
        except urllib.error.HTTPError as exc:
            raise CheckError(f"management API {path} answered {exc.code} {exc.reason}") from None
        if len(raw) > MANAGEMENT_REPLY_CAP:
            raise CheckError(f"management API {path} answered more than {MANAGEMENT_REPLY_CAP} bytes")
        try:
            return json.loads(raw)
        except ValueError:
            raise CheckError(f"management API {path} did not answer JSON") from None

    def _management_depths(self) -> tuple[list[QueueDepth], list[str]]:
        vhost = quote(self._vhost, safe="")
        depths = [queue_from_management(name, self._get(f"/api/queues/{vhost}/{quote(name, safe='')}"))
                  for name in self.target.queues]
        return depths, node_alarms(self._get("/api/nodes"))

    def measure(self) -> Reading:
        alarms: list[str] | None = None
        if self._management is not None:
            depths, alarms = self._management_depths()
            source = "management"
        else:
            depths = self._amqp_depths()
            source = "amqp"
        starving = [d.name for d in depths if d.ready > 0 and d.consumers == 0]
        details: dict[str, Any] = {
            "queues": {d.name: {"ready": d.ready, "consumers": d.consumers}
                       | ({} if d.unacked is None else {"unacked": d.unacked}) for d in depths},
            "queues_without_consumers": len(starving),
            "starving_queues": starving,
            "vhost": self._vhost,
        }
        gauges: list[Gauge] = []
        for d in depths:
            labels = {"queue": d.name}
            # SPEC §9.5 names these {target,queue}: no check label (see Gauge.check_label).
            gauges.append(Gauge("opsagent_rabbitmq_queue_messages_ready", float(d.ready), labels,
                                "messages ready for delivery", check_label=False))
            gauges.append(Gauge("opsagent_rabbitmq_queue_consumers", float(d.consumers), labels, "consumers of the queue",
                                check_label=False))
            if d.unacked is not None:
                gauges.append(Gauge("opsagent_rabbitmq_queue_messages_unacked", float(d.unacked), labels,
                                    "messages delivered and not yet acknowledged", check_label=False))
        if alarms is not None:
            details["node_alarms"] = alarms
            gauges.append(Gauge("opsagent_rabbitmq_node_alarms", float(len(alarms)), {},
                                "memory/disk alarms raised by the cluster's nodes (publishers are blocked)"))
        value = float(max((d.ready for d in depths), default=0))
        return Reading(value=value, details=details, gauges=tuple(gauges), source=source)

    def context(self) -> Mapping[str, Any]:
        return {"vhost": self._vhost, "queues": list(self.target.queues)}
