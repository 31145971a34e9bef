"""Alertmanager API v2: ``POST /api/v2/alerts``.

A firing alert is sent with ``endsAt`` a few repeat intervals ahead, computed
at *send* time (a message that waited in the outbox while Alertmanager was down
must not arrive already expired); the pipeline re-sends firing alerts every
``notify.repeat_interval`` so a restarted Alertmanager learns them again. A
resolution is the same label set with ``endsAt`` = the time it resolved.
"""

from __future__ import annotations

from typing import Any

from opsagent.notify.base import post_json
from opsagent.notify.message import AlertMessage, Delivery, iso

# How many repeat intervals a firing alert stays valid without being re-sent.
ENDS_AT_INTERVALS = 3
# The shortest repeat interval the validity is computed from: the agent's repeat tick (5 s), so even
# a compressed ``notify.repeat_interval`` keeps a live alert valid across two missed ticks.
MIN_VALIDITY = 5.0


class AlertmanagerSink:
    name = "alertmanager"
    repeats = True  # Alertmanager forgets an alert whose endsAt passes: re-send what still fires
    sends_resolved = True

    def __init__(self, url: str, repeat_interval: float, timeout: float) -> None:
        self.endpoint = url.rstrip("/") + "/api/v2/alerts"
        self.repeat_interval = repeat_interval
        self.timeout = timeout

    def payload(self, delivery: Delivery, now: float) -> list[dict[str, Any]]:
        return [self._one(m, now) for m in delivery.messages]

    def _one(self, alert: AlertMessage, now: float) -> dict[str, Any]:
        if alert.resolved:
            ends = alert.ends_at_iso or iso(now)
        else:
            ends = iso(now + ENDS_AT_INTERVALS * max(self.repeat_interval, MIN_VALIDITY))
        return {
            "labels": dict(alert.labels),
            "annotations": dict(alert.annotations),
            "startsAt": alert.starts_at_iso,
            "endsAt": ends,
            "generatorURL": alert.generator_url,
        }

    def send(self, delivery: Delivery, now: float) -> None:
        post_json(self.name, self.endpoint, self.payload(delivery, now), self.timeout)
