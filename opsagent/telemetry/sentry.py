"""The agent's own errors to Sentry, with every secret scrubbed before sending.

sentry-sdk is imported only when ``notify.sentry_dsn`` is set. ``before_send``
runs the same scrubber as the logs over the whole event (messages, exception
values, stack-frame variables, breadcrumbs), and local variables are not sent.
"""

from __future__ import annotations

from typing import Any

from opsagent import __version__, secrets
from opsagent.config import Settings

_enabled = False


def _before_send(event: dict[str, Any], _hint: dict[str, Any]) -> dict[str, Any]:
    return secrets.scrub_any(event)  # type: ignore[no-any-return]


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
    if _enabled:
        import sentry_sdk

        sentry_sdk.capture_exception(exc)


def capture_message(message: str, level: str = "error", **tags: str) -> None:
    if _enabled:
        import sentry_sdk

        with sentry_sdk.new_scope() as scope:
            for key, value in tags.items():
                scope.set_tag(key, value)
            sentry_sdk.capture_message(secrets.scrub(message), level=level)  # type: ignore[arg-type]


def flush(timeout: float = 2.0) -> None:
    if _enabled:
        import sentry_sdk

        sentry_sdk.flush(timeout=timeout)
