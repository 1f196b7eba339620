# -*- test-case-name: tests.test_report -*-
"""
The reference extractor: the same rows as L{cuckoodist.report.extract}, from
a report already decoded into Python objects.

It walks the decoded document with the same section walk as the streaming
readers (L{cuckoodist.report._walker.read_report}), through a L{Walker}
that has nothing to read: every value is already whole.  The tests hold
the streaming readers to its result, so what they check is the reading
(decoding, skipping, picking, the fallback), which is where the streaming
readers differ from C{json.load}.  It needs the whole report in memory, so
production code uses the streaming one.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from cuckoodist.report._walker import CallRow, Walker, read_report
from cuckoodist.report.rows import ExtractOptions, Extraction, RowCollector

__all__ = ["extract_results_plain"]


def _kind(value: Any) -> str:
    kind = type(value)
    return "{" if kind is dict else "[" if kind is list else "0"


class _Decoded(Walker):
    """
    The L{Walker} on a decoded value: the cursor is the value itself.
    """

    def __init__(self, value: Any) -> None:
        self._value = value

    def kind(self) -> str:
        return _kind(self._value)

    def entries(self) -> Iterator[str]:
        for key, value in self._value.items():
            self._value = value
            yield key

    def items(self) -> Iterator[str]:
        for value in self._value:
            self._value = value
            yield _kind(value)

    def skip(self) -> None:
        pass

    def whole(self, most: int) -> tuple[Any, bool]:
        return self._value, True

    def scalar(self) -> Any:
        return self._value

    def calls(self, kept: list, room: int, row: CallRow) -> int:
        dict_calls = [call for call in self._value if type(call) is dict]
        for call in dict_calls[:max(0, room - len(kept))]:
            kept.append(row(call, len(kept)))
        return len(dict_calls)


def extract_results_plain(doc: Mapping[str, Any], options: ExtractOptions) -> Extraction:
    """
    Extract CRITs rows from a decoded report.

    @param doc: the result of C{json.load} on a report.
    @param options: what to extract.
    @return: the rows, the detected format and the number of calls.
    """
    collector = RowCollector(options)
    walker = _Decoded(doc)
    if walker.kind() == "{":
        read_report(walker, collector)
    return collector.finish()
