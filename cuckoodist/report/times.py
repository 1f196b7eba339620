# -*- test-case-name: tests.test_report -*-
"""
Turn the many time representations found in Cuckoo reports into the strings
CRITs shows.

Cuckoo 2.0 writes epoch floats, 1.x writes C{"%Y-%m-%d %H:%M:%S"} (analysis
times) or C{"%Y-%m-%d %H:%M:%S,mmm"} (process and call times), and any of them
may be C{null}, C{"none"} or garbage.  These functions never raise: a value
they cannot read becomes C{""}, because a missing time must not cost the
analyst the rest of the results.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

__all__ = ["format_date", "format_log_time"]

_DATE = re.compile(r"\A\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def _epoch(value: Any) -> float | None:
    """
    @return: C{value} as finite epoch seconds, or C{None} if it is not a
        number (C{bool} is not a number here, though Python says it is).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        return None
    return float(value)


def _gmtime(seconds: float) -> str | None:
    try:
        return time.strftime(_DATE_FORMAT, time.gmtime(math.floor(seconds)))
    except (OverflowError, OSError, ValueError):
        return None


def format_date(value: Any) -> str:
    """
    Format an analysis start or end time as C{"%Y-%m-%d %H:%M:%S"} UTC.

    @param value: an epoch number (2.0), a 1.x date string (kept as given,
        without any sub-second part), or anything else.
    @return: the formatted time, or C{""} when C{value} is not a time.
    """
    seconds = _epoch(value)
    if seconds is not None:
        return _gmtime(seconds) or ""
    if isinstance(value, str):
        match = _DATE.match(value)
        if match is not None:
            return match.group(0)
    return ""


def format_log_time(value: Any) -> str:
    """
    Format a process or call time like Cuckoo 1.x C{logtime()} does,
    C{"%Y-%m-%d %H:%M:%S,mmm"} UTC, so 1.x and 2.0 rows look alike.

    @param value: an epoch number (2.0), a string (1.x; kept as it is), or
        anything else.
    @return: the formatted time, or C{""} when C{value} is not a time.
    """
    if isinstance(value, str):
        return value
    seconds = _epoch(value)
    if seconds is None:
        return ""
    whole = math.floor(seconds)
    date = _gmtime(whole)
    if date is None:
        return ""
    millis = min(999, int((seconds - whole) * 1000))
    return "%s,%03d" % (date, millis)
