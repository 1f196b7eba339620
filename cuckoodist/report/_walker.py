# -*- test-case-name: tests.test_report -*-
"""
The one walk over a report's sections, for every way of reading a report.

There are three readers: the text walk (L{cuckoodist.report._text}), the
event walk it falls back to (L{cuckoodist.report.extract}) and the plain
reader of a decoded document (L{cuckoodist.report.plain}).  They differ in
how they read a value, not in which values they read: each is a L{Walker},
a cursor on one JSON value with a few operations, and L{read_report} is
the only place that knows where the sections are (C{info}, C{signatures},
C{behavior.processes}, C{behavior.summary}, C{network}) and which piece of
each goes to which L{RowCollector} method.

A new section is therefore a branch here, its piece in L{rows.PIECES} and
its rows in L{rows.RowCollector}; no reader changes.

The cursor contract, shared by all readers: after L{Walker.entries} yields
a key, or L{Walker.items} an item, the cursor is on that member's value,
and the caller must consume the value (L{Walker.skip}, L{Walker.pick},
L{Walker.calls}, or walking into it) before asking for the next member.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Iterator

from cuckoodist.report.rows import PIECES, PROCESS_HEADER_KEYS, RowCollector

__all__ = ["DECLINED", "PIECE_TEXT", "PROCESS_TEXT", "Walker", "read_report"]

#: How long a piece (L{rows.PIECES}) may be, in characters of report text,
#: for a reader to decode it whole (L{Walker.whole}) rather than pick it.
PIECE_TEXT = 64 * 1024
#: The same for a process: a longer one is walked, so its calls go through
#: the reader's fast path (L{Walker.calls}) instead of being built.
PROCESS_TEXT = 4 * 1024

#: L{Walker.whole}'s answer when it declines.
DECLINED: tuple[Any, bool] = (None, False)

#: A row builder for calls: L{RowCollector.api_call}.
CallRow = Callable[..., Any]


class Walker:
    """
    A cursor on a JSON value, and the operations the section walk needs.

    L{kind}, L{entries}, L{items}, L{skip}, L{whole}, L{scalar} and L{calls}
    are each reader's own; L{pick}, built on them, is shared.
    """

    def kind(self) -> str:
        """
        @return: C{"{"} if the cursor is on an object, C{"["} if on an
            array, another string (never empty before the value) otherwise.
        """
        raise NotImplementedError()

    def entries(self) -> Iterator[str]:
        """
        Iterate over the keys of the object at the cursor, leaving the
        cursor on each one's value in turn.
        """
        raise NotImplementedError()

    def items(self) -> Iterator[str]:
        """
        Iterate over the items of the array at the cursor, giving each
        one's L{kind}, with the cursor on it.
        """
        raise NotImplementedError()

    def skip(self) -> None:
        """
        Step over the value at the cursor, in flat memory.
        """
        raise NotImplementedError()

    def whole(self, most: int) -> tuple[Any, bool]:
        """
        Decode the value at the cursor in one go, if its text is at most
        about C{most} characters (L{PIECE_TEXT}, L{PROCESS_TEXT}).

        @return: C{(value, True)} past the value, or L{DECLINED} with the
            cursor unchanged; a reader may decline any value.
        """
        raise NotImplementedError()

    def scalar(self) -> Any:
        """
        @return: the value at the cursor, which is neither an object nor an
            array, decoded (a string at most to C{rows.MAX_STRING + 1}
            characters, so the collector still cuts and counts it).
        """
        raise NotImplementedError()

    def calls(self, kept: list, room: int, row: CallRow) -> int:
        """
        Walk the call list at the cursor (a process's C{calls} array),
        turning its first dict calls into rows with C{row}.

        @param kept: the rows of the process's calls kept so far; this
            list's first calls are added, up to C{room} rows in all.
        @return: how many dict calls the list holds.
        """
        raise NotImplementedError()

    def pick(self, spec: Any) -> Any:
        """
        @return: the value at the cursor, whole if the reader decodes it in
            one go (its size is then bounded), otherwise with only the parts
            C{spec} names built (see L{rows.PIECES}) and the rest stepped
            over: a container where C{spec} wants a scalar becomes C{None}.
        """
        value, done = self.whole(PIECE_TEXT)
        if done:
            return value
        kind = self.kind()
        if kind == "{" and type(spec) is dict:
            picked = {}
            for key in self.entries():
                if key in spec:
                    picked[key] = self.pick(spec[key])
                else:
                    self.skip()
            return picked
        if kind == "[" and type(spec) is int:
            items = []
            for _ in self.items():
                if len(items) < spec:
                    items.append(self.pick(None))
                else:
                    self.skip()
            return items
        if kind == "{" or kind == "[":
            self.skip()
            return None
        return self.scalar()


def read_report(walker: Walker, collector: RowCollector) -> None:
    """
    Walk the report object at the cursor, handing its pieces to
    C{collector} in report order.
    """
    for key in walker.entries():
        collector.evidence.top_key(key)
        kind = walker.kind()
        if key == "info":
            collector.set_info(walker.pick(PIECES["info"]))
        elif key == "signatures" and kind == "[":
            _each(walker, collector.add_signature, PIECES["signature"])
        elif key == "behavior" and kind == "{":
            _behavior(walker, collector)
        elif key == "network" and kind == "{":
            _network(walker, collector)
        else:
            walker.skip()


def _each(walker: Walker, add: Callable[[Any], None], spec: Any) -> None:
    """
    Hand the items of the array at the cursor to C{add} one at a time, each
    picked by C{spec}, so a list of millions of pieces is never held.
    """
    for _ in walker.items():
        add(walker.pick(spec))


def _behavior(walker: Walker, collector: RowCollector) -> None:
    for key in walker.entries():
        kind = walker.kind()
        if key == "processes" and kind == "[":
            for item in walker.items():
                if item == "{":
                    _process(walker, collector)
                else:
                    walker.skip()
        elif key == "summary" and kind == "{":
            for name in walker.entries():
                if collector.wants_summary(name) and walker.kind() == "[":
                    # A pair is read as a short list.
                    _each(walker, partial(collector.add_summary_item, name),
                          PIECES["pair"] if collector.pairs(name) else None)
                else:
                    walker.skip()
        else:
            walker.skip()


def _process(walker: Walker, collector: RowCollector) -> None:
    """
    Hand one process to the collector: whole if it is small (a hostile list
    of millions of small processes then costs one C call each), otherwise
    its header fields and its calls through the reader's fast path.
    """
    process, done = walker.whole(PROCESS_TEXT)
    if done:
        collector.add_process(process)
        return
    header: dict[str, Any] = {}
    kept: list = []
    seen = 0
    for key in walker.entries():
        if key == "calls" and walker.kind() == "[":
            seen += walker.calls(kept, collector.call_room, collector.api_call)
        elif key in PROCESS_HEADER_KEYS:
            header[key] = walker.pick(None)
        else:
            walker.skip()
    collector.add_process_rows(header, kept, seen)


def _network(walker: Walker, collector: RowCollector) -> None:
    adders = {"hosts": (collector.add_host, PIECES["host"]),
              "domains": (collector.add_domain, PIECES["domain"]),
              "http": (collector.add_http, PIECES["http"])}
    for key in walker.entries():
        add = adders.get(key)
        if add is not None and walker.kind() == "[":
            _each(walker, *add)
        else:
            walker.skip()
