"""Runbooks: one per alarm, none for unknown alarms, listed and printed by `opsagent runbook`."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from opsagent.alerts.catalog import ALARMS
from opsagent.runbooks import list_runbooks, read_runbook, runbook_dir

# Runbooks that are procedures, not alarms (and the watcher's alerts, which are not catalogue alarms).
PROCEDURES = {"DisasterRecovery", "OpsagentDown", "Watchdog"}
SECTIONS = ("## What it means", "## Impact", "## First five minutes", "## Remediation", "scalat")


def test_every_alarm_has_a_runbook() -> None:
    """Each alarm in the catalogue has runbooks/<Alarm>.md, so every page's runbook link resolves."""
    missing = [name for name in ALARMS if not (runbook_dir() / ALARMS[name].runbook).is_file()]
    assert missing == []


def test_no_runbook_names_an_unknown_alarm() -> None:
    """Every runbook file is an alarm of the catalogue or a known procedure (a typo would hide a runbook)."""
    unknown = [name for name in list_runbooks() if name not in ALARMS and name not in PROCEDURES]
    assert unknown == []
    assert "README" not in list_runbooks()


@pytest.mark.parametrize("alarm", sorted(ALARMS))
def test_alarm_runbook_covers_what_a_responder_needs(alarm: str) -> None:
    """Each alarm runbook is titled with its alarm and explains meaning, impact, first steps with commands, fix, escalation."""
    text = read_runbook(alarm)
    assert text.splitlines()[0] == f"# {alarm}"
    for section in SECTIONS:
        assert section in text, f"{alarm}.md lacks {section!r}"
    first_steps = text.split("## First five minutes", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"```(sh|bash)\n.*\b(psql|redis-cli|aws|opsagent|curl)\b", first_steps, re.S), \
        f"{alarm}.md gives no commands to run in the first five minutes"


def test_read_runbook_accepts_file_names_and_any_case_and_rejects_unknown() -> None:
    """`opsagent runbook highcpu` and `HighCPU.md` print the same page; an unknown name is an error."""
    assert read_runbook("highcpu") == read_runbook("HighCPU.md") == read_runbook("HighCPU")
    with pytest.raises(KeyError):
        read_runbook("NoSuchAlarm")
    with pytest.raises(KeyError):
        read_runbook("../pyproject")


def test_runbook_command_lists_and_prints() -> None:
    """`opsagent runbook` lists every alarm's runbook; `opsagent runbook TargetDown` prints it; unknown exits 2."""
    run = [sys.executable, "-m", "opsagent", "runbook"]
    listing = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert set(ALARMS) <= set(listing.stdout.split())
    page = subprocess.run([*run, "TargetDown"], capture_output=True, text=True, timeout=60)
    assert page.returncode == 0 and page.stdout.startswith("# TargetDown")
    bad = subprocess.run([*run, "Nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no runbook" in bad.stderr
