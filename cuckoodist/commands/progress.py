# -*- test-case-name: tests.test_progress -*-
"""
How far a command that works through many items has got, on stderr.

C{submit} and C{resubmit} can take minutes over thousands of files, and a
silent command looks hung.  On a terminal this draws one line that is
redrawn in place: a bar, the count, the rate and the time left.  When
stderr is a file or a pipe (cron, a CI log, C{2>log}), redrawing would
fill it with carriage returns, so it writes a plain line now and then
instead, and a summary at the end after such lines; a run too short for
any writes nothing there, so that a failing command's stderr is still its
one line of error.  Stdout is left to the command's own
lines, which scripts read; L{Progress.echo} prints one of them without
tearing the bar.

The clock is injected (the reactor's C{seconds}), so tests drive the
rate, the time left and the pace of the plain lines with a
L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Callable

__all__ = ["Progress", "duration"]

#: Seconds between two redraws of the bar on a terminal.
REDRAW_INTERVAL = 0.1
#: Seconds between two plain lines when stderr is no terminal.
LINE_INTERVAL = 10.0
#: Terminal width assumed when it cannot be read (a pty nobody sized).
_DEFAULT_COLUMNS = 80
#: ANSI: carriage return, then erase to the end of the line.
_ERASE = "\r\x1b[K"


def duration(seconds: float) -> str:
    """
    C{seconds} as C{M:SS}, or C{H:MM:SS} from an hour on.
    """
    whole = max(0, int(round(seconds)))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _columns(stream: IO[str]) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return _DEFAULT_COLUMNS
    return columns or _DEFAULT_COLUMNS


class Progress:
    """
    Progress over a known number of items.

    @ivar done: items done so far.
    @ivar total: items there are.
    """

    def __init__(
        self,
        total: int,
        label: str,
        now: Callable[[], float],
        stream: IO[str] | None = None,
        *,
        enabled: bool = True,
        tty: bool | None = None,
        columns: int | None = None,
        line_interval: float = LINE_INTERVAL,
    ) -> None:
        """
        @param label: what is counted, e.g. C{submitted}; starts each line.
        @param now: the clock, in seconds.
        @param stream: where to write; C{sys.stderr} by default.
        @param enabled: C{False} (C{--no-progress}) writes nothing at all.
        @param tty: whether to draw a bar; by default whether C{stream} is
            a terminal.
        @param columns: the bar's line width; by default the terminal's.
        @param line_interval: seconds between plain lines off a terminal.
        """
        self.total = total
        self.done = 0
        self._label = label
        self._now = now
        self._stream = sys.stderr if stream is None else stream
        self._enabled = enabled and total > 0
        self._tty = _is_tty(self._stream) if tty is None else tty
        self._columns = columns
        self._line_interval = line_interval
        self._started = now()
        self._last_drawn: float | None = None
        self._drawn = False
        self._finished = False

    def advance(self, count: int = 1) -> None:
        """
        Count C{count} more items done, and show it when it is time to.
        """
        self.done = min(self.total, self.done + count)
        if not self._enabled or self._finished:
            return
        now = self._now()
        if self._tty:
            if self.done == self.total or self._last_drawn is None or now - self._last_drawn >= REDRAW_INTERVAL:
                self._draw(now)
        elif self.done < self.total and now - (self._last_drawn or self._started) >= self._line_interval:
            self._write(self._plain_line(now) + "\n")
            self._last_drawn = now

    def echo(self, line: str, out: IO[str]) -> None:
        """
        Print C{line} to C{out} (the command's stdout) with the bar moved
        out of its way and drawn again below it, so that a terminal
        showing both streams shows whole lines.
        """
        hidden = self._drawn
        if hidden:
            self._write(_ERASE)
            self._drawn = False
        print(line, file=out, flush=True)
        if hidden:
            self._draw(self._now())

    def finish(self) -> None:
        """
        End the display: the bar's last state on its own line, or a plain
        summary line closing the plain lines written before (none when
        there were none).  Further calls do nothing.
        """
        if not self._enabled or self._finished:
            return
        self._finished = True
        now = self._now()
        if self._tty:
            self._draw(now)
            self._write("\n")
            self._drawn = False
        elif self._last_drawn is not None:
            elapsed = now - self._started
            self._write(f"{self._label} {self.done}/{self.total} in {duration(elapsed)}{self._rate(elapsed)}\n")

    # -- rendering ----------------------------------------------------------

    def _rate(self, elapsed: float) -> str:
        return f" ({self.done / elapsed:.1f}/s)" if elapsed > 0 and self.done else ""

    def _eta(self, elapsed: float) -> str:
        if self.done >= self.total:
            return "done"
        if elapsed <= 0 or not self.done:
            return "ETA ?"
        return "ETA " + duration((self.total - self.done) * elapsed / self.done)

    def _plain_line(self, now: float) -> str:
        elapsed = now - self._started
        return f"{self._label} {self.done}/{self.total}{self._rate(elapsed)}, {self._eta(elapsed)}"

    def _bar_line(self, now: float) -> str:
        elapsed = now - self._started
        rate = f"{self.done / elapsed:.1f}/s" if elapsed > 0 else "-/s"
        tail = f" {self.done}/{self.total} {rate} {self._eta(elapsed)}"
        columns = self._columns or _columns(self._stream)
        # Leave the last column free: writing into it wraps some terminals.
        width = max(10, columns - 1 - len(self._label) - 3 - len(tail))
        filled = width * self.done // self.total
        return f"{self._label} [{'#' * filled}{'.' * (width - filled)}]{tail}"

    def _draw(self, now: float) -> None:
        self._write(_ERASE + self._bar_line(now))
        self._drawn = True
        self._last_drawn = now

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            # A closed or broken stderr must not stop the work it reports on.
            self._enabled = False
