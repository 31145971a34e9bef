"""Progress of long work on the terminal: a tqdm bar on a TTY, plain lines otherwise.

Always on stderr, so ``--json`` keeps stdout to its one JSON document. On a terminal the bar
shows bytes, rate and ETA (tqdm), is redrawn in place without leftover characters, and is
drawn once more when its stage ends, so a finished stage reads 100 %. Log lines written while
a bar is open go through :func:`opsagent.telemetry.logging.configure`'s bar-aware stream
(tqdm's ``external_write_mode``), so they land on their own line above the bar. Off a terminal,
a plain line every ``interval`` seconds and one closing line per stage with size, time and rate.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Never, Protocol, TextIO

from opsagent.units import format_bytes

if TYPE_CHECKING:
    from tqdm import tqdm


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


class TerminalReporter:
    """One stage at a time: ``stage`` opens it, ``advance(done)`` reports bytes so far, the next
    ``stage`` or ``finish`` closes it."""

    def __init__(self, stream: TextIO | None = None, interval: float = 2.0, min_redraw: float = 0.1) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self.min_redraw = min_redraw
        self._bar: tqdm[Never] | None = None
        self._text = ""
        self._total: int | None = None
        self._done = 0
        self._started = 0.0
        self._last_line = 0.0

    def stage(self, text: str, total: int | None = None) -> None:
        self._close()
        self._text, self._total, self._done = text, total, 0
        self._started = self._last_line = time.monotonic()
        if self.tty:
            from tqdm import tqdm  # only on a terminal: the daemon never draws a bar

            tqdm.write(text, file=self.stream)
            self._bar = tqdm(total=total or None, unit="B", unit_scale=True, unit_divisor=1024, file=self.stream,
                             mininterval=self.min_redraw, dynamic_ncols=True, leave=True)
        else:
            self.stream.write(f"{text}\n")
            self.stream.flush()

    def advance(self, done: int) -> None:
        if done < self._done:
            return  # progress never goes backwards on screen
        step, self._done = done - self._done, done
        if self._bar is not None:
            if self._total is not None and done > self._total:
                self._bar.total = done  # the estimate was short: never show more than 100 %
            self._bar.update(step)
            return
        now = time.monotonic()
        if not self.tty and now - self._last_line >= self.interval:
            self._last_line = now
            self.stream.write(f"  {self._text}: {self._summary(now)}\n")
            self.stream.flush()

    def _summary(self, now: float, finished: bool = False) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = self._done / elapsed
        parts = [format_bytes(self._done)]
        if self._total:
            parts[0] += f" of {format_bytes(self._total)} ({min(100, self._done * 100 // self._total)}%)"
        parts.append(f"{format_bytes(rate)}/s")
        if finished:
            parts.append(f"in {elapsed:.1f}s")
        elif self._total and rate > 0:
            parts.append(f"ETA {max(0.0, (self._total - self._done) / rate):.0f}s")
        return ", ".join(parts)

    def _close(self) -> None:
        if self._bar is not None:
            bar, self._bar = self._bar, None
            if self._total is not None and self._done >= self._total:
                bar.total = bar.n  # complete: the last frame reads 100 %
            bar.close()  # draws the final state, then a newline
        elif not self.tty and self._text and self._done:
            self.stream.write(f"  {self._text}: done, {self._summary(time.monotonic(), finished=True)}\n")
        self._text = ""
        self.stream.flush()

    def finish(self) -> None:
        self._close()
