"""Slack incoming webhook: one readable message per firing alert and per resolution."""

from __future__ import annotations

from typing import Any

from opsagent.notify.base import post_json
from opsagent.notify.message import AlertMessage, Delivery

_EMOJI = {"critical": ":red_circle:", "warning": ":warning:", "info": ":information_source:"}


class SlackSink:
    name = "slack"
    repeats = False  # a channel message stays; re-posting it would be noise
    sends_resolved = True

    def __init__(self, webhook_url: str, timeout: float) -> None:
        self._url = webhook_url  # a secret: never logged (DeliveryError scrubs it)
        self.timeout = timeout

    def payload(self, message: AlertMessage) -> dict[str, Any]:
        labels = message.labels
        notes = message.annotations
        if message.resolved:
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
                "color": "good" if message.resolved else "danger",
                "fields": [{"title": k, "value": v, "short": True} for k, v in labels.items()],
                "footer": f"fingerprint {message.fingerprint}",
            }],
        }

    def send(self, delivery: Delivery, now: float) -> None:
        for message in delivery.messages:
            post_json(self.name, self._url, self.payload(message), self.timeout)
