"""structlog set-up: JSON lines off a terminal, readable console on one, secrets scrubbed.

Every log line in the agent goes through :func:`configure`'s processor chain,
whose last step before rendering masks known secrets and URL passwords.
Logs go to stderr so that ``--json`` output on stdout stays one clean document.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

import structlog

from opsagent import secrets

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _scrub(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return secrets.scrub_any(event_dict)  # type: ignore[no-any-return]


class _StdlibBridge(logging.Handler):
    """Route libraries' stdlib logging (APScheduler, botocore…) through structlog's chain."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed library log record must not break logging
            message = str(record.msg)
        structlog.get_logger(record.name).log(record.levelno, "library_log", logger=record.name, message=message)


class _BarSafeStream:
    """A terminal stream for log lines that a progress bar may share (``backup``, ``restore``, ``drill``).

    Whole lines are written inside tqdm's ``external_write_mode``: an open bar is cleared first and
    redrawn below the line, instead of the line being glued onto the bar (``68.0 MiB2026-…``).
    ``print`` writes a line in two calls (text, then newline), so text is held until its newline.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pending = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        from tqdm import tqdm

        with self._lock:
            self._pending += text
            if "\n" not in self._pending:
                return len(text)
            lines, _, self._pending = self._pending.rpartition("\n")
            with tqdm.external_write_mode(file=self._stream):
                self._stream.write(lines + "\n")
                self._stream.flush()
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return bool(self._stream.isatty())


def configure(level: str = "info", stream: TextIO | None = None, json: bool | None = None) -> None:
    """Configure structlog once per process (safe to call again, e.g. after config is loaded)."""
    stream = stream or sys.stderr
    if json is None:
        json = not (hasattr(stream, "isatty") and stream.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    out: Any = stream if json else _BarSafeStream(stream)  # readable lines go to a terminal a bar may share
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:
        processors.append(structlog.processors.dict_tracebacks)
    processors += [_scrub, renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _StdlibBridge)] + [_StdlibBridge()]
    root.setLevel(logging.WARNING)
    # APScheduler's skipped/missed-run warnings are counted as metrics and logged by the daemon.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
