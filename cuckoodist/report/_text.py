# -*- test-case-name: tests.test_report -*-
"""
The fast path of L{cuckoodist.report.extract}: walk a report's text with
regular expressions and C{json}'s C scanner, never producing parser events.

Why: an event-based parser (ijson) makes one Python tuple per JSON token,
and that alone caps it near C{json.load}'s speed.  Nearly all of a report is
call lists, and past the C{api_calls_max} cap a call only has to be checked
and counted.  One compiled pattern (L{_DICT_ITEM}) matches a whole call dict
and its separator in C, exactly to the JSON grammar, so a run of calls costs
one C{re} match each and nothing else.  The first calls, and every small
piece the rows need, are decoded by C{json}'s own C scanner, the very one
L{cuckoodist.report.plain} relies on.

The text is held in a window of about one read block (see
L{cuckoodist.report.extract._READ_SIZE}); every C call works on a bounded
piece of it (a few hundred calls, a 64 KiB slice), so the reactor thread
still gets the GIL every millisecond or so.

A call the pattern does not take (nested more than five deep, or not a
dict) is stepped over item by item, and a value too long for one slice is
built or skipped from its parts, so nothing depends on the whole value
fitting in memory twice.  The one exception is a string that must be kept
(in C{info}, a signature, a header): it is decoded in one call, as any
parser would.

This path only has to be right on what it accepts.  Whatever surprises it
(invalid or truncated JSON, bad UTF-8, a constant such as C{NaN}, a byte
order mark, nesting deeper than L{_MAX_DEPTH} in a long value) raises
L{Fallback}, and the caller starts over with the event-based walker, which
gives the rows or words the error.  A valid report therefore costs at most
one extra pass, and an invalid one is refused by the same code as before.
"""

from __future__ import annotations

import codecs
import json
import re
from itertools import islice
from typing import Any, BinaryIO, Callable, Iterator

from cuckoodist.report.rows import PROCESS_HEADER_KEYS, RowCollector

__all__ = ["Fallback", "walk"]


class Fallback(Exception):
    """
    The fast path cannot be sure; use the event-based walker.
    """


def _pattern() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """
    Compile the JSON patterns.  Possessive quantifiers and atomic groups
    (Python 3.11) keep a failed match from backtracking.

    @return: (a dict array item with its separator, a string's body, white
        space).
    """
    ws = r"[ \t\n\r]*+"
    # A string's plain character, [^"\\\x00-\x1f] spelled as ranges: sre
    # matches the negated set three times slower.
    char = r"[\x20\x21\x23-\x5b\x5d-\U0010ffff]"
    escape = r'\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})'
    body = char + "*+(?:" + escape + char + "*+)*+"
    # The same language as '"' + body + '"', but a string without escapes
    # (nearly all) takes the first branch and no repeat is set up.
    string = '"' + char + '*+(?:"|(?:' + escape + char + '*+)++")'
    # Empty branches, not "?": an optional group costs a repeat in sre.
    number = r"-?+(?:0|[1-9][0-9]*+)(?:\.[0-9]++|)(?:[eE][-+]?+[0-9]++|)"

    def obj(value: str) -> str:
        return (r"\{" + ws + "(?:" + string + ws + ":" + ws + "(?>" + value + ")" + ws
                + r'(?:,' + ws + r'(?=")|(?=\})))*+\}')

    def arr(value: str) -> str:
        return (r"\[" + ws + "(?:(?>" + value + ")" + ws
                + r"(?:," + ws + r"(?=[^\]])|(?=\])))*+\]")

    # Branches that start with a literal are skipped at a glance, so the
    # number, which does not, comes last.
    value = string + "|true|false|null|" + number
    for _ in range(4):
        value = "|".join((string, obj(value), arr(value), "true|false|null", number))
    # The outer dict spells its members out twice, which measured faster
    # than the lookahead form the nested ones use to stay small.
    member = string + ws + ":" + ws + "(?:" + value + ")" + ws
    item = (r"(?>\{" + ws + "(?:" + member + "(?:," + ws + member + ")*+|)" + r"\})"
            + ws + "(?:," + ws + r"(?=[^\]])|(?=\]))")
    return re.compile(item), re.compile(body), re.compile(ws)


