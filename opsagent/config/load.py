"""Reading the configuration: one YAML file plus ``OPSAGENT_<SECTION>__<KEY>`` overrides.

:func:`load_config` turns every problem (YAML syntax, types, units, URLs,
duplicate names, stray environment variables) into a :class:`ConfigError`
holding one human line per problem, naming the key.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from opsagent import secrets
from opsagent.config.models import (
    _ENVIRONMENT,
    CONFIG_ENV,
    DEFAULT_CONFIG_FILE,
    ENV_PREFIX,
    Settings,
)
from opsagent.config.problems import ConfigError, _dedupe, _problem, _raw_secrets


def _check_environment(env: dict[str, str]) -> list[str]:
    """Stray OPSAGENT_* variables are mistakes: say so instead of ignoring them."""
    sections = set(Settings.model_fields)
    problems = []
    for name in sorted(env):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == CONFIG_ENV:
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section = rest.split("__", 1)[0]
        if section not in sections:
            problems.append(
                f"{name}: unknown environment variable; expected OPSAGENT_<SECTION>__<KEY> with SECTION one of "
                + ", ".join(sorted(sections)).upper()
            )
    return problems


def resolve_config_path(explicit: str | None, env: Mapping[str, str] | None = None) -> Path | None:
    environ: Mapping[str, str] = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.exists() else None


MAX_CONFIG_BYTES = 1024 * 1024


def _read_config_text(path: Path) -> str:
    """The file's text, read only from a regular file and only up to MAX_CONFIG_BYTES.

    ``/dev/zero`` would be read until memory runs out and a FIFO would block ``open`` until a writer
    comes, so the file is opened non-blocking, checked to be a regular file, then read with a cap.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file ({exc.__class__.__name__}: {exc.strerror})"]) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError([f"{path}: not a regular file (a directory, FIFO or device); expected a YAML file"])
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_CONFIG_BYTES:
            raise ConfigError([f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; expected a YAML config file"])
        return b"".join(chunks).decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file ({exc.__class__.__name__}: {exc.strerror})"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text; expected a YAML file"]) from None
    finally:
        os.close(fd)


def read_yaml(path: Path) -> dict[str, Any]:
    text = _read_config_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"{path}: not valid YAML{where}: {problem}; expected a YAML mapping of sections"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply to read; expected a YAML mapping of sections"]) from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ConfigError([f"{path}: a value cannot be read ({str(exc)[:120]}); expected a YAML mapping of sections"]) from None
    if data is None:
        raise ConfigError([f"{path}: the file is empty; expected a YAML mapping with sections such as agent, checks"])
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a YAML mapping of sections (agent, checks, alerts, notify, backup), got {type(data).__name__}"])
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError([f"{path}: section names must be strings, got {bad_keys[0]!r}"])
    if _expands_beyond(data, MAX_CONFIG_VALUES):
        raise ConfigError([f"{path}: expands to more than {MAX_CONFIG_VALUES} values (YAML aliases nested in "
                           "aliases?); expected a plain mapping of sections"])
    return data


MAX_CONFIG_VALUES = 100_000


def _expands_beyond(data: Any, limit: int) -> bool:
    """True when walking ``data`` with aliases expanded visits more than ``limit`` values.

    A "billion laughs" file is small on disk but exponential once aliases are
    followed; validation would hang on it, so it is refused before that.
    """
    stack, seen = [data], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Load and validate the configuration; raise :class:`ConfigError` with every problem."""
    env = dict(os.environ if env is None else env)
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(Path(path))
    problems = _check_environment(env)
    raw_secrets = _raw_secrets(data, env)
    token = _ENVIRONMENT.set(env)
    try:
        try:
            settings = Settings(**data)
        except ValidationError as exc:
            problems.extend(_problem(e, raw_secrets) for e in exc.errors(include_url=False))
            raise ConfigError(_dedupe(problems)) from None
        except (ValueError, json.JSONDecodeError) as exc:  # pydantic-settings: bad JSON in an env var
            problems.append(f"environment: {secrets.scrub(str(exc))}; complex values (lists, mappings) must be JSON")
            raise ConfigError(problems) from None
        except RecursionError:
            problems.append("configuration: nested too deeply to validate; expected the documented sections and keys")
            raise ConfigError(problems) from None
    finally:
        _ENVIRONMENT.reset(token)
    if problems:
        raise ConfigError(problems)
    secrets.register(settings.secret_values())
    return settings
