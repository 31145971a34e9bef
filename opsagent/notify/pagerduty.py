"""PagerDuty Events API v2: trigger / resolve with the alert fingerprint as ``dedup_key``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opsagent.notify.base import post_json

_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}


class PagerDutySink:
    name = "pagerduty"

    def __init__(self, routing_key: str, url: str, timeout: float) -> None:
        self._routing_key = routing_key
        self.url = url
        self.timeout = timeout

    def payload(self, message: Mapping[str, Any]) -> dict[str, Any]:
        labels = message["labels"]
        notes = message["annotations"]
        if message["status"] == "resolved":
            return {"routing_key": self._routing_key, "event_action": "resolve", "dedup_key": message["fingerprint"]}
        return {
            "routing_key": self._routing_key,
            "event_action": "trigger",
            "dedup_key": message["fingerprint"],
            "payload": {
                "summary": notes["summary"][:1024],
                "source": f"{labels['agent']}/{labels['check']}/{labels['target']}",
                "severity": _SEVERITY.get(labels["severity"], "warning"),
                "timestamp": message["startsAt"],
                "component": labels["target"],
                "group": labels["check"],
                "class": labels["alertname"],
                "custom_details": {
                    "description": notes["description"],
                    "value": notes["value"],
                    "threshold": notes["threshold"],
                    "labels": dict(labels),
                    "context": message.get("context") or {},
                },
            },
            "links": [{"href": notes["runbook_url"], "text": "Runbook"}],
            "client": "opsagent",
            "client_url": message["generatorURL"],
        }

    def send(self, message: Mapping[str, Any], now: float) -> None:
        post_json(self.name, self.url, self.payload(message), self.timeout)
