"""Sentry as an alert sink (``notify.sentry_alerts: true``): one event per firing alert / resolution.

The daemon normally initialises sentry_sdk for the agent's own errors; if it
has not, this sink initialises it with the configured DSN and no default
integrations. Sentry offers no delivery receipt, so this is best effort after
the outbox hands the event over (``flush`` with the notify timeout).
"""

from __future__ import annotations

from opsagent.notify.message import AlertMessage, Delivery

_LEVEL = {"critical": "fatal", "warning": "warning", "info": "info"}


class SentrySink:
    name = "sentry"
    repeats = False
    sends_resolved = True

    def __init__(self, dsn: str, timeout: float) -> None:
        self._dsn = dsn
        self.timeout = timeout

    def send(self, delivery: Delivery, now: float) -> None:
        for message in delivery.messages:
            self._capture(message)

    def _capture(self, message: AlertMessage) -> None:
        import sentry_sdk

        if not sentry_sdk.is_initialized():
            sentry_sdk.init(dsn=self._dsn, default_integrations=False, traces_sample_rate=0.0)
        labels = message.labels
        level = "info" if message.resolved else _LEVEL.get(labels["severity"], "warning")
        with sentry_sdk.new_scope() as scope:
            scope.fingerprint = ["opsagent-alert", message.fingerprint, message.status]
            scope.level = level
            for key, value in labels.items():
                scope.set_tag(key, value)
            scope.set_tag("alert_status", message.status)
            scope.set_context("alert", {"annotations": dict(message.annotations), "context": dict(message.context)})
            text = f"[{message.status.upper()}] {message.annotations['summary']}"
            sentry_sdk.capture_message(text, level=level)  # type: ignore[arg-type]
        sentry_sdk.flush(timeout=self.timeout)
