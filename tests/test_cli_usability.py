"""The command line explains itself: effective `config show`, `--help` with examples and exit codes, completion."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from opsagent.config import load_config

CONFIG = """
checks:
  postgres:
    - {name: main, dsn: "postgresql://app:pg-pass-123@db:5432/app"}
    - {name: ro, dsn: "postgresql://stats@replica.internal:5432/app?sslmode=require&password=qs-pass-456"}
  redis:
    - {name: cache, url: "redis://cache.internal:6379/0"}
alerts:
  RedisMemoryHigh: {threshold: 80%, for: 10m}
  HighCPU: {severity: critical}
notify:
  slack_webhook_url: https://hooks.slack.com/services/T000/B000/slack-secret-789
  sentry_dsn: https://sentrykey0123@o1.ingest.sentry.io/42
  pagerduty_routing_key: pd-routing-key-abc
backup:
  rpo: 2h
"""
SECRETS = ("pg-pass-123", "qs-pass-456", "slack-secret-789", "sentrykey0123", "pd-routing-key-abc")


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opsagent", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_config_show_prints_effective_alarm_settings(tmp_path: Path) -> None:
    """Every alarm shows the threshold, for and severity it runs with (defaults, overrides, the RPO for BackupStale), every target its deadline."""
    path = tmp_path / "opsagent.yaml"
    path.write_text(CONFIG)
    alerts = load_config(path, env={}).redacted()["alerts"]
    assert alerts["HighMemory"] == {**alerts["HighMemory"], "threshold": 0.9, "for": "5m", "severity": "critical",
                                    "enabled": True}
    assert (alerts["HighCPU"]["threshold"], alerts["HighCPU"]["severity"]) == (0.8, "critical")
    assert (alerts["RedisMemoryHigh"]["threshold"], alerts["RedisMemoryHigh"]["for"]) == (0.8, "10m")
    assert alerts["BackupStale"]["threshold"] == "2h"
    assert all(entry["threshold"] is not None for entry in alerts.values())
    checks = load_config(path, env={}).redacted()["checks"]
    assert checks["cpu"]["timeout"] == "10s" and checks["postgres"][0]["timeout"] == "10s"  # min(interval, 10s)


def test_config_show_masks_only_the_secret_parts(tmp_path: Path) -> None:
    """Passwords, keys and webhook paths are ***, while hosts stay readable, including a password-less DSN's."""
    path = tmp_path / "opsagent.yaml"
    path.write_text(CONFIG)
    proc = _cli("config", "show", "--config", str(path))
    assert proc.returncode == 0, proc.stderr
    for secret in SECRETS:
        assert secret not in proc.stdout + proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert shown["checks"]["postgres"][0]["dsn"] == "postgresql://app:***@db:5432/app"
    assert shown["checks"]["postgres"][1]["dsn"] == "postgresql://stats@replica.internal:5432/app?sslmode=require&password=***"
    assert shown["checks"]["redis"][0]["url"] == "redis://cache.internal:6379/0"
    assert shown["notify"]["slack_webhook_url"] == "https://hooks.slack.com/***"
    assert shown["notify"]["sentry_dsn"] == "https://***@o1.ingest.sentry.io/***"
    assert shown["notify"]["pagerduty_routing_key"] == "***"


def test_config_show_output_is_itself_a_valid_config(tmp_path: Path) -> None:
    """What `config show` prints passes `config validate`, so it can be saved and edited."""
    path = tmp_path / "opsagent.yaml"
    path.write_text(CONFIG)
    shown = tmp_path / "shown.yaml"
    shown.write_text(_cli("config", "show", "--config", str(path)).stdout)
    proc = _cli("config", "validate", "--config", str(shown))
    assert proc.returncode == 0, proc.stderr


def test_help_lists_examples_and_exit_codes() -> None:
    """`opsagent --help` shows usage examples and what each exit status means."""
    proc = _cli("--help")
    assert proc.returncode == 0
    assert "examples:" in proc.stdout and "opsagent runbook HighCPU" in proc.stdout
    assert "exit status:" in proc.stdout
    for line in ("  0  success", "  1  a check breached", "  2  usage or configuration error"):
        assert line in proc.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion_completes_commands_flags_and_runbooks(tmp_path: Path) -> None:
    """The bash script completes sub-commands, their flags and runbook names."""
    script = tmp_path / "opsagent.bash"
    proc = _cli("completion", "bash")
    assert proc.returncode == 0
    script.write_text(proc.stdout)

    def complete(*words: str) -> list[str]:
        line = " ".join(("opsagent", *words))
        run = subprocess.run(["bash", "-c", f'source "{script}"; COMP_WORDS=({line}); COMP_CWORD={len(words)}; '
                              '_shtab_opsagent; printf "%s\\n" "${COMPREPLY[@]}"'],
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
        return run.stdout.split()

    assert complete("ba") == ["backup"]
    assert complete("backup", "list", "--r") == ["--replica"]
    assert complete("runbook", "RedisM") == ["RedisMemoryHigh"]


def test_zsh_completion_and_unknown_shells() -> None:
    """`completion zsh` prints a compdef script naming the commands; an unknown shell is a usage error (exit 2)."""
    proc = _cli("completion", "zsh")
    assert proc.returncode == 0 and proc.stdout.startswith("#compdef opsagent")
    assert "backup" in proc.stdout and "RedisMemoryHigh" in proc.stdout
    fish = _cli("completion", "fish")
    assert fish.returncode == 2 and "invalid choice" in fish.stderr
