"""The agent's own errors to Sentry, with every secret scrubbed before sending.

sentry-sdk is imported only when ``notify.sentry_dsn`` is set. ``before_send``
runs the same scrubber as the logs over the whole event (messages, exception
values, stack-frame variables, breadcrumbs), and local variables are not sent.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from opsagent import __version__, secrets
from opsagent.config import Settings

_enabled = False

EVENT_WINDOW_SECONDS = 600.0  # at most one event per fingerprint per window
MAX_FINGERPRINTS = 1000


class EventLimiter:
    """At most one Sentry event per fingerprint per ``window`` seconds.

    A bug hit on every check run (a target answering garbage every 15 s) must not flood the agent's
    own on-call with one event per run; the first event goes out, repeats inside the window are
    counted and the count rides on the next event that goes out.
    """

    def __init__(self, window: float = EVENT_WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic,
                 capacity: int = MAX_FINGERPRINTS) -> None:
        self.window = window
        self.clock = clock
        self.capacity = capacity
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()  # fingerprint -> (last sent, suppressed)

    def admit(self, fingerprint: str) -> int | None:
        """None to drop this event; else how many were dropped since the last one of this fingerprint."""
        now = self.clock()
        with self._lock:
            last = self._seen.get(fingerprint)
            if last is not None and now - last[0] < self.window:
                self._seen[fingerprint] = (last[0], last[1] + 1)
                return None
            self._seen[fingerprint] = (now, 0)
            self._seen.move_to_end(fingerprint)
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
            return 0 if last is None else last[1]


def fingerprint_of(exc: BaseException) -> str:
    """The exception type and where it was raised: the same bug gives the same fingerprint whatever its message."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else secrets.scrub(str(exc))[:200]
    return f"{type(exc).__module__}.{type(exc).__qualname__}@{where}"


limiter = EventLimiter()


def _before_send(event: Any, _hint: dict[str, Any]) -> Any:
    """Every string of the event scrubbed (sentry-sdk's Event is a TypedDict; scrub_any keeps its shape)."""
    return secrets.scrub_any(event)


def init(settings: Settings) -> bool:
    """Start the Sentry client when a DSN is configured; return whether it is on."""
    global _enabled
    dsn = settings.notify.sentry_dsn
    if dsn is None:
        return False
    import sentry_sdk

    sentry_sdk.init(
        dsn=dsn.get_secret_value(),
        release=f"opsagent@{__version__}",
        server_name=settings.agent.name,
        include_local_variables=False,
        max_breadcrumbs=20,
        before_send=_before_send,
        before_breadcrumb=lambda crumb, _hint: secrets.scrub_any(crumb),
        default_integrations=False,
        auto_enabling_integrations=False,
        shutdown_timeout=2,
    )
    _enabled = True
    return True


def capture_exception(exc: BaseException) -> None:
    if not _enabled:
        return
    suppressed = limiter.admit(fingerprint_of(exc))
    if suppressed is None:
        return
    import sentry_sdk

    sentry_sdk.capture_exception(exc, tags={"suppressed_repeats": str(suppressed)})


def capture_message(message: str, level: str = "error", **tags: str) -> None:
    if _enabled and limiter.admit(f"message:{message}") is not None:
        import sentry_sdk

        with sentry_sdk.new_scope() as scope:
            for key, value in tags.items():
                scope.set_tag(key, value)
            sentry_sdk.capture_message(secrets.scrub(message), level=level)  # type: ignore[arg-type]


def flush(timeout: float = 2.0) -> None:
    if _enabled:
        import sentry_sdk

        sentry_sdk.flush(timeout=timeout)
