"""Property-based fuzzing of the YAML file and the OPSAGENT_* environment.

Whatever the input, `opsagent config validate` either accepts it (exit 0) or
exits 2 with one line per problem, each naming a key (a dotted config key, an
environment variable or the file); never a traceback, never a hang, and never
a secret value echoed back.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsagent import cli, secrets
from opsagent.config import ConfigError, Settings, load_config
from opsagent.telemetry import logging as agent_logging
from tests.faults.evidence import (
    ADMIN_TOKEN,
    LOG_STREAM,
    PG_PASSWORD,
    SENTRY_KEY,
    SLACK_PATH,
    record,
)

SECRET_TEXTS = (PG_PASSWORD, ADMIN_TOKEN, SENTRY_KEY, SLACK_PATH.rsplit("/", 1)[-1])

# A problem line starts with what it is about: a dotted key (checks.postgres[0].dsn), an env variable, or the file.
# A key part is bare when plain, JSON-quoted otherwise ("", "a b", "¡").
_PART = r'(?:[A-Za-z_][\w\-]*|"(?:[^"\\]|\\.)*")(?:\[\d+\])*'
_KEY_HEAD = re.compile(rf"^(?:{_PART}(?:\.{_PART})*|OPSAGENT_\w+|environment|/\S+|\S+\.ya?ml)(?::| )")

SECTION_KEYS: dict[str, list[str]] = {
    name: list(getattr(field.annotation, "model_fields", {}) or []) for name, field in Settings.model_fields.items()
}
SECRET_KEYS = {"admin_token", "dsn", "url", "slack_webhook_url", "pagerduty_routing_key", "sentry_dsn", "drill_dsn",
               "lock_dsn"}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["15s", "0s", "-5m", "1h", "99999999999h", "5 minutes", "75%", "150%", "0.75", "1e309", "nan",
                     "0 * * * *", "* * *", "61 * * * *", "file:///tmp/x", "s3://", "s3://b/p", "ftp://x",
                     f"postgresql://app:{PG_PASSWORD}@db:5432/app", f"postgresql://app:{PG_PASSWORD}@[::1:5432/app",
                     f"redis://:{PG_PASSWORD}@cache:6379/0", f"http://{SENTRY_KEY}@127.0.0.1:9/1",
                     f"https://hooks.slack.com{SLACK_PATH}", ADMIN_TOKEN, "127.0.0.1:99999", "::1", "\x00", "~",
                     "arn:aws:sns:us-east-1:123:t", "critical", "loud", "app/x/1"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["name", "dsn", "url", "interval", "timeout", "x",
                                                                  "threshold", "for", "enabled", "severity"]),
                                                 inner, max_size=4)), max_leaves=8)


@st.composite
def documents(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(values)  # not even a mapping
    doc: dict[Any, Any] = {}
    for section in draw(st.lists(st.sampled_from([*SECTION_KEYS, "extra", "Agent"]), max_size=5, unique=True)):
        keys = SECTION_KEYS.get(section) or ["x"]
        if section == "checks":
            body: Any = {k: draw(st.one_of(values, st.lists(st.dictionaries(
                st.sampled_from(["name", "dsn", "url", "interval", "timeout", "enabled", "metrics_url", "window",
                                 "bogus"]), values, max_size=5), max_size=2))) for k in draw(
                st.lists(st.sampled_from([*keys, "nosuch"]), max_size=4, unique=True))}
        elif draw(st.integers(0, 6)) == 0:
            body = draw(values)
        else:
            body = {k: draw(values) for k in draw(st.lists(st.sampled_from([*keys, "nosuch"]), max_size=5, unique=True))}
        doc[section] = body
    return doc


env_names = st.builds(lambda s, k: f"OPSAGENT_{s}__{k}".upper(),
                      st.sampled_from([*SECTION_KEYS, "nosection"]),
                      st.sampled_from(sorted({k for keys in SECTION_KEYS.values() for k in keys} | {"nosuch"})))
env_values = st.one_of(st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20), st.sampled_from(
    ["[", "{}", "[]", '{"a": 1}', "null", "1", "true", f"postgresql://u:{PG_PASSWORD}@h/d", ADMIN_TOKEN,
     '[{"name": "x", "dsn": "postgresql://h/d"}]', "15s", "-1s"]))
environments = st.dictionaries(env_names, env_values, max_size=3)


def _validate(path: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """Run `opsagent config validate` in-process with ``env`` as the environment; (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    secrets.clear()  # a fresh process knows no secrets from earlier examples
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({k: v for k, v in saved.items() if not k.startswith("OPSAGENT_")})
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(["config", "validate", "--config", str(path)])
            except SystemExit as exc:
                code = int(exc.code or 0)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        agent_logging.configure("debug", stream=LOG_STREAM, json=True)
    return code, out.getvalue(), err.getvalue()


def _guarded(doc: Any, env: dict[str, str]) -> set[str]:
    """Secret texts the input placed where the agent knows they are secret: at a secret key or inside a URL."""
    found: set[str] = set()

    def walk(node: Any, key: Any = None) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, (str, int)):
            text = str(node)
            if key in SECRET_KEYS or "://" in text:
                found.update(s for s in SECRET_TEXTS if s in text)

    walk(doc)
    for name, value in env.items():
        walk({name.rsplit("__", 1)[-1].lower(): value})
    return found


