"""`opsagent check`: one round, a table or JSON, exit 0 / 1 / 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from opsagent_testing.servers import closed_port


def run(tmp_path: Path, config: dict[str, object], *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "opsagent", "check", *args, "--config", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_all_within_thresholds_exits_0(tmp_path: Path) -> None:
    """With every value under its threshold the command exits 0 and prints a table."""
    proc = run(tmp_path, {"alerts": {"HighMemory": {"threshold": 1.0}}}, "memory")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split()[:3] == ["CHECK", "TARGET", "VALUE"]
    assert "HighMemory" in proc.stdout
    row = proc.stdout.splitlines()[1].split()
    assert row[2].endswith("%") and row[3] == "100.00%"  # ratios are shown as the config writes them


def test_breached_threshold_exits_1_with_json_fields(tmp_path: Path) -> None:
    """A breached threshold exits 1; --json prints the SPEC fields for every check."""
    proc = run(tmp_path, {"alerts": {"HighMemory": {"threshold": "0.01%"}}}, "memory", "--json")
    assert proc.returncode == 1, proc.stderr
    rows = json.loads(proc.stdout)
    assert rows[0].keys() == {"check", "target", "value", "threshold", "alert", "state", "up", "error"}
    assert rows[0]["state"] == "breached" and rows[0]["alert"] == "HighMemory"


def test_unreachable_target_exits_1(tmp_path: Path) -> None:
    """An unreachable target is reported as down with its error, exit 1."""
    proc = run(tmp_path, {"checks": {"redis": [{"name": "cache", "url": f"redis://127.0.0.1:{closed_port()}/0"}]}},
               "cache", "--json")
    assert proc.returncode == 1
    (row,) = json.loads(proc.stdout)
    assert row["up"] is False and row["state"] == "down" and row["error"]


def test_unknown_name_exits_2(tmp_path: Path) -> None:
    """Naming a target that is not configured is a usage error (exit 2) listing the known ones."""
    proc = run(tmp_path, {}, "nosuch")
    assert proc.returncode == 2 and "memory:task" in proc.stderr


def test_usage_error_exits_2() -> None:
    """An unknown sub-command exits 2 with usage, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "opsagent", "frobnicate"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_verdict_covers_alarms_on_detail_fields() -> None:
    """A kind's second alarm (comparing a details field) breaches the verdict too, and is named."""
    from opsagent.alerts.verdict import verdict
    from opsagent.config import load_config
    from opsagent.runtime.results import CheckResult

    settings = load_config(None, env={})
    ok = CheckResult("sqs", "jobs", True, 5.0, 0.0, 0.1, details={"dlq_visible_messages": 0})
    dlq = CheckResult("sqs", "jobs", True, 5.0, 0.0, 0.1, details={"dlq_visible_messages": 3})
    assert verdict(settings, ok).state == "ok" and verdict(settings, ok).alert == "SQSMessageAgeHigh"
    v = verdict(settings, dlq)
    assert v.state == "breached" and v.alert == "SQSDeadLetterQueueNotEmpty"
