"""The typed alert message every sink receives, and the outbox entry that carries it.

One :class:`AlertMessage` is one alert's state as the on-call should see it
(labels, annotations, when the breach began, when it ended). An outbox file
holds one :class:`Delivery`: a transition (one message) or a repeat of every
still-firing alert plus the ``Watchdog`` heartbeat (sinks with ``repeats``
only). Both serialise to JSON with Alertmanager's field names (``startsAt``,
``endsAt``, ``generatorURL``) because that is what the widest sink expects and
what an operator reading the outbox directory recognises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

FIRING = "firing"
RESOLVED = "resolved"


def iso(ts: float) -> str:
    """RFC 3339 UTC with milliseconds, as Alertmanager and PagerDuty accept."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    """The unix time of an :func:`iso` string (also accepts ``+00:00``)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class AlertMessage:
    """One alert as sinks show it. ``ends_at`` is set on a resolution only."""

    status: str  # FIRING | RESOLVED
    fingerprint: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float  # when the breach began (pending_since), the "since" of every text
    generator_url: str
    at: float  # when this message was produced
    ends_at: float | None = None
    value: float | None = None
    threshold: float | None = None
    context: Mapping[str, Any] = field(default_factory=dict)

    @property
    def resolved(self) -> bool:
        return self.status == RESOLVED

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def starts_at_iso(self) -> str:
        return iso(self.starts_at)

    @property
    def ends_at_iso(self) -> str | None:
        return iso(self.ends_at) if self.ends_at is not None else None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "fingerprint": self.fingerprint,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": self.starts_at_iso,
            "endsAt": self.ends_at_iso,
            "generatorURL": self.generator_url,
            "value": self.value,
            "threshold": self.threshold,
            "context": dict(self.context),
            "at": self.at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AlertMessage:
        """Inverse of :meth:`to_json`; raises KeyError/ValueError/TypeError on a damaged record."""
        ends = data.get("endsAt")
        value, threshold = data.get("value"), data.get("threshold")
        return cls(
            status=str(data["status"]),
            fingerprint=str(data["fingerprint"]),
            labels={str(k): str(v) for k, v in dict(data["labels"]).items()},
            annotations={str(k): str(v) for k, v in dict(data["annotations"]).items()},
            starts_at=parse_iso(str(data["startsAt"])),
            generator_url=str(data.get("generatorURL") or ""),
            at=float(data.get("at") or 0.0),
            ends_at=parse_iso(str(ends)) if ends else None,
            value=float(value) if value is not None else None,
            threshold=float(threshold) if threshold is not None else None,
            context=dict(data.get("context") or {}),
        )


REPEAT = "repeat"


@dataclass(frozen=True)
class Delivery:
    """What one outbox file holds: one transition, or (``repeat``) every still-firing alert re-sent at once."""

    messages: tuple[AlertMessage, ...]
    repeat: bool = False

    @property
    def status(self) -> str:
        return REPEAT if self.repeat else (self.messages[0].status if self.messages else REPEAT)

    @property
    def fingerprint(self) -> str | None:
        return None if self.repeat or not self.messages else self.messages[0].fingerprint

    def to_json(self) -> dict[str, Any]:
        if self.repeat:
            return {"status": REPEAT, "alerts": [m.to_json() for m in self.messages]}
        return self.messages[0].to_json()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Delivery:
        if data.get("status") == REPEAT:
            return cls(tuple(AlertMessage.from_json(a) for a in data.get("alerts") or []), repeat=True)
        return cls((AlertMessage.from_json(data),))
