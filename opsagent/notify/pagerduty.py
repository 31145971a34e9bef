"""PagerDuty Events API v2: trigger / resolve with the alert fingerprint as ``dedup_key``."""

from __future__ import annotations

from typing import Any

from opsagent.notify.base import post_json
from opsagent.notify.message import AlertMessage, Delivery

_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}


class PagerDutySink:
    name = "pagerduty"
    repeats = False  # PagerDuty keeps an incident open until it is resolved
    sends_resolved = True

    def __init__(self, routing_key: str, url: str, timeout: float) -> None:
        self._routing_key = routing_key
        self.url = url
        self.timeout = timeout

    def payload(self, message: AlertMessage) -> dict[str, Any]:
        labels = message.labels
        notes = message.annotations
        if message.resolved:
            return {"routing_key": self._routing_key, "event_action": "resolve", "dedup_key": message.fingerprint}
        return {
            "routing_key": self._routing_key,
            "event_action": "trigger",
            "dedup_key": message.fingerprint,
            "payload": {
                "summary": notes["summary"][:1024],
                "source": f"{labels['agent']}/{labels['check']}/{labels['target']}",
                "severity": _SEVERITY.get(labels["severity"], "warning"),
                "timestamp": message.starts_at_iso,
                "component": labels["target"],
                "group": labels["check"],
                "class": labels["alertname"],
                "custom_details": {
                    "description": notes["description"],
                    "value": notes["value"],
                    "threshold": notes["threshold"],
                    "labels": dict(labels),
                    "context": dict(message.context),
                },
            },
            "links": [{"href": notes["runbook_url"], "text": "Runbook"}],
            "client": "opsagent",
            "client_url": message.generator_url,
        }

    def send(self, delivery: Delivery, now: float) -> None:
        for message in delivery.messages:
            post_json(self.name, self.url, self.payload(message), self.timeout)