#: One dict item of an array, nested at most five deep, with the comma (or
#: the lookahead of C{]}) after it.
_DICT_ITEM, _STRING_BODY, _WS = _pattern()

#: What may follow an array item: a comma and the next item's start (not
#: a C{]}), or the C{]}.
_SEPARATOR = re.compile(r"[ \t\n\r]*+(?:,[ \t\n\r]*+(?=[^\]])|\])")

#: Items matched per C call: a few hundred microseconds of work.
_RUN = 256
#: The longest slice the C scanner builds a value from in one call.
_SLICE = 64 * 1024
#: A value is read from a small slice first, so small values (nearly all)
#: do not pay for copying a large one.
_SMALL = 4 * 1024
#: The deepest nesting walked in Python before giving up.
_MAX_DEPTH = 64


def _constant(name: str) -> Any:
    raise ValueError("not JSON: " + name)


def _scanner() -> Callable[[str, int], tuple[Any, int]]:
    """
    @return: C{json}'s C scanner, refusing C{NaN} and C{Infinity} like
        yajl does.  Each walk makes its own: a scanner keeps a key memo.
    """
    return json.JSONDecoder(parse_constant=_constant).scan_once


class _Text:
    """
    A window on the report text, refilled one read block at a time.

    @ivar text: the decoded text held.
    @ivar pos: the index in L{text} where the walk is.
    @ivar eof: whether L{text} holds the end of the file.
    @ivar scan_once: this walk's C{json} scanner.
    """

    def __init__(self, fp: BinaryIO, read_size: int) -> None:
        self._fp = fp
        self._read_size = read_size
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.scan_once = _scanner()
        self.text = ""
        self.pos = 0
        self.eof = False

    def fill(self) -> None:
        """
        Drop the text already walked and append the next block.

        @raise Fallback: at the end of the file, or on bad UTF-8.
        """
        if self.eof:
            raise Fallback("end of file")
        block = self._fp.read(self._read_size)
        try:
            more = self._decoder.decode(block, final=not block)
        except UnicodeDecodeError:
            raise Fallback("utf-8") from None
        self.eof = not block
        self.text = self.text[self.pos:] + more
        self.pos = 0

    def skip_ws(self) -> str:
        """
        Skip white space, reading on as needed.

        @return: the next character, or C{""} at the end of the file.
        """
        while True:
            self.pos = _WS.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if self.eof:
                return ""
            self.fill()

    def expect(self, char: str) -> None:
        if self.skip_ws() != char:
            raise Fallback("expected " + char)
        self.pos += 1

    def scan(self, sizes: tuple[int, ...] | None = None) -> tuple[Any, bool]:
        """
        Decode the value at L{pos} if it fits in a slice of one of C{sizes}.

        @return: C{(value, True)} with L{pos} after it, or C{(None, False)}
            with L{pos} unchanged if the value is longer than the slices.
        """
        self.skip_ws()
        for size in sizes or (_SMALL, _SLICE):
            while len(self.text) - self.pos < size and not self.eof:
                self.fill()
            window = self.text[self.pos:self.pos + size]
            whole = len(window) < size
            try:
                value, end = self.scan_once(window, 0)
            except (StopIteration, ValueError, RecursionError):
                if whole:
                    raise Fallback("invalid value") from None
                continue
            if whole or end < len(window):
                self.pos += end
                return value, True
        return None, False

    def build(self, depth: int = 0) -> Any:
        """
        @return: the value at L{pos}, decoded.  A long one (a signature
            with thousands of marks, a long summary list) is put together
            from its parts, so no single C call takes long.
        """
        value, done = self.scan()
        if done:
            return value
        if depth > _MAX_DEPTH:
            raise Fallback("too deep")
        first = self.text[self.pos]
        if first == "{":
            return {key: self.build(depth + 1) for key in self.entries()}
        if first == "[":
            return [self.build(depth + 1) for _ in self.items()]
        if first == '"':
            return self._build_string()
        raise Fallback("long scalar")

    def _build_string(self) -> str:
        """
        Decode a string longer than a slice: find its end (reading on as
        needed, the window then grows to hold it), then decode it in one go
        like any value of that size would be.
        """
        checked = self.pos + 1
        while True:
            checked = _STRING_BODY.match(self.text, checked).end()
            if checked < len(self.text) and self.text[checked] == '"':
                break
            if len(self.text) - checked > 6 or self.eof:
                raise Fallback("bad string")
            checked -= self.pos
            self.fill()
        value, self.pos = self.scan_once(self.text, self.pos)
        return value

    def skip(self, depth: int = 0) -> None:
        """
        Check and step over the value at L{pos}, in flat memory whatever
        its size.
        """
        # One small slice only: a long value is walked, not scanned again
        # at every level.
        _, done = self.scan((_SMALL,))
        if done:
            return
        if depth > _MAX_DEPTH:
            raise Fallback("too deep")
        first = self.text[self.pos]
        if first == "{":
            for _ in self.entries():
                self.skip(depth + 1)
        elif first == "[":
            for _ in self.items():
                self.skip(depth + 1)
        elif first == '"':
            self._skip_string()
        elif not self.scan((_SLICE,))[1]:
            raise Fallback("long scalar")

    def _skip_string(self) -> None:
        self.pos += 1
        while True:
            self.pos = _STRING_BODY.match(self.text, self.pos).end()
            if self.pos < len(self.text) and self.text[self.pos] == '"':
                self.pos += 1
                return
            # Stopped by a character a string may not hold, or by the end
            # of the window (perhaps inside an escape).
            if len(self.text) - self.pos > 6 or self.eof:
                raise Fallback("bad string")
            self.fill()

    def entries(self) -> Iterator[str]:
        """
        Iterate over the keys of the object at L{pos}; the caller must step
        over each value (L{skip}, L{build}) before asking for the next.
        """
        if self._opened("{", "}"):
            while True:
                if self.skip_ws() != '"':
                    raise Fallback("expected a key")
                key = self.build()
                self.expect(":")
                yield key
                if self._closed("}"):
                    return

    def items(self) -> Iterator[str]:
        """
        Iterate over the items of the array at L{pos}, giving the first
        character of each; same contract as L{entries}.
        """
        if self._opened("[", "]"):
            while True:
                yield self.skip_ws()
                if self._closed("]"):
                    return

    def _opened(self, opener: str, closer: str) -> bool:
        """
        Step over a container's opening character, and over its closing one
        too if it is empty.

        @return: whether members follow.
        """
        self.expect(opener)
        if self.skip_ws() == closer:
            self.pos += 1
            return False
        return True

    def _closed(self, closer: str) -> bool:
        """
        Step over what follows a member: a comma, or the closing character.

        @return: whether the container ended.
        """
        char = self.skip_ws()
        self.pos += 1
        if char == closer:
            return True
        if char != ",":
            raise Fallback(f"expected , or {closer}")
        return False

    def count_dict_items(self) -> tuple[int, bool]:
        """
        Count the run of dict items starting at L{pos} inside an array, in
        C, each with the comma after it.  L{pos} must be on an item (after
        a comma), not on the C{[}.

        @return: how many were stepped over, and whether the array's C{]}
            is next.
        """
        count = 0
        while True:
            scanner = _DICT_ITEM.scanner(self.text, self.pos)
            while True:
                run = list(islice(iter(scanner.match, None), _RUN))
                if not run:
                    break
                count += len(run)
                self.pos = run[-1].end()
            char = self.skip_ws()
            if char == "]":
                if not count:
                    # Right after a comma: "[..., ]".
                    raise Fallback("trailing comma")
                return count, True
            if len(self.text) - self.pos > _SLICE or self.eof:
                return count, False
            # The next item may be cut by the end of the window.
            self.fill()


