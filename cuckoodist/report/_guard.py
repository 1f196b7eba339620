# -*- test-case-name: tests.test_report_bounds -*-
"""
Bounds on what the readers of L{cuckoodist.report} may be made to hold, and
the way a caller stops them.

The event walk (ijson) cannot skip what it is not asked for: yajl buffers a
whole string, number or key before it hands it over, and ijson keeps the
prefix of every open container (C{"behavior.processes.item.calls.item..."}),
so nesting costs memory in the square of its depth: 200,000 nested arrays in
a 400 KB report took 23.8 GB.  L{Guard} looks at the bytes before ijson
does and refuses, as a L{PermanentError}, a report that nests deeper than
L{GUARD_DEPTH} or holds a string longer than L{GUARD_STRING}.  It works a
read block at a time with C{re} and C{bytes} methods, so it costs a few
milliseconds per megabyte and no Python per token.

The text walk needs no guard: it steps over anything too deep or too long
in flat memory (see L{cuckoodist.report._text}), and the event walk only
runs when the text walk declines a report, which in practice means the
report is not valid JSON and the event walk is there to word the error.
"""

from __future__ import annotations

import re
import threading

from cuckoodist.errors import PermanentError

__all__ = ["Cancelled", "Guard", "GUARD_DEPTH", "GUARD_STRING", "check_stop"]

#: The deepest nesting the event walk is given.  Real reports nest about
#: ten levels; at 32, ijson's prefixes (the sum of the keys above each open
#: container) stay under 32 MB even with every key as long as
#: L{GUARD_STRING}.
GUARD_DEPTH = 32
#: The longest string (in bytes, quotes excluded) the event walk is given.
GUARD_STRING = 64 * 1024


class Cancelled(Exception):
    """
    The caller asked the extraction to stop (the stage is shutting down).
    """


def check_stop(stop: threading.Event | None) -> None:
    """
    @raise Cancelled: if C{stop} is set.
    """
    if stop is not None and stop.is_set():
        raise Cancelled()


#: A complete JSON string.
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
#: Braces become brackets; everything else but brackets goes.
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


class Guard:
    """
    Watches the bytes of one report as they are read, in order.

    @ivar depth: the nesting depth at the end of the bytes seen (not
        counting brackets inside strings).
    """

    def __init__(self, max_depth: int = GUARD_DEPTH,
                 max_string: int = GUARD_STRING) -> None:
        self._max_depth = max_depth
        self._max_string = max_string
        self._open = b""  # the start of a string the last block cut
        self.depth = 0

    def feed(self, block: bytes) -> None:
        """
        Check the next block.

        @raise PermanentError: if the report, so far, breaks a bound.
        """
        data = self._open + block
        outside = _STRING.sub(b"", data)
        cut = outside.find(b'"')
        if cut >= 0:
            # What follows an unclosed quote is that string's text so far:
            # a later quote would have closed it.
            self._open = outside[cut:]
            outside = outside[:cut]
        else:
            self._open = b""
        self._brackets(outside.translate(_BRACKETS, _NOT_BRACKETS))
        # Without escaped backslashes and quotes, no string holds a quote,
        # so the longest run between quotes bounds every string.  (A long
        # run outside strings, such as a 64 KB list of numbers, is refused
        # too: this path is for reports the text walk already declined.)
        longest = max(map(len, data.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')))
        if longest > self._max_string:
            raise PermanentError(
                f"report holds a string (or a run of values without one) longer than "
                f"{self._max_string} bytes where it cannot be cut "
                "(the report is also not plain valid JSON)")

    def _brackets(self, brackets: bytes) -> None:
        """
        Track the depth through C{brackets} (C{[} and C{]} only).  Removing
        every C{[]} pair once removes one level of nesting; once none is
        left, what remains is some closers, then some openers.  The deepest
        point of the block is at most the higher of its two ends plus the
        levels removed.
        """
        levels = 0
        while levels <= self._max_depth:
            shorter = brackets.replace(b"[]", b"")
            if len(shorter) == len(brackets):
                break
            brackets = shorter
            levels += 1
        closers = len(brackets) - len(brackets.lstrip(b"]"))
        openers = len(brackets) - closers
        end = max(0, self.depth - closers) + openers
        if max(self.depth, end) + levels > self._max_depth:
            raise PermanentError(
                f"report nests deeper than {self._max_depth} levels "
                "where it cannot be skipped (the report is also not plain valid JSON)")
        self.depth = end
