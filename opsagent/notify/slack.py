"""Slack incoming webhook: one readable message per firing alert and per resolution."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opsagent.notify.base import post_json

_EMOJI = {"critical": ":red_circle:", "warning": ":warning:", "info": ":information_source:"}


class SlackSink:
    name = "slack"

    def __init__(self, webhook_url: str, timeout: float) -> None:
        self._url = webhook_url  # a secret: never logged (DeliveryError scrubs it)
        self.timeout = timeout

    def payload(self, message: Mapping[str, Any]) -> dict[str, Any]:
        labels = message["labels"]
        notes = message["annotations"]
        if message["status"] == "resolved":
            head = f":white_check_mark: RESOLVED {labels['alertname']} {labels['check']}/{labels['target']}"
        else:
            icon = _EMOJI.get(labels["severity"], ":warning:")
            head = f"{icon} FIRING [{labels['severity']}] {labels['alertname']} {labels['check']}/{labels['target']}"
        text = "\n".join([
            f"*{head}*",
            notes["summary"],
            notes["description"],
            f"Runbook: <{notes['runbook_url']}|{labels['alertname']}.md>",
        ])
        return {
            "text": text,
            "attachments": [{
                "color": "good" if message["status"] == "resolved" else "danger",
                "fields": [{"title": k, "value": v, "short": True} for k, v in labels.items()],
                "footer": f"fingerprint {message['fingerprint']}",
            }],
        }

    def send(self, message: Mapping[str, Any], now: float) -> None:
        post_json(self.name, self._url, self.payload(message), self.timeout)
