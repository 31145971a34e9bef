"""Profiles taken during the run, so RESULTS.md shows where time goes, not only how much.

``py-spy`` samples the running agent from outside (``--nonblocking``: the agent
is never paused, so its CPU figure is not disturbed — py-spy's default mode,
which stops every thread per sample, multiplied the agent's CPU by 20 here;
``--gil``: only the thread running Python counts); ``pyinstrument`` profiles
one cold start's main thread (imports, config, first round).
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import harness as h


@dataclass
class Profile:
    title: str
    lines: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        return "\n".join([f"### {self.title}", "", "```", *self.lines, "```", ""])


class PySpy:
    """``py-spy record`` attached to a pid for a fixed time, raw (collapsed) output."""

    def __init__(self, pid: int, seconds: float, out: Path, rate: int = 250) -> None:
        self.out = out
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.proc = subprocess.Popen(
            [exe, "record", "--nonblocking", "--gil", "--rate", str(rate), "--format", "raw",
             "--duration", str(int(seconds)), "--pid", str(pid), "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def summary(self, title: str, top: int = 15) -> Profile:
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if not self.out.exists():
            return Profile(title, ["py-spy wrote no profile (is ptrace allowed?)"])
        own: collections.Counter[str] = collections.Counter()
        inclusive: collections.Counter[str] = collections.Counter()
        total = 0
        for line in self.out.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [f for f in stack.split(";") if not f.startswith("thread ") and not f.startswith("process ")]
            if not frames or any(frames[-1].startswith(w) for w in _WAITS):
                continue  # blocked in a lock/queue/select that py-spy's idle heuristic did not recognise
            total += n
            own[_short(frames[-1])] += n
            for frame in {_short(f) for f in frames}:
                inclusive[frame] += n
        lines = [f"{total} samples of the thread holding the GIL at 250 Hz (Python CPU; waits are left out)", "",
                 "self (where CPU is spent):"]
        lines += [f"  {n / total:6.1%}  {name}" for name, n in own.most_common(top)] if total else []
        lines += ["", "inclusive (what it was spent for):"]
        lines += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)] if total else []
        return Profile(title, lines)


# Leaf frames that are a thread waiting (lock, queue, selector), not running.
_WAITS = ("Condition.wait ", "_worker (", "TargetRunner._serve (", "_PollLikeSelector.select ", "Event.wait ",
          "SimpleQueue.get", "Thread.join ")


def _short(frame: str) -> str:
    """``func (path/to/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py:12)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})" if where else name


def pyinstrument_start(workdir: Path, config_path: Path, port: int, top_lines: int = 45) -> Profile:
    """One cold ``opsagent run`` under pyinstrument until /readyz, then SIGINT; the text tree's top."""
    out = workdir / "start-profile.txt"
    proc = h.spawn("pyinstrument-start", [sys.executable, "-m", "pyinstrument", "--renderer", "text", "--no-color",
                                          "--outfile", str(out), "-m", "opsagent", "run", "--config", str(config_path)],
                   workdir)
    try:
        h.wait_http(port, "/readyz", 60, proc)
    finally:
        proc.popen.send_signal(signal.SIGINT)
        try:
            proc.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
    deadline = time.monotonic() + 5
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not out.exists():
        return Profile("Cold start (pyinstrument)", ["pyinstrument wrote no profile", proc.tail()])
    text = [line.rstrip() for line in out.read_text(errors="replace").splitlines() if line.strip()]
    return Profile("Cold start to /readyz, main thread (pyinstrument, wall clock; the daemon then idles in "
                   "Event.wait until SIGINT)", text[:top_lines])
