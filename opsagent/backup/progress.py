"""Progress of long work on the terminal: a bar on a TTY, plain lines otherwise.

Always on stderr, so ``--json`` keeps stdout to its one JSON document.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO


class Reporter(Protocol):
    def stage(self, text: str, total: int | None = None) -> None: ...
    def advance(self, done: int) -> None: ...
    def finish(self) -> None: ...


class NullReporter:
    def stage(self, text: str, total: int | None = None) -> None:
        pass

    def advance(self, done: int) -> None:
        pass

    def finish(self) -> None:
        pass


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class TerminalReporter:
    def __init__(self, stream: TextIO | None = None, interval: float = 2.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self._text = ""
        self._total: int | None = None
        self._last = 0.0
        self._open_bar = False

    def stage(self, text: str, total: int | None = None) -> None:
        self._end_bar()
        self._text, self._total, self._last = text, total, 0.0
        self.stream.write(f"{text}\n")
        self.stream.flush()

    def advance(self, done: int) -> None:
        now = time.monotonic()
        if self.tty:
            if now - self._last < 0.1:
                return
            self._last = now
            if self._total:
                frac = min(1.0, done / self._total)
                bar = "#" * int(frac * 30)
                line = f"\r  [{bar:<30}] {frac * 100:5.1f}%  {_human(done)} / {_human(self._total)}"
            else:
                line = f"\r  {_human(done)}"
            self.stream.write(line)
            self._open_bar = True
        else:
            if now - self._last < self.interval:
                return
            self._last = now
            pct = f" ({done * 100 // self._total}%)" if self._total else ""
            self.stream.write(f"  {self._text}: {_human(done)}{pct}\n")
        self.stream.flush()

    def _end_bar(self) -> None:
        if self._open_bar:
            self.stream.write("\n")
            self._open_bar = False

    def finish(self) -> None:
        self._end_bar()
        self.stream.flush()