def _keep_run(text: _Text, kept: list[tuple[str, dict]], room: int,
              row: Callable[[dict, int], tuple[str, dict]]) -> bool:
    """
    Decode the run of dict calls at L{_Text.pos}, turn each into its row
    with C{row} (L{RowCollector.api_call}) and add that to C{kept}, up to
    C{room} of them, with as little Python per call as possible.  A dict
    the C scanner closes inside the window is complete, so it needs no
    slice (see L{_Text.scan}).

    @return: whether the array's C{]} was reached; if not, L{_Text.pos} is
        on the next item, which this loop did not take.
    """
    source = text.text
    pos = text.pos
    scan = text.scan_once
    separator = _SEPARATOR.match
    while len(kept) < room:
        try:
            call, end = scan(source, pos)
        except (StopIteration, ValueError, RecursionError):
            break
        if type(call) is not dict:
            break
        after = separator(source, end)
        if after is None:
            break
        kept.append(row(call, len(kept)))
        pos = after.end()
        if source[pos - 1] == "]":
            text.pos = pos
            return True
    text.pos = pos
    return False


def _calls(text: _Text, kept: list[tuple[str, dict]], room: int,
           row: Callable[[dict, int], tuple[str, dict]]) -> int:
    """
    Walk one process's call list.

    @param kept: the rows of the process's calls kept so far; the rows of
        this list's first calls are added, up to C{room} in all.
    @param row: L{RowCollector.api_call}.
    @return: how many dict calls the list holds.
    """
    seen = 0
    text.expect("[")
    if text.skip_ws() == "]":
        text.pos += 1
        return seen
    while True:
        if len(kept) < room:
            before = len(kept)
            closed = _keep_run(text, kept, room, row)
            seen += len(kept) - before
            if closed:
                return seen
            if len(kept) >= room:
                continue
            # An item the quick loop does not take: not a dict, long, or
            # cut by the end of the window.
            call = text.build()
            if type(call) is dict:
                kept.append(row(call, len(kept)))
                seen += 1
            char = text.skip_ws()
            text.pos += 1
            if char == "]":
                return seen
            if char != ",":
                raise Fallback("expected , or ]")
            text.skip_ws()
            continue
        count, closed = text.count_dict_items()
        seen += count
        if closed:
            text.pos += 1
            return seen
        # Not a dict the pattern knows (another type, deeper nesting, an
        # escape it refuses): step over it the slow way.
        seen += text.skip_ws() == "{"
        text.skip()
        char = text.skip_ws()
        text.pos += 1
        if char == "]":
            return seen
        if char != ",":
            raise Fallback("expected , or ]")


