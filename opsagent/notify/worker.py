"""One delivery thread per sink: drains that sink's outbox in order, retrying with capped backoff.

A slow or dead sink only delays its own queue: the checks and the other sinks
never wait on it. A message is acknowledged (removed from disk) only after the
sink accepted it; a permanent refusal (HTTP 400, unknown topic) is logged and
dropped so one bad message cannot wedge the queue behind it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import structlog

from opsagent import secrets
from opsagent.notify.base import DeliveryError, Sink
from opsagent.notify.message import Delivery
from opsagent.notify.outbox import Outbox

log = structlog.get_logger("opsagent.notify")


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": between half and all of ``min(cap, base * 2**attempt)``."""
    ceiling = min(cap, base * float(2 ** min(attempt, 30)))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class DeliveryWorker:
    def __init__(self, sink: Sink, outbox: Outbox, *, clock: Callable[[], float] = time.time,
                 backoff_base: float = 1.0, backoff_cap: float = 60.0, rng: random.Random | None = None) -> None:
        self.sink = sink
        self.outbox = outbox
        self.clock = clock
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.rng = rng or random.Random()
        self.sent = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_sent_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        # Daemon thread: a sink hung inside a network call must not keep the process alive at exit.
        self._thread = threading.Thread(target=self._run, name=f"opsagent-notify-{self.sink.name}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        self._stop.set()
        self.outbox.wake()

    def join(self, timeout: float) -> bool:
        if self._thread is None:
            return True
        self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            item = self.outbox.peek(timeout=1.0)
            if item is None or self._stop.is_set():
                continue
            seq, raw = item
            try:
                delivery = Delivery.from_json(raw)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # A damaged record can never be delivered: say so, and keep the queue behind it moving.
                log.error("alert_outbox_message_unreadable", sink=self.sink.name, seq=seq,
                          error=f"{type(exc).__name__}: {secrets.scrub(str(exc))}")
                self.outbox.ack(seq)
                continue
            try:
                self.sink.send(delivery, self.clock())
            except DeliveryError as exc:
                if self._failed(seq, delivery, exc.reason, exc.permanent, attempt, exc.retry_after):
                    attempt += 1
                    continue
            except Exception as exc:  # noqa: BLE001 - a sink bug must not kill its worker
                if self._failed(seq, delivery, f"{type(exc).__name__}: {exc}", False, attempt):
                    attempt += 1
                    continue
            else:
                self.sent += 1  # counted before the ack so "queue empty" implies the count is final
                self.outbox.ack(seq)
                self.last_error = None
                self.last_sent_at = self.clock()
                log.info("alert_delivered", sink=self.sink.name, status=delivery.status,
                         alertname=delivery.messages[0].alertname if len(delivery.messages) == 1 else None,
                         fingerprint=delivery.fingerprint)
            attempt = 0

    def _failed(self, seq: int, delivery: Delivery, reason: str, permanent: bool, attempt: int,
                retry_after: float | None = None) -> bool:
        """Record a failure; return True when the message stays queued (a retry will follow)."""
        self.failures += 1
        self.last_error = secrets.scrub(reason)
        fields = {"sink": self.sink.name, "error": self.last_error, "fingerprint": delivery.fingerprint,
                  "status": delivery.status}
        if permanent:
            log.error("alert_delivery_dropped", **fields)
            self.outbox.ack(seq)
            return False
        delay = backoff_delay(attempt, self.backoff_base, self.backoff_cap, self.rng)
        if retry_after is not None:  # the sink said when (429 Retry-After, capped by post_json)
            delay = max(delay, retry_after)
        log.warning("alert_delivery_failed", attempt=attempt + 1, retry_in=round(delay, 3), **fields)
        self._stop.wait(delay)
        return True
