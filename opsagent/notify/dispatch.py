"""From a message to every sink: the durable outboxes, the held-back queue, the workers, the repeats.

Each configured sink has its own outbox on disk and its own worker thread, so a
dead sink only delays itself. A message the disk refuses (disk full) waits in
memory, in order, and every :meth:`Dispatcher.tick` retries it: no page is
dropped because the outbox could not be written once.

Repeats are chosen by capability (``Sink.repeats``), never by sink name: a
sink that forgets unrefreshed alerts (Alertmanager) gets every still-firing
alert again each ``notify.repeat_interval``, together with the ``Watchdog``
heartbeat that a dead-man's-switch receiver expects.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from opsagent import secrets
from opsagent.notify.base import Sink
from opsagent.notify.message import AlertMessage, Delivery
from opsagent.notify.outbox import Outbox
from opsagent.notify.stats import SinkStats
from opsagent.notify.worker import DeliveryWorker

log = structlog.get_logger("opsagent.notify")

FiringFn = Callable[[float], Sequence[AlertMessage]]


class Dispatcher:
    """Owns the per-sink outboxes and workers; thread-safe."""

    def __init__(self, sinks: Sequence[Sink], state_dir: Path, *, repeat_interval: float,
                 clock: Callable[[], float] = time.time, backoff_base: float = 1.0,
                 backoff_cap: float = 60.0) -> None:
        self.sinks = list(sinks)
        self.clock = clock
        self.repeat_interval = repeat_interval
        self._lock = threading.RLock()
        self.outboxes = {s.name: Outbox(Path(state_dir) / "outbox" / s.name) for s in self.sinks}
        # Messages an outbox could not take (disk full): kept in order, retried by every tick.
        self._unsent: dict[str, list[Delivery]] = {s.name: [] for s in self.sinks}
        self.workers = {
            s.name: DeliveryWorker(s, self.outboxes[s.name], clock=clock, backoff_base=backoff_base,
                                   backoff_cap=backoff_cap)
            for s in self.sinks
        }
        self._repeat_sent: dict[str, dict[str, float]] = {s.name: {} for s in self.sinks if s.repeats}
        self._heartbeat_sent: dict[str, float] = {}

    # -- producing ---------------------------------------------------------------------------------

    def send(self, message: AlertMessage) -> None:
        """Queue one transition for every sink that takes it (a resolution only where ``sends_resolved``)."""
        now = self.clock()
        with self._lock:
            for sink in self.sinks:
                if message.resolved and not sink.sends_resolved:
                    continue
                self._unsent[sink.name].append(Delivery((message,)))
                self._flush(sink.name)
                if sink.repeats:
                    if message.resolved:
                        self._repeat_sent[sink.name].pop(message.fingerprint, None)
                    else:
                        self._repeat_sent[sink.name][message.fingerprint] = now

    def _flush(self, name: str) -> bool:
        """Hand this sink's held-back messages to its outbox, oldest first; False while the disk refuses them."""
        unsent = self._unsent[name]
        while unsent:
            try:
                self.outboxes[name].put(unsent[0].to_json())
            except OSError as exc:
                log.error("alert_outbox_write_failed", sink=name, waiting=len(unsent), error=secrets.scrub(str(exc)))
                return False
            unsent.pop(0)
        return True

    def tick(self, firing: FiringFn, heartbeat: Callable[[float], AlertMessage] | None = None) -> None:
        """Retry held-back messages; re-send due firing alerts (and the heartbeat) to sinks that forget."""
        with self._lock:
            for name in self._unsent:
                self._flush(name)
        now = self.clock()
        repeat_sinks = [sink for sink in self.sinks if sink.repeats]
        if not repeat_sinks:
            return
        # Rendered before taking this lock: the producer holds its own lock while it calls send(), so
        # calling back into it under ours would invert the lock order.
        current = list(firing(now))
        for sink in repeat_sinks:
            with self._lock:
                if len(self.outboxes[sink.name]) or self._unsent[sink.name]:
                    continue  # still delivering: the queue already carries fresh state, don't pile up repeats
                sent = self._repeat_sent[sink.name]
                due = [m for m in current if now - sent.get(m.fingerprint, 0.0) >= self.repeat_interval]
                beat = heartbeat is not None and \
                    now - self._heartbeat_sent.get(sink.name, float("-inf")) >= self.repeat_interval
                messages = due + ([heartbeat(now)] if beat and heartbeat is not None else [])
                if not messages:
                    continue
                try:
                    self.outboxes[sink.name].put(Delivery(tuple(messages), repeat=True).to_json())
                except OSError as exc:  # a repeat is re-made next tick; nothing to hold back
                    log.error("alert_outbox_write_failed", sink=sink.name, waiting=0, error=secrets.scrub(str(exc)))
                    continue
                for m in due:
                    sent[m.fingerprint] = now
                if beat:
                    self._heartbeat_sent[sink.name] = now

    # -- delivery ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start one delivery worker per configured sink."""
        for worker in self.workers.values():
            worker.start()

    def stop(self, timeout: float) -> None:
        """Stop the workers; returns within ``timeout`` even if a sink hangs (undelivered messages stay on disk)."""
        deadline = time.monotonic() + timeout
        for worker in self.workers.values():
            worker.request_stop()
        for name, worker in self.workers.items():
            if not worker.join(deadline - time.monotonic()):
                log.warning("notify_worker_still_busy", sink=name)

    def stats(self) -> list[SinkStats]:
        """Per configured sink: queued, sent, failed attempts and the last error."""
        with self._lock:
            unsent = {name: len(items) for name, items in self._unsent.items()}
        return [SinkStats(sink=name, queued=len(self.outboxes[name]) + unsent.get(name, 0), sent=worker.sent,
                          failed=worker.failures, last_error=worker.last_error, last_sent_at=worker.last_sent_at,
                          superseded=self.outboxes[name].superseded, dropped=self.outboxes[name].dropped)
                for name, worker in self.workers.items()]