def _process(text: _Text, collector: RowCollector) -> None:
    header: dict[str, Any] = {}
    kept: list[tuple[str, dict]] = []
    seen = 0
    for key in text.entries():
        if key == "calls" and text.skip_ws() == "[":
            seen += _calls(text, kept, collector.call_room, collector.api_call)
        elif key in PROCESS_HEADER_KEYS:
            header[key] = text.build()
        else:
            text.skip()
    collector.add_process_rows(header, kept, seen)


def _behavior(text: _Text, collector: RowCollector) -> None:
    for key in text.entries():
        first = text.skip_ws()
        if key == "processes" and first == "[":
            for item in text.items():
                if item == "{":
                    _process(text, collector)
                else:
                    text.skip()
        elif key == "summary" and first == "{":
            for name in text.entries():
                if collector.wants_summary(name):
                    collector.add_summary(name, text.build())
                else:
                    text.skip()
        else:
            text.skip()


def _network(text: _Text, collector: RowCollector) -> None:
    adders = {"hosts": collector.add_host, "domains": collector.add_domain,
              "http": collector.add_http}
    for key in text.entries():
        add = adders.get(key)
        if add is not None and text.skip_ws() == "[":
            for _ in text.items():
                add(text.build())
        else:
            text.skip()


def walk(fp: BinaryIO, collector: RowCollector, read_size: int) -> None:
    """
    Walk the whole report, handing its pieces to C{collector}.

    @param read_size: bytes per file read.
    @raise Fallback: if the report is anything but plain valid JSON this
        path can vouch for; C{collector} is then half filled and must be
        thrown away.
    """
    text = _Text(fp, read_size)
    first = text.skip_ws()
    if first != "{":
        text.skip()
    else:
        for key in text.entries():
            collector.evidence.top_key(key)
            kind = text.skip_ws()
            if key == "info":
                collector.set_info(text.build())
            elif key == "signatures" and kind == "[":
                for _ in text.items():
                    collector.add_signature(text.build())
            elif key == "behavior" and kind == "{":
                _behavior(text, collector)
            elif key == "network" and kind == "{":
                _network(text, collector)
            else:
                text.skip()
    if text.skip_ws() != "":
        raise Fallback("trailing data")
