"""``opsagent config show``: the effective configuration, with only the secret parts masked (SPEC §9.7).

Every alarm appears with the threshold, ``for`` and severity it runs with (catalogue defaults
merged with overrides) and every target with the deadline it runs with, so nobody has to look
defaults up. Only what is secret is ``***``: passwords inside URLs and DSNs (also ``password=``
in a DSN's query), tokens and keys, the userinfo and path of a secret http(s) URL (a Slack
webhook's path is its credential, a Sentry DSN's user its key). A DSN without a password stays
readable, so it shows which host it points at.

Kept apart from :mod:`opsagent.config.models`, which calls it; it imports nothing of the models
(they are passed in), so there is no import cycle.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr

from opsagent import secrets
from opsagent.alerts.catalog import ALARMS, ValueKind
from opsagent.units import format_duration

_SECRET_QUERY_KEYS = re.compile(r"(?i)^(password|passwd|pwd|sslpassword|token|secret|key|auth.*)$")


class _Alarm(Protocol):
    threshold: float
    for_seconds: float
    severity: str
    enabled: bool


class _Settings(Protocol):
    @property
    def checks(self) -> BaseModel: ...

    def model_dump(self, *, mode: str, by_alias: bool) -> dict[str, Any]: ...
    def alarm(self, name: str) -> _Alarm: ...


def effective_config(settings: _Settings) -> dict[str, Any]:
    """The configuration ``settings`` runs with, as plain data ready for YAML."""
    result: dict[str, Any] = _masked(settings.model_dump(mode="json", by_alias=True), settings)
    result["alerts"] = _effective_alerts(settings, result.get("alerts") or {})
    _effective_timeouts(settings.checks, result["checks"])
    return result


def _masked(node: Any, model: Any) -> Any:
    if isinstance(model, SecretStr):
        return shown_secret(model.get_secret_value())
    if isinstance(model, BaseModel):
        return {(f.alias or k): _masked(node.get(f.alias or k), getattr(model, k))
                for k, f in type(model).model_fields.items()}
    if isinstance(model, (list, tuple)):
        return [_masked(n, m) for n, m in zip(node, model, strict=True)]
    if isinstance(node, str) and "://" in node:
        return secrets.mask_url(node)  # a plain URL may still carry user:password (metrics_url)
    return node


def _effective_alerts(settings: _Settings, shown: Mapping[str, Any]) -> dict[str, Any]:
    """Every catalogue alarm with its effective threshold, ``for``, severity and enabled flag (other keys kept)."""
    out: dict[str, Any] = {}
    for name, spec in ALARMS.items():
        alarm = settings.alarm(name)
        entry = dict(shown.get(name) or {})
        threshold: float | str = format_duration(alarm.threshold) if spec.kind is ValueKind.DURATION else alarm.threshold
        entry.update({"threshold": threshold, "for": format_duration(alarm.for_seconds),
                      "severity": alarm.severity, "enabled": alarm.enabled})
        out[name] = entry
    return out


def _effective_timeouts(checks: BaseModel, shown: dict[str, Any]) -> None:
    """Each target's ``timeout`` as the deadline it runs with (``timeout: null`` means min(interval, 10s))."""
    for key, field_info in type(checks).model_fields.items():
        value = getattr(checks, key)
        targets = value if isinstance(value, list) else [value]
        entries = shown.get(field_info.alias or key)
        entries = entries if isinstance(entries, list) else [entries]
        for target, entry in zip(targets, entries, strict=True):
            deadline = getattr(target, "deadline", None)
            if isinstance(deadline, float) and isinstance(entry, dict) and "timeout" in entry:
                entry["timeout"] = format_duration(deadline)


def shown_secret(raw: str) -> str:
    """A secret setting as ``config show`` prints it: the parts that are not secret stay readable."""
    if "://" not in raw:
        return secrets.MASK  # a token or a routing key: all of it is the secret
    try:
        parts = urlsplit(raw)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return secrets.MASK
    host = f"[{host}]" if ":" in host else host
    hostport = host + (f":{port}" if port else "")
    if parts.scheme in ("http", "https"):  # webhooks, Sentry DSNs: userinfo and path are the credential
        return urlunsplit((parts.scheme, (f"{secrets.MASK}@" if parts.username else "") + hostport,
                           "/" + secrets.MASK if parts.path.strip("/") else parts.path, "", ""))
    user = parts.username or ""
    userinfo = f"{user}:{secrets.MASK}@" if parts.password is not None else (f"{user}@" if user else "")
    query = urlencode([(k, secrets.MASK if _SECRET_QUERY_KEYS.match(k) else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, userinfo + hostport, parts.path, query, parts.fragment))
