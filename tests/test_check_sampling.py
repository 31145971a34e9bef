"""`opsagent check` of a rate kind (error_rate) samples a window or says it reports a lifetime ratio (SPEC §9.2)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsagent.config import Settings
from opsagent.runtime.agent import build_runners
from opsagent.runtime.oneshot import check_row, sample_round
from tests.test_check_error_rate import App

LIFETIME = {("/pay", "200"): 500.0, ("/pay", "500"): 500.0}  # the app's lifetime: half its requests failed


@pytest.fixture
def app() -> Iterator[App]:
    stand_in = App()
    try:
        yield stand_in
    finally:
        stand_in.close()


def _config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "opsagent.yaml"
    path.write_text(json.dumps({"agent": {"name": "cli"}, "checks": {"error_rate": [
        {"name": "api", "metrics_url": url, "window": "5m", "timeout": "2s"}]}}))
    return path


def _check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opsagent", "check", "error_rate", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60)


def test_check_samples_a_short_window_instead_of_quoting_the_lifetime_ratio(app: App, tmp_path: Path) -> None:
    """An app that failed half its requests long ago but none now is reported at 0 % over a sampled window, exit 0."""
    app.serve(LIFETIME)
    done = _check(_config(tmp_path, app.url), "--json", "--sample", "1s")
    assert done.returncode == 0, done.stdout + done.stderr
    [row] = json.loads(done.stdout)
    assert row["basis"] == "window" and row["value"] == 0.0 and row["state"] == "ok"


def test_without_sampling_a_lifetime_ratio_is_labelled_and_never_breached(app: App, tmp_path: Path) -> None:
    """With --sample 0s the 50 % lifetime ratio is shown as basis lifetime in JSON and table, state unknown, not breached."""
    app.serve(LIFETIME)
    config = _config(tmp_path, app.url)
    done = _check(config, "--json", "--sample", "0s")
    assert done.returncode == 0, done.stdout + done.stderr
    [row] = json.loads(done.stdout)
    assert row["basis"] == "lifetime" and row["value"] == 0.5 and row["state"] == "unknown"
    table = _check(config, "--sample", "0s")
    assert table.returncode == 0
    header, line = table.stdout.splitlines()[:2]
    assert "BASIS" in header and "lifetime" in line and "breached" not in line


def test_errors_during_the_sampled_window_are_breached(app: App) -> None:
    """5xx responses that happen between the two reads give the window's ratio, and that one is called breached."""
    app.serve(LIFETIME)
    settings = Settings(checks={"error_rate": [{"name": "api", "metrics_url": app.url, "window": "5m"}]})
    runners = build_runners(settings, ["error_rate"])

    def traffic_meanwhile(seconds: float) -> None:
        app.serve({("/pay", "200"): 590.0, ("/pay", "500"): 510.0})  # 100 more requests, 10 of them 5xx

    try:
        [result] = sample_round(runners, 5.0, wait=traffic_meanwhile)
    finally:
        for runner in runners.values():
            runner.close()
    row = check_row(settings, result)
    assert row.basis == "window" and abs((row.value or 0) - 0.10) < 1e-9 and row.state == "breached" and row.failed


def test_a_bad_sample_duration_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`check --sample soon` exits 2 and names the flag and the accepted form, before running any check."""
    from opsagent.cli import cmd_check

    settings = Settings(checks={"error_rate": [{"name": "api", "metrics_url": "http://127.0.0.1:1/metrics"}]})
    assert cmd_check(settings, ["error_rate"], True, "soon") == 2
    err = capsys.readouterr().err
    assert "--sample" in err and "duration" in err
