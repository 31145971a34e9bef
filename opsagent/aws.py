"""The one place boto3 clients are made.

Endpoints and credentials come from the standard boto3 chain (including
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>``); there is no test switch.
Every client gets connect/read timeouts and botocore's own retry mode
(``standard`` backs off with jitter; no hand-written retry loops on top).
boto3 is imported on first use, so monitoring-only configs never pay for it.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

from opsagent import __version__

_lock = threading.Lock()
_session: Any = None
_clients: dict[tuple[str, str | None, float, str, int], Any] = {}


def client(service: str, region: str | None = None, *, timeout: float = 15.0,
           retry_mode: Literal["legacy", "standard", "adaptive"] = "standard",
           max_attempts: int = 5) -> Any:
    """A cached, thread-safe boto3 client for ``service`` in ``region`` with timeouts and retries set."""
    key = (service, region, timeout, retry_mode, max_attempts)  # every setting that shapes the client
    with _lock:
        cached = _clients.get(key)
        if cached is not None:
            return cached
        global _session
        import boto3
        from botocore.config import Config

        if _session is None:
            _session = boto3.session.Session()
        config = Config(
            connect_timeout=min(timeout, 5.0),
            read_timeout=timeout,
            retries={"mode": retry_mode, "max_attempts": max_attempts},
            user_agent_extra=f"opsagent/{__version__}",
        )
        made = _session.client(service, region_name=region, config=config)
        _clients[key] = made
        return made


def reset() -> None:
    """Drop cached clients and the session (tests that change AWS_* variables)."""
    global _session
    with _lock:
        _clients.clear()
        _session = None
