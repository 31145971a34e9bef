"""Hostile configuration values and files end in exit 2 naming the key or file, never a traceback, a hang or a crash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from opsagent.config import ConfigError, load_config

NON_FINITE = [
    ("alerts: {TargetDown: {for: .nan}}", "alerts.TargetDown.for"),
    ("notify: {timeout: .nan}", "notify.timeout"),
    ("backup: {rpo: .nan}", "backup.rpo"),
    ("checks: {cpu: {interval: .inf}}", "checks.cpu.interval"),
    ("checks: {memory: {interval: 1e300}}", "checks.memory.interval"),
    ("notify: {repeat_interval: 99999999999999999999999999999999d}", "notify.repeat_interval"),
    ("alerts: {PgBouncerClientsWaiting: {threshold: .inf}}", "alerts.PgBouncerClientsWaiting.threshold"),
]


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return info.value.problems


@pytest.mark.parametrize(("text", "key"), NON_FINITE)
def test_non_finite_and_huge_durations_are_config_errors(tmp_path: Path, text: str, key: str) -> None:
    """NaN, infinite and absurdly long durations (and an infinite threshold) are refused, naming the key."""
    path = tmp_path / "opsagent.yaml"
    path.write_text(text + "\n")
    problems = _problems(path)
    assert any(p.startswith(key) for p in problems), problems


def test_run_exits_2_on_an_infinite_interval_without_a_traceback(tmp_path: Path) -> None:
    """`run` exits 2 on `interval: .inf` with the key named, starting nothing (it was an OverflowError traceback)."""
    path = tmp_path / "opsagent.yaml"
    path.write_text(f"agent: {{state_dir: {tmp_path / 'state'}}}\nchecks: {{cpu: {{interval: .inf}}}}\n")
    proc = subprocess.run([sys.executable, "-m", "opsagent", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "checks.cpu.interval" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "state").exists()


def test_config_from_a_device_is_refused_without_reading_it() -> None:
    """`--config /dev/zero` is refused as not a regular file instead of reading until memory runs out."""
    problems = _problems(Path("/dev/zero"))
    assert problems == ["/dev/zero: not a regular file (a directory, FIFO or device); expected a YAML file"]


def test_config_from_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    """A FIFO named as config is refused at once (opening it used to block forever)."""
    fifo = tmp_path / "opsagent.yaml"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "opsagent", "config", "validate", "--config", str(fifo)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not a regular file" in proc.stderr


def test_config_directory_and_oversized_file_are_refused(tmp_path: Path) -> None:
    """A directory, or a file over the 1 MiB cap, is a config error naming the path."""
    assert "not a regular file" in _problems(tmp_path)[0]
    big = tmp_path / "big.yaml"
    big.write_text("agent: {name: x}\n" + "# padding\n" * 120_000)
    assert _problems(big) == [f"{big}: larger than 1024 KiB; expected a YAML config file"]


def test_state_dir_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    """A state_dir that is a file, or lies under one, fails validation naming agent.state_dir (run used to die later)."""
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    for state_dir in (blocker, blocker / "sub"):
        path = tmp_path / "opsagent.yaml"
        path.write_text(f"agent: {{state_dir: '{state_dir}'}}\n")
        problems = _problems(path)
        assert len(problems) == 1 and problems[0].startswith("agent.state_dir:") and "file" in problems[0], problems
    fine = tmp_path / "opsagent.yaml"
    fine.write_text(f"agent: {{state_dir: '{tmp_path / 'new' / 'state'}'}}\n")
    assert load_config(fine, env={}).agent.state_dir.endswith("new/state")
