"""The typed alert message and the outbox entry that carries it."""

from __future__ import annotations

from opsagent.alerts.engine import AlertState, Phase
from opsagent.alerts.render import Identity, alert_message, watchdog_message
from opsagent.notify.message import AlertMessage, Delivery

IDENT = Identity("api", "https://rb.example/", "http://agent:9108/")


def _firing() -> AlertMessage:
    state = AlertState("HighCPU", "cpu", "task", phase=Phase.FIRING, threshold=0.8, value=0.93,
                       pending_since=1_700_000_000, firing_since=1_700_000_300)
    return alert_message(state, "firing", IDENT, at=1_700_000_300, context={"top": ["a"]})


def test_a_message_survives_the_outbox_round_trip_unchanged() -> None:
    """What the outbox stores (to_json) reads back as the same typed message, with Alertmanager's field names only."""
    message = _firing()
    data = message.to_json()
    assert data["startsAt"] == "2023-11-14T22:13:20.000Z" and data["endsAt"] is None
    assert "starts_at" not in data and "ends_at" not in data
    assert AlertMessage.from_json(data) == message


def test_a_repeat_delivery_round_trips_with_the_watchdog_in_it() -> None:
    """A repeat entry holds several alerts (here a page and the Watchdog heartbeat) and decodes to the same delivery."""
    delivery = Delivery((_firing(), watchdog_message(IDENT, started_at=1_700_000_000, at=1_700_000_400)), repeat=True)
    again = Delivery.from_json(delivery.to_json())
    assert again == delivery and again.repeat and again.status == "repeat"
    assert again.messages[1].labels == {"alertname": "Watchdog", "severity": "none", "agent": "api"}
