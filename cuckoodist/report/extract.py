# -*- test-case-name: tests.test_report -*-
"""
Extract CRITs rows from a Cuckoo report of any size in flat memory.

Real reports reach hundreds of megabytes, nearly all of it
C{behavior.processes[].calls}; C{json.load} needs about ten times the file
size in RAM.  This module reads the report once with ijson's C (yajl2)
parser and never builds more than one small piece at a time.

How it stays fast: a Python loop over every parser event runs at roughly
C{json.load}'s speed, not faster (see C{docs/performance.md}).  So Python
only walks the few events outside the bulky parts.  Whenever a subtree is
not wanted, or is a call list, the loop hands the shared event iterator to
C-implemented consumers that stop at the subtree's own end event::

    takewhile(partial(ne, end_event), events)

(C{end_event} is e.g. C{("behavior.processes.item.calls", "end_array",
None)}; nested events always carry a longer prefix, so the first equal event
is the subtree's end).  Skipping drains that with C{deque(maxlen=0)}, counting
calls is C{operator.countOf(..., start_call)}, and building a value (a signature,
an C{info} dict, the first kept calls) feeds it to ijson's C
C{items_basecoro}.  None of these run Python code per event.  They work in
slices of C{_CHUNK} events, because a long C loop never lets the GIL go and
would stall the reactor thread (measured: 60 to 100 ms without slices; with
them, about what a pure-Python busy thread causes).

That event walk is now the second path.  L{extract_results} first tries
the text walk of L{cuckoodist.report._text}, which makes no events at all
(a call past the cap costs one C{re} match) and runs about twice as fast;
when the file is anything but plain valid JSON, or the text walk meets a
shape it will not build in one short C call, the file is rewound and read
again by the event walk, which gives the rows or words the error.  Both
walks, and the reference reader, go through the same section walk
(L{cuckoodist.report._walker.read_report}); this module only supplies the
L{Walker} operations on events (L{_Events}).

The event walk cannot skip what it is not asked for (yajl buffers whole
strings, ijson keeps a prefix per open container, so nesting costs memory in
the square of its depth); a L{Guard} checks each block before ijson sees
it and refuses a report past its bounds.  Kept pieces are built field by
field (L{_walker.Walker.pick}, L{cuckoodist.report.rows.PIECES}) and lists of them item by
item, so a piece of millions of small values is walked, not built; a kept
call, which C builds whole, is refused past L{_CALL_BYTES_MAX} of report
text (the text walk, which reads such a call, bounds it instead).

The function is synchronous and keeps no state outside its own call, so the
stage runs it in a worker thread on a spooled temporary file.  It checks a
stop flag at every read, so the thread ends soon after the stage asks.
"""

from __future__ import annotations

from collections import deque
from functools import partial
from operator import countOf, ne
from itertools import islice, takewhile
import threading
from typing import Any, BinaryIO, Iterator

import ijson
from ijson.backends import yajl2_c
from ijson.utils import sendable_list

from cuckoodist.errors import PermanentError
from cuckoodist.report._guard import Cancelled, Guard, check_stop
from cuckoodist.report._text import Fallback, walk
from cuckoodist.report._walker import DECLINED, CallRow, Walker, read_report
from cuckoodist.report.rows import ExtractOptions, Extraction, RowCollector

__all__ = ["Cancelled", "extract_results"]

Event = tuple[str, str, Any]

_CALLS = "behavior.processes.item.calls"
_CALL = _CALLS + ".item"
_START_CALL: Event = (_CALL, "start_map", None)
_END_CALLS: Event = (_CALLS, "end_array", None)
_NOT_END_CALLS = partial(ne, _END_CALLS)

#: Bytes ijson parses per C call: small enough that its pending events stay
#: few (larger buffers keep more tuples alive and cost the garbage collector
#: more: 512 KiB was 35% slower on a 100 MB report).
_BUFFER_SIZE = 64 * 1024
#: Bytes read from the file per system call.  Every read releases and at
#: once retakes the GIL, and CPython counts that as a switch, so a reactor
#: thread waiting for the GIL never gets to force one: with a read every
#: ~1.3 ms (64 KiB) it starved for up to a second.  At 1 MiB per read the
#: forced switch happens and the reactor's lateness stays under 20 ms.
_READ_SIZE = 1024 * 1024


