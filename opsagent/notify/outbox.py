"""A durable, per-sink outbox on disk (at-least-once delivery) that stays useful through a long outage.

One directory per sink; one file per message named by a zero-padded sequence
number. Every write is atomic (temp file, fsync, rename, fsync of the
directory): after a crash a message is either wholly there or not at all. A
message leaves the outbox only after its sink accepted it (:meth:`Outbox.ack`),
so a restarted agent re-delivers whatever was in flight; sinks de-duplicate by
fingerprint.

What a sink that was down for a while should get is the *current* state of
each alert, not its whole flapping history, and a new page before stale news:

* A message for a fingerprint supersedes the queued, older messages of the same
  fingerprint (they are removed; only the newest state is delivered).
* :meth:`Outbox.peek` hands out the oldest firing message first (unless an older
  message of the same fingerprint is still queued, which keeps each alert's own
  order), then everything else oldest first.
* The queue is bounded (``limit``): beyond it the oldest *resolutions* are
  dropped, logged and counted; a firing page is never dropped.
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
DEFAULT_LIMIT = 1000
FIRING = "firing"
RESOLVED = "resolved"


def _meta(message: Any) -> tuple[str | None, str | None]:
    """(fingerprint, status) of a stored message; (None, None) for repeats and foreign records."""
    if not isinstance(message, dict):
        return None, None
    fingerprint, status = message.get("fingerprint"), message.get("status")
    return (fingerprint if isinstance(fingerprint, str) else None, status if isinstance(status, str) else None)


class Outbox:
    """The queue of one sink. Thread-safe; the producer and the sink's worker share it."""

    def __init__(self, directory: Path, limit: int = DEFAULT_LIMIT) -> None:
        self.directory = directory
        self.limit = limit
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        for stray in directory.glob(".*.tmp"):  # a crash mid-write left a partial temp file
            stray.unlink(missing_ok=True)
        self._seqs = sorted(int(p.stem) for p in directory.glob(f"*{_SUFFIX}") if p.stem.isdigit())
        self._next = (self._seqs[-1] + 1) if self._seqs else 1
        self._index: dict[int, tuple[str | None, str | None]] = {seq: self._read_meta(seq) for seq in self._seqs}
        self.superseded = 0  # messages replaced by a newer state of the same alert before delivery
        self.dropped = 0  # stale resolutions dropped because the queue was over its limit

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:020d}{_SUFFIX}"

    def _read_meta(self, seq: int) -> tuple[str | None, str | None]:
        try:
            return _meta(json.loads(self._path(seq).read_bytes()))
        except (OSError, ValueError):
            return None, None  # peek() reports it when its turn comes

    def put(self, message: dict[str, Any]) -> int:
        """Append one message durably (superseding older ones of its fingerprint); return its sequence number."""
        data = json.dumps(message, sort_keys=True, default=str).encode()
        fingerprint, status = _meta(message)
        with self._lock:
            seq = self._next
            self._next += 1
            atomic_write(self._path(seq), data)
            if fingerprint is not None:
                older = [s for s in self._seqs if self._index.get(s, (None, None))[0] == fingerprint]
                for old in older:
                    self._remove(old)
                self.superseded += len(older)
            self._seqs.append(seq)
            self._index[seq] = (fingerprint, status)
            self._enforce_limit()
            self._not_empty.notify_all()
            return seq

    def _remove(self, seq: int) -> None:
        if seq in self._seqs:
            self._seqs.remove(seq)
        self._index.pop(seq, None)
        self._path(seq).unlink(missing_ok=True)

    def _enforce_limit(self) -> None:
        excess = len(self._seqs) - self.limit
        if excess <= 0:
            return
        stale = [s for s in self._seqs if self._index.get(s, (None, None))[1] == RESOLVED][:excess]
        for seq in stale:
            self._remove(seq)
        if stale:
            self.dropped += len(stale)
            log.warning("alert_outbox_dropped", outbox=str(self.directory), dropped=len(stale),
                        reason=f"queue over its limit of {self.limit}; only stale resolutions are dropped")

    def _next_seq(self) -> int:
        """The oldest firing message with no older message of its alert queued, else the oldest message."""
        seen: set[str] = set()
        for seq in self._seqs:
            fingerprint, status = self._index.get(seq, (None, None))
            if status == FIRING and fingerprint not in seen:
                return seq
            if fingerprint is not None:
                seen.add(fingerprint)
        return self._seqs[0]

    def peek(self, timeout: float = 0.0) -> tuple[int, dict[str, Any]] | None:
        """The next message to deliver (see the module docstring), waiting up to ``timeout`` seconds for one."""
        with self._lock:
            if not self._seqs and timeout > 0:
                self._not_empty.wait(timeout)
            while self._seqs:
                seq = self._next_seq()
                try:
                    return seq, json.loads(self._path(seq).read_bytes())
                except (OSError, ValueError) as exc:
                    # Unreadable (disk damage, manual edit): skipping it beats wedging the queue forever,
                    # but never silently: the log names the file and why.
                    log.error("alert_outbox_message_unreadable", path=str(self._path(seq)),
                              error=f"{type(exc).__name__}: {secrets.scrub(str(exc))[:300]}")
                    self._remove(seq)
            return None

    def ack(self, seq: int) -> None:
        """The sink accepted ``seq``: remove it for good."""
        with self._lock:
            self._remove(seq)
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
