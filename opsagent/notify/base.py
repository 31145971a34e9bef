"""What every sink shares: the protocol, the error that says whether to retry, a bounded HTTP POST."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, Protocol

from opsagent import __version__, secrets
from opsagent.notify.message import Delivery


class DeliveryError(Exception):
    """A sink refused or could not take a message. ``permanent``: retrying cannot help (e.g. HTTP 400)."""

    def __init__(self, sink: str, reason: str, *, permanent: bool = False) -> None:
        super().__init__(f"{sink}: {secrets.scrub(reason)}")
        self.sink = sink
        self.reason = secrets.scrub(reason)
        self.permanent = permanent


class Sink(Protocol):
    """Delivers one outbox entry (:class:`~opsagent.notify.message.Delivery`); raises on failure.

    Capabilities live on the sink, as Alertmanager's notifiers carry ``send_resolved``:
    ``repeats`` sinks get every still-firing alert (and the ``Watchdog`` heartbeat) re-sent each
    ``notify.repeat_interval`` because they forget alerts that are not refreshed; ``sends_resolved``
    sinks are told when an alert resolves.
    """

    name: str
    repeats: bool
    sends_resolved: bool

    def send(self, delivery: Delivery, now: float) -> None: ...


def post_json(sink: str, url: str, body: Any, timeout: float, headers: Mapping[str, str] | None = None) -> bytes:
    """POST ``body`` as JSON; raise :class:`DeliveryError` (permanent for 4xx other than 408/429)."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json",
        "User-Agent": f"opsagent/{__version__}",
        **(headers or {}),
    })
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # the configured sink URL
            return bytes(response.read(65536))
    except urllib.error.HTTPError as exc:
        detail = exc.read(500).decode("utf-8", "replace") if exc.fp is not None else ""
        permanent = 400 <= exc.code < 500 and exc.code not in (408, 429)
        raise DeliveryError(sink, f"HTTP {exc.code}: {' '.join(detail.split())[:300]}", permanent=permanent) from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(sink, f"{type(exc).__name__}: {reason}") from None
