"""Alertmanager API v2: ``POST /api/v2/alerts``.

A firing alert is sent with ``endsAt`` a few repeat intervals ahead, computed
at *send* time (a message that waited in the outbox while Alertmanager was down
must not arrive already expired); the pipeline re-sends firing alerts every
``notify.repeat_interval`` so a restarted Alertmanager learns them again. A
resolution is the same label set with ``endsAt`` = the time it resolved.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opsagent.alerts.render import iso
from opsagent.notify.base import post_json

# How many repeat intervals a firing alert stays valid without being re-sent.
ENDS_AT_INTERVALS = 3


class AlertmanagerSink:
    name = "alertmanager"

    def __init__(self, url: str, repeat_interval: float, timeout: float) -> None:
        self.endpoint = url.rstrip("/") + "/api/v2/alerts"
        self.repeat_interval = repeat_interval
        self.timeout = timeout

    def payload(self, message: Mapping[str, Any], now: float) -> list[dict[str, Any]]:
        alerts = message.get("alerts") or [message]
        return [self._one(a, now) for a in alerts]

    def _one(self, alert: Mapping[str, Any], now: float) -> dict[str, Any]:
        if alert["status"] == "resolved":
            ends = alert.get("endsAt") or iso(now)
        else:
            ends = iso(now + ENDS_AT_INTERVALS * max(self.repeat_interval, 60.0))
        return {
            "labels": dict(alert["labels"]),
            "annotations": dict(alert["annotations"]),
            "startsAt": alert["startsAt"],
            "endsAt": ends,
            "generatorURL": alert["generatorURL"],
        }

    def send(self, message: Mapping[str, Any], now: float) -> None:
        post_json(self.name, self.endpoint, self.payload(message, now), self.timeout)
