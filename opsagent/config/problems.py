"""How configuration problems are worded: one line per problem, naming the key, never echoing a secret."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic_core import ErrorDetails

from opsagent import secrets
from opsagent.config.fields import _NAME_FORM
from opsagent.config.models import ENV_PREFIX


class ConfigError(Exception):
    """Invalid configuration: ``problems`` holds one line per problem, each naming its key."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


_FORMS = {
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "model_type": "a mapping of keys",
    "dict_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
    "literal_error": None,
    "extra_forbidden": None,
    "string_pattern_mismatch": None,
}


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def _key_part(part: object) -> str:
    """A key as it would be typed: bare when plain, else JSON-quoted (so "", "a b", tabs or "¡" read as keys)."""
    text = str(part)
    if _PLAIN_KEY.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=not text.isprintable())


def _loc(loc: tuple[Any, ...], last_is_key: bool = False) -> str:
    """``checks.postgres[0].dsn`` from a pydantic error location (``last_is_key``: its last int is a mapping key)."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int) and not (last_is_key and i == len(loc) - 1):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "constrained-")):
            continue
        else:
            out += ("." if out else "") + _key_part(part)
    return out or "(top level)"


_SECRET_KEYS = {"admin_token", "dsn", "url", "slack_webhook_url", "pagerduty_routing_key", "sentry_dsn", "drill_dsn",
                "lock_dsn"}


def _describe(error: ErrorDetails) -> tuple[str, str]:
    """(the key, what is wrong with it) for one pydantic error; the key is empty when the text names it."""
    kind = error["type"]
    key = _loc(tuple(error["loc"]), last_is_key=kind == "invalid_key")
    msg: str = error["msg"]
    if kind == "invalid_key":
        return key, "keys must be strings"
    if kind == "extra_forbidden":
        return key, "unknown key; remove it or check its spelling"
    if kind == "missing":
        return key, "required but missing"
    # Never echo what may be a secret: a secret key's value, or any URL (credentials, webhook paths).
    raw = error.get("input")
    hidden = key.rsplit(".", 1)[-1] in _SECRET_KEYS or "@" in str(raw) or "://" in str(raw)
    if kind == "string_pattern_mismatch":
        value = "the value" if hidden else repr(raw)
        if key.endswith("name") or (".postgres[" in key and key.startswith("backup")):
            return key, f"{value} is not a valid name; expected {_NAME_FORM}"
        if key.endswith("sns_topic_arn"):
            return key, f"{value} is not an SNS topic ARN; expected arn:aws:sns:REGION:ACCOUNT:NAME"
        if key.endswith("load_balancer"):
            return key, f"{value} is not an ALB name; expected app/NAME/ID"
        return key, msg
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        if hidden and raw is not None and str(raw):  # a validator quoted a URL or secret where it expected else
            msg = msg.replace(repr(str(raw)), "the value").replace(str(raw), "the value")
        if msg.startswith("alerts."):  # already names its key
            return "", msg
        return key, msg
    form = _FORMS.get(kind)
    shown = raw
    shown_text = "" if isinstance(shown, (dict, list)) or shown is None or hidden else f"{secrets.scrub(str(shown))!r}: "
    if form:
        return key, f"{shown_text}expected {form}"
    return key, f"{shown_text}{msg}"


def _raw_secrets(data: dict[str, Any], env: Mapping[str, str]) -> tuple[str, ...]:
    """What the input put at secret keys, longest first, for masking problem messages.

    A message about another key may quote a value that also sits at a secret
    key (a token pasted twice); validation failed, so there are no secret types
    to ask, and the raw input is walked instead.
    """
    found: set[str] = set()

    def walk(node: Any, key: str | None = None) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k if isinstance(k, str) else None)
        elif isinstance(node, list):
            for item in node:
                walk(item, key)
        elif isinstance(node, (str, int)) and not isinstance(node, bool) and key in _SECRET_KEYS:
            text = str(node)
            if len(text) >= 4:
                found.add(text)
            password = secrets.url_password(text) if "://" in text else None
            if password and len(password) >= 4:
                found.add(password)

    walk(data)
    for name, value in env.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        walk({name.rsplit("__", 1)[-1].lower(): value})
        if value[:1] in "[{":
            try:
                walk(json.loads(value))
            except (ValueError, RecursionError):
                pass
    return tuple(sorted(found, key=len, reverse=True))


def _problem(error: ErrorDetails, raw_secrets: tuple[str, ...]) -> str:
    """One problem line; what follows the key never shows a secret (known, in a URL, or at a secret key)."""
    key, rest = _describe(error)
    for value in raw_secrets:  # after the key only, so a short secret never mangles a key name
        rest = rest.replace(value, secrets.MASK)
    return secrets.scrub(f"{key}: {rest}" if key else rest)


def _dedupe(items: list[str]) -> list[str]:
    seen: set[str] = set()
    return [i for i in items if not (i in seen or seen.add(i))]  # type: ignore[func-returns-value]
