"""One progress view per job: done of total, rate, time left, errors so far.

In a terminal the view redraws one line in place; elsewhere (``ray job submit`` logs, CI) it
prints a line every ``every_s`` seconds, and always at the end, with the same figures. The CLI
turns views on (``enable``); a library caller that did not gets no output at all, so the jobs'
functions print nothing of their own.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_enabled = False


def enable(on: bool = True) -> None:
    global _enabled
    _enabled = on


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class Progress:
    """``with Progress("generate, round 0", total=96, unit="items") as p: p.update(done=8, errors=1)``."""

    def __init__(self, label: str, total: int, unit: str = "items", stream: TextIO | None = None,
                 every_s: float = 10.0, enabled: bool | None = None, clock=time.monotonic):
        self.label, self.total, self.unit = label, max(0, int(total)), unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _enabled if enabled is None else enabled
        self.every_s, self.clock = every_s, clock
        self.done = self.errors = 0
        self.started = self._shown = clock()
        self._unshown = False  # figures changed since the last line printed
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __enter__(self) -> Progress:
        self._show(force=True)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, done: int = 0, errors: int = 0) -> None:
        """Add ``done`` finished units, ``errors`` of them failed."""
        self.done += int(done)
        self.errors += int(errors)
        self._unshown = True
        self._show()

    def line(self) -> str:
        elapsed = self.clock() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 and self.total > self.done else None
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = f", {_duration(left)} left" if left is not None else ""
        return (f"{self.label}: {self.done}/{self.total} {self.unit}{share}, {rate:.2f} {self.unit}/s{eta}, "
                f"{self.errors} error{'s' if self.errors != 1 else ''}, {_duration(elapsed)}")

    def _show(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if self.tty:
            self.stream.write("\r\033[K" + self.line())
        elif force or now - self._shown >= self.every_s:
            self.stream.write(self.line() + "\n")
        else:
            return
        self._shown, self._unshown = now, False
        self.stream.flush()

    def close(self) -> None:
        """The last line: in a terminal the line redrawn and ended; elsewhere the figures, unless
        the line just printed already holds them."""
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K" + self.line() + "\n")
        elif self._unshown:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
        self.enabled = False
