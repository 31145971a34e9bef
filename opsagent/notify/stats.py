"""What a sink's delivery looks like from outside: queued, sent, failed, the last error."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SinkStats:
    """One sink's delivery counters, for ``/status`` ``notify`` and the status page."""

    sink: str
    queued: int  # messages waiting (outbox plus those the disk refused so far)
    sent: int  # messages the sink accepted since start
    failed: int  # failed delivery attempts since start
    last_error: str | None = None  # scrubbed; None once a delivery succeeded again
    last_sent_at: float | None = None  # unix time of the last accepted message
    superseded: int = 0  # queued messages replaced by a newer state of the same alert (never sent: stale)
    dropped: int = 0  # stale resolutions dropped because the queue was over its limit

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
