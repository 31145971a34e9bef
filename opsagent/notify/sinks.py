"""Which sinks the configuration names, built once at start (each declares its own capabilities)."""

from __future__ import annotations

from opsagent.config import Settings
from opsagent.notify.base import Sink


def build_sinks(settings: Settings) -> list[Sink]:
    """Every configured sink (each says itself whether it needs repeats and resolutions)."""
    from opsagent.notify.alertmanager import AlertmanagerSink
    from opsagent.notify.pagerduty import PagerDutySink
    from opsagent.notify.sentry import SentrySink
    from opsagent.notify.slack import SlackSink
    from opsagent.notify.sns import SnsSink

    n = settings.notify
    sinks: list[Sink] = []
    if n.alertmanager_url:
        sinks.append(AlertmanagerSink(n.alertmanager_url, n.repeat_interval, n.timeout))
    if n.slack_webhook_url is not None:
        sinks.append(SlackSink(n.slack_webhook_url.get_secret_value(), n.timeout))
    if n.pagerduty_routing_key is not None:
        sinks.append(PagerDutySink(n.pagerduty_routing_key.get_secret_value(), n.pagerduty_url, n.timeout))
    if n.sns_topic_arn:
        sinks.append(SnsSink(n.sns_topic_arn, n.timeout))
    if n.sentry_alerts and n.sentry_dsn is not None:
        sinks.append(SentrySink(n.sentry_dsn.get_secret_value(), n.timeout))
    return sinks
