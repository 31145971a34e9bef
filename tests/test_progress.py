"""Progress of long work: a clean tqdm bar with rate and ETA on a terminal (driven through a pty), plain lines elsewhere."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

from opsagent.backup.progress import TerminalReporter

MiB = 2**20
ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import sys
    import structlog
    from opsagent.backup.progress import TerminalReporter
    from opsagent.telemetry import logging as agent_logging

    agent_logging.configure("info")
    reporter = TerminalReporter(sys.stderr, min_redraw=0)
    reporter.stage("restoring b1", 40 * 2**20)
    for i in range(1, 41):
        reporter.advance(i * 2**20)
        if i == 20:
            structlog.get_logger("probe").info("halfway_there", step=i)
    reporter.stage("backing up postgres main")
    for i in range(1, 4):
        reporter.advance(i * 2**20)
    reporter.finish()
""")


def _screen(raw: bytes) -> list[str]:
    """What a terminal shows after ``raw``: carriage returns overwrite, escape sequences dropped."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.decode("utf-8", "replace").replace("\r\n", "\n"))
    lines = []
    for line in text.split("\n"):
        cells: list[str] = []
        col = 0
        for ch in line:
            if ch == "\r":
                col = 0
                continue
            if col < len(cells):
                cells[col] = ch
            else:
                cells.append(ch)
            col += 1
        lines.append("".join(cells).rstrip())
    return [line for line in lines if line]


def _run_in_pty() -> bytes:
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 110, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=terminal, stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    out = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(controller)
    assert proc.wait(timeout=60) == 0, out[-2000:]
    return out


def test_terminal_bar_is_clean_shows_rate_and_eta_ends_at_100_and_keeps_log_lines_apart() -> None:
    """On a terminal the bar shows rate and ETA, a log line lands on its own line, nothing is left behind, and it ends at 100 %."""
    raw = _run_in_pty()
    screen = _screen(raw)
    log_lines = [line for line in screen if "halfway_there" in line]
    assert len(log_lines) == 1 and "%|" not in log_lines[0] and "MB" not in log_lines[0], screen
    bars = [line for line in screen if "%|" in line]
    assert bars and bars[-1].startswith("100%|") and "40.0M/40.0M" in bars[-1], screen
    assert all(line.endswith("/s]") for line in bars), screen  # no leftover characters after a redraw
    assert re.search(rb"\d+%\|.*<00:\d\d, [\d.]+[kMG]?B/s\]", raw), "no frame with an ETA and a rate"
    assert screen.index("restoring b1") < screen.index(log_lines[0]) < screen.index("backing up postgres main")
    assert "3.00M" in screen[-1] and "B/s]" in screen[-1], screen


def test_plain_lines_off_a_terminal_with_rate_eta_and_a_closing_line() -> None:
    """Off a terminal, progress is plain lines (no carriage returns) with rate and ETA, and each stage closes at 100 % with its time."""
    stream = io.StringIO()
    reporter = TerminalReporter(stream, interval=0)
    reporter.stage("replicating b1/dump", 4 * MiB)
    for i in range(1, 5):
        reporter.advance(i * MiB)
    reporter.finish()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0] == "replicating b1/dump"
    assert re.fullmatch(r"  replicating b1/dump: 1\.0 MiB of 4\.0 MiB \(25%\), [\d.]+ [KMGT]?i?B/s, ETA \d+s", lines[1]), lines
    assert re.fullmatch(r"  replicating b1/dump: done, 4\.0 MiB of 4\.0 MiB \(100%\), [\d.]+ [KMGT]?i?B/s, in [\d.]+s",
                        lines[-1]), lines
