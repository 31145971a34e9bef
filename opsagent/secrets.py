"""Keep secrets out of every string the agent emits.

Two layers: a pattern that masks the password of any ``scheme://user:pass@host``
URL (so a DSN echoed back inside a driver error is caught even if we never saw
it), and a process-wide set of known secret values taken from the loaded
configuration (webhook URLs, routing keys, tokens, Sentry DSN) that are
replaced wherever they appear. Log processors, the runner, the status page,
alert payloads and the Sentry hook all go through :func:`scrub`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s'\"]*:)(?P<pw>[^@\s'\"]+)(?P<at>@)")
_KV_PASSWORD = re.compile(r"(?P<head>\b(?:password|passwd|pwd|token|secret)\s*=\s*)(?P<pw>'[^']*'|\"[^\"]*\"|[^\s'\"]+)", re.I)

_lock = threading.Lock()
_known: tuple[str, ...] = ()


def register(values: Iterable[str | None]) -> None:
    """Add secret values that must never be printed (longest first so substrings don't leak)."""
    global _known
    fresh = {v for v in values if v and len(v) >= 4}
    with _lock:
        merged = set(_known) | fresh
        # A URL's password alone is a secret too: mask it even without the URL around it.
        for v in fresh:
            pw = url_password(v)
            if pw and len(pw) >= 4:
                merged.add(pw)
        _known = tuple(sorted(merged, key=len, reverse=True))


def clear() -> None:
    """Forget registered secrets (tests)."""
    global _known
    with _lock:
        _known = ()


def url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def scrub(text: str) -> str:
    """Return ``text`` with every known secret and URL password masked."""
    if not text:
        return text
    for secret in _known:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK + m.group("at"), text)
    return _KV_PASSWORD.sub(lambda m: m.group("head") + MASK, text)


def scrub_any(value: Any) -> Any:
    """Scrub strings inside nested dicts/lists/tuples (log events, Sentry events)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {k: scrub_any(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_any(v) for v in value]
    if isinstance(value, tuple):
        return tuple(scrub_any(v) for v in value)
    return value


def mask_url(url: str) -> str:
    """Show a URL/DSN with its password replaced by ``***`` (host and path stay readable)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub(url)
    if parts.password is None:
        return scrub(url)
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
