# -*- test-case-name: tests.test_report -*-
"""
The unit of output: one row of a CRITs analysis result.

CRITs stores each result as C{{"subtype", "result", **extra}} and renders the
rows of one subtype as a table whose columns come from the first row's keys,
so every producer of a subtype must emit the same C{extra} keys.
"""

from typing import Any, Mapping

import attrs

__all__ = ["ResultRow"]


@attrs.frozen
class ResultRow:
    """
    One CRITs result.

    @ivar subtype: the CRITs result subtype, e.g. C{"signature"}.
    @ivar result: the cell shown as the row's main value.
    @ivar extra: further columns; values are C{str}, C{int}, C{float},
        C{bool}, C{None}, or lists/dicts of those.  The CRITs encoder turns
        them into a Python literal.
    """

    subtype: str
    result: str
    extra: Mapping[str, Any] = attrs.field(factory=dict)
