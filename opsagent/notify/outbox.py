"""A durable, ordered, per-sink outbox on disk (at-least-once delivery).

One directory per sink; one file per message named by a zero-padded sequence
number, so the directory listing *is* the queue and its order. Every write is
atomic (temp file, fsync, rename, fsync of the directory): after a crash a
message is either wholly there or not at all. A message leaves the outbox
only after its sink accepted it (:meth:`Outbox.ack`), so a restarted agent
re-delivers whatever was in flight; sinks de-duplicate by fingerprint.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import structlog

from opsagent import secrets
from opsagent.textio import atomic_write, fsync_dir

log = structlog.get_logger("opsagent.notify")

_SUFFIX = ".json"


class Outbox:
    """The queue of one sink. Thread-safe; the producer and the sink's worker share it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        for stray in directory.glob(".*.tmp"):  # a crash mid-write left a partial temp file
            stray.unlink(missing_ok=True)
        self._seqs = sorted(int(p.stem) for p in directory.glob(f"*{_SUFFIX}") if p.stem.isdigit())
        self._next = (self._seqs[-1] + 1) if self._seqs else 1

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:020d}{_SUFFIX}"

    def put(self, message: dict[str, Any]) -> int:
        """Append one message durably; return its sequence number."""
        data = json.dumps(message, sort_keys=True, default=str).encode()
        with self._lock:
            seq = self._next
            self._next += 1
            atomic_write(self._path(seq), data)
            self._seqs.append(seq)
            self._not_empty.notify_all()
            return seq

    def peek(self, timeout: float = 0.0) -> tuple[int, dict[str, Any]] | None:
        """The oldest undelivered message, waiting up to ``timeout`` seconds for one."""
        with self._lock:
            if not self._seqs and timeout > 0:
                self._not_empty.wait(timeout)
            while self._seqs:
                seq = self._seqs[0]
                try:
                    return seq, json.loads(self._path(seq).read_bytes())
                except (OSError, ValueError) as exc:
                    # Unreadable (disk damage, manual edit): skipping it beats wedging the queue forever,
                    # but never silently: the log names the file and why.
                    log.error("alert_outbox_message_unreadable", path=str(self._path(seq)),
                              error=f"{type(exc).__name__}: {secrets.scrub(str(exc))[:300]}")
                    self._seqs.pop(0)
                    self._path(seq).unlink(missing_ok=True)
            return None

    def ack(self, seq: int) -> None:
        """The sink accepted ``seq``: remove it for good."""
        with self._lock:
            if seq in self._seqs:
                self._seqs.remove(seq)
            self._path(seq).unlink(missing_ok=True)
        fsync_dir(self.directory)

    def wake(self) -> None:
        with self._lock:
            self._not_empty.notify_all()

    def __len__(self) -> int:
        with self._lock:
            return len(self._seqs)

    def pending(self) -> list[dict[str, Any]]:
        """Every queued message in order (status pages and tests)."""
        with self._lock:
            seqs = list(self._seqs)
        out = []
        for seq in seqs:
            try:
                out.append(json.loads(self._path(seq).read_bytes()))
            except (OSError, ValueError):
                continue
        return out