def _check_outcome(code: int, out: str, err: str, guarded: AbstractSet[str] = frozenset(SECRET_TEXTS),
                   placed: AbstractSet[str] = frozenset()) -> None:
    if placed <= guarded:  # the final secret scan only gets outputs whose secrets the agent could know about
        record("cli", out + err)
    assert "Traceback" not in err and "Traceback" not in out
    assert code in (0, 2), (code, err)
    if code == 2:
        problems = [line.strip() for line in err.splitlines()[1:] if line.strip()]
        assert err.startswith("opsagent: invalid configuration:") and problems, err
        for line in problems:
            assert _KEY_HEAD.match(line), f"problem does not name a key: {line!r}"
    for secret in guarded:
        assert secret not in out + err, f"secret echoed: {err}"


@settings(max_examples=150, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(doc=documents(), env=environments)
def test_any_yaml_and_environment_loads_or_exits_2_naming_a_key(tmp_path: Path, doc: Any, env: dict[str, str]) -> None:
    """Random config files and OPSAGENT_* variables either validate or exit 2 with one key-naming line per problem, no traceback, no secret."""
    path = tmp_path / "opsagent.yaml"
    try:
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    except yaml.YAMLError:
        return
    code, out, err = _validate(path, env)
    placed = {s for s in SECRET_TEXTS if s in repr(doc) + repr(env)}
    _check_outcome(code, out, err, _guarded(doc, env), placed)


@settings(max_examples=60, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_any_bytes_as_a_config_file_load_or_exit_2(tmp_path: Path, text: str) -> None:
    """Arbitrary text (broken YAML, tabs, control characters, binary) in the config file is exit 2 naming the file, or a valid config."""
    path = tmp_path / "opsagent.yaml"
    path.write_bytes(text.encode("utf-8", errors="surrogateescape") if text.isprintable() else text.encode("latin-1", "replace"))
    code, out, err = _validate(path, {})
    _check_outcome(code, out, err)


HOSTILE_FILES = {
    "billion_laughs": "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                      "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
                      "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
                      "agent: {name: [*g,*g,*g,*g,*g,*g,*g,*g,*g]}\nchecks: {postgres: [*g,*g,*g]}\n",
    "deep_nesting": "agent: " + "[" * 5000 + "]" * 5000 + "\n",
    "deep_mapping": "checks: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n",
    "python_tag": "agent: !!python/object/apply:os.system ['echo pwned']\n",
    "huge_number": "agent: {listen: '127.0.0.1:" + "9" * 5000 + "'}\nchecks: {cpu: {interval: " + "9" * 5000 + "}}\n",
    "bom_and_nul": "\ufeffagent: {name: \"a\x00b\"}\n",
    "secret_as_number": "agent: {admin_token: 12345678901234}\nnotify: {slack_webhook_url: 998877665544}\n",
}


def test_hostile_files_exit_2_quickly_without_traceback(tmp_path: Path) -> None:
    """YAML bombs, 5000-deep nesting, python tags, huge numbers and NULs exit 0 or 2 within 20 s each in the real CLI, never a traceback."""
    for name, text in HOSTILE_FILES.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        proc = subprocess.run([sys.executable, "-m", "opsagent", "config", "validate", "--config", str(path)],
                              capture_output=True, text=True, timeout=20,
                              env={k: v for k, v in os.environ.items() if not k.startswith("OPSAGENT_")})
        record("cli", proc.stdout + proc.stderr)
        assert "Traceback" not in proc.stderr, (name, proc.stderr[-2000:])
        assert proc.returncode in (0, 2), (name, proc.returncode, proc.stderr[-500:])
        if name == "secret_as_number":
            assert proc.returncode == 2 and "12345678901234" not in proc.stderr and "998877665544" not in proc.stderr, proc.stderr
        if name == "python_tag":
            assert proc.returncode == 2 and "pwned" not in proc.stdout


def test_invalid_secret_values_are_not_echoed(tmp_path: Path) -> None:
    """A secret key with an unusable value is named in the error, its value is not."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "checks": {"postgres": [{"name": "db", "dsn": f"mysql://app:{PG_PASSWORD}@db/app"}]},
        "notify": {"sentry_dsn": f"not-a-dsn {SENTRY_KEY}", "slack_webhook_url": f"ftp://x{SLACK_PATH}"},
        "agent": {"admin_token": ["a", ADMIN_TOKEN]},
    }))
    try:
        load_config(path, env={})
    except ConfigError as exc:
        text = "\n".join(exc.problems)
    else:
        raise AssertionError("an invalid config loaded")
    record("cli", text)
    for secret in SECRET_TEXTS:
        assert secret not in text, text
    assert "checks.postgres[0].dsn" in text