class _BlockReader:
    """
    Serves ijson's small reads from large file reads (see L{_READ_SIZE}).
    Slicing bytes in memory never releases the GIL.  Each block passes the
    L{Guard} and the stop flag first.
    """

    def __init__(self, fp: BinaryIO, stop: threading.Event | None = None) -> None:
        self._fp = fp
        self._stop = stop
        self._guard = Guard()
        self._block = b""
        self._pos = 0
        self.served = 0

    def read(self, size: int) -> bytes:
        if self._pos >= len(self._block):
            check_stop(self._stop)
            self._block = self._fp.read(_READ_SIZE)
            self._guard.feed(self._block)
            self._pos = 0
        data = self._block[self._pos:self._pos + size]
        self._pos += len(data)
        self.served += len(data)
        return data
#: The most report bytes one kept call (or any item of a call list) may
#: span while C builds it.  A call of tiny values costs up to about twenty
#: times its text in objects; real calls are well under a kilobyte.
_CALL_BYTES_MAX = 2 * 1024 * 1024


#: Events handled per C loop: about a millisecond, between which the GIL can
#: pass to the reactor thread and the call cap is checked.
_CHUNK = 1 << 14

_ENDS = {"start_map": "end_map", "start_array": "end_array"}
#: An event's L{Walker.kind}.
_KINDS = {"start_map": "{", "start_array": "[", "string": '"'}


_DONE = object()


def _drain(events: Iterator[Event]) -> None:
    """
    Consume C{events} in C, in slices: a long C loop never checks the GIL
    switch request, so it would stall the reactor thread for its whole
    duration.  Each slice is about a millisecond of work.
    """
    while True:
        deque(islice(events, _CHUNK), maxlen=0)
        if next(events, _DONE) is _DONE:
            return


def _count(events: Iterator[Event], wanted: Event) -> int:
    """
    Consume C{events} in C, in slices (see L{_drain}), counting those equal
    to C{wanted}.
    """
    total = 0
    while True:
        total += countOf(islice(events, _CHUNK), wanted)
        event = next(events, _DONE)
        if event is _DONE:
            return total
        total += event == wanted


def _check_call(reader: _BlockReader, mark: int) -> None:
    """
    @raise PermanentError: if the item being built began more than
        L{_CALL_BYTES_MAX} bytes before the reader's position C{mark}.
    """
    if reader.served - mark > _CALL_BYTES_MAX:
        raise PermanentError(
            f"report holds an API call longer than {_CALL_BYTES_MAX} bytes where it "
            "cannot be bounded (the report is also not plain valid JSON)")


