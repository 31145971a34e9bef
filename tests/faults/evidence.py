"""Recognisable secrets used throughout the fault suite, and everything the agent emitted.

Every DSN, URL, token and the Sentry DSN in ``tests/faults`` carries one of
:data:`SECRETS`. Whatever the agent says during the suite (log lines, status
pages, alert payloads, Sentry events, CLI output) is recorded here with
:func:`record`; ``test_zz_secrets.py`` scans it all at the end.
"""

from __future__ import annotations

import io
import json
import os
import threading

PG_PASSWORD = "PgPw-S3cr3t-7c1d"
REDIS_PASSWORD = "RdsPw-S3cr3t-9a2e"
BOUNCER_PASSWORD = "BncPw-S3cr3t-4f6b"
ADMIN_TOKEN = "AdmTok-S3cr3t-2b8d"
SLACK_PATH = "/services/T000/B000/SlackHook-S3cr3t-5e0a"
PAGERDUTY_KEY = "PdKey-S3cr3t-8d3c"
SENTRY_KEY = "SntKey-S3cr3t-1f9b"

SECRETS = (PG_PASSWORD, REDIS_PASSWORD, BOUNCER_PASSWORD, ADMIN_TOKEN, SLACK_PATH.rsplit("/", 1)[-1],
           PAGERDUTY_KEY, SENTRY_KEY)

_lock = threading.Lock()
_records: list[tuple[str, str]] = []


def record(source: str, text: str | bytes) -> None:
    """Keep ``text`` for the final secret scan; ``source`` says where it came from (log, status, alert…)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    with _lock:
        _records.append((source, text))


def records() -> list[tuple[str, str]]:
    with _lock:
        return list(_records)


def sources() -> set[str]:
    with _lock:
        return {source for source, _ in _records}


class LogTee(io.TextIOBase):
    """A text stream that keeps every log line the agent writes (structlog's PrintLogger target)."""

    def write(self, text: str) -> int:
        if text.strip():
            record("log", text)
        return len(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return False


LOG_STREAM = LogTee()


FIGURES_PATH = os.environ.get("OPSAGENT_FAULT_FIGURES", "/tmp/opsagent-fault-figures.json")


def figure(name: str, value: object) -> None:
    """Keep one measured figure (for SCORECARD.md) in a JSON file outside the repository."""
    with _lock:
        try:
            with open(FIGURES_PATH, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            data = {}
        data[name] = value
        with open(FIGURES_PATH, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True, default=str)
