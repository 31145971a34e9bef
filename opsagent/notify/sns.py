"""Amazon SNS: one ``Publish`` per firing alert and per resolution.

boto3 is imported lazily through :func:`agent.aws.client` (timeouts and
botocore's standard retries set there); the client is made in the topic's own
region, which the ARN names.
"""

from __future__ import annotations

import json
from typing import Any

from opsagent import aws
from opsagent.notify.base import DeliveryError
from opsagent.notify.message import AlertMessage, Delivery

# Errors that no retry will fix: wrong topic, malformed request, no permission.
_PERMANENT = {"NotFound", "InvalidParameter", "InvalidParameterValue", "AuthorizationError", "InvalidClientTokenId"}


class SnsSink:
    name = "sns"
    repeats = False
    sends_resolved = True

    def __init__(self, topic_arn: str, timeout: float) -> None:
        self.topic_arn = topic_arn
        self.region = topic_arn.split(":")[3]
        self.timeout = timeout

    def request(self, message: AlertMessage) -> dict[str, Any]:
        labels = message.labels
        status = "RESOLVED" if message.resolved else "FIRING"
        subject = f"[{status}] {labels['alertname']} {labels['check']}/{labels['target']}"
        body = {
            "status": message.status,
            "fingerprint": message.fingerprint,
            "labels": dict(labels),
            "annotations": dict(message.annotations),
            "startsAt": message.starts_at_iso,
            "endsAt": message.ends_at_iso,
            "generatorURL": message.generator_url,
            "context": dict(message.context),
        }
        return {
            "TopicArn": self.topic_arn,
            "Subject": "".join(c for c in subject if c.isprintable())[:99],
            "Message": json.dumps(body, indent=1),
            "MessageAttributes": {
                "alertname": {"DataType": "String", "StringValue": labels["alertname"]},
                "severity": {"DataType": "String", "StringValue": labels["severity"]},
                "status": {"DataType": "String", "StringValue": message.status},
            },
        }

    def send(self, delivery: Delivery, now: float) -> None:
        for message in delivery.messages:
            self._publish(message)

    def _publish(self, message: AlertMessage) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            aws.client("sns", self.region, timeout=self.timeout).publish(**self.request(message))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise DeliveryError(self.name, f"{code}: {exc}", permanent=code in _PERMANENT) from None
        except BotoCoreError as exc:
            raise DeliveryError(self.name, f"{type(exc).__name__}: {exc}") from None