class _Events(Walker):
    """
    The L{Walker} on ijson's events: the cursor is the first event of a
    value, already taken from the shared iterator.
    """

    def __init__(self, events: Iterator[Event], reader: _BlockReader) -> None:
        self._events = events
        self._reader = reader
        self._first = next(events)

    def kind(self) -> str:
        return _KINDS.get(self._first[1], "0")

    def entries(self) -> Iterator[str]:
        events = self._events
        for _, event, key in events:
            if event != "map_key":
                return  # end_map
            self._first = next(events)
            yield key

    def items(self) -> Iterator[str]:
        for first in self._events:
            if first[1] == "end_array":
                # An item's first event is never an end, so this is the array's.
                return
            self._first = first
            yield _KINDS.get(first[1], "0")

    def skip(self) -> None:
        """
        Consume the rest of the value, in C.
        """
        end = _ENDS.get(self._first[1])
        if end is not None:
            _drain(takewhile(partial(ne, (self._first[0], end, None)), self._events))

    def whole(self, most: int) -> tuple[Any, bool]:
        # Building goes by the parts rows read (C builds a whole value only
        # at one fixed prefix, the calls).
        return DECLINED

    def scalar(self) -> Any:
        return self._first[2]

    def calls(self, kept: list, room: int, row: CallRow) -> int:
        """
        Turn each kept call into its row as soon as C has built it, and
        count the rest in C.

        @raise PermanentError: if a call being built spans more than
            L{_CALL_BYTES_MAX} bytes.
        """
        calls = takewhile(_NOT_END_CALLS, self._events)
        if len(kept) >= room:
            return _count(calls, _START_CALL)
        reader = self._reader
        sink = sendable_list()
        builder = yajl2_c.items_basecoro(sink, _CALL)
        push = builder.send
        seen = 0
        mark = reader.served
        while True:
            pushed = deque(map(push, islice(calls, _CHUNK)), maxlen=1)
            if sink:
                mark = reader.served
            built = [call for call in sink if type(call) is dict]
            del sink[:]
            seen += len(built)
            for call in built[:room - len(kept)]:
                kept.append(row(call, len(kept)))
            if not pushed:
                return seen
            if len(kept) >= room:
                break
            _check_call(reader, mark)
        # The cap is reached: finish the call being built (if any), then
        # only count the calls that follow.
        for event in calls:
            if event == _START_CALL:
                seen += 1 + _count(calls, _START_CALL)
                break
            push(event)
            _check_call(reader, mark)
        seen += sum(1 for call in sink if type(call) is dict)
        return seen


def _reason(error: Exception) -> str:
    """
    The first line of a parser error, without the report excerpt yajl
    appends (report bytes are hostile and do not belong in logs).
    """
    message = error.args[0] if error.args else error
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return str(message).strip().splitlines()[0][:200] if str(message).strip() else "error"


def _extract_events(fp: BinaryIO, options: ExtractOptions,
                    stop: threading.Event | None) -> Extraction:
    """
    The event-based walk described above; see L{extract_results}.
    """
    collector = RowCollector(options)
    reader = _BlockReader(fp, stop)
    events = ijson.parse(reader, buf_size=_BUFFER_SIZE, use_float=True)
    try:
        walker = _Events(events, reader)
        if walker.kind() != "{":
            # Whatever follows it, a document that is not an object is no
            # Cuckoo report (and yajl lets some invalid ones through here).
            raise PermanentError("report is not a JSON object")
        read_report(walker, collector)
        # Reading on makes yajl report truncation and trailing garbage.
        _drain(events)
    except (ijson.JSONError, UnicodeDecodeError) as error:
        raise PermanentError("report is not valid JSON: " + _reason(error)) from None
    except StopIteration:
        raise PermanentError("report is not valid JSON: empty document") from None
    return collector.finish()


def extract_results(fp: BinaryIO, options: ExtractOptions,
                    stop: threading.Event | None = None) -> Extraction:
    """
    Extract CRITs rows from a report file in one streaming pass.

    The text walk of L{cuckoodist.report._text} goes first: it never makes
    parser events and is about twice as fast.  If it meets anything it
    cannot vouch for (invalid JSON included), the file is read again from
    its start with the event-based walk, which gives the same rows or words
    the error.

    @param fp: the report, opened in binary mode and positioned at its start.
    @param options: what to extract.
    @param stop: checked at every block read (about every 10 ms of work);
        once it is set the extraction ends with L{Cancelled}.
    @return: the same L{Extraction} as
        L{cuckoodist.report.plain.extract_results_plain} on the decoded file,
        with the same strings cut and values left out (see
        L{cuckoodist.report.rows}).
    @raise PermanentError: if the file is not one complete JSON document
        (garbage, truncation, bad UTF-8, trailing data), or is not one the
        text walk reads and breaks the event walk's bounds (L{Guard}).
    @raise Cancelled: if C{stop} was set.
    """
    if fp.seekable():
        start = fp.tell()
        collector = RowCollector(options)
        try:
            walk(fp, collector, _READ_SIZE, stop)
        except Fallback:
            fp.seek(start)
        else:
            return collector.finish()
    return _extract_events(fp, options, stop)
